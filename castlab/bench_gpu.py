"""`castlab bench gpu`: CAST's pieces at GPU speed on the OPT-125m architecture (CUDA only).

One run prints: dense step time, tokens/s and model FLOP utilisation against the card's bf16
peak; dense-KD/dense and CAST/dense-KD step ratios; the KD loss alone; AdamS vs torch
AdamW(fused) on the block weights; the mask refresh of all of them; the peak memory of each
step; ``compile: true`` measured against eager; and the 2:4 semi-structured speed-up at the
model's own linear shapes, whatever it is (cuSPARSELt gives little at these sizes).
The model is built from its config (vocab 50272, 12 layers, hidden 768; no download), fed
random tokens, batch 16 x 1024, bf16 autocast with fp32 master weights and a bf16 teacher, as
castlab trains. Compilation is kept out of every timed repeat: the fused AdamS/refresh kernels
are compiled first (their seconds are a row) and graphs compiled during the timed CAST repeats
are counted in its note (0 expected).

``CASTLAB_BENCH_GPU_REHEARSE=1`` runs the same code on the CPU at toy sizes (a 2-layer model,
batch 2 x 64, fp32, wall-clock timers, the fused CUDA path forced through inductor's CPU
backend):
``scripts/gpu_session.sh --rehearse`` checks the bench that way before GPU time is spent; its
numbers mean nothing.

Every row also goes to stderr as it is measured (``  row: {json}``), so a bench cut short by a
time cap still leaves its rows: ``python -m castlab.bench_gpu --table-from LOG`` prints the
table of the rows a log holds.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time

import torch

from castlab.errors import UserError

# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity); CASTLAB_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "L4": 121.0, "RTX 4090": 165.0}
BATCH, SEQ = 16, 1024
REHEARSE_ENV = "CASTLAB_BENCH_GPU_REHEARSE"
_rehearsal = False  # set by bench_gpu: CPU stand-ins for the CUDA timers and memory counters


def _sync() -> None:
    if not _rehearsal:
        torch.cuda.synchronize()


def _row(bench, measured, unit, target="", ok=None, note=""):
    row = {"bench": bench, "measured": measured, "unit": unit, "target": target, "ok": ok,
           "note": note}
    # each row also goes to stderr as it is measured: a run cut short still leaves its rows
    print(f"  row: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def opt125m_architecture(hidden: int = 768, layers: int = 12) -> torch.nn.Module:
    """OPT-125m's architecture, randomly initialised in fp32 (no download); smaller widths and
    depths for the CPU rehearsal."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=50272, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=max(1, hidden // 64), ffn_dim=4 * hidden,
                       max_position_embeddings=2048,
                       word_embed_proj_dim=hidden, do_layer_norm_before=True, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0)
    return OPTForCausalLM(config).float()


def cuda_ms(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (events around each call)."""
    if _rehearsal:  # the code path matters there, not the numbers
        repeats, warmup = min(repeats, 2), min(warmup, 1)
    for _ in range(warmup):
        fn()
    _sync()
    if not repeats:
        return float("nan")
    times = []
    for _ in range(repeats):
        if _rehearsal:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _graph_count() -> int:
    """Graphs torch.compile has built in this process so far (torch._dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _peak_gib(fn) -> float:
    """Peak allocated GiB during one call of ``fn`` (after the warm-up that allocated state)."""
    if _rehearsal:
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def peak_tflops(name: str) -> float:
    """The card's dense bf16 peak in TFLOP/s from its name (NaN when unknown)."""
    if os.environ.get("CASTLAB_PEAK_TFLOPS"):
        return float(os.environ["CASTLAB_PEAK_TFLOPS"])
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))


def train_flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """6 x matmul parameters (the tied LM head included) + 12 x layers x hidden x seq (attention)."""
    cfg = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq


def bench_gpu(args=None) -> list[dict]:
    """Every row of the GPU bench (raises UserError without CUDA, unless rehearsing)."""
    global _rehearsal
    _rehearsal = os.environ.get(REHEARSE_ENV) == "1"
    if _rehearsal:
        return _rehearse()
    if not torch.cuda.is_available():
        raise UserError("bench gpu: no CUDA device is visible (this group measures CAST on a GPU; "
                        "run it on a GPU node, e.g. with scripts/gpu_check.sh)")
    return _bench(torch.device("cuda"), opt125m_architecture)


def _rehearse() -> list[dict]:
    """The bench's code on the CPU at toy sizes, the CUDA-only fused path forced (compiled by
    inductor's CPU backend)."""
    global BATCH, SEQ
    from castlab.sparsity import adams, fused

    saved = (BATCH, SEQ, set(adams.FUSED_DEVICES), set(fused.COMPILE_DEVICES))
    BATCH, SEQ = 2, 64
    adams.FUSED_DEVICES.add("cpu")
    fused.COMPILE_DEVICES.add("cpu")
    try:
        return _bench(torch.device("cpu"), lambda: opt125m_architecture(hidden=64, layers=2))
    finally:
        BATCH, SEQ = saved[:2]
        adams.FUSED_DEVICES.intersection_update(saved[2])
        fused.COMPILE_DEVICES.intersection_update(saved[3])


def _bench(device: torch.device, architecture) -> list[dict]:
    """The rows, on ``device`` (CUDA; the CPU when rehearsing)."""
    from castlab.config import TrainConfig
    from castlab.device import teacher_copy, use_device
    from castlab.methods import make_method
    from castlab.models import in_scope_linears
    from castlab.train import step_loss

    if device.type == "cuda":
        device = use_device("cuda")
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu (rehearsal)"
    dev = device.type  # the configs' device: "cuda", or "cpu" when rehearsing
    torch.manual_seed(0)
    data = torch.randint(0, 50272, (BATCH, SEQ), device=device)
    base = architecture().to(device)
    teacher = teacher_copy(base, "bf16", device)  # bf16 once on CUDA, as training makes it
    dtype = "fp32" if _rehearsal else "bf16"  # bf16 autocast on a CPU only adds minutes
    dense_cfg = TrainConfig(method="dense", model="opt-125m", tokens=1, device=dev, dtype=dtype)
    kd_cfg = TrainConfig(method="dense-kd", model="opt-125m", tokens=1, device=dev, dtype=dtype)
    cast_cfg = TrainConfig(method="cast", model="opt-125m", init="x", tokens=10**9,
                           device=dev, dtype=dtype, lambda_=0.01)
    rows, steps, peaks = [], {}, {}
    from castlab.sparsity import fused

    compile_s = fused.precompile(device)  # before any timing: the repeats never compile these
    rows.append(_row("fused AdamS + mask refresh compile (5 graphs)", compile_s, "s",
                     note="dynamic shapes: once per process for every weight, inductor's disk "
                          "cache across processes; outside the timed repeats"))

    def trainer(model, opt, t_model, cfg):
        def step():
            step_loss(model, t_model, data, cfg).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    dense = copy.deepcopy(base)
    fns = {"dense": trainer(dense, torch.optim.AdamW(dense.parameters(), lr=1e-4, fused=True),
                            None, dense_cfg)}
    kd = copy.deepcopy(base)
    fns["dense-kd"] = trainer(kd, torch.optim.AdamW(kd.parameters(), lr=1e-4, fused=True),
                              teacher, kd_cfg)
    cast = copy.deepcopy(base)
    method = make_method(cast_cfg)
    cast_opt = method.build_optimizer(cast, 1e-4, total_steps=1000)
    for group in cast_opt.param_groups:  # mid-run: the ramp a = t/T is past 0, masks blend
        group["step"] = 100
    fns["cast"] = trainer(cast, cast_opt, teacher, cast_cfg)
    recompiled = {}
    for key, fn in fns.items():
        t0 = time.perf_counter()
        cuda_ms(fn, repeats=0, warmup=3)  # state, first masks (and any compile) happen here
        graphs = _graph_count()
        steps[key] = cuda_ms(fn, repeats=10, warmup=0)
        recompiled[key] = _graph_count() - graphs
        peaks[key] = _peak_gib(fn)
        print(f"  {key}: {steps[key]:.2f} ms/step ({time.perf_counter() - t0:.0f} s with warm-up)",
              file=sys.stderr, flush=True)
        del fn
    tokens = BATCH * SEQ
    tok_s = tokens / (steps["dense"] / 1e3)
    peak = peak_tflops(name)
    mfu = train_flops_per_token(base, SEQ) * tok_s / (peak * 1e12)
    rows += [
        _row("dense step (HF OPT-125m, AdamW fused, CE)", steps["dense"], "ms",
             note=f"{tok_s:,.0f} tokens/s, batch {BATCH} x {SEQ}, {dtype}, {name}; "
                  f"peak mem {peaks['dense']:.1f} GiB"),
        _row("dense model FLOP utilisation", mfu, "of bf16 peak",
             note=f"(6N + 12LdT) FLOPs/token x tokens/s / {peak:g} TFLOP/s"),
        _row("dense-KD step / dense step", steps["dense-kd"] / steps["dense"], "x", "<= 1.5",
             steps["dense-kd"] / steps["dense"] <= 1.5,
             f"{steps['dense-kd']:.1f} ms; peak mem {peaks['dense-kd']:.1f} GiB"),
        _row("CAST step / dense-KD step", steps["cast"] / steps["dense-kd"], "x", "<= 1.15",
             steps["cast"] / steps["dense-kd"] <= 1.15,
             f"{steps['cast']:.1f} ms (AdamS + weight scaling + KD); peak mem "
             f"{peaks['cast']:.1f} GiB; graphs compiled in the timed repeats: "
             f"{sum(recompiled.values())}"),
    ]
    del dense, kd, fns
    rows += _kd_rows(device)
    rows += _optimizer_rows(cast, in_scope_linears, device)
    del cast, cast_opt
    if not _rehearsal:
        torch.cuda.empty_cache()
    if os.environ.get("CASTLAB_BENCH_COMPILE", "1") != "0" and not _rehearsal:
        rows += _compile_rows(base, data, dense_cfg, steps["dense"])
    rows += _semi_structured_rows(base, in_scope_linears, device)
    return rows


def _kd_rows(device) -> list[dict]:
    """kd_loss alone (forward + backward) against plain cross-entropy at the bench shape."""
    import torch.nn.functional as F

    from castlab.sparsity.distill import kd_loss

    s = torch.randn(BATCH * SEQ, 50272, device=device, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(BATCH * SEQ, 50272, device=device, dtype=torch.bfloat16)
    labels = torch.randint(0, 50272, (BATCH * SEQ,), device=device)
    kd = cuda_ms(lambda: kd_loss(s, t, labels).total.backward(), repeats=5, warmup=2)
    ce = cuda_ms(lambda: F.cross_entropy(s.float(), labels).backward(), repeats=5, warmup=2)
    return [_row("kd_loss fwd+bwd, 16k tokens x 50272 vocab", kd, "ms",
                 note=f"cross-entropy alone {ce:.1f} ms ({kd / ce:.2f}x)")]


def _optimizer_rows(cast_model, in_scope_linears, device) -> list[dict]:
    """AdamS vs AdamW(fused) over copies of the block weights; the refresh of all masks."""
    from castlab.sparsity.adams import AdamS
    from castlab.sparsity.scaling import raw_weight

    weights = [raw_weight(lin).detach() for _, lin in in_scope_linears(cast_model)]
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    theirs = [torch.nn.Parameter(w.clone()) for w in weights]
    for p in ours + theirs:
        p.grad = torch.randn_like(p) * 1e-3
    adams = AdamS([{"params": ours, "sparse": True}], lr=1e-4, lambda_=0.01, total_steps=1000,
                  t1=10)
    adams.step()  # state and first masks
    adams.param_groups[0]["step"] = 101  # a blended step that is not a refresh step
    adamw = torch.optim.AdamW(theirs, lr=1e-4, fused=True)

    def adams_step():
        adams.param_groups[0]["step"] = 101
        adams.step()

    ms_s = cuda_ms(adams_step, repeats=20, warmup=3)
    ms_w = cuda_ms(adamw.step, repeats=20, warmup=3)
    refresh = cuda_ms(lambda: adams._refresh_masks(adams.param_groups[0]), repeats=20, warmup=3)
    numel = sum(w.numel() for w in weights)
    return [
        _row("AdamS step / AdamW(fused) step", ms_s / ms_w, "x", "<= 1.5", ms_s / ms_w <= 1.5,
             f"{ms_s:.2f} vs {ms_w:.2f} ms over {numel / 1e6:.1f}M block weights "
             "(no refresh in the step)"),
        _row("mask refresh, all block weights", refresh, "ms", "<= 1", refresh <= 1.0,
             f"2:4 over {numel / 1e6:.1f}M weights, flips counted on the device"),
    ]


def _compile_rows(base, data, cfg, eager_ms: float) -> list[dict]:
    """compile: true, measured: a dense step of torch.compile(model) against eager."""
    from castlab.train import step_loss

    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model)

    def step():
        step_loss(compiled, None, data, cfg).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        ms = cuda_ms(step, repeats=10, warmup=2)
    except Exception as err:  # noqa: BLE001 - report, do not lose the other rows
        return [_row("compile: true dense step / eager", float("nan"), "x",
                     note=f"torch.compile failed: {type(err).__name__}: {str(err)[:120]}")]
    return [_row("compile: true dense step / eager", ms / eager_ms, "x",
                 note=f"{ms:.1f} vs {eager_ms:.1f} ms; first step (compiling) {first:.0f} s")]


def _semi_structured_rows(base, in_scope_linears, device) -> list[dict]:
    """cuSPARSELt 2:4 (to_sparse_semi_structured) vs dense F.linear, fp16, at each distinct
    linear shape of the model with the bench's tokens; reported as measured, no promise."""
    import torch.nn.functional as F

    from castlab.sparsity.masks import nm_mask

    shapes = sorted({tuple(lin.weight.shape) for _, lin in in_scope_linears(base)})
    rows = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f, device=device, dtype=torch.float16)
        w = w * nm_mask(w, 2, 4).to(w.dtype)
        x = torch.randn(BATCH * SEQ, in_f, device=device, dtype=torch.float16)
        dense = cuda_ms(lambda w=w, x=x: F.linear(x, w), repeats=20, warmup=5)
        try:
            from torch.sparse import to_sparse_semi_structured

            sw = to_sparse_semi_structured(w)
            sparse = cuda_ms(lambda sw=sw, x=x: F.linear(x, sw), repeats=20, warmup=5)
            rows.append(_row(f"2:4 semi-structured linear {out_f}x{in_f}", dense / sparse,
                             "x speed-up", note=f"dense {dense:.3f} ms, 2:4 {sparse:.3f} ms, "
                                               f"fp16, {BATCH * SEQ} tokens"))
        except Exception as err:  # noqa: BLE001 - the kernel may refuse this card or shape
            rows.append(_row(f"2:4 semi-structured linear {out_f}x{in_f}", float("nan"),
                             "x speed-up", note=f"not available: {type(err).__name__}: "
                                                f"{str(err)[:100]}"))
    return rows


def rows_from_log(text: str) -> list[dict]:
    """The rows a bench log holds (its ``  row: {json}`` lines), in order."""
    rows = []
    for line in text.splitlines():
        if line.startswith("  row: "):
            try:
                rows.append(json.loads(line[len("  row: "):]))
            except json.JSONDecodeError:  # a line cut by the time cap
                continue
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m castlab.bench_gpu --table-from LOG``: the table of a (partial) bench log."""
    import argparse
    from pathlib import Path

    from castlab.bench import format_table

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--table-from", type=Path, required=True, metavar="LOG")
    args = parser.parse_args(argv)
    rows = rows_from_log(args.table_from.read_text(errors="replace"))
    for row in rows:
        row["measured"] = float("nan") if row["measured"] is None else float(row["measured"])
    print(format_table(rows) if rows else "(no rows measured)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

"""`castlab bench`: speed and memory ratios measured side by side in one run, printed as a table.

Each group is a function returning rows {bench, measured, unit, target, ok, note}; groups live in
the module that owns the code they measure and are registered in ``BENCH_GROUPS``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from castlab.errors import UserError


def _row(bench: str, measured: float, unit: str, target: str = "", ok: bool | None = None,
         note: str = "") -> dict:
    return {"bench": bench, "measured": measured, "unit": unit, "target": target,
            "ok": ok, "note": note}


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_dense_throughput(preset: str, steps: int = 12, batch: int = 16, seq_len: int = 128,
                             vocab: int = 8192) -> float:
    """Tokens/s of fp32 dense AdamW training of a ladder preset on random tokens."""
    import torch

    from castlab.models import build_preset

    model = build_preset(preset, vocab_size=vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    data = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))

    def step():
        loss = model(input_ids=data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * seq_len / median_seconds(step, steps)


def bench_tcmalloc(presets=("opt-100k", "opt-600k", "opt-3m")) -> list[dict]:
    """Dense pretraining tokens/s per ladder size with and without tcmalloc (child processes)."""
    from castlab.cli import find_tcmalloc

    lib = find_tcmalloc()
    if lib is None:
        return [_row("tcmalloc", float("nan"), "", note="libtcmalloc-minimal4 not installed")]
    rows = []
    for preset in presets:
        rates = {}
        for label, preload in (("glibc", ""), ("tcmalloc", lib)):
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            if preload:
                env["LD_PRELOAD"] = preload
            code = ("from castlab.bench import measure_dense_throughput as m; "
                    f"print(m({preset!r}))")
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True)
            rates[label] = float(out.stdout.strip().splitlines()[-1])
        ratio = rates["tcmalloc"] / rates["glibc"]
        rows.append(_row(f"dense train {preset} tokens/s (glibc -> tcmalloc)", ratio, "x speed-up",
                         note=f"{rates['glibc']:.0f} -> {rates['tcmalloc']:.0f} tokens/s, "
                              "fp32, batch 16 x seq 128, vocab 8192"))
    return rows


def bench_cast_step(preset: str = "opt-1.3m", batch: int = 16, seq_len: int = 128,
                    vocab: int = 8192, repeats: int = 10) -> list[dict]:
    """One CAST step vs one AdamW step + frozen-teacher forward + KL on the same model and batch."""
    import copy

    import torch

    from castlab.config import TrainConfig
    from castlab.methods import make_method
    from castlab.models import build_preset
    from castlab.train import step_loss

    data = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    base = build_preset(preset, vocab_size=vocab)
    teacher = copy.deepcopy(base).eval().requires_grad_(False)
    loss_cfg = TrainConfig(method="dense-kd", model=preset, tokens=1000)  # eta, temperature

    def make_step(model, opt):
        def step():
            step_loss(model, teacher, data, loss_cfg).backward()  # the training loop's KD loss
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    ref_model = copy.deepcopy(base)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
    cast_model = copy.deepcopy(base)
    cfg = TrainConfig(method="cast", model=preset, lambda_=0.05, tokens=1000)
    cast_opt = make_method(cfg).build_optimizer(cast_model, 1e-4, total_steps=1000)
    steps = {"adamw+kd": make_step(ref_model, ref_opt), "cast": make_step(cast_model, cast_opt)}
    # interleave so drift in machine load hits both sides alike
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(median_seconds(fn, 1, warmup=1 if not times[name] else 0))
    ref, cast = statistics.median(times["adamw+kd"]), statistics.median(times["cast"])
    ratio = cast / ref
    return [_row(f"CAST step / (AdamW step + teacher fwd + KL), {preset}", ratio, "x", "<= 1.05",
                 ratio <= 1.05, f"{cast * 1e3:.1f} ms vs {ref * 1e3:.1f} ms; batch {batch} x "
                 f"seq {seq_len}, vocab {vocab}, fp32, median of {repeats}")]


class _RssPeak:
    """Peak growth of the resident set size while running, sampled from /proc every millisecond.

    ru_maxrss cannot be used: its peak is usually set by the imports, before the run starts.
    """

    def __init__(self):
        import threading

        self.peak = self.before = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def current() -> int:
        """Resident bytes now (Linux /proc/self/statm)."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.001)

    def start(self):
        """Begin sampling."""
        self.before = self.current()
        self._thread.start()

    def stop(self) -> int:
        """Stop sampling and return the peak growth in bytes."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.current()) - self.before


class _LiveTensorPeak:
    """Peak bytes of live CPU tensors allocated while running: the largest "Total Allocated" of
    the torch profiler's memory events, the CPU counterpart of torch.cuda.max_memory_allocated
    (allocator caches and freed pages the process keeps are not counted, unlike in the RSS)."""

    def start(self):
        """Begin recording allocations."""
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()

    def stop(self) -> int:
        """Stop recording and return the peak in bytes."""
        import tempfile

        self._profiler.__exit__(None, None, None)
        with tempfile.TemporaryDirectory() as tmp:  # the trace is the public way to the events
            trace = Path(tmp) / "trace.json"
            self._profiler.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"
                  and e["args"].get("Device Type") == 0]  # 0: CPU
        return max(totals, default=0)


PEAK_METERS = {"rss": _RssPeak, "live": _LiveTensorPeak}


def measure_cast_memory(preset: str = "opt-3m", batch: int = 2, seq_len: int = 64,
                        vocab: int = 8192, steps: int = 3, meter: str = "rss") -> dict:
    """Peak memory of CAST training steps vs the analytic state size (run it in a child).

    Analytic: fp32 student weights + grads + two Adam moments + the frozen teacher's weights +
    one bool per in-scope weight (the masks). Everything else (activations, logits, the uint8
    masks AdamS keeps, temporaries, and for the RSS allocator slack) is what the ratio measures.
    ``meter``: "rss" (resident set growth) or "live" (peak of live tensors).
    """
    import copy

    import torch

    from castlab.config import TrainConfig
    from castlab.methods import make_method
    from castlab.models import build_preset, count_parameters
    from castlab.train import step_loss

    data = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    # one-time costs (modeling module imports, kernel/allocator set-up) are not run state
    warm = build_preset("opt-tiny", vocab_size=vocab)
    warm(input_ids=data, labels=data).loss.backward()
    del warm
    peak_meter = PEAK_METERS[meter]()
    peak_meter.start()
    model = build_preset(preset, vocab_size=vocab)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    cfg = TrainConfig(method="cast", model=preset, lambda_=0.05, tokens=1000)
    opt = make_method(cfg).build_optimizer(model, 1e-4, total_steps=100)
    for _ in range(steps):  # as castlab.train's loop: grads are freed after each step and
        step_loss(model, teacher, data, cfg).backward()  # peak where they meet the activations
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = peak_meter.stop()
    counts = count_parameters(model)
    params = sum(p.numel() for p in model.parameters())
    analytic = 4 * params * 4 + 4 * counts.total + counts.in_scope
    return {"measured": peak, "analytic": analytic, "params": params}


def bench_memory(preset: str = "opt-3m") -> list[dict]:
    """Peak memory of CAST steps vs the analytic sum, each meter in a fresh child process."""
    rows = []
    for meter, what in (("live", "peak live tensors"), ("rss", "RSS growth")):
        code = ("import json; from castlab.bench import measure_cast_memory as m; "
                f"print(json.dumps(m({preset!r}, meter={meter!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = result["measured"] / result["analytic"]
        rows.append(_row(f"CAST peak memory ({meter}) / analytic state, {preset}", ratio, "x",
                         "<= 1.2", ratio <= 1.2,
                         f"{result['measured'] / 2**20:.1f} MiB {what} vs "
                         f"{result['analytic'] / 2**20:.1f} MiB (weights+grads+2 moments+teacher+"
                         f"bool masks); batch 2 x seq 64, fp32"))
    return rows


DEFAULT_SWEEP_RESULTS = "results/reference/opt_family"


def _full_sweep_wall(results: Path, runs: int) -> float | None:
    """Wall seconds of the latest logged ``castlab sweep`` that ran all ``runs`` runs, if any."""
    from castlab import store

    log = results / store.SWEEP_LOG_FILE
    if not log.is_file():
        return None
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    full = [e for e in entries if e.get("outcomes", {}).get("done") == runs]
    return float(full[-1]["wall_seconds"]) if full else None


def bench_sweep(results: str = DEFAULT_SWEEP_RESULTS) -> list[dict]:
    """Sweep wall time vs time inside training steps, from a stored sweep (issue 7).

    The wall time is that of the latest ``castlab sweep`` in ``sweep_log.jsonl`` that ran exactly
    the stored runs, so the split below comes from one invocation; without one (e.g. a cold sweep
    whose wall also covers teacher pretraining) it is the sum of the runs' own wall times and
    orchestration is not measured. The rest is split into perplexity evals (``eval_seconds``),
    other work inside the run processes (load, auto-lambda probe, finalize, save) and
    orchestration (forking, claiming, the gap between runs).
    """
    from castlab import store

    if not Path(results).is_dir():
        return [_row("sweep overhead", float("nan"), "", note=f"no results at {results}")]
    rows = store.load(results)
    rows = rows[rows["status"] == "ok"]
    in_runs = float(rows["wall_seconds"].sum())
    logged = _full_sweep_wall(Path(results), len(rows))
    wall = logged or in_runs
    in_steps = float(rows["train_seconds"].fillna(0).sum())
    evals = float(rows["eval_seconds"].fillna(0).sum()) if "eval_seconds" in rows else float("nan")
    overhead = 1 - in_steps / wall
    share = {"perplexity evals (final val/test, pre-prune, periodic)": evals,
             "other in-run work (load, lambda probe, finalize, save)": in_runs - in_steps - evals,
             "orchestration (fork, claim, between runs)": wall - in_runs}
    if logged is None:
        share.pop("orchestration (fork, claim, between runs)")
    source = ("logged sweep wall" if logged else
              "sum of run walls: no logged sweep ran exactly these runs, orchestration not measured")
    return [_row("sweep time outside training steps", 100 * overhead, "% of wall", "<= 10",
                 overhead <= 0.10, f"{wall:.0f} s wall ({source}), {in_steps:.0f} s in training "
                 f"steps, {len(rows)} runs ({results})"),
            *(_row(f"  of which {part}", 100 * seconds / wall, "% of wall",
                   note=f"{seconds:.0f} s") for part, seconds in share.items())]


def _optimizer_rows() -> list[dict]:
    from castlab.sparsity.bench import run_optimizer_bench

    return run_optimizer_bench()


def _fit_rows() -> list[dict]:
    from castlab.law.bench import run_fit_bench

    return run_fit_bench()


# name -> rows, given the parsed command line (the sweep group reads --sweep-results)
BENCH_GROUPS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "optimizer": lambda args: _optimizer_rows(),
    "step": lambda args: bench_cast_step(),
    "fit": lambda args: _fit_rows(),
    "tcmalloc": lambda args: bench_tcmalloc(),
    "memory": lambda args: bench_memory(),
    "sweep": lambda args: bench_sweep(args.sweep_results),
    "gpu": lambda args: _gpu_rows(),
}
# Groups run only when named: gpu needs a CUDA device (castlab.bench_gpu).
EXPLICIT_ONLY = {"gpu"}


def _gpu_rows() -> list[dict]:
    from castlab.bench_gpu import bench_gpu

    return bench_gpu()


def format_table(rows: list[dict]) -> str:
    """Rows as a fixed-width text table."""
    head = ("bench", "measured", "unit", "target", "ok", "note")
    cells = [[r["bench"], f"{r['measured']:.4g}", r["unit"], r["target"],
              {True: "yes", False: "NO", None: ""}[r["ok"]], r["note"]] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *cells, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the bench subcommand."""
    p = subparsers.add_parser(
        "bench", help="speed/memory ratios measured side by side, printed as a table",
        description=f"Run benchmark groups ({', '.join(BENCH_GROUPS)}; default: all but "
                    f"{', '.join(sorted(EXPLICIT_ONLY))}, which runs only when named) and print "
                    "one table of ratios measured in this one process.")
    p.add_argument("groups", nargs="*", help=f"groups to run: {', '.join(BENCH_GROUPS)}")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.add_argument("--sweep-results", default=DEFAULT_SWEEP_RESULTS, metavar="DIR",
                   help="results folder the sweep group reads (default: %(default)s)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """castlab bench: run the chosen groups and print the table."""
    groups = args.groups or [g for g in BENCH_GROUPS if g not in EXPLICIT_ONLY]
    unknown = [g for g in groups if g not in BENCH_GROUPS]
    if unknown:
        raise UserError(f"bench group '{unknown[0]}' unknown; allowed {', '.join(BENCH_GROUPS)}")
    if "sweep" in groups and args.sweep_results != DEFAULT_SWEEP_RESULTS \
            and not Path(args.sweep_results).is_dir():
        raise UserError(f"--sweep-results: {args.sweep_results} is not a results folder")
    rows = []
    for name in groups:
        print(f"castlab bench: running {name} ...", file=sys.stderr, flush=True)
        rows.extend(BENCH_GROUPS[name](args))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0

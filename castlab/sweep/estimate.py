"""Time estimates of planned CPU runs, and what each one rests on.

Two sources, per (model, method) of the plan:

- **stored rows**: finished runs of the same model and method, batch and sequence length in the
  plan's result folders (and the teacher cache), preferring rows trained with the thread count
  the run will get. A run takes ``tokens / rate + overhead``: the median training rate
  (tokens / train_seconds) and the median of each row's wall time outside its training steps
  (load, periodic and final evals, saving).
- **timed steps**: nothing stored: a few real steps of the method (its optimizer, KD from a
  teacher copy, masks) on a random-initialised preset here, with the thread count the run will
  get, after warm-up steps (the first steps of a process are several times slower), plus a timed
  eval forward. Per method, a larger preset is never estimated faster per token than a smaller
  one (timing noise on a loaded machine reordered teachers before).

Every run also pays ``FORK_SECONDS`` outside its own wall time (the sweep's child process, claim
and row), measured on this machine's sweeps. The wall time of a phase is the local backend's
queue simulated over its concurrent CPU slots (castlab.sweep.backends, ``cpu_runs``).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# Per-token cost of a method's training step relative to dense pretraining (used by the GPU
# model, castlab.sweep.gpu_estimate): KD adds a teacher forward, CAST the masks and scaling.
METHOD_COST = {"dense": 1.0, "dense-kd": 1.5, "cast": 1.7, "sr-ste": 1.2, "ast": 1.2}
# Fixed costs, measured on this 2-core CPU (issue 24: 2 s / 3 s / 8 s put the 38 s smoke sweep at
# 1m19s, 2.1x): a forked child starts about 0.3-0.5 s after the previous run ends; the median
# wall outside the training steps and evals is 0.4-0.5 s (opt-tiny) to 0.7-1.2 s (opt-100k ..
# opt-600k); the fork server is up about 3 s after a phase starts.
FORK_SECONDS = 1.0  # per run outside its row's wall_seconds: child start, claim, row, lock
SWEEP_START_SECONDS = 4.0  # once per phase: imports, plan, the forked children's server
LOAD_SECONDS = 1.0  # timed-steps basis: a run's data and model load, teacher copy, model save
ONESHOT_SECONDS = 4.0  # a one-shot pruning run with nothing stored (calibration + evals)
FINAL_EVAL_TOKENS = 60_000  # the default corpus's validation split (whole split scored)
WARMUP_STEPS = 4
MIN_TIMED_STEPS, MAX_TIMED_STEPS, MIN_TIMED_SECONDS = 6, 40, 0.6


@dataclass(frozen=True)
class RunEstimate:
    """Expected seconds of one run and the short name of what it rests on."""

    seconds: float | None
    basis: str  # 'rows' | 'timed' | 'flops' | 'gpu' | 'none'


@dataclass(frozen=True)
class StoredRate:
    """Median training rate and per-run overhead of finished rows of one (model, method)."""

    rate: float  # training tokens per second
    overhead: float  # median wall seconds outside the training steps
    rows: int
    threads: str  # the rows' thread counts, e.g. '1' or '1,2'
    folders: str  # where the rows are


# ---- stored rows ------------------------------------------------------------------------------


def stored_rates(dirs: list[Path], threads_by_model: dict[tuple[str, str], int] | None = None,
                 shape: tuple[int, int] | None = None) -> dict[tuple[str, str], StoredRate]:
    """StoredRate per (model, method) of the CPU rows under ``dirs``; rows with the thread
    count in ``threads_by_model`` win when there are any, and with ``shape`` (batch_size,
    seq_len) only rows of that shape count (a teacher's batch of 16 says little of a student's)."""
    import pandas as pd

    from castlab.sweep.plan import finished_rows

    df = finished_rows(dirs)
    if df is None:
        return {}
    if "device" in df:
        df = df[~df["device"].fillna("cpu").astype(str).str.startswith("cuda")]
    if shape is not None:  # rows that do not say their shape count for any
        for column, value in zip(("batch_size", "seq_len"), shape, strict=True):
            if column in df:
                df = df[(df[column] == value) | df[column].isna()]
    out = {}
    for key, group in df.groupby(["model", "method"]):
        wanted = (threads_by_model or {}).get(key)
        if "threads" in group and wanted is not None and (group["threads"] == wanted).any():
            group = group[group["threads"] == wanted]
        # rows without their timing split: the timed-steps basis's load allowance
        overhead = ((group["wall_seconds"] - group["train_seconds"]).clip(lower=0)
                    if {"wall_seconds", "train_seconds"} <= set(group) else pd.Series(dtype=float))
        overhead = overhead.dropna()
        threads = (",".join(str(int(t)) for t in sorted(set(group["threads"].dropna())))
                   if "threads" in group else "?")
        out[key] = StoredRate(float(group["tokens_per_second"].median()),
                              float(overhead.median()) if len(overhead) else LOAD_SECONDS,
                              len(group), threads or "?",
                              ", ".join(sorted(set(group["_folder"]))))
    return out


# ---- timed steps ------------------------------------------------------------------------------


@functools.cache
def step_seconds(preset: str, method: str, vocab_size: int, seq_len: int, batch_size: int,
                 threads: int) -> tuple[float, float]:
    """(median seconds of one training step of ``method`` on ``preset``, eval tokens per
    second) here, with ``threads`` torch threads, after WARMUP_STEPS untimed steps."""
    import copy

    import torch

    from castlab.config import TrainConfig
    from castlab.methods import make_method
    from castlab.models import build_preset
    from castlab.train import step_loss

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        cfg = TrainConfig(method=method, model=preset, init=None if method == "dense" else "x",
                          seq_len=seq_len, batch_size=batch_size, lambda_=1e-3,
                          vocab_size=vocab_size, eval_every=10**9)
        model = build_preset(preset, vocab_size=vocab_size)
        impl = make_method(cfg)
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if impl.uses_teacher else None
        optimizer = impl.build_optimizer(model, 1e-4, WARMUP_STEPS + MAX_TIMED_STEPS)
        times: list[float] = []
        for step in range(WARMUP_STEPS + MAX_TIMED_STEPS):
            batch = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
            began = time.perf_counter()
            impl.before_forward(step)
            loss = step_loss(model, teacher, batch, cfg)
            loss.backward()
            impl.after_backward(step)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= WARMUP_STEPS:
                times.append(time.perf_counter() - began)
            if len(times) >= MIN_TIMED_STEPS and sum(times) >= MIN_TIMED_SECONDS:
                break
        model.eval()
        eval_batch = torch.randint(0, vocab_size, (max(1, 4096 // seq_len), seq_len), generator=gen)
        with torch.no_grad():
            model(input_ids=eval_batch)
            began = time.perf_counter()
            model(input_ids=eval_batch)
            eval_rate = eval_batch.numel() / (time.perf_counter() - began)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times), eval_rate


def dense_rate(preset: str, vocab_size: int, seq_len: int, batch_size: int, threads: int) -> float:
    """Training tokens/s of dense pretraining of ``preset`` here (timed steps)."""
    seconds, _ = step_seconds(preset, "dense", vocab_size, seq_len, batch_size, threads)
    return batch_size * seq_len / seconds


def eval_tokens_of(cfg) -> int:
    """Tokens a run scores: periodic evals, the final val and test evals, and for a sparse
    run the val eval before pruning."""
    steps = math.ceil(int(cfg.tokens) / (cfg.batch_size * cfg.seq_len))
    final = cfg.final_eval_tokens or FINAL_EVAL_TOKENS
    sparse = cfg.method in ("cast", "sr-ste", "ast")
    return (steps // cfg.eval_every + 1) * cfg.eval_tokens + (3 if sparse else 2) * final


def calibrated_seconds(cfg, threads: int | None = None) -> float:
    """Expected wall seconds of a TrainConfig on a ladder preset, from timed steps."""
    step, eval_rate = step_seconds(cfg.model, cfg.method, cfg.vocab_size, cfg.seq_len,
                                   cfg.batch_size, cfg.threads if threads is None else threads)
    steps = math.ceil(int(cfg.tokens) / (cfg.batch_size * cfg.seq_len))
    return LOAD_SECONDS + steps * step + eval_tokens_of(cfg) / eval_rate


# ---- a plan -----------------------------------------------------------------------------------


def _size(model: str) -> int:
    from castlab.models import is_preset
    from castlab.sweep.plan import preset_param_counts

    return preset_param_counts(model).total if is_preset(model) else 0


def cpu_estimates(plan, threads_of, basis_lines: list[str] | None = None) -> dict[str, RunEstimate]:
    """RunEstimate per run id of the CPU runs of ``plan``; ``threads_of(cfg)`` is the thread
    count the backend will give a run. Appends one line per (model, method) saying what its
    estimates rest on to ``basis_lines``."""
    from castlab.config import ONESHOT_METHODS
    from castlab.models import is_preset

    dirs = sorted({r.run_dir.parent for r in plan})
    runs = list(plan)
    threads = {(r.config.model, r.config.method): threads_of(r.config) for r in runs}
    shapes = {(r.config.batch_size, r.config.seq_len) for r in runs}
    stored: dict[tuple[str, str], StoredRate] = {}
    for shape in shapes:  # per shape: a teacher's rows (batch 16) never price a student's
        for key, rate in stored_rates(dirs, threads, shape).items():
            stored[(*key, *shape)] = rate
    per_token: dict[tuple, float] = {}  # timed seconds per training token, made monotone below
    timed_eval: dict[tuple, float] = {}
    for r in runs:
        c = r.config
        key = (c.model, c.method, c.batch_size, c.seq_len)
        if c.method in ONESHOT_METHODS or key in stored or key in per_token or not is_preset(c.model):
            continue
        step, eval_rate = step_seconds(c.model, c.method, c.vocab_size, c.seq_len, c.batch_size,
                                       threads[(c.model, c.method)])
        per_token[key], timed_eval[key] = step / (c.batch_size * c.seq_len), eval_rate
    # per (method, shape), a larger preset costs at least what a smaller one does per token
    for method, batch, seq in {(k[1], k[2], k[3]) for k in per_token}:
        keys = sorted((k for k in per_token if k[1:] == (method, batch, seq)),
                      key=lambda k: _size(k[0]))
        for smaller, larger in zip(keys, keys[1:], strict=False):
            per_token[larger] = max(per_token[larger], per_token[smaller])
            timed_eval[larger] = min(timed_eval[larger], timed_eval[smaller])
    out: dict[str, RunEstimate] = {}
    for r in runs:
        c = r.config
        key = (c.model, c.method, c.batch_size, c.seq_len)
        if key in stored:
            s = stored[key]
            seconds = FORK_SECONDS + int(c.tokens) / s.rate + s.overhead if c.tokens else \
                FORK_SECONDS + s.overhead
            out[r.run_id] = RunEstimate(seconds, "rows")
        elif c.method in ONESHOT_METHODS:
            out[r.run_id] = RunEstimate(FORK_SECONDS + ONESHOT_SECONDS, "timed")
        elif key in per_token:
            seconds = (FORK_SECONDS + LOAD_SECONDS + int(c.tokens) * per_token[key]
                       + eval_tokens_of(c) / timed_eval[key])
            out[r.run_id] = RunEstimate(seconds, "timed")
        else:
            out[r.run_id] = RunEstimate(None, "none")
    if basis_lines is not None:
        basis_lines.extend(_basis(runs, stored, per_token, threads))
    return out


def _basis(runs, stored, per_token, threads) -> list[str]:
    lines = []
    keys = dict.fromkeys((r.config.model, r.config.method, r.config.batch_size, r.config.seq_len)
                         for r in runs)
    for key in sorted(keys, key=lambda k: (k[1] != "dense", k[1], _size(k[0]))):
        model, method, batch, seq = key
        what = f"  {method} {model} (batch {batch} x {seq}):"
        if key in stored:
            s = stored[key]
            lines.append(f"{what} stored rows: {s.rows} run{'s' * (s.rows != 1)} in {s.folders} "
                         f"(threads {s.threads}): {s.rate:,.0f} tok/s + {s.overhead:.1f} s each")
        elif key in per_token:
            lines.append(f"{what} timed steps here (threads {threads[(model, method)]}): "
                         f"{1 / per_token[key]:,.0f} tok/s")
        else:
            lines.append(f"{what} one-shot (a fixed {ONESHOT_SECONDS:.0f} s)"
                         if method in ("magnitude", "wanda", "sparsegpt") else f"{what} no basis")
    return lines


def plan_estimates(plan, spec=None, basis_lines: list[str] | None = None
                   ) -> dict[str, RunEstimate]:
    """RunEstimate per run id: CPU runs as ``cpu_estimates`` (threads as the sweep's local
    backend will give them), CUDA runs from stored CUDA rates or the H200 model
    (castlab.sweep.plan.estimate_seconds; never timed here)."""
    from castlab.device import wants_cuda
    from castlab.sweep.plan import estimate_seconds, measured_throughput

    slots = cpu_slots(spec)
    from castlab.sweep.backends import cpu_cores, cpu_run_threads

    cores = cpu_cores()
    cpu = [r for r in plan if not wants_cuda(r.config.device)]
    out = cpu_estimates(cpu, lambda c: cpu_run_threads(c.threads, slots, cores), basis_lines) \
        if cpu else {}
    cuda = [r for r in plan if wants_cuda(r.config.device)]
    if cuda:
        rates = measured_throughput(sorted({r.run_dir.parent for r in cuda}), cuda=True)
        for r in cuda:
            out[r.run_id] = RunEstimate(estimate_seconds(r, rates), "gpu")
    return out


def cpu_slots(spec) -> int:
    """Concurrent CPU runs of the sweep's backend: the local backend's ``cpu_runs`` (one per
    core when unset), 1 without a sweep or on another backend."""
    if spec is None or spec.backend_name != "local":
        return 1
    return spec.backend_options.concurrent_cpu_runs()


def wall_seconds(plan, estimates: dict[str, float | None], spec) -> float:
    """Expected wall seconds of ``plan`` on a local CPU backend: teachers, then students, each
    phase the backend's queue over its CPU slots plus the sweep's start-up (0 for no runs)."""
    slots = cpu_slots(spec)
    total = 0.0
    for kind in ("teacher", "run"):
        seconds = [estimates.get(r.run_id) or 0.0 for r in plan if r.kind == kind]
        if seconds:
            total += SWEEP_START_SECONDS + queue_seconds(seconds, min(slots, len(seconds)))
    return total


def queue_seconds(seconds: list[float], slots: int) -> float:
    """Wall seconds of runs taken in order from one queue by ``slots`` workers."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)

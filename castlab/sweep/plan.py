"""From a sweep spec to a plan: dense teachers first, then one run per cell, content-hashed ids.

Teachers of ladder presets live under ``teachers_root()/<run_id>`` so every sweep that
asks for the same teacher reuses it; HF models are their own teacher (``init`` = the name).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from castlab import store
from castlab.config import ONESHOT_METHODS, TrainConfig, from_dict
from castlab.device import wants_cuda
from castlab.errors import UserError
from castlab.models import ParamCounts, is_preset
from castlab.paths import teachers_root
from castlab.sweep import MAX_PLANNED_RUNS  # noqa: F401 - read here (tests patch plan's copy)
from castlab.sweep.spec import SweepSpec, parse_budget, resolve_budget

# Fallback throughput for the time estimate when the store has no finished run of a model:
# effective training FLOP/s of one CPU run here (6 * params * tokens FLOPs per token trained).
DEFAULT_FLOPS = 3e9
STARTUP_SECONDS = 15.0  # process start, data and model load, final evals


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: its config, directory, and the teacher it needs (if any)."""

    config: TrainConfig
    run_dir: Path
    kind: Literal["teacher", "run"]
    needs: Path | None = None  # the teacher's run dir, which must be done first

    @property
    def run_id(self) -> str:
        """The content-hashed run id (also the directory name)."""
        return self.run_dir.name

    @property
    def label(self) -> str:
        """Short human description of the cell."""
        c = self.config
        return f"{c.method} {c.model} tokens={c.tokens} seed={c.seed}"


@functools.cache
def preset_param_counts(preset: str) -> ParamCounts:
    """Parameter counts of a ladder preset (independent of vocabulary for the in-scope count)."""
    from castlab.models import build_preset, count_parameters

    return count_parameters(build_preset(preset, vocab_size=256))



def in_scope_params(model: str) -> int:
    """In-scope (sparsifiable) parameters of a preset, or of an HF model from its config."""
    if is_preset(model):
        return preset_param_counts(model).in_scope
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise UserError(f"budgets: cannot read the config of '{model}' to resolve a 'xP' budget "
                        f"({str(err).splitlines()[0]}); give absolute budgets like '2M'") from None
    # Transformer blocks: attention (4 h^2) + MLP (2 h ffn), per layer; what in_scope_linears counts.
    hidden = cfg.hidden_size
    ffn = getattr(cfg, "ffn_dim", None) or getattr(cfg, "intermediate_size", 4 * hidden)
    mlp = 3 if hasattr(cfg, "intermediate_size") and not hasattr(cfg, "ffn_dim") else 2
    return cfg.num_hidden_layers * (4 * hidden * hidden + mlp * hidden * ffn)


def whole_steps(tokens: int, tokens_per_step: int) -> int:
    """A student budget rounded DOWN to whole optimizer steps (at least one step).

    The trainer runs ceil(tokens / step) steps, so '64k' at 16 x 64 tokens per step trained
    64,512 tokens, more than half of '128k' (128,000): the law's D/2 split (budgets <= D/2)
    dropped it. Rounding down keeps every nominal halving on its side of the cut, since
    floor(a/2) <= floor(a)/2 for any budget a in steps; the stored tokens are the trained ones.
    Suffixes stay decimal ('4k' = 4,000, as in `castlab predict`); budgets that are already
    whole steps (every shipped study's but smoke's) keep their run ids.
    """
    return max(1, tokens // tokens_per_step) * tokens_per_step


def _teacher(spec: SweepSpec, model: str, seed: int | None = None) -> PlannedRun:
    extra = {k: v for k, v in spec.teacher.items() if k != "tokens"}
    if seed is not None:  # only with teacher_seeds: a single teacher keeps its run id
        extra["seed"] = seed
    tokens = resolve_budget(parse_budget(spec.teacher["tokens"], "teacher.tokens"),
                            in_scope_params(model))
    data = {**spec.train, **spec.eval_settings(), **extra, "method": "dense", "model": model,
            "init": None, "tokens": tokens, "corpus": spec.corpus, "vocab_size": spec.vocab_size,
            "sweep": spec.name}
    cfg = from_dict(TrainConfig, data, where="teacher")
    return PlannedRun(cfg, teachers_root() / cfg.run_id(), "teacher")


def _lambda_for(spec: SweepSpec, budget_index: int | None) -> float | str:
    lam = spec.lambda_
    if isinstance(lam, list):
        return lam[budget_index] if budget_index is not None else "auto"
    return lam


def _extra_seeds(spec: SweepSpec, model: str, method: str, budget: int | float | None) -> list[int]:
    seeds: list[int] = []
    ends = {"largest": max(spec.parsed_budgets), "smallest": min(spec.parsed_budgets)} \
        if spec.parsed_budgets else {}
    for extra in spec.extra_seeds:
        if extra.models is not None and model not in extra.models:
            continue
        if extra.methods is not None and method not in extra.methods:
            continue
        if extra.budgets is not None and budget is not None:
            wanted = {ends[b] if b in ends else parse_budget(b, "extra_seeds") for b in extra.budgets}
            if budget not in wanted:
                continue
        seeds.extend(extra.seeds)
    return seeds


def planned_run_count(spec: SweepSpec) -> int:
    """Upper bound of the runs ``spec`` plans (teachers included), counted without building them."""
    extra = sum(len(e.seeds) for e in spec.extra_seeds)
    per_model = sum((1 if m.name in ONESHOT_METHODS else len(m.budgets or spec.parsed_budgets))
                    * (len(set(spec.seeds)) + extra) for m in spec.method_specs)
    teachers = max(1, len(spec.teacher_seeds))
    return sum(per_model + teachers * is_preset(model) for model in spec.models)


def check_plan_size(spec: SweepSpec, allow_large: bool = False) -> int:
    """The planned run count; a UserError past MAX_PLANNED_RUNS unless ``allow_large``."""
    count = planned_run_count(spec)
    if count > MAX_PLANNED_RUNS and not allow_large:
        raise UserError(f"{spec.name}: the sweep plans up to {count:,} runs, more than the limit "
                        f"of {MAX_PLANNED_RUNS:,} (check seeds, budgets and models); pass "
                        "--allow-large to plan it anyway")
    return count


def build_plan(spec: SweepSpec) -> list[PlannedRun]:
    """Teachers (one per preset, or one per teacher seed) then every cell; duplicates (same run
    id) appear once."""
    results = spec.results_dir()
    plan: dict[str, PlannedRun] = {}
    for model in spec.models:
        teachers = ([_teacher(spec, model, s) for s in spec.teacher_seeds] or [_teacher(spec, model)]
                    if is_preset(model) else [None])
        for teacher in teachers:
            if teacher is not None:
                plan.setdefault(teacher.run_id, teacher)
        params = None
        for mspec in spec.method_specs:
            if mspec.name in ONESHOT_METHODS:
                cells: list[tuple[int | float | None, int | None]] = [(None, None)]
            elif mspec.budgets is not None:
                parsed = [parse_budget(b, "budgets") for b in mspec.budgets]
                cells = [(b, spec.parsed_budgets.index(b) if b in spec.parsed_budgets else None)
                         for b in parsed]
            else:
                cells = [(b, i) for i, b in enumerate(spec.parsed_budgets)]
            for budget, index in cells:
                if budget is None:
                    tokens = 0
                else:
                    if isinstance(budget, float) and params is None:
                        params = in_scope_params(model)
                    tokens = resolve_budget(budget, params or 0)
                seeds = list(spec.seeds) + _extra_seeds(spec, model, mspec.name, budget)
                for seed in dict.fromkeys(seeds):
                    teacher = teachers[seed % len(teachers)]
                    init = str(teacher.run_dir / "model") if teacher else model
                    data = {**spec.train, **spec.eval_settings(), **mspec.settings,
                            "method": mspec.name, "model": model, "init": init, "tokens": tokens,
                            "seed": seed, "corpus": spec.corpus, "vocab_size": spec.vocab_size,
                            "sweep": spec.name, "lambda_": _lambda_for(spec, index)}
                    cfg = from_dict(TrainConfig, data, where=f"{mspec.name} {model}")
                    step = cfg.batch_size * cfg.seq_len
                    if tokens and tokens % step:  # trained tokens, so budgets split exactly
                        data["tokens"] = whole_steps(tokens, step)
                        cfg = from_dict(TrainConfig, data, where=f"{mspec.name} {model}")
                    run = PlannedRun(cfg, results / cfg.run_id(), "run",
                                     needs=teacher.run_dir if teacher else None)
                    plan.setdefault(run.run_id, run)
    runs = list(plan.values())
    return [r for r in runs if r.kind == "teacher"] + [r for r in runs if r.kind == "run"]


# ---- estimates -----------------------------------------------------------------------------


def finished_rows(dirs: list[Path]):
    """The ok rows with a training rate of the results folders ``dirs`` as one frame, with the
    folder of each in ``_folder``; None when there are none. Unreadable rows are skipped here
    (`castlab status` reports them)."""
    import pandas as pd

    frames = []
    for d in dirs:
        if d.exists() and any(store.result_paths(d)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    frames.append(store.load(d).assign(_folder=str(d)))
                except UserError:
                    continue
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    return df[(df["status"] == "ok") & (df["tokens_per_second"] > 0)]


def measured_throughput(dirs: list[Path], cuda: bool = False) -> dict[tuple[str, str], float]:
    """Median tokens/s of finished rows per (model, method), and per (model, '*'): of rows run
    on CUDA when ``cuda``, else of the others (a CPU rate says nothing of a GPU run)."""
    import pandas as pd

    df = finished_rows(dirs)
    if df is None:
        return {}
    # rows from before the device column ran on the CPU
    on_cuda = (df["device"].fillna("cpu").astype(str).str.startswith("cuda") if "device" in df
               else pd.Series(False, index=df.index))
    df = df[on_cuda if cuda else ~on_cuda]
    out = {(m, meth): float(v) for (m, meth), v in
           df.groupby(["model", "method"])["tokens_per_second"].median().items()}
    out.update({(m, "*"): float(v) for m, v in df.groupby("model")["tokens_per_second"].median().items()})
    return out


def estimate_seconds(run: PlannedRun, throughput: dict[tuple[str, str], float],
                     calibrate: bool = False) -> float | None:
    """Expected wall seconds of a run from stored runs' throughput, else from a few timed steps
    (``calibrate``; castlab.sweep.estimate), else from DEFAULT_FLOPS. A CUDA run (its device
    resolves to CUDA) takes ``throughput`` of CUDA rows, else castlab.sweep.gpu_estimate."""
    cfg = run.config
    if wants_cuda(cfg.device):  # never timed on this CPU: stored CUDA rates or the H200 model
        from castlab.sweep.gpu_estimate import run_estimate

        # the same method's rate only: a teacher's (its own batch size) says little of a
        # student step, where launches, not tokens, set the time
        est = run_estimate(cfg, throughput.get((cfg.model, cfg.method)))
        return None if est is None else est.seconds
    if cfg.method in ONESHOT_METHODS:
        return STARTUP_SECONDS
    rate = throughput.get((cfg.model, cfg.method)) or throughput.get((cfg.model, "*"))
    if rate is None:
        if not is_preset(cfg.model):
            return None
        if calibrate:  # nothing stored: time a few steps of this preset here
            from castlab.sweep.estimate import calibrated_seconds

            return calibrated_seconds(cfg)
        total = preset_param_counts(cfg.model).total
        teacher_factor = 1.0 if cfg.method == "dense" else 1.5  # KD adds a teacher forward
        rate = DEFAULT_FLOPS / (6 * total * teacher_factor)
    return STARTUP_SECONDS + int(cfg.tokens) / rate


def format_seconds(seconds: float | None) -> str:
    """'1h02m', '3m05s', '12s', or '?'."""
    if seconds is None or math.isnan(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

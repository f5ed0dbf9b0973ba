"""`castlab sweep FILE --verify K`: rerun K random done runs and compare them with their rows.

Each chosen run is trained again from the config it ran with (its ``config.yaml``), through the
same forked child as a sweep run, into a scratch folder outside the results directory (so no
second row of it ever enters the store). Bit-identical means the same ``eval_loss`` float and the
same bytes in every file of ``model/``. Rows record what their numbers depend on
(``castlab.provenance``); where the stored row ran under other threads, CPU kernels or BLAS than
this machine, the table says so, since bit-identity is not expected then.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import tempfile
from pathlib import Path

from castlab import provenance, store
from castlab.config import TrainConfig, load_yaml
from castlab.errors import UserError
from castlab.sweep.plan import PlannedRun, build_plan
from castlab.sweep.runner import execute_run
from castlab.sweep.spec import SweepSpec

# Row columns whose values must agree for a bit-identical rerun to be expected (not torch's
# threads: a sweep child sets the run's own `threads`, recorded in the row).
DEPENDS_ON = ("cpu_capability", "cpu_features", "blas", "torch_version")


def _model_digest(run_dir: Path) -> str | None:
    """sha256 over the names and bytes of every file in ``run_dir/model`` (None if absent)."""
    model = run_dir / "model"
    if not model.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(model)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def done_runs(plan: list[PlannedRun]) -> list[PlannedRun]:
    """The plan's trained or pruned runs (not teachers) that have an 'ok' row."""
    return [r for r in plan if r.kind == "run" and store.run_state(r.run_dir) == "done"]


def _expected_here(stored: dict) -> list[str]:
    """'column: stored -> here' for each DEPENDS_ON column that differs on this machine."""
    import torch

    here = {**provenance.columns(), "torch_version": torch.__version__}
    return [f"{k}: {stored.get(k)} -> {here[k]}" for k in DEPENDS_ON
            if stored.get(k) is not None and stored.get(k) != here[k]]


def verify(spec: SweepSpec, k: int, progress: bool = True, seed: int | None = None
           ) -> tuple[list[str], bool]:
    """Rerun ``k`` random done runs of ``spec``; the table's lines and whether all matched."""
    if k < 1:
        raise UserError(f"--verify: {k}; allowed a number of runs >= 1")
    done = done_runs(build_plan(spec))
    if not done:
        raise UserError(f"--verify: no done runs under {spec.results_dir()} to rerun "
                        f"(run `castlab sweep` first)")
    chosen = sorted(random.Random(seed).sample(done, min(k, len(done))), key=lambda r: r.run_id)
    scratch = Path(tempfile.mkdtemp(prefix="castlab-verify-"))
    lines = [f"{'run_id':<22} {'stored PPL':>12} {'rerun PPL':>12} {'delta':>11}  bit-identical"]
    notes, all_same = [], True
    for run in chosen:
        config_file = run.run_dir / store.CONFIG_FILE
        cfg = load_yaml(TrainConfig, config_file) if config_file.is_file() else run.config
        out = scratch / run.run_id
        outcome = execute_run(cfg, out, echo=progress)
        stored = store.read_row(run.run_dir)
        rerun = store.read_row(out) if outcome == "done" else None
        if rerun is None:
            reason = store.read_row(out).get("reason") if (out / store.RESULT_FILE).exists() else ""
            lines.append(f"{run.run_id:<22} {stored['ppl']:>12.6g} {'failed':>12} {'':>11}  no")
            notes.append(f"{run.run_id}: the rerun failed ({reason})")
            all_same = False
            continue
        same = (stored["eval_loss"] == rerun["eval_loss"]
                and _model_digest(run.run_dir) == _model_digest(out))
        all_same &= same
        delta = rerun["ppl"] - stored["ppl"]
        shown = f"{delta:+.3g}" if math.isfinite(delta) else "nan"
        lines.append(f"{run.run_id:<22} {stored['ppl']:>12.6g} {rerun['ppl']:>12.6g} {shown:>11}  "
                     f"{'yes' if same else 'no'}")
        differs = _expected_here(stored)
        if differs:
            notes.append(f"{run.run_id}: stored under other numerics ({'; '.join(differs)}), "
                         "so bit-identity is not expected")
    lines.extend(notes)
    if all_same:
        shutil.rmtree(scratch, ignore_errors=True)
        lines.append(f"{len(chosen)} of {len(done)} done runs rerun: all bit-identical")
    else:
        lines.append(f"{len(chosen)} of {len(done)} done runs rerun: NOT all bit-identical; "
                     f"reruns kept in {scratch}")
    return lines, all_same

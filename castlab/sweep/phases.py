"""Sweep phases: the dense teachers apart from the student runs that start from them.

A sweep whose whole plan does not fit one sitting (one GPU command, one job's time limit) runs
in two: ``castlab sweep FILE --phase teachers`` trains only the teachers the plan needs (cached
under ``$CASTLAB_CACHE/teachers``), ``castlab teachers pack`` carries them to another machine,
and ``castlab sweep FILE --phase students`` there trains every other run, refusing to start
while a teacher it needs is not done (it never trains one itself). ``all`` (the default) is
both, in that order, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from castlab.errors import UserError

if TYPE_CHECKING:  # PHASES is read when the command line is built: no torch, no pyarrow
    from castlab.sweep.plan import PlannedRun

Phase = Literal["teachers", "students", "all"]
PHASES: tuple[str, ...] = ("teachers", "students", "all")


def select(plan: list[PlannedRun], phase: str) -> list[PlannedRun]:
    """The runs of ``plan`` a phase executes: the teachers, the student runs, or all."""
    if phase == "all":
        return list(plan)
    kind = {"teachers": "teacher", "students": "run"}[phase]
    return [r for r in plan if r.kind == kind]


def needed_teachers(plan: list[PlannedRun]) -> list[Path]:
    """Teacher run dirs the plan's student runs start from, in plan order, once each."""
    return list(dict.fromkeys(r.needs for r in plan if r.kind == "run" and r.needs is not None))


def missing_teachers(plan: list[PlannedRun]) -> list[Path]:
    """Needed teacher dirs that are not done (pending, running, failed or corrupt)."""
    from castlab import store

    return [d for d in needed_teachers(plan) if store.run_state(d) != "done"]


def check_teachers_ready(plan: list[PlannedRun], sweep_file: Path | str) -> None:
    """A one-line UserError naming the missing teachers and the commands that make or unpack
    them, when a student phase would have to train a teacher itself."""
    from castlab import store

    missing = missing_teachers(plan)
    if not missing:
        return
    labels = {r.run_id: r.label for r in plan if r.kind == "teacher"}
    shown = ", ".join(f"{d.name} ({labels.get(d.name, 'teacher')}; "
                      f"{store.run_state(d)})" for d in missing[:4])
    more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
    raise UserError(f"--phase students: {len(missing)} teacher(s) the plan needs are not done in "
                    f"{missing[0].parent}: {shown}{more}; train them with `castlab sweep "
                    f"{sweep_file} --phase teachers` or unpack a pack with `castlab teachers "
                    "unpack FILE`")


def _slots(spec) -> tuple[int, int, str]:
    """(concurrent runs, runs per GPU, note) of the local backend for CUDA runs; one GPU is
    assumed when none is visible here (the plan is made for the machine it will run on)."""
    from castlab.sweep.backends import visible_gpus

    opts = spec.backend_options
    per_gpu = getattr(opts, "runs_per_gpu", 1)
    seen = len(visible_gpus())
    gpus = seen or 1
    if getattr(opts, "gpus", None) is not None:
        gpus = min(gpus, opts.gpus) or 1
    note = f"{gpus} GPU{'s' * (gpus != 1)}{'' if seen else ' (assumed; none visible here)'}"
    return gpus * per_gpu, per_gpu, note


def phase_summary(plan: list[PlannedRun], estimates: dict[str, float | None], spec,
                  left_states: tuple[str, ...]) -> list[str]:
    """Per phase (teachers, students): runs left, their summed estimate, and the expected wall
    time on the sweep's backend (local: in turn on a CPU; CUDA runs ``runs_per_gpu`` per card,
    sharing it as castlab.sweep.gpu_estimate models)."""
    from castlab import store
    from castlab.device import wants_cuda
    from castlab.sweep import gpu_estimate
    from castlab.sweep.plan import format_seconds, measured_throughput

    lines = []
    rates = None
    for phase, kind in (("teachers", "teacher"), ("students", "run")):
        group = [r for r in plan if r.kind == kind]
        if not group:
            continue
        left = [r for r in group if store.run_state(r.run_dir) in left_states]
        total = sum(estimates.get(r.run_id) or 0.0 for r in left)
        head = (f"phase {phase}: {len(left)} of {len(group)} runs left, "
                f"{format_seconds(total)} of run time")
        cuda = [r for r in left if wants_cuda(r.config.device)]
        if spec.backend_name != "local":
            lines.append(head + f" (backend {spec.backend_name})")
            continue
        if not cuda:  # the local backend's queue over its CPU slots
            from castlab.sweep.estimate import SWEEP_START_SECONDS, cpu_slots, queue_seconds

            slots = min(cpu_slots(spec), len(left)) or 1
            wall = (SWEEP_START_SECONDS + queue_seconds(
                [estimates.get(r.run_id) or 0.0 for r in left], slots)) if left else 0.0
            lines.append(head + f"; wall {format_seconds(wall)} ("
                         + ("one run at a time" if slots == 1 else f"{slots} runs at once")
                         + ")")
            continue
        if rates is None:
            rates = measured_throughput(sorted({r.run_dir.parent for r in plan}), cuda=True)
        slots, per_gpu, note = _slots(spec)
        runs = []
        for r in left:
            rate = rates.get((r.config.model, r.config.method))  # as plan.estimate_seconds
            est = gpu_estimate.run_estimate(r.config, rate) if r in cuda else None
            runs.append(est or gpu_estimate.GpuRunEstimate(estimates.get(r.run_id) or 0.0, 0.0))
        wall = gpu_estimate.makespan(runs, slots, per_gpu)
        lines.append(head + f"; wall {format_seconds(wall)} on {note} x {per_gpu} "
                     f"run{'s' * (per_gpu != 1)} per GPU")
    return lines

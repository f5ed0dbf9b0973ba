"""Backends that execute a plan: local (one after another), Ray tasks, SLURM via submitit.

Every backend runs the same unit, ``runner.execute_run`` (claim, child process, row), on the same
store, so resume and skip rules do not depend on where runs execute. A backend gets a list of
runs whose prerequisites are done and returns {run_id: outcome}. Add one by writing a class with
an ``Options`` dataclass and ``execute`` and registering it in ``BACKENDS``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tqdm.auto import tqdm

from castlab.config import to_dict
from castlab.errors import UserError
from castlab.sweep.plan import PlannedRun
from castlab.sweep.runner import Outcome, execute_run

SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class Backend(Protocol):
    """Runs a batch of independent planned runs and reports each one's outcome."""

    def execute(self, runs: list[PlannedRun], retry_failed: bool) -> dict[str, Outcome]: ...


def _report(bar: tqdm, run: PlannedRun, outcome: str) -> None:
    bar.update(1)
    if outcome in ("done", "failed", "running"):
        tqdm.write(f"  {outcome:<7} {run.run_id}  {run.label}")



def _import_backend_package(module: str, backend: str, extra: str):
    """Import an optional backend package, or a one-line UserError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"backend {backend}: the '{module}' package is not installed "
                        f"(pip install 'castlab[{extra}]')") from None

@dataclass
class LocalBackend:
    """One run after another on this machine, each in its own child process."""

    @dataclass
    class Options:
        """No options: parallelism on one CPU machine only slows each run down."""

    options: Options = field(default_factory=Options)
    progress: bool = True

    def execute(self, runs: list[PlannedRun], retry_failed: bool) -> dict[str, Outcome]:
        """Run sequentially with a bar over runs; the child's own bar shows within each run."""
        out: dict[str, Outcome] = {}
        with tqdm(total=len(runs), desc="sweep", unit="run", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for run in runs:
                bar.set_postfix_str(f"{run.run_id}", refresh=True)
                out[run.run_id] = execute_run(run.config, run.run_dir, retry_failed,
                                              echo=self.progress)
                _report(bar, run, out[run.run_id])
        return out


@dataclass
class RayBackend:
    """Each run a Ray task with its CPU/GPU request, on an existing cluster or a new local one."""

    @dataclass
    class Options:
        """Ray settings: ``address`` 'auto' joins a running cluster; null starts a local one."""

        address: str | None = "auto"
        num_cpus: float = 1.0
        num_gpus: float = 0.0
        memory_gb: float | None = None

    options: Options = field(default_factory=Options)
    progress: bool = True

    def execute(self, runs: list[PlannedRun], retry_failed: bool) -> dict[str, Outcome]:
        """Submit every run as a task; a failed task fails its run only."""
        ray = _import_backend_package("ray", backend="ray", extra="ray")
        opts = self.options
        try:
            # Workers import castlab from this checkout (a shared filesystem, as on any cluster).
            ray.init(address=opts.address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": SOURCE_ROOT}})
        except ConnectionError as err:
            raise UserError(f"backend ray: cannot connect to address '{opts.address}' ({err}); "
                            "start one with `ray start --head` or set backend.address") from None
        resources: dict[str, Any] = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus,
                                     "max_retries": 0}
        if opts.memory_gb:
            resources["memory"] = int(opts.memory_gb * 2**30)
        task = ray.remote(**resources)(execute_run)
        pending = {task.remote(to_dict(r.config), str(r.run_dir), retry_failed, False): r
                   for r in runs}
        out: dict[str, Outcome] = {}
        try:
            with tqdm(total=len(runs), desc="sweep (ray)", unit="run", disable=not self.progress,
                      dynamic_ncols=True) as bar:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    run = pending.pop(ready[0])
                    try:
                        out[run.run_id] = ray.get(ready[0])
                    except ray.exceptions.RayError as err:  # worker died: that run only
                        tqdm.write(f"  ray task for {run.run_id} died: {type(err).__name__}")
                        out[run.run_id] = "failed"
                    _report(bar, run, out[run.run_id])
        except BaseException:
            for ref in pending:  # cancelled workers die, their children follow (pdeathsig)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        return out


@dataclass
class SlurmBackend:
    """A submitit job array per batch; ``cluster: local`` runs the array on this machine."""

    @dataclass
    class Options:
        """SLURM settings passed to submitit.AutoExecutor."""

        cluster: Literal["slurm", "local", "auto"] = "slurm"
        partition: str | None = None
        timeout_min: int = 240
        cpus_per_task: int = 2
        gpus_per_node: int = 0
        mem_gb: float | None = None
        array_parallelism: int = 64
        folder: str | None = None  # submitit logs; default <results>/.submitit
        additional: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters

    options: Options = field(default_factory=Options)
    progress: bool = True

    def execute(self, runs: list[PlannedRun], retry_failed: bool) -> dict[str, Outcome]:
        """Submit the runs as one job array and wait for every job."""
        submitit = _import_backend_package("submitit", backend="slurm", extra="slurm")
        if not runs:
            return {}
        opts = self.options
        folder = Path(opts.folder) if opts.folder else runs[-1].run_dir.parent / ".submitit"
        cluster = None if opts.cluster == "auto" else opts.cluster
        try:
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
        except (ValueError, RuntimeError) as err:
            raise UserError(f"backend slurm: {err} (use cluster: local to test without SLURM)") from None
        executor.update_parameters(
            timeout_min=opts.timeout_min, cpus_per_task=opts.cpus_per_task,
            gpus_per_node=opts.gpus_per_node, mem_gb=opts.mem_gb, name="castlab",
            slurm_partition=opts.partition, slurm_array_parallelism=opts.array_parallelism,
            slurm_additional_parameters=opts.additional or None,
        )
        n = len(runs)
        jobs = executor.map_array(execute_run, [to_dict(r.config) for r in runs],
                                  [str(r.run_dir) for r in runs], [retry_failed] * n, [False] * n)
        out: dict[str, Outcome] = {}
        try:
            with tqdm(total=n, desc="sweep (slurm)", unit="run", disable=not self.progress,
                      dynamic_ncols=True) as bar:
                for job, run in zip(jobs, runs, strict=True):
                    try:
                        out[run.run_id] = job.result()
                    except Exception as err:  # submitit raises on a failed job: that run only
                        tqdm.write(f"  job {job.job_id} for {run.run_id} failed: "
                                   f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}")
                        out[run.run_id] = "failed"
                    _report(bar, run, out[run.run_id])
        except BaseException:
            for job in jobs:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
            raise
        return out


BACKENDS: dict[str, type] = {"local": LocalBackend, "ray": RayBackend, "slurm": SlurmBackend}


def make_backend(name: str, options: Any, progress: bool = True) -> Backend:
    """Instantiate a registered backend with its validated options."""
    return BACKENDS[name](options=options, progress=progress)

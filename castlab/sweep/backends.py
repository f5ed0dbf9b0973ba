"""Backends that execute a plan: local (one after another), Ray tasks, SLURM via submitit.

Every backend runs the same unit, ``runner.execute_run`` (claim, child process, row), on the same
store, so resume and skip rules do not depend on where runs execute. A backend gets a list of
runs whose prerequisites are done and returns {run_id: outcome}. Add one by writing a class with
an ``Options`` dataclass and ``execute`` and registering it in ``BACKENDS``.

GPUs: the local backend runs ``runs_per_gpu`` runs (default 1) per visible GPU at a time, each
child pinned to its card with ``CUDA_VISIBLE_DEVICES``; CPU runs (``device: cpu``, or no GPU
visible; a fixed ``cuda:N`` too) go ``cpu_runs`` at a time (default: one per core, one thread
each: measured faster than one run on every core for the ladder presets, analysis/RECIPE_STUDY.md); Ray pins through ``num_gpus`` (Ray sets the variable for its
workers); SLURM through submitit's GPU options. This module imports nothing of the plan or the
sweep file (only for type checking), so ``spec`` can import ``BACKENDS`` without a cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tqdm.auto import tqdm

from castlab.config import check_range, to_dict
from castlab.errors import UserError
from castlab.sweep.runner import Outcome, execute_run

if TYPE_CHECKING:
    from castlab.sweep.plan import PlannedRun
    from castlab.sweep.progress import SweepProgress

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

def visible_gpus() -> list[str]:
    """Ids of the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    from castlab.device import cuda_count

    count = cuda_count()
    listed = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def gpu_slots(gpus: list[str], runs_per_gpu: int) -> list[str]:
    """One entry per concurrent run: each GPU id ``runs_per_gpu`` times, cards interleaved
    (['0', '1', '0', '1'] for two cards and 2 runs each), so a short queue spreads over cards
    before it doubles up on one."""
    return [gpu for _ in range(runs_per_gpu) for gpu in gpus]


def gpus_per_run(option: float | None, run: PlannedRun, cluster_gpus: float = 0.0) -> float:
    """GPUs a cluster backend requests for a run: the option when set, else 1 for a run whose
    device names CUDA, and for ``auto`` when the cluster has GPUs (``cluster_gpus`` > 0: ``auto``
    means CUDA where one is visible, and a task granted none would run on the CPU)."""
    if option is not None:
        return option
    device = run.config.device
    return 1.0 if device.startswith("cuda") or (device == "auto" and cluster_gpus > 0) else 0.0


def spreads_over_gpus(run: PlannedRun) -> bool:
    """Whether a run may go to any visible GPU (device auto or cuda; cpu and cuda:N stay put)."""
    return run.config.device in ("auto", "cuda")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity set where the OS has one)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_run_threads(config_threads: int, cpu_runs: int, cores: int) -> int:
    """Torch threads of one of ``cpu_runs`` concurrent CPU runs on ``cores`` cores: the run's
    own setting (0: all it may have) capped at its share of the cores, at least 1. A single run
    (``cpu_runs`` 1) keeps its setting as it is."""
    if cpu_runs <= 1:
        return config_threads
    share = max(1, cores // cpu_runs)
    return share if config_threads == 0 else min(config_threads, share)


@dataclass
class LocalBackend:
    """Runs on this machine, each in its own child process: ``runs_per_gpu`` per visible GPU at
    a time, and CPU runs ``cpu_runs`` at a time (default one per core, each on its share of the
    cores)."""

    @dataclass
    class Options:
        """``gpus``: most GPUs to use at once (null: every visible one; 0: none).
        ``runs_per_gpu``: concurrent runs per GPU; small models leave a large card mostly idle
        (their steps are bound by kernel launches), so several share it.
        ``cpu_runs``: concurrent CPU runs (null: one per core), each with its share of the
        cores as torch threads (the run's ``threads`` capped at cores // cpu_runs); 1 runs them
        one after another with their own thread setting, as before."""

        gpus: int | None = None
        runs_per_gpu: int = 1
        cpu_runs: int | None = None

        def validate(self, where: str) -> None:
            """gpus is a count; runs_per_gpu and cpu_runs whole numbers >= 1."""
            if self.gpus is not None and self.gpus < 0:
                raise UserError(f"{where}.gpus: got {self.gpus}, allowed >= 0 or null")
            for name in ("runs_per_gpu", "cpu_runs"):
                k = getattr(self, name)
                if k is None and name == "cpu_runs":
                    continue
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise UserError(f"{where}.{name}: got {k!r}, allowed an integer >= 1"
                                    + (" or null (one per core)" if name == "cpu_runs" else ""))

        def concurrent_cpu_runs(self) -> int:
            """CPU runs at once: ``cpu_runs``, or one per core when it is null."""
            return self.cpu_runs if self.cpu_runs is not None else cpu_cores()

    options: Options = field(default_factory=Options)
    progress: bool = True
    tracker: SweepProgress | None = None  # sweep-wide 'run k of N' lines replace the bar

    def execute(self, runs: list[PlannedRun], retry_failed: bool) -> dict[str, Outcome]:
        """Run with a bar over runs; CPU runs ``cpu_runs`` at a time (with one at a time the
        child's own bar shows within each), GPU runs ``runs_per_gpu`` per card at a time."""
        gpus = visible_gpus() if any(spreads_over_gpus(r) for r in runs) else []
        if self.options.gpus is not None:
            gpus = gpus[:self.options.gpus]
        on_gpus = [r for r in runs if gpus and spreads_over_gpus(r)]
        in_turn = [r for r in runs if r not in on_gpus]
        out: dict[str, Outcome] = {}
        track = self.tracker
        cpu_runs = min(self.options.concurrent_cpu_runs(), len(in_turn))
        with tqdm(total=len(runs), desc="sweep", unit="run", dynamic_ncols=True,
                  disable=not self.progress or track is not None) as bar:
            if cpu_runs > 1:
                cores = cpu_cores()
                shared = [dataclasses.replace(r, config=dataclasses.replace(
                    r.config, threads=cpu_run_threads(r.config.threads, cpu_runs, cores)))
                    for r in in_turn]
                self._execute_in_slots(shared, [None] * cpu_runs, retry_failed, bar, out)
                in_turn = []
            for run in in_turn:
                bar.set_postfix_str(f"{run.run_id}", refresh=True)
                began = track.begin(run.run_id, run.label, self.progress) if track else 0.0
                out[run.run_id] = execute_run(run.config, run.run_dir, retry_failed,
                                              echo=self.progress)
                if track:
                    # a run another sweep holds ("running") or skipped took no time here:
                    # not a rate sample
                    track.end(run.run_id, began, executed=out[run.run_id] in ("done", "failed"))
                _report(bar, run, out[run.run_id])
            if on_gpus:
                slots = gpu_slots(gpus, self.options.runs_per_gpu)
                self._execute_in_slots(on_gpus, slots, retry_failed, bar, out)
        return out

    def _execute_in_slots(self, runs: list[PlannedRun], slots: list[str | None],
                          retry_failed: bool, bar: tqdm, out: dict[str, Outcome]) -> None:
        """One worker thread per slot takes the next run and trains it: pinned to the slot's
        card (``slots`` lists a GPU id once per slot), or on the CPU for a None slot.

        The threads are daemons: an interrupted sweep exits, and its children follow (each
        child dies with the sweep, see runner), leaving checkpoints to resume from.
        """
        queue, lock = list(runs), threading.Lock()
        echo = self.progress and len(slots) == 1  # several children's bars would interleave
        track = self.tracker

        def worker(gpu: str | None) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    run = queue.pop(0)
                    began = track.begin(run.run_id, run.label, self.progress) if track else 0.0
                env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
                try:
                    outcome = execute_run(run.config, run.run_dir, retry_failed, echo=echo,
                                          env=env)
                except Exception as err:  # noqa: BLE001 - that run only; the others go on
                    where = f"on GPU {gpu}" if gpu is not None else "on the CPU"
                    tqdm.write(f"  run {run.run_id} {where} failed to start: {err}")
                    outcome = "failed"
                with lock:
                    out[run.run_id] = outcome
                    if track:
                        track.end(run.run_id, began, executed=outcome in ("done", "failed"))
                    _report(bar, run, outcome)

        threads = [threading.Thread(target=worker, args=(gpu,), daemon=True,
                                    name=f"castlab-slot-{gpu or 'cpu'}-{i}")
                   for i, gpu in enumerate(slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # join with a timeout so Ctrl-C reaches this thread
                thread.join(0.5)


@dataclass
class RayBackend:
    """Each run a Ray task with its CPU/GPU request, on an existing cluster or a new local one."""

    @dataclass
    class Options:
        """Ray settings: ``address`` 'auto' joins a running cluster; null starts a local one."""

        address: str | None = "auto"
        num_cpus: float = 1.0
        # null: 1 per run whose device is cuda or cuda:N, or auto on a cluster with GPUs; else 0
        num_gpus: float | None = None
        memory_gb: float | None = None

        def validate(self, where: str) -> None:
            """Resource requests: none negative, memory positive when given."""
            check_range(self.num_cpus, (0, 1e6, False, False), f"{where}.num_cpus")
            if self.num_gpus is not None:
                check_range(self.num_gpus, (0, 1e6, False, False), f"{where}.num_gpus")
            if self.memory_gb is not None:
                check_range(self.memory_gb, (0, None, True, False), f"{where}.memory_gb")

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
        resources: dict[str, Any] = {"num_cpus": opts.num_cpus, "max_retries": 0}
        if opts.memory_gb:
            resources["memory"] = int(opts.memory_gb * 2**30)
        # Ray sets CUDA_VISIBLE_DEVICES for a task to the GPUs it was granted; the run's child
        # inherits it, so each run sees its own card(s) as cuda:0...
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))  # auto: a card when any
        pending = {ray.remote(num_gpus=gpus_per_run(opts.num_gpus, r, cluster_gpus), **resources)
                   (execute_run)
                   .remote(to_dict(r.config), str(r.run_dir), retry_failed, False): r for r in runs}
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
        gpus_per_node: int | None = None  # null: 1 when the runs' device is cuda or cuda:N, else 0
        gres: str | None = None  # e.g. 'gpu:a100:1' where a cluster asks for GPUs by --gres
        mem_gb: float | None = None
        array_parallelism: int = 64
        folder: str | None = None  # submitit logs; default <results>/.submitit
        additional: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters

        def validate(self, where: str) -> None:
            """Job sizes: at least one minute, CPU and array slot; no negative GPUs or memory."""
            for name in ("timeout_min", "cpus_per_task", "array_parallelism"):
                check_range(getattr(self, name), (1, None, False, False), f"{where}.{name}")
            if self.gpus_per_node is not None:
                check_range(self.gpus_per_node, (0, None, False, False), f"{where}.gpus_per_node")
            if self.mem_gb is not None:
                check_range(self.mem_gb, (0, None, True, False), f"{where}.mem_gb")

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
        gpus = max(gpus_per_run(opts.gpus_per_node, r) for r in runs)
        executor.update_parameters(
            timeout_min=opts.timeout_min, cpus_per_task=opts.cpus_per_task,
            gpus_per_node=int(gpus), mem_gb=opts.mem_gb, name="castlab",
            slurm_partition=opts.partition, slurm_array_parallelism=opts.array_parallelism,
            slurm_additional_parameters=opts.additional or None,
            **({"slurm_gres": opts.gres} if opts.gres else {}),
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

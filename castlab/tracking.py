"""Training curves where people already look: TensorBoard event files, and W&B / MLflow on request.

Every `castlab train` (hence every sweep run, which is a `castlab train` in a child process)
writes TensorBoard event files into ``RUN_DIR/tensorboard/`` when the ``tensorboard`` package is
installed (``pip install 'castlab[tensorboard]'``): the training objective, the validation
cross-entropy and PPL, the lr and the method's diagnostics at every eval, the final PPLs, and the
run's config (as text and as TensorBoard hyper-parameters, so the HParams tab compares the runs
of a sweep). ``tensorboard --logdir RESULTS`` then shows every run, named by its run id.

Which trackers run is chosen by ``CASTLAB_TRACKERS`` (a comma list of ``TRACKERS`` names;
default ``tensorboard``; ``none`` turns logging off). An environment variable rather than a config
field: where curves are mirrored to is not part of what a run computes, so it must not enter the
run id, and a sweep's children inherit it. ``wandb`` and ``mlflow`` are used only when named there
and installed; a named tracker that is not installed is a one-line error before training starts.
Add a tracker by registering a class with ``log(scalars, step)`` and ``close()`` in ``TRACKERS``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import yaml

from castlab.errors import UserError

ENV = "CASTLAB_TRACKERS"
DEFAULT = "tensorboard"
TB_DIR = "tensorboard"  # inside the run directory
# curve columns that are not scalars to plot against the step
NOT_SCALARS = {"step", "tokens"}


def objective_name(uses_teacher: bool) -> str:
    """What the training loss of a run is: the distillation objective (eta * KL + (1 - eta) * CE,
    ``castlab.sparsity.distill.kd_loss``) when a teacher is used, else the cross-entropy."""
    return "train_kd" if uses_teacher else "train_ce"


def curve_scalars(record: dict, uses_teacher: bool) -> dict[str, float]:
    """The finite numbers of one curve record under the tags the trackers use."""
    out = {}
    for key, value in record.items():
        if key in NOT_SCALARS or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            continue
        if key == "train_loss":
            out[f"train/{objective_name(uses_teacher)[6:]}_objective"] = float(value)
        elif key == "eval_loss":
            out["val/ce_loss"] = float(value)
            out["val/ppl"] = math.exp(value)
        elif key == "lr":
            out["train/lr"] = float(value)
        else:
            out[f"diagnostics/{key}"] = float(value)
    return out


def final_scalars(row: dict) -> dict[str, float]:
    """The finished run's headline numbers (``final/ppl`` ...) from its result row."""
    keys = ("ppl", "eval_loss", "test_ppl", "test_loss", "prune_shock", "train_seconds")
    return {f"final/{k}": float(row[k]) for k in keys
            if isinstance(row.get(k), int | float) and math.isfinite(row[k])}


def flat_config(cfg_dict: dict) -> dict[str, str | float | int | bool]:
    """The config as hyper-parameters: scalars kept, None and lists as text."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in cfg_dict.items()}


class TensorBoardTracker:
    """Event files through ``torch.utils.tensorboard.SummaryWriter`` in ``RUN_DIR/tensorboard``,
    opened at the first record (a run stopped by a user error before its first eval leaves no
    folder behind)."""

    package = "tensorboard"

    def __init__(self, cfg_dict: dict, run_dir: Path, name: str):
        self.cfg_dict, self.log_dir = cfg_dict, run_dir / TB_DIR
        self.writer = None

    def _open(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            text = yaml.safe_dump(self.cfg_dict, sort_keys=False)
            # TensorBoard renders text as Markdown: indented, the YAML shows as a code block
            self.writer.add_text("config", "\n".join("    " + ln for ln in text.splitlines()))
        return self.writer

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Write one step's scalars and flush (a failing run keeps what was logged)."""
        writer = self._open()
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def close(self, final: dict[str, float] | None = None) -> None:
        """Log the final numbers with the config as hyper-parameters (HParams tab), close."""
        if final:
            from torch.utils.tensorboard.summary import hparams

            writer = self._open()
            for tag, value in final.items():
                writer.add_scalar(tag, value)
            # through the plain writer: add_hparams would write into a new sub-run folder
            for summary in hparams(flat_config(self.cfg_dict), final):
                writer.file_writer.add_summary(summary)
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """Weights & Biases (only when named in CASTLAB_TRACKERS and installed); the project is
    ``$WANDB_PROJECT`` or ``castlab``, the run named by its run id."""

    package = "wandb"

    def __init__(self, cfg_dict: dict, run_dir: Path, name: str):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "castlab"), name=name,
                              config=cfg_dict, dir=str(run_dir), reinit=True)

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Log one step's scalars."""
        self.run.log(scalars, step=step)

    def close(self, final: dict[str, float] | None = None) -> None:
        """Put the final numbers in the run summary and finish the run."""
        if final:
            self.run.summary.update(final)
        self.run.finish()


class MlflowTracker:
    """MLflow (only when named in CASTLAB_TRACKERS and installed): the tracking URI and experiment
    come from MLflow's own environment variables; the run is named by its run id."""

    package = "mlflow"

    def __init__(self, cfg_dict: dict, run_dir: Path, name: str):
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        # MLflow caps a parameter value at 500 characters
        mlflow.log_params({k: str(v)[:500] for k, v in cfg_dict.items()})

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Log one step's scalars ('/' is allowed in MLflow metric names)."""
        self.mlflow.log_metrics(scalars, step=step)

    def close(self, final: dict[str, float] | None = None) -> None:
        """Log the final numbers and end the run."""
        if final:
            self.mlflow.log_metrics(final)
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def requested(value: str | None = None) -> tuple[list[str], bool]:
    """Tracker names from ``CASTLAB_TRACKERS`` (or ``value``) and whether the user named them."""
    given = os.environ.get(ENV) if value is None else value
    explicit = given is not None
    names = [n.strip().lower() for n in (given if explicit else DEFAULT).split(",") if n.strip()]
    if names == ["none"] or not names:
        return [], explicit
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UserError(f"{ENV}: unknown tracker(s) {', '.join(unknown)}; allowed: "
                        f"{', '.join(TRACKERS)} (comma-separated) or none")
    return list(dict.fromkeys(names)), explicit


class Trackers:
    """The run's trackers: ``log(curve)`` sends the curve records not yet sent, ``close(row)``."""

    def __init__(self, trackers: list, uses_teacher: bool, curve: list[dict] | None = None):
        self.trackers = trackers
        self.uses_teacher = uses_teacher
        # a resumed run logged its curve up to its last eval before it stopped
        evals = [i for i, r in enumerate(curve or []) if "eval_loss" in r]
        self.sent = evals[-1] + 1 if evals else 0

    def log(self, curve: list[dict]) -> None:
        """Log ``curve[sent:]`` (records whose train loss reached the host) at their steps."""
        for record in curve[self.sent:]:
            scalars = curve_scalars(record, self.uses_teacher)
            for tracker in self.trackers:
                tracker.log(scalars, int(record["step"]))
        self.sent = len(curve)

    def close(self, row: dict | None = None) -> None:
        """Log the final numbers of ``row`` (when the run finished) and close every tracker."""
        final = final_scalars(row) if row else None
        for tracker in self.trackers:
            tracker.close(final)
        self.trackers = []


def open_trackers(cfg, run_dir: str | Path, *, enabled: bool = True, uses_teacher: bool = False,
                  curve: list[dict] | None = None) -> Trackers:
    """The trackers ``CASTLAB_TRACKERS`` asks for (default: TensorBoard when installed) for the run
    of ``cfg`` in ``run_dir``; nothing when ``enabled`` is False (ranks > 0 of a DDP run).
    ``curve``: the records a resumed run already has."""
    if not enabled:
        return Trackers([], uses_teacher, curve)
    names, explicit = requested()
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n].package) is None]
    if missing and explicit:
        raise UserError(f"{ENV}: {', '.join(missing)} is not installed (pip install "
                        f"{' '.join(TRACKERS[n].package for n in missing)}; castlab's extra: "
                        "'castlab[tensorboard]'), or leave it out of the list")
    from castlab.config import to_dict

    cfg_dict = to_dict(cfg)
    run_dir = Path(run_dir)
    made = [TRACKERS[n](cfg_dict, run_dir, run_dir.name) for n in names if n not in missing]
    return Trackers(made, uses_teacher, curve)

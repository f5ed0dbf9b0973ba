"""Training curves in TensorBoard (and the tracker registry) and the progress bar's loss label
(issue 24): event files read back with TensorBoard's own reader and compared with curve.parquet."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import pandas as pd
import pytest
from conftest import tiny_config

from castlab import tracking
from castlab.errors import UserError


def _events(run_dir):
    """TensorBoard's own reader over the run's event files."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(run_dir / tracking.TB_DIR),
                                       size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A 20-step dense opt-tiny run with evals at 8, 16, 20 and the default trackers."""
    pytest.importorskip("torch.utils.tensorboard")
    from castlab.train import run_training

    run_dir = tmp_path_factory.mktemp("tb") / "dense"
    row = run_training(tiny_config(method="dense", tokens=20 * 8 * 64, eval_every=8), run_dir,
                       progress=False)
    assert row["status"] == "ok"
    return run_dir, row


def test_train_writes_event_files_matching_the_stored_curve(dense_run):
    run_dir, row = dense_run
    acc = _events(run_dir)
    tags = acc.Tags()["scalars"]
    curve = pd.read_parquet(run_dir / "curve.parquet")
    evals = curve.dropna(subset=["eval_loss"])
    assert list(evals["step"]) == [8, 16, 20]
    val = acc.Scalars("val/ce_loss")
    assert [e.step for e in val] == [8, 16, 20]
    assert [e.value for e in val] == pytest.approx(list(evals["eval_loss"]), rel=1e-6)
    ppl = [e.value for e in acc.Scalars("val/ppl")]
    assert ppl == pytest.approx([math.exp(v) for v in evals["eval_loss"]], rel=1e-5)
    # every step's training loss (CE: no teacher) and lr, not only the eval steps
    train = acc.Scalars("train/ce_objective")
    assert [e.step for e in train] == list(range(1, 21))
    assert [e.value for e in train] == pytest.approx(list(curve["train_loss"]), rel=1e-6)
    assert "train/kd_objective" not in tags
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(list(curve["lr"]),
                                                                        rel=1e-6)
    assert acc.Scalars("final/ppl")[0].value == pytest.approx(row["ppl"], rel=1e-6)


def test_event_files_carry_the_run_config(dense_run):
    run_dir, _ = dense_run
    acc = _events(run_dir)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model: opt-tiny" in text and "method: dense" in text and "seq_len: 64" in text
    # the config as hyper-parameters (TensorBoard's HParams tab), from the same run folder
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["model"].string_value == "opt-tiny"
    assert start.hparams["seq_len"].number_value == 64
    assert [p.name for p in (run_dir / tracking.TB_DIR).iterdir() if p.is_dir()] == []


def test_kd_run_labels_its_objective_in_events_and_progress_bar(dense_run, tmp_path, capsys):
    """A run with a teacher logs the distillation objective under its own name, and the progress
    bar says which loss it shows (it used to print an unlabelled `loss`)."""
    from castlab.train import run_training

    teacher_dir, _ = dense_run
    cfg = tiny_config(method="dense-kd", init=str(teacher_dir / "model"), tokens=8 * 8 * 64,
                      eval_every=4)
    row = run_training(cfg, tmp_path / "kd", progress=True)
    assert row["status"] == "ok"
    bar = capsys.readouterr().err
    assert "train_kd=" in bar and "val_ce=" in bar and " loss=" not in bar
    acc = _events(tmp_path / "kd")
    assert [e.step for e in acc.Scalars("train/kd_objective")] == list(range(1, 9))
    assert "train/ce_objective" not in acc.Tags()["scalars"]


def test_trackers_off_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV, "none")
    assert tracking.open_trackers(tiny_config(method="dense"), tmp_path / "r").trackers == []
    monkeypatch.setenv(tracking.ENV, "tensorboard,neptune")
    with pytest.raises(UserError, match=r"CASTLAB_TRACKERS: unknown tracker\(s\) neptune; "
                                        "allowed: tensorboard, wandb, mlflow"):
        tracking.open_trackers(tiny_config(method="dense"), tmp_path / "r")
    monkeypatch.delenv(tracking.ENV)
    assert tracking.requested() == (["tensorboard"], False)


def test_a_named_tracker_that_is_not_installed_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV, "mlflow")
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name: None if name == "mlflow" else object())
    with pytest.raises(UserError, match="CASTLAB_TRACKERS: mlflow is not installed"):
        tracking.open_trackers(tiny_config(method="dense"), tmp_path / "r")


def test_wandb_gets_the_config_each_eval_and_the_final_numbers(tmp_path, monkeypatch):
    """The registry's W&B tracker against a stand-in ``wandb`` module recording its calls."""
    calls = []

    class Run:
        summary: dict = {}

        def log(self, scalars, step):
            calls.append(("log", step, dict(scalars)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv(tracking.ENV, "wandb")
    trackers = tracking.open_trackers(tiny_config(method="dense"), tmp_path / "abc123",
                                      uses_teacher=True)
    curve = [{"step": 1, "tokens": 512, "train_loss": 5.0, "lr": 1e-3},
             {"step": 2, "tokens": 1024, "train_loss": 4.0, "lr": 1e-3, "eval_loss": 4.5}]
    trackers.log(curve)
    trackers.log(curve)  # nothing new: no second record
    trackers.close({"ppl": 90.0, "eval_loss": math.log(90.0), "test_ppl": float("nan")})
    assert calls[0][0] == "init" and calls[0][1]["name"] == "abc123"
    assert calls[0][1]["config"]["model"] == "opt-tiny"
    assert calls[1] == ("log", 1, {"train/kd_objective": 5.0, "train/lr": 1e-3})
    assert calls[2][1] == 2 and calls[2][2]["val/ppl"] == pytest.approx(math.exp(4.5))
    assert len(calls) == 4 and calls[3] == ("finish",)
    assert Run.summary == {"final/ppl": 90.0, "final/eval_loss": pytest.approx(math.log(90.0))}


def test_a_resumed_run_logs_only_what_follows_its_last_eval():
    curve = [{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 1.0, "eval_loss": 1.0},
             {"step": 3, "train_loss": 1.0}]
    assert tracking.Trackers([], False, curve).sent == 2
    assert tracking.Trackers([], False, None).sent == 0

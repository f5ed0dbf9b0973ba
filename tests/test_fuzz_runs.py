"""A sweep's runs on a hostile file system: an unwritable run folder, a full disk.

The trainer is a stand-in script (the runner forks it exactly as it forks ``castlab train``),
so each case costs a fork, not a training run.
"""

from __future__ import annotations

import sys
from collections import deque

import pytest

from castlab import store
from castlab.config import TrainConfig
from castlab.sweep import runner

FULL_DISK = r'''
import errno, os, sys
from pathlib import Path
run_dir = Path(sys.argv[2])
(run_dir / "checkpoint").mkdir(exist_ok=True)
tmp = run_dir / "checkpoint" / f".state.pt.{os.getpid()}.tmp"
tmp.write_bytes(b"half a checkpoint")  # what torch.save leaves when the disk fills up
raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
'''

FINISHES = r'''
import sys
from pathlib import Path
from castlab import store
run_dir = Path(sys.argv[2])
store.write_row(run_dir, {"run_id": run_dir.name, "status": "ok", "method": "cast",
                          "eval_loss": 1.0, "ppl": 2.718})
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    def use(source: str) -> None:
        script = tmp_path / f"stand_in_{abs(hash(source))}.py"
        script.write_text(source)
        monkeypatch.setattr(runner, "train_command",
                            lambda config, run_dir: [sys.executable, str(script), str(config),
                                                     str(run_dir)])
    return use


def _cfg(seed: int = 0) -> TrainConfig:
    return TrainConfig(method="cast", model="opt-tiny", tokens=4096, seed=seed)


def test_full_disk_fails_the_run_in_one_line_and_removes_its_temp_files(tmp_path, stand_in,
                                                                       capsys):
    stand_in(FULL_DISK)
    run_dir = tmp_path / "results" / "run-a"
    assert runner.execute_run(_cfg(), run_dir, echo=False) == "failed"
    row = store.read_row(run_dir)
    assert row["status"] == "failed" and row["reason"].startswith("disk full: "), row["reason"]
    assert "No space left on device" in row["reason"]
    assert not list(run_dir.rglob("*.tmp"))  # the half checkpoint is gone
    log = (run_dir / "train.log").read_text()
    assert "Traceback" not in log and log.strip().splitlines()[-1].startswith(
        "castlab train: error: disk full"), log
    assert "Traceback" not in capsys.readouterr().err


def test_unwritable_run_folder_fails_that_run_only(tmp_path, stand_in, capsys):
    stand_in(FINISHES)
    blocker = tmp_path / "results" / "blocked"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where a run folder should be")
    assert runner.execute_run(_cfg(0), blocker / "run-a", echo=False) == "failed"
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "run run-a failed: cannot write" in err and "the other runs go on" in err
    assert blocker.read_text() == "a file where a run folder should be"
    assert runner.execute_run(_cfg(1), tmp_path / "results" / "run-b", echo=False) == "done"


def test_torch_write_failure_on_a_nearly_full_disk_reads_disk_full(tmp_path, monkeypatch):
    tail = deque([b"RuntimeError: [enforce fail at inline_container.cc:672] . "
                  b"PytorchStreamWriter failed writing file data/3: file write failed"])
    free = {"bytes": 10 * 2**20}
    monkeypatch.setattr(runner.shutil, "disk_usage",
                        lambda path: type("U", (), {"free": free["bytes"]})())
    assert runner._failure_reason(1, tail, tmp_path).startswith("disk full: ")
    free["bytes"] = 50 * 2**30  # the same message with room left: not claimed to be disk full
    assert runner._failure_reason(1, tail, tmp_path).startswith("child process exited")


def test_remove_temp_files_touches_only_the_childs(tmp_path):
    (tmp_path / "ck").mkdir()
    mine, other = tmp_path / "ck" / ".state.pt.4242.tmp", tmp_path / "ck" / ".state.pt.77.tmp"
    mine.write_bytes(b"x")
    other.write_bytes(b"y")
    (tmp_path / "state.pt").write_bytes(b"kept")
    assert runner.remove_temp_files(tmp_path, 4242) == [mine]
    assert not mine.exists() and other.exists() and (tmp_path / "state.pt").exists()

"""Results store: atomic rows and curves, schema normalisation, load() diagnostics, run state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from castlab import store
from castlab.errors import UserError


def _row(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "status": "ok", "method": "cast", "model": "opt-tiny",
            "tokens": 1000, "eval_loss": 3.25, "ppl": float(np.exp(3.25)), **extra}


def test_row_round_trip_fills_schema_and_converts_numpy(tmp_path):
    run = tmp_path / "r1"
    store.write_row(run, _row("r1", seed=np.int64(3), lr=np.float32(0.5), exact_nm=True, note="x"))
    row = store.read_row(run)
    assert list(row)[: len(store.SCHEMA)] == list(store.SCHEMA)  # schema order, then extras
    assert row["note"] == "x"
    assert row["seed"] == 3 and row["lr"] == 0.5 and row["exact_nm"] is True
    assert row["teacher_ppl"] is None and row["reason"] is None  # missing columns are null
    assert [p.name for p in run.iterdir()] == ["result.parquet"]  # no temp file left


@pytest.mark.parametrize("row, message", [
    ({"status": "ok"}, "lacks 'run_id'"),
    ({"run_id": "a", "status": "done"}, "status 'done'"),
    ({"run_id": "a", "status": "ok", "tokens": "many"}, "column 'tokens'"),
    ({"run_id": "a", "status": "ok", "exact_nm": "yes"}, "column 'exact_nm'"),
])
def test_bad_rows_are_rejected_before_writing(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        store.write_row(tmp_path / "r", row)
    assert not (tmp_path / "r" / "result.parquet").exists()


def test_failed_write_leaves_no_row_and_no_temp(tmp_path, monkeypatch):
    run = tmp_path / "r"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_row(run, _row("r"))
    assert list(run.iterdir()) == []


def test_curve_round_trip(tmp_path):
    records = [{"step": s, "tokens": 64 * s, "train_loss": 5.0 - s / 10, "eval_loss": None,
                "lr": 1e-3} for s in range(1, 6)]
    records[-1]["eval_loss"] = 4.4
    store.write_curve(tmp_path, records)
    curve = store.read_curve(tmp_path)
    assert curve["step"].tolist() == [1, 2, 3, 4, 5]
    assert curve["tokens"].iloc[-1] == 320
    assert curve["eval_loss"].isna().sum() == 4 and curve["eval_loss"].iloc[-1] == 4.4


def test_load_reads_nested_rows_and_names_corrupt_files(tmp_path):
    for i in range(3):
        store.write_row(tmp_path / "sweep" / f"run{i}", _row(f"run{i}", seed=i))
    store.write_row(tmp_path / "other" / "deep" / "run9", _row("run9", extra_col=1.5))
    corrupt = tmp_path / "sweep" / "broken" / "result.parquet"
    corrupt.parent.mkdir()
    good = (tmp_path / "sweep" / "run0" / "result.parquet").read_bytes()
    corrupt.write_bytes(good[: len(good) // 2])  # a partial write
    with pytest.warns(UserWarning, match="broken/result.parquet"):
        df = store.load(tmp_path)
    assert sorted(df["run_id"]) == ["run0", "run1", "run2", "run9"]
    assert df.loc[df.run_id == "run9", "extra_col"].item() == 1.5
    assert df.loc[df.run_id == "run1", "seed"].item() == 1
    with pytest.raises(UserError, match="broken/result.parquet: corrupt or partial"):
        store.load(tmp_path, strict=True)
    print(f"\nload: {len(df)} rows read, 1 corrupt file named")


def test_load_rejects_multi_row_file_and_empty_store(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "two").mkdir()
    pq.write_table(pa.Table.from_pylist([_row("a"), _row("b")]), tmp_path / "two" / "result.parquet")
    with pytest.raises(UserError, match=r"two/result.parquet: expected one result row, found 2"):
        store.load(tmp_path, strict=True)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no result rows under .*1 unreadable"):
        store.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no result rows under .*empty"):
        store.load(tmp_path / "empty")
    with pytest.raises(UserError, match="no such results directory"):
        store.load(tmp_path / "missing")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_state_transitions(tmp_path):
    run = tmp_path / "r"
    assert store.run_state(run) == "pending"
    assert store.mark_running(run)
    info = store.lock_info(run)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert store.run_state(run) == "running"
    store.clear_running(run)
    assert store.run_state(run) == "pending"
    store.write_row(run, _row("r", status="failed", reason="loss became NaN at step 3"))
    assert store.run_state(run) == "failed"
    store.write_row(run, _row("r"))
    assert store.run_state(run) == "done"
    assert not store.mark_running(run)  # a finished run cannot be claimed


def test_stale_locks_are_not_running(tmp_path):
    run = tmp_path / "r"
    assert store.mark_running(run, pid=_dead_pid())
    assert store.run_state(run) == "pending"
    # a live pid whose start time differs is a reused pid, not our run
    lock = run / store.LOCK_FILE
    info = json.loads(lock.read_text())
    lock.write_text(json.dumps({**info, "pid": os.getpid(), "proc_start": "1"}))
    assert store.run_state(run) == "pending"
    # another host: judged by the heartbeat (mtime)
    lock.write_text(json.dumps({**info, "host": "elsewhere"}))
    assert store.run_state(run) == "running"
    old = time.time() - store.STALE_AFTER_SECONDS - 5
    os.utime(lock, (old, old))
    assert store.run_state(run) == "pending"
    store.heartbeat(run)
    assert store.run_state(run) == "running"


def test_live_lock_blocks_other_claims(tmp_path):
    run = tmp_path / "r"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert store.mark_running(run, pid=sleeper.pid)
        assert not store.mark_running(run)  # someone else's live lock
        assert store.lock_info(run)["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert store.mark_running(run)  # stale now: taken over


def test_corrupt_row_is_its_own_state_and_claiming_moves_it_aside(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "result.parquet").write_bytes(b"PAR1 not really")
    assert store.run_state(run) == "corrupt"
    assert store.mark_running(run)  # the claim keeps the damaged file aside and takes the run
    assert store.run_state(run) == "running"
    [kept] = run.glob("result.corrupt-*.parquet")
    assert kept.read_bytes() == b"PAR1 not really" and not (run / "result.parquet").exists()

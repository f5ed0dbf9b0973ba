"""Reliability: 8 processes writing runs into one store at once, a reader loading meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from castlab import store

WRITERS = 8
OWN_RUNS = 12  # distinct runs per writer
SHARED_RUNS = 10  # runs every writer tries to claim: each must be written exactly once

WRITER = textwrap.dedent(r"""
    import sys, time
    from pathlib import Path
    from castlab import store
    ROW = {"method": "cast", "model": "opt-tiny", "eval_loss": 4.0, "ppl": 54.6}  # a complete row
    root, wid, own, shared = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for i in range(own):
        run = root / f"w{wid}-{i}"
        store.write_curve(run, [{"step": s, "train_loss": 1.0 / s} for s in range(1, 20)])
        store.write_row(run, {"run_id": run.name, "status": "ok", "seed": wid, "tokens": i, **ROW})
    for i in range(shared):
        run = root / f"shared-{i}"
        if store.mark_running(run):
            with open(root / "claims.log", "a") as log:  # O_APPEND: one line per claim
                log.write(f"{run.name}\n")
            time.sleep(0.01)  # hold the lock while others try to claim it
            store.write_row(run, {"run_id": run.name, "status": "ok", "seed": wid, "tokens": i, **ROW})
            store.clear_running(run)
    """)

READER = textwrap.dedent("""
    import sys, time, warnings
    from castlab import store
    from castlab.errors import UserError
    warnings.simplefilter("error")  # a partial file seen by a reader would be a warning
    loads, seen, deadline = 0, 0, time.time() + 100
    while seen < int(sys.argv[2]) and time.time() < deadline:  # read until every row is in
        try:
            seen = len(store.load(sys.argv[1], strict=True))
            loads += 1
        except UserError as err:
            if "no result rows" not in str(err):
                raise
    print(loads)
    """)


def test_eight_processes_write_one_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    root = tmp_path / "results"
    root.mkdir()
    expected = WRITERS * OWN_RUNS + SHARED_RUNS
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root), str(expected)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(w), str(OWN_RUNS),
                          str(SHARED_RUNS)], env=env, stderr=subprocess.PIPE, text=True)
        for w in range(WRITERS)
    ]
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out) > 0

    df = store.load(root, strict=True)
    assert len(df) == expected
    assert df["run_id"].is_unique
    own = df[~df.run_id.str.startswith("shared")]
    assert sorted(own.groupby("seed").size().tolist()) == [OWN_RUNS] * WRITERS
    claims = (root / "claims.log").read_text().split()
    assert sorted(claims) == sorted(f"shared-{i}" for i in range(SHARED_RUNS))
    for run in (p for p in root.iterdir() if p.is_dir()):
        assert store.read_curve(run).shape[0] == 19 if run.name.startswith("w") else True
        assert not list(run.glob("*.tmp")) and not (run / store.LOCK_FILE).exists()
    print(f"\n{WRITERS} writers: {len(df)}/{expected} rows present and readable, "
          f"{SHARED_RUNS} contended runs written once each, reader completed {out.strip()} "
          f"strict loads without a partial file")


def test_a_claim_racing_the_holders_finish_does_not_run_it_twice(tmp_path, monkeypatch):
    """The holder writes its row and clears its lock (outside the claim flock) exactly while
    another process checks the run: the claim must see the row or the lock, never neither."""
    run = tmp_path / "shared-0"
    holder = os.getppid()  # a live process other than this one holds the run
    assert store.mark_running(run, pid=holder)
    row = {"run_id": run.name, "status": "ok", "method": "cast", "model": "opt-tiny",
           "eval_loss": 4.0, "ppl": 54.6}
    real_lock_info = store.lock_info

    def holder_finishes_first(run_dir):
        if not (run / store.RESULT_FILE).exists():
            store.write_row(run, row)  # the holder's last two steps, in its order
            store.clear_running(run)
        return real_lock_info(run_dir)

    monkeypatch.setattr(store, "lock_info", holder_finishes_first)
    assert not store.mark_running(run)  # checking the result before the lock claimed it here
    assert not (run / store.LOCK_FILE).exists() and store.run_state(run) == "done"

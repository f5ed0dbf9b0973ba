"""A damaged results folder heals: corrupt rows are counted, kept aside and redone; copied run
folders are never a second row; a failed `castlab train` leaves no config-only folder.

Each case runs a real `castlab sweep` (in process) with the stand-in trainer of
test_sweep_run.py, damages one run, then checks `castlab status`, a rerun, and `store.load`.
"""

from __future__ import annotations

import shutil
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from castlab import store
from castlab.cli import main
from castlab.errors import UserError
from tests.test_sweep_run import Sweep, inproc  # noqa: F401 - inproc is a fixture


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _garbage(file):
    file.write_bytes(b"this is not a parquet file\n" * 10)


def _two_rows(file):
    row = pq.read_table(file)
    pq.write_table(pa.concat_tables([row, row]), file)


def _drop_ppl(file):
    row = pq.read_table(file)
    pq.write_table(row.drop_columns(["eval_loss", "ppl"]), file)


def _ok_with_nan(file):
    row = pq.read_table(file).to_pylist()[0]
    store.write_row(file.parent, {**row, "ppl": float("nan")})


DAMAGE = {"truncated": (_truncate, "corrupt or partial result file"),
          "garbage": (_garbage, "corrupt or partial result file"),
          "two rows": (_two_rows, "expected one result row, found 2"),
          "missing column": (_drop_ppl, "result row lacks column 'eval_loss'"),
          "ok row without ppl": (_ok_with_nan, "'ok' result row has ppl nan")}


def _total(status):
    """The status table's count line (a note on teachers may follow it)."""
    last = status.stdout.strip().splitlines()[-1]
    return last.split(" (")[0]


def _starts(sweep):
    return [e[1] for e in sweep.events() if e[0].startswith("start@")]


@pytest.fixture
def done_sweep(tmp_path, inproc):  # noqa: F811 - the imported fixture
    sweep = Sweep(tmp_path, methods=("cast", "dense-kd"), budgets=("5k",), seeds=(0,))
    first = inproc(sweep)
    assert first.returncode == 0, first.stderr
    runs = sorted(p for p in sweep.results.iterdir() if p.is_dir())
    assert [p.name.split("-")[0] for p in runs] == ["cast", "dense"]
    return sweep, runs


@pytest.mark.parametrize("case", list(DAMAGE))
def test_corrupt_row_is_counted_kept_aside_and_redone(done_sweep, inproc, case):  # noqa: F811
    sweep, runs = done_sweep
    damaged = runs[0] / "result.parquet"
    damage, message = DAMAGE[case]
    damage(damaged)
    damaged_bytes = damaged.read_bytes()
    starts_before = _starts(sweep)

    status = inproc(sweep, "status", str(sweep.results))
    assert status.returncode == 0
    assert f"{runs[0].name:<22} corrupt  {damaged}: " in status.stdout and message in status.stdout
    assert _total(status) == "2 runs: 1 corrupt, 1 done"
    assert store.run_state(runs[0]) == "corrupt"

    rerun = inproc(sweep)
    assert rerun.returncode == 0, rerun.stderr
    assert _starts(sweep)[len(starts_before):] == [runs[0].name]  # exactly the damaged run
    assert f"{damaged}: {message}" in rerun.stderr and "the run is redone" in rerun.stderr
    kept = list(runs[0].glob("result.corrupt-*.parquet"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged_bytes  # kept aside, unchanged
    rows = store.load(sweep.results, strict=True)
    assert sorted(rows["run_id"]) == [p.name for p in runs] and rows["ppl"].notna().all()
    status = inproc(sweep, "status", str(sweep.results))
    assert _total(status) == "2 runs: 2 done"


def test_copied_run_folder_is_not_a_second_row(done_sweep, inproc):  # noqa: F811
    sweep, runs = done_sweep
    copy = runs[0].with_name(runs[0].name + ".bak")
    shutil.copytree(runs[0], copy)
    starts_before = _starts(sweep)

    with pytest.warns(UserWarning, match=rf"{copy.name}/result.parquet: duplicate of run "
                                         rf"{runs[0].name}"):
        rows = store.load(sweep.results)
    assert sorted(rows["run_id"]) == [p.name for p in runs]  # one row per run id
    with pytest.raises(UserError, match="duplicate of run"):
        store.load(sweep.results, strict=True)
    found = store.scan(sweep.results)
    assert found.rows[runs[0].name][0] == runs[0] / "result.parquet"  # the folder named after it

    status = inproc(sweep, "status", str(sweep.results))
    assert f"{copy.name:<22} duplicate of {runs[0].name}, not counted" in status.stdout
    assert _total(status) == "2 runs: 2 done; 1 duplicate folders skipped"
    rerun = inproc(sweep)
    assert rerun.returncode == 0 and _starts(sweep) == starts_before  # nothing redone

    # the fit's input: the law's points come from store.load, so each run counts once
    from castlab.law.points import read_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(read_table(sweep.results)) == 2


def test_copy_without_the_original_still_counts_once(done_sweep):
    sweep, runs = done_sweep
    shutil.move(runs[0], runs[0].with_name(runs[0].name + ".bak"))
    rows = store.load(sweep.results, strict=True)
    assert sorted(rows["run_id"]) == [p.name for p in runs]


def test_stray_config_only_folder_is_named_not_pending(done_sweep, inproc):  # noqa: F811
    sweep, runs = done_sweep
    stray = sweep.results / "dense-2ed48f29b0d5"
    stray.mkdir()
    shutil.copy(runs[1] / "config.yaml", stray / "config.yaml")
    status = inproc(sweep, "status", str(sweep.results))
    assert f"{stray.name:<22} stray  (config only" in status.stdout
    assert _total(status) == "3 runs: 2 done, 1 stray"


def test_train_failing_on_a_user_error_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code = main(["train", "--method", "dense", "--model", "not-a-preset", "--tokens", "1024",
                 "--seq-len", "64", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a ladder preset" in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor its parent is left

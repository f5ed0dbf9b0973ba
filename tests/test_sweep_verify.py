"""`castlab sweep FILE --verify K` reruns done runs into a scratch folder and compares them.

Uses the stand-in trainer of test_sweep_run.py (its rows are a fixed function of the config), so
an untouched store verifies as bit-identical and an edited row is caught.
"""

from __future__ import annotations

import re

from castlab import store
from tests.test_sweep_run import Sweep, inproc  # noqa: F401 - inproc is a fixture


def test_verify_reruns_done_runs_and_catches_a_changed_row(tmp_path, inproc):  # noqa: F811
    sweep = Sweep(tmp_path, methods=("cast", "dense-kd"), budgets=("5k",), seeds=(0,))
    assert inproc(sweep).returncode == 0
    runs = sorted(p.name for p in sweep.results.iterdir() if p.is_dir())
    before = sorted(p.name for p in sweep.results.iterdir())
    starts = len([e for e in sweep.events() if e[0].startswith("start@")])

    check = inproc(sweep, "--verify", "5")
    assert check.returncode == 0, check.stderr
    lines = check.stdout.strip().splitlines()
    assert lines[0].split() == ["run_id", "stored", "PPL", "rerun", "PPL", "delta",
                                "bit-identical"]
    for run_id in runs:
        assert re.search(rf"^{run_id}\s+2\.718\s+2\.718\s+\+0\s+yes$", check.stdout, re.M), check.stdout
    assert lines[-1] == "2 of 2 done runs rerun: all bit-identical"
    reruns = [e for e in sweep.events() if e[0].startswith("start@")][starts:]
    assert sorted(e[1] for e in reruns) == runs and all(e[0] == "start@0" for e in reruns)
    assert sorted(p.name for p in sweep.results.iterdir()) == before  # no rerun in the store
    assert len(store.load(sweep.results, strict=True)) == 2

    stored = store.read_row(sweep.results / runs[0])
    store.write_row(sweep.results / runs[0], {**stored, "eval_loss": 1.25, "ppl": 3.4903})
    check = inproc(sweep, "--verify", "2")
    assert check.returncode == 1
    assert re.search(rf"^{runs[0]}\s+3\.4903\s+2\.718\s+-0\.772\s+no$", check.stdout, re.M), check.stdout
    assert re.search(rf"^{runs[1]}\s+2\.718\s+2\.718\s+\+0\s+yes$", check.stdout, re.M)
    assert "NOT all bit-identical; reruns kept in" in check.stdout.strip().splitlines()[-1]


def test_verify_without_done_runs_is_a_one_line_error(tmp_path, inproc):  # noqa: F811
    sweep = Sweep(tmp_path, methods=("cast",), budgets=("5k",), seeds=(0,))
    result = inproc(sweep, "--verify", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"castlab sweep: error: --verify: no done runs under {sweep.results} to rerun "
        "(run `castlab sweep` first)"]

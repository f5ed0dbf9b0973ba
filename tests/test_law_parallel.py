"""castlab.law.parallel: the bootstrap (its batch split over processes) and the held-out splits
on several processes give exactly what the serial loop gives (the draws are made first, in
order), and the worker count is validated. The comparison runs in a fresh interpreter: a process with torch loaded, as this test
session is, stays serial on purpose."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from castlab.errors import UserError
from castlab.law import parallel

SCRIPT = r"""
import json, sys
import numpy as np
from castlab.law import parallel
from castlab.law.bootstrap import bootstrap
from castlab.law.fit import fit_form
from castlab.law.synthetic import synthetic_case
from castlab.law.validate import heldout_predictions

assert "torch" not in sys.modules
import castlab.law.bootstrap as B
B.PARALLEL_MIN_WORK = 1  # split even this small batch over the worker processes
pts = synthetic_case("power_d", noise=0.01, rng_seed=3)
fit = fit_form("power_d", pts)
boot = bootstrap(fit, pts, draws=240, seed=5)
pred = heldout_predictions(pts, ["power_d", "loglinear"], draws=20, seed=1)
print(json.dumps({"workers": parallel.workers(), "thetas": boot.thetas.tolist(),
                  "failed": boot.failed,
                  "pred": pred["pred_ppl"].round(12).fillna(-1).tolist(),
                  "lo": pred["lo_ppl"].round(12).fillna(-1).tolist()}))
"""


def _run(workers: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env={**__import__("os").environ, parallel.WORKERS_ENV: workers},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_processes_give_the_serial_results_exactly():
    serial, forked = _run("1"), _run("2")
    assert serial["workers"] == 1 and forked["workers"] == 2
    assert len(serial["thetas"]) == 240 - serial["failed"]
    assert forked == {**serial, "workers": 2}


def test_chunks_keep_order_and_sizes():
    assert parallel.chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert parallel.chunks([1, 2], 5) == [[1], [2]]
    assert parallel.chunks([], 3) == [[]]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_worker_count_is_validated(monkeypatch, value):
    monkeypatch.setenv(parallel.WORKERS_ENV, value)
    with pytest.raises(UserError, match=r"CASTLAB_LAW_WORKERS: got .*allowed a whole number >= 1"):
        parallel.workers()


def test_a_process_with_torch_loaded_stays_serial(monkeypatch):
    import torch  # noqa: F401 - the reason for the rule

    monkeypatch.setenv(parallel.WORKERS_ENV, "4")
    assert parallel.workers() == 1

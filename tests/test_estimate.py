"""CPU time estimates of a sweep (castlab.sweep.estimate): stored rows, timed steps, the
local backend's queue, and the dry-run lines that say what each estimate rests on."""

from __future__ import annotations

import math

import pytest
import yaml

from castlab import store
from castlab.config import TrainConfig
from castlab.sweep import estimate
from castlab.sweep.plan import PlannedRun


def _row(folder, name, method, model, tokens_per_second, wall, train, threads=1, batch=4,
         seq=64, status="ok"):
    store.write_row(folder / name, {
        "run_id": name, "status": status, "method": method, "model": model, "tokens": 1000,
        "seed": 0, "device": "cpu", "tokens_per_second": tokens_per_second,
        "wall_seconds": wall, "train_seconds": train, "threads": threads, "batch_size": batch,
        "seq_len": seq, "eval_loss": 1.0, "ppl": math.e})


def _run(folder, name, method="cast", model="opt-100k", tokens=40_000, threads=1, batch=4):
    cfg = TrainConfig(method=method, model=model, init="t", tokens=tokens, seq_len=64,
                      batch_size=batch, threads=threads, eval_every=128, eval_tokens=4096,
                      final_eval_tokens=32768)
    return PlannedRun(cfg, folder / name, "run")


def test_stored_rows_give_rate_plus_overhead_and_say_so(tmp_path):
    res = tmp_path / "results"
    # two cast rows at one thread: rates 1000 and 3000 (median 2000), overheads 4 and 6 (5);
    # a row at two threads and a failed row do not count; a batch-16 row (a teacher) neither
    _row(res, "a", "cast", "opt-100k", 1000.0, 14.0, 10.0)
    _row(res, "b", "cast", "opt-100k", 3000.0, 16.0, 10.0)
    _row(res, "c", "cast", "opt-100k", 9000.0, 3.0, 1.0, threads=2)
    _row(res, "d", "cast", "opt-100k", 1.0, 99.0, 1.0, status="failed")
    _row(res, "e", "cast", "opt-100k", 50_000.0, 2.0, 1.0, batch=16)
    lines: list[str] = []
    out = estimate.cpu_estimates([_run(res, "new")], lambda cfg: 1, lines)
    want = estimate.FORK_SECONDS + 40_000 / 2000.0 + 5.0
    assert out["new"] == estimate.RunEstimate(pytest.approx(want), "rows")
    assert len(lines) == 1 and "stored rows: 2 runs in" in lines[0] and str(res) in lines[0]
    assert "(threads 1): 2,000 tok/s + 5.0 s each" in lines[0]
    # with no row at the run's thread count, every thread count's rows count
    out = estimate.cpu_estimates([_run(res, "new")], lambda cfg: 4, [])
    assert out["new"].basis == "rows"
    assert out["new"].seconds == pytest.approx(estimate.FORK_SECONDS + 40_000 / 3000.0 + 4.0)


def test_timed_steps_keep_sizes_in_order_and_count_evals(tmp_path, monkeypatch):
    # timing noise made opt-330k look cheaper than opt-100k: per token it is raised to match
    timed = {"opt-100k": (0.02, 50_000.0), "opt-330k": (0.01, 80_000.0),
             "opt-600k": (0.04, 20_000.0)}
    calls = []

    def fake(preset, method, vocab, seq_len, batch, threads):
        calls.append((preset, method, threads))
        return timed[preset]

    monkeypatch.setattr(estimate, "step_seconds", fake)
    runs = [_run(tmp_path, m, model=m, method="dense-kd") for m in timed]
    lines: list[str] = []
    out = estimate.cpu_estimates(runs, lambda cfg: 1, lines)
    steps = 40_000 // 256 + 1  # 157 steps of 4 x 64
    evals = (steps // 128 + 1) * 4096 + 2 * 32768  # periodic + final val and test (dense-kd)

    def seconds(step, rate):
        return estimate.FORK_SECONDS + estimate.LOAD_SECONDS + 40_000 * step / 256 + evals / rate

    assert out["opt-100k"].seconds == pytest.approx(seconds(0.02, 50_000.0))
    assert out["opt-330k"].seconds == pytest.approx(seconds(0.02, 50_000.0))  # raised
    assert out["opt-600k"].seconds == pytest.approx(seconds(0.04, 20_000.0))
    assert {e.basis for e in out.values()} == {"timed"}
    assert sorted(calls) == [(m, "dense-kd", 1) for m in sorted(timed)]  # once per preset
    assert [line.split()[1] for line in lines] == ["opt-100k", "opt-330k", "opt-600k"]
    assert all("timed steps here (threads 1)" in line for line in lines)


def test_sparse_runs_count_the_eval_before_pruning():
    cfg = TrainConfig(method="cast", model="m", init="t", tokens=256 * 300, seq_len=64,
                      batch_size=4, eval_every=128, eval_tokens=1000, final_eval_tokens=500)
    assert estimate.eval_tokens_of(cfg) == 3 * 1000 + 3 * 500
    assert estimate.eval_tokens_of(TrainConfig(method="dense-kd", model="m", init="t",
                                               tokens=256 * 300, seq_len=64, batch_size=4,
                                               eval_every=128, eval_tokens=1000,
                                               final_eval_tokens=500)) == 3 * 1000 + 2 * 500


def test_queue_over_slots_takes_runs_in_order():
    assert estimate.queue_seconds([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert estimate.queue_seconds([3.0, 1.0, 1.0, 1.0], 1) == 6.0
    assert estimate.queue_seconds([1.0, 1.0, 5.0], 2) == 6.0  # the long run starts last
    assert estimate.queue_seconds([], 2) == 0.0


def test_step_seconds_times_real_steps_of_the_method():
    step, eval_rate = estimate.step_seconds("opt-tiny", "cast", 256, 16, 2, 1)
    assert 0 < step < 5 and eval_rate > 0


def test_dry_run_prints_the_basis_and_the_wall_over_cpu_slots(tmp_path, monkeypatch, capsys):
    from castlab import cli

    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(estimate, "step_seconds", lambda *a: (0.01, 100_000.0))
    monkeypatch.setattr("castlab.sweep.backends.cpu_cores", lambda: 2)
    spec = {"name": "s", "models": ["opt-tiny"], "methods": ["cast"], "budgets": [25_600],
            "seeds": [0, 1], "teacher": {"tokens": 25_600, "batch_size": 4},
            "train": {"seq_len": 64, "batch_size": 4, "final_eval_tokens": 1000},
            "eval": {"every": 1000, "tokens": 1000}, "results": str(tmp_path / "res")}
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(spec))
    assert cli.main(["sweep", str(file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "basis" in out.splitlines()[0]
    # each run: start + load allowances + 100 steps x 0.01 + evals (1 periodic + 3 finals of
    # 1000) / 1e5
    from castlab.sweep.plan import format_seconds as fmt

    run = estimate.FORK_SECONDS + estimate.LOAD_SECONDS + 1.0 + 4000 / 100_000.0
    start = estimate.SWEEP_START_SECONDS
    # two cast runs at once: the phase's wall is one run plus the sweep's start-up
    assert (f"phase students: 2 of 2 runs left, {fmt(2 * run)} of run time; wall "
            f"{fmt(start + run)} (2 runs at once)") in out
    # the total is the wall of both phases (not the sum over runs): the teacher (100 dense
    # steps, 3,000 eval tokens) and the two students side by side, each phase + its start-up
    teacher = estimate.FORK_SECONDS + estimate.LOAD_SECONDS + 1.0 + 3000 / 100_000.0
    assert f"estimated time left {fmt(2 * start + teacher + run)};" in out
    assert "estimates rest on" in out and "cast opt-tiny (batch 4 x 64): timed steps here" in out

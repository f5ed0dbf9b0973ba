"""castlab bench's sweep rows: the wall-time split is arithmetic on stored rows and the sweep log."""

from __future__ import annotations

import json

import pytest

from castlab import store
from castlab.bench import bench_sweep
from castlab.cli import main


def _store_runs(root):
    # (wall, train, eval) seconds per run
    for i, (wall, train, evals) in enumerate([(10.0, 6.0, 2.0), (20.0, 15.0, 3.0)]):
        store.write_row(root / f"r{i}", {"run_id": f"r{i}", "status": "ok", "method": "cast",
                                         "model": "opt-tiny", "tokens": 4096, "eval_loss": 4.0,
                                         "ppl": 54.6, "wall_seconds": wall,
                                         "train_seconds": train, "eval_seconds": evals})


def test_sweep_rows_split_the_logged_full_sweep_wall(tmp_path):
    _store_runs(tmp_path)
    log = [{"wall_seconds": 35.0, "outcomes": {"done": 2}},  # the full sweep
           {"wall_seconds": 1.5, "outcomes": {"skipped-done": 2}}]  # a later no-op rerun
    (tmp_path / "sweep_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    rows = bench_sweep(str(tmp_path))
    # 35 s wall, 21 s in steps: 40% outside; evals 5 s, other in-run 30-21-5 = 4 s, orchestration 5 s
    assert rows[0]["measured"] == pytest.approx(100 * 14 / 35)
    assert [r["measured"] for r in rows[1:]] == pytest.approx([100 * 5 / 35, 100 * 4 / 35,
                                                               100 * 5 / 35])
    # a sweep that also ran teachers (3 done for 2 stored runs) does not time these runs alone;
    # a teachers-cached wall of another invocation (sweep_timing.json) is not mixed in either
    log = [{"wall_seconds": 90.0, "outcomes": {"done": 3}}]
    (tmp_path / "sweep_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    (tmp_path / "sweep_timing.json").write_text(json.dumps({"wall_seconds": 31.0}))
    rows = bench_sweep(str(tmp_path))  # the runs' own walls: 30 s, 21 s in steps
    assert rows[0]["measured"] == pytest.approx(100 * 9 / 30)
    assert "orchestration not measured" in rows[0]["note"]
    assert [r["bench"].strip() for r in rows[1:]] == [
        "of which perplexity evals (final val/test, pre-prune, periodic)",
        "of which other in-run work (load, lambda probe, finalize, save)"]


def test_sweep_results_that_are_not_a_folder_are_a_user_error(tmp_path, capsys):
    assert main(["bench", "sweep", "--sweep-results", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--sweep-results" in err and "missing" in err and "Traceback" not in err


def test_live_tensor_peak_is_the_largest_sum_of_live_tensors():
    import torch

    from castlab.bench import PEAK_METERS

    meter = PEAK_METERS["live"]()
    meter.start()
    a = torch.ones(1 << 20)  # 4 MiB
    b = torch.ones(1 << 21)  # 8 MiB: 12 MiB live
    del a
    c = torch.ones(1 << 19)  # 2 MiB: 10 MiB live
    peak = meter.stop()
    assert (1 << 20) * 12 <= peak < (1 << 20) * 12 + (1 << 16)
    del b, c


def test_optimizer_ratio_agrees_with_the_times_it_prints(monkeypatch):
    """Scripted window times where the median of per-window ratios (2.0) and the ratio of the
    median times (361/226 = 1.597) differ, as under load: the row's ratio is the one the
    printed times give, and the note shows the spread of both."""
    import re

    from castlab.sparsity import bench as optbench

    # per window (after 2 warm-up rounds): AdamS, AdamS with masked decay, AdamW(foreach),
    # AdamW(fused) seconds per step
    adams = [0.300, 0.361, 0.500, 0.452, 0.340]
    decayed = [0.390, 0.400, 0.600, 0.480, 0.350]
    foreach = [0.150, 0.226, 0.250, 0.226, 0.400]
    fused = [0.100, 0.120, 0.200, 0.150, 0.180]
    script = iter([0.1] * 8 + [t for window in zip(adams, decayed, foreach, fused, strict=True)
                                 for t in window])
    monkeypatch.setattr(optbench, "_window", lambda optimizer, steps, device: next(script))
    rows = optbench.run_optimizer_bench(shapes=((4, 8),), windows=5, t1=2, device="cpu")
    row = rows[0]
    assert row["measured"] == pytest.approx(0.361 / 0.226, abs=1e-3)  # median(AdamS)/median(ref)
    s_ms, w_ms = (float(x) for x in re.findall(r"AdamS ([\d.]+) ms .*?\) / AdamW\(foreach\) "
                                                r"([\d.]+) ms", row["note"])[0])
    assert (s_ms, w_ms) == (361.0, 226.0)
    assert row["measured"] == pytest.approx(s_ms / w_ms, abs=1e-3)
    # spreads: quartiles of the times and of the paired per-window ratios (2, 1.597, 2, 2, 0.85)
    assert "IQR 340.0-452.0" in row["note"] and "IQR 226.0-250.0" in row["note"]
    assert "per-window ratio median 2.00 (IQR 1.60-2.00)" in row["note"]
    assert rows[1]["measured"] == pytest.approx(0.361 / 0.150, abs=1e-3)
    # the masked decay's cost over plain AdamS, from the same interleaved windows
    assert rows[2]["bench"] == "adams_masked_decay_step_vs_adams"
    assert rows[2]["measured"] == pytest.approx(0.400 / 0.361, abs=1e-3)
    assert "AdamS(masked decay) 400.0 ms" in rows[2]["note"]

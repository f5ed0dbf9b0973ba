"""The sweep command line: --set overrides validated like the file, status --json/--csv, a
rerun's one skip line instead of a 'run k/N' line per done run, the flagged-runs summary, and
student budgets in whole optimizer steps so the law's D/2 and D/4 splits keep what the sweep
file promises."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_sweep_run import Sweep

from castlab import cli, store
from castlab.schedule import total_steps_for
from castlab.sweep.plan import build_plan, whole_steps
from castlab.sweep.spec import load_sweep
from castlab.sweep.status import TEACHER_CONVERGENCE_TOLERANCE, flagged_lines

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture
def call(monkeypatch, capsys):
    """`castlab ARGV` in this process, the trainer swapped for the stand-in of test_sweep_run."""
    from castlab.sweep import runner

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands"])

    def run(sweep: Sweep, *argv: str):
        for key in ("CASTLAB_CACHE", "CASTLAB_TCMALLOC", "SWEEP_TEST_LOG"):
            monkeypatch.setenv(key, sweep.env[key])
        stand_in = str(sweep.tmp / "stand_in.py")
        monkeypatch.setattr(runner, "train_command",
                            lambda config, run_dir: [sys.executable, stand_in, str(config), str(run_dir)])
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# ---- a rerun: one skip line, 'run k/N' only for runs to do --------------------------------


def test_rerun_prints_one_skip_line_and_counts_only_runs_to_do(tmp_path, call):
    sweep = Sweep(tmp_path, budgets=("20k",), seeds=(0, 1))  # 1 teacher + 4 runs
    code, out, _ = call(sweep, "sweep", str(sweep.file), "--quiet")
    assert code == 0 and "5 runs" in out
    code, out, err = call(sweep, "sweep", str(sweep.file))  # progress lines on
    assert code == 0
    assert "[run " not in err and "ETA" not in err  # no line per skipped run
    assert "sweep t: skipping 5 of 5 planned runs (5 done); 0 to run" in out
    # one run left: exactly one 'run 1/1' line, and the skip line counts the other four
    victim = next(d for d in sweep.results.iterdir() if d.name.startswith("cast-"))
    (victim / "result.parquet").unlink()
    code, out, err = call(sweep, "sweep", str(sweep.file))
    headers = [line for line in err.splitlines() if line.startswith("[run ")]
    assert code == 0 and len(headers) == 1 and headers[0].startswith("[run 1/1 |")
    assert victim.name in headers[0]
    assert "skipping 4 of 5 planned runs (4 done); 1 to run" in out


# ---- the flagged-runs summary ------------------------------------------------------------


def _rows(kd_ppl: float, warning: str | None) -> pd.DataFrame:
    base = {"status": "ok", "model": "opt-tiny", "seed": 0, "teacher_ppl": 100.0}
    return pd.DataFrame([
        {**base, "run_id": "kd-small", "method": "dense-kd", "tokens": 1000, "ppl": 99.0,
         "decay_budget_warning": None},
        {**base, "run_id": "kd-top", "method": "dense-kd", "tokens": 8000, "ppl": kd_ppl,
         "decay_budget_warning": None},
        {**base, "run_id": "cast-small", "method": "cast", "tokens": 1000, "ppl": 120.0,
         "decay_budget_warning": warning},
        {**base, "run_id": "cast-top", "method": "cast", "tokens": 8000, "ppl": 110.0,
         "decay_budget_warning": None},
    ])


def test_flagged_lines_name_an_unconverged_teacher_and_unfinished_decays():
    # dense-KD at the top budget is 2.34% better than its teacher (the smoke numbers)
    lines = flagged_lines(_rows(97.66, "measured decay distance ... below"))
    assert len(lines) == 2
    assert lines[0].startswith("flagged: teacher opt-tiny NOT CONVERGED: dense-kd at 8,000 "
                               "tokens improves on it by 2.34% (> 2%)")
    assert lines[1].startswith("flagged: 1 of 2 cast runs did not finish AdamS's decay "
                               "(tokens 1,000)")


def test_flagged_lines_say_which_checks_passed():
    ppl = 100.0 * (1 - TEACHER_CONVERGENCE_TOLERANCE) + 0.01  # just within the tolerance
    assert flagged_lines(_rows(ppl, None)) == [
        "checks: no run flagged: every teacher converged (dense-kd within 2% of it at the "
        "largest budget); every run that pruned with AdamS finished its decay"]
    failed = pd.concat([_rows(ppl, ""), pd.DataFrame([{"run_id": "ast-x", "status": "failed",
                                                       "method": "ast"}])])
    assert flagged_lines(failed) == ["flagged: 1 failed run(s): ast-x (reasons: castlab status)"]


def test_sweep_ends_with_the_checks_line(tmp_path, call):
    sweep = Sweep(tmp_path, budgets=("20k",), seeds=(0,))
    code, out, _ = call(sweep, "sweep", str(sweep.file), "--quiet")
    assert code == 0
    # the stand-in's rows carry no teacher PPL: the check says it did not run
    assert ("checks: no run flagged: teacher convergence not checked (no dense-kd row with its "
            "teacher's PPL)") in out
    # castlab status ends with the same checks
    code, status, _ = call(sweep, "status", str(sweep.results))
    assert code == 0 and "checks: no run flagged: teacher convergence not checked" in status


# ---- status --json / --csv ---------------------------------------------------------------


def test_status_json_and_csv_hold_what_the_store_holds(tmp_path, call):
    sweep = Sweep(tmp_path, methods=("cast", "dense-kd"), budgets=("5k", "10k"), seeds=(0,))
    call(sweep, "sweep", str(sweep.file), "--quiet")
    stray = sweep.results / "cast-000000000000"
    stray.mkdir()
    (stray / store.CONFIG_FILE).write_text("method: cast\n")
    rows = store.load(sweep.results, strict=True).set_index("run_id")

    code, out, _ = call(sweep, "status", str(sweep.results), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["results"] == str(sweep.results)
    assert data["counts"] == {"done": 4, "stray": 1}
    runs = {r["run_id"]: r for r in data["runs"]}
    assert set(runs) == set(rows.index) | {stray.name}
    assert runs[stray.name] == {"run_id": stray.name, "state": "stray"}
    for run_id, row in rows.iterrows():
        got = runs[run_id]
        assert got["state"] == "done" and got["method"] == row["method"]
        assert got["tokens"] == row["tokens"] and got["ppl"] == pytest.approx(row["ppl"])

    code, out, _ = call(sweep, "status", str(sweep.results), "--csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["run_id"] for r in table} == set(runs)
    done = next(r for r in table if r["state"] == "done")
    assert float(done["ppl"]) == pytest.approx(rows.loc[done["run_id"], "ppl"])

    code, out, _ = call(sweep, "status", str(sweep.file), "--json")  # a sweep file: its plan
    planned = json.loads(out)["planned"]
    plan = build_plan(load_sweep(sweep.file))
    assert [p["run_id"] for p in planned] == [r.run_id for r in plan]
    assert all(p["state"] == "done" for p in planned)


# ---- --set --------------------------------------------------------------------------------


def test_set_overrides_fields_before_validation(tmp_path):
    spec = load_sweep(SWEEPS / "smoke.yaml", overrides=[
        "train.seq_len=32", "seeds=[0, 1]", "teacher.tokens=1M", "eval.every=10"])
    plan = build_plan(spec)
    runs = [r.config for r in plan if r.kind == "run"]
    assert {c.seq_len for c in runs} == {32} and {c.seed for c in runs} == {0, 1}
    assert {c.eval_every for c in runs} == {10}
    assert next(r.config.tokens for r in plan if r.kind == "teacher") == 1_000_000
    # the same values written into the file plan the same runs
    data = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    data["train"]["seq_len"], data["seeds"] = 32, [0, 1]
    data["teacher"]["tokens"], data["eval"]["every"] = "1M", 10
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    assert [r.run_id for r in build_plan(load_sweep(edited))] == [r.run_id for r in plan]


@pytest.mark.parametrize(("override", "field", "value"), [
    ("train.seq_len=-4", ("train", "seq_len"), -4),
    ("train.sequence_len=64", ("train", "sequence_len"), 64),
    ("budgets=[4k, nonsense]", ("budgets",), ["4k", "nonsense"]),
    ("lambda_=-1", ("lambda_",), -1),
    ("backend=cloud", ("backend",), "cloud"),
])
def test_a_bad_override_fails_exactly_like_the_same_value_in_the_file(
        tmp_path, monkeypatch, capsys, override, field, value):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands"])
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "s.yaml"
    source.write_text((SWEEPS / "smoke.yaml").read_text())
    assert cli.main(["sweep", str(source), "--dry-run", "--set", override]) == 2
    from_set = capsys.readouterr().err
    data = yaml.safe_load(source.read_text())
    node = data
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    source.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(source), "--dry-run"]) == 2
    from_file = capsys.readouterr().err
    assert from_set == from_file and len(from_set.strip().splitlines()) == 1


@pytest.mark.parametrize(("override", "message"), [
    ("train", "--set: got 'train', allowed KEY=VALUE with a dotted key"),
    ("train..seq_len=3", "--set: got 'train..seq_len=3', allowed KEY=VALUE"),
    ("models.x=1", "--set models.x: models in "),
    ("seeds=[0, 1", "--set seeds: cannot read '[0, 1' as a YAML value"),
])
def test_malformed_overrides_are_one_line(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands"])
    assert cli.main(["sweep", str(SWEEPS / "smoke.yaml"), "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---- budgets in whole optimizer steps ---------------------------------------------------


def _trained(cfg) -> int:
    """Tokens the trainer runs for a config: whole steps, as castlab.train counts them."""
    return total_steps_for(cfg) * cfg.batch_size * cfg.seq_len


def test_smoke_budgets_are_whole_steps_and_its_splits_keep_what_it_claims():
    """smoke.yaml says the held-out D/2 split keeps 5 budgets; it and the D/4 split (4) must
    hold on the tokens actually trained, which the rows store."""
    runs = [r.config for r in build_plan(load_sweep(SWEEPS / "smoke.yaml"))
            if r.kind == "run" and r.config.method == "cast"]
    trained = sorted(_trained(c) for c in runs)
    assert trained == sorted(c.tokens for c in runs)  # planned = trained: no rounding up
    top = max(trained)
    assert sum(t <= top / 2 for t in trained) == 5
    assert sum(t <= top / 4 for t in trained) == 4


@pytest.mark.parametrize("per_step", [256, 1000, 1024, 16384, 65536])
def test_whole_steps_keep_every_nominal_halving_below_its_cut(per_step):
    for top in range(1000, 400_000, 997):
        rounded_top = whole_steps(top, per_step)
        for divisor in (2, 4, 8):
            assert whole_steps(top // divisor, per_step) <= max(rounded_top / divisor, per_step)
        assert whole_steps(top, per_step) % per_step == 0
        assert 0 < top - whole_steps(top, per_step) < per_step or whole_steps(top, per_step) \
            in (top, per_step)
    assert math.gcd(whole_steps(3 * per_step + 1, per_step), per_step) == per_step


def test_a_run_another_sweep_holds_does_not_collapse_the_eta(monkeypatch, tmp_path, capsys):
    """Two sweeps on one plan: a run the other holds returns 'running' at once; counting it as
    executed (0 s against its estimate) scaled every later ETA to ~0 ('ETA 0s' was printed)."""

    from castlab.config import TrainConfig
    from castlab.sweep import backends
    from castlab.sweep.plan import PlannedRun
    from castlab.sweep.progress import SweepProgress

    outcomes = {"r0": "running", "r1": "done", "r2": "done"}

    def fake_execute(config, run_dir, retry_failed, echo=True, env=None):
        time.sleep(0.2 if outcomes[Path(run_dir).name] == "done" else 0.0)
        return outcomes[Path(run_dir).name]

    monkeypatch.setattr(backends, "execute_run", fake_execute)
    monkeypatch.setattr(backends, "visible_gpus", lambda: [])
    runs = [PlannedRun(TrainConfig(method="dense", model="opt-tiny", seed=i, device="cpu"),
                       tmp_path / f"r{i}", "run") for i in range(3)]
    tracker = SweepProgress(total=3, estimates={"r0": 100.0, "r1": 100.0, "r2": 100.0})
    # one CPU run at a time, so r0 has ended when r1's line is printed
    backend = backends.LocalBackend(backends.LocalBackend.Options(cpu_runs=1), progress=True)
    backend.tracker = tracker
    backend.execute(runs, retry_failed=False)
    headers = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[run")]
    assert len(headers) == 3
    assert "ETA 3m20s]" in headers[1]  # r1, r2 left at their estimates: nothing measured yet
    assert tracker.spent_estimate == 200.0  # r1 and r2 only


def test_eta_divides_the_work_left_over_the_runs_trained_at_once(capsys):
    """Two CPU runs at once (cpu_runs 2) finish four 100 s runs in about 200 s, not 400 s: the
    first line printed 'ETA 6m40s' (the sum of the runs' estimates) against a 35 min dry run."""
    from castlab.sweep.progress import SweepProgress

    estimates = {f"r{i}": 100.0 for i in range(4)}
    two = SweepProgress(total=4, estimates=dict(estimates), slots=2)
    one = SweepProgress(total=4, estimates=dict(estimates))
    two.begin("r0", "first")
    one.begin("r0", "first")
    lines = capsys.readouterr().err.splitlines()
    assert "ETA 3m20s]" in lines[0] and "ETA 6m40s]" in lines[1]
    for i in (1, 2):
        two.begin(f"r{i}", "next")
        two.end(f"r{i - 1}", time.time() - 100.0, executed=True)  # took its estimate
    two.begin("r3", "last")  # r2 and r3 left, 100 s each, side by side
    assert capsys.readouterr().err.splitlines()[-1].count("ETA 1m40s]") == 1

"""Sweep execution on the local backend: skip, resume, failures, Ctrl-C, kill -9 (orchestration).

The sweep runs as a real `castlab sweep` process; only the child command is swapped for a small
stand-in trainer (below) that honours the trainer contract (config in, checkpoint/resume, row
written last through castlab.store) at millisecond cost, so the orchestration can be killed and
rerun many times. Real training under the sweep is covered in test_sweep_real.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from castlab import store

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = r'''
import json, os, signal, sys, time
from pathlib import Path
import yaml
from castlab import store
config, run_dir = yaml.safe_load(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
log = Path(os.environ["SWEEP_TEST_LOG"])
run_id = run_dir.name
def note(event):
    with open(log, "a") as f:  # O_APPEND: whole lines from concurrent writers
        f.write(f"{event} {run_id} {os.getpid()}\n")
if (run_dir / "result.parquet").exists():
    note("DOUBLE")  # launched for a run that is already done
ckpt = run_dir / "checkpoint.json"
step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
note(f"start@{step}")
(run_dir / "child.pid").write_text(str(os.getpid()))
if config["lr"] == 13.0:
    os.kill(os.getpid(), signal.SIGSEGV)
steps = int(config["tokens"]) // 1000
while step < steps:
    time.sleep(float(os.environ.get("SWEEP_TEST_STEP", "0.02")))
    step += 1
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, ckpt)
    if config["lr"] == 666.0 and step >= 3:  # again after a resume from the checkpoint
        store.write_row(run_dir, {"run_id": run_id, "status": "failed", "method": config["method"],
                                  "reason": f"loss became nan at step {step}"})
        sys.exit(0)
store.write_curve(run_dir, [{"step": s, "train_loss": 1.0 / s} for s in range(1, steps + 1)])
store.write_row(run_dir, {"run_id": run_id, "status": "ok", "method": config["method"],
                          "model": config["model"], "tokens": int(config["tokens"]),
                          "seed": config["seed"], "tokens_per_second": 50000.0,
                          "eval_loss": 1.0, "ppl": 2.718})
note("done")
'''

BOOT = r'''
import sys
from castlab import cli
from castlab.sweep import runner
cli.COMMAND_MODULES = ["castlab.sweep.commands"]
stand_in = sys.argv.pop(1)
runner.train_command = lambda config, run_dir: [sys.executable, stand_in, str(config), str(run_dir)]
sys.exit(cli.main(sys.argv[1:]))
'''


class Sweep:
    """A sweep file plus helpers to run `castlab sweep` with the stand-in trainer."""

    def __init__(self, tmp: Path, methods=("cast", "dense-kd"), budgets=("20k", "40k"),
                 seeds=(0, 1), settings=None):
        self.tmp = tmp
        self.log = tmp / "events.log"
        self.results = tmp / "results"
        (tmp / "stand_in.py").write_text(STAND_IN)
        methods = [m if not settings or m not in settings else {"name": m, "settings": settings[m]}
                   for m in methods]
        self.file = tmp / "sweep.yaml"
        self.file.write_text(yaml.safe_dump({
            "name": "t", "models": ["opt-tiny"], "methods": methods, "budgets": list(budgets),
            "seeds": list(seeds), "teacher": {"tokens": "30k"}, "results": str(self.results)}))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "CASTLAB_CACHE": str(tmp / "cache"),
                    "CASTLAB_TCMALLOC": "0", "SWEEP_TEST_LOG": str(self.log)}

    def argv(self, *extra) -> list[str]:
        return [sys.executable, "-c", BOOT, str(self.tmp / "stand_in.py"), "sweep",
                str(self.file), "--quiet", *extra]

    def run(self, *extra, timeout=240) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*extra), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *extra) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*extra), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def events(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def run_dirs(self) -> list[Path]:
        teachers = list((self.tmp / "cache" / "teachers").glob("*"))
        return teachers + [p for p in self.results.glob("*") if p.is_dir() and p.name[0] != "."]


@pytest.fixture
def inproc(monkeypatch, capsys):
    """Run `castlab sweep/status` in this process (children are still real processes)."""
    from castlab import cli
    from castlab.sweep import runner

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands"])

    def call(sweep: Sweep, *argv) -> subprocess.CompletedProcess:
        for key in ("CASTLAB_CACHE", "CASTLAB_TCMALLOC", "SWEEP_TEST_LOG", "SWEEP_TEST_STEP"):
            if key in sweep.env:
                monkeypatch.setenv(key, sweep.env[key])
        stand_in = str(sweep.tmp / "stand_in.py")
        monkeypatch.setattr(runner, "train_command",
                            lambda config, run_dir: [sys.executable, stand_in, str(config), str(run_dir)])
        args = list(argv) if argv[:1] == ("status",) else ["sweep", str(sweep.file), "--quiet", *argv]
        code = cli.main(args)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return call


def test_runs_skips_fails_and_retries(tmp_path, inproc):
    sweep = Sweep(tmp_path, methods=("cast", "dense-kd", "ast"), budgets=("5k",), seeds=(0,),
                  settings={"dense-kd": {"lr": 666.0}, "ast": {"lr": 13.0}})
    first = inproc(sweep)
    assert first.returncode == 1, first.stderr  # failures -> non-zero, but the sweep went on
    assert "4 runs" in first.stdout and "2 failed" in first.stdout and "2 done" in first.stdout
    rows = store.load(tmp_path, strict=True).set_index("method")
    assert rows.loc["cast", "status"] == "ok" and rows.loc["dense", "status"] == "ok"
    assert rows.loc["dense-kd", "reason"] == "loss became nan at step 3"
    assert rows.loc["ast", "reason"] == "child process killed by SIGSEGV"
    ast_dir = next(d for d in sweep.run_dirs() if d.name.startswith("ast-"))
    assert "child process killed by SIGSEGV" in store.read_row(ast_dir)["reason"]
    assert not any((d / store.LOCK_FILE).exists() for d in sweep.run_dirs())

    starts = len([e for e in sweep.events() if e[0].startswith("start")])
    again = inproc(sweep)
    assert again.returncode == 0 and "2 skipped-done" in again.stdout
    assert "2 skipped-failed" in again.stdout
    assert len([e for e in sweep.events() if e[0].startswith("start")]) == starts  # nothing ran

    retry = inproc(sweep, "--retry-failed")
    assert "2 failed" in retry.stdout  # both fail again, deterministically
    assert (ast_dir / "result.failed.parquet").exists()  # the earlier failure kept aside
    assert len([e for e in sweep.events() if e[0].startswith("start")]) == starts + 2

    # every invocation appended its wall time and outcome counts to the sweep log
    log = [json.loads(line) for line in (sweep.results / "sweep_log.jsonl").read_text().splitlines()]
    assert [e["outcomes"] for e in log] == [
        {"done": 2, "failed": 2}, {"skipped-done": 2, "skipped-failed": 2},
        {"failed": 2, "skipped-done": 2}]
    assert all(e["sweep"] == "t" and e["wall_seconds"] >= 0 for e in log)
    assert log[0]["wall_seconds"] > 0  # the first one trained

    status = inproc(sweep, "status", str(tmp_path))
    assert status.returncode == 0, status.stderr
    assert "loss became nan at step 4" in status.stdout  # the retry resumed at step 3
    assert "4 runs: 2 done, 2 failed" in status.stdout
    print(f"\nfirst pass: {first.stdout.strip().splitlines()[-2]}")


def test_dry_run_shows_status_and_estimates(tmp_path, inproc):
    sweep = Sweep(tmp_path, budgets=("20k",), seeds=(0,))
    before = inproc(sweep, "--dry-run")
    assert before.returncode == 0, before.stderr
    assert "3 runs (3 pending)" in before.stdout
    inproc(sweep)
    after = inproc(sweep, "--dry-run")
    lines = [line for line in after.stdout.splitlines() if line.startswith(("cast-", "dense"))]
    assert len(lines) == 3 and all(" done " in line for line in lines)
    assert "3 runs (3 done); estimated time left 0s" in after.stdout
    # measured throughput (the stand-in reports 50000 tokens/s, no timing split) drives the
    # estimate: the start + load allowances + 20000 / 50000 s for each cast run.
    from castlab.sweep.estimate import FORK_SECONDS, LOAD_SECONDS
    from castlab.sweep.plan import format_seconds

    cast = next(line for line in lines if line.startswith("cast-"))
    want = format_seconds(FORK_SECONDS + LOAD_SECONDS + 20_000 / 50_000)
    assert cast.split()[3:5] == [want, "rows"]


@pytest.mark.slow
def test_ctrl_c_stops_child_without_a_row_and_rerun_resumes(tmp_path):
    sweep = Sweep(tmp_path, methods=("cast",), budgets=("200k",), seeds=(0,))
    sweep.env["SWEEP_TEST_STEP"] = "0.05"
    proc = sweep.start()
    run_dir = None
    deadline = time.time() + 120
    while time.time() < deadline and run_dir is None:  # wait until the cast run trains
        time.sleep(0.2)
        run_dir = next((d for d in sweep.results.glob("cast-*") if (d / "checkpoint.json").exists()),
                       None)
    assert run_dir is not None, proc.communicate(timeout=5)
    child = int((run_dir / "child.pid").read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "castlab sweep: interrupted" in err
    assert "Traceback" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not (run_dir / "result.parquet").exists() and not (run_dir / store.LOCK_FILE).exists()
    sweep.env["SWEEP_TEST_STEP"] = "0.0"
    done = sweep.run()
    assert done.returncode == 0, done.stderr
    resumed = [e for e in sweep.events() if e[1] == run_dir.name and e[0].startswith("start@")]
    assert len(resumed) == 2 and int(resumed[1][0].split("@")[1]) > 0  # continued, not restarted
    assert store.read_row(run_dir)["status"] == "ok"


@pytest.mark.slow
def test_kill_9_ten_times_then_every_run_done_exactly_once(tmp_path):
    sweep = Sweep(tmp_path)  # 1 teacher + 2 methods x 2 budgets x 2 seeds = 9 runs
    rng = random.Random(0)
    kills = 0
    sweep.env["SWEEP_TEST_STEP"] = "0.05"  # runs of 1-2 s, so kills land inside training
    for i in range(10):
        starts = len(sweep.events())
        proc = sweep.start()
        if i % 2 == 0:  # half the kills: at a random moment of a trainer's life
            deadline = time.time() + 60
            while len(sweep.events()) == starts and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # the other half: anywhere, including the sweep's own start-up and planning
            time.sleep(rng.uniform(0.5, 8.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    final = sweep.run()
    assert final.returncode == 0, final.stderr
    time.sleep(0.5)
    events = sweep.events()
    planned = 9
    dirs = sweep.run_dirs()
    rows = [store.read_row(d) for d in dirs if (d / "result.parquet").exists()]
    done_events = [e[1] for e in events if e[0] == "done"]
    doubled = sum(1 for e in events if e[0] == "DOUBLE") + (len(done_events) - len(set(done_events)))
    lost = planned - len({r["run_id"] for r in rows if r["status"] == "ok"})
    resumes = sum(1 for e in events if e[0].startswith("start@") and e[0] != "start@0")
    assert len(dirs) == planned
    assert lost == 0 and doubled == 0
    assert not any((d / store.LOCK_FILE).exists() for d in dirs)
    print(f"\nkill -9: {kills} kills of the sweep process, {len(events)} trainer events, "
          f"{resumes} resumed from checkpoint; {len(rows)}/{planned} runs done, "
          f"{lost} lost, {doubled} doubled")

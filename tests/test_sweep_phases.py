"""Sweep phases (teachers / students), teacher packs, runs_per_gpu slots and CUDA estimates.

The phase tests run `castlab sweep` with the stand-in trainer of test_sweep_run (real child
processes, no training); the pack tests build opt-tiny teachers from configs (no training).
"""

from __future__ import annotations

import io
import json
import math
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from castlab import store
from castlab.config import TrainConfig, save_yaml
from castlab.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sweep_run import STAND_IN  # noqa: E402 - the stand-in trainer, shared

SPEC = {"name": "ph", "models": ["opt-tiny"], "methods": ["cast", "magnitude"],
        "budgets": ["2k", "4k"], "seeds": [0, 1], "teacher_seeds": [0, 1],
        "teacher": {"tokens": "3k"}, "train": {"seq_len": 32, "batch_size": 2}}


@pytest.fixture
def sweep(tmp_path, monkeypatch, capsys):
    """A sweep file on a private cache and a `castlab sweep` caller using the stand-in trainer."""
    from castlab import cli
    from castlab.sweep import runner

    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")
    monkeypatch.setenv("SWEEP_TEST_LOG", str(tmp_path / "events.log"))
    monkeypatch.setenv("SWEEP_TEST_STEP", "0")
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    monkeypatch.setattr(runner, "train_command", lambda config, run_dir: [
        sys.executable, str(tmp_path / "stand_in.py"), str(config), str(run_dir)])
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands",
                                                 "castlab.sweep.teacherpack"])
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({**SPEC, "results": str(tmp_path / "results")}))

    def call(*argv):
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    call.file, call.tmp = file, tmp_path
    return call


def _plan(file):
    from castlab.sweep.plan import build_plan
    from castlab.sweep.spec import load_sweep

    return build_plan(load_sweep(file))


def test_phase_select_splits_the_plan(sweep):
    from castlab.sweep import phases

    plan = _plan(sweep.file)
    teachers, students = phases.select(plan, "teachers"), phases.select(plan, "students")
    assert [r.kind for r in teachers] == ["teacher", "teacher"]
    # 2 budgets x 2 seeds of cast + magnitude x 2 seeds
    assert len(students) == 6 and all(r.kind == "run" for r in students)
    assert phases.select(plan, "all") == plan
    assert phases.needed_teachers(plan) == [t.run_dir for t in teachers]


def test_students_phase_refuses_missing_teachers_then_runs_after_teacher_phase(sweep):
    code, out, err = sweep("sweep", str(sweep.file), "--quiet", "--phase", "students")
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and "2 teacher(s) the plan needs are not done" in line
    ids = [r.run_id for r in _plan(sweep.file) if r.kind == "teacher"]
    assert all(i in line for i in ids) and "(dense opt-tiny tokens=3000 seed=0; pending)" in line
    assert f"castlab sweep {sweep.file} --phase teachers" in line
    assert "castlab teachers unpack FILE" in line
    assert not (sweep.tmp / "events.log").exists()  # nothing was started

    code, out, err = sweep("sweep", str(sweep.file), "--quiet", "--phase", "teachers")
    assert code == 0, err
    assert "(phase teachers): 2 runs (2 teachers + 0)" in out and "2 done" in out
    started = [line.split()[1] for line in (sweep.tmp / "events.log").read_text().splitlines()
               if line.startswith("start")]
    assert sorted(started) == sorted(ids)  # only the teachers ran
    assert not list((sweep.tmp / "results").glob("cast-*"))

    code, out, err = sweep("sweep", str(sweep.file), "--quiet", "--phase", "students")
    assert code == 0, err
    assert "(phase students): 6 runs (0 teachers + 6)" in out and "6 done" in out
    events = (sweep.tmp / "events.log").read_text().splitlines()
    assert len([e for e in events if e.startswith("start")]) == 8  # no teacher trained again


def test_dry_run_of_a_phase_lists_only_its_runs(sweep):
    code, out, _ = sweep("sweep", str(sweep.file), "--dry-run", "--phase", "teachers")
    assert code == 0
    assert "2 runs (2 pending)" in out and "phase teachers: 2 of 2 runs left" in out
    assert "phase students" not in out and " cast " not in out


# ---- teacher packs ------------------------------------------------------------------------


def _fake_teachers(file) -> list:
    """Make every teacher of the plan 'done' from a config-built opt-tiny (no training)."""
    from castlab.models import build_preset

    teachers = [r for r in _plan(file) if r.kind == "teacher"]
    for run in teachers:
        model = build_preset("opt-tiny", vocab_size=256, seed=run.config.seed)
        model.save_pretrained(run.run_dir / "model")
        (run.run_dir / "model" / "castlab_eval_s32_t0_fp32.json").write_text('{"ppl": 9.0}')
        save_yaml(run.config, run.run_dir / store.CONFIG_FILE)
        (run.run_dir / "checkpoint").mkdir()
        (run.run_dir / "checkpoint" / "state.pt").write_bytes(b"pickle, never packed")
        (run.run_dir / "train.log").write_text("log, not packed")
        store.write_row(run.run_dir, {"run_id": run.run_id, "status": "ok", "method": "dense",
                                      "model": "opt-tiny", "tokens": 3000, "seed": run.config.seed,
                                      "eval_loss": 2.0, "ppl": math.exp(2.0)})
    return teachers


def test_pack_unpack_round_trip_installs_identical_teachers(sweep, tmp_path, monkeypatch):
    from castlab.sweep import phases

    teachers = _fake_teachers(sweep.file)
    pack = tmp_path / "t.tar.gz"
    code, out, err = sweep("teachers", "pack", str(pack), "--sweep", str(sweep.file))
    assert code == 0, err
    assert ": 2 teachers, " in out and "MiB" in out
    with tarfile.open(pack) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(names[0]).read())
    assert names[0] == "castlab_teachers.json"
    assert not [n for n in names if n.endswith((".pt", ".log"))]
    assert {t["run_id"] for t in manifest["teachers"]} == {t.run_id for t in teachers}
    weights = f"teachers/{teachers[0].run_id}/model/model.safetensors"
    import hashlib

    src = teachers[0].run_dir / "model" / "model.safetensors"
    assert manifest["files"][weights]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "node"))  # another machine
    assert [p.name for p in phases.missing_teachers(_plan(sweep.file))] == \
        [t.run_id for t in teachers]
    code, out, err = sweep("teachers", "unpack", str(pack))
    assert code == 0, err
    assert "2 teachers installed, 0 already done" in out
    assert phases.missing_teachers(_plan(sweep.file)) == []
    for run in teachers:
        there = tmp_path / "node" / "teachers" / run.run_id
        for rel in ("model/model.safetensors", "model/config.json", "result.parquet",
                    "config.yaml", "model/castlab_eval_s32_t0_fp32.json"):
            assert (there / rel).read_bytes() == (run.run_dir / rel).read_bytes()
        assert not (there / "checkpoint").exists()
    from transformers import OPTForCausalLM

    loaded = OPTForCausalLM.from_pretrained(tmp_path / "node" / "teachers" / teachers[1].run_id / "model")
    from castlab.models import build_preset

    ref = build_preset("opt-tiny", vocab_size=256, seed=teachers[1].config.seed)
    assert all((a == b).all() for a, b in zip(loaded.state_dict().values(),
                                                ref.state_dict().values(), strict=True))
    code, out, _ = sweep("teachers", "unpack", str(pack))  # again: done teachers are kept
    assert code == 0 and "0 teachers installed, 2 already done" in out


def _rewrite(pack: Path, out: Path, change) -> None:
    """Copy a pack member by member, letting ``change(name, bytes)`` alter or add members."""
    with tarfile.open(pack) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            for name, blob in change(member.name, data):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                dst.addfile(info, io.BytesIO(blob))


def test_unpack_refuses_a_corrupt_or_foreign_pack(sweep, tmp_path, monkeypatch):
    teachers = _fake_teachers(sweep.file)
    pack = tmp_path / "t.tar.gz"
    assert sweep("teachers", "pack", str(pack), "--sweep", str(sweep.file))[0] == 0
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "node"))
    weights = f"teachers/{teachers[0].run_id}/model/model.safetensors"

    def flip(name, data):
        if name == weights:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(name, data)]

    _rewrite(pack, tmp_path / "bad.tar.gz", flip)
    code, _, err = sweep("teachers", "unpack", str(tmp_path / "bad.tar.gz"))
    assert code == 2 and f"{weights} fails its checksum" in err and "nothing installed" in err
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == []  # staging removed too

    def extra(name, data):
        return [(name, data)] + ([("teachers/evil.py", b"import os")] if name == weights else [])

    _rewrite(pack, tmp_path / "extra.tar.gz", extra)
    code, _, err = sweep("teachers", "unpack", str(tmp_path / "extra.tar.gz"))
    assert code == 2 and "unexpected member 'teachers/evil.py'" in err

    _rewrite(pack, tmp_path / "short.tar.gz", lambda n, d: [] if n == weights else [(n, d)])
    code, _, err = sweep("teachers", "unpack", str(tmp_path / "short.tar.gz"))
    assert code == 2 and f"'{weights}' is in the manifest but not in the pack" in err

    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    code, _, err = sweep("teachers", "unpack", str(tmp_path / "junk.tar.gz"))
    assert code == 2 and "cannot read the teacher pack" in err


def test_pack_refuses_teachers_that_are_not_done(sweep, tmp_path):
    code, _, err = sweep("teachers", "pack", str(tmp_path / "t.tar.gz"), "--sweep", str(sweep.file))
    assert code == 2 and "2 teacher(s) are not done" in err and "--phase teachers" in err
    assert not (tmp_path / "t.tar.gz").exists()


# ---- runs_per_gpu -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_runs_per_gpu_must_be_an_integer_of_at_least_one(tmp_path, value):
    from castlab.sweep.spec import load_sweep

    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({**SPEC, "backend": {"name": "local", "runs_per_gpu": value}}))
    with pytest.raises(UserError, match=r"backend(\.runs_per_gpu)?: .*"):
        load_sweep(file)
    file.write_text(yaml.safe_dump({**SPEC, "backend": {"name": "local", "runs_per_gpu": 3}}))
    assert load_sweep(file).backend_options.runs_per_gpu == 3


def test_gpu_slots_interleave_cards():
    from castlab.sweep.backends import gpu_slots

    assert gpu_slots(["2", "5"], 2) == ["2", "5", "2", "5"]
    assert gpu_slots(["0"], 3) == ["0", "0", "0"]
    assert gpu_slots([], 4) == []


def test_local_backend_runs_k_per_gpu_each_pinned(monkeypatch, tmp_path):
    from castlab import device
    from castlab.sweep import backends
    from castlab.sweep.plan import PlannedRun

    seen, active, peak = [], {}, {}
    lock = threading.Lock()

    def fake_execute(config, run_dir, retry_failed, echo=True, env=None):
        gpu = (env or {}).get("CUDA_VISIBLE_DEVICES")
        with lock:
            active[gpu] = active.get(gpu, 0) + 1
            peak[gpu] = max(peak.get(gpu, 0), active[gpu])
        time.sleep(0.1)
        with lock:
            active[gpu] -= 1
            seen.append((Path(run_dir).name, gpu))
        return "done"

    monkeypatch.setattr(backends, "execute_run", fake_execute)
    monkeypatch.setattr(device, "cuda_count", lambda: 2)  # two cards, as torch would see them
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runs = [PlannedRun(TrainConfig(method="dense", model="opt-tiny", seed=i, device="cuda"),
                       tmp_path / f"r{i}", "run") for i in range(9)]
    opts = backends.LocalBackend.Options(runs_per_gpu=3)
    out = backends.LocalBackend(options=opts, progress=False).execute(runs, retry_failed=False)
    assert set(out) == {f"r{i}" for i in range(9)} and set(out.values()) == {"done"}
    assert {gpu for _, gpu in seen} == {"0", "1"}
    assert peak == {"0": 3, "1": 3}  # three at a time on each card, never more
    # the default is one run per card
    seen.clear(), peak.clear()
    backends.LocalBackend(progress=False).execute(runs[:4], retry_failed=False)
    assert peak == {"0": 1, "1": 1}


# ---- CUDA estimates -----------------------------------------------------------------------


def test_assumed_mfu_is_the_opt125m_calibration():
    from castlab.sweep.gpu_estimate import assumed_mfu

    # OPT-125m: 12 x (4 * 768^2 + 2 * 768 * 3072) block weights + 50272 x 768 tied head;
    # 12 L d T attention FLOPs at T = 1024
    n = 12 * (4 * 768**2 + 2 * 768 * 3072) + 50272 * 768
    flops = 6 * n + 12 * 12 * 768 * 1024
    assert assumed_mfu() == pytest.approx(290e3 * flops / 989e12)
    assert 0.24 < assumed_mfu() < 0.26


def test_cuda_run_estimate_is_the_launch_floor_for_a_tiny_model():
    from castlab.sweep.gpu_estimate import run_estimate

    cfg = TrainConfig(method="cast", model="opt-tiny", tokens=64_000, seq_len=32, batch_size=2,
                      eval_every=500, eval_tokens=1000, final_eval_tokens=5000, device="cuda")
    est = run_estimate(cfg)
    step = (0.002 + 0.001 * 1) * 1.7  # one layer, CAST's method cost 1.7
    steps = 64_000 // 64
    evals = (steps // 500 + 1) * 1000 + 2 * 5000
    assert est.seconds == pytest.approx(10 + steps * step + evals * step / (3 * 64))
    assert est.busy == pytest.approx(steps * 0.35 * step / est.seconds)
    # a stored CUDA rate replaces the modelled step time
    measured = run_estimate(cfg, rate=64 / 0.01)
    assert measured.seconds == pytest.approx(10 + steps * 0.01 + evals * 0.01 / (3 * 64))


def test_makespan_shares_a_card_by_busy_fraction():
    from castlab.sweep.gpu_estimate import GpuRunEstimate, makespan

    light, heavy = GpuRunEstimate(10.0, 0.35), GpuRunEstimate(10.0, 1.0)
    assert makespan([light, light], slots=1, per_gpu=1) == pytest.approx(20.0)
    assert makespan([light, light], slots=2, per_gpu=2) == pytest.approx(10.0)  # 0.7 <= 1
    assert makespan([heavy, heavy], slots=2, per_gpu=2) == pytest.approx(20.0)  # time-sliced
    assert makespan([heavy, heavy], slots=2, per_gpu=1) == pytest.approx(10.0)  # two cards
    # three light runs on a card: summed busy 1.05 slows each by 5%
    assert makespan([light] * 3, slots=3, per_gpu=3) == pytest.approx(10.5)


def test_cuda_dry_run_never_times_steps_on_the_cpu(sweep, monkeypatch):
    from castlab.sweep import estimate

    def boom(*args, **kwargs):
        raise AssertionError("a CUDA run was timed on the CPU")

    monkeypatch.setattr(estimate, "dense_rate", boom)
    monkeypatch.setattr(estimate, "calibrated_seconds", boom)
    sweep.file.write_text(yaml.safe_dump({
        **SPEC, "results": str(sweep.tmp / "results"),
        "train": {**SPEC["train"], "device": "cuda"},
        "teacher": {"tokens": "3k", "device": "cuda"},
        "backend": {"name": "local", "runs_per_gpu": 2}}))
    code, out, err = sweep("sweep", str(sweep.file), "--dry-run")
    assert code == 0, err
    assert "phase teachers: 2 of 2 runs left" in out and "phase students: 6 of 6 runs left" in out
    assert "1 GPU (assumed; none visible here) x 2 runs per GPU" in out
    assert "CUDA estimates: H200 model (989 TFLOP/s bf16 peak at 25% MFU" in out
    assert "summed over runs (wall per phase above)" in out


def test_cuda_rates_come_only_from_cuda_rows(tmp_path):
    from castlab.sweep.plan import measured_throughput

    for name, device, rate in (("a", "cpu", 1000.0), ("b", "cuda:0", 90000.0)):
        store.write_row(tmp_path / name, {"run_id": name, "status": "ok", "method": "cast",
                                          "model": "opt-tiny", "tokens": 10, "seed": 0,
                                          "device": device, "tokens_per_second": rate,
                                          "eval_loss": 1.0, "ppl": math.e})
    assert measured_throughput([tmp_path])[("opt-tiny", "cast")] == 1000.0
    assert measured_throughput([tmp_path], cuda=True)[("opt-tiny", "cast")] == 90000.0


def test_cuda_estimate_takes_only_the_same_methods_stored_rate(tmp_path):
    from castlab.sweep.gpu_estimate import run_estimate
    from castlab.sweep.plan import PlannedRun, estimate_seconds

    cfg = TrainConfig(method="cast", model="opt-tiny", tokens=64_000, seq_len=32, batch_size=2,
                      device="cuda")
    run = PlannedRun(cfg, tmp_path / "r", "run")
    teacher_rate = {("opt-tiny", "dense"): 2e6, ("opt-tiny", "*"): 2e6}  # big-batch teachers
    assert estimate_seconds(run, teacher_rate) == pytest.approx(run_estimate(cfg).seconds)
    own = {**teacher_rate, ("opt-tiny", "cast"): 5000.0}
    assert estimate_seconds(run, own) == pytest.approx(run_estimate(cfg, 5000.0).seconds)
    assert run_estimate(cfg, 5000.0).seconds != pytest.approx(run_estimate(cfg).seconds)

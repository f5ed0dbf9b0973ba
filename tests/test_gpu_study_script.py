"""scripts/gpu_study.sh end to end on the CPU: a tiny study (opt-tiny, device cpu) in two phases
on two fresh caches ("machines"), the second starting from the first one's teacher pack."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny_study", "corpus": "default", "vocab_size": 8192, "models": ["opt-tiny"],
        "methods": ["cast", "magnitude"], "budgets": [2048], "seeds": [0],
        "teacher": {"tokens": 4096, "batch_size": 4},
        "train": {"device": "cpu", "seq_len": 32, "batch_size": 2, "final_eval_tokens": 2048,
                  "threads": 1},
        "eval": {"every": 32, "tokens": 1024}, "backend": {"name": "local", "runs_per_gpu": 2}}


def _study(tmp: Path, phase: str, cache: str, out: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "CASTLAB_CACHE": str(tmp / cache), "PYTHON": sys.executable,
            "CASTLAB_STUDY_INSTALL": "0", "CASTLAB_STUDY_SWEEP": str(tmp / "tiny.yaml"),
            "CASTLAB_STUDY_RESULTS": str(tmp / f"results-{cache}"),
            "CASTLAB_STUDY_REPORT_ARGS": "--no-law", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(tmp / "corpus.tar.xz"),
                           str(tmp / out), phase], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three script runs, each starting several castlab processes
def test_gpu_study_script_runs_both_phases_across_two_machines(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    packed = subprocess.run([sys.executable, "-m", "castlab.cli", "data", "pack", "--corpus",
                             "default", "--out", str(tmp_path / "corpus.tar.xz")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert packed.returncode == 0, packed.stderr

    first = _study(tmp_path, "teachers", "node1", "out1")
    assert first.returncode == 0, first.stdout + first.stderr
    log = (tmp_path / "out1" / "log.txt").read_text()
    assert "== sweep-teachers rc=0" in log and "== pack-teachers rc=0" in log
    assert "sweep-students" not in log
    with tarfile.open(tmp_path / "out1" / "teachers.tar.gz") as tar:
        assert any(n.endswith("model/model.safetensors") for n in tar.getnames())
    assert "phase teachers: 1 of 1 runs left" in (tmp_path / "out1" / "dryrun.txt").read_text()

    # a fresh machine: without the pack the student phase refuses, with it it runs
    refused = _study(tmp_path, "students", "node2", "out2")
    assert refused.returncode == 2 and "== sweep-students rc=2" in refused.stdout
    assert "teacher(s) the plan needs are not done" in (tmp_path / "out2" / "log.txt").read_text()
    second = _study(tmp_path, "students", "node2", "out3",
                    CASTLAB_STUDY_TEACHER_PACK=str(tmp_path / "out1" / "teachers.tar.gz"))
    assert second.returncode == 0, second.stdout + second.stderr
    log = (tmp_path / "out3" / "log.txt").read_text()
    assert "1 teachers installed" in log and "== sweep-students rc=0" in log
    assert "== report rc=0" in log and (tmp_path / "out3" / "REPORT.md").is_file()
    assert "2 runs: 2 done" in (tmp_path / "out3" / "status.txt").read_text()
    with tarfile.open(tmp_path / "out3" / "study.tar.gz") as tar:
        names = tar.getnames()
    assert sum(n.endswith("result.parquet") for n in names) == 2
    assert "./report/REPORT.md" in names and not any(n.endswith(".safetensors") for n in names)

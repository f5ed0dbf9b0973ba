"""Sweeps with real (tiny) training: local, Ray (a real loopback cluster), submitit local executor.

The teacher and runs use opt-tiny on the default corpus with a small vocabulary; the corpus and
tokenizer caches are shared with the user's cache (read-only use), teachers and results are per
test. A run with lr 1e6 diverges: it must be failed with the reason while the sweep goes on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from castlab import cli, store

ROOT = Path(__file__).resolve().parents[1]
SHARED_CACHES = ("corpus", "tokenizers", "tokens", "archives")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache dir whose data/tokenizer caches link to the user's (no refetch/retrain)."""
    user = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    root = tmp_path / "cache"
    root.mkdir()
    for name in SHARED_CACHES:
        (user / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(user / name)
    monkeypatch.setenv("CASTLAB_CACHE", str(root))
    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES])
    return root


def tiny_sweep(tmp: Path, backend, methods=("cast", "dense-kd")) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "models": ["opt-tiny"], "methods": list(methods), "budgets": ["8k"],
        "vocab_size": 2048, "teacher": {"tokens": "32k"},
        "train": {"seq_len": 32, "batch_size": 8, "threads": 1, "checkpoint_every": 0},
        "eval": {"every": 1000, "tokens": "2k"}, "backend": backend,
        "results": str(tmp / "results")}))
    return path


def sweep(path: Path, *extra) -> int:
    return cli.main(["sweep", str(path), "--quiet", *extra])


def sweep_both_methods_ok(path: Path, results: Path, capsys) -> tuple:
    """Run the tiny sweep; assert it passed with one ok row per method; (rows, seconds)."""
    t0 = time.time()
    code = sweep(path)
    out = capsys.readouterr().out
    assert code == 0, out
    rows = store.load(results, strict=True)
    assert sorted(rows["method"]) == ["cast", "dense-kd"] and (rows["status"] == "ok").all()
    return rows, time.time() - t0


@pytest.mark.slow
def test_local_nan_run_fails_with_reason_and_sweep_goes_on(tmp_path, cache, capsys):
    path = tiny_sweep(tmp_path, "local", methods=[{"name": "cast", "settings": {"lr": 1.0e6}},
                                                  "dense-kd"])
    t0 = time.time()
    assert sweep(path) == 1  # one failure
    wall = time.time() - t0
    out = capsys.readouterr().out
    assert "3 runs" in out and "2 done" in out and "1 failed" in out
    rows = store.load(tmp_path / "results", strict=True).set_index("method")
    assert rows.loc["cast", "status"] == "failed"
    assert "loss became nan" in rows.loc["cast", "reason"] or "loss became inf" in rows.loc["cast", "reason"]
    kd = rows.loc["dense-kd"]
    # '8k' is rounded down to whole steps of 8 x 32 tokens (castlab.sweep.plan.whole_steps)
    assert kd["status"] == "ok" and kd["tokens"] == 31 * 8 * 32 and kd["eval_loss"] > 0
    teacher = next((cache / "teachers").iterdir())
    assert store.read_row(teacher)["status"] == "ok" and (teacher / "model").is_dir()
    t1 = time.time()
    assert sweep(path) == 0  # rerun: done skipped, failed kept (no --retry-failed)
    out = capsys.readouterr().out
    assert "2 skipped-done" in out and "1 skipped-failed" in out
    print(f"\nreal local sweep: {wall:.1f} s cold (teacher + 2 runs); rerun {time.time() - t1:.1f} s; "
          f"NaN run reason: {rows.loc['cast', 'reason']!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """`ray start --head --num-cpus 2` on loopback, stopped by signalling only its process group."""
    pytest.importorskip("ray")
    import shutil
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="cl-ray-", dir="/tmp"))  # AF_UNIX paths <= 107 bytes
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
         "--temp-dir", str(temp)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        probe = subprocess.run([str(ray_bin), "status", "--address", address], env=env,
                               capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, head.stdout.read().decode()
        time.sleep(2)
    else:
        pytest.fail("ray head did not come up")
    yield address, temp
    import ray

    ray.shutdown()
    os.killpg(head.pid, 15)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_backend_on_a_real_cluster(tmp_path, cache, ray_cluster, capsys):
    address, temp = ray_cluster
    path = tiny_sweep(tmp_path, {"name": "ray", "address": address, "num_cpus": 1})
    rows, seconds = sweep_both_methods_ok(path, tmp_path / "results", capsys)
    logs = list(temp.rglob("worker-*.out"))
    assert logs  # the runs executed in Ray worker processes of that cluster
    assert sweep(path) == 0 and "3 skipped-done" in capsys.readouterr().out
    print(f"\nray ({address}, 2 CPUs): teacher + 2 runs in {seconds:.1f} s, "
          f"{len(rows)} rows ok")


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, cache, capsys):
    pytest.importorskip("submitit")
    folder = tmp_path / "submitit"
    path = tiny_sweep(tmp_path, {"name": "slurm", "cluster": "local", "folder": str(folder),
                                 "timeout_min": 20})
    _, seconds = sweep_both_methods_ok(path, tmp_path / "results", capsys)
    results = list(folder.rglob("*_result.pkl"))
    assert len(results) == 3  # teacher array + 2-run array, each job through submitit
    print(f"\nsubmitit local: teacher + 2 runs as 2 job arrays in {seconds:.1f} s, "
          f"{len(results)} job results")

"""castlab.device: parsing and validation of the device setting, the run id it must not change,
the fused (GPU) AdamS and mask paths run eagerly on the CPU against the element-wise reference,
and the local sweep backend's one-run-per-GPU scheduling."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_adams import RefAdamS, make_tensors

from castlab import device as devices
from castlab.cli import main
from castlab.config import TrainConfig, from_dict
from castlab.errors import UserError
from castlab.sparsity import adams, fused
from castlab.sparsity.adams import AdamS
from castlab.sparsity.masks import nm_mask


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_spellings_accepted(spec):
    assert devices.check_device_spec(spec) == spec
    assert from_dict(TrainConfig, {"method": "dense", "model": "opt-tiny", "device": spec}).device == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "mps", ""])
def test_bad_device_is_one_line_naming_the_field(spec):
    with pytest.raises(UserError, match=r"^train\.device: got .*, allowed auto, cpu, cuda or cuda:N$"):
        from_dict(TrainConfig, {"method": "dense", "model": "opt-tiny", "device": spec}, where="train")


def test_resolve_without_and_with_too_few_gpus(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^device: got 'cuda' but no CUDA device is visible"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"got 'cuda:7' but only 2 CUDA device\(s\) are visible "
                                        r"\(allowed cuda:0..cuda:1\)"):
        devices.resolve_device("cuda:7")
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: each rank its own card
    assert devices.resolve_device("cuda") == torch.device("cuda", 1)
    assert devices.distributed_backend(torch.device("cuda", 1)) == "nccl"
    assert devices.distributed_backend(torch.device("cpu")) == "gloo"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_train_on_missing_gpu_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--method", "dense", "--model", "opt-tiny", "--device", "cuda",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("castlab train: error: device: got 'cuda' but no CUDA device")
    assert not (tmp_path / "run" / "result.parquet").exists()


def test_device_and_compile_do_not_change_the_run_id():
    from castlab.config import to_dict

    base = from_dict(TrainConfig, {"method": "dense", "model": "opt-tiny"})
    assert base.dtype == "fp32"  # auto on a CPU spec: the dtype every stored CPU run has
    # a config stored before these settings existed (no device/compile/dropout keys) keeps its id
    stored = {k: v for k, v in to_dict(base).items() if k not in ("device", "compile", "dropout")}
    assert from_dict(TrainConfig, {**stored, "dtype": "fp32"}).run_id() == base.run_id()
    for extra in ({"device": "cpu"}, {"device": "cuda:3", "dtype": "fp32"}, {"compile": True}):
        assert from_dict(TrainConfig, {**stored, **extra}).run_id() == base.run_id()
    # dtype auto resolves from the device setting: bf16 on CUDA, and bf16 is a different run
    on_gpu = from_dict(TrainConfig, {"method": "dense", "model": "opt-tiny", "device": "cuda"})
    assert on_gpu.dtype == "bf16" and on_gpu.run_id() != base.run_id()
    assert from_dict(TrainConfig, {**stored, "dropout": 0.1}).run_id() != base.run_id()


def test_cpu_device_gives_the_same_row_as_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)  # the default (auto) is the CPU here
    rows = []
    for name, extra in (("default", {}), ("cpu", {"device": "cpu"})):
        cfg = tiny_config(method="dense", tokens=4 * 8 * 64, eval_every=2, eval_tokens=2048,
                          final_eval_tokens=4096, **extra)
        from castlab.train import run_training

        rows.append(run_training(cfg, tmp_path / name, progress=False))
    timing = {"wall_seconds", "train_seconds", "eval_seconds", "tokens_per_second"}
    a, b = ({k: "nan" if v != v else v for k, v in r.items() if k not in timing} for r in rows)
    assert a == b and a["status"] == "ok" and a["device"] == "cpu" and a["cuda_version"] == ""
    assert a["eval_loss"] < 9.0  # it trained and scored (ln 8192 = 9.01 is a uniform guess)


def test_losses_reach_the_curve_and_a_nan_fails_at_its_step():
    from castlab.train import RunFailed, _read_losses

    curve = [{"step": s, "train_loss": float("nan")} for s in (1, 2, 3)]
    pending = [torch.tensor(2.5), torch.tensor(1.25)]
    _read_losses(curve, pending)
    assert [r["train_loss"] for r in curve[1:]] == [2.5, 1.25] and pending == []
    curve.append({"step": 4})
    with pytest.raises(RunFailed, match=r"^loss became inf at step 3$"):
        _read_losses(curve, [torch.tensor(float("inf"))])


@pytest.mark.parametrize("bias_correct", [False, True])
def test_fused_adams_path_matches_reference_on_cpu(monkeypatch, bias_correct):
    """The CUDA update and refresh functions, run eagerly here, against the spec reference."""
    if bias_correct and "bias_correct" not in AdamS.__init__.__code__.co_varnames:
        pytest.skip("this AdamS has no bias_correct option")
    monkeypatch.setattr(adams, "FUSED_DEVICES", {"cpu"})
    monkeypatch.setattr(fused, "COMPILE_DEVICES", {"cuda"})  # never compile on CPU
    T, t1, lr, lam = 7, 3, 0.02, 0.05
    tensors = make_tensors()
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    extra = {"bias_correct": True} if bias_correct else {}
    opt = AdamS([{"params": params[:2], "sparse": True}, {"params": params[2:]}], lr=lr,
                lambda_=lam, total_steps=T, t1=t1, n=2, m=4, **extra)
    ref = RefAdamS(tensors, [True, True, False], lr, (0.9, 0.999), 1e-8, lam, T, t1, 2, 4)
    twin = [torch.nn.Parameter(t.clone()) for t in tensors]  # the CPU path, for bias_correct
    twin_opt = AdamS([{"params": twin[:2], "sparse": True}, {"params": twin[2:]}], lr=lr,
                     lambda_=lam, total_steps=T, t1=t1, n=2, m=4, **extra)
    gen = torch.Generator().manual_seed(1)
    for _ in range(T):
        grads = [torch.randn(t.shape, generator=gen) * 0.01 for t in tensors]
        for p, q, g in zip(params, twin, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        monkeypatch.setattr(adams, "FUSED_DEVICES", set())
        twin_opt.step()
        monkeypatch.setattr(adams, "FUSED_DEVICES", {"cpu"})
        ref.step(grads)
        for p, q, w in zip(params, twin, ref.w, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
            if not bias_correct:  # the reference is the spec-literal rule
                torch.testing.assert_close(p.detach().double(), torch.tensor(w, dtype=torch.float64),
                                           rtol=1e-5, atol=1e-7)
    for got, mask, twin_mask in zip(opt.masks()[:2], ref.mask[:2], twin_opt.masks(), strict=True):
        assert torch.equal(got, twin_mask) and (bias_correct or got.tolist() == mask)
    assert [s for s, _ in opt.flip_rates] == [3, 6]
    assert opt.flip_rates == twin_opt.flip_rates and opt.flip_rates[0][1] > 0


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (3, 6), (2, 8)])
def test_fused_mask_matches_nm_mask_with_ties_and_nan(n, m):
    gen = torch.Generator().manual_seed(n * 10 + m)
    w = torch.randint(-3, 4, (16, 4 * m), generator=gen).float()  # many ties
    w[0, 0] = float("nan")
    old = nm_mask(w, n, m, pruned=True).view(torch.uint8)
    w2 = w.clone()
    w2[1] = -w2[1] * 0 + torch.arange(4 * m).float()  # a changed row
    news, changed = fused.nm_pruned_([w, w2], [old, old], n, m)
    assert news[0].dtype == torch.uint8 and torch.equal(news[0].bool(), nm_mask(w, n, m, pruned=True))
    assert torch.equal(news[1].bool(), nm_mask(w2, n, m, pruned=True))
    assert int(changed) == int((news[1] != old).sum())


def test_local_backend_runs_one_run_per_gpu_pinned(monkeypatch, tmp_path):
    from castlab.sweep import backends
    from castlab.sweep.plan import PlannedRun

    seen, active, peak = [], [0], [0]
    lock = threading.Lock()

    def fake_execute(config, run_dir, retry_failed, echo=True, env=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            seen.append((Path(run_dir).name, (env or {}).get("CUDA_VISIBLE_DEVICES")))
        return "done"

    monkeypatch.setattr(backends, "execute_run", fake_execute)
    monkeypatch.setattr(backends, "visible_gpus", lambda: ["2", "5"])
    runs = [PlannedRun(TrainConfig(method="dense", model="opt-tiny", seed=i, device=dev),
                       tmp_path / f"r{i}", "run")
            for i, dev in enumerate(["auto", "cuda", "auto", "cpu", "cuda", "cuda:1"])]
    out = backends.LocalBackend(progress=False).execute(runs, retry_failed=False)
    assert set(out) == {f"r{i}" for i in range(6)} and set(out.values()) == {"done"}
    pins = dict(seen)
    assert pins["r3"] is None and pins["r5"] is None  # cpu and a fixed cuda:N go in turn
    assert {pins[f"r{i}"] for i in (0, 1, 2, 4)} == {"2", "5"} and peak[0] == 2
    # without GPUs every run goes in turn, unpinned
    seen.clear()
    monkeypatch.setattr(backends, "visible_gpus", lambda: [])
    backends.LocalBackend(progress=False).execute(runs[:2], retry_failed=False)
    assert [pin for _, pin in seen] == [None, None]


def test_cluster_backends_request_a_gpu_for_cuda_runs(tmp_path):
    from castlab.sweep.backends import gpus_per_run
    from castlab.sweep.plan import PlannedRun

    def run(dev):
        return PlannedRun(TrainConfig(method="dense", model="opt-tiny", device=dev), tmp_path, "run")

    assert gpus_per_run(None, run("cuda")) == 1.0 and gpus_per_run(None, run("cuda:1")) == 1.0
    assert gpus_per_run(None, run("cpu")) == 0.0 and gpus_per_run(None, run("auto")) == 0.0
    assert gpus_per_run(4, run("cpu")) == 4


def test_sweep_modules_import_without_a_cycle():
    import subprocess
    import sys

    for module in ("castlab.sweep.backends", "castlab.sweep.spec"):  # each first, alone
        code = f"import {module}, sys; print('castlab.sweep.plan' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "False", module  # backends no longer pulls plan (-> spec)


def test_cli_and_trainer_import_without_optional_packages():
    """An offline GPU node has torch and transformers but no lm-eval, datasets, ray, submitit."""
    import subprocess
    import sys

    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lm_eval', 'datasets', 'ray', 'submitit'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import castlab.cli, castlab.train, castlab.downstream.commands, castlab.sweep.commands, castlab.bench_gpu
castlab.cli.build_parser()
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-500:]

"""What a first GPU run would hit, checked on the CPU with the CUDA-only branches forced (issue 23):
resume with device tensors in the checkpoint, the compiled fused update and refresh through
inductor's CPU backend (recompile counts from torch._dynamo's counters), the SR-STE/AST refresh
without host syncs, TF32 off inside SparseGPT, one card per torchrun rank, Ray's GPU request for
``device: auto``, and the KD teacher's dtype."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from conftest import tiny_config

from castlab.sparsity import adams as adams_mod
from castlab.sparsity import fused


class _OnDevice(torch.Tensor):
    """A CPU tensor standing for one on a GPU: ``.numpy()`` refuses it as it refuses a CUDA
    tensor; every op (``.cpu()``, ``.to()``, copies) returns plain tensors, as a device-to-host
    copy does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        # .cpu() / .to("cpu") of a CPU tensor return the tensor itself: hand back a plain one
        return out.as_subclass(torch.Tensor) if isinstance(out, _OnDevice) else out

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to "
                        "copy the tensor to host memory first.")


def _on_device(obj):
    """Every tensor in a (nested) checkpoint state as an _OnDevice tensor."""
    if isinstance(obj, torch.Tensor):
        return obj.as_subclass(_OnDevice)
    if isinstance(obj, dict):
        return {k: _on_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_device(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------------
# 1. resume on CUDA


def test_mask_life_restores_from_tensors_on_a_device():
    from castlab.sparsity.masklife import MaskLife

    masks = [torch.rand(8, 16) > 0.5, torch.rand(4, 8) > 0.5]
    life = MaskLife(total_steps=10, eval_every=2)
    life.start(masks, [torch.randn(8, 16), torch.randn(4, 8)])
    life.record(2, [~m for m in masks], [0.25])
    back = MaskLife(total_steps=10, eval_every=2)
    back.load_state_dict(_on_device(life.state_dict()))  # the old code called .numpy() on them
    assert back.drift_from_initial(masks) == 0.0
    assert back.drift_from_initial([~m for m in masks]) == 1.0
    assert [s for s, _ in back.snapshots] == [2]


def test_sparse_run_resumes_from_a_checkpoint_read_onto_a_device(tmp_path, monkeypatch):
    """A resumed sr-ste run whose checkpoint tensors come back as device tensors finishes with
    the curve of an uninterrupted run (the old resume crashed in the mask life)."""
    import pandas as pd

    from castlab import checkpoint
    from castlab import train as train_mod

    cfg = tiny_config(method="sr-ste", tokens=8 * 8 * 64, lr=1e-3, checkpoint_every=4,
                      eval_every=4, t1=2, final_eval_tokens=8192)
    straight = train_mod.run_training(cfg, tmp_path / "straight", progress=False)
    assert train_mod.run_training(cfg, tmp_path / "resumed", progress=False, stop_after=4) is None
    seen, real_load = [], checkpoint.load

    def load_onto_device(path, map_location="cpu"):
        seen.append(map_location)
        return _on_device(real_load(path, map_location="cpu"))

    monkeypatch.setattr(train_mod.checkpoint, "load", load_onto_device)
    resumed = train_mod.run_training(cfg, tmp_path / "resumed", progress=False)
    assert seen == ["cpu"]  # read onto the host whatever the run's device
    assert resumed["status"] == "ok", resumed
    for key in ("mask_drift", "mask_flip_rate", "eval_loss"):
        assert resumed[key] == straight[key], key
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "straight" / "curve.parquet"),
                                  pd.read_parquet(tmp_path / "resumed" / "curve.parquet"))


# ----------------------------------------------------------------------------------------------
# 2. compiled fused paths: one graph per variant, whatever the tensors


@pytest.fixture
def compile_on_cpu(monkeypatch):
    """Compile the fused functions for CPU tensors (inductor's CPU backend), from a clean slate."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused, "_COMPILE_FAILED", set())
    monkeypatch.setattr(fused, "COMPILE_DEVICES", {"cuda", "cpu"})
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _streams(shapes, seed=0, parameters=True):
    gen = torch.Generator().manual_seed(seed)
    make = torch.nn.Parameter if parameters else (lambda t: t)
    ps = [make(torch.randn(s, generator=gen) * 0.05) for s in shapes]
    gs = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    ms = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    vs = [torch.rand(s, generator=gen) * 1e-6 for s in shapes]
    return ps, gs, ms, vs


def _clone(streams):
    return [[x.detach().clone() for x in xs] for xs in streams]


def test_compiled_fused_update_and_refresh_compile_once_per_variant(compile_on_cpu):
    """Square and non-square weights, list lengths 9 and 4, None vs masks, nn.Parameter vs plain
    tensors: four graphs in all (update with/without blend, refresh with/without old masks), and
    the compiled results equal the eager ones. The old whole-list graph compiled one graph per
    list length, None-vs-list and tensor type (and every list in one unrolled graph)."""
    shapes = [(32, 32), (64, 32), (32, 64)] * 3
    hyper = torch.tensor([1e-3, 0.1, 0.999, 1e-3, 1e-8, 0.3, 0.4, 0.02, 1.0])
    ps, gs, ms, vs = _streams(shapes)
    eager = _clone([ps, gs, ms, vs])
    with torch.no_grad():
        masks, _ = fused.nm_pruned_(ps, [None] * len(ps), 2, 4, compile=True)
        ref_masks, _ = fused.nm_pruned_(eager[0], [None] * len(ps), 2, 4)
        assert all(torch.equal(a, b) for a, b in zip(masks, ref_masks, strict=True))
        for pruned in (None, masks, masks):
            fused.adams_update_(ps, gs, ms, vs, pruned, hyper, True, compile=True)
            fused.adams_update_(*eager, pruned, hyper, True)
        for got, want in zip(ps + ms + vs, eager[0] + eager[2] + eager[3], strict=True):
            torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-9)
        after_first = _graphs()
        # other list lengths, plain tensors, new masks against old ones: nothing recompiles
        ps2, gs2, ms2, vs2 = _streams(shapes[:4], seed=1, parameters=False)
        fused.adams_update_(ps2, gs2, ms2, vs2, masks[:4], hyper, True, compile=True)
        fused.adams_update_(ps2, gs2, ms2, vs2, None, hyper, True, compile=True)
        new, changed = fused.nm_pruned_(ps2, masks[:4], 2, 4, compile=True)
        _, ref_changed = fused.nm_pruned_(ps2, masks[:4], 2, 4)
        new_all, _ = fused.nm_pruned_(ps, masks, 2, 4, compile=True)
    assert after_first == 3  # refresh without old masks, update without and with the blend
    assert _graphs() == 4  # + refresh with old masks; no recompile for lengths or types
    assert int(changed) == int(ref_changed) > 0


def test_short_runs_keep_adams_eager_and_long_runs_compile(compile_on_cpu, monkeypatch):
    """AdamS compiles its fused path only for runs of at least MIN_COMPILED_STEPS steps."""
    monkeypatch.setattr(adams_mod, "FUSED_DEVICES", {"cuda", "cpu"})
    for total, graphs in ((fused.MIN_COMPILED_STEPS - 1, 0), (fused.MIN_COMPILED_STEPS, 3)):
        torch._dynamo.reset()
        fused._COMPILED.clear()
        before = _graphs()
        params = [torch.nn.Parameter(torch.randn(16, 32) * 0.05) for _ in range(3)]
        opt = adams_mod.AdamS([{"params": params, "sparse": True}], lr=1e-3, lambda_=0.01,
                              total_steps=total, t1=5)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            opt.step()
        assert _graphs() - before == graphs, total


def test_precompile_builds_every_variant(compile_on_cpu):
    seconds = fused.precompile(torch.device("cpu"))
    assert seconds > 0 and _graphs() == 5  # 2 refresh + update blend/plain-sparse/plain-Adam
    ps, gs, ms, vs = _streams([(48, 16), (16, 48)])
    hyper = torch.full((fused.HYPER_SIZE,), 0.5)
    with torch.no_grad():
        masks, _ = fused.nm_pruned_(ps, [None, None], 2, 4, compile=True)
        fused.nm_pruned_(ps, masks, 2, 4, compile=True)
        fused.adams_update_(ps, gs, ms, vs, masks, hyper, True, compile=True)
    assert _graphs() == 5  # the real sizes reuse the graphs precompile built


# ----------------------------------------------------------------------------------------------
# 5. SR-STE / AST refresh: fused masks, no host sync per layer


def _masked_tiny(seed=0):
    from castlab.models import build_preset
    from castlab.sparsity.ste import attach_masked_forward

    model = build_preset("opt-tiny", vocab_size=256, seed=seed)
    return model, attach_masked_forward(model, 2, 4)


def test_ste_refresh_on_a_fused_device_matches_the_cpu_path_without_host_syncs(monkeypatch):
    from castlab.sparsity.scaling import raw_weight

    _, reference = _masked_tiny()
    monkeypatch.setattr(adams_mod, "FUSED_DEVICES", {"cuda", "cpu"})
    _, handle = _masked_tiny()

    def no_sync(*_args, **_kwargs):
        raise AssertionError("the refresh read a device value on the host")

    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        noise = [torch.randn(raw_weight(lin).shape, generator=gen) * 0.02
                 for _, lin in reference.layers]
        with torch.no_grad():
            for (_, a), (_, b), dw in zip(reference.layers, handle.layers, noise, strict=True):
                raw_weight(a).add_(dw)
                raw_weight(b).add_(dw)
        reference.refresh()
        with monkeypatch.context() as sync_guard:  # any host read inside the refresh fails
            for name in ("__int__", "__float__", "__bool__", "item", "tolist"):
                sync_guard.setattr(torch.Tensor, name, no_sync)
            assert handle.refresh() is None
    for a, b in zip(reference.masks(), handle.masks(), strict=True):
        assert torch.equal(a, b)
    assert len(handle.flip_rates) == 3 and handle.flip_rates == pytest.approx(
        reference.flip_rates, abs=0)
    assert all(rate > 0 for rate in handle.flip_rates)


# ----------------------------------------------------------------------------------------------
# 4. SparseGPT in fp32 (TF32 off), scoped


def test_sparsegpt_runs_with_tf32_off_and_restores_the_setting(monkeypatch):
    from castlab.sparsity import oneshot

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as training
    seen = []
    real_nm, real_add = oneshot.sparsegpt_nm, oneshot._Hessian.add

    def spy_nm(*args, **kwargs):
        seen.append(("update", torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))
        return real_nm(*args, **kwargs)

    def spy_add(self, x):
        seen.append(("hessian", torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))
        return real_add(self, x)

    monkeypatch.setattr(oneshot, "sparsegpt_nm", spy_nm)
    monkeypatch.setattr(oneshot._Hessian, "add", spy_add)
    from castlab.models import build_preset

    model = build_preset("opt-tiny", vocab_size=256, seed=0)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    try:
        oneshot.sparsegpt_prune(model, calib, n=2, m=4, batch_size=4)
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert {kind for kind, _, _ in seen} == {"update", "hessian"}
    assert all(not matmul and not cudnn for _, matmul, cudnn in seen)
    assert after == (True, True)  # training's TF32 default is back


# ----------------------------------------------------------------------------------------------
# 6. multi-GPU: torchrun ranks and Ray


def test_torchrun_ranks_take_their_local_card_whatever_cuda_n_says(monkeypatch):
    from castlab import device

    monkeypatch.setattr(device, "cuda_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    for spec in ("auto", "cuda", "cuda:0", "cuda:3"):
        assert device.resolve_device(spec) == torch.device("cuda", 2), spec
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert device.resolve_device("cuda:3") == torch.device("cuda", 3)
    assert device.resolve_device("auto") == torch.device("cuda", 0)


def _fake_ray(granted: list, cluster_gpus: float):
    """A stand-in for the ``ray`` package recording the num_gpus each task asks for."""
    ray = types.ModuleType("ray")
    ray.exceptions = types.SimpleNamespace(RayError=RuntimeError)
    ray.init = lambda **kwargs: None
    ray.cluster_resources = lambda: {"CPU": 8.0, "GPU": cluster_gpus} if cluster_gpus else {
        "CPU": 8.0}

    def remote(num_gpus, **_resources):
        granted.append(num_gpus)
        return lambda fn: types.SimpleNamespace(remote=lambda *args: object())

    ray.remote = remote
    ray.wait = lambda refs, num_returns=1: (refs[:1], refs[1:])
    ray.get = lambda ref: "done"
    ray.cancel = lambda ref, force=False: None
    return ray


@pytest.mark.parametrize(("device", "cluster_gpus", "asked"),
                         [("auto", 2.0, 1.0), ("auto", 0.0, 0.0), ("cpu", 2.0, 0.0),
                          ("cuda:1", 0.0, 1.0)])
def test_ray_asks_a_gpu_for_device_auto_on_a_cluster_with_gpus(monkeypatch, tmp_path, device,
                                                                cluster_gpus, asked):
    from castlab.sweep.backends import RayBackend

    granted: list = []
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(granted, cluster_gpus))
    run = types.SimpleNamespace(config=tiny_config(method="dense", device=device),
                                run_dir=tmp_path / "r", run_id="r", label="r")
    out = RayBackend(progress=False).execute([run], retry_failed=False)
    assert out == {"r": "done"} and granted == [asked]


# ----------------------------------------------------------------------------------------------
# 7. the KD teacher's dtype


def test_teacher_is_cast_to_bf16_once_on_cuda_and_stays_fp32_on_cpu():
    from castlab.device import teacher_copy
    from castlab.models import build_preset

    model = build_preset("opt-tiny", vocab_size=256, seed=0)
    on_cuda = teacher_copy(model, "bf16", torch.device("cuda"))  # the cast does not move it
    assert {p.dtype for p in on_cuda.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in on_cuda.parameters()) and not on_cuda.training
    for dtype, dev in (("bf16", "cpu"), ("fp32", "cuda"), ("fp32", "cpu")):
        kept = teacher_copy(model, dtype, torch.device(dev))
        assert {p.dtype for p in kept.parameters()} == {torch.float32}, (dtype, dev)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the student is untouched
    weight = next(model.parameters())
    assert torch.equal(next(on_cuda.parameters()).float(), weight.detach().bfloat16().float())

"""CAST on a CUDA GPU: steps lower the loss, finalize is exact 2:4 and reloads to equal logits,
AdamS matches the element-wise reference, kd_loss matches the CPU, and a run checkpointed on the
GPU resumes on the CPU. Skipped without a GPU; ``scripts/gpu_check.sh`` runs them on one."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from test_adams import RefAdamS, make_tensors

from castlab.config import TrainConfig
from castlab.device import use_device

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def cuda():
    return use_device("cuda")


def _cast_model(cuda, steps=12):
    """A CAST-trained opt-tiny on CUDA (a fixed batch of random tokens), its method and losses."""
    from castlab.methods import make_method
    from castlab.models import build_preset
    from castlab.train import step_loss

    cfg = TrainConfig(method="cast", model="opt-tiny", init="x", tokens=steps * 8 * 64,
                      device="cuda", lambda_=0.01, t1=3)
    model = build_preset("opt-tiny", vocab_size=512).to(cuda).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    method = make_method(cfg)
    opt = method.build_optimizer(model, 3e-3, total_steps=steps)
    batch = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(steps):
        method.before_forward(step)
        loss = step_loss(model, teacher, batch, cfg)
        loss.backward()
        method.after_backward(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return model, method, batch, [float(x) for x in losses]


def test_cast_steps_on_cuda_lower_the_loss(cuda):
    model, _, _, losses = _cast_model(cuda)
    assert next(model.parameters()).is_cuda
    assert losses[-1] < losses[0] - 0.05, losses


def test_finalize_on_cuda_is_exact_2_4_and_reloads_to_equal_logits(cuda, tmp_path):
    from castlab.models import load_pretrained
    from castlab.sparsity.finalize import save_finalized
    from castlab.sparsity.masks import nm_violations

    model, method, batch, _ = _cast_model(cuda)
    report = method.finalize(model)
    assert nm_violations(model, 2, 4) == []
    save_finalized(model, None, tmp_path / "m", getattr(report, "masks", None), 2, 4)
    back = load_pretrained(tmp_path / "m").to(cuda).eval()
    assert nm_violations(back, 2, 4) == []
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=batch.to(cuda)).logits,
                                   model(input_ids=batch.to(cuda)).logits)


def test_adams_on_cuda_matches_the_elementwise_reference(cuda):
    from castlab.sparsity.adams import AdamS

    T, t1, lr, lam = 7, 3, 0.02, 0.05
    tensors = make_tensors()
    params = [torch.nn.Parameter(t.clone().to(cuda)) for t in tensors]
    opt = AdamS([{"params": params[:2], "sparse": True}, {"params": params[2:]}], lr=lr,
                lambda_=lam, total_steps=T, t1=t1, n=2, m=4)
    ref = RefAdamS(tensors, [True, True, False], lr, (0.9, 0.999), 1e-8, lam, T, t1, 2, 4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(T):
        grads = [torch.randn(t.shape, generator=gen) * 0.01 for t in tensors]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone().to(cuda)
        opt.step()
        ref.step(grads)
        for p, w in zip(params, ref.w, strict=True):
            torch.testing.assert_close(p.detach().cpu().double(),
                                       torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    for got, mask in zip(opt.masks()[:2], ref.mask[:2], strict=True):
        assert got.cpu().tolist() == mask
    assert [s for s, _ in opt.flip_rates] == [3, 6]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_on_cuda_matches_cpu(cuda, temperature):
    from castlab.sparsity.distill import kd_loss

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 96, 5003, generator=gen) * 3
    t = torch.randn(4, 96, 5003, generator=gen) * 3
    labels = torch.randint(0, 5003, (4, 96), generator=gen)
    labels[:, -1] = -100
    out = {}
    for dev in ("cpu", cuda):
        student = s.clone().to(dev).requires_grad_(True)
        loss = kd_loss(student, t.to(dev), labels.to(dev), eta=0.4, temperature=temperature)
        (loss.total * 2.0).backward()  # a non-unit upstream gradient takes the CUDA branch
        out[str(dev)] = (loss.total.item(), loss.ce.item(), loss.kl.item(), student.grad.cpu())
    cpu, gpu = out["cpu"], out[str(cuda)]
    assert gpu[:3] == pytest.approx(cpu[:3], rel=1e-5)
    torch.testing.assert_close(gpu[3], cpu[3], rtol=1e-4, atol=1e-9)


def test_run_checkpointed_on_cuda_resumes_on_cpu(tmp_path):
    from castlab import store
    from castlab.train import run_training

    common = {"method": "dense", "tokens": 6 * 8 * 64, "checkpoint_every": 3, "eval_every": 3,
              "dtype": "fp32", "final_eval_tokens": 8192}
    on_gpu, on_cpu = tiny_config(device="cuda", **common), tiny_config(device="cpu", **common)
    assert on_gpu.run_id() == on_cpu.run_id()  # the device is not part of the run
    assert run_training(on_gpu, tmp_path, progress=False, stop_after=3) is None
    state = torch.load(tmp_path / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 3 and "cuda" in state["rng"]
    row = run_training(on_cpu, tmp_path, progress=False)
    assert row["status"] == "ok", row
    assert row["device"] == "cpu" and row["steps"] == 6
    assert list(store.read_curve(tmp_path)["step"]) == [1, 2, 3, 4, 5, 6]


def test_cuda_run_row_records_the_gpu(tmp_path):
    from castlab.train import run_training

    row = run_training(tiny_config(method="dense", tokens=4 * 8 * 64, device="cuda",
                                   final_eval_tokens=8192), tmp_path, progress=False)
    assert row["status"] == "ok", row
    assert row["device"].startswith("cuda") and row["dtype"] == "bf16"
    assert row["device_name"] == torch.cuda.get_device_name() and row["cuda_version"]


def test_sparse_run_checkpointed_on_cuda_resumes_on_cuda(tmp_path):
    """Issue 23, finding 1: a resumed masked run on the GPU used to crash reading its mask life."""
    from castlab.train import run_training

    cfg = tiny_config(method="sr-ste", tokens=8 * 8 * 64, lr=1e-3, checkpoint_every=4,
                      eval_every=4, t1=2, device="cuda", final_eval_tokens=8192)
    assert run_training(cfg, tmp_path, progress=False, stop_after=4) is None
    row = run_training(cfg, tmp_path, progress=False)
    assert row["status"] == "ok", row
    assert row["steps"] == 8 and 0 <= row["mask_flip_rate"] <= 1 and row["exact_nm"]


def test_compiled_adams_on_cuda_matches_eager_and_compiles_once_per_variant(cuda, monkeypatch):
    """Issue 23, finding 2: the compiled per-tensor kernels equal the eager ones, and lists of
    other lengths and shapes reuse the graphs (torch._dynamo's counter)."""
    from torch._dynamo.utils import counters

    from castlab.sparsity import fused
    from castlab.sparsity.adams import AdamS

    fused.precompile(cuda)
    graphs = counters["stats"]["unique_graphs"]
    gen = torch.Generator().manual_seed(0)
    shapes = [(96, 96), (384, 96), (96, 384)] * 2
    weights = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    runs = {}
    for compiled in (True, False):
        monkeypatch.setattr(fused, "MIN_COMPILED_STEPS", 1 if compiled else 10**9)
        params = [torch.nn.Parameter(w.clone().to(cuda)) for w in weights]
        opt = AdamS([{"params": params[:4], "sparse": True}, {"params": params[4:], "sparse": True}],
                    lr=1e-3, lambda_=0.01, total_steps=20, t1=2)
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(cuda)
            opt.step()
        runs[compiled] = ([p.detach().cpu() for p in params], opt.flip_rates)
    for a, b in zip(runs[True][0], runs[False][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert runs[True][1] == runs[False][1]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled past precompile


def test_srste_refresh_on_cuda_matches_the_cpu(cuda):
    """Issue 23, finding 5: the fused CUDA refresh gives the CPU path's masks and flip rates."""
    from castlab.models import build_preset
    from castlab.sparsity.scaling import raw_weight
    from castlab.sparsity.ste import attach_masked_forward

    handles = []
    for dev in ("cpu", cuda):
        model = build_preset("opt-tiny", vocab_size=256, seed=0).to(dev)
        handles.append(attach_masked_forward(model, 2, 4))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        for (_, a), (_, b) in zip(handles[0].layers, handles[1].layers, strict=True):
            dw = torch.randn(raw_weight(a).shape, generator=gen) * 0.02
            with torch.no_grad():
                raw_weight(a).add_(dw)
                raw_weight(b).add_(dw.to(cuda))
        for h in handles:
            h.refresh()
    for a, b in zip(handles[0].masks(), handles[1].masks(), strict=True):
        assert torch.equal(a, b.cpu())
    assert handles[1].flip_rates == handles[0].flip_rates and len(handles[1].flip_rates) == 3


def test_kd_run_on_cuda_keeps_a_bf16_teacher(tmp_path, monkeypatch):
    """Issue 23, finding 7: the teacher is cast to bf16 once (the student keeps fp32 weights)."""
    from castlab import train as train_mod
    from castlab.device import teacher_copy

    made = []

    def spy(model, dtype, device):
        made.append(teacher_copy(model, dtype, device))
        return made[-1]

    monkeypatch.setattr(train_mod, "teacher_copy", spy)
    row = train_mod.run_training(tiny_config(method="sr-ste", kd=True, lr=1e-3, tokens=4 * 8 * 64,
                                             device="cuda", final_eval_tokens=8192),
                                 tmp_path, progress=False)
    assert row["status"] == "ok", row
    assert {p.dtype for p in made[0].parameters()} == {torch.bfloat16}

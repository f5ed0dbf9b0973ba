"""Export a finalized N:M model: HF ``save_pretrained`` + bit-packed mask, and the CUDA 2:4 check.

On CUDA every in-scope weight is converted with ``torch.sparse.to_sparse_semi_structured`` (core
torch, cuSPARSELt or CUTLASS underneath) and the layer's output is compared with the masked dense
layer's; ``time_semi_structured`` times the 2:4 matmul against the dense one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from castlab.device import cuda_count, prepare_device, resolve_device, synchronize
from castlab.errors import UserError
from castlab.models import in_scope_linears
from castlab.sparsity.masks import nm_mask, nm_violations, save_mask_file

MASK_FILE = "nm_mask.safetensors"
MANIFEST = "castlab_export.json"


def export_model(model: nn.Module, out_dir: str | Path, tokenizer=None, n: int = 2, m: int = 4
                 ) -> Path:
    """Write ``model`` (+ tokenizer) with ``save_pretrained`` and its N:M masks into ``out_dir``.

    Refuses a model that is not exactly N:M: the mask file would not describe its weights.
    """
    problems = nm_violations(model, n, m)
    if problems:
        raise UserError(f"cannot export as {n}:{m}: " + "; ".join(problems[:3]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    masks = {name: nm_mask(lin.weight, n, m, name) for name, lin in in_scope_linears(model)}
    save_mask_file(out / MASK_FILE, masks, n, m)
    kept = sum(int(mk.sum()) for mk in masks.values())
    total = sum(mk.numel() for mk in masks.values())
    (out / MANIFEST).write_text(json.dumps(
        {"n": n, "m": m, "mask_file": MASK_FILE, "layers": list(masks), "kept": kept,
         "in_scope": total}, indent=1))
    return out


@dataclass(frozen=True)
class LayerCheck:
    """One layer's semi-structured conversion: output difference vs the masked dense layer."""

    name: str
    shape: tuple[int, int]
    max_abs_diff: float | None
    rel_diff: float | None  # max |y_sparse - y_dense| / max |y_dense|
    skipped: str | None = None  # why the layer could not be converted (e.g. too small)


def _cuda_device(device: torch.device | None) -> torch.device:
    """The CUDA device the 2:4 kernels run on, as castlab.device decides it.

    ``device`` (where the command placed the model) when it is a CUDA device; otherwise the
    CUDA device castlab.device resolves: the kernels exist only on CUDA, so a model kept on the
    CPU is still checked on the GPU when there is one.
    """
    if device is None or device.type != "cuda":
        if cuda_count() == 0:
            raise UserError("the 2:4 semi-structured export check needs a CUDA GPU; none is visible")
        device = resolve_device("cuda")
    return prepare_device(device)


@torch.no_grad()
def check_semi_structured(model: nn.Module, dtype: torch.dtype = torch.bfloat16, tokens: int = 128,
                          seed: int = 0) -> list[LayerCheck]:
    """Convert each in-scope weight to a 2:4 semi-structured tensor and compare layer outputs.

    The reference is the same (already masked) weight used densely in the same dtype, so the
    difference measures only the sparse kernel's accumulation order. It runs on the model's CUDA
    device, or on castlab.device's CUDA device when the model is on the CPU.
    """
    device = _cuda_device(next(model.parameters()).device)
    from torch.sparse import to_sparse_semi_structured

    gen = torch.Generator(device=device).manual_seed(seed)
    checks = []
    for name, linear in in_scope_linears(model):
        weight = linear.weight.detach().to(device, dtype)
        bias = None if linear.bias is None else linear.bias.detach().to(device, dtype)
        x = torch.randn(tokens, weight.shape[1], device=device, dtype=dtype, generator=gen)
        try:
            sparse = to_sparse_semi_structured(weight)
        except (RuntimeError, ValueError) as err:
            checks.append(LayerCheck(name, tuple(weight.shape), None, None,
                                     skipped=str(err).splitlines()[0]))
            continue
        dense_out = F.linear(x, weight, bias)
        sparse_out = F.linear(x, sparse, bias)
        diff = float((sparse_out.float() - dense_out.float()).abs().max())
        scale = float(dense_out.float().abs().max()) or 1.0
        checks.append(LayerCheck(name, tuple(weight.shape), diff, diff / scale))
    return checks


@dataclass(frozen=True)
class MatmulTiming:
    """Dense vs 2:4 semi-structured ``F.linear`` time for one weight shape."""

    out_features: int
    in_features: int
    tokens: int
    dtype: str
    dense_ms: float
    sparse_ms: float
    speedup: float
    backend: str

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


@torch.no_grad()
def time_semi_structured(size: int = 4096, tokens: int = 4096, dtype: torch.dtype = torch.bfloat16,
                         iters: int = 50, warmup: int = 10, device: torch.device | None = None
                         ) -> MatmulTiming:
    """Time ``F.linear`` with a ``size``x``size`` 2:4 weight against the dense weight (CUDA).

    ``device``: a CUDA device to time on; None (or the CPU) means castlab.device's CUDA device.
    """
    device = _cuda_device(device)
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    torch.manual_seed(0)
    weight = torch.randn(size, size, device=device, dtype=dtype)
    weight = weight * nm_mask(weight, 2, 4).to(dtype)
    x = torch.randn(tokens, size, device=device, dtype=dtype)
    sparse = to_sparse_semi_structured(weight)

    def timed(w) -> float:
        for _ in range(warmup):
            F.linear(x, w)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(iters):
            F.linear(x, w)
        end.record()
        synchronize(device)
        return start.elapsed_time(end) / iters

    dense_ms, sparse_ms = timed(weight), timed(sparse)
    backend = "cutlass" if SparseSemiStructuredTensor._FORCE_CUTLASS else type(sparse).__name__
    return MatmulTiming(size, size, tokens, str(dtype).replace("torch.", ""), dense_ms, sparse_ms,
                        dense_ms / sparse_ms, backend)

"""Weight-only group-wise round-to-nearest (RTN) quantization of the in-scope weights.

Applied after finalize: each in-scope W [out, in] is cut into groups of ``group_size`` consecutive
input columns (the same axis as the 2:4 groups, so a quantization group holds whole 2:4 groups)
and every group gets its own fp16 scale (and, asymmetric, an integer zero point).

- ``symmetric`` (default): q = clamp(round(w / s), -qmax, qmax), s = max|w| / qmax,
  qmax = 2^(bits-1) - 1. Zero maps to q = 0 and back to exactly 0.
- ``asymmetric``: the range [min(w, 0), max(w, 0)] is spread over 0 .. 2^bits - 1 with an integer
  zero point z; w = 0 maps to q = z and back to exactly 0, because 0 is inside the range.

So pruned zeros stay exactly zero without re-applying the mask; ``quantize_model`` still verifies
the N:M pattern afterwards. Each scale is rounded *up* to the next fp16 value, so |w / s| never
exceeds the integer range and the round-trip error is at most s/2 per group.

The model keeps fp32 weights holding the dequantized values ("fake quant"): that is what the
perplexity check needs; the packed storage is accounted for by ``storage_report``. Written by hand
because the libraries that do this (torchao, bitsandbytes, optimum-quanto) each quantize dense
weights into their own kernels and formats, and none guarantees pruned zeros stay zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from castlab.errors import UserError
from castlab.models import count_parameters, in_scope_linears
from castlab.sparsity.masks import check_nm_args, nm_violations

SCHEMES = ("symmetric", "asymmetric")
BITS = (4, 8)


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: bit width, group length along the input dim, and scheme."""

    bits: int = 4
    group_size: int = 128
    scheme: str = "symmetric"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UserError(f"bits: got {self.bits}, allowed {', '.join(map(str, BITS))}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise UserError(f"group_size: got {self.group_size}, allowed a positive integer")
        if self.scheme not in SCHEMES:
            raise UserError(f"scheme: got {self.scheme!r}, allowed {', '.join(SCHEMES)}")


@dataclass
class QuantizedTensor:
    """Integer codes [out, in] (int16 holds any 8-bit code), fp16 scales and zeros [out, in/g]."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group_size: int
    bits: int

    def dequantize(self) -> torch.Tensor:
        """fp32 weights these codes stand for."""
        out, cols = self.q.shape
        q = self.q.float().view(out, cols // self.group_size, self.group_size)
        if self.zero is not None:
            q = q - self.zero.float().unsqueeze(-1)
        return (q * self.scale.float().unsqueeze(-1)).view(out, cols)


def _fp16_round_up(x: torch.Tensor) -> torch.Tensor:
    """Smallest fp16 value >= x (as fp32), so dividing by it never overshoots the code range."""
    half = x.half()
    up = torch.nextafter(half, torch.full_like(half, float("inf")))  # the step must be in fp16
    return torch.where(half.float() < x, up, half).float()


def quantize_tensor(weight: torch.Tensor, config: QuantConfig, name: str = "weight"
                    ) -> QuantizedTensor:
    """Quantize a 2-D weight group-wise along its input dimension."""
    if weight.dim() != 2:
        raise UserError(f"layer '{name}': quantization needs a 2-D weight, got {tuple(weight.shape)}")
    out, cols = weight.shape
    g = config.group_size
    if cols % g:
        raise UserError(f"layer '{name}': input dimension {cols} is not divisible by "
                        f"group_size {g}; choose a group_size that divides it")
    w = weight.detach().float().reshape(out, cols // g, g)
    if config.scheme == "symmetric":
        qmax = 2 ** (config.bits - 1) - 1
        scale = _fp16_round_up(w.abs().amax(dim=-1) / qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
        q = torch.clamp(torch.round(w / safe), -qmax, qmax)
        zero = None
    else:
        levels = 2 ** config.bits - 1
        lo = w.amin(dim=-1).clamp(max=0.0)
        hi = w.amax(dim=-1).clamp(min=0.0)
        scale = _fp16_round_up((hi - lo) / levels)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / safe), 0, levels)
        # Rounding z can push the top of the range half a step past `levels`; the clamp costs at
        # most s/2 there, the same bound as rounding.
        q = torch.clamp(torch.round(w / safe.unsqueeze(-1)) + zero.unsqueeze(-1), 0, levels)
    return QuantizedTensor(q=q.reshape(out, cols).to(torch.int16), scale=scale.half(),
                           zero=None if zero is None else zero.to(torch.int16),
                           group_size=g, bits=config.bits)


@dataclass(frozen=True)
class StorageReport:
    """Bits needed to store the in-scope weights, and the whole model, vs dense fp16."""

    in_scope_params: int
    dense_fp16_bits: int  # in-scope weights stored dense in fp16
    values_bits: int  # stored codes (kept values only when sparse)
    nm_metadata_bits: int  # 2:4 index metadata: 2 bits per kept value (cuSPARSELt layout)
    group_bits: int  # fp16 scale (+ fp16 zero point, asymmetric) per group
    in_scope_ratio: float  # (values + metadata + groups) / dense fp16, in-scope weights
    model_ratio: float  # same over every parameter, out-of-scope ones kept in fp16

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def storage_report(model: nn.Module, config: QuantConfig, sparse: bool = True, n: int = 2,
                   m: int = 4) -> StorageReport:
    """Storage of N:M + int-``bits`` (``sparse``) or dense int-``bits`` in-scope weights vs fp16.

    Per group of ``group_size`` dense columns: one fp16 scale, plus one fp16 zero point for the
    asymmetric scheme. N:M metadata follows cuSPARSELt's compressed format for 2:4: each kept value
    carries a 2-bit position index inside its group of 4 (4 bits per group).
    """
    counts = count_parameters(model)
    params = counts.in_scope
    kept = params * n // m if sparse else params
    index_bits = max(1, (m - 1).bit_length()) if sparse else 0
    groups = params // config.group_size
    per_group = 16 * (2 if config.scheme == "asymmetric" else 1)
    values, meta, group_bits = kept * config.bits, kept * index_bits, groups * per_group
    stored = values + meta + group_bits
    other = counts.total - params
    return StorageReport(
        in_scope_params=params, dense_fp16_bits=16 * params, values_bits=values,
        nm_metadata_bits=meta, group_bits=group_bits, in_scope_ratio=stored / (16 * params),
        model_ratio=(stored + 16 * other) / (16 * counts.total))


@dataclass(frozen=True)
class QuantizeResult:
    """What quantizing a model did: worst error relative to the bound, pattern check, storage."""

    config: QuantConfig
    layers: int
    max_abs_error: float  # over all in-scope weights
    max_error_over_half_scale: float  # <= 1 means every weight is within s/2 of its original
    zeros_preserved: bool  # every weight that was 0 is still exactly 0
    nm_violations: list[str]  # empty when the N:M pattern held before and after
    storage: StorageReport

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        out = asdict(self)
        out["config"] = asdict(self.config)
        return out


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig, n: int = 2, m: int = 4,
                   sparse: bool | None = None) -> QuantizeResult:
    """Replace every in-scope weight by its quantize->dequantize round trip, in place.

    ``sparse`` (default: detect) says whether the model is N:M before quantizing; if it was, it
    must still be afterwards, otherwise this raises (a broken sparse model is not a result).
    """
    check_nm_args(n, m)
    was_sparse = not nm_violations(model, n, m) if sparse is None else sparse
    worst_err, worst_ratio, zeros_ok = 0.0, 0.0, True
    layers = in_scope_linears(model)
    for name, linear in layers:
        weight = linear.weight
        qt = quantize_tensor(weight, config, name)
        deq = qt.dequantize().to(weight.dtype)
        err = (deq.float() - weight.float()).abs()
        half_scale = (qt.scale.float() / 2).repeat_interleave(config.group_size, dim=1)
        ratio = torch.where(half_scale > 0, err / half_scale.clamp(min=1e-30),
                            torch.where(err > 0, torch.inf, 0.0))
        worst_err = max(worst_err, float(err.max()))
        worst_ratio = max(worst_ratio, float(ratio.max()))
        zeros_ok &= bool((deq[weight == 0] == 0).all())
        weight.copy_(deq)
    problems = nm_violations(model, n, m) if was_sparse else []
    if problems:
        raise RuntimeError(f"quantization broke the {n}:{m} pattern: " + "; ".join(problems))
    return QuantizeResult(config=config, layers=len(layers), max_abs_error=worst_err,
                          max_error_over_half_scale=worst_ratio, zeros_preserved=zeros_ok,
                          nm_violations=problems,
                          storage=storage_report(model, config, sparse=was_sparse, n=n, m=m))

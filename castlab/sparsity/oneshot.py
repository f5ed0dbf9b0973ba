"""One-shot N:M pruners (no training): magnitude, Wanda, SparseGPT.

Registry ``ONESHOT_PRUNERS``: name -> fn(model, calib_input_ids [B, T] or None, n, m, **opts)
returning {layer name: bool mask (True = kept)} and leaving the model's in-scope weights pruned.

- Wanda: Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large
  Language Models", arXiv 2306.11695. Score |W_ij| * ||X_j||_2 over calibration activations.
- SparseGPT: Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
  Pruned in One-Shot", arXiv 2301.00774. Layer-wise OBS reconstruction with H = 2 X^T X.

Both run block by block like their reference code: a block's calibration inputs come from the
already-pruned earlier blocks. Here that is done by running the model forward and stopping it
right after the current block (no per-architecture replay of attention masks or rotary caches).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import torch
from torch import nn

from castlab.device import full_fp32_matmuls
from castlab.errors import UserError
from castlab.models import in_scope_linears
from castlab.sparsity.masks import check_nm_args, nm_mask

_BLOCK_PREFIX = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks)\.\d+)\.")


class _StopForward(Exception):
    """Raised by a hook to end a calibration forward once the current block has run."""


def _blocks(model: nn.Module) -> list[tuple[nn.Module, list[tuple[str, nn.Linear]]]]:
    """In-scope linears grouped by transformer block, in model order."""
    grouped: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, linear in in_scope_linears(model):
        match = _BLOCK_PREFIX.match(name)
        grouped.setdefault(match.group(1) if match else name, []).append((name, linear))
    return [(model.get_submodule(prefix), layers) for prefix, layers in grouped.items()]


def _calib_batches(calib_input_ids: torch.Tensor | None, method: str,
                   batch_size: int) -> list[torch.Tensor]:
    if calib_input_ids is None or calib_input_ids.numel() == 0:
        raise UserError(f"{method} needs calibration input ids (got none)")
    if calib_input_ids.dim() != 2:
        raise UserError(f"{method}: calibration ids must be [batch, seq], got {tuple(calib_input_ids.shape)}")
    return list(calib_input_ids.split(batch_size))


@torch.no_grad()
def _blockwise(model: nn.Module, calib_input_ids: torch.Tensor, batch_size: int,
               make_stat: Callable[[nn.Linear], object],
               accumulate: Callable[[object, torch.Tensor], None],
               prune: Callable[[str, nn.Linear, object], torch.Tensor], method: str
               ) -> dict[str, torch.Tensor]:
    """Per block: gather statistics of each linear's inputs from the (partly pruned) model, then
    prune that block's linears; return the masks."""
    batches = _calib_batches(calib_input_ids, method, batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        for block, layers in _blocks(model):
            stats = {name: make_stat(linear) for name, linear in layers}
            handles = [
                linear.register_forward_hook(
                    lambda _mod, args, _out, stat=stats[name]: accumulate(stat, args[0]))
                for name, linear in layers
            ]

            def stop(_mod, _args, _out):
                raise _StopForward

            handles.append(block.register_forward_hook(stop))
            try:
                for batch in batches:
                    with contextlib.suppress(_StopForward):
                        model(input_ids=batch.to(device), use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            for name, linear in layers:
                masks[name] = prune(name, linear, stats[name])
    finally:
        model.train(was_training)
    return masks


def _flat_inputs(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).float()


# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def magnitude_prune(model: nn.Module, calib_input_ids: torch.Tensor | None = None, n: int = 2,
                    m: int = 4, **_opts) -> dict[str, torch.Tensor]:
    """Keep the n largest |W| per group of m inputs (calibration data unused)."""
    check_nm_args(n, m)
    masks = {}
    for name, linear in in_scope_linears(model):
        mask = nm_mask(linear.weight, n, m, name)
        linear.weight.mul_(mask)
        masks[name] = mask
    return masks


def wanda_prune(model: nn.Module, calib_input_ids: torch.Tensor | None, n: int = 2, m: int = 4,
                batch_size: int = 8, **_opts) -> dict[str, torch.Tensor]:
    """Wanda (Sun et al. 2023, arXiv 2306.11695): keep the n largest |W_ij|*||X_j||_2 per group.

    ||X_j||_2 is the norm of input feature j over all calibration tokens reaching the layer.
    """
    check_nm_args(n, m)
    for name, linear in in_scope_linears(model):
        nm_mask(linear.weight[:1], n, m, name)  # shape check before any forward

    def make_stat(linear):
        return torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def accumulate(sq_norms, x):
        sq_norms += _flat_inputs(x).pow(2).sum(dim=0).double()

    def prune(name, linear, sq_norms):
        score = linear.weight.abs() * sq_norms.sqrt().to(linear.weight.dtype).unsqueeze(0)
        mask = nm_mask(score, n, m, name)
        linear.weight.mul_(mask)
        return mask

    return _blockwise(model, calib_input_ids, batch_size, make_stat, accumulate, prune, "wanda")


class _Hessian:
    """Running H = 2/N * sum_x x x^T over the N calibration tokens of one layer (float32)."""

    def __init__(self, columns: int, device: torch.device):
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = _flat_inputs(x)
        tokens = x.shape[0]
        # Running mean as in the reference implementation keeps H's scale independent of N.
        self.H.mul_(self.count / (self.count + tokens))
        self.count += tokens
        x = x * (2.0 / self.count) ** 0.5
        self.H.addmm_(x.t(), x)


@torch.no_grad()
def sparsegpt_nm(weight: torch.Tensor, H: torch.Tensor, n: int, m: int, blocksize: int = 128,
                 damp: float = 0.01, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT for one layer with N:M selection: (reconstructed weight, keep mask).

    Follows the reference ``fasterprune``: dampen H by ``damp`` * mean(diag H), take the upper
    Cholesky factor of H^-1, walk the columns in blocks of ``blocksize``; at the start of every
    group of m columns keep the n entries with the largest w^2 / [H^-1]_jj^2, zero the rest and
    spread each column's error onto the not-yet-processed columns.
    """
    rows, columns = weight.shape
    if blocksize % m != 0:
        raise UserError(f"sparsegpt blocksize {blocksize} must be a multiple of M={m}")
    nm_mask(weight[:1], n, m, name)  # shape check
    W = weight.detach().clone().float()
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.zeros_like(W, dtype=torch.bool)

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d_all = torch.diag(Hinv1)
        keep1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):  # a loop over columns, as in the reference (errors are sequential)
            if i % m == 0:
                score = W1[:, i:i + m] ** 2 / d_all[i:i + m].unsqueeze(0) ** 2
                keep1[:, i:i + m] = nm_mask(score, n, m, name)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w * keep1[:, i]
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W.to(weight.dtype), keep


def sparsegpt_prune(model: nn.Module, calib_input_ids: torch.Tensor | None, n: int = 2,
                    m: int = 4, batch_size: int = 8, blocksize: int = 128, damp: float = 0.01,
                    **_opts) -> dict[str, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774), N:M, block by block.

    ``damp`` is the reference's percdamp (fraction of the mean Hessian diagonal added to it).
    """
    check_nm_args(n, m)
    if damp < 0:
        raise UserError(f"sparsegpt damp must be >= 0, got {damp}")
    for name, linear in in_scope_linears(model):
        nm_mask(linear.weight[:1], n, m, name)

    def make_stat(linear):
        return _Hessian(linear.in_features, linear.weight.device)

    def accumulate(hessian, x):
        hessian.add(x)

    def prune(name, linear, hessian):
        new_weight, mask = sparsegpt_nm(linear.weight, hessian.H, n, m, blocksize, damp, name)
        linear.weight.copy_(new_weight)
        return mask

    # TF32 off for the whole prune, as the reference sets it: the Hessian, its Cholesky factors
    # and the OBS updates in fp32 (training's TF32 default is restored afterwards)
    with full_fp32_matmuls():
        return _blockwise(model, calib_input_ids, batch_size, make_stat, accumulate, prune,
                          "sparsegpt")


ONESHOT_PRUNERS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "magnitude": magnitude_prune,
    "wanda": wanda_prune,
    "sparsegpt": sparsegpt_prune,
}


# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_linear_inputs(model: nn.Module, input_ids: torch.Tensor,
                          names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Inputs [tokens, in_features] reaching each named in-scope Linear during one forward."""
    wanted = {name: linear for name, linear in in_scope_linears(model)
              if names is None or name in names}
    found: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    handles = [linear.register_forward_hook(
        lambda _mod, args, _out, key=name: found[key].append(_flat_inputs(args[0])))
        for name, linear in wanted.items()]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(chunks) for name, chunks in found.items()}


def layer_reconstruction_error(W_orig: torch.Tensor, W_new: torch.Tensor, X: torch.Tensor) -> float:
    """||X W_orig^T - X W_new^T||_F^2 for inputs X [tokens, in] (= ||W_orig X' - W_new X'||^2)."""
    diff = W_orig.detach().double() - W_new.detach().double()
    return float((X.detach().double() @ diff.t()).pow(2).sum())

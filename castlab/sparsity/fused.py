"""AdamS's update and the N:M mask refresh as fused passes for CUDA (torch.compile).

On a GPU the CPU path's design (chunks sized for a cache, ~10 foreach passes, a table gather
for masks) costs launches and memory passes: AdamS took 22-34 ms per step on the 85M block
weights of OPT-125m on an H200, where torch's fused AdamW takes 0.74 ms, and ``nm_mask`` over
them 37 ms. Here the whole update of one tensor (momentum EMA, blend, v, step) is one
elementwise expression that inductor compiles into one kernel, reading each stream once; the
mask refresh compares the m(m-1)/2 pairs of a group in registers (no table) and counts changed
entries on the device, so neither needs a host sync.

Compile cost: each kernel is compiled for ONE tensor, flattened to 1-D (the refresh: viewed as
[groups, m]), with dynamic shapes, and called once per tensor. So a model's 72 weights (OPT-125m)
share one graph per variant, compiled once per process (and cached on disk by inductor across
processes), whatever their number and shapes. The variants are fixed: update with and without
the blend (``pruned`` given or None), refresh with and without old masks; inputs are passed as
detached plain tensors so nn.Parameter vs Tensor does not recompile either. The unrolled
whole-list graph this replaces compiled 72 tensors in tens of seconds and again for every list
length, None-vs-list and tensor type.

The same Python functions run eagerly anywhere (the CPU tests check their arithmetic against
the element-wise reference); ``torch.compile`` wraps them on ``COMPILE_DEVICES`` (CUDA) when the
caller says the run is long enough to repay it, and a build where compiling fails falls back
to the eager functions (still correct, more passes). The hyper-parameters travel as one small
device tensor, filled in place each step, so a new lr or ramp value neither recompiles nor
copies from the host.
"""

from __future__ import annotations

import time

import torch

# hyper tensor layout (float32, on the parameters' device). 1-b1 and 1-b2 are computed in
# double on the host: 1 - float32(0.999) is off by 1.3e-5 relative, which shows in the step.
STEP_SIZE, ONE_MINUS_B1, BETA2, ONE_MINUS_B2, EPS, BC2_SQRT, ALPHA, LAM, SCALE = range(9)
HYPER_SIZE = 9
# Devices where the fused functions are compiled (tests add "cpu" to force inductor's CPU path).
COMPILE_DEVICES = {"cuda"}
# Shortest run (optimizer steps) whose AdamS is compiled. Compiling costs ~2-10 s cold and ~1 s
# from inductor's disk cache per process; eager, the per-tensor update is ~15 launches per
# weight (~5 ms per step on OPT-125m's 72 weights) against 1 compiled: ~200 steps repay a warm
# compile. Shorter runs stay eager, so a sweep of short runs does not pay it per run.
MIN_COMPILED_STEPS = 200


def _adams_one(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               pruned: torch.Tensor | None, hyper: torch.Tensor, sparse: bool) -> None:
    """The AdamS step of one tensor, in place (see ``adams_update_``)."""
    step_size, one_minus_b1, beta2, one_minus_b2, eps = (
        hyper[STEP_SIZE], hyper[ONE_MINUS_B1], hyper[BETA2], hyper[ONE_MINUS_B2], hyper[EPS])
    bc2_sqrt, alpha, lam, scale = hyper[BC2_SQRT], hyper[ALPHA], hyper[LAM], hyper[SCALE]
    m.lerp_(g, one_minus_b1)
    if pruned is not None:
        mt = (m + pruned.to(p.dtype) * (alpha * (lam * torch.sign(p) - m))) * scale
    else:
        mt = m * scale
    x = mt if sparse else g
    v.mul_(beta2).add_(one_minus_b2 * x * x)
    p.sub_(step_size * mt / (v.sqrt() / bc2_sqrt + eps))


def _adams_blend(p, g, m, v, pruned, hyper):
    """A sparse tensor's step with the mask blend (one compiled graph for every tensor)."""
    _adams_one(p, g, m, v, pruned, hyper, True)


def _adams_plain(p, g, m, v, hyper, sparse: bool):
    """A step without the blend: a = 0 (sparse) or plain Adam (``sparse`` False)."""
    _adams_one(p, g, m, v, None, hyper, sparse)


def _nm_groups(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """uint8 [groups, m], 1 where at least n positions of the group beat that one."""
    scores = scores.abs().nan_to_num(nan=-1.0)
    beaten = [torch.zeros_like(scores[:, 0], dtype=torch.int32) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            i_wins = (scores[:, i] >= scores[:, j]).to(torch.int32)
            beaten[j] = beaten[j] + i_wins
            beaten[i] = beaten[i] + (1 - i_wins)
    return (torch.stack(beaten, dim=-1) >= n).to(torch.uint8)


def _nm_new(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The pruned mask of one weight viewed as [groups, m] (a first refresh: nothing to compare)."""
    return _nm_groups(w, n, m)


def _nm_changed(w: torch.Tensor, old: torch.Tensor, n: int, m: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned mask of one [groups, m] weight and how many entries differ from ``old``."""
    new = _nm_groups(w, n, m)
    return new, (new != old).sum()


def _flat(x: torch.Tensor) -> torch.Tensor:
    # detached 1-D view: in-place updates reach the tensor, and the compiled graph sees a plain
    # tensor (no guard on nn.Parameter or requires_grad), one symbolic length for every shape
    return x.detach().view(-1)


def adams_update_(params: list[torch.Tensor], grads: list[torch.Tensor],
                  exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                  pruned: list[torch.Tensor] | None, hyper: torch.Tensor, sparse: bool,
                  compile: bool = False) -> None:
    """One AdamS step of a param group, in place (CAST_SPEC.md, AdamS).

    m <- lerp(m, g, 1-b1); m~ = SCALE * (m + pruned * ALPHA * (LAM * sign(theta) - m)) where
    pruned is given (else SCALE * m); v <- b2*v + (1-b2)*x^2 with x = m~ for sparse groups and g
    for plain Adam; theta -= STEP_SIZE * m~ / (sqrt(v)/BC2_SQRT + EPS), STEP_SIZE = lr/bc1.
    SCALE and LAM carry the optional bias correction of m~ (1/bc1 and lam*bc1; 1 and lam
    without it). ``compile`` runs each tensor's step as the compiled kernel (contiguous tensors
    on a COMPILE_DEVICES device; others take the same function eagerly).
    """
    for i, p in enumerate(params):
        streams = (p, grads[i], exp_avgs[i], exp_avg_sqs[i])
        flat = all(x.is_contiguous() for x in streams) and (
            pruned is None or pruned[i].is_contiguous())
        if not flat:  # cannot be viewed 1-D (never for castlab's weights): eager, as shaped
            _adams_one(*streams, None if pruned is None else pruned[i], hyper, sparse)
            continue
        args = [_flat(x) for x in streams]
        if pruned is not None and sparse:
            _call("adams_blend", _adams_blend, compile, *args, _flat(pruned[i]), hyper)
        elif pruned is not None:  # plain Adam never blends; kept for the eager contract
            _adams_one(*args, _flat(pruned[i]), hyper, sparse)
        else:
            _call("adams_plain", _adams_plain, compile, *args, hyper, sparse)


def nm_pruned_(weights: list[torch.Tensor], olds: list[torch.Tensor | None], n: int, m: int,
               compile: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """~N:M masks (uint8, 1 = pruned) of ``weights`` and the number of entries that differ from
    ``olds`` (a device scalar; entries whose old mask is None count 0).

    The same rule as ``masks.nm_mask``: position j of a group is pruned when at least n
    positions beat it (|w_i| >= |w_j| for i < j, |w_i| > |w_j| for i > j); NaN ranks lowest.
    """
    counts, out = [], []
    for w, old in zip(weights, olds, strict=True):
        groups = w.detach().reshape(-1, m)
        if old is None:
            new = _call("nm_new", _nm_new, compile, groups, n, m)
        else:
            new, count = _call("nm_changed", _nm_changed, compile, groups,
                               old.reshape(-1, m), n, m)
            counts.append(count)
        out.append(new.view(w.shape))
    changed = (torch.stack(counts).sum() if counts
               else torch.zeros((), dtype=torch.int64, device=weights[0].device))
    return out, changed


_COMPILED: dict[str, object] = {}
_COMPILE_FAILED: set[str] = set()


def _compiled_call(name: str, fn, args: tuple):
    """``torch.compile(fn)(*args)``, compiled once per function with dynamic shapes: one graph
    for every size. The first call (where it is traced) turns off duck sizing, which would
    otherwise tie a square weight's two sizes (768 x 768) into one symbol and recompile at the
    first non-square one."""
    compiled = _COMPILED.get(name)
    if compiled is not None:
        return compiled(*args)
    from torch.fx.experimental import _config as fx_config

    compiled = torch.compile(fn, dynamic=True, fullgraph=True)
    with fx_config.patch(use_duck_shape=False):
        out = compiled(*args)
    _COMPILED[name] = compiled
    return out


@torch.no_grad()  # always: grad mode is part of a compiled graph's guards
def _call(name: str, fn, compile: bool, *args):
    """``fn(*args)``, through its compiled form when asked and the device is a COMPILE_DEVICES
    one; a compile failure warns once and leaves ``fn`` eager for the rest of the process."""
    if not compile or name in _COMPILE_FAILED or args[0].device.type not in COMPILE_DEVICES:
        return fn(*args)
    try:
        return _compiled_call(name, fn, args)
    except Exception as err:  # noqa: BLE001 - no compiler/Triton: the eager form is exact too
        _COMPILE_FAILED.add(name)
        import warnings

        warnings.warn(f"castlab: torch.compile of {name} failed ({type(err).__name__}: "
                      f"{str(err)[:200]}); using the eager path", stacklevel=2)
        return fn(*args)


def worth_compiling(total_steps: int) -> bool:
    """Whether a run of ``total_steps`` optimizer steps compiles its fused update (see
    MIN_COMPILED_STEPS)."""
    return total_steps >= MIN_COMPILED_STEPS


def fused_adams_update_(*args, compile: bool = True) -> None:
    """``adams_update_``, compiled on CUDA unless ``compile`` is False (a short run)."""
    adams_update_(*args, compile=compile)


def fused_nm_pruned(*args, compile: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``nm_pruned_``, compiled on CUDA unless ``compile`` is False."""
    return nm_pruned_(*args, compile=compile)


def precompile(device: torch.device, n: int = 2, m: int = 4) -> float:
    """Compile every variant now, on small tensors of ``device`` (dynamic shapes: the graphs
    then serve every size), and return the seconds it took: ``bench gpu`` keeps compilation out
    of its timed repeats this way and reports it as a row."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=gen).to(device)
    streams = [w.clone(), torch.randn(64, 32, generator=gen).to(device) * 1e-3,
               torch.zeros_like(w), torch.zeros_like(w)]
    hyper = torch.full((HYPER_SIZE,), 0.5, device=device)
    news, _ = nm_pruned_([w], [None], n, m, compile=True)
    news, changed = nm_pruned_([w], news, n, m, compile=True)
    adams_update_(*[[x] for x in streams], None, hyper, True, compile=True)
    adams_update_(*[[x] for x in streams], news, hyper, True, compile=True)
    adams_update_(*[[x] for x in streams], None, hyper, False, compile=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0

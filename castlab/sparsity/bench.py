"""Optimizer micro-benchmark: an AdamS step against a torch.optim.AdamW(foreach=True) step, and
AdamS with the decoupled masked decay (``masked_decay_ratio``) against plain AdamS.

Both optimizers update equal copies of the same matrices with the same fixed gradients, in one
process, interleaved, so machine load affects both alike. A timed window is ``t1`` consecutive
steps, so AdamS's mask refresh (once per t1 steps) is amortised exactly as in training. The
ratio is the ratio of the two median step times (the times the note shows); the note adds each
time's interquartile range over the windows and the spread of the per-window paired ratios, so
a loaded machine shows as a wide spread rather than as a ratio the times contradict. AdamS runs
mid-ramp (alpha = 0.5), where the blend is on.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from castlab.device import resolve_device, synchronize
from castlab.sparsity.adams import AdamS

DEFAULT_SHAPES = ((1024, 1024), (1024, 1024), (4096, 1024), (1024, 4096))  # 10.5M params
TARGET_RATIO = 1.25
MASKED_DECAY_RATIO = 48.0  # the default study's recipe (sweeps/opt_family.yaml)


def _params(shapes, device, seed) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


def _window(optimizer, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def run_optimizer_bench(shapes=DEFAULT_SHAPES, windows: int = 7, t1: int = 10,
                        device: str | torch.device | None = None, seed: int = 0) -> list[dict]:
    """Rows {bench, measured, unit, target, ok, note}: AdamS step time over AdamW(foreach), the
    target's reference, and over AdamW(fused), torch's fastest AdamW (no target, for context)."""
    # castlab.device decides: a spec string (None = auto) is resolved there, a torch.device is kept
    device = device if isinstance(device, torch.device) else resolve_device(device or "auto")
    n_params = sum(math.prod(shape) for shape in shapes)
    total = 1000
    adams = AdamS([{"params": _params(shapes, device, seed), "sparse": True}], lr=1e-4,
                  lambda_=1e-3, total_steps=total, t1=t1)
    for group in adams.param_groups:
        group["step"] = total // 2  # alpha = 0.5: the masked blend is active
    decayed = AdamS([{"params": _params(shapes, device, seed), "sparse": True}], lr=1e-4,
                    lambda_=1e-3, total_steps=total, t1=t1, masked_decay_ratio=MASKED_DECAY_RATIO)
    for group in decayed.param_groups:
        group["step"] = total // 2
    optimizers = {
        "AdamS": adams,
        "AdamS(masked decay)": decayed,
        "AdamW(foreach)": torch.optim.AdamW(_params(shapes, device, seed), lr=1e-4, foreach=True),
        "AdamW(fused)": torch.optim.AdamW(_params(shapes, device, seed), lr=1e-4, fused=True),
    }
    for _ in range(2):  # warm-up: state allocation, first masks, allocator caches
        for optimizer in optimizers.values():
            _window(optimizer, t1, device)
    times = {name: [] for name in optimizers}
    for _ in range(windows):
        for name, optimizer in optimizers.items():
            times[name].append(_window(optimizer, t1, device))
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}" + (f", {threads} threads" if threads else "")
    rows = []
    for name, reference, bench, target in (
            ("AdamS", "AdamW(foreach)", "adams_step_vs_adamw", TARGET_RATIO),
            ("AdamS", "AdamW(fused)", "adams_step_vs_adamw_fused", None),
            ("AdamS(masked decay)", "AdamS", "adams_masked_decay_step_vs_adams", None)):
        rows.append(ratio_row(times[name], times[reference], reference, bench, target,
                              f"{n_params / 1e6:.1f}M params, {where}, {windows} windows of "
                              f"{t1} steps (mask refresh amortised)", name))
    return rows


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); the median thrice for fewer than two values."""
    if len(values) < 2:
        m = statistics.median(values)
        return m, m, m
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def ratio_row(adams: list[float], reference: list[float], name: str, bench: str,
              target: float | None, where: str, measured_name: str = "AdamS") -> dict:
    """A bench row from per-window step times (seconds): measured = median AdamS time / median
    reference time, so it agrees with the two times the note prints; the note gives each
    time's IQR and the median and IQR of the per-window ratios (windows ran interleaved)."""
    s_lo, s_med, s_hi = (x * 1e3 for x in quartiles(adams))
    w_lo, w_med, w_hi = (x * 1e3 for x in quartiles(reference))
    ratio = s_med / w_med
    r_lo, r_med, r_hi = quartiles([s / w for s, w in zip(adams, reference, strict=True)])
    return {
        "bench": bench,
        "measured": round(ratio, 3),
        "unit": "x",
        "target": target if target is not None else "",
        "ok": ratio <= target if target is not None else None,
        "note": (f"median step {measured_name} {s_med:.1f} ms (IQR {s_lo:.1f}-{s_hi:.1f}) / {name} "
                 f"{w_med:.1f} ms (IQR {w_lo:.1f}-{w_hi:.1f}); per-window ratio median "
                 f"{r_med:.2f} (IQR {r_lo:.2f}-{r_hi:.2f}); {where}"),
    }

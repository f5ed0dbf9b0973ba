"""Optimizer micro-benchmark: an AdamS step against a torch.optim.AdamW(foreach=True) step.

Both optimizers update equal copies of the same matrices with the same fixed gradients, in one
process, interleaved, so machine load affects both alike. A timed window is ``t1`` consecutive
steps, so AdamS's mask refresh (once per t1 steps) is amortised exactly as in training; the
ratio is the median over windows. AdamS runs mid-ramp (alpha = 0.5), where the blend is on.
"""

from __future__ import annotations

import statistics
import time

import torch

from castlab.sparsity.adams import AdamS

DEFAULT_SHAPES = ((1024, 1024), (1024, 1024), (4096, 1024), (1024, 4096))  # 10.5M params
TARGET_RATIO = 1.25


def _params(shapes, device, seed) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


def _window(optimizer, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def run_optimizer_bench(shapes=DEFAULT_SHAPES, windows: int = 7, t1: int = 10,
                        device: str | torch.device | None = None, seed: int = 0) -> list[dict]:
    """Rows {bench, measured, unit, target, ok, note}: AdamS / AdamW(foreach) step time."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    adamw_params = _params(shapes, device, seed)
    adams_params = _params(shapes, device, seed)
    n_params = sum(p.numel() for p in adamw_params)
    adamw = torch.optim.AdamW(adamw_params, lr=1e-4, foreach=True)
    total = 1000
    adams = AdamS([{"params": adams_params, "sparse": True}], lr=1e-4, lambda_=1e-3,
                  total_steps=total, t1=t1)
    for group in adams.param_groups:
        group["step"] = total // 2  # alpha = 0.5: the masked blend is active
    for _ in range(2):  # warm-up: state allocation, first masks, allocator caches
        _window(adamw, t1, device)
        _window(adams, t1, device)
    w_times, s_times = [], []
    for _ in range(windows):
        w_times.append(_window(adamw, t1, device))
        s_times.append(_window(adams, t1, device))
    ratios = [s / w for s, w in zip(s_times, w_times, strict=True)]
    ratio = statistics.median(ratios)
    w_ms, s_ms = statistics.median(w_times) * 1e3, statistics.median(s_times) * 1e3
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}" + (f", {threads} threads" if threads else "")
    return [{
        "bench": "adams_step_vs_adamw",
        "measured": round(ratio, 3),
        "unit": "x",
        "target": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
        "note": (f"AdamS {s_ms:.1f} ms vs AdamW(foreach) {w_ms:.1f} ms per step, "
                 f"{n_params / 1e6:.1f}M params, {where}, median of {windows} windows of "
                 f"{t1} steps (mask refresh amortised)"),
    }]

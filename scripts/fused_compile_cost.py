"""Compile cost of the fused AdamS update and mask refresh (castlab.sparsity.fused) on CPU
inductor, for OPT-125m's 72 block weights: the sequence a training run and the issue-23 review
go through (first refresh, refresh with old masks, update without and with the blend, a steady
update, then a list one shorter, plain tensors instead of Parameters, a shorter refresh).
Prints each call's seconds and the graphs torch._dynamo compiled for it.

    python scripts/fused_compile_cost.py                    # this checkout's fused.py
    git show 4d905d4:castlab/sparsity/fused.py > /tmp/old_fused.py
    python scripts/fused_compile_cost.py --old /tmp/old_fused.py   # the whole-list graph
(set TORCHINDUCTOR_CACHE_DIR to a fresh folder for a cold cache)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch
from torch._dynamo.utils import counters


def _load(old: str | None):
    """The fused module to measure and the keyword arguments its functions take."""
    if old is None:
        from castlab.sparsity import fused

        fused.COMPILE_DEVICES.add("cpu")
        return fused, {"compile": True}
    spec = importlib.util.spec_from_file_location("old_fused", old)
    fused = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fused)
    # the old module compiled for CUDA tensors only: force its compiled path on the CPU
    fused._run = lambda name, fn, *args: fused._compiled(name, fn)(*args)
    return fused, {}


def main(argv: list[str] | None = None) -> int:
    """Run the sequence and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="path of an old fused.py to measure instead")
    parser.add_argument("--scale", type=int, default=1, help="divide the widths by this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fused, kw = _load(args.old)
    h, f = 768 // args.scale, 3072 // args.scale
    shapes = ([(h, h)] * 4 + [(f, h), (h, f)]) * 12
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    gs = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    ms, vs = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    hyper = torch.tensor([1e-4, 0.1, 0.999, 0.001, 1e-8, 0.03, 0.1, 0.01, 1.0])
    total = 0.0

    def timed(label, fn):
        nonlocal total
        graphs = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        total += seconds
        print(f"{label:48s} {seconds:7.2f} s  +{counters['stats']['unique_graphs'] - graphs} graphs",
              flush=True)
        return out

    n = len(ps)
    plain = [p.detach() for p in ps]
    with torch.no_grad():
        news, _ = timed(f"refresh, olds None ({n})",
                        lambda: fused.fused_nm_pruned(ps, [None] * n, 2, 4, **kw))
        news, _ = timed(f"refresh, olds list ({n})", lambda: fused.fused_nm_pruned(ps, news, 2, 4, **kw))
        timed(f"update, pruned None ({n})",
              lambda: fused.fused_adams_update_(ps, gs, ms, vs, None, hyper, True, **kw))
        timed(f"update, pruned list ({n})",
              lambda: fused.fused_adams_update_(ps, gs, ms, vs, news, hyper, True, **kw))
        timed(f"update again ({n}, steady)",
              lambda: fused.fused_adams_update_(ps, gs, ms, vs, news, hyper, True, **kw))
        timed(f"update, {n - 1} tensors (list length)",
              lambda: fused.fused_adams_update_(ps[:-1], gs[:-1], ms[:-1], vs[:-1], news[:-1],
                                                hyper, True, **kw))
        timed("update, plain tensors (type)",
              lambda: fused.fused_adams_update_(plain, gs, ms, vs, news, hyper, True, **kw))
        timed(f"refresh, {n - 1} tensors, olds list",
              lambda: fused.fused_nm_pruned(ps[:-1], news[:-1], 2, 4, **kw))
    print(f"total {total:.1f} s (compile + run), {counters['stats']['unique_graphs']} graphs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

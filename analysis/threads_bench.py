"""Two CPU runs at once with one thread each, or one run at a time with two threads?

For each ladder preset, the same work (two CAST training loops of ``--steps`` steps of 4 x 64
tokens, KD from a teacher copy, AdamS, weight scaling) is done both ways, back to back and
alternating (A B A B ...), so both see the same machine load:

    A  one run after the other, each with ``--cores`` torch threads
    B  ``--cores`` runs at once, each with one thread

Each worker is a fresh process and times only its training steps (after a few warm-up steps), so
process start-up is out of both; B's time is the span from the first worker's first timed step to
the last worker's last one. Prints a markdown table (per preset: median A, median B, A / B).

    python -m analysis.threads_bench --presets opt-100k opt-330k opt-600k --steps 96 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

WARMUP_STEPS = 8


def worker(preset: str, threads: int, steps: int, seed: int) -> dict:
    """Train ``steps`` CAST steps of ``preset`` with ``threads`` torch threads; the wall-clock
    start and end of the timed steps."""
    import copy

    import torch

    from castlab.config import TrainConfig
    from castlab.methods import make_method
    from castlab.models import build_preset
    from castlab.train import step_loss

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = TrainConfig(method="cast", model=preset, init="x", seq_len=64, batch_size=4,
                      lambda_=1e-3, eval_every=10**6)
    model = build_preset(preset, vocab_size=cfg.vocab_size)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    method = make_method(cfg)
    optimizer = method.build_optimizer(model, 3e-4, WARMUP_STEPS + steps)
    batches = torch.randint(0, cfg.vocab_size, (WARMUP_STEPS + steps, cfg.batch_size, cfg.seq_len))
    started = 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started = time.time()
        method.before_forward(step)
        loss = step_loss(model, teacher, batches[step], cfg)
        loss.backward()
        method.after_backward(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"start": started, "end": time.time()}


def _spawn(preset: str, threads: int, steps: int, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "analysis.threads_bench", "--worker", preset,
                             str(threads), str(steps), str(seed)], stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for proc in procs:
        text, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"worker failed (exit {proc.returncode})")
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def one_after_another(preset: str, cores: int, steps: int) -> float:
    """Seconds of ``cores`` runs in turn, each with ``cores`` threads (sum of timed spans)."""
    spans = [_collect([_spawn(preset, cores, steps, seed)])[0] for seed in range(cores)]
    return sum(s["end"] - s["start"] for s in spans)


def all_at_once(preset: str, cores: int, steps: int) -> float:
    """Seconds of ``cores`` runs at once with one thread each (first timed start to last end)."""
    spans = _collect([_spawn(preset, 1, steps, seed) for seed in range(cores)])
    return max(s["end"] for s in spans) - min(s["start"] for s in spans)


def main(argv: list[str] | None = None) -> int:
    """Measure both configurations per preset and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["opt-100k", "opt-330k", "opt-600k"])
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--worker", nargs=4, metavar=("PRESET", "THREADS", "STEPS", "SEED"))
    args = p.parse_args(argv)
    if args.worker:
        preset, threads, steps, seed = args.worker
        print(json.dumps(worker(preset, int(threads), int(steps), int(seed))))
        return 0
    print(f"| preset | {args.cores} runs in turn, {args.cores} threads each (s) | {args.cores} runs "
          "at once, 1 thread each (s) | in turn / at once |")
    print("|---|---|---|---|")
    for preset in args.presets:
        a, b = [], []
        for _ in range(args.repeats):
            a.append(one_after_another(preset, args.cores, args.steps))
            b.append(all_at_once(preset, args.cores, args.steps))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {preset} | {ma:.2f} ({', '.join(f'{x:.2f}' for x in a)}) | {mb:.2f} "
              f"({', '.join(f'{x:.2f}' for x in b)}) | {ma / mb:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

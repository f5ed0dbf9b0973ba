"""Time estimates of CUDA runs planned on a machine that may have no GPU: a throughput model.

Timing a few steps on the CPU says nothing about a GPU run, so a run whose device is CUDA is
estimated from stored CUDA runs' rates when there are any (castlab.sweep.plan), else from this
model. Its assumptions (stated by ``castlab sweep --dry-run``):

- **Compute**: a training step costs ``6 N + 12 L d T`` FLOPs per token (N: the non-embedding
  parameters plus the tied LM head, d the hidden size, L layers, T the sequence length), times
  the method's cost relative to dense pretraining (METHOD_COST: the KD teacher forward, AdamS,
  weight scaling), at an assumed model FLOP utilisation of the H200's dense bf16 peak (989
  TFLOP/s). The utilisation is calibrated on the one GPU measurement we have: one H200 trained
  OPT-125m (vocab 50272, 12 x 768, seq 1024, batch 16) at ~290k tokens/s in bf16, HF eager,
  i.e. ~25% MFU. Small models' matmuls reach less, which the floor below covers.
- **Launch floor**: a small model's step is bound by Python dispatch and kernel launches, not
  FLOPs. Assumed: 2 ms per step plus 1 ms per decoder layer (an HF eager OPT layer's forward
  and backward under autocast is ~80 kernels at ~12 us of dispatch each), times METHOD_COST.
  A step takes the larger of its FLOP time and this floor.
- **Sharing a card** (``backend: {name: local, runs_per_gpu: K}``): while a step is launch-bound
  the GPU computes for an assumed 35% of it (small kernels run 3-5 us against ~12 us of
  dispatch); a compute-bound step keeps it busy throughout. Runs on one card slow down together
  once their summed busy fractions exceed 1 (time-slicing, no MPS).

These numbers are assumptions until a GPU run stores rates; every constant is here to retune.
A stored rate measured while runs shared a card already includes that sharing, so wall times
built from stored rates with ``runs_per_gpu`` > 1 lean long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from castlab.models import PRESETS
from castlab.sweep.estimate import METHOD_COST

H200_BF16_PEAK_FLOPS = 989e12  # dense bf16, the vendor's datasheet (SXM)
# The calibration point: OPT-125m, measured on one H200 in bf16, HF eager (issue 17).
REFERENCE = {"tokens_per_second": 290e3, "hidden": 768, "layers": 12, "ffn": 3072,
             "vocab": 50272, "seq_len": 1024}
STEP_FLOOR_BASE_SECONDS = 2e-3  # embedding, loss, optimizer, data, schedule per step
STEP_FLOOR_PER_LAYER_SECONDS = 1e-3  # one decoder layer's forward + backward, launch-bound
LAUNCH_BOUND_GPU_BUSY = 0.35  # fraction of a launch-bound step the GPU is computing
START_SECONDS = 10.0  # forked child: CUDA context, data and model load, compiled-kernel cache
ONESHOT_SECONDS = 15.0  # a one-shot pruner: start, calibration forwards, final evals


def flops_per_token(hidden: int, layers: int, ffn: int, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token of an OPT-shaped model: 6 N + 12 L d T (N: blocks + LM head)."""
    n = layers * (4 * hidden * hidden + 2 * hidden * ffn) + vocab * hidden
    return 6.0 * n + 12.0 * layers * hidden * seq_len


def assumed_mfu() -> float:
    """Model FLOP utilisation implied by the OPT-125m measurement (about 0.25)."""
    r = REFERENCE
    flops = flops_per_token(r["hidden"], r["layers"], r["ffn"], r["vocab"], r["seq_len"])
    return r["tokens_per_second"] * flops / H200_BF16_PEAK_FLOPS


@dataclass(frozen=True)
class GpuRunEstimate:
    """One run alone on a card: its wall seconds and the fraction of them the GPU computes."""

    seconds: float
    busy: float  # 0..1


def step_seconds(cfg) -> tuple[float, float]:
    """(wall, GPU-busy) seconds of one training step of a preset TrainConfig on one H200."""
    p = PRESETS[cfg.model]
    cost = METHOD_COST.get(cfg.method, 1.5)
    tokens = cfg.batch_size * cfg.seq_len
    flop_time = (tokens * flops_per_token(p.hidden, p.layers, p.ffn, cfg.vocab_size, cfg.seq_len)
                 * cost / (H200_BF16_PEAK_FLOPS * assumed_mfu()))
    floor = (STEP_FLOOR_BASE_SECONDS + STEP_FLOOR_PER_LAYER_SECONDS * p.layers) * cost
    return max(flop_time, floor), max(flop_time, LAUNCH_BOUND_GPU_BUSY * floor)


def run_estimate(cfg, rate: float | None = None) -> GpuRunEstimate | None:
    """A CUDA run alone on one card, from a stored tokens/s ``rate`` or the model above;
    None for a model the throughput model does not know (an HF model without stored runs)."""
    from castlab.config import ONESHOT_METHODS

    if cfg.method in ONESHOT_METHODS:
        return GpuRunEstimate(ONESHOT_SECONDS, 0.5)
    if cfg.model not in PRESETS:
        return None if rate is None else GpuRunEstimate(START_SECONDS + cfg.tokens / rate, 0.5)
    wall, busy = step_seconds(cfg)
    if rate is not None:  # measured: the rate's step time, the model's busy fraction of it
        measured = cfg.batch_size * cfg.seq_len / rate
        wall, busy = measured, busy / wall * measured
    steps = math.ceil(int(cfg.tokens) / (cfg.batch_size * cfg.seq_len))
    # periodic evals, then validation and test (the whole split, ~1M tokens, when no cap is set)
    evals = (steps // max(cfg.eval_every, 1) + 1) * cfg.eval_tokens \
        + 2 * (cfg.final_eval_tokens or 10**6)
    eval_seconds = evals * wall / (3 * cfg.batch_size * cfg.seq_len)  # a forward ~ 1/3 of a step
    seconds = START_SECONDS + steps * wall + eval_seconds
    return GpuRunEstimate(seconds, steps * busy / seconds)


def makespan(runs: list[GpuRunEstimate], slots: int, per_gpu: int) -> float:
    """Wall seconds of running ``runs`` in order on ``slots`` workers, ``per_gpu`` of them per
    card: each worker takes the next run when free; runs on one card progress at 1/s of their
    solo speed, s = max(1, summed busy fractions of the card's active runs)."""
    queue = list(runs)
    cards = max(1, slots // max(per_gpu, 1))
    active: list[list] = []  # [remaining solo seconds, busy, card]
    now = 0.0
    while queue or active:
        while queue and len(active) < slots:
            used = [sum(1 for a in active if a[2] == c) for c in range(cards)]
            card = used.index(min(used))
            run = queue.pop(0)
            active.append([run.seconds, run.busy, card])
        slow = [max(1.0, sum(a[1] for a in active if a[2] == c)) for c in range(cards)]
        step = min(a[0] * slow[a[2]] for a in active)
        for a in active:
            a[0] -= step / slow[a[2]]
        now += step
        active = [a for a in active if a[0] > 1e-9]
    return now


def assumptions() -> str:
    """One line stating the throughput model, for the dry-run output."""
    return (f"CUDA estimates: H200 model ({H200_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak at "
            f"{100 * assumed_mfu():.0f}% MFU, from OPT-125m at 290k tokens/s; launch floor "
            f"{1e3 * STEP_FLOOR_BASE_SECONDS:.0f} ms + {1e3 * STEP_FLOOR_PER_LAYER_SECONDS:.0f} "
            f"ms/layer per step x method cost; a launch-bound step keeps the GPU "
            f"{100 * LAUNCH_BOUND_GPU_BUSY:.0f}% busy) unless stored CUDA runs give rates")

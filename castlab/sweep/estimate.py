"""Calibrated time estimates of planned runs: a few timed training steps of each ladder preset.

Used when the store holds no finished run of a model to take rates from. The estimate of a run is
start-up + training tokens / rate + evaluation tokens / (3 x rate): an eval forward costs about a
third of a training step (forward + backward + update) per token.
"""

from __future__ import annotations

import functools
import math
import time

# Per-token cost of a method's training step relative to dense pretraining: the KD methods add
# a teacher forward and the distillation loss; CAST also the AdamS masks and weight scaling.
METHOD_COST = {"dense": 1.0, "dense-kd": 1.5, "cast": 1.7, "sr-ste": 1.2, "ast": 1.2}
START_SECONDS = 5.0  # a forked child: data and model load, teacher eval read from its cache
FINAL_EVAL_TOKENS = 60_000  # the default corpus's validation split (whole split scored)
TIMED_STEPS = 3


@functools.cache
def dense_rate(preset: str, vocab_size: int, seq_len: int, batch_size: int, threads: int) -> float:
    """Training tokens/s of dense pretraining of ``preset`` here: one warm-up and a few timed
    AdamW steps on random tokens, under the run's thread setting."""
    import torch

    from castlab.models import build_preset

    model = build_preset(preset, vocab_size=vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, vocab_size, (batch_size, seq_len))
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for step in range(TIMED_STEPS + 1):
            if step == 1:
                started = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return TIMED_STEPS * batch_size * seq_len / seconds


def calibrated_seconds(cfg) -> float:
    """Expected wall seconds of a TrainConfig on a ladder preset, from timed steps."""
    rate = dense_rate(cfg.model, cfg.vocab_size, cfg.seq_len, cfg.batch_size, cfg.threads)
    tokens = int(cfg.tokens)
    steps = math.ceil(tokens / (cfg.batch_size * cfg.seq_len))
    eval_tokens = (steps // cfg.eval_every + 1) * cfg.eval_tokens \
        + (cfg.final_eval_tokens or FINAL_EVAL_TOKENS)
    return (START_SECONDS + tokens * METHOD_COST.get(cfg.method, 1.5) / rate
            + eval_tokens / (3 * rate))

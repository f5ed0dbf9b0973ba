"""The learning-rate schedule of a run and the steps and peak lr its config implies."""

from __future__ import annotations

import math
from pathlib import Path

from castlab.config import TrainConfig, load_yaml
from castlab.errors import UserError

WSD_DECAY_FRAC = 0.2


def lr_at(step: int, total_steps: int, peak: float, schedule: str, warmup_frac: float,
          min_ratio: float) -> float:
    """Learning rate of ``step``: linear warmup, then cosine to ``min_ratio * peak`` (or constant,
    or wsd: constant, then linear to ``min_ratio * peak`` over the last WSD_DECAY_FRAC)."""
    warmup = int(warmup_frac * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "wsd":
        decay = max(1, int(round(WSD_DECAY_FRAC * total_steps)))
        start = max(warmup, total_steps - decay)
        if step < start:
            return peak
        progress = (step - start + 1) / max(1, total_steps - start)
        return peak * (1 - (1 - min_ratio) * min(progress, 1.0))
    progress = (step - warmup) / max(1, total_steps - warmup - 1)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def total_steps_for(cfg: TrainConfig) -> int:
    """Optimizer steps that spend the token budget (the last step may overshoot by < 1 batch)."""
    return max(1, math.ceil(int(cfg.tokens) / (cfg.batch_size * cfg.seq_len)))


def resolve_lr(cfg: TrainConfig) -> float:
    """Peak lr: explicit, else dense_lr for pretraining, else a fraction of the teacher's peak.

    Re-warming a continued run to a pretraining-sized peak made even dense-KD worse than its
    teacher for its first ~128k tokens here, so continued runs start from the teacher's schedule.
    """
    if cfg.lr is not None:
        return cfg.lr
    if cfg.method == "dense" and cfg.init is None:
        return cfg.dense_lr
    teacher_cfg = Path(cfg.init or "").parent / "config.yaml"
    if cfg.init and teacher_cfg.is_file():
        teacher = load_yaml(TrainConfig, teacher_cfg)
        return resolve_lr(teacher) * cfg.lr_teacher_fraction
    raise UserError(f"lr: the starting model '{cfg.init}' has no castlab training config; "
                    "give lr explicitly (e.g. --lr 2e-5 for an HF checkpoint)")

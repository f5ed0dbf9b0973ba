"""Shared fixtures: a small dense teacher trained once per test session on the default corpus."""

from __future__ import annotations

import pytest

from castlab.config import TrainConfig

TINY = {"model": "opt-tiny", "seq_len": 64, "batch_size": 8, "eval_every": 25,
        "eval_tokens": 8192, "final_eval_tokens": 32768,
        "checkpoint_every": 0, "threads": 1}


def tiny_config(**overrides) -> TrainConfig:
    """A TrainConfig for fast tests on the opt-tiny preset (validated like a user's)."""
    from castlab.config import from_dict

    return from_dict(TrainConfig, {**TINY, **overrides}, where="test")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """Run directory of a dense opt-tiny pretrained on 400 steps of the default corpus."""
    from castlab.train import run_training

    run_dir = tmp_path_factory.mktemp("teacher")
    row = run_training(tiny_config(method="dense", tokens=400 * 8 * 64, dense_lr=3e-3),
                       run_dir, progress=False)
    assert row["status"] == "ok", row
    return run_dir

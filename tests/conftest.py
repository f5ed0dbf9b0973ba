"""Shared fixtures: a small dense teacher trained once per test session on the default corpus.

The suite never writes into the user's castlab cache: ``CASTLAB_CACHE`` points at a cache made
for this session (or at ``$CASTLAB_TEST_CACHE`` when set, e.g. to keep one between sessions).
A fresh session cache is seeded with copies of the user's prepared data (corpus, tokenizers,
token streams, benchmark data) when they exist, so the corpus is prepared at most once per
session and nothing is fetched again; the user's cache is only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from castlab.config import TrainConfig

# Cache folders worth copying from the user's cache: prepared data, slow to rebuild or fetch.
SEEDED_CACHES = ("corpus", "tokenizers", "tokens", "benchdata")
_session_cache: list[Path] = []


def pytest_configure(config) -> None:
    """Point CASTLAB_CACHE at this session's cache before any test module is imported."""
    user = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    chosen = os.environ.get("CASTLAB_TEST_CACHE")
    if chosen:
        root = Path(chosen).expanduser()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="castlab-test-cache-"))
        _session_cache.append(root)
    for name in SEEDED_CACHES:
        if (user / name).is_dir() and not (root / name).exists() and user.resolve() != root.resolve():
            shutil.copytree(user / name, root / name, symlinks=True)
    os.environ["CASTLAB_CACHE"] = str(root)


def pytest_unconfigure(config) -> None:
    """Remove the session cache (not a CASTLAB_TEST_CACHE the user named)."""
    for root in _session_cache:
        shutil.rmtree(root, ignore_errors=True)


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

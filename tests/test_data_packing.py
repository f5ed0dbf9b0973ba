"""PackedStream: windows, seeded order per epoch, epoch wrap, resumable position."""

from __future__ import annotations

import pytest
import torch

from castlab.data.packing import PackedStream
from castlab.errors import UserError

SEQ = 4
TOKENS = torch.arange(10 * SEQ + 3)  # 10 full windows; the 3 trailing tokens are never used


def batches(stream: PackedStream, count: int) -> list[torch.Tensor]:
    return [stream.next_batch() for _ in range(count)]


def test_batches_are_whole_windows_and_each_epoch_visits_every_window_once():
    stream = PackedStream(TOKENS, SEQ, batch_size=2, seed=0)
    rows = torch.cat(batches(stream, 10))  # exactly two epochs
    assert rows.dtype == torch.long and rows.shape == (20, SEQ)
    starts = rows[:, 0]
    assert torch.equal(rows, starts[:, None] + torch.arange(SEQ))  # contiguous windows
    assert bool((starts % SEQ == 0).all()) and int(starts.max()) < 10 * SEQ
    for epoch in range(2):
        assert sorted(starts[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(0, 40, 4))
    assert starts[:10].tolist() != starts[10:].tolist()  # a new order each epoch
    assert starts[:10].tolist() != list(range(0, 40, 4))  # shuffled, not in stream order


def test_same_seed_same_order_other_seed_other_order():
    first = torch.cat(batches(PackedStream(TOKENS, SEQ, 3, seed=7), 9))
    second = torch.cat(batches(PackedStream(TOKENS, SEQ, 3, seed=7), 9))
    other = torch.cat(batches(PackedStream(TOKENS, SEQ, 3, seed=8), 9))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_counters_and_batches_spanning_an_epoch_boundary():
    stream = PackedStream(TOKENS, SEQ, batch_size=3, seed=1)
    batches(stream, 4)  # 12 sequences: epoch 0 (10) + 2 of epoch 1
    assert stream.sequences_consumed == 12
    assert stream.tokens_consumed == 48
    assert stream.epochs_consumed == pytest.approx(1.2)
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["index"] == 2


def test_resume_from_state_dict_continues_identically():
    reference = PackedStream(TOKENS, SEQ, batch_size=3, seed=5)
    batches(reference, 5)
    state = reference.state_dict()
    expected = batches(reference, 6)
    resumed = PackedStream(TOKENS.clone(), SEQ, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert resumed.sequences_consumed == 15
    for got, want in zip(batches(resumed, 6), expected, strict=True):
        assert torch.equal(got, want)


def test_mismatched_state_and_bad_settings_are_user_errors():
    state = PackedStream(TOKENS, SEQ, 2, seed=0).state_dict()
    with pytest.raises(UserError, match="recorded seq_len 4 but this stream has 5"):
        PackedStream(TOKENS, 5, 2, seed=0).load_state_dict(state)
    with pytest.raises(UserError, match="recorded seed 0 but this stream has 1"):
        PackedStream(TOKENS, SEQ, 2, seed=1).load_state_dict(state)
    with pytest.raises(UserError, match="only 43 tokens"):
        PackedStream(TOKENS, 100, 2)
    with pytest.raises(UserError, match="seq_len and batch_size"):
        PackedStream(TOKENS, SEQ, 0)

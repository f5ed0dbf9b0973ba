"""Packing a token stream into fixed-length training sequences, in a resumable seeded order."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from castlab.errors import UserError


class PackedStream:
    """Non-overlapping ``seq_len`` windows of one token stream, visited in a seeded order.

    Epoch e visits every window once in the permutation drawn from (seed, e); a batch that
    runs past the end of an epoch continues with the next one, so every batch is full and
    ``tokens_consumed`` is exact. The position is one integer (sequences consumed), which
    ``state_dict`` records as (epoch, index) for checkpoints. The trailing tokens that do not
    fill a window are never used (fewer than ``seq_len``).
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0):
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size: got {seq_len} and {batch_size}, "
                            "allowed positive integers")
        tokens = torch.as_tensor(tokens).reshape(-1)
        num_windows = tokens.numel() // seq_len
        if num_windows < 1:
            raise UserError(f"seq_len: got {seq_len}, but the token stream has only "
                            f"{tokens.numel()} tokens; allowed at most {tokens.numel()}")
        self.windows = tokens[: num_windows * seq_len].to(torch.long).view(num_windows, seq_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._position = 0  # sequences handed out so far, over all epochs
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    @property
    def num_windows(self) -> int:
        """Sequences in one epoch."""
        return self.windows.shape[0]

    def order(self, epoch: int) -> np.ndarray:
        """The window order of one epoch: a permutation seeded by (seed, epoch)."""
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order, self._order_epoch = rng.permutation(self.num_windows), epoch
        return self._order

    def next_batch(self) -> torch.Tensor:
        """The next ``[batch_size, seq_len]`` LongTensor; advances the position."""
        picks = []
        needed = self.batch_size
        while needed:
            epoch, index = divmod(self._position, self.num_windows)
            take = min(needed, self.num_windows - index)
            picks.append(self.order(epoch)[index:index + take])
            self._position += take
            needed -= take
        return self.windows[torch.from_numpy(np.concatenate(picks))]

    @property
    def sequences_consumed(self) -> int:
        """Sequences handed out so far."""
        return self._position

    @property
    def tokens_consumed(self) -> int:
        """Tokens handed out so far."""
        return self._position * self.seq_len

    @property
    def epochs_consumed(self) -> float:
        """Passes over the stream so far (fractional)."""
        return self._position / self.num_windows

    def state_dict(self) -> dict[str, Any]:
        """The position and the settings it is valid for (plain ints: safe in any checkpoint)."""
        epoch, index = divmod(self._position, self.num_windows)
        return {"epoch": epoch, "index": index, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "num_windows": self.num_windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a recorded position; the stream and settings must match the recording."""
        for key in ("seed", "seq_len", "num_windows"):
            if state[key] != getattr(self, key):
                raise UserError(f"data position: recorded {key} {state[key]} but this stream has "
                                f"{getattr(self, key)}; resume with the same data settings")
        if not 0 <= state["index"] < self.num_windows or state["epoch"] < 0:
            raise UserError(f"data position: epoch {state['epoch']} index {state['index']} is "
                            f"outside a stream of {self.num_windows} windows")
        self._position = state["epoch"] * self.num_windows + state["index"]

"""argparse value types that refuse out-of-range numbers with a message naming what is allowed.

argparse turns the ArgumentTypeError into ``castlab CMD: error: argument --flag: ...`` (one line,
exit 2; see ``castlab.cli``), before any model or corpus is loaded.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"got {text[:60]!r}, allowed {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text[:60]!r}, allowed a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts of steps or documents)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}, allowed a positive integer")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}, allowed an integer >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {text[:60]!r}, allowed a finite number > 0")
    return value


def finite_float(text: str) -> float:
    """Any finite number (range checks happen in the config that receives it)."""
    return _number(text, float)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"  # checked by castlab.device.check_device_spec


def add_device_argument(parser, default: str = "auto") -> None:
    """``--device`` for a command that runs a model (validated when the command resolves it)."""
    parser.add_argument("--device", default=default,
                        help=f"where the model runs: {DEVICE_CHOICES} (default: {default}; "
                             "auto = CUDA when visible)")

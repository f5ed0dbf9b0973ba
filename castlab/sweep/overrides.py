"""``--set KEY=VALUE`` for sweep files: a field replaced before the file is validated.

``castlab sweep FILE --set train.seq_len=128`` puts the YAML value ``128`` at ``train.seq_len``
of the parsed file, so it meets the very checks (and one-line errors naming the field) the
same value written in the file would; dotted keys walk into mappings (``eval.tokens``,
``teacher.tokens``), a key that names no field is refused as in the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from castlab.errors import UserError
from castlab.yamlio import MAX_YAML_VALUES, expanded_size

EXAMPLE = "e.g. --set train.seq_len=128"


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.seq_len=128' -> (['train', 'seq_len'], 128); a one-line UserError otherwise."""
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path):
        raise UserError(f"--set: got {item[:80]!r}, allowed KEY=VALUE with a dotted key ({EXAMPLE})")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {key.strip()}: cannot read {raw[:60]!r} as a YAML value") from None
    if expanded_size(value) > MAX_YAML_VALUES:
        raise UserError(f"--set {key.strip()}: the value expands to more than "
                        f"{MAX_YAML_VALUES:,} values")
    return [part.strip() for part in path], value


def apply_overrides(data: Any, items: Sequence[str], where: str) -> Any:
    """``data`` (a parsed sweep file) with each ``--set`` value at its dotted path (a copy);
    a path through something that is not a mapping is a one-line UserError naming it."""
    pairs = [parse_override(item) for item in items]  # every item checked before any is applied
    if not pairs or not isinstance(data, dict):  # a file that is no mapping: its own error
        return data
    data = copy.deepcopy(data)
    for path, value in pairs:
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                inner = ".".join(path[:depth + 1])
                raise UserError(f"--set {'.'.join(path)}: {inner} in {where} is a "
                                f"{type(child).__name__}, not a mapping of fields")
            node = child
        node[path[-1]] = value
    return data

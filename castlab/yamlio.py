"""Reading user YAML safely: one-line errors for bad files, duplicated keys and alias bombs.

Only ``yaml.SafeLoader`` semantics (no tags that build Python objects); written here because
PyYAML keeps the last of duplicated keys silently and expands aliases without a limit.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from castlab.errors import UserError

# Largest number of values a YAML file may expand to through aliases: real sweep files have a few
# hundred, while an alias bomb (`&a [..] &b [*a, *a, ...]`) reaches 10^9 from a few lines.
MAX_YAML_VALUES = 100_000

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = 6
_short_repr.maxlevel = 2


def show(value: Any) -> str:
    """repr of a user value, shortened: error messages quote what was given, never all of it."""
    return _short_repr.repr(value)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key_node.value[:60]}' is given twice", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def expanded_size(data: Any, limit: int = MAX_YAML_VALUES) -> int:
    """Number of values ``data`` holds once aliases are expanded, counting up to just past ``limit``.

    YAML aliases make shared objects, so the count is memoised per object: linear in the file,
    whatever the expansion.
    """
    sizes: dict[int, int] = {}

    def size(x: Any) -> int:
        if not isinstance(x, (list, dict)):
            return 1
        if id(x) in sizes:
            return sizes[id(x)]
        sizes[id(x)] = limit + 1  # a self-referencing alias (&a [*a]) counts as too big
        items = list(x.values()) + list(x) if isinstance(x, dict) else x
        total = 1
        for item in items:
            total = min(total + size(item), limit + 1)
            if total > limit:
                break
        sizes[id(x)] = total
        return total

    return size(data)


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse a YAML file; a missing file, bad YAML, a duplicated key, an alias bomb or non-text
    content is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        text = path.read_text()
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (invalid UTF-8)") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if expanded_size(data) > MAX_YAML_VALUES:
        aliases = re.search(r"(^|[\s\[{,:-])\*[^\s,\]}]", text) is not None
        raise UserError(f"{path}: " + ("its aliases (*name) expand to" if aliases else "holds")
                        + f" more than {MAX_YAML_VALUES:,} values, allowed fewer (a sweep file "
                        "needs a few hundred)")
    return data

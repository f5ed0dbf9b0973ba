"""Run one planned run in a child process: the unit every backend executes.

The child is ``python -m castlab.cli train --config RUN_DIR/config.yaml --out RUN_DIR``, so a
crash, an OOM kill or a segfault fails that run only. The command is not exec'd afresh: it runs
in a child forked from a multiprocessing fork server that has torch, transformers and the
trainer imported already, which saves the ~5 s of imports per run that dominated short runs'
overhead (the child is still a separate process, with its own exit code). The run directory is
claimed with ``store.mark_running`` first (two sweeps never train the same run at once), the
child dies with the sweep (a pidfd watch), and an interrupted sweep terminates the child and
writes no row: the next sweep resumes the run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import runpy
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Literal

from castlab import store
from castlab.config import TrainConfig, from_dict, save_yaml

Outcome = Literal["done", "failed", "running", "skipped-done", "skipped-failed", "blocked"]
TERMINATE_GRACE_SECONDS = 10.0
# Imported once in the fork server, so every forked run starts with them loaded.
# castlab.data and the command modules import lazily, so the tokenizer is named here, and this
# module itself (its warning filter below must be set in the server, see there).
WARM_MODULES = ["castlab.sweep.runner", "castlab.cli", "castlab.commands_train", "castlab.train",
                "castlab.data.tokenizer", "castlab.data.packing", "castlab.sweep.commands",
                "transformers.models.opt.modeling_opt"]
_fork_server: multiprocessing.context.BaseContext | None = None
# castlab modules are pre-imported on purpose (the point of the fork server), so runpy's warning
# about re-running one as __main__ (also raised when multiprocessing re-imports `python -m
# castlab.cli`'s main module in a forked child) is noise. Set at import, so the server has it too.
warnings.filterwarnings("ignore", message=r"'castlab\.[\w.]+' found in sys\.modules",
                        category=RuntimeWarning)


def train_command(config_path: Path, run_dir: Path) -> list[str]:
    """The child command line that trains one run: ``python -m MODULE ...`` or ``python SCRIPT ...``."""
    return [sys.executable, "-m", "castlab.cli", "train", "--config", str(config_path),
            "--out", str(run_dir)]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment plus ``extra`` (a GPU pin), with castlab's source root importable."""
    env = {**os.environ, **(extra or {})}
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    return env


def _follow(log_path: Path, offset: int, sinks: list, tail: deque, done: threading.Event) -> None:
    """Copy what the child appends to train.log to the sinks and keep its last lines."""
    pending = b""
    with open(log_path, "rb") as log:
        log.seek(offset)
        while True:
            finished = done.is_set()  # read once more after the child ended
            chunk = log.read()
            if chunk:
                for sink in sinks:
                    with contextlib.suppress(OSError, ValueError):
                        sink.write(chunk)
                        sink.flush()
                pending += chunk
                *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
                tail.extend(line for line in lines if line.strip())
            elif finished:
                break
            else:
                time.sleep(0.2)
    if pending.strip():
        tail.append(pending)


def _exit_with(pid: int) -> None:
    """In the child: SIGKILL this process as soon as process ``pid`` (the sweep) is gone.

    PR_SET_PDEATHSIG cannot do it here: the child's parent is the fork server, which stays
    alive while any child it forked lives.
    """
    def watch():
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd: poll instead
            while store.pid_alive(pid):
                time.sleep(0.5)
        else:
            select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    if not store.pid_alive(pid):
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-sweep").start()


def _run_python_command(argv: list[str], env: dict[str, str], log_path: str, sweep_pid: int
                        ) -> None:
    """In a forked child: become ``python ARGV...`` (``-m module`` or a script path)."""
    os.setsid()  # Ctrl-C reaches the sweep only; it stops the child
    _exit_with(sweep_pid)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except (OSError, RuntimeError) as err:
        if not _looks_disk_full(err, Path(log_path).parent):
            raise
        # one line, not torch's C++ traceback: the sweep's reason for this run
        print(f"castlab train: error: {DISK_FULL} ({str(err).splitlines()[0][:160]})",
              file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


DISK_FULL = "disk full"
LOW_SPACE_BYTES = 64 * 2**20


def _looks_disk_full(err: BaseException | str, folder: Path) -> bool:
    """ENOSPC/EDQUOT, or torch.save's 'file write failed' while the run's disk is nearly full
    (torch reports ENOSPC as ``enforce fail at inline_container.cc``, without the errno)."""
    from castlab.paths import disk_full

    if isinstance(err, BaseException) and disk_full(err):
        return True
    text = str(err)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    if "file write failed" in text or "inline_container.cc" in text:
        try:
            return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
        except OSError:
            return False
    return False


class _ForkedChild:
    """The part of ``subprocess.Popen`` the runner uses, for a child forked by the fork server."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.process = _warm_context().Process(
            target=_run_python_command, args=(argv, env, str(log_path), os.getpid()), daemon=False)
        self.process.start()

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("forked run", timeout)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def _warm_context() -> multiprocessing.context.BaseContext:
    """The fork-server context, its server pre-importing WARM_MODULES (started on first use)."""
    global _fork_server
    if _fork_server is None:
        _fork_server = multiprocessing.get_context("forkserver")
        _fork_server.set_forkserver_preload(WARM_MODULES)
    return _fork_server


def _start_child(command: list[str], log_path: Path, env: dict[str, str] | None = None
                 ) -> _ForkedChild:
    """Fork a warm interpreter that runs ``command`` (this Python, then ``-m module`` or a script)."""
    if command[0] != sys.executable or len(command) < 2 or command[1].startswith("-c"):
        raise ValueError(f"a sweep child must be '{sys.executable} -m MODULE ...' or "
                         f"'{sys.executable} SCRIPT ...', got {command[:2]}")
    return _ForkedChild(command[1:], _child_env(env), log_path)


def _failure_reason(returncode: int, tail: deque, run_dir: Path | None = None) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"child process killed by {name}{hint}"
    text = "\n".join(line.decode(errors="replace") for line in tail)
    if run_dir is not None and (f"error: {DISK_FULL}" in text or _looks_disk_full(text, run_dir)):
        line = next((ln for ln in reversed(text.splitlines()) if DISK_FULL in ln
                     or "No space left" in ln or "file write failed" in ln), "")
        return f"{DISK_FULL}: the run could not write its files ({line.strip()[-200:]})"
    last = tail[-1].decode(errors="replace").strip() if tail else "no output"
    return f"child process exited with code {returncode}: {last}"


def remove_temp_files(run_dir: Path, pid: int | None) -> list[Path]:
    """Remove the ``.NAME.<pid>.tmp`` files a killed or failed child (``pid``) left in its run
    folder (checkpoint and eval-cache writes are temp file + rename; a crash between the two
    leaves the temp file, up to a checkpoint's size)."""
    if pid is None or not run_dir.is_dir():
        return []
    removed = []
    for path in run_dir.rglob(f"*.{pid}.tmp"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


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
                retry_failed: bool = False, echo: bool = True,
                env: dict[str, str] | None = None) -> Outcome:
    """Run one config into ``run_dir`` unless it is done/failed/running; return the outcome.

    ``echo`` passes the child's output (its progress bar) through to this process's stderr;
    ``env`` is added to the child's environment (the local backend's CUDA_VISIBLE_DEVICES).
    KeyboardInterrupt terminates the child, releases the lock and propagates. A run folder this
    process cannot write (permissions, a file in its place, a full disk) fails this run only,
    with one line on stderr: the sweep goes on with the others.
    """
    cfg = config if isinstance(config, TrainConfig) else from_dict(TrainConfig, config)
    run_dir = Path(run_dir)
    try:
        return _execute(cfg, run_dir, retry_failed, echo, env)
    except OSError as err:
        why = DISK_FULL if _looks_disk_full(err, run_dir.parent) else (err.strerror or str(err))
        print(f"castlab sweep: run {run_dir.name} failed: cannot write "
              f"{err.filename or run_dir} ({why}); the other runs go on", file=sys.stderr)
        with contextlib.suppress(OSError, Exception):
            _write_failed_row(cfg, run_dir, f"cannot write the run folder: {why}", 0.0)
        return "failed"


def _execute(cfg: TrainConfig, run_dir: Path, retry_failed: bool, echo: bool,
             env: dict[str, str] | None) -> Outcome:
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
        log_path = run_dir / "train.log"
        log_path.touch()
        tail: deque = deque(maxlen=20)
        terminal = getattr(sys.stderr, "buffer", None)
        sinks = [terminal] if echo and terminal is not None else []
        finished = threading.Event()
        follow = threading.Thread(target=_follow, daemon=True,
                                  args=(log_path, log_path.stat().st_size, sinks, tail, finished))
        proc = _start_child(train_command(config_path, run_dir), log_path, env)
        follow.start()
        try:
            while proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(store.HEARTBEAT_SECONDS)
                store.heartbeat(run_dir)
        except BaseException:
            _terminate(proc)
            remove_temp_files(run_dir, proc.pid)  # a checkpoint cut off mid-write
            raise
        finally:
            finished.set()
            follow.join(timeout=5)
        remove_temp_files(run_dir, proc.pid)
        if not (run_dir / store.RESULT_FILE).exists():
            reason = _failure_reason(proc.returncode, tail, run_dir)
            if proc.returncode == 0:
                reason = "trainer exited without writing a result row"
            _write_failed_row(cfg, run_dir, reason, time.time() - started)
        return "failed" if store.run_state(run_dir) == "failed" else "done"
    finally:
        store.clear_running(run_dir)

"""The results store: one directory per run, a one-row ``result.parquet`` written last.

Layout of a run directory::

    config.yaml       resolved TrainConfig (written before training starts)
    curve.parquet     step, tokens, train_loss, eval_loss, lr, ... (rewritten atomically)
    checkpoint/       while training (the trainer resumes from it)
    model/            the final HF model
    running.json      live lock: pid, host, process start time (removed when the run ends)
    result.parquet    ONE row (see SCHEMA), written last via temp file + fsync + os.replace;
                      its presence means "done" (or "failed" when status == 'failed')

Rows are normalised to ``SCHEMA`` before writing so every file of a store has the same column
types; ``load`` reads every row under a directory and names each unreadable file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from castlab.errors import UserError

if TYPE_CHECKING:  # pandas is imported by the readers only: writers (trainers) start faster
    import pandas as pd

RESULT_FILE = "result.parquet"
CURVE_FILE = "curve.parquet"
CONFIG_FILE = "config.yaml"
SWEEP_LOG_FILE = "sweep_log.jsonl"  # one line per `castlab sweep` invocation, in RESULTS
LOCK_FILE = "running.json"
# A lock written on another host cannot be checked by pid; runners refresh its mtime, so one not
# refreshed for this long is stale.
STALE_AFTER_SECONDS = 600.0
HEARTBEAT_SECONDS = 30.0

RunState = Literal["done", "failed", "running", "pending"]

# The result-row schema (ARCHITECTURE.md, "Result row schema"): column -> arrow type.
SCHEMA: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "sweep": pa.string(),
    "method": pa.string(),
    "model": pa.string(),
    "params_total": pa.int64(),
    "params_non_embedding": pa.int64(),
    "params_in_scope": pa.int64(),
    "params_nonzero": pa.int64(),
    "sparsity": pa.float64(),
    "nm_n": pa.int64(),
    "nm_m": pa.int64(),
    "tokens": pa.int64(),
    "tokens_per_param": pa.float64(),
    "seq_len": pa.int64(),
    "batch_size": pa.int64(),
    "lr": pa.float64(),
    "schedule": pa.string(),
    "lambda_": pa.float64(),
    "eta": pa.float64(),
    "kd_temperature": pa.float64(),
    "t1": pa.int64(),
    "scale_blocks": pa.int64(),
    "seed": pa.int64(),
    "dtype": pa.string(),
    "teacher_eval_loss": pa.float64(),
    "teacher_ppl": pa.float64(),
    "eval_loss": pa.float64(),
    "ppl": pa.float64(),
    "eval_tokens": pa.int64(),
    "loss_before_prune": pa.float64(),
    "prune_shock": pa.float64(),
    "exact_nm": pa.bool_(),
    "masked_kept_ratio": pa.float64(),
    "mask_flip_rate": pa.float64(),
    "wall_seconds": pa.float64(),
    "train_seconds": pa.float64(),
    "eval_seconds": pa.float64(),
    "tokens_per_second": pa.float64(),
    "status": pa.string(),
    "reason": pa.string(),
    "castlab_version": pa.string(),
    "torch_version": pa.string(),
    "transformers_version": pa.string(),
    "git_sha": pa.string(),
}
REQUIRED = ("run_id", "status")
STATUSES = ("ok", "failed")


def _scalar(value: Any) -> Any:
    """Plain Python scalar from numpy/torch scalars, so pyarrow can convert it."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", 0) == 0 else value


def normalise_row(row: dict[str, Any]) -> pa.Table:
    """A one-row arrow table in SCHEMA order (missing columns null); extra columns kept after.

    Raises ValueError on a missing run_id/status, an unknown status, or a value that does not
    convert to its column's type: a trainer bug, not a user mistake.
    """
    for key in REQUIRED:
        if row.get(key) in (None, ""):
            raise ValueError(f"result row lacks '{key}'")
    if row["status"] not in STATUSES:
        raise ValueError(f"result row status {row['status']!r}, allowed {STATUSES}")
    arrays, fields = [], []
    for name, dtype in SCHEMA.items():
        value = _scalar(row.get(name))
        try:
            arrays.append(pa.array([value], type=dtype))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise ValueError(f"result column '{name}': {value!r} is not {dtype} ({err})") from None
        fields.append(pa.field(name, dtype))
    for name in sorted(set(row) - set(SCHEMA)):
        arrays.append(pa.array([_scalar(row[name])]))
        fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_table(table: pa.Table, target: Path) -> Path:
    """Write ``table`` to a temp file next to ``target``, fsync, then os.replace onto it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def write_row(run_dir: Path, row: dict[str, Any]) -> Path:
    """Validate/normalise ``row`` and write it atomically as ``run_dir/result.parquet``."""
    return _atomic_write_table(normalise_row(row), Path(run_dir) / RESULT_FILE)


def write_curve(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write the training curve (one record per logged step; any keys) atomically."""
    # every key of every record: from_pylist takes its columns from the first record alone,
    # which dropped eval_loss and the diagnostics (first logged at an eval step) from curves
    keys = list(dict.fromkeys(k for r in records for k in r))
    table = pa.Table.from_pylist([{k: _scalar(r.get(k)) for k in keys} for r in records])
    return _atomic_write_table(table, Path(run_dir) / CURVE_FILE)


def read_curve(run_dir: Path) -> pd.DataFrame:
    """The training curve of one run."""
    return pq.read_table(Path(run_dir) / CURVE_FILE).to_pandas()


def read_row(run_dir: Path) -> dict[str, Any]:
    """The result row of one run as a dict; UserError names the file if it is missing/corrupt."""
    path = Path(run_dir) / RESULT_FILE
    table = _read_result(path)
    return {k: v[0] for k, v in table.to_pydict().items()}


def _read_result(path: Path) -> pa.Table:
    """Read and check one result file; UserError names the path on any problem."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no result row (run not finished)") from None
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path}: corrupt or partial result file ({err})") from None
    if table.num_rows != 1:
        raise UserError(f"{path}: expected one result row, found {table.num_rows}")
    missing = [k for k in REQUIRED if k not in table.column_names]
    if missing:
        raise UserError(f"{path}: result row lacks column '{missing[0]}'")
    return table


def result_paths(path: Path) -> Iterator[Path]:
    """Every result.parquet under ``path`` (recursively), in sorted order."""
    yield from sorted(Path(path).rglob(RESULT_FILE))


def load(path: str | Path, strict: bool = False) -> pd.DataFrame:
    """All result rows under ``path`` as one DataFrame (one row per run directory).

    Unreadable files are never dropped silently: each is named in a warning, or with
    ``strict=True`` the first one raises UserError. An empty store raises UserError.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such results directory")
    tables, bad = [], []
    for file in result_paths(root):
        try:
            tables.append(_read_result(file))
        except UserError as err:
            if strict:
                raise
            bad.append(str(err))
    for message in bad:
        warnings.warn(f"skipping unreadable result: {message}", stacklevel=2)
    if not tables:
        extra = f" ({len(bad)} unreadable, see warnings)" if bad else ""
        raise UserError(f"no result rows under {root}{extra}: run `castlab sweep` or `castlab train` first")
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()


# ---- run state and the live lock ---------------------------------------------------------


def _proc_start_time(pid: int) -> str | None:
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
    return started is None or started == _proc_start_time(info["pid"])


@contextlib.contextmanager
def _claim_lock(run_dir: Path) -> Iterator[None]:
    """Serialise check-then-write of running.json between processes (flock on a side file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".claim", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_running(run_dir: Path, pid: int | None = None) -> bool:
    """Claim ``run_dir`` for process ``pid`` (default: this one) by writing running.json.

    Returns False (and writes nothing) when another live process holds the lock or the run
    already has its result row; a stale lock is replaced.
    """
    run_dir = Path(run_dir)
    pid = os.getpid() if pid is None else pid
    with _claim_lock(run_dir):
        if (run_dir / RESULT_FILE).exists():
            return False
        info = lock_info(run_dir)
        if info and info.get("pid") != pid and lock_is_live(run_dir):
            return False
        body = {"pid": pid, "host": socket.gethostname(), "start_time": time.time(),
                "proc_start": _proc_start_time(pid)}
        tmp = run_dir / f".{LOCK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, run_dir / LOCK_FILE)
    return True


def heartbeat(run_dir: Path) -> None:
    """Refresh running.json's mtime so hosts that cannot check the pid see it as live."""
    with contextlib.suppress(OSError):
        os.utime(Path(run_dir) / LOCK_FILE)


def clear_running(run_dir: Path) -> None:
    """Remove running.json (no error if it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(run_dir) / LOCK_FILE)


def run_state(run_dir: Path) -> RunState:
    """'done' / 'failed' (a row exists), 'running' (a live lock), else 'pending'.

    A corrupt result file counts as pending (with a warning naming it) so the run is redone.
    """
    run_dir = Path(run_dir)
    if (run_dir / RESULT_FILE).exists():
        try:
            status = _read_result(run_dir / RESULT_FILE).column("status")[0].as_py()
        except UserError as err:
            warnings.warn(f"{err}; treating the run as pending", stacklevel=2)
        else:
            return "failed" if status == "failed" else "done"
    return "running" if lock_is_live(run_dir) else "pending"

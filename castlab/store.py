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
import json
import math
import os
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from castlab.errors import UserError
from castlab.runlock import (  # noqa: F401 - the lock API is re-exported: callers use store.*
    HEARTBEAT_SECONDS,
    LOCK_FILE,
    STALE_AFTER_SECONDS,
    claim_lock,
    clear_running,
    heartbeat,
    lock_info,
    lock_is_live,
    pid_alive,
    proc_start_time,
)

if TYPE_CHECKING:  # pandas is imported by the readers only: writers (trainers) start faster
    import pandas as pd

RESULT_FILE = "result.parquet"
CURVE_FILE = "curve.parquet"
CONFIG_FILE = "config.yaml"
SWEEP_LOG_FILE = "sweep_log.jsonl"  # one line per `castlab sweep` invocation, in RESULTS

RunState = Literal["done", "failed", "running", "pending", "corrupt"]

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
    # what the numbers depend on besides the config (castlab.provenance); null in older rows
    "threads": pa.int64(),
    "cpu_capability": pa.string(),
    "cpu_model": pa.string(),
    "cpu_features": pa.string(),
    "blas": pa.string(),
    "allocator": pa.string(),
    "numerics_env": pa.string(),
}
REQUIRED = ("run_id", "status")
STATUSES = ("ok", "failed")
# A stored row lacking one of these columns is corrupt (moved aside and redone), as is an 'ok' row
# whose eval_loss or ppl is not a finite number: a row is what fits and checks consume. (Columns
# added to SCHEMA later, such as eval_seconds, are not required of older rows.)
ROW_COLUMNS = ("run_id", "status", "method", "model", "tokens", "eval_loss", "ppl")


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
    missing = [k for k in ROW_COLUMNS if k not in table.column_names]
    if missing:
        raise UserError(f"{path}: result row lacks column '{missing[0]}'")
    row = {k: table.column(k)[0].as_py() for k in ROW_COLUMNS}
    if row["run_id"] in (None, "") or row["status"] not in STATUSES:
        raise UserError(f"{path}: result row has run_id {row['run_id']!r} and status "
                        f"{row['status']!r} (allowed status {', '.join(STATUSES)})")
    if row["status"] == "ok":
        for key in ("eval_loss", "ppl"):
            if not isinstance(row[key], (int, float)) or not math.isfinite(row[key]):
                raise UserError(f"{path}: 'ok' result row has {key} {row[key]!r}")
    return table


def result_paths(path: Path) -> Iterator[Path]:
    """Every result.parquet under ``path`` (recursively), in sorted order."""
    yield from sorted(Path(path).rglob(RESULT_FILE))


@dataclass
class Scan:
    """What a results directory holds: one row per run id, and what was left out and why."""

    rows: dict[str, tuple[Path, pa.Table]] = field(default_factory=dict)  # run id -> (file, row)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)  # (file, what is wrong)
    duplicates: list[tuple[str, Path, Path]] = field(default_factory=list)  # (id, kept, skipped)

    def frame(self) -> pd.DataFrame:
        """The kept rows as one DataFrame (empty, with the schema's columns, when there are none)."""
        import pandas as pd

        if not self.rows:
            return pd.DataFrame(columns=list(SCHEMA))
        tables = [table for _, table in self.rows.values()]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def problems(self) -> list[str]:
        """One line per corrupt file and per skipped duplicate."""
        lines = [message for _, message in self.corrupt]
        lines += [f"{skipped}: duplicate of run {run_id} (kept {kept}; a copied run folder?)"
                  for run_id, kept, skipped in self.duplicates]
        return lines


def scan(path: str | Path) -> Scan:
    """Read every result file under ``path``, keyed by the run id inside the row.

    Two files with the same run id (a copied ``cast-xxx.bak/``, the same cell in two sweeps)
    are one run: the file in a folder named after the run id is kept (else the first in path
    order) and the others are listed as duplicates, so no run is counted twice.
    """
    found = Scan()
    for file in result_paths(Path(path)):
        try:
            table = _read_result(file)
        except UserError as err:
            found.corrupt.append((file, str(err)))
            continue
        run_id = table.column("run_id")[0].as_py()
        if run_id not in found.rows:
            found.rows[run_id] = (file, table)
            continue
        kept = found.rows[run_id][0]
        if file.parent.name == run_id and kept.parent.name != run_id:
            found.rows[run_id] = (file, table)
            kept, file = file, kept
        found.duplicates.append((run_id, kept, file))
    return found


def load(path: str | Path, strict: bool = False) -> pd.DataFrame:
    """All result rows under ``path`` as one DataFrame, one row per run id.

    Nothing is dropped silently: each unreadable file and each duplicate of a run id is named
    in a warning, or with ``strict=True`` the first one raises UserError. An empty store raises
    UserError.
    """
    root = Path(path)
    if root.is_symlink() and not root.exists():
        raise UserError(f"{root}: a symlink that leads nowhere (a loop or a dangling link), "
                        "allowed a results directory")
    if not root.exists():
        raise UserError(f"{root}: no such results directory")
    found = scan(root)
    problems = found.problems()
    if strict and problems:
        raise UserError(problems[0])
    for message in problems:
        warnings.warn(f"skipping unreadable result: {message}" if "duplicate of run" not in message
                      else f"skipping {message}", stacklevel=2)
    if not found.rows:
        extra = f" ({len(found.corrupt)} unreadable, see warnings)" if found.corrupt else ""
        raise UserError(f"no result rows under {root}{extra}: run `castlab sweep` or `castlab train` first")
    return found.frame()


def move_aside(file: Path) -> Path:
    """Rename a damaged result file to ``result.corrupt-<UTC time>.parquet`` (kept, never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = file.with_name(f"result.corrupt-{stamp}.parquet")
    n = 1
    while target.exists():
        n += 1
        target = file.with_name(f"result.corrupt-{stamp}-{n}.parquet")
    os.replace(file, target)
    return target


def mark_running(run_dir: Path, pid: int | None = None) -> bool:
    """Claim ``run_dir`` for process ``pid`` (default: this one) by writing running.json.

    Returns False (and writes nothing) when another live process holds the lock or the run
    already has its result row; a stale lock is replaced.
    """
    run_dir = Path(run_dir)
    pid = os.getpid() if pid is None else pid
    with claim_lock(run_dir):
        # The lock first, the result second: a holder writes its row before it clears the lock
        # (outside this flock), so a row finished while we look is seen below. The other order
        # let a claim slip between the holder's row and its clear_running and run it twice.
        info = lock_info(run_dir)
        if info and info.get("pid") != pid and lock_is_live(run_dir):
            return False
        if (run_dir / RESULT_FILE).exists():
            try:
                _read_result(run_dir / RESULT_FILE)
            except UserError as err:  # damaged: keep it aside and let this claim redo the run
                kept = move_aside(run_dir / RESULT_FILE)
                print(f"castlab: {err}; moved to {kept.name}, the run is redone",
                      file=sys.stderr)
            else:
                return False
        body = {"pid": pid, "host": socket.gethostname(), "start_time": time.time(),
                "proc_start": proc_start_time(pid)}
        tmp = run_dir / f".{LOCK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, run_dir / LOCK_FILE)
    return True


def is_stray(run_dir: Path) -> bool:
    """A folder holding only a config (and a dead lock): nothing was trained or logged in it.

    Left by a ``castlab train`` of an older castlab that failed on a user error (now such a run
    leaves nothing behind); no sweep or resume will ever complete it by itself.
    """
    run_dir = Path(run_dir)
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    return CONFIG_FILE in names and names <= {CONFIG_FILE, ".claim", LOCK_FILE} \
        and not lock_is_live(run_dir)


def first_missing(path: Path) -> Path | None:
    """The highest folder of ``path`` (itself or an ancestor) that does not exist yet, if any."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_unstarted(run_dir: Path, created: Path | None) -> None:
    """Undo a run that stopped before producing anything: its config and lock files, and the
    folders made for it (``created``: the highest one, from ``first_missing`` before the run).
    Any other file in the run folder keeps everything."""
    run_dir = Path(run_dir).absolute()
    bookkeeping = (CONFIG_FILE, ".claim", LOCK_FILE)
    if not run_dir.is_dir() or any(p.name not in bookkeeping for p in run_dir.iterdir()):
        return
    for name in bookkeeping:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run_dir / name)
    if created is None or not run_dir.is_relative_to(created):
        return
    for folder in [run_dir, *run_dir.parents]:
        with contextlib.suppress(OSError):  # not empty: something else lives there
            folder.rmdir()
        if folder == created:
            break


def run_state(run_dir: Path) -> RunState:
    """'done' / 'failed' (a valid row), 'corrupt' (a result file that is not one valid row),
    'running' (a live lock), else 'pending'.

    A corrupt run is redone by the next sweep: claiming it moves the damaged file aside.
    """
    run_dir = Path(run_dir)
    if (run_dir / RESULT_FILE).exists():
        try:
            status = _read_result(run_dir / RESULT_FILE).column("status")[0].as_py()
        except UserError:
            return "running" if lock_is_live(run_dir) else "corrupt"
        return "failed" if status == "failed" else "done"
    return "running" if lock_is_live(run_dir) else "pending"

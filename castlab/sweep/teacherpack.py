"""`castlab teachers pack|unpack`: a sweep's dense teachers as one file for another machine.

The teacher phase of a sweep (``castlab sweep FILE --phase teachers``) may run where the student
phase cannot (another node, another GPU session). The pack carries exactly what the student
phase reads of each teacher the plan needs: the saved model (``model.safetensors``, its HF
configs and tokenizer files, the cached teacher evals ``castlab_eval_*.json``) and the run's
``config.yaml``, ``result.parquet`` (what makes it 'done') and ``curve.parquet``. Nothing
executable and no pickles: the training checkpoint (``state.pt``) and logs stay behind, and only
these file types are accepted. A manifest lists every file with its size and sha256; unpacking
checks each one before anything is installed under ``$CASTLAB_CACHE/teachers``, so the student
phase finds the same run ids (the weights are the saved fp32 ones, bit for bit).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tarfile
import time
from pathlib import Path

from castlab.errors import UserError
from castlab.paths import (
    MAX_PACK_MEMBERS,
    cache_dir,
    check_pack_output,
    is_plain_name,
    pack_size,
    remove_tree,
    sha256_file,
    staging_dir,
    stream_pack,
    teachers_root,
    unpack_budget,
)

MANIFEST = "castlab_teachers.json"
FORMAT = 1
ALLOWED_SUFFIXES = (".safetensors", ".json", ".yaml", ".parquet")
RUN_FILES = ("config.yaml", "result.parquet", "curve.parquet")  # beside model/


def teacher_files(run_dir: Path) -> list[Path]:
    """The files of one done teacher that the pack carries (see the module docstring)."""
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    model = run_dir / "model"
    files += sorted(p for p in model.iterdir() if p.is_file() and p.suffix in ALLOWED_SUFFIXES
                    and ".tmp" not in p.name)
    if not (model / "model.safetensors").is_file():
        raise UserError(f"{model}: no model.safetensors (teachers are packed as safetensors only)")
    return files


def plan_teachers(sweep_file: Path) -> tuple[str, list]:
    """(sweep name, the teacher PlannedRuns its students need); a UserError naming any that is
    not done."""
    from castlab import store
    from castlab.sweep.phases import needed_teachers
    from castlab.sweep.plan import build_plan
    from castlab.sweep.spec import load_sweep

    spec = load_sweep(sweep_file)
    plan = build_plan(spec)
    needed = set(needed_teachers(plan))
    teachers = [r for r in plan if r.kind == "teacher" and r.run_dir in needed]
    missing = [r for r in teachers if store.run_state(r.run_dir) != "done"]
    if missing:
        raise UserError(f"{sweep_file}: {len(missing)} teacher(s) are not done "
                        f"({', '.join(r.run_id for r in missing[:4])}); train them first with "
                        f"`castlab sweep {sweep_file} --phase teachers`")
    return spec.name, teachers


def pack_teachers(sweep_file: Path, out: Path) -> tuple[Path, int]:
    """Write ``out`` (a gzip tar with a manifest) holding the sweep's teachers; returns
    (path, number of teachers)."""
    out = check_pack_output(out, "teachers pack FILE")
    name, teachers = plan_teachers(sweep_file)
    root = cache_dir()
    entries, files = [], {}
    for run in teachers:
        c = run.config
        entries.append({"run_id": run.run_id, "model": c.model, "seed": c.seed,
                        "tokens": int(c.tokens)})
        for path in teacher_files(run.run_dir):
            files[str(path.relative_to(root))] = {"bytes": path.stat().st_size,
                                                  "sha256": sha256_file(path)}
    manifest = json.dumps({"format": FORMAT, "sweep": name, "teachers": entries,
                           "files": files}, indent=1).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            info = tarfile.TarInfo(MANIFEST)  # first, so unpack reads it before any weight
            info.size, info.mtime = len(manifest), int(time.time())
            tar.addfile(info, io.BytesIO(manifest))
            for rel in files:
                tar.add(root / rel, arcname=rel, recursive=False)
        tmp.replace(out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{out}: cannot write the pack ({err.strerror or err})") from None
    return out, len(entries)


MAX_TEACHERS = 1000
MAX_FILE_BYTES = 8 * 2**30
NEEDED = ("model/model.safetensors", "result.parquet")  # what makes an installed teacher usable
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(manifest: object, file: Path) -> tuple[list[str], dict[str, dict]]:
    """(run ids, files) of a teacher-pack manifest, every field checked before anything is
    written: ids are plain names (no '/', no '..', not absolute, at most 128 characters) listed
    once; every file lies under ``teachers/<one of the ids>/`` with an allowed suffix, a byte
    count and a sha256; every id brings its weights and result row. One-line UserError else."""
    where = f"{file}: {MANIFEST}"
    if not isinstance(manifest, dict):
        raise UserError(f"{where}: got {type(manifest).__name__}, allowed an object with "
                        "format, sweep, teachers, files")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{file}: teacher pack format {str(manifest.get('format'))[:40]!r}, "
                        f"this castlab reads {FORMAT}")
    teachers, files = manifest.get("teachers"), manifest.get("files")
    if not isinstance(teachers, list) or not 0 < len(teachers) <= MAX_TEACHERS:
        raise UserError(f"{where}: teachers: allowed a list of 1 to {MAX_TEACHERS} entries")
    ids: list[str] = []
    for i, entry in enumerate(teachers):
        run_id = entry.get("run_id") if isinstance(entry, dict) else None
        if not is_plain_name(run_id):
            raise UserError(f"{where}: teachers[{i}].run_id: got {str(run_id)[:60]!r}, allowed "
                            "a plain name (letters, digits, '_', '.', '-'; no '/', no '..', at "
                            "most 128 characters)")
        if run_id in ids:
            raise UserError(f"{where}: teachers[{i}].run_id: '{run_id}' is listed twice")
        ids.append(run_id)
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_PACK_MEMBERS:
        raise UserError(f"{where}: files: allowed an object of 1 to {MAX_PACK_MEMBERS:,} "
                        "'path': {{bytes, sha256}} entries")
    total = 0
    for rel, meta in files.items():
        parts = rel.split("/")
        if (len(parts) < 3 or parts[0] != "teachers" or parts[1] not in ids
                or not all(is_plain_name(p) for p in parts) or not rel.endswith(ALLOWED_SUFFIXES)):
            raise UserError(f"{where}: files: '{rel[:120]}' is not allowed (allowed: "
                            "safetensors/json/yaml/parquet under teachers/<a listed run_id>/)")
        size = meta.get("bytes") if isinstance(meta, dict) else None
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            raise UserError(f"{where}: files['{rel[:120]}'].bytes: got {str(size)[:40]!r}, "
                            f"allowed an integer 0 to {MAX_FILE_BYTES:,}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise UserError(f"{where}: files['{rel[:120]}'].sha256: allowed 64 hex digits")
        total += size
    if total > unpack_budget(file):
        raise UserError(f"{where}: declares {total / 2**20:,.0f} MiB, more than "
                        f"{unpack_budget(file) / 2**20:,.0f} MiB allowed for a pack of this size")
    for run_id in ids:
        lacking = [n for n in NEEDED if f"teachers/{run_id}/{n}" not in files]
        if lacking:
            raise UserError(f"{where}: teacher '{run_id}' has no {lacking[0]} in the pack")
    return ids, files


def _member_checker(file: Path, state: dict):
    def check(member: tarfile.TarInfo) -> None:
        if state.get("files") is None:
            raise UserError(f"{file}: not a castlab teacher pack (no {MANIFEST} first)")
        name = member.name
        if member.isdir():
            if name != "teachers" and not any(f.startswith(name + "/") for f in state["files"]):
                raise UserError(f"{file}: unexpected member '{name[:120]}' in a teacher pack")
            return
        meta = state["files"].get(name)
        if meta is None:
            raise UserError(f"{file}: unexpected member '{name[:120]}' in a teacher pack "
                            "(allowed: the files its manifest lists, safetensors/json/yaml/"
                            "parquet under teachers/)")
        if member.size != meta["bytes"]:
            raise UserError(f"{file}: {name} holds {member.size:,} bytes, the manifest says "
                            f"{meta['bytes']:,}; nothing installed")
    return check


def unpack_teachers(file: Path) -> tuple[list[str], list[str]]:
    """Check and install a teacher pack into the cache; returns (installed, already done) run
    ids. The manifest is checked whole (``check_manifest``) before a byte is written; files go
    to a staging folder inside the cache, each checked against its declared size while it
    streams and its sha256 after; only then is each teacher moved into place by a rename. A
    refused pack leaves the cache as it was."""
    root = teachers_root()
    staging = staging_dir(root.parent)  # beside teachers/, which a refused pack never creates
    state: dict = {}

    def on_manifest(manifest: object) -> None:
        state["ids"], state["files"] = check_manifest(manifest, file)

    try:
        try:
            _, hashes = stream_pack(file, staging, MANIFEST, on_manifest,
                                    _member_checker(file, state), kind="teacher pack")
        except OSError as err:
            raise UserError(f"{file}: cannot unpack into {root} ({err.strerror or err}); "
                            "nothing installed") from None
        if "files" not in state:
            raise UserError(f"{file}: not a castlab teacher pack (no {MANIFEST})")
        files = state["files"]
        absent = sorted(set(files) - set(hashes))
        if absent:
            raise UserError(f"{file}: '{absent[0]}' is in the manifest but not in the pack "
                            "(truncated?)")
        for rel, meta in files.items():
            if hashes[rel] != meta["sha256"]:
                raise UserError(f"{file}: {rel} fails its checksum (sha256 {hashes[rel][:12]}..., "
                                f"the manifest says {meta['sha256'][:12]}...); nothing installed")
        return _install(root, staging, state["ids"])
    finally:
        remove_tree(staging)


def _install(root: Path, staging: Path, ids: list[str]) -> tuple[list[str], list[str]]:
    """Rename each staged teacher into ``root`` (plain names: never outside it); an unfinished
    local attempt is kept aside, not deleted. A failure undoes the renames made so far."""
    from castlab import store  # pyarrow: when unpacking, not when the parser is built

    installed, kept, undo = [], [], []
    try:
        root.mkdir(exist_ok=True)
        for run_id in ids:
            target, staged = root / run_id, staging / "teachers" / run_id
            assert target.parent == root and is_plain_name(run_id)
            if store.run_state(target) == "done":
                kept.append(run_id)
                continue
            if target.exists() or target.is_symlink():
                aside = root / f"{run_id}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                target.rename(aside)
                undo.append((aside, target))
            staged.rename(target)
            undo.append((target, staged))
            installed.append(run_id)
    except OSError as err:
        for src, dst in reversed(undo):
            with contextlib.suppress(OSError):
                src.rename(dst)
        raise UserError(f"cannot install teachers into {root} ({err.strerror or err}); "
                        "nothing installed") from None
    return installed, kept


def run_pack(args: argparse.Namespace) -> int:
    """Pack a sweep's teachers; print the file, its size and whether it fits 50 MiB."""
    out, count = pack_teachers(args.sweep, args.file)
    print(f"{out}: {count} teachers, {pack_size(out)}")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    """Unpack into the cache; say what was installed and what was there already."""
    installed, kept = unpack_teachers(args.file)
    print(f"{len(installed)} teachers installed, {len(kept)} already done, in {teachers_root()}")
    return 0


def register(subparsers) -> None:
    """Add `castlab teachers pack` and `castlab teachers unpack`."""
    group = subparsers.add_parser(
        "teachers", help="pack a sweep's dense teachers into one file, or unpack one",
        description="Move a sweep's dense teachers (the output of `castlab sweep FILE --phase "
                    "teachers`) to another machine as one checked file.")
    commands = group.add_subparsers(dest="teachers_command", metavar="TEACHERS_COMMAND",
                                    required=True)
    pack = commands.add_parser(
        "pack", help="write the teachers a sweep needs into one .tar.gz",
        description="Pack every teacher a sweep file's student runs start from (all must be "
                    "done): safetensors weights, configs, rows, a manifest with sha256 per file.")
    pack.add_argument("file", type=Path, help="file to write (.tar.gz)")
    pack.add_argument("--sweep", type=Path, required=True, help="the sweep file")
    pack.set_defaults(func=run_pack)
    unpack = commands.add_parser(
        "unpack", help="check and install a teacher pack into $CASTLAB_CACHE/teachers",
        description="Check every file of a teacher pack against its manifest's sha256, then "
                    "install the teachers (a teacher already done here is kept).")
    unpack.add_argument("file", type=Path, help="file written by `castlab teachers pack`")
    unpack.set_defaults(func=run_unpack)

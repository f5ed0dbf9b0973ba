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
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

from castlab.errors import UserError
from castlab.paths import cache_dir, extract_members, pack_size, sha256_file

MANIFEST = "castlab_teachers.json"
FORMAT = 1
ALLOWED_SUFFIXES = (".safetensors", ".json", ".yaml", ".parquet")
RUN_FILES = ("config.yaml", "result.parquet", "curve.parquet")  # beside model/


def teachers_root() -> Path:
    """Where sweeps keep dense teachers: ``$CASTLAB_CACHE/teachers``."""
    return cache_dir() / "teachers"


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
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        info = tarfile.TarInfo(MANIFEST)  # first, so unpack reads it before any weight
        info.size, info.mtime = len(manifest), int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
        for rel in files:
            tar.add(root / rel, arcname=rel, recursive=False)
    tmp.replace(out)
    return out, len(entries)


def _check_member(member: tarfile.TarInfo, files: dict, ids: set, file: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if (not member.isfile() or name not in files or len(parts) < 3 or parts[0] != "teachers"
            or parts[1] not in ids or ".." in parts
            or Path(name).is_absolute() or not name.endswith(ALLOWED_SUFFIXES)):
        raise UserError(f"{file}: unexpected member '{name}' in a teacher pack (allowed: the "
                        "files its manifest lists, safetensors/json/yaml/parquet under teachers/)")


def unpack_teachers(file: Path) -> tuple[list[str], list[str]]:
    """Check and install a teacher pack into the cache; returns (installed, already done) run
    ids. Every file's sha256 is checked before any teacher is moved into place."""
    from castlab import store  # pyarrow: when unpacking, not when the parser is built

    root = teachers_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(file, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise UserError(f"{file}: not a castlab teacher pack (no {MANIFEST} first)")
            manifest = json.loads(tar.extractfile(first).read())
            if manifest.get("format") != FORMAT:
                raise UserError(f"{file}: teacher pack format {manifest.get('format')!r}, "
                                f"this castlab reads {FORMAT}")
            files = manifest["files"]
            members = [m for m in tar.getmembers() if m.name != MANIFEST]
            ids = {entry["run_id"] for entry in manifest["teachers"]}
            for member in members:
                _check_member(member, files, ids, file)
            absent = set(files) - {m.name for m in members}
            if absent:
                raise UserError(f"{file}: '{sorted(absent)[0]}' is in the manifest but not in "
                                "the pack (truncated?)")
            extract_members(tar, staging, members)
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, KeyError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{file}: cannot read the teacher pack ({err})") from None
    try:
        for rel, meta in files.items():
            got = sha256_file(staging / rel)
            if got != meta["sha256"]:
                raise UserError(f"{file}: {rel} fails its checksum (sha256 {got[:12]}..., the "
                                f"manifest says {meta['sha256'][:12]}...); nothing installed")
        installed, kept = [], []
        for entry in manifest["teachers"]:
            run_id = entry["run_id"]
            target, staged = root / run_id, staging / "teachers" / run_id
            if store.run_state(target) == "done":
                kept.append(run_id)
                continue
            if target.exists():  # an unfinished or failed local attempt: kept aside, not deleted
                target.rename(root / f"{run_id}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            staged.rename(target)
            installed.append(run_id)
        return installed, kept
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

"""Reading law.json as untrusted input: bounded, schema-checked, checksum required.

A law.json travels between machines and people, so ``castlab predict`` reads it the way it
reads any downloaded file: at most MAX_LAW_BYTES from a regular file (a device such as
/dev/zero is refused before a read), JSON nested at most MAX_JSON_DEPTH deep, then a
mandatory checksum (what ``fit-law`` writes: sha256 of every other key, canonical JSON), then
every field that predict uses checked for type and range. Each refusal is one line naming the
file and the field. A law.json without a valid checksum (edited, or written before checksums)
is refused; refit it with ``castlab fit-law DATA --out FOLDER`` (DATA is the results folder or
table the law was fitted to, recorded in the file as ``data.source``).
"""

from __future__ import annotations

import math
from pathlib import Path

from castlab.errors import UserError
from castlab.law.forms import FORMS
from castlab.paths import loads_bounded, read_regular_file

MAX_LAW_BYTES = 64 * 2**20  # a 1,000-draw law of the largest form is a few MiB
MAX_SEED = 2**32 - 1


def _fail(path: Path, field: str, got: object, allowed: str) -> UserError:
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return UserError(f"--law: {path}: {field}: got {shown[:60]}, allowed {allowed}")


def _number(path, field, value, *, low=-math.inf, high=math.inf, finite=True, nan=False,
            integer=False) -> float:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise _fail(path, field, value, "an integer" if integer else "a number")
    if nan and value != value:
        return value
    if (finite and not math.isfinite(value)) or not low <= value <= high:
        raise _fail(path, field, value, f"a {'finite ' if finite else ''}number in "
                                        f"[{low:g}, {high:g}]")
    return value


def _dict(path, field, value, keys=()) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, field, value, "an object")
    missing = [k for k in keys if k not in value]
    if missing:
        raise UserError(f"--law: {path}: {field}.{missing[0]}: missing")
    return value


def _matrix(path, field, value, shape: tuple[int, ...]) -> None:
    """A nested list of finite numbers of exactly ``shape`` (-1: any length)."""
    if not shape:
        _number(path, field, value)
        return
    if not isinstance(value, list) or shape[0] not in (-1, len(value)):
        raise _fail(path, field, value, f"a list of {shape[0] if shape[0] >= 0 else 'any'} "
                                        "entries" + (" of lists" if len(shape) > 1 else ""))
    for i, item in enumerate(value):
        _matrix(path, f"{field}[{i}]", item, shape[1:])


def check_fit(path: Path, d: object, field: str = "fit", nested: bool = False) -> None:
    """Schema of one fit (``fit_to_json``): form, groups, theta shape and values, scales."""
    d = _dict(path, field, d, ("form", "theta", "groups", "scales", "objective", "converged",
                               "message", "n_points", "starts", "seconds"))
    if d["form"] not in FORMS:
        raise _fail(path, f"{field}.form", d["form"], f"one of {', '.join(FORMS)}")
    groups = d["groups"]
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
        raise _fail(path, f"{field}.groups", groups, "a non-empty list of size labels")
    _matrix(path, f"{field}.theta", d["theta"], (len(groups), len(FORMS[d["form"]].params)))
    scales = _dict(path, f"{field}.scales", d["scales"], ("n0", "d0"))
    for key in ("n0", "d0", "a0"):
        if key in scales or key != "a0":  # a0: only in laws written since the lr areas
            _number(path, f"{field}.scales.{key}", scales[key], low=1e-300, high=1e300)
    if not isinstance(d["converged"], bool):
        raise _fail(path, f"{field}.converged", d["converged"], "true or false")
    _number(path, f"{field}.n_points", d["n_points"], low=0, integer=True)
    _number(path, f"{field}.objective", d["objective"], finite=False, nan=True)
    if not isinstance(d.get("on_bound", []), list):
        raise _fail(path, f"{field}.on_bound", d["on_bound"], "a list of parameter names")
    dense = d.get("dense")
    if dense is not None:
        if nested:
            raise _fail(path, f"{field}.dense", dense, "null (a dense curve has no dense curve)")
        check_fit(path, dense, f"{field}.dense", nested=True)


def check_law(path: Path, d: dict) -> None:
    """Schema of every field ``Law.load`` and ``predict`` use; one-line UserError naming it."""
    _dict(path, "law", d, ("form", "fit", "sizes", "bootstrap"))
    check_fit(path, d["fit"])
    if d["form"] != d["fit"]["form"]:
        raise _fail(path, "form", d["form"], f"the fit's form {d['fit']['form']!r}")
    _number(path, "level", d.get("level", 0.9), low=1e-9, high=1 - 1e-9)
    sizes = _dict(path, "sizes", d["sizes"])
    if not sizes:
        raise _fail(path, "sizes", sizes, "at least one size")
    for label, size in sizes.items():
        size = _dict(path, f"sizes.{label}", size, ("n",))
        _number(path, f"sizes.{label}.n", size["n"], low=1e-300, high=1e300)
        if size.get("teacher_eval_loss") is not None:
            _number(path, f"sizes.{label}.teacher_eval_loss", size["teacher_eval_loss"],
                    low=1e-300, high=1e6)
    b = _dict(path, "bootstrap", d["bootstrap"], ("thetas", "dense_thetas", "draws", "failed",
                                                   "seed", "seconds", "sigma", "noise_source"))
    theta_shape = (len(d["fit"]["groups"]), len(FORMS[d["form"]].params))
    _matrix(path, "bootstrap.thetas", b["thetas"], (-1, *theta_shape))
    dense = d["fit"].get("dense")
    if b["dense_thetas"] is not None:
        if dense is None:
            raise _fail(path, "bootstrap.dense_thetas", b["dense_thetas"], "null (no dense fit)")
        _matrix(path, "bootstrap.dense_thetas", b["dense_thetas"],
                (len(b["thetas"]), len(dense["groups"]), len(FORMS[dense["form"]].params)))
    for key in ("draws", "failed"):
        _number(path, f"bootstrap.{key}", b[key], low=0, integer=True)
    _number(path, "bootstrap.seed", b["seed"], low=0, high=MAX_SEED, integer=True)
    _number(path, "bootstrap.sigma", b["sigma"], low=0, nan=True)
    _number(path, "bootstrap.tau", b.get("tau", 0.0), low=0)
    _number(path, "bootstrap.d_seen", b.get("d_seen", math.inf), low=1e-300, finite=False)
    if not isinstance(b["noise_source"], str):
        raise _fail(path, "bootstrap.noise_source", b["noise_source"], "a string")
    n_seen = b.get("n_seen", [])
    if not isinstance(n_seen, list):
        raise _fail(path, "bootstrap.n_seen", n_seen, "a list of parameter counts")
    for i, n in enumerate(n_seen):
        _number(path, f"bootstrap.n_seen[{i}]", n, low=1e-300, high=1e300)


def read_law(path: str | Path) -> dict:
    """The checked content of a law.json (see the module docstring); UserError otherwise."""
    from castlab.law.predict import checksum

    path = Path(path)
    d = loads_bounded(read_regular_file(path, "--law", MAX_LAW_BYTES), f"--law: {path}",
                      MAX_LAW_BYTES)
    if not isinstance(d, dict):
        raise UserError(f"--law: {path} is not a castlab law.json (got a JSON "
                        f"{type(d).__name__}, allowed an object)")
    source = d.get("data", {}).get("source") if isinstance(d.get("data"), dict) else None
    refit = (f"refit with `castlab fit-law {source if isinstance(source, str) else 'DATA'} "
             "--out FOLDER`")
    if "checksum" not in d:
        raise UserError(f"--law: {path} has no checksum (edited, or written by a castlab "
                        f"before law.json carried one), so its numbers cannot be trusted; {refit}")
    if d["checksum"] != checksum(d):
        raise UserError(f"--law: {path} does not match its checksum (edited after fit-law "
                        f"wrote it); {refit}")
    check_law(path, d)
    return d


def check_predict_args(args) -> None:
    """Numeric arguments of ``castlab predict`` that the law itself cannot check."""
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed: got {args.seed}, allowed an integer 0 to {MAX_SEED}")
    if args.target_ppl is not None and not (math.isfinite(args.target_ppl)
                                            and args.target_ppl > 1):
        raise UserError(f"--target-ppl: got {args.target_ppl}, allowed a finite perplexity "
                        "above 1")
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise UserError(f"--sparsity: got {args.sparsity}, allowed 0 <= s < 1")
    if args.dense_loss is not None and not (math.isfinite(args.dense_loss)
                                            and 0 < args.dense_loss < 1e6):
        raise UserError(f"--dense-loss: got {args.dense_loss}, allowed a positive, finite loss")

"""`castlab curves RUN_OR_RESULTS... [--out FILE]`: the stored training curves as one figure.

Every finished run stores its curve (``curve.parquet``: per-step training loss and lr, the
validation loss at each eval). This draws them without TensorBoard: one column per model size
(in order of parameters), the training objective (a moving average) on top and the validation
PPL below, one colour per method, every run (seeds, budgets) a line of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from castlab.errors import UserError

SMOOTH_POINTS = 10  # the moving average spans a tenth of the run (per-step losses are noisy)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `castlab curves`."""
    p = subparsers.add_parser(
        "curves", help="draw the stored training curves of runs or results folders",
        description="One figure of the curve.parquet of every finished run under the given "
                    "run or results folders: training objective and validation PPL vs tokens, "
                    "one column per model size, one colour per method.")
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_RESULTS",
                   help="run folders or results folders (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("curves.png"),
                   help="PNG file to write (default: curves.png)")
    p.add_argument("--method", help="only these methods (comma-separated, e.g. cast,sr-ste)")
    p.add_argument("--model", help="only these models (comma-separated, e.g. opt-100k)")
    p.set_defaults(func=run_curves)


def _names(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders holding a ``curve.parquet`` under each path (a run folder itself, or any
    folder below it), in path order, each once."""
    from castlab.store import CURVE_FILE

    found: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such run or results folder")
        files = [path / CURVE_FILE] if (path / CURVE_FILE).is_file() else sorted(
            path.rglob(CURVE_FILE))
        if not files:
            raise UserError(f"{path}: no {CURVE_FILE} found (a run writes it when it finishes)")
        for file in files:
            found.setdefault(file.parent.resolve(), None)
    return list(found)


def run_info(run_dir: Path) -> dict:
    """Method, model and parameter count of a run: from its result row, else its config."""
    import yaml

    from castlab.store import CONFIG_FILE, RESULT_FILE, read_row

    info = {"run_id": run_dir.name, "method": "?", "model": "?", "n": float("nan")}
    if (run_dir / RESULT_FILE).is_file():
        try:
            row = read_row(run_dir)
        except UserError:
            row = {}
        info.update({k: row[k] for k in ("run_id", "method", "model") if row.get(k)})
        info["n"] = float(row.get("params_non_embedding") or float("nan"))
    elif (run_dir / CONFIG_FILE).is_file():
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        info.update({k: str(cfg[k]) for k in ("method", "model") if cfg.get(k)})
    return info


def load_curves(paths: list[Path], methods: set[str] | None = None,
                models: set[str] | None = None) -> list[tuple[dict, object]]:
    """(info, curve DataFrame) of every finished run under ``paths`` kept by the filters."""
    import sys

    from castlab.store import read_curve

    out = []
    for run_dir in find_runs(paths):
        info = run_info(run_dir)
        if (methods and info["method"] not in methods) or (models and info["model"] not in models):
            continue
        try:
            curve = read_curve(run_dir)
        except (OSError, ValueError) as err:  # pyarrow's errors for a damaged file
            print(f"castlab curves: skipped {run_dir}: unreadable curve ({err})", file=sys.stderr)
            continue
        if len(curve) and "tokens" in curve:
            out.append((info, curve))
    if not out:
        raise UserError("no curves left: none of the runs found matches --method/--model")
    return out


def draw_curves(runs: list[tuple[dict, object]], path: Path) -> Path:
    """The figure: a column per model (ascending parameters), training objective above,
    validation PPL below, x = training tokens of the run."""
    import numpy as np

    from castlab.plotting import METHOD_COLORS, plain_axis, pyplot, save, tokens_label, wrapped

    plt = pyplot()
    models = sorted({i["model"] for i, _ in runs},
                    key=lambda m: (min((i["n"] for i, _ in runs if i["model"] == m
                                        and np.isfinite(i["n"])), default=np.inf), m))
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models) + 1.8, 7.2),
                             squeeze=False, sharex="col")
    seen: dict[str, object] = {}
    for col, model in enumerate(models):
        top, bottom = axes[0, col], axes[1, col]
        for info, curve in runs:
            if info["model"] != model:
                continue
            color = METHOD_COLORS.get(info["method"], "tab:gray")
            tokens = curve["tokens"].to_numpy(float)
            loss = curve["train_loss"].to_numpy(float)
            window = max(1, len(loss) // SMOOTH_POINTS)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            line, = top.plot(tokens[window - 1:], smooth, color=color, lw=1.1, alpha=0.8)
            seen.setdefault(info["method"], line)
            if "eval_loss" in curve:
                ev = curve.dropna(subset=["eval_loss"])
                bottom.plot(ev["tokens"], np.exp(ev["eval_loss"]), color=color, lw=1.1,
                            marker="o", ms=3, alpha=0.8)
        top.set(title=model, ylabel="training objective (moving avg.)")
        bottom.set(xlabel="training tokens", ylabel="validation PPL")
        for ax in (top, bottom):
            ax.set_xscale("log")
            plain_axis(ax.xaxis, tokens_label)
            plain_axis(ax.yaxis)
            ax.grid(alpha=0.25)
    order = sorted(seen)
    fig.legend([seen[m] for m in order], order, loc="outside right center", fontsize=9,
               title="method")
    title = (f"{len(runs)} runs: training objective (KD with a teacher, else CE) and "
             "validation PPL")
    fig.suptitle(wrapped(title, fig.get_figwidth(), 11), fontsize=11)
    return save(fig, path)


def run_curves(args: argparse.Namespace) -> int:
    """Find the curves, draw them into ``--out``, print its path."""
    out = Path(args.out)
    if out.is_dir() or out.suffix.lower() != ".png":
        raise UserError(f"--out: {out} is not a .png file name")
    from castlab.paths import check_output_dir

    check_output_dir(out.parent if str(out.parent) else Path("."), "--out")
    runs = load_curves(args.paths, _names(args.method), _names(args.model))
    out.parent.mkdir(parents=True, exist_ok=True)
    print(draw_curves(runs, out))
    return 0

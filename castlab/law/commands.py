"""`castlab fit-law` and `castlab predict`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from castlab import __version__
from castlab.config import parse_count
from castlab.errors import UserError
from castlab.paths import check_output_dir

# numpy, scipy and pandas load inside the commands that use them, so `castlab --help` and
# `castlab predict --help` answer at once


def register(subparsers) -> None:
    """Add the fit-law and predict subcommands."""
    from castlab.law.forms import FORMS  # numpy only: the --form help lists the registry

    p = subparsers.add_parser(
        "fit-law", help="fit and validate a scaling law on a results store or a table of runs",
        description="Fit law forms to runs, validate them on held-out budgets and sizes, pick "
                    "the form with the lowest held-out error, bootstrap intervals, write law.json "
                    "and figures.")
    p.add_argument("path", help="results directory (castlab store) or a .csv / .parquet table")
    p.add_argument("--form", default="auto",
                   help=f"auto (chosen by held-out error) or one of: {', '.join(FORMS)}")
    p.add_argument("--method", default="cast", help="method whose runs to fit (store input)")
    p.add_argument("--out", help="output directory (default: PATH-law next to PATH)")
    p.add_argument("--n-col", help="external table: column with N (parameters)")
    p.add_argument("--d-col", help="external table: column with D (training tokens)")
    p.add_argument("--loss-col", help="external table: column with the loss (nats/token)")
    p.add_argument("--loss-is-ppl", action="store_true", help="--loss-col holds perplexity")
    p.add_argument("--s-col", help="external table: column with sparsity in [0, 1) (frantar)")
    p.add_argument("--size-col", help="external table: column naming the model size")
    p.add_argument("--run-col", help="external table: column naming the run of each row; rows "
                                     "of one run (checkpoints) are validated and bootstrapped "
                                     "together")
    p.add_argument("--curves", action="store_true",
                   help="results store: also fit every evaluated checkpoint of each run's "
                        "curve.parquet (trajectories: validated on each run's last point)")
    p.add_argument("--predict-for", metavar="WHAT",
                   help="what the law must predict: comma list of budgets, sizes, sparsities, "
                        "or all (default: budgets, plus sparsities when the runs have several); "
                        "forms that cannot are not chosen. checkpoints: points along runs of a "
                        "known lr schedule (with --curves; the schedule-aware form lr_anneal)")
    p.add_argument("--draws", type=int, default=None,
                   help="bootstrap draws (default 1000; fewer only for quick looks)")
    p.add_argument("--heldout-draws", type=int, default=None,
                   help="bootstrap draws per held-out split (intervals for coverage)")
    p.add_argument("--level", type=float, default=None, help="interval level (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=fit_law_command)

    q = subparsers.add_parser(
        "predict", help="PPL at a token budget (or budget for a PPL) from a law.json",
        description="Predict validation PPL with an interval from a fitted law, or the tokens "
                    "needed to reach a target PPL.")
    q.add_argument("--law", required=True, help="law.json written by castlab fit-law")
    q.add_argument("--model", help="a size in the law (its law.json lists them, e.g. opt-600k "
                                   "in the reference study) or a parameter count like 125M")
    q.add_argument("--n", type=float, help="raw parameter count N")
    q.add_argument("--tokens", help="comma-separated budgets, e.g. 5M,20M")
    q.add_argument("--target-ppl", type=float, help="tokens needed to reach this PPL")
    q.add_argument("--sparsity", type=float, help="sparsity, for forms that use it (frantar)")
    q.add_argument("--dense-loss", type=float,
                   help="dense teacher loss for a size the law did not see (dense_gap)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--seed", type=int, default=0, help="seed of the run-noise draws")
    q.set_defaults(func=predict_command)


def _columns(args):
    """The external table's ColumnMap from the --*-col flags, or None for a castlab store."""
    from castlab.law.points import ColumnMap

    given = [args.n_col, args.d_col, args.loss_col]
    if not any(given) and not (args.s_col or args.loss_is_ppl or args.size_col or args.run_col):
        return None
    if not all(given):
        raise UserError("--n-col, --d-col and --loss-col must be given together")
    return ColumnMap(args.n_col, args.d_col, args.loss_col, args.loss_is_ppl, args.s_col,
                     args.size_col, args.run_col)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}")


def _pct(v: float) -> str:
    return "   -  " if not math.isfinite(v) else f"{100 * v:6.2f}%"


def _out_dir(args, src: Path) -> Path:
    """The output folder, checked before any fitting: an existing file there is refused."""
    out = Path(args.out) if args.out else src.parent / f"{src.stem}-law"
    return check_output_dir(out, "--out")


def fit_law_command(args) -> int:
    """castlab fit-law: validate forms, fit the chosen one, bootstrap, write law.json + figures."""
    import numpy as np

    from castlab.law.bootstrap import DEFAULT_DRAWS, DEFAULT_LEVEL, bootstrap, param_summary
    from castlab.law.choose import summarize, unidentified_forms
    from castlab.law.fit import fit_form
    from castlab.law.forms import FORMS, get_form
    from castlab.law.points import check_fittable, points_from_frame
    from castlab.law.predict import Law
    from castlab.law.tablecheck import checked_table
    from castlab.law.targets import forms_that_can, missing, parse_targets
    from castlab.law.validate import HELDOUT_DRAWS, heldout_predictions, is_trajectory

    args.draws = DEFAULT_DRAWS if args.draws is None else args.draws
    args.heldout_draws = HELDOUT_DRAWS if args.heldout_draws is None else args.heldout_draws
    args.level = DEFAULT_LEVEL if args.level is None else args.level
    if args.draws < 100:
        raise UserError(f"--draws: got {args.draws}, allowed >= 100 (default 1000)")
    if args.heldout_draws < 0:
        raise UserError(f"--heldout-draws: got {args.heldout_draws}, allowed >= 0 "
                        f"(0: no held-out intervals; default {HELDOUT_DRAWS})")
    if not 0 < args.level < 1:
        raise UserError(f"--level: got {args.level}, allowed 0 < level < 1")
    src = Path(args.path)
    cols = _columns(args)
    out = _out_dir(args, src)
    frame = checked_table(src, args, cols)
    if args.curves:
        if cols is not None or not src.is_dir():
            raise UserError("--curves: reads a castlab results directory's curve.parquet files; "
                            "for a table, give its checkpoints as rows with --run-col")
        from castlab.law.curves import with_curves

        frame = with_curves(src, frame, args.method)
    pts = points_from_frame(frame, args.method, cols, where=str(src))
    targets = parse_targets(args.predict_for, pts.s)
    if args.form == "auto":
        forms, excluded = _auto_candidates(pts, targets, src)
    else:
        form = get_form(args.form)
        if "areas" in form.needs and targets != ("checkpoints",):
            raise UserError(f"--form {form.name}: predicts checkpoints along a run's known "
                            "learning-rate schedule only; give --predict-for checkpoints "
                            "(with --curves on a castlab store)")
        if missing(form, targets):
            raise UserError(f"--form {form.name}: cannot predict new {', '.join(missing(form, targets))} "
                            f"(--predict-for {','.join(targets)}); forms that can: "
                            f"{', '.join(forms_that_can(targets))}")
        check_fittable(form, pts)
        forms, excluded = [args.form], {}
    what = f"method {args.method}" if cols is None else "mapped columns"
    runs = f", {len(np.unique(pts.run))} runs" if is_trajectory(pts) else ""
    print(f"castlab fit-law: {len(pts)} points ({what}), {len(set(pts.size))} sizes{runs}, "
          f"{len(np.unique(pts.d))} budgets from {src}; predicting new {', '.join(targets)}")
    if cols is None:  # a castlab store: what its checks flag (unconverged teacher, decay left)
        from castlab.sweep.status import flagged_lines

        for line in flagged_lines(frame):
            print(line)
    taus: dict[str, float] = {}
    preds = heldout_predictions(pts, forms, args.heldout_draws, args.level, args.seed, taus)
    table = summarize(preds, forms)
    bounds: dict[str, list] = {}
    bad = unidentified_forms(pts, forms, bounds) if args.form == "auto" else {}
    chosen, common, how, validated = _choose(args, preds, forms, bad)
    _print_table(table, {**excluded, **bad}, args)
    fit = fit_form(chosen, pts)
    if fit.on_bound:
        print(f"note: form {chosen}: {', '.join(fit.on_bound)} ended on a bound and is held "
              "there (the constrained optimum); the runs do not pin it down")
    if args.draws < DEFAULT_DRAWS:
        print(f"note: {args.draws} bootstrap draws (< {DEFAULT_DRAWS}): interval ends are rough")
    boot = bootstrap(fit, pts, draws=args.draws, seed=args.seed)
    boot.tau = float(taus.get(chosen, 0.0))
    summary = param_summary(fit, boot, args.level)
    mark = "" if validated else " - NOT VALIDATED"
    print(f"\nchosen form: {chosen} ({FORMS[chosen].description}){mark} - {how}")
    print(f"parameters ({args.level:.0%} bootstrap intervals, {args.draws} draws, {boot.failed} "
          f"unconverged, {boot.seconds:.1f} s):")
    for name, s in summary.items():
        flag = f"  <- {s['flag']}" if s["flag"] else ""
        print(f"  {name:>16} = {_fmt(s['value']):>10}  [{_fmt(s['lo'])}, {_fmt(s['hi'])}]{flag}")
    extra = (f"extrapolation sd(ln L) = {boot.tau:.4g} per decade (from held-out residuals)"
             if preds.loc[preds["form"] == chosen, "rel_err"].notna().any()
             else "extrapolation sd not calibrated (no held-out split scored)")
    print(f"  in-sample Huber objective {fit.objective:.6g}; run noise sd(ln L) = {boot.sigma:.4g} "
          f"(from {boot.noise_source}); {extra}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"chosen_by": ("heldout" if validated else "fallback") if args.form == "auto"
            else "user", "validated": validated, "why": how, "predict_for": list(targets),
            "compared_on": common, "on_bound": fit.on_bound,
            "params": summary,
            "heldout": json.loads(table.to_json(orient="records")),
            "data": {"source": str(src), "hash": pts.digest(), "runs": len(pts),
                     "method": args.method if cols is None else None,
                     "columns": None if cols is None else vars(cols)}}
    law = Law(fit, boot, pts.sizes(), args.level, meta)
    law.save(out / "law.json")
    written = [out / "law.json"]
    if not args.no_plots:
        from castlab.law.plots import plot_all

        written += plot_all(law, pts, preds[preds["form"] == chosen], out)
    print("wrote " + ", ".join(str(p) for p in written) + f" (castlab {__version__})")
    return 0


def _auto_candidates(pts, targets, src) -> tuple[list[str], dict[str, str]]:
    """Forms that can predict ``targets`` and that ``pts`` can fit; a refusal names every cause."""
    from castlab.law.choose import candidate_forms
    from castlab.law.forms import FORMS
    from castlab.law.targets import forms_that_can, missing

    able = forms_that_can(targets)
    cannot = {f: f"cannot predict new {', '.join(missing(FORMS[f], targets))} "
                 f"(--predict-for {','.join(targets)})" for f in FORMS if f not in able}
    forms, excluded = candidate_forms(pts, able)
    if not forms:
        why = "; ".join(excluded.values()) + ("; " if cannot else "") + \
            "; ".join(f"form {f}: {w}" for f, w in cannot.items())
        raise UserError(f"{src}: no law form fits these runs: {why}")
    return forms, {**excluded, **cannot}


def _choose(args, preds, forms, bad) -> tuple[str, list[str], str, bool]:
    """(form, splits compared on, how it was chosen, whether it was validated on held-out runs).

    With nothing scored on a held-out token split, auto takes the first fittable form of
    ``FALLBACK_ORDER`` and says the law is not validated."""
    from castlab.law.choose import FALLBACK_ORDER, choose_form, fallback_form

    scored = bool(preds[preds["form"].isin(forms) & preds["rel_err"].notna()].shape[0])
    if args.form != "auto":
        return args.form, [], "given by --form", scored
    usable = [f for f in forms if f not in bad]
    if not usable:
        raise UserError("no law form could be fitted to all the runs: "
                        + "; ".join(f"{f}: {w}" for f, w in bad.items()))
    try:
        chosen, common = choose_form(preds, usable, level=args.level)
    except UserError as err:
        chosen = fallback_form(usable)
        return chosen, [], (f"{err}; fell back to {chosen}, the first fittable form in the "
                            f"order {', '.join(FALLBACK_ORDER)}"), False
    return chosen, common, ("lowest held-out loss error on the splits every candidate fitted "
                            f"({', '.join(common)}), held-out coverage weighed"), True


def _print_table(table, excluded, args) -> None:
    print(f"\nheld-out error per form, predicting the top budget D ({args.level:.0%} intervals "
          f"from {args.heldout_draws} draws per split; errors in loss / PPL):")
    print(f"{'form':<12}| {'D/2 loss':>9} {'PPL':>8} | {'D/4 loss':>9} {'PPL':>8} "
          f"| {'size PPL':>9} | {'cover':>6} {'pts':>4} | note")
    for r in table.to_dict("records"):
        print(f"{r['form']:<12}| {_pct(r['D/2_loss_are']):>9} {_pct(r['D/2_are']):>8} "
              f"| {_pct(r['D/4_loss_are']):>9} {_pct(r['D/4_are']):>8} | {_pct(r['size_are']):>9} "
              f"| {_pct(r['tokens_coverage']):>6} {r['tokens_points']:>4} | {r['note']}")
    for name, why in excluded.items():
        print(f"{name:<12}| not chosen: {why}")


def _token_list(text: str) -> list[float]:
    return [float(parse_count(t, "--tokens")) for t in text.split(",") if t.strip()]


def predict_command(args) -> int:
    """castlab predict: PPL with interval at budgets, and/or tokens needed for a target PPL."""
    if args.tokens is None and args.target_ppl is None:
        raise UserError("give --tokens 5M,20M and/or --target-ppl X")
    from castlab.law.lawfile import check_predict_args
    from castlab.law.predict import Law

    check_predict_args(args)
    law = Law.load(args.law)
    label, n = law.resolve(args.model, args.n)
    who = f"{label or 'N'} (N={n:.4g})"
    result: dict = {"law": str(args.law), "form": law.fit.form, "model": label or None, "n": n}
    if args.tokens is not None:
        tokens = _token_list(args.tokens)
        if not tokens:
            raise UserError("--tokens: give at least one budget, e.g. 5M,20M")
        q = law.query(label, n, tokens, args.sparsity, args.dense_loss)
        result["predictions"] = law.predict(q, seed=args.seed)
        result["warnings"] = law.warnings(q, law.fit.predict_log(q))
    if law.meta.get("validated") is False:
        result.setdefault("warnings", []).insert(
            0, f"this law was not validated on held-out runs ({law.meta.get('why', '')})")
    if args.target_ppl is not None:
        q = law.query(label, n, [1.0], args.sparsity, args.dense_loss)
        result["target"] = law.tokens_for_ppl(args.target_ppl, q)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for w in result.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    for r in result.get("predictions", []):
        band = (f"[{r['ppl_lo']:.4g}, {r['ppl_hi']:.4g}] ({r['level']:.0%})"
                if r["ppl_lo"] is not None else f"(no interval: {r['no_interval']})")
        print(f"{who}, {r['tokens']:.4g} tokens: PPL {r['ppl']:.4g} {band}, loss {r['loss']:.4f}")
    t = result.get("target")
    floor = ("this form has no floor" if t is not None and t["asymptote_ppl"] is None
             else None if t is None else f"asymptote PPL {t['asymptote_ppl']:.4g}")
    if t is not None and t["reachable"]:
        band = (f"[{t['tokens_lo']:.4g}, {t['tokens_hi']:.4g}] ({t['level']:.0%})"
                if t["tokens_lo"] is not None else f"(no interval: {t['no_interval']})")
        print(f"{who}: PPL {t['target_ppl']:g} needs {t['tokens']:.4g} tokens {band}; {floor}")
    elif t is not None:
        print(f"{who}: PPL {t['target_ppl']:g} is at or below this law's asymptote "
              f"(PPL {t['asymptote_ppl']:.4g} with unlimited tokens): no budget reaches it")
    return 0

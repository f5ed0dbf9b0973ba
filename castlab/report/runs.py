"""Report tables of the single cells and runs: every cell with its settings, seed noise at the
repeated cells, every run (lambda, prune shock, wall time) and the failed runs.

Like ``castlab.report.tables`` every builder returns a frame of formatted strings.
"""

from __future__ import annotations

from pathlib import PurePath

import pandas as pd
import yaml

from castlab import store
from castlab.errors import UserError
from castlab.paths import is_plain_name, read_regular_file, teachers_root
from castlab.report.tables import (
    DASH,
    TEACHER,
    cells,
    f_int,
    f_num,
    f_pct,
    f_ppl,
    method_rank,
    ok_rows,
    sizes,
    teachers,
)

TEACHER_CONFIG_BYTES = 64 * 2**10  # a run's config.yaml is about 1 KiB


def teacher_info(rows: pd.DataFrame) -> dict[str, dict]:
    """Per model: the teachers' pretraining tokens / seq_len (the first teacher's) and the seeds
    of every teacher found, read from their config.yaml.

    Rows carry the teacher's model directory as ``init`` (``.../teachers/<run id>/model``).
    Rows may come from elsewhere, so ``init`` is never followed as a path: only its run id, a
    plain name, is looked up in this machine's teacher cache (``$CASTLAB_CACHE/teachers``),
    and the config is read bounded. Models whose teachers are not in the cache are left out
    (the tables say 'unknown').
    """
    out: dict[str, dict] = {}
    if "init" not in rows:
        return out
    root = teachers_root()
    pairs = rows.dropna(subset=["init"])[["model", "init"]].drop_duplicates()
    for model, init in pairs.itertuples(index=False):
        run_id = PurePath(str(init)).parent.name
        if not is_plain_name(run_id):
            continue
        try:
            text = read_regular_file(root / run_id / store.CONFIG_FILE, "teacher config",
                                     TEACHER_CONFIG_BYTES)
            data = yaml.safe_load(text)
        except (UserError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("method") == "dense":
            info = out.setdefault(str(model), {k: data.get(k) for k in ("tokens", "seq_len")}
                                  | {"seeds": []})
            info["seeds"] = sorted({*info["seeds"], data.get("seed")}, key=str)
    return out


def ppl_table(rows: pd.DataFrame, teacher: dict[str, dict] | None = None) -> pd.DataFrame:
    """Every (size, method, tokens) cell with its settings: the long form of the headline table.

    ``teacher``: per model the teacher's pretraining settings (``teacher_info``), where known.
    """
    c = cells(rows)
    teach = teachers(rows).set_index("model")
    teacher = teacher or {}
    ok = ok_rows(rows)
    out = []
    for model in sizes(rows):
        mrows = ok[ok["model"] == model]
        n = mrows["params_non_embedding"].iloc[0]
        info = teacher.get(model, {})
        out.append({"size": model, "N (non-emb.)": f_int(n), "method": TEACHER,
                    "tokens": f"{info['tokens']:,} (pretraining)" if info.get("tokens") else
                    "pretraining (unknown)",
                    "tokens/N": f_num(info["tokens"] / n, ".3g") if info.get("tokens") else DASH,
                    "seq_len": str(info.get("seq_len", DASH)), "seeds": ",".join(map(str, info.get("seeds") or  # "seed": earlier law studies
                                            ([info["seed"]] if "seed" in info else []))) or DASH,
                    "PPL": f_ppl(teach.loc[model, "ppl"]),
                    "PPL sd (seeds)": f_ppl(teach.loc[model, "ppl_sd"]),
                    "eval tokens": "/".join(f"{int(v):,}"
                                            for v in sorted(set(mrows["eval_tokens"].dropna()))),
                    "dtype": "/".join(sorted(set(mrows["dtype"].astype(str))))})
        for r in c[c["model"] == model].itertuples():
            out.append({"size": model, "N (non-emb.)": f_int(r.n), "method": r.method,
                        "tokens": f_int(r.tokens), "tokens/N": f_num(r.tokens / r.n, ".3g"),
                        "seq_len": r.seq_len, "seeds": r.seeds, "PPL": f_ppl(r.ppl),
                        "PPL sd (seeds)": f_ppl(r.ppl_sd), "eval tokens": r.eval_tokens,
                        "dtype": r.dtype})
    return pd.DataFrame(out)


def seed_noise(rows: pd.DataFrame) -> pd.DataFrame:
    """Cells run with more than one seed: PPL mean, sd (ddof 1) and sd as a fraction of PPL."""
    c = cells(rows)
    rep = c[c["n_seeds"] > 1]
    return rep.assign(rel_sd=rep["ppl_sd"] / rep["ppl"])


def seed_noise_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Seed noise at the repeated cells as text."""
    s = seed_noise(rows)
    return pd.DataFrame({"size": s["model"], "method": s["method"], "tokens": s["tokens"].map(f_int),
                         "seeds": s["seeds"], "PPL mean": s["ppl"].map(f_ppl),
                         "PPL sd": s["ppl_sd"].map(f_ppl), "sd % of PPL": s["rel_sd"].map(f_pct)},
                        columns=["size", "method", "tokens", "seeds", "PPL mean", "PPL sd",
                                 "sd % of PPL"])


def runs_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every finished run: lambda, prune shock, masked/kept ratio, wall time, tokens/s; plus a sum."""
    ok = ok_rows(rows).copy()
    order = {m: i for i, m in enumerate(sizes(rows))}
    ok["_k"] = ok["model"].map(order) * 1000 + ok["method"].map(lambda m: method_rank(m)[0])
    ok = ok.sort_values(["_k", "tokens", "seed", "run_id"])
    sparse = ok["sparsity"] > 0
    out = pd.DataFrame({
        "run_id": ok["run_id"], "size": ok["model"], "method": ok["method"],
        "tokens": ok["tokens"].map(f_int), "seed": ok["seed"].map(f_int),
        "lambda": ok["lambda_"].map(lambda v: f_num(v, ".3g")),
        "prune shock (nats)": [f_num(v, "+.4f") if s else DASH
                               for v, s in zip(ok["prune_shock"], sparse, strict=True)],
        "masked/kept": [f_num(v, ".4f") if s else DASH
                        for v, s in zip(ok["masked_kept_ratio"], sparse, strict=True)],
        "exact N:M": [("yes" if v else "NO") if s else DASH
                      for v, s in zip(ok["exact_nm"], sparse, strict=True)],
        "wall s": ok["wall_seconds"].map(lambda v: f_num(v, ".1f")),
        "train s": ok["train_seconds"].map(lambda v: f_num(v, ".1f")),
        "tokens/s": ok["tokens_per_second"].map(lambda v: f_int(v))})
    total = ["all runs", f"{len(ok)} runs", "", "", "", "", "", "", "",
             f_num(ok["wall_seconds"].sum(), ".1f"), f_num(ok["train_seconds"].sum(), ".1f"), ""]
    return pd.concat([out, pd.DataFrame([total], columns=out.columns)], ignore_index=True)


def failed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs that failed, with their reason (empty frame when none did)."""
    bad = rows[rows["status"] != "ok"].sort_values("run_id")
    return pd.DataFrame({"run_id": bad["run_id"], "size": bad["model"].astype(str),
                         "method": bad["method"].astype(str), "tokens": bad["tokens"].map(f_int),
                         "reason": bad["reason"].fillna("").astype(str)})

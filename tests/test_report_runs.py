"""castlab.report.tables / runs against hand-computed values: headline, cells with their
settings, teacher convergence, seed noise, runs and failed runs (a store written with
castlab.store.write_row)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from castlab import store
from castlab.report import runs, tables
from castlab.report.figures import cast_seed_noise

TEACHER = {"opt-a": 50.0, "opt-b": 40.0}
N = {"opt-a": 1000, "opt-b": 4000}
# (model, method, tokens, seed, ppl): hand-chosen so every expectation below is computable by hand.
RUNS = [
    ("opt-a", "dense-kd", 1000, 0, 49.9), ("opt-a", "dense-kd", 2000, 0, 49.8),
    ("opt-a", "dense-kd", 4000, 0, 49.0), ("opt-a", "dense-kd", 4000, 1, 49.5),
    ("opt-a", "dense-kd", 4000, 2, 50.5),
    ("opt-a", "cast", 1000, 0, 80.0), ("opt-a", "cast", 2000, 0, 70.0),
    ("opt-a", "cast", 4000, 0, 60.0), ("opt-a", "cast", 4000, 1, 62.0),
    ("opt-a", "cast", 4000, 2, 64.0),
    ("opt-a", "sr-ste", 2000, 0, 72.0), ("opt-a", "ast", 2000, 0, 69.0),
    ("opt-a", "magnitude", 0, 0, 90.0), ("opt-a", "wanda", 0, 0, 85.0),
    ("opt-a", "sparsegpt", 0, 0, 81.0),
    ("opt-b", "dense-kd", 1000, 0, 39.5), ("opt-b", "dense-kd", 2000, 0, 39.2),
    ("opt-b", "dense-kd", 4000, 0, 38.8),
    ("opt-b", "cast", 1000, 0, 66.0), ("opt-b", "cast", 2000, 0, 58.0),
    ("opt-b", "cast", 4000, 0, 59.0),
    ("opt-b", "magnitude", 0, 0, 90.0), ("opt-b", "wanda", 0, 0, 80.0),
    ("opt-b", "sparsegpt", 0, 0, 65.0),
]


def make_store(root: Path) -> Path:
    """A results store of RUNS (plus one failed run), written with castlab.store.write_row."""
    for i, (model, method, tokens, seed, ppl) in enumerate(RUNS):
        sparse = method != "dense-kd"
        row = {"run_id": f"run{i:02d}", "sweep": "t", "method": method, "model": model,
               "params_non_embedding": N[model], "sparsity": 0.5 if sparse else 0.0,
               "tokens": tokens, "tokens_per_param": tokens / N[model], "seq_len": 64,
               "seed": seed, "dtype": "fp32", "lambda_": 0.01 if method == "cast" else math.nan,
               "teacher_eval_loss": math.log(TEACHER[model]), "teacher_ppl": TEACHER[model],
               "eval_loss": math.log(ppl), "ppl": ppl, "eval_tokens": 2048,
               "prune_shock": 0.125 if sparse else 0.0, "masked_kept_ratio": 0.25 if sparse else math.nan,
               "exact_nm": sparse, "wall_seconds": 10.0 + i, "train_seconds": 5.0,
               "tokens_per_second": 200.0, "status": "ok", "reason": ""}
        run = root / row["run_id"]
        store.write_row(run, row)
        store.write_curve(run, [{"step": 1, "tokens": 64, "train_loss": 5.0}])
        (run / store.CONFIG_FILE).write_text(f"method: {method}\n")
    store.write_row(root / "bad", {"run_id": "bad", "method": "cast", "model": "opt-b",
                                   "tokens": 8000, "status": "failed",
                                   "reason": "loss became nan at step 3"})
    return root


@pytest.fixture
def rows(tmp_path):
    return store.load(make_store(tmp_path / "store"))



def by_col(df, col, value):
    return df[df[col] == value].iloc[0]


def test_convergence_check_hand_computed(rows):
    t = tables.convergence_table(rows)
    a, b = by_col(t, "size", "opt-a"), by_col(t, "size", "opt-b")
    # opt-a: mean of (50-49)/50, (50-49.5)/50, (50-50.5)/50 = (2% + 1% - 1%) / 3
    sd = statistics.stdev([49.0, 49.5, 50.5])
    assert (a["teachers"], a["teacher PPL"], a["dense-kd PPL"]) == ("1", "50.00",
                                                                    f"49.67 ± {sd:.2f}")
    assert (a["improvement"], a["check"]) == ("+0.67%", "pass (<= 2%)")
    assert (b["improvement"], b["check"]) == ("+3.00%", "FAIL: improves by more than 2%")


def test_seed_noise_hand_computed(rows):
    t = runs.seed_noise_table(rows)
    assert list(zip(t["size"], t["method"], strict=True)) == [("opt-a", "dense-kd"), ("opt-a", "cast")]
    cast = by_col(t, "method", "cast")
    assert (cast["seeds"], cast["PPL mean"], cast["PPL sd"], cast["sd % of PPL"]) == \
        ("0,1,2", "62.00", "2.00", "3.23%")  # sd(60, 62, 64) = 2, 2/62
    kd = [49.0, 49.5, 50.5]
    assert by_col(t, "method", "dense-kd")["sd % of PPL"] == \
        f"{100 * statistics.stdev(kd) / statistics.mean(kd):.2f}%"


def test_headline_and_cells(rows):
    h = tables.headline_table(rows)
    assert list(h.columns) == ["size", "method", "0 tokens (from teacher)", "1,000", "2,000", "4,000"]
    assert list(h["method"][h["size"] == "opt-a"]) == [
        "dense teacher", "dense-kd", "cast", "sr-ste", "ast", "magnitude", "wanda", "sparsegpt"]
    cast = h[(h["size"] == "opt-a") & (h["method"] == "cast")].iloc[0]
    assert (cast["1,000"], cast["4,000"], cast["0 tokens (from teacher)"]) == ("80.00", "62.00 ± 2.00", "")
    assert h[(h["size"] == "opt-b") & (h["method"] == "dense teacher")].iloc[0, 2] == "40.00"
    long = runs.ppl_table(rows, {"opt-a": {"tokens": 4_000_000, "seq_len": 64, "seed": 0}})
    teach = long[(long["size"] == "opt-a") & (long["method"] == "dense teacher")].iloc[0]
    assert (teach["tokens"], teach["tokens/N"]) == ("4,000,000 (pretraining)", "4e+03")
    assert long[long["size"] == "opt-b"].iloc[0]["tokens"] == "pretraining (unknown)"
    assert set(long["eval tokens"]) == {"2,048"} and set(long["dtype"]) == {"fp32"}


def test_runs_and_failed_tables(rows):
    t = runs.runs_table(rows)
    total = t.iloc[-1]
    assert total["run_id"] == "all runs" and total["size"] == f"{len(RUNS)} runs"
    assert total["wall s"] == f"{sum(10.0 + i for i in range(len(RUNS))):.1f}"
    cast = by_col(t, "run_id", "run05")
    assert (cast["lambda"], cast["prune shock (nats)"], cast["masked/kept"], cast["exact N:M"]) == \
        ("0.01", "+0.1250", "0.2500", "yes")
    kd = by_col(t, "run_id", "run00")
    assert (kd["prune shock (nats)"], kd["masked/kept"]) == (tables.DASH, tables.DASH)
    f = runs.failed_table(rows)
    assert list(f["reason"]) == ["loss became nan at step 3"]


def test_cast_seed_noise_is_the_residual_band(rows):
    # opt-a's cast cell at 4,000 tokens (60, 62, 64): sd 2 over mean 62; opt-b has no repeats
    assert cast_seed_noise(rows) == pytest.approx(2 / 62)
    assert math.isnan(cast_seed_noise(rows[rows["model"] == "opt-b"]))


def _cached_teacher(cache, run_id: str, seed: int, **extra) -> str:
    import yaml

    run = cache / "teachers" / run_id
    (run / "model").mkdir(parents=True)
    (run / store.CONFIG_FILE).write_text(yaml.safe_dump(
        {"method": "dense", "tokens": 3_000_000, "seq_len": 64, "seed": seed, **extra}))
    return str(run / "model")


def test_two_teachers_per_size_are_both_in_the_cells_table(tmp_path, monkeypatch):
    """Runs started from two teachers of one size (teacher_seeds [0, 1]): the cells table's
    teacher row lists both seeds and their spread (it showed one teacher's seed, no sd, beside
    the two teachers' mean PPL)."""
    import pandas as pd

    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    inits = [_cached_teacher(tmp_path / "cache", f"dense-t{seed}", seed) for seed in (0, 1)]
    # rows written on another machine name that machine's cache: the run id is what counts
    inits[1] = inits[1].replace(str(tmp_path / "cache"), "/elsewhere/cache")
    rows = pd.DataFrame({"model": ["opt-a"] * 3, "init": [inits[0], inits[1], inits[0]]})
    assert runs.teacher_info(rows) == {"opt-a": {"tokens": 3_000_000, "seq_len": 64,
                                                 "seeds": [0, 1]}}
    store_rows = store.load(make_store(tmp_path / "store"))
    ppl = {0: 50.0, 1: 52.0}
    two = store_rows[store_rows["model"] == "opt-a"].assign(
        teacher_ppl=lambda d: d["seed"].map(lambda s: ppl[s % 2]))
    long = runs.ppl_table(two, {"opt-a": {"tokens": 3_000_000, "seq_len": 64, "seeds": [0, 1]}})
    teach = long[long["method"] == "dense teacher"].iloc[0]
    assert (teach["seeds"], teach["PPL"], teach["PPL sd (seeds)"]) == \
        ("0,1", "51.00", f"{statistics.stdev([50.0, 52.0]):.2f}")


def test_teacher_configs_are_read_only_from_the_teacher_cache_and_bounded(tmp_path, monkeypatch):
    """Rows are untrusted: an ``init`` outside the cache is not followed (only its run id is
    looked up in $CASTLAB_CACHE/teachers), ids that are not plain names are skipped, and an
    oversized or non-regular config is skipped, not read."""
    import os

    import pandas as pd
    import yaml

    cache = tmp_path / "cache"
    monkeypatch.setenv("CASTLAB_CACHE", str(cache))
    outside = tmp_path / "outside" / "dense-x"
    (outside / "model").mkdir(parents=True)
    (outside / store.CONFIG_FILE).write_text(yaml.safe_dump(
        {"method": "dense", "tokens": 1, "seq_len": 1, "seed": 9}))
    big = _cached_teacher(cache, "dense-big", 0, pad="x" * runs.TEACHER_CONFIG_BYTES)
    fifo_run = cache / "teachers" / "dense-fifo"
    (fifo_run / "model").mkdir(parents=True)
    os.mkfifo(fifo_run / store.CONFIG_FILE)  # would block a plain read forever
    rows = pd.DataFrame({"model": ["opt-a", "opt-b", "opt-c", "opt-d"],
                         "init": [str(outside / "model"), big, str(fifo_run / "model"),
                                  "../../../etc/model"]})
    assert runs.teacher_info(rows) == {}
    ok = _cached_teacher(cache, "dense-ok", 1)
    assert runs.teacher_info(pd.DataFrame({"model": ["opt-e"], "init": [ok]})) == \
        {"opt-e": {"tokens": 3_000_000, "seq_len": 64, "seeds": [1]}}

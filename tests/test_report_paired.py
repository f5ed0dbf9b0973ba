"""castlab.report.paired: pairing by (size, seed), the paired t and sign tests by hand, mask life."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from castlab.report import paired


def row(model, method, tokens, seed, loss, n=1000, **extra):
    return {"model": model, "method": method, "tokens": tokens, "seed": seed, "eval_loss": loss,
            "ppl": math.exp(loss), "status": "ok", "params_non_embedding": n, **extra}


def frame():
    rows = [row("a", "cast", 200, 0, 4.00), row("a", "cast", 200, 1, 4.10),
            row("a", "cast", 100, 0, 9.0),  # a smaller budget: never paired
            row("a", "sr-ste", 200, 0, 4.20), row("a", "sr-ste", 200, 1, 4.05),
            row("a", "sr-ste", 200, 5, 1.0),  # no cast run with seed 5: unpaired
            row("a", "wanda", 0, 0, 4.50), row("a", "wanda", 0, 1, 4.40),
            row("b", "cast", 400, 0, 3.00, n=4000), row("b", "cast", 400, 1, 3.10, n=4000),
            row("b", "sr-ste", 400, 0, 3.30, n=4000), row("b", "sr-ste", 400, 1, 3.20, n=4000),
            row("b", "sr-ste", 200, 0, 0.5, n=4000),  # another budget than cast's largest
            row("b", "dense-kd", 400, 0, 2.9, n=4000)]
    return pd.DataFrame(rows)


def test_pairs_match_size_seed_and_budget():
    p = paired.pairs(frame(), "sr-ste")
    assert list(zip(p["model"], p["seed"], strict=True)) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert p["d"].tolist() == pytest.approx([-0.20, 0.05, -0.30, -0.10])
    w = paired.pairs(frame(), "wanda")  # one-shot: 0 tokens, paired by calibration seed
    assert w["d"].tolist() == pytest.approx([-0.50, -0.30])


def test_paired_t_and_sign_test_by_hand():
    tests = paired.paired_tests(frame()).set_index("baseline")
    d = [-0.20, 0.05, -0.30, -0.10]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(4))
    srste = tests.loc["sr-ste"]
    assert srste["pairs"] == 4 and srste["cast_wins"] == 3 and srste["sizes"] == 2
    assert srste["t"] == pytest.approx(t)
    assert srste["ppl_change"] == pytest.approx(math.exp(statistics.mean(d)) - 1)
    # two-sided sign test, 3 wins of 4: P(X >= 3) + P(X <= 1) = 5/16 + 5/16
    assert srste["p_sign"] == pytest.approx(10 / 16)
    assert tests.loc["wanda", "p_sign"] == pytest.approx(0.5)  # 2 of 2: 2 * 1/4
    assert "ast" not in tests.index  # no ast run: no line


def test_best_sparse_and_mask_life_tables():
    rows = frame()
    for col, value in {"mask_drift_half": 0.1, "mask_drift": 0.2, "mask_flip_rate": 1e-3,
                       "masked_step_lr": 1.5, "prune_shock": 0.001, "masked_kept_ratio": 0.01}.items():
        rows[col] = value
    best = paired.best_sparse_table(rows).set_index("size")
    assert best.loc["b", "best sparse"] == "cast" and best.loc["a", "tokens"] == "200"
    assert best.loc["a", "best sparse"] == "sr-ste"  # its unpaired seed-5 run counts in the mean
    sd = statistics.stdev([math.exp(4.0), math.exp(4.1)])
    assert best.loc["a", "cast"] == f"{(math.exp(4.0) + math.exp(4.1)) / 2:.2f} ± {sd:.2f} (n=2)"
    assert best.loc["b", "dense-kd"] == f"{math.exp(2.9):.2f} (n=1)"
    life = paired.mask_life_table(rows)
    assert set(life["method"]) == {"cast", "sr-ste"}
    assert life.iloc[0]["drift at T/2"] == "10.00%" and life.iloc[0]["masked step / lr"] == "1.5"

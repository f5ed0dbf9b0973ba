"""teacher_seeds: several teachers per preset, run seed s paired with teacher seed s % k; a sweep
without them plans exactly what it planned before; the GPU study file plans what it promises."""

from pathlib import Path

import pytest
import yaml

from castlab.errors import UserError
from castlab.sweep.plan import build_plan
from castlab.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "ts", "models": ["opt-tiny"], "methods": ["cast", "magnitude"],
        "budgets": [1024, 4096], "seeds": [0], "corpus": "default",
        "extra_seeds": [{"budgets": ["largest"], "methods": ["cast"], "seeds": [1, 2]}],
        "teacher": {"tokens": "2k"}, "train": {"seq_len": 32, "batch_size": 2}}


def plan_of(tmp_path, **changes):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes, "results": str(tmp_path / "r")}))
    return build_plan(load_sweep(path))


def test_teacher_seeds_pair_run_seeds_with_teachers(tmp_path):
    plan = plan_of(tmp_path, teacher_seeds=[0, 1])
    teachers = [r for r in plan if r.kind == "teacher"]
    assert [t.config.seed for t in teachers] == [0, 1]
    by_seed = {t.config.seed: t.run_dir for t in teachers}
    top = [r for r in plan if r.kind == "run" and r.config.tokens == 4096
           and r.config.method == "cast"]
    assert sorted(r.config.seed for r in top) == [0, 1, 2]
    for run in top:  # seeds 0 and 2 start from teacher 0, seed 1 from teacher 1
        assert run.needs == by_seed[run.config.seed % 2]
        assert run.config.init == str(by_seed[run.config.seed % 2] / "model")


def test_without_teacher_seeds_the_plan_is_unchanged(tmp_path):
    """One teacher of the default seed 0: listing teacher_seeds [0] must plan the same run ids
    (the single-teacher path and the teacher-seed path agree), so existing sweeps keep theirs."""
    before = [r.run_id for r in plan_of(tmp_path)]
    assert [r.run_id for r in plan_of(tmp_path, teacher_seeds=[0])] == before
    assert len([r for r in plan_of(tmp_path) if r.kind == "teacher"]) == 1


def test_teacher_seed_conflicts_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"teacher_seeds: a seed is listed twice"):
        plan_of(tmp_path, teacher_seeds=[1, 1])
    with pytest.raises(UserError, match=r"teacher\.seed: set by teacher_seeds"):
        plan_of(tmp_path, teacher_seeds=[0, 1], teacher={"tokens": "2k", "seed": 3})


def test_gpu_study_file_plans_the_promised_grid():
    spec = load_sweep(ROOT / "sweeps" / "opt_family_gpu.yaml")
    plan = build_plan(spec)
    teachers = [r for r in plan if r.kind == "teacher"]
    runs = [r for r in plan if r.kind == "run"]
    assert len(teachers) == 2 * len(spec.models) >= 8
    budgets = sorted({r.config.tokens for r in runs if r.config.method == "cast"})
    assert len(budgets) >= 5 and budgets[-1] / budgets[0] >= 16
    steps = budgets[0] / (runs[0].config.seq_len * runs[0].config.batch_size)
    assert steps >= 500
    for method in ("cast", "dense-kd"):
        for tokens in (budgets[0], budgets[-1]):
            for model in spec.models:
                seeds = {r.config.seed for r in runs if (r.config.method, r.config.tokens,
                                                        r.config.model) == (method, tokens, model)}
                assert len(seeds) == 3, (method, tokens, model)
    for method in ("sr-ste", "ast", "magnitude", "wanda", "sparsegpt"):
        assert {r.config.model for r in runs if r.config.method == method} == set(spec.models)

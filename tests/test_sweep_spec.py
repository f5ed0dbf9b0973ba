"""Sweep files: the shipped ones load and plan; 50+ malformed ones fail with one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from castlab import cli
from castlab.models import build_preset, count_parameters
from castlab.sweep.plan import build_plan
from castlab.sweep.spec import load_sweep, parse_budget, resolve_budget

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """castlab.cli.main with only the sweep commands registered (isolated from other modules)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["castlab.sweep.commands"])
    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")  # no re-exec of the test process

    def call(*argv):
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))


def test_shipped_sweeps_validate_and_plan(tmp_path):
    expected = {"smoke.yaml": 13, "opt_family.yaml": 93, "opt_family_long.yaml": 13,
                "opt_hf.yaml": 45, "opt_family_gpu.yaml": 116, "opt600k_long.yaml": 7,
                "gpu_window.yaml": 39}
    assert sorted(p.name for p in SWEEPS.glob("*.yaml")) == sorted(expected)
    for name, count in expected.items():
        plan = build_plan(load_sweep(SWEEPS / name))
        assert len(plan) == count, name
        assert len({r.run_id for r in plan}) == count
        kinds = [r.kind for r in plan]
        assert kinds == sorted(kinds, key=lambda k: k != "teacher")  # teachers first
        print(f"\n{name}: {count} runs, {kinds.count('teacher')} teachers")


def test_long_companion_reuses_the_opt_family_teacher_and_starts_where_decay_completes():
    main = build_plan(load_sweep(SWEEPS / "opt_family.yaml"))
    long = build_plan(load_sweep(SWEEPS / "opt_family_long.yaml"))
    teacher = next(r.run_id for r in long if r.kind == "teacher")
    assert teacher in {r.run_id for r in main if r.kind == "teacher"}  # the cached one, shared
    main_budgets = sorted({r.config.tokens for r in main if r.kind == "run" and r.config.tokens})
    long_budgets = sorted({r.config.tokens for r in long if r.kind == "run"})
    # it starts at one of the main study's budgets (512 steps) and runs 8x beyond it
    assert long_budgets[0] in main_budgets and long_budgets[-1] == 8 * long_budgets[0]


def test_opt600k_long_plans_the_shipped_rows_from_the_opt_family_teacher():
    main = build_plan(load_sweep(SWEEPS / "opt_family.yaml"))
    long = build_plan(load_sweep(SWEEPS / "opt600k_long.yaml"))
    teacher = next(r.run_id for r in long if r.kind == "teacher")
    assert teacher in {r.run_id for r in main if r.kind == "teacher"}
    shipped = SWEEPS.parent / "results" / "reference" / "opt600k_long"
    assert {r.run_id for r in long if r.kind == "run"} == {
        d.name for d in shipped.iterdir() if (d / "result.parquet").exists()}


def test_opt_family_design():
    """3 sizes, 5 geometric budgets spanning >= 16x (so <= D/4 keeps 3), smallest >= 64 steps,
    3 CAST seeds at the largest and the smallest budget (seed noise where the law is fitted and
    where it predicts), 3 seeds of every trained and seeded method at the largest budget (paired
    comparison) over 2 teacher seeds per size, the recipe of RECIPE_STUDY.md for CAST and its
    twin alike, SR-STE / AST at their tuned settings."""
    spec = load_sweep(SWEEPS / "opt_family.yaml")
    plan = build_plan(spec)
    runs = [r.config for r in plan if r.kind == "run"]
    assert len(spec.models) == 3
    for method in ("cast", "dense-kd"):
        for model in spec.models:
            cells = sorted({c.tokens for c in runs if c.method == method and c.model == model})
            assert len(cells) == 5
            ratios = [b / a for a, b in zip(cells, cells[1:], strict=False)]
            step = (cells[-1] / cells[0]) ** (1 / 4)  # geometric up to whole optimizer steps
            assert all(abs(r / step - 1) < 0.01 for r in ratios), ratios
            assert cells[-1] / cells[0] >= 16
            assert sum(c <= cells[-1] / 4 for c in cells) == 3
            first = next(c for c in runs if c.tokens == cells[0])
            assert cells[0] / (first.batch_size * first.seq_len) >= 64
            for budget in (cells[0], cells[-1]):
                seeds = sorted(c.seed for c in runs
                               if c.method == method and c.model == model and c.tokens == budget)
                want = [0, 1, 2] if method == "cast" or budget == cells[-1] else [0]
                assert seeds == want, (method, model, budget)
    top = max(c.tokens for c in runs)
    for method in ("cast", "sr-ste", "ast", "wanda", "sparsegpt", "magnitude"):
        for model in spec.models:
            seeds = sorted(c.seed for c in runs if c.method == method and c.model == model
                           and c.tokens in (top, 0))
            # magnitude pruning draws nothing: its seeds share one run id, planned once
            assert seeds == ([0] if method == "magnitude" else [0, 1, 2]), (method, model)
    tuned = {c.method: c for c in runs if c.method in ("sr-ste", "ast")}
    assert tuned["sr-ste"].kd and tuned["sr-ste"].srste_decay == 2e-3
    assert tuned["ast"].ast_decay == 2.0 and tuned["ast"].kd is None  # AST distils by default
    teachers = [r for r in plan if r.kind == "teacher"]
    assert sorted((r.config.model, r.config.seed) for r in teachers) == sorted(
        (m, s) for m in spec.models for s in (0, 1))
    assert {r.config.tokens for r in teachers} == {3_000_000}
    # run seed s starts from teacher s mod 2: seeds 0 and 2 share one, seed 1 has the other
    by_id = {r.run_dir: r.config.seed for r in teachers}
    for run in (r for r in plan if r.kind == "run" and r.needs is not None):
        assert by_id[run.needs] == run.config.seed % 2
    # one recipe for CAST and its twin; the decoupled masked decay is CAST's alone
    for c in runs:
        if c.method in ("cast", "dense-kd"):
            assert (c.lr_teacher_fraction, c.warmup_frac, c.adams_bias_correct) == (0.03, 0.0, True)
            assert c.masked_decay_ratio == (48.0 if c.method == "cast" else None)
        elif c.method in ("sr-ste", "ast"):  # the recipe they were tuned with
            assert (c.lr_teacher_fraction, c.warmup_frac) == (0.1, 0.05)
    for model in spec.models:  # '40xP' against independently counted params
        in_scope = count_parameters(build_preset(model, vocab_size=8192)).in_scope
        assert resolve_budget(parse_budget("40xP", "budgets"), in_scope) == 40 * in_scope


def test_plan_links_teachers_and_ids_ignore_paths(tmp_path, monkeypatch):
    text = (SWEEPS / "smoke.yaml").read_text()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(text.replace("results/smoke", str(tmp_path / "r1")))
    b.write_text(text.replace("results/smoke", str(tmp_path / "r2")).replace("name: smoke",
                                                                             "name: other"))
    plan_a, plan_b = build_plan(load_sweep(a)), build_plan(load_sweep(b))
    assert [r.run_id for r in plan_a] == [r.run_id for r in plan_b]  # not sweep name or results dir
    teacher = plan_a[0]
    assert teacher.kind == "teacher" and teacher.config.init is None
    assert teacher.run_dir == tmp_path / "cache" / "teachers" / teacher.run_id
    for run in plan_a[1:]:
        assert run.needs == teacher.run_dir
        assert run.config.init == str(teacher.run_dir / "model")
        assert run.run_dir == tmp_path / "r1" / run.run_id
        assert run.run_id == run.config.run_id()


def test_lambda_per_budget_and_xp_budgets(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "models": ["opt-tiny"], "methods": ["cast", "magnitude"],
        "budgets": ["10xP", "2M"], "lambda_": [0.5, "auto"], "seeds": [0, 3],
        "teacher": {"tokens": "100k"}, "train": {"batch_size": 4}}))
    plan = build_plan(load_sweep(path))
    runs = {(r.config.method, r.config.tokens, r.config.seed): r.config for r in plan[1:]}
    in_scope = count_parameters(build_preset("opt-tiny", vocab_size=8192)).in_scope
    two_m = 3906 * 4 * 128  # '2M' rounded down to whole steps of 4 x 128 tokens (plan.whole_steps)
    assert sorted(runs) == sorted([("cast", 10 * in_scope, 0), ("cast", 10 * in_scope, 3),
                                   ("cast", two_m, 0), ("cast", two_m, 3),
                                   ("magnitude", 0, 0)])  # magnitude reads no seed: one run
    assert runs[("cast", 10 * in_scope, 0)].lambda_ == 0.5
    assert runs[("cast", two_m, 3)].lambda_ == "auto"
    assert all(c.batch_size == 4 for c in runs.values())


BASE = {"name": "t", "models": ["opt-tiny"], "methods": ["cast"], "budgets": ["64k"],
        "teacher": {"tokens": "1M"}}

# (file contents: a dict merged into BASE, a dict with None meaning "delete key", or raw text),
# and a fragment the one-line message must contain.
MALFORMED = [
    ("name: [unclosed", "invalid YAML"),
    ("a: b: c", "invalid YAML at line 1"),
    ("- a\n- list", "expected a mapping"),
    ("", "empty sweep file"),
    (b"\xff\xfe\x00bad", "not a text file"),
    ({"name": 5}, ".name: got 5"),
    ({"name": "has space"}, ".name: got 'has space'"),
    ({"name": None}, "missing required key 'name'"),
    ({"models": None}, "missing required key 'models'"),
    ({"models": []}, ".models: empty"),
    ({"models": "opt-tiny"}, ".models: got 'opt-tiny', allowed list"),
    ({"models": ["opt-7x"]}, ".models[0]: unknown model 'opt-7x'"),
    ({"models": ["opt-tiny", "opt-tiny"]}, "'opt-tiny' is listed twice"),
    ({"models": [5]}, ".models[0]: got 5"),
    ({"methods": []}, ".methods: empty"),
    ({"methods": ["cats"]}, "unknown method 'cats'"),
    ({"methods": ["dense"]}, "'dense' teachers are planned automatically"),
    ({"methods": ["cast", "cast"]}, "'cast' is listed twice"),
    ({"methods": [{"name": "cast", "budget": ["1M"]}]}, "methods[0]: unknown key 'budget'"),
    ({"methods": [{"budgets": ["1M"]}]}, "methods[0]: missing required key 'name'"),
    ({"methods": [{"name": "wanda", "budgets": ["1M"]}]}, "one-shot method 'wanda'"),
    ({"methods": [{"name": "cast", "settings": {"lr": "hi"}}]}, ".lr: got 'hi'"),
    ({"methods": [{"name": "cast", "budgets": ["-1M"]}]}, "methods[0].budgets[0]"),
    ({"budgets": []}, ".budgets: empty"),
    ({"budgets": ["-2M"]}, ".budgets[0]: got '-2M', allowed a positive count"),
    ({"budgets": [-5]}, ".budgets[0]: got -5, allowed a positive count"),
    ({"budgets": [0]}, ".budgets[0]: got 0"),
    ({"budgets": ["lots"]}, ".budgets[0]: got 'lots'"),
    ({"budgets": ["0xP"]}, "allowed a positive multiple like '20xP'"),
    ({"budgets": ["20xQ"]}, ".budgets[0]: got '20xQ'"),
    ({"budgets": ["1M", "1M"]}, "a budget is listed twice"),
    ({"budgets": "1M"}, ".budgets: got '1M', allowed list"),
    ({"budgets": [True]}, ".budgets[0]: got True"),
    ({"budgets": ["1M", "2M"], "lambda_": [0.1]}, "1 values for 2 budgets"),
    ({"lambda_": -1}, ".lambda_: got -1"),
    ({"lambda_": "big"}, ".lambda_: got 'big'"),
    ({"lambda": 0.1}, "unknown key 'lambda'"),
    ({"seeds": []}, ".seeds: empty"),
    ({"seeds": [0.5]}, ".seeds[0]: got 0.5"),
    ({"seeds": 3}, ".seeds: got 3"),
    ({"extra_seeds": [{"seeds": [1], "models": ["opt-100k"]}]}, "'opt-100k' is not in models"),
    ({"extra_seeds": [{"seeds": [1], "budgets": ["9M"]}]}, "'9M' is not in budgets"),
    ({"extra_seeds": [{"seeds": []}]}, "extra_seeds[0].seeds: empty"),
    ({"extra_seeds": [{"seeds": [1], "methods": ["ast"]}]}, "'ast' is not in methods"),
    ({"extra_seeds": [{"seed": [1]}]}, "extra_seeds[0]: unknown key 'seed'"),
    ({"teacher": {}}, ".teacher.tokens: missing"),
    ({"teacher": {"tokens": "-1M"}}, ".teacher.tokens: got '-1M'"),
    ({"teacher": {"tokens": "1M", "method": "cast"}}, ".teacher.method: set by the sweep"),
    ({"teacher": {"tokens": "1M", "lr": "fast"}}, "teacher.lr: got 'fast'"),
    ({"train": {"tokens": "1M"}}, ".train.tokens: set by the sweep"),
    ({"train": {"lr": -1}}, ".train.lr: got -1.0"),
    ({"train": {"batchsize": 4}}, ".train: unknown key 'batchsize'"),
    ({"train": {"seq_len": "long"}}, ".train.seq_len: got 'long'"),
    ({"train": []}, ".train: got [], allowed mapping"),
    ({"eval": {"every": 0}}, "eval_every: got 0"),
    ({"eval": {"tokens": "x"}}, ".eval.tokens: got 'x'"),
    ({"eval": {"often": True}}, ".eval: unknown key 'often'"),
    ({"backend": "kubernetes"}, "unknown backend 'kubernetes'"),
    ({"backend": {"name": "ray", "cpus": 2}}, ".backend: unknown key 'cpus'"),
    ({"backend": {"num_cpus": 2}}, ".backend.name: missing"),
    ({"backend": {"name": "slurm", "cluster": "aws"}}, ".backend.cluster: got 'aws'"),
    ({"models": ["facebook/opt-125m"]}, ".train.lr: required for HF models"),
    ({"budget": ["1M"]}, "unknown key 'budget'"),
    ({"vocab_size": "big"}, ".vocab_size: got 'big'"),
    ({"vocab_size": 0}, ".vocab_size: got 0"),
    ({"results": 5}, ".results: got 5"),
]


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        data = {**BASE, **content}
        path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))


def test_base_of_malformed_cases_is_valid(tmp_path, run_cli):
    _write(tmp_path / "ok.yaml", {})
    code, out, err = run_cli("sweep", str(tmp_path / "ok.yaml"), "--dry-run")
    assert code == 0, err
    assert "2 runs (2 pending)" in out


def test_malformed_sweep_files_fail_with_one_line(tmp_path, run_cli):
    assert len(MALFORMED) >= 50
    for i, (content, fragment) in enumerate(MALFORMED):
        path = tmp_path / f"bad{i}.yaml"
        _write(path, content)
        code, out, err = run_cli("sweep", str(path), "--dry-run")
        assert code == 2, (i, content, out, err)
        assert "Traceback" not in err and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, (i, err)
        assert lines[0].startswith(f"castlab sweep: error: {path}"), (i, lines[0])
        assert fragment in lines[0], (i, fragment, lines[0])
    print(f"\n{len(MALFORMED)} malformed sweep files: each exit 2 with one line naming the problem")


def test_missing_file(tmp_path, run_cli):
    code, _, err = run_cli("sweep", str(tmp_path / "nope.yaml"), "--dry-run")
    assert code == 2 and "nope.yaml: no such sweep file" in err


def test_eval_zeroshot_becomes_train_settings(tmp_path):
    text = (SWEEPS / "smoke.yaml").read_text().replace(
        "  every: 50", "  every: 50\n  zeroshot: [piqa, boolq]\n  zeroshot_limit: 20")
    path = tmp_path / "zs.yaml"
    path.write_text(text)
    runs = [r.config for r in build_plan(load_sweep(path)) if r.kind == "run"]
    assert runs and all(c.zeroshot_tasks == "piqa,boolq" and c.zeroshot_limit == 20 for c in runs)
    plain = [r.config for r in build_plan(load_sweep(SWEEPS / "smoke.yaml")) if r.kind == "run"]
    assert [c.run_id() for c in runs] == [c.run_id() for c in plain]

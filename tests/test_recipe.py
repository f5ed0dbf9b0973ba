"""Recipe options of continued training (issue 21): the wsd schedule, AdamS's decoupled masked
decay, their YAML round trip and run ids, and the local backend's concurrent CPU runs."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch
import yaml

from castlab.config import TrainConfig, from_dict, load_yaml, save_yaml
from castlab.errors import UserError
from castlab.schedule import lr_at
from castlab.sparsity import adams
from castlab.sparsity.adams import AdamS
from tests.test_adams import RefAdamS, make_tensors

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


# ---- config: round trip, validation, run ids ------------------------------------------------


def test_recipe_options_round_trip_through_yaml(tmp_path):
    cfg = from_dict(TrainConfig, {"method": "cast", "model": "opt-100k", "tokens": "48k",
                                  "lr_schedule": "wsd", "masked_decay_ratio": 3,
                                  "lr_teacher_fraction": 0.03, "warmup_frac": 0.0})
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(TrainConfig, tmp_path / "c.yaml")
    assert back == cfg and back.masked_decay_ratio == 3.0 and back.lr_schedule == "wsd"
    assert back.run_id() == cfg.run_id()


@pytest.mark.parametrize("data, message", [
    ({"masked_decay_ratio": -1.0}, "train.masked_decay_ratio: got -1.0, allowed a number >= 0"),
    ({"lr_schedule": "linear"}, "train.lr_schedule: got 'linear', allowed 'cosine'"),
])
def test_bad_recipe_options_name_the_field(data, message):
    with pytest.raises(UserError, match=message):
        from_dict(TrainConfig, {"method": "cast", "model": "m", **data}, where="train")


def test_shipped_runs_keep_their_ids():
    # every shipped row of the studies run under today's id scheme (opt_family_v1 and
    # opt_family_long predate it) hashes to its folder name: the new fields, at their defaults,
    # enter no id (a default that entered the hash would orphan every stored run)
    configs = sorted(path for folder in ("opt_family", "opt_family_v2", "opt600k_long")
                     for path in (REFERENCE / folder).glob("*/config.yaml"))
    assert len(configs) > 50
    for path in configs:
        assert load_yaml(TrainConfig, path).run_id() == path.parent.name, path


def test_masked_decay_enters_only_cast_ids_and_only_when_set():
    def rid(method, **kw):
        return TrainConfig(method=method, model="m", init="t", **kw).run_id()

    assert rid("cast", masked_decay_ratio=3.0) != rid("cast")
    assert rid("cast", masked_decay_ratio=3.0) != rid("cast", masked_decay_ratio=1.0)
    assert rid("dense-kd", masked_decay_ratio=3.0) == rid("dense-kd")
    assert rid("ast", masked_decay_ratio=3.0) == rid("ast")
    assert rid("cast", lr_schedule="wsd") != rid("cast")


# ---- the wsd schedule -------------------------------------------------------------------------


def test_wsd_is_constant_then_linear_to_the_floor():
    # 10 steps, no warm-up: the last 20% (2 steps) fall linearly to min_ratio * peak
    lrs = [lr_at(t, 10, 1.0, "wsd", 0.0, 0.1) for t in range(10)]
    assert lrs[:8] == [1.0] * 8
    assert lrs[8] == pytest.approx(1 - 0.9 * 0.5) and lrs[9] == pytest.approx(0.1)
    # with warm-up: linear warm-up first, the same tail
    warm = [lr_at(t, 10, 2.0, "wsd", 0.2, 0.5) for t in range(10)]
    assert warm[:2] == [pytest.approx(1.0), pytest.approx(2.0)] and warm[2:8] == [2.0] * 6
    assert warm[9] == pytest.approx(1.0)


# ---- AdamS decoupled masked decay ---------------------------------------------------------------


class RefDecoupled(RefAdamS):
    """The spec's update, then theta <- sign(theta) * max(|theta| - a*r*lr, 0) where masked."""

    def __init__(self, *args, ratio, **kw):
        super().__init__(*args, **kw)
        self.ratio = ratio

    def step(self, grads):
        alpha = self.t / self.T
        super().step(grads)
        cut = alpha * self.ratio * self.lr
        for k, w in enumerate(self.w):
            if not self.sparse[k]:
                continue
            for r, row in enumerate(w):
                for c, x in enumerate(row):
                    if not self.mask[k][r][c]:
                        row[c] = math.copysign(max(abs(x) - cut, 0.0), x) if x else 0.0


@pytest.mark.parametrize("chunk", [None, 5], ids=["default-chunks", "5-element-chunks"])
def test_decoupled_masked_decay_matches_the_elementwise_reference(chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(adams, "CHUNK_ELEMENTS", chunk)
    # ratio large enough that small masked weights reach zero and stay there
    T, t1, lr, lam, ratio = 7, 3, 0.02, 0.05, 1.5
    tensors = make_tensors()
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    opt = AdamS([{"params": params[:2], "sparse": True}, {"params": params[2:]}], lr=lr,
                lambda_=lam, total_steps=T, t1=t1, n=2, m=4, masked_decay_ratio=ratio)
    ref = RefDecoupled(tensors, [True, True, False], lr, (0.9, 0.999), 1e-8, lam, T, t1, 2, 4,
                       ratio=ratio)
    gen = torch.Generator().manual_seed(1)
    for _ in range(T):
        grads = [torch.randn(t.shape, generator=gen) * 0.01 for t in tensors]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        for p, w in zip(params, ref.w, strict=True):
            torch.testing.assert_close(p.detach().double(), torch.tensor(w, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-7)
    zeros = sum(int((p.detach()[~m] == 0).sum()) for p, m in zip(params[:2], opt.masks()[:2],
                                                                  strict=True))
    assert zeros > 0  # the threshold reached zero somewhere, and the reference agreed there


def test_decoupled_masked_decay_hand_computed_step():
    # one row of 4 (2:4), T = 2, lr = 0.1, lam = 0, ratio 2. Step 0: a = 0, plain Adam on every
    # entry (spec m~ = m: first step 10 lr = 1.0 against the sign of g). Step 1: a = 1/2, masked
    # entries have m~ = (1/2) m and are then shrunk by a * ratio * lr = 0.1.
    w = torch.nn.Parameter(torch.tensor([[3.0, -0.5, 2.0, 1.5]]))
    opt = AdamS([{"params": [w], "sparse": True}], lr=0.1, lambda_=0.0, total_steps=2,
                masked_decay_ratio=2.0)
    w.grad = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    opt.step()  # mask from [3, -0.5, 2, 1.5]: keeps 3 and 2
    torch.testing.assert_close(w.detach(), torch.tensor([[2.0, 0.5, 1.0, 0.5]]))
    w.grad = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    opt.step()
    # t = 1, all g = +-1 so far: m = 0.19*g1... entry by entry:
    # m = 0.9*0.1*g0 + 0.1*g1; kept v = 0.999*0.001*(0.1 g0)^2 + 0.001*m^2 (v tracks m~^2)
    b1, b2, bc1, bc2 = 0.9, 0.999, 1 - 0.81, 1 - 0.999**2

    def stepped(w0, g0, g1, masked):
        m0 = 0.1 * g0
        m1 = b1 * m0 + 0.1 * g1
        mt = 0.5 * m1 if masked else m1
        v = b2 * (0.001 * m0 * m0) + 0.001 * mt * mt
        out = w0 - 0.1 * (mt / bc1) / (math.sqrt(v / bc2) + 1e-8)
        return math.copysign(max(abs(out) - 0.1, 0.0), out) if masked else out

    want = [stepped(2.0, 1.0, 1.0, False), stepped(0.5, -1.0, 1.0, True),
            stepped(1.0, 1.0, 1.0, False), stepped(0.5, 1.0, 1.0, True)]
    torch.testing.assert_close(w.detach().double(), torch.tensor([want], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    assert want[1] == 0.0 or abs(want[1]) < 0.5  # the masked entry moved toward zero


def test_zero_ratio_is_the_spec_update_bit_for_bit():
    tensors = make_tensors()
    a = [torch.nn.Parameter(t.clone()) for t in tensors]
    b = [torch.nn.Parameter(t.clone()) for t in tensors]
    opt_a = AdamS([{"params": a[:2], "sparse": True}, {"params": a[2:]}], lr=0.02, lambda_=0.05,
                  total_steps=5)
    opt_b = AdamS([{"params": b[:2], "sparse": True}, {"params": b[2:]}], lr=0.02, lambda_=0.05,
                  total_steps=5, masked_decay_ratio=0.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        for pa, pb in zip(a, b, strict=True):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)


def test_negative_ratio_is_refused():
    p = torch.nn.Parameter(torch.ones(1, 4))
    with pytest.raises(UserError, match="masked_decay_ratio must be >= 0"):
        AdamS([{"params": [p], "sparse": True}], masked_decay_ratio=-0.1)


# ---- local backend: concurrent CPU runs ---------------------------------------------------------


def _cpu_runs(tmp_path, count, threads=2):
    from castlab.sweep.plan import PlannedRun

    return [PlannedRun(TrainConfig(method="dense", model="opt-tiny", seed=i, device="cpu",
                                   threads=threads), tmp_path / f"r{i}", "run")
            for i in range(count)]


def test_local_backend_runs_cpu_runs_at_once_with_a_share_of_the_cores(monkeypatch, tmp_path):
    from castlab.sweep import backends

    barrier = threading.Barrier(2, timeout=20)  # breaks unless two runs are in flight together
    seen, lock = [], threading.Lock()

    def fake_execute(config, run_dir, retry_failed, echo=True, env=None):
        barrier.wait()
        with lock:
            seen.append((Path(run_dir).name, config.threads, env, echo))
        return "done"

    monkeypatch.setattr(backends, "execute_run", fake_execute)
    monkeypatch.setattr(backends, "cpu_cores", lambda: 2)
    runs = _cpu_runs(tmp_path, 4)
    out = backends.LocalBackend(progress=False).execute(runs, retry_failed=False)  # default
    assert out == {f"r{i}": "done" for i in range(4)}
    # two at a time, each capped at one thread (the sweep asked for 2), no GPU pinning
    assert sorted(seen) == [(f"r{i}", 1, None, False) for i in range(4)]
    assert all(r.config.threads == 2 for r in runs)  # the plan itself is untouched


def test_local_backend_cpu_runs_one_keeps_runs_in_turn_and_their_threads(monkeypatch, tmp_path):
    from castlab.sweep import backends

    active, peak, seen = [0], [0], []

    def fake_execute(config, run_dir, retry_failed, echo=True, env=None):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        seen.append(config.threads)
        active[0] -= 1
        return "done"

    monkeypatch.setattr(backends, "execute_run", fake_execute)
    monkeypatch.setattr(backends, "cpu_cores", lambda: 2)
    opts = backends.LocalBackend.Options(cpu_runs=1)
    backends.LocalBackend(options=opts, progress=False).execute(_cpu_runs(tmp_path, 3),
                                                                retry_failed=False)
    assert peak == [1] and seen == [2, 2, 2]


def test_cpu_run_threads_share_the_cores():
    from castlab.sweep.backends import cpu_run_threads

    assert cpu_run_threads(0, 2, 2) == 1 and cpu_run_threads(2, 2, 2) == 1
    assert cpu_run_threads(0, 2, 16) == 8 and cpu_run_threads(3, 2, 16) == 3
    assert cpu_run_threads(4, 1, 2) == 4 and cpu_run_threads(0, 1, 2) == 0
    assert cpu_run_threads(0, 4, 2) == 1  # more runs than cores: one thread each


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_cpu_runs_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    from castlab.sweep.spec import load_sweep

    spec = {"name": "s", "models": ["opt-tiny"], "methods": ["cast"], "budgets": [4096],
            "teacher": {"tokens": 4096},
            "backend": {"name": "local", "cpu_runs": value}}
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=r"backend(\.cpu_runs)?: .*"):
        load_sweep(file)
    spec["backend"]["cpu_runs"] = 1
    file.write_text(yaml.safe_dump(spec))
    assert load_sweep(file).backend_options.cpu_runs == 1


# ---- analysis: the previous study of a re-shipped reference -----------------------------------


def test_previous_study_is_the_highest_numbered_sibling(tmp_path):
    from analysis.make_report import previous_of

    current = tmp_path / "opt_family"
    assert previous_of(current) == tmp_path / "opt_family_v1"  # none yet: the first name
    for name in ("opt_family_v1", "opt_family_v2", "opt_family_v10x", "opt_family_long"):
        (tmp_path / name).mkdir()
    (tmp_path / "opt_family_v3").write_text("a file, not a study")
    assert previous_of(current) == tmp_path / "opt_family_v2"


def test_report_names_what_changed_since_the_previous_study():
    from analysis.report import PREVIOUS_NOTES

    assert "masked_decay_ratio 48" in PREVIOUS_NOTES["opt_family_v2"]
    assert PREVIOUS_NOTES["opt_family_v1"].startswith("lambda auto factor 3")


# ---- the decay-budget warning under a decoupled decay ------------------------------------------


@pytest.mark.parametrize("ended, warned", [(0.0004, False), (0.05, True), (float("nan"), True)])
def test_decay_warning_is_silent_when_the_masked_weights_ended_at_zero(ended, warned):
    from types import SimpleNamespace

    from castlab import train

    # sampled masked steps of 0.1 lr over 10 steps of lr 1: distance 1.0 < typical |theta| 5
    life = SimpleNamespace(step_samples=[(0, 0.1), (9, 0.1)], typical_masked=5.0)
    cfg = TrainConfig(method="cast", model="m", init="t", lr_schedule="constant", warmup_frac=0.0)
    ctx = SimpleNamespace(cfg=cfg, extras={"diagnostics": {"masked_kept_ratio": ended}})
    train._decay_budget_warning(ctx, SimpleNamespace(life=life), 1.0, 10)
    assert bool(ctx.extras["decay_budget_warning"]) == warned

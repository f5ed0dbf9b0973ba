import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from castlab.cli import main
from castlab.models import in_scope_linears
from castlab.schedule import lr_at
from castlab.train import run_training
from tests.conftest import tiny_config


def test_lr_schedule_warmup_then_cosine_to_floor():
    lrs = [lr_at(t, 100, 1.0, "cosine", 0.1, 0.1) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(50, 100, 2.0, "constant", 0.1, 0.1) == 2.0


def _weights(run_dir):
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_from_checkpoint_is_bit_exact(tmp_path):
    cfg = tiny_config(method="dense", tokens=12 * 8 * 64, checkpoint_every=5, eval_every=4)
    straight = run_training(cfg, tmp_path / "straight", progress=False)
    assert run_training(cfg, tmp_path / "resumed", progress=False, stop_after=5) is None
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "resumed" / "result.parquet").exists()
    resumed = run_training(cfg, tmp_path / "resumed", progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["eval_loss"] == straight["eval_loss"]
    curve_a = pd.read_parquet(tmp_path / "straight" / "curve.parquet")
    curve_b = pd.read_parquet(tmp_path / "resumed" / "curve.parquet")
    pd.testing.assert_frame_equal(curve_a, curve_b)


def test_cast_run_prunes_to_exact_2_4_without_prune_shock(tiny_teacher, tmp_path):
    cfg = tiny_config(method="cast", init=str(tiny_teacher / "model"), tokens=150 * 8 * 64,
                      lr=1e-3)
    row = run_training(cfg, tmp_path / "cast", progress=False)
    assert row["status"] == "ok", row["reason"]
    assert row["exact_nm"] and row["sparsity"] == 0.5
    assert row["params_nonzero"] == row["params_in_scope"] // 2
    assert row["masked_kept_ratio"] < 0.01
    assert abs(row["prune_shock"]) < 0.01 * row["eval_loss"]
    # mask life: the masked weights were measured moving towards zero, so no decay warning
    assert row["masked_step_lr"] > 0 and row["decay_budget_warning"] == ""
    assert 0.0 <= row["mask_drift_half"] <= row["mask_drift"] + 0.5 and row["mask_flip_rate"] >= 0
    curve = pd.read_parquet(tmp_path / "cast" / "curve.parquet")
    evals = curve.dropna(subset=["eval_loss"])
    assert evals["mask_drift_initial"].notna().all() and evals["mask_drift_final"].notna().all()
    assert evals["mask_drift_final"].iloc[-1] == 0.0  # the last eval's mask is the final mask
    assert evals["mask_drift_initial"].iloc[-1] == pytest.approx(row["mask_drift"])
    # timing split: optimizer steps and perplexity evals are disjoint parts of the run's wall time
    assert row["eval_seconds"] > 0 and row["train_seconds"] > 0
    assert row["eval_seconds"] + row["train_seconds"] < row["wall_seconds"]
    stored = pd.read_parquet(tmp_path / "cast" / "result.parquet")
    assert stored.loc[0, "eval_loss"] == pytest.approx(row["eval_loss"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cast" / "model")
    for name, linear in in_scope_linears(model):
        groups = linear.weight.detach().reshape(linear.weight.shape[0], -1, 4)
        assert int((groups != 0).sum(-1).max()) <= 2, name


def test_oneshot_baselines_are_exact_2_4_and_sparsegpt_beats_magnitude(tiny_teacher, tmp_path):
    rows = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        cfg = tiny_config(method=method, init=str(tiny_teacher / "model"), tokens=0,
                          calib_sequences=16)
        rows[method] = row = run_training(cfg, tmp_path / method, progress=False)
        assert row["status"] == "ok", row["reason"]
        assert row["exact_nm"] and row["tokens"] == 0
        assert row["params_nonzero"] <= row["params_in_scope"] // 2
        assert row["prune_shock"] == pytest.approx(row["eval_loss"] - row["teacher_eval_loss"])
    assert rows["magnitude"]["eval_loss"] > rows["magnitude"]["teacher_eval_loss"]
    assert rows["sparsegpt"]["eval_loss"] < rows["magnitude"]["eval_loss"]


@pytest.mark.parametrize("argv, message", [
    (["--method", "dense", "--model", "opt-7b", "--tokens", "1k"], "model: 'opt-7b' is not a ladder preset"),
    (["--method", "dense", "--model", "opt-tiny", "--tokens", "-3"], "tokens: got '-3', allowed a positive"),
    (["--method", "dense", "--model", "opt-tiny", "--tokens", "1k", "--seq-len", "4096"],
     "seq_len: got 4096, the model accepts at most 256"),
    (["--method", "cast", "--model", "opt-tiny", "--tokens", "1k", "--lambda", "lots"], "lambda_: got 'lots'"),
])
def test_train_cli_bad_inputs_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_zeroshot_columns_join_the_row_without_changing_the_run_id(tiny_teacher, tmp_path):
    cfg = tiny_config(method="magnitude", init=str(tiny_teacher / "model"), tokens=0,
                      calib_sequences=4, zeroshot_tasks="piqa,boolq", zeroshot_limit=4)
    assert cfg.run_id() == tiny_config(method="magnitude", init=str(tiny_teacher / "model"),
                                       tokens=0, calib_sequences=4).run_id()
    row = run_training(cfg, tmp_path / "zs", progress=False)
    stored = pd.read_parquet(tmp_path / "zs" / "result.parquet").iloc[0]
    for task in ("piqa", "boolq"):
        assert stored[f"zs_{task}_n"] == 4
        assert 0.0 <= stored[f"zs_{task}_acc"] <= 1.0
        assert stored[f"zs_{task}_acc"] == row[f"zs_{task}_acc"]
        assert 0 <= stored[f"zs_{task}_truncated"] <= 4


@pytest.mark.parametrize("method", ["sr-ste", "ast", "dense-kd", "dense-kd-adam"])
def test_trained_baselines_finish_with_the_expected_sparsity(tiny_teacher, tmp_path, method):
    cfg = tiny_config(method=method, init=str(tiny_teacher / "model"), tokens=30 * 8 * 64,
                      lr=1e-3)
    row = run_training(cfg, tmp_path / method, progress=False)
    assert row["status"] == "ok", row["reason"]
    if method.startswith("dense-kd"):
        assert row["sparsity"] == 0.0 and row["params_nonzero"] == row["params_in_scope"]
    else:  # the masked forward means the final prune changes nothing the model used
        assert row["exact_nm"] and row["params_nonzero"] <= row["params_in_scope"] // 2
        assert row["prune_shock"] == pytest.approx(0.0, abs=1e-6)
        assert row["eval_loss"] == pytest.approx(row["loss_before_prune"], abs=1e-6)


def test_cast_resume_keeps_the_mask_life(tiny_teacher, tmp_path):
    cfg = tiny_config(method="cast", init=str(tiny_teacher / "model"), tokens=12 * 8 * 64,
                      lr=1e-3, checkpoint_every=5, eval_every=4, t1=2)
    straight = run_training(cfg, tmp_path / "straight", progress=False)
    assert run_training(cfg, tmp_path / "resumed", progress=False, stop_after=5) is None
    resumed = run_training(cfg, tmp_path / "resumed", progress=False)
    for key in ("mask_drift", "mask_drift_half", "mask_flip_rate", "masked_step_lr", "eval_loss"):
        assert resumed[key] == straight[key], key
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "straight" / "curve.parquet"),
                                  pd.read_parquet(tmp_path / "resumed" / "curve.parquet"))


def test_lambda_auto_probe_is_the_same_for_every_seed(tiny_teacher):
    from castlab.train import load_data_and_model, measure_auto_lambda

    lams = []
    for seed in (0, 1):
        cfg = tiny_config(method="cast", init=str(tiny_teacher / "model"), seed=seed,
                          lambda_auto_factor=2.0)
        model, _, streams = load_data_and_model(cfg)
        lams.append(measure_auto_lambda(model, None, streams["train"], cfg, batches=1))
    assert lams[0] == lams[1] > 0


def test_dense_kd_is_adams_with_nothing_masked_and_dense_kd_adam_is_torch_adam(tiny_teacher):
    from castlab.methods import make_method
    from castlab.sparsity.adams import AdamS
    from castlab.train import load_data_and_model

    cfg = tiny_config(method="dense-kd", init=str(tiny_teacher / "model"))
    model, _, _ = load_data_and_model(cfg)
    opt = make_method(cfg).build_optimizer(model, 1e-3, 10)
    assert isinstance(opt, AdamS) and opt.lambda_ == 0.0 and not opt.bias_correct
    sparse = [g for g in opt.param_groups if g["sparse"]]
    assert len(sparse) == 1 and sparse[0]["prune"] is False
    assert len(sparse[0]["params"]) == len(in_scope_linears(model))
    opt = make_method(tiny_config(method="dense-kd-adam", init="x")).build_optimizer(model, 1e-3, 10)
    assert type(opt) is torch.optim.Adam


@pytest.mark.parametrize("method, kd, uses_teacher", [("sr-ste", None, False), ("sr-ste", True, True),
                                                      ("ast", None, True), ("ast", False, False)])
def test_kd_is_available_to_sr_ste_and_ast(method, kd, uses_teacher):
    from castlab.methods import make_method

    assert make_method(tiny_config(method=method, init="x", kd=kd)).uses_teacher is uses_teacher

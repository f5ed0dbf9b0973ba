import pytest

from castlab.config import TrainConfig, from_dict, load_yaml, parse_count, save_yaml
from castlab.errors import UserError


def test_yaml_round_trip(tmp_path):
    cfg = from_dict(TrainConfig, {"method": "cast", "model": "opt-100k", "tokens": "2M",
                                  "lambda_": 0.05, "betas": [0.9, 0.95]})
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(TrainConfig, tmp_path / "c.yaml")
    assert back == cfg
    assert back.tokens == 2_000_000 and back.betas == (0.9, 0.95)
    assert back.run_id() == cfg.run_id()


def test_run_id_ignores_sweep_name_but_not_settings():
    a = TrainConfig(method="cast", model="opt-100k", tokens=1000)
    b = TrainConfig(method="cast", model="opt-100k", tokens=1000, sweep="other")
    c = TrainConfig(method="cast", model="opt-100k", tokens=1000, seed=1)
    assert a.run_id() == b.run_id() != c.run_id()


@pytest.mark.parametrize("data, message", [
    ({"method": "cast", "model": "m", "tokens": -5}, "tokens: got -5, allowed a positive"),
    ({"method": "cast", "model": "m", "tokens": "lots"}, "tokens: got 'lots'"),
    ({"method": "cast", "model": "m", "speed": 3}, "unknown key 'speed'"),
    ({"method": "prune", "model": "m"}, "method: got 'prune', allowed 'dense'"),
    ({"method": "cast", "model": "m", "seq_len": "long"}, "seq_len: got 'long', allowed int"),
    ({"method": "cast", "model": "m", "eta": 2.0}, "eta: got 2.0, allowed 0..1"),
    ({"method": "cast", "model": "m", "lambda_": "big"}, "lambda_: got 'big'"),
    ({"model": "m"}, "missing required key 'method'"),
])
def test_bad_fields_name_the_field_and_what_is_allowed(data, message):
    with pytest.raises(UserError, match=message):
        from_dict(TrainConfig, data, where="train")


def test_parse_count_suffixes():
    assert parse_count("2M", "x") == 2_000_000
    assert parse_count("1.5k", "x") == 1500
    assert parse_count(64, "x") == 64


def test_run_id_of_a_continued_run_depends_on_the_teacher_id_not_its_path_or_existence(tmp_path):
    def cast_from(init):
        return TrainConfig(method="cast", model="opt-100k", init=init, tokens=1000)

    a = cast_from(str(tmp_path / "cacheA" / "teachers" / "dense-0123456789ab" / "model"))
    before = a.run_id()
    (tmp_path / "cacheA" / "teachers" / "dense-0123456789ab" / "model").mkdir(parents=True)
    (tmp_path / "cacheA" / "teachers" / "dense-0123456789ab" / "config.yaml").write_text("x: 1\n")
    assert a.run_id() == before  # the teacher now exists: same id
    assert cast_from("/elsewhere/dense-0123456789ab/model").run_id() == before
    assert cast_from("/elsewhere/dense-ffffffffffff/model").run_id() != before
    assert cast_from("facebook/opt-125m").run_id() != cast_from("facebook/opt-350m").run_id()


def test_run_id_hashes_only_the_settings_the_method_reads():
    def rid(method, **kw):
        return TrainConfig(method=method, model="m", init="t", **kw).run_id()

    for method in ("dense-kd", "sr-ste", "ast", "sparsegpt"):
        assert rid(method, lambda_=0.5) == rid(method, lambda_="auto"), method
    assert rid("cast", lambda_=0.5) != rid("cast", lambda_="auto")
    assert rid("dense-kd", srste_decay=0.1) == rid("dense-kd")
    assert rid("sr-ste", srste_decay=0.1) != rid("sr-ste")
    assert rid("ast", ast_decay=0.1) != rid("ast") and rid("sr-ste", ast_decay=0.1) == rid("sr-ste")
    assert rid("magnitude", seed=1) == rid("magnitude") and rid("wanda", seed=1) != rid("wanda")
    assert rid("dense-kd", adams_bias_correct=True) != rid("dense-kd")
    assert rid("dense-kd-adam", adams_bias_correct=True) == rid("dense-kd-adam")
    assert rid("sr-ste", kd=True) != rid("sr-ste") and rid("cast", kd=True) == rid("cast")

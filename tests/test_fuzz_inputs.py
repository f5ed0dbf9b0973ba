"""Fuzz-style check of user mistakes: malformed sweep files and bad command lines.

Every case must end in exit code 2 with exactly one line on stderr, no traceback, and the work
folder (results included) unchanged. The CLI runs in-process (one import of torch for ~120
cases); a handful of real subprocesses check the same from a shell's point of view.

Run as a script (``python tests/test_fuzz_inputs.py``) to tally the cases as clean / traceback /
accepted-wrong / refused-in-several-lines against whichever castlab is importable (used to
compare a checkout before and after a change).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from castlab import cli
from castlab.config import TrainConfig

BASE = {"name": "fz", "models": ["opt-tiny"], "methods": ["cast"], "budgets": ["64k"],
        "teacher": {"tokens": "1M"}, "results": "results/fz"}
# A YAML alias bomb: nine levels of ten aliases each expand to 10^9 values from 10 lines.
ALIAS_BOMB = "name: [" + ", ".join(
    [f"&l0 [{', '.join(['x'] * 10)}]"]
    + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]) + "]\n" + \
    "models: [opt-tiny]\nmethods: [cast]\nbudgets: ['64k']\nteacher: {tokens: 1M}\n"
OWNED = {"method", "model", "init", "tokens", "seed", "sweep", "lambda_", "corpus", "vocab_size"}


def _float_fields() -> list[str]:
    """TrainConfig fields whose annotation admits a float (NaN/inf must be refused in each)."""
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in OWNED and "float" in str(hints[f.name])]


def _int_fields() -> list[str]:
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in OWNED and hints[f.name] is int]


def sweep_cases(tmp: Path) -> list[tuple[str, str | dict]]:
    """(label, file content): a dict is merged into BASE (None deletes a key), a str is raw YAML."""
    empty_dir = tmp / "not_a_model"
    empty_dir.mkdir(exist_ok=True)
    cases: list[tuple[str, str | dict]] = [
        ("alias bomb", ALIAS_BOMB),
        ("budget 1e400", {"budgets": ["1e400"]}),
        ("budget 1e300", {"budgets": [1e300]}),
        ("budget nan", {"budgets": [float("nan")]}),
        ("budget huge multiple", {"budgets": ["99999999xP"]}),
        ("teacher tokens inf", {"teacher": {"tokens": float("inf")}}),
        ("teacher tokens 1e400 text", {"teacher": {"tokens": "1e400"}}),
        ("lambda_ nan", {"lambda_": float("nan")}),
        ("lambda_ inf", {"lambda_": float("inf")}),
        ("lambda_ list nan", {"budgets": ["64k", "128k"], "lambda_": [0.1, float("nan")]}),
        ("vocab 10^12", {"vocab_size": 10**12}),
        ("ray num_cpus -2", {"backend": {"name": "ray", "num_cpus": -2}}),
        ("ray num_gpus nan", {"backend": {"name": "ray", "num_gpus": float("nan")}}),
        ("ray memory 0", {"backend": {"name": "ray", "memory_gb": 0}}),
        ("slurm cpus 0", {"backend": {"name": "slurm", "cpus_per_task": 0}}),
        ("slurm timeout -1", {"backend": {"name": "slurm", "timeout_min": -1}}),
        ("duplicated top key", "name: a\nname: b\nmodels: [opt-tiny]\nmethods: [cast]\n"
                               "budgets: ['64k']\nteacher: {tokens: 1M}\n"),
        ("duplicated nested key", "name: a\nmodels: [opt-tiny]\nmethods: [cast]\n"
                                  "budgets: ['64k']\nteacher: {tokens: 1M}\n"
                                  "train: {seq_len: 64, seq_len: 128}\n"),
        ("models /etc", {"models": ["/etc"]}),
        ("models empty folder", {"models": [str(empty_dir)]}),
        ("results escapes", {"results": "../../../../etc/x"}),
        ("results under a file", {"results": "/dev/null/x"}),
        ("2,500 seeds", {"seeds": list(range(2500))}),
        ("betas one value", {"train": {"betas": [0.9]}}),
        ("betas >= 1", {"train": {"betas": [1.5, 0.9]}}),
        ("method settings lr nan", {"methods": [{"name": "cast", "settings": {"lr": float("nan")}}]}),
        ("eval tokens 1e400", {"eval": {"tokens": "1e400"}}),
        ("batch 10^30", {"train": {"batch_size": 10**30}}),
        ("seq_len 10^9", {"train": {"seq_len": 10**9}}),
        ("teacher seed -1", {"teacher": {"tokens": "1M", "seed": -1}}),
        # round 3 (issue 25): names and paths that reach the file system, quiet merges
        ("name with newline", {"name": "fz\nx"}),
        ("name ending in newline", {"name": "fz\n"}),
        ("name 300 characters", {"name": "n" * 300}),
        ("results with newline", {"results": "results/a\nb"}),
        ("results folder name 300 bytes", {"results": "results/" + "r" * 300}),
        ("results a symlink loop", {"results": "loop"}),
        ("models ../opt-tiny", {"models": ["../opt-tiny"], "train": {"lr": 1e-4}}),
        ("models ./org/name", {"models": ["./facebook/opt-125m"], "train": {"lr": 1e-4}}),
        ("budget '1e-3k' (1 token)", {"budgets": ["1e-3k"]}),
        ("budget 100 (< one step)", {"budgets": [100]}),
        ("teacher tokens 10 (< one step)", {"teacher": {"tokens": 10}}),
        ("seeds [0, 0, 0]", {"seeds": [0, 0, 0]}),
        ("extra seeds [1, 1]", {"extra_seeds": [{"seeds": [1, 1]}]}),
    ]
    loop = tmp / "loop"
    if not loop.is_symlink():
        loop.symlink_to("loop")
    for name in _float_fields():
        cases.append((f"train.{name} nan", {"train": {name: float("nan")}}))
        cases.append((f"train.{name} inf", {"train": {name: float("inf")}}))
    for name in ("threads", "checkpoint_every", "calib_sequences", "final_eval_tokens",
                 "zeroshot_limit"):
        assert name in _int_fields(), name
        cases.append((f"train.{name} -1", {"train": {name: -1}}))
    for name in ("eps", "lambda_auto_factor", "dense_lr", "kd_temperature", "min_lr_ratio"):
        cases.append((f"train.{name} -1", {"train": {name: -1.0}}))
    return cases


def write_sweep(path: Path, content: str | dict) -> Path:
    """Write a case's sweep file."""
    if isinstance(content, str):
        path.write_text(content)
    else:
        data = {k: v for k, v in {**BASE, **content}.items() if v is not None}
        path.write_text(yaml.safe_dump(data))
    return path


def make_models(root: Path) -> dict[str, Path]:
    """A loadable opt-tiny with a small BPE tokenizer, a copy with broken weights, a text corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from castlab.models import build_preset

    good, broken, corpus = root / "model", root / "broken", root / "corpus"
    if not (good / "config.json").exists():
        text = [f"line {i} of a small corpus about sparse models and their budgets" for i in
                range(400)]
        # a byte-level vocabulary without merges: loadable by AutoTokenizer, no training needed
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(
            alphabet + ["<|endoftext|>", "<pad>"])}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                          pad_token="<pad>")
        model = build_preset("opt-tiny", vocab_size=len(wrapped))
        for target in (good, broken):
            model.save_pretrained(target)
            wrapped.save_pretrained(target)
        (broken / "model.safetensors").write_bytes(b"\x00" * 64)
        for split in range(12):
            (corpus / f"d{split}").mkdir(parents=True, exist_ok=True)
            (corpus / f"d{split}" / "doc.txt").write_text("\n".join(text[split::12]) * 3)
    return {"good": good, "broken": broken, "corpus": corpus}


def command_cases(m: dict[str, Path], tmp: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) bad command lines; MODEL is a loadable model, so only the mistake fails."""
    good, broken = str(m["good"]), str(m["broken"])
    ok_sweep = str(write_sweep(tmp / "ok_sweep.yaml", {}))
    dup = tmp / "dup.yaml"
    dup.write_text("method: dense\nmodel: opt-tiny\nmethod: cast\n")
    train = ["train", "--method", "dense", "--model", "opt-tiny", "--tokens", "1k",
             "--vocab-size", "300", "--corpus", str(m["corpus"]), "--no-progress"]
    cases = [
        ("train --tokens 1e400", train + ["--tokens", "1e400"]),
        ("train --tokens inf", train + ["--tokens", "inf"]),
        ("train --tokens nan", train + ["--tokens", "nan"]),
        ("train --tokens -5", train + ["--tokens", "-5"]),
        ("train --out /dev/null/x", train + ["--out", "/dev/null/x"]),
        ("train --lr nan", train + ["--lr", "nan"]),
        ("train --lr inf", train + ["--lr", "inf"]),
        ("train --eta nan", train + ["--eta", "nan"]),
        ("train --kd-temperature inf", train + ["--kd-temperature", "inf"]),
        ("train --grad-clip nan", train + ["--grad-clip", "nan"]),
        ("train --seq-len 0", train + ["--seq-len", "0"]),
        ("train --batch-size -1", train + ["--batch-size", "-1"]),
        ("train --vocab-size 10^12", train + ["--vocab-size", str(10**12)]),
        ("train --seed -1", train + ["--seed", "-1"]),
        ("train --threads -1", train + ["--threads", "-1"]),
        ("train --checkpoint-every -1", train + ["--checkpoint-every", "-1"]),
        ("train --set lambda_=.nan", train + ["--set", "lambda_=.nan"]),
        ("train --set kd_temperature=.nan", train + ["--set", "kd_temperature=.nan"]),
        ("train --set betas=[0.9]", train + ["--set", "betas=[0.9]"]),
        ("train --set eps=0", train + ["--set", "eps=0"]),
        ("train --set warmup_frac=.inf", train + ["--set", "warmup_frac=.inf"]),
        ("train --set bad yaml", train + ["--set", "seq_len=[1,"]),
        ("train --set unknown", train + ["--set", "colour=red"]),
        ("train --set no =", train + ["--set", "seq_len"]),
        ("train --config dir", train + ["--config", "/etc"]),
        ("train --config missing", train + ["--config", str(tmp / "nope.yaml")]),
        ("train --config dup key", ["train", "--config", str(dup)]),
        ("train --method nope", ["train", "--method", "nope", "--model", "opt-tiny"]),
        ("eval-ppl --batch-size 0", ["eval-ppl", good, "--batch-size", "0"]),
        ("eval-ppl --max-tokens -1", ["eval-ppl", good, "--corpus", str(m["corpus"]),
                                      "--max-tokens", "-1"]),
        ("eval-ppl --max-tokens 0", ["eval-ppl", good, "--max-tokens", "0"]),
        ("eval-ppl --seq-len 0", ["eval-ppl", good, "--seq-len", "0"]),
        ("eval-ppl --seq-len abc", ["eval-ppl", good, "--seq-len", "abc"]),
        ("eval-ppl /etc", ["eval-ppl", "/etc"]),
        ("eval-ppl broken weights", ["eval-ppl", broken]),
        ("eval-ppl --split nope", ["eval-ppl", good, "--split", "nope"]),
        ("export --out /dev/null/x", ["export", good, "--out", "/dev/null/x"]),
        ("export broken weights", ["export", broken, "--out", str(tmp / "exp")]),
        ("export /etc", ["export", "/etc", "--out", str(tmp / "exp2")]),
        ("export --bench-size 0", ["export", good, "--out", str(tmp / "exp3"), "--bench-size", "0"]),
        ("quantize --bits 3", ["quantize", good, "--bits", "3"]),
        ("quantize --group-size 0", ["quantize", good, "--group-size", "0"]),
        ("quantize --scheme odd", ["quantize", good, "--scheme", "odd"]),
        ("quantize --out /dev/null/x", ["quantize", good, "--out", "/dev/null/x"]),
        ("finetune --steps 0", ["finetune", good, "--steps", "0"]),
        ("finetune --lr nan", ["finetune", good, "--lr", "nan"]),
        ("finetune --lr -1", ["finetune", good, "--lr", "-1"]),
        ("finetune --eta 2", ["finetune", good, "--eta", "2"]),
        ("finetune --out /dev/null/x", ["finetune", good, "--out", "/dev/null/x"]),
        ("eval-zeroshot --limit 0", ["eval-zeroshot", good, "--limit", "0"]),
        ("eval-zeroshot --batch-size 0", ["eval-zeroshot", good, "--batch-size", "0"]),
        ("eval-zeroshot --out-json under file", ["eval-zeroshot", good, "--out-json",
                                                 "/dev/null/x/y.json"]),
        ("eval-zeroshot broken weights", ["eval-zeroshot", broken, "--limit", "1"]),
        ("data prepare --vocab-size 0", ["data", "prepare", "--vocab-size", "0"]),
        ("data prepare --vocab-size 10^12", ["data", "prepare", "--vocab-size", str(10**12)]),
        ("data prepare --seed -1", ["data", "prepare", "--seed", "-1"]),
        ("sweep missing file", ["sweep", str(tmp / "nope.yaml"), "--dry-run"]),
        ("sweep a folder", ["sweep", "/etc", "--dry-run"]),
        ("sweep --results under a file", ["sweep", ok_sweep, "--dry-run", "--results",
                                          "/dev/null/x"]),
        ("sweep --backend nope", ["sweep", ok_sweep, "--backend", "nope"]),
        ("status missing folder", ["status", str(tmp / "no_results")]),
    ]
    return cases


def tree_hash(root: Path) -> str:
    """Hash of every path and file content under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def call(argv: list[str]) -> tuple[int | None, str, str, BaseException | None]:
    """cli.main in this process: (exit code, stdout, stderr, exception that escaped)."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    code: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except (Exception, MemoryError) as exc:  # noqa: BLE001 - counting tracebacks
            escaped = exc
    return code, out.getvalue(), err.getvalue(), escaped


def classify(code, err: str, escaped, changed: bool) -> str:
    """clean | traceback | accepted-wrong | multi-line (refused, but not in one line)."""
    if escaped is not None or "Traceback" in err:
        return "traceback"
    if code != 2 or changed:
        return "accepted-wrong"
    return "clean" if len(err.strip().splitlines()) == 1 else "multi-line"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding one finished-looking run folder, and the inputs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CASTLAB_TCMALLOC", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "results" / "fz" / "cast-0123456789ab"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: cast\n")
    return tmp_path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("fuzz_models"))


def _check(label: str, argv: list[str], root: Path) -> str:
    before = tree_hash(root)
    code, out, err, escaped = call(argv)
    verdict = classify(code, err, escaped, tree_hash(root) != before)
    assert verdict == "clean", (label, verdict, code, out[-300:], err[-600:], escaped)
    assert err.startswith("castlab"), (label, err)
    return err


def test_malformed_sweep_files(workdir):
    cases = sweep_cases(workdir)
    assert len(cases) >= 50
    for i, (label, content) in enumerate(cases):
        path = write_sweep(workdir / f"case{i}.yaml", content)
        err = _check(label, ["sweep", str(path), "--dry-run"], workdir / "results")
        assert str(path) in err or "plans up to" in err, (label, err)
        assert len(err) < 400, (label, err)  # quoted values are shortened


def test_bad_command_lines(workdir, model_dirs):
    cases = command_cases(model_dirs, workdir)
    assert len(cases) >= 50
    for label, argv in cases:
        _check(label, argv, workdir)


@pytest.mark.parametrize("content, fragment", [
    (ALIAS_BOMB, "expand to more than 100,000 values"),
    ({"budgets": ["1e400"]}, "budgets[0]: got '1e400', allowed a positive count"),
    ({"teacher": {"tokens": float("inf")}}, "teacher.tokens: got inf"),
    ({"lambda_": float("nan")}, "lambda_: got nan, allowed a finite number"),
    ({"train": {"kd_temperature": float("nan")}}, "kd_temperature: got nan, allowed a finite"),
    ({"vocab_size": 10**12}, "vocab_size: got 1000000000000, allowed a positive integer up to "
                             "1,048,576"),
    ({"backend": {"name": "ray", "num_cpus": -2}}, "backend.num_cpus: got -2.0, allowed [0, 1e+06]"),
    ("name: a\nname: b\n", "invalid YAML at line 2: key 'name' is given twice"),
    ({"models": ["/etc"]}, "models[0]: '/etc' holds no config.json"),
    ({"results": "../../../../etc/x"}, "outside the working directory"),
    ({"seeds": list(range(2500))}, "plans up to 2,501 runs, more than the limit of 2,000"),
    ({"teacher": {"tokens": "1M", "seed": -1}}, "teacher.seed: got -1, allowed [0, 4.29497e+09]"),
    ({"seeds": list(range(100_001))}, "holds more than 100,000 values, allowed fewer"),
    ({"name": "n" * 300}, "(at most 100 characters)"),
    ({"name": "fz\n"}, ".name: got 'fz\\n', allowed letters"),
    ({"results": "results/a\nb"}, "allowed a directory path (no control characters"),
    ({"models": ["../opt-tiny"]}, "models[0]: unknown model '../opt-tiny'"),
    ({"budgets": ["1e-3k"]}, "budgets[0]: got '1e-3k' (1 tokens), allowed at least one training "
                             "step of cast (batch_size x seq_len = 2,048 tokens)"),
    ({"seeds": [0, 0, 0]}, ".seeds: 0 is listed twice"),
])
def test_sweep_messages_name_the_field(workdir, content, fragment):
    path = write_sweep(workdir / "s.yaml", content)
    code, _, err, escaped = call(["sweep", str(path), "--dry-run"])
    assert escaped is None and code == 2 and fragment in err, err


def test_command_messages(workdir, model_dirs):
    good, broken = str(model_dirs["good"]), str(model_dirs["broken"])
    expect = [
        (["eval-ppl", good, "--max-tokens", "-1"], "--max-tokens: got -1, allowed a positive"),
        (["eval-ppl", good, "--batch-size", "0"], "--batch-size: got 0, allowed a positive"),
        (["eval-ppl", broken], "weights file is damaged"),
        (["export", good, "--out", "/dev/null/x"], "cannot create /dev/null/x: /dev/null is "
                                                   "not a directory"),
        (["train", "--method", "dense", "--model", "opt-tiny", "--tokens", "1e400"],
         "train.tokens: got '1e400'"),
    ]
    for argv, fragment in expect:
        code, _, err, escaped = call(argv)
        assert escaped is None and code == 2 and fragment in err, (argv, err)


def test_large_plan_allowed_with_flag(workdir, monkeypatch):
    from castlab.sweep import plan

    monkeypatch.setattr(plan, "MAX_PLANNED_RUNS", 10)  # 13 runs stand for 400k
    path = write_sweep(workdir / "big.yaml", {"seeds": list(range(12))})
    code, _, err, _ = call(["sweep", str(path), "--dry-run"])
    assert code == 2 and "plans up to 13 runs, more than the limit of 10" in err, err
    code, out, err, _ = call(["sweep", str(path), "--dry-run", "--allow-large"])
    assert code == 0, err
    assert "13 runs (13 pending)" in out


def test_results_on_the_command_line_may_be_anywhere(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "res"
    path = write_sweep(workdir / "s.yaml", {"results": "../../../../etc/x"})
    code, out, err, _ = call(["sweep", str(path), "--dry-run", "--results", str(elsewhere)])
    assert code == 0, err
    assert f"results in {elsewhere.resolve()}" in out


def test_real_processes(workdir, model_dirs):
    """A few cases as a shell sees them: exit 2, one stderr line, no traceback."""
    bomb = write_sweep(workdir / "bomb.yaml", ALIAS_BOMB)
    esc = write_sweep(workdir / "esc.yaml", {"results": "../../../../etc/x"})
    env = {**os.environ, "CASTLAB_TCMALLOC": "0", "HF_HUB_OFFLINE": "1"}
    before = tree_hash(workdir / "results")
    argvs = (["sweep", str(bomb), "--dry-run"], ["sweep", str(esc)],
             ["eval-ppl", str(model_dirs["broken"])],
             ["train", "--method", "dense", "--model", "opt-tiny", "--out", "/dev/null/x"])
    procs = [subprocess.Popen([sys.executable, "-m", "castlab.cli", *argv], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    for argv, proc in zip(argvs, procs, strict=True):  # started together: one import's wait
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert tree_hash(workdir / "results") == before


CASE_SECONDS = 120  # tally only: a case still running after this was accepted


def _isolated(argv: list[str], results: Path) -> tuple[str, int | None, str]:
    """One case in a forked child (a native abort kills the child, not the tally)."""
    import json

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        import resource

        # 2 GiB above what the parent holds: the alias bomb's 10^9-value repr fails fast
        virtual = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (virtual + 2 * 2**30, virtual + 2 * 2**30))
        signal.alarm(CASE_SECONDS)  # an accepted command that trains is stopped here
        before = tree_hash(results)
        code, _, err, escaped = call(argv)
        verdict = classify(code, err, escaped, tree_hash(results) != before)
        why = repr(escaped)[:80] if escaped else (err.strip().splitlines() or [""])[-1][:100]
        os.write(write, json.dumps([verdict, code, why]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
        return "accepted-wrong", None, f"still running after {CASE_SECONDS} s (accepted)"
    if not data:
        return "traceback", None, f"process died (status {status})"
    verdict, code, why = json.loads(data)
    return verdict, code, why


def tally() -> dict[str, dict[str, int]]:
    """Run every case against the importable castlab; print one line per case and the counts."""
    import tempfile
    from collections import Counter

    work = Path(tempfile.mkdtemp(prefix="fuzz_tally_"))
    os.chdir(work)
    os.environ.update({"CASTLAB_TCMALLOC": "0", "HF_HUB_OFFLINE": "1"})
    (work / "results" / "fz" / "cast-0123456789ab").mkdir(parents=True)
    models = make_models(work / "inputs")
    counts: dict[str, dict[str, int]] = {}
    groups = {"sweep files": [(label, ["sweep", str(write_sweep(work / f"case{i}.yaml", c)),
                                       "--dry-run"]) for i, (label, c) in
                              enumerate(sweep_cases(work))],
              "command lines": command_cases(models, work)}
    only = sys.argv[1:]  # e.g. "command lines": tally one group
    for group, cases in groups.items():
        if only and group not in only:
            continue
        tallies: Counter = Counter()
        for label, argv in cases:
            verdict, code, why = _isolated(argv, work / "results")
            tallies[verdict] += 1
            print(f"{group:<14} {verdict:<15} {label:<34} exit={code} {why}", flush=True)
        counts[group] = dict(tallies)
    for group, tallies in counts.items():
        print(f"{group}: {sum(tallies.values())} cases: {tallies}")
    return counts


if __name__ == "__main__":
    tally()

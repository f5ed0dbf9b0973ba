"""The sweep file: a typed, validated description of a grid of runs.

Everything is checked when the file is loaded (before any run starts), with one-line errors
that name the file, the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from castlab.config import (
    MAX_VOCAB,
    METHODS,
    ONESHOT_METHODS,
    TRAINED_METHODS,
    TrainConfig,
    from_dict,
    parse_count,
    read_yaml,
    show,
)
from castlab.errors import UserError
from castlab.models import PRESETS, is_preset
from castlab.paths import check_output_dir
from castlab.sweep.backends import BACKENDS

# Keys the sweep sets per run itself; users configure them through the sweep's own fields.
SWEEP_OWNED = {"method": "methods", "model": "models", "init": "models", "tokens": "budgets",
               "seed": "seeds", "sweep": "name", "lambda_": "lambda_", "corpus": "corpus",
               "vocab_size": "vocab_size"}
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
_MULTIPLE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*P\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_MULTIPLE = 1e6  # '20xP' budgets: at most a million tokens per in-scope parameter
MAX_NAME = 100  # the name is a folder and part of run ids: file systems allow 255 bytes a part
_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"


def parse_budget(value: Any, where: str) -> int | float:
    """An absolute token count (int) or a multiple of in-scope params ('20xP' -> 20.0)."""
    if isinstance(value, str) and "x" in value.lower():
        match = _MULTIPLE.match(value)
        if not match or not 0 < float(match.group(1)) <= MAX_MULTIPLE:
            raise UserError(f"{where}: got {show(value)}, allowed a positive multiple like '20xP' "
                            f"(at most {MAX_MULTIPLE:.0e}xP)")
        return float(match.group(1))
    if isinstance(value, (list, dict)) or value is None:
        raise UserError(f"{where}: got {show(value)}, allowed a count like '2M' or a multiple "
                        "like '20xP'")
    return parse_count(value, where)


def resolve_budget(budget: int | float, params_in_scope: int) -> int:
    """Tokens for a parsed budget: absolute ints pass through, multiples scale in-scope params."""
    return budget if isinstance(budget, int) else int(round(budget * params_in_scope))


def is_model_dir(model: str) -> bool:
    """A local directory holding a model config (what ``save_pretrained`` writes)."""
    return (Path(model).expanduser() / "config.json").is_file()


def is_hf_name(model: str) -> bool:
    """An HF hub name ('org/name') that is not a local path, or a local model directory."""
    path = Path(model).expanduser()
    if path.exists():  # a local path must be a model directory, whatever its name looks like
        return is_model_dir(model)
    # 'org/name' only: '../x', './x', '~/x' are paths that do not exist, not hub names
    return re.fullmatch(f"{_HUB_PART}/{_HUB_PART}", model) is not None and ".." not in model


@dataclass
class MethodSpec:
    """A method with optional per-method budgets and TrainConfig overrides."""

    name: str
    budgets: list[int | str] | None = None  # default: the sweep's budgets
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for this method


@dataclass
class ExtraSeeds:
    """More seeds for chosen cells (to measure seed noise); omitted filters mean 'all'."""

    seeds: list[int]
    budgets: list[int | str] | None = None  # values as written in `budgets`, 'smallest' or 'largest'
    models: list[str] | None = None
    methods: list[str] | None = None


@dataclass
class EvalSpec:
    """Periodic evaluation during training (the final eval always uses the full split)."""

    every: int | None = None  # steps between evals (TrainConfig.eval_every)
    tokens: int | str | None = None  # validation tokens per periodic eval (TrainConfig.eval_tokens)
    zeroshot: str | list[str] | None = None  # lm-eval tasks after each run: zs_<task>_acc columns
    zeroshot_limit: int | None = None  # documents per zero-shot task (default: all)


@dataclass
class SweepSpec:
    """One sweep file. See sweeps/smoke.yaml for a commented example."""

    name: str
    models: list[str]
    methods: list[str | dict[str, Any]]  # names, or {name, budgets, settings} (MethodSpec)
    budgets: list[int | str] = field(default_factory=list)
    corpus: str = "default"
    vocab_size: int = 8192
    lambda_: float | str | list[float | str] = "auto"  # one value, 'auto', or one per budget
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_seeds: list[ExtraSeeds] = field(default_factory=list)
    teacher: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for dense teachers
    # Several teachers per ladder preset (one per seed): run seed s starts from the teacher of
    # teacher_seeds[s % len(teacher_seeds)], so repeated seeds carry teacher variance. Empty:
    # one teacher per preset, planned exactly as before (same run ids).
    teacher_seeds: list[int] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig defaults for every run
    eval: EvalSpec = field(default_factory=EvalSpec)
    backend: str | dict[str, Any] = "local"  # name, or {name: ..., <backend options>}
    results: str | None = None  # default results/<name>; relative: inside the working dir

    def validate(self, where: str) -> None:
        """Cross-field checks; fills ``parsed_budgets``, ``method_specs`` and ``backend_options``."""
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) \
                or len(self.name) > MAX_NAME:
            raise UserError(f"{where}.name: got {show(self.name)}, allowed letters, digits, '_', "
                            f"'.', '-' (at most {MAX_NAME} characters)")
        if not self.models:
            raise UserError(f"{where}.models: empty, allowed one or more ladder presets "
                            f"({', '.join(PRESETS)}) or HF names like facebook/opt-125m")
        for i, model in enumerate(self.models):
            if not (is_preset(model) or is_hf_name(model)):
                folder = Path(model).expanduser().exists()
                raise UserError(f"{where}.models[{i}]: " + (
                    f"'{show(model)[1:-1]}' holds no config.json, allowed a model directory "
                    "(save_pretrained output), a ladder preset or an HF name" if folder else
                    f"unknown model {show(model)}, allowed a ladder preset "
                    f"({', '.join(PRESETS)}), an HF name like facebook/opt-125m, or a model "
                    "directory"))
        if not 0 < self.vocab_size <= MAX_VOCAB:
            raise UserError(f"{where}.vocab_size: got {show(self.vocab_size)}, allowed a positive "
                            f"integer up to {MAX_VOCAB:,}")
        if len(set(self.models)) != len(self.models):
            raise UserError(f"{where}.models: '{_first_duplicate(self.models)}' is listed twice")
        self._validate_methods(where)
        self._validate_budgets_and_lambda(where)
        self._validate_seeds(where)
        self._validate_teacher_seeds(where)
        self._validate_train(where)
        self._validate_backend(where)
        self._validate_results(where)

    # -- pieces of validate -------------------------------------------------------------------

    def _validate_methods(self, where: str) -> None:
        if not self.methods:
            raise UserError(f"{where}.methods: empty, allowed one or more of "
                            f"{', '.join(m for m in METHODS if m != 'dense')}")
        specs = []
        for i, entry in enumerate(self.methods):
            spec = (MethodSpec(entry) if isinstance(entry, str)
                    else from_dict(MethodSpec, entry, where=f"{where}.methods[{i}]"))
            if spec.name == "dense":
                raise UserError(f"{where}.methods[{i}]: 'dense' teachers are planned automatically "
                                "(configure them under 'teacher'); allowed "
                                f"{', '.join(m for m in METHODS if m != 'dense')}")
            if spec.name not in METHODS:
                raise UserError(f"{where}.methods[{i}]: unknown method '{spec.name}', allowed "
                                f"{', '.join(m for m in METHODS if m != 'dense')}")
            if spec.name in ONESHOT_METHODS and spec.budgets:
                raise UserError(f"{where}.methods[{i}].budgets: one-shot method '{spec.name}' "
                                "trains no tokens; remove budgets")
            _check_train_keys(spec.settings, f"{where}.methods[{i}].settings")
            specs.append(spec)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UserError(f"{where}.methods: '{_first_duplicate(names)}' is listed twice")
        self.method_specs = specs

    def _validate_budgets_and_lambda(self, where: str) -> None:
        trained = [s for s in self.method_specs if s.name in TRAINED_METHODS]
        if trained and not self.budgets and any(s.budgets is None for s in trained):
            raise UserError(f"{where}.budgets: empty, allowed a list of token budgets like "
                            "['1M', '2M'] or multiples of in-scope parameters like ['20xP']")
        self.parsed_budgets = [parse_budget(b, f"{where}.budgets[{i}]")
                               for i, b in enumerate(self.budgets)]
        if len(set(self.parsed_budgets)) != len(self.parsed_budgets):
            raise UserError(f"{where}.budgets: a budget is listed twice")
        for i, spec in enumerate(self.method_specs):
            for j, b in enumerate(spec.budgets or []):
                parse_budget(b, f"{where}.methods[{i}].budgets[{j}]")
        lam = self.lambda_
        if isinstance(lam, list):
            if len(lam) != len(self.budgets):
                raise UserError(f"{where}.lambda_: {len(lam)} values for {len(self.budgets)} "
                                "budgets, allowed one per budget, one number, or 'auto'")
            for i, value in enumerate(lam):
                _check_lambda(value, f"{where}.lambda_[{i}]")
        else:
            _check_lambda(lam, f"{where}.lambda_")

    def _validate_seeds(self, where: str) -> None:
        if not self.seeds:
            raise UserError(f"{where}.seeds: empty, allowed a list of integers like [0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"{where}.seeds: {_first_duplicate(self.seeds)} is listed twice "
                            "(a seed is one run per cell; more runs need more seeds)")
        for i, extra in enumerate(self.extra_seeds):
            w = f"{where}.extra_seeds[{i}]"
            if not extra.seeds:
                raise UserError(f"{w}.seeds: empty, allowed a list of integers")
            if len(set(extra.seeds)) != len(extra.seeds):
                raise UserError(f"{w}.seeds: {_first_duplicate(extra.seeds)} is listed twice")
            for j, model in enumerate(extra.models or []):
                if model not in self.models:
                    raise UserError(f"{w}.models[{j}]: '{model}' is not in models")
            names = [s.name for s in self.method_specs]
            for j, method in enumerate(extra.methods or []):
                if method not in names:
                    raise UserError(f"{w}.methods[{j}]: '{method}' is not in methods")
            for j, budget in enumerate(extra.budgets or []):
                if budget not in ("smallest", "largest") and parse_budget(budget, f"{w}.budgets[{j}]") not in self.parsed_budgets:
                    raise UserError(f"{w}.budgets[{j}]: {show(budget)} is not in budgets "
                                    "(allowed one of budgets, 'smallest' or 'largest')")

    def _validate_teacher_seeds(self, where: str) -> None:
        if len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise UserError(f"{where}.teacher_seeds: a seed is listed twice")
        if self.teacher_seeds and "seed" in self.teacher:
            raise UserError(f"{where}.teacher.seed: set by teacher_seeds, not allowed with it")

    def _validate_train(self, where: str) -> None:
        _check_train_keys(self.train, f"{where}.train")
        teacher_extra = {k: v for k, v in self.teacher.items() if k != "tokens"}
        _check_train_keys(teacher_extra, f"{where}.teacher", owned={"method", "model", "init",
                                                                    "sweep", "corpus", "vocab_size"})
        presets = [m for m in self.models if is_preset(m)]
        if presets and "tokens" not in self.teacher:
            raise UserError(f"{where}.teacher.tokens: missing, allowed the dense teacher budget "
                            "like '20M' or '400xP' (needed to pretrain ladder presets)")
        if "tokens" in self.teacher:
            parse_budget(self.teacher["tokens"], f"{where}.teacher.tokens")
        hf = [m for m in self.models if not is_preset(m)]
        lrs = [s for s in self.method_specs if "lr" not in s.settings]
        if hf and self.train.get("lr") is None and lrs:
            raise UserError(f"{where}.train.lr: required for HF models like '{hf[0]}' (their "
                            "pretraining lr is unknown), allowed a positive number")
        # Build one config per method so a bad value fails now, naming the field.
        for spec in self.method_specs:
            data = {**self.train, **self.eval_settings(where), **spec.settings}
            base = {"method": spec.name, "model": self.models[0], "init": "teacher",
                    "corpus": self.corpus, "vocab_size": self.vocab_size,
                    "tokens": 0 if spec.name in ONESHOT_METHODS else 1}
            cfg = from_dict(TrainConfig, {**base, **data}, where=f"{where}.train")
            self._check_one_step(spec, cfg.seq_len * cfg.batch_size, where)
        if presets:
            data = {**self.train, **self.eval_settings(where), **teacher_extra}
            cfg = from_dict(TrainConfig, {"method": "dense", "model": presets[0], "tokens": 1,
                                          **data}, where=f"{where}.teacher")
            tokens = parse_budget(self.teacher["tokens"], f"{where}.teacher.tokens")
            if isinstance(tokens, int) and tokens < cfg.seq_len * cfg.batch_size:
                raise UserError(f"{where}.teacher.tokens: got {show(self.teacher['tokens'])} "
                                f"({tokens:,} tokens), allowed at least one training step "
                                f"(batch_size x seq_len = {cfg.seq_len * cfg.batch_size:,})")

    def _check_one_step(self, spec: MethodSpec, step: int, where: str) -> None:
        """A trained method's absolute budgets hold at least one optimizer step of tokens
        ('1e-3k' parses to 1 token: a run that trains on one batch and claims a budget)."""
        if spec.name not in TRAINED_METHODS:
            return
        field = f"methods[{self.method_specs.index(spec)}].budgets" if spec.budgets else "budgets"
        raw = spec.budgets if spec.budgets else self.budgets
        for i, value in enumerate(raw):
            tokens = parse_budget(value, f"{where}.{field}[{i}]")
            if isinstance(tokens, int) and tokens < step:
                raise UserError(f"{where}.{field}[{i}]: got {show(value)} ({tokens:,} tokens), "
                                f"allowed at least one training step of {spec.name} "
                                f"(batch_size x seq_len = {step:,} tokens)")

    def _validate_backend(self, where: str) -> None:
        if isinstance(self.backend, str):
            name, options = self.backend, {}
        else:
            options = dict(self.backend)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise UserError(f"{where}.backend.name: missing, allowed {', '.join(BACKENDS)}")
        if name not in BACKENDS:
            raise UserError(f"{where}.backend: unknown backend '{name}', allowed {', '.join(BACKENDS)}")
        self.backend_name = name
        self.backend_options = from_dict(BACKENDS[name].Options, options, where=f"{where}.backend")

    def _validate_results(self, where: str) -> None:
        """A results path written in a sweep file may be absolute (a visible, deliberate place,
        such as a cluster's scratch disk) but a relative one must stay inside the working
        directory: a downloaded file's `../../x` should not write outside it unnoticed.
        ``castlab sweep --results DIR`` on the command line overrides either."""
        if self.results is None:
            return
        if (not isinstance(self.results, str) or not self.results.strip()
                or any(ord(c) < 32 or ord(c) == 127 for c in self.results)
                or len(self.results) > 4096
                or any(len(part.encode()) > 255 for part in Path(self.results).parts)):
            raise UserError(f"{where}.results: got {show(self.results)}, allowed a directory path "
                            "(no control characters such as a newline; at most 255 bytes per "
                            "folder name)")
        path = check_output_dir(Path(self.results).expanduser(), f"{where}.results")
        resolved = path.resolve()
        if not path.is_absolute() and not resolved.is_relative_to(Path.cwd().resolve()):
            raise UserError(f"{where}.results: {show(self.results)} resolves to {resolved}, "
                            "outside the working directory; allowed a path inside it, an "
                            "absolute path, or `castlab sweep --results DIR`")
        check_output_dir(resolved, f"{where}.results")

    # -- derived --------------------------------------------------------------------------------

    def eval_settings(self, where: str = "sweep") -> dict[str, Any]:
        """The eval block as TrainConfig fields."""
        out: dict[str, Any] = {}
        if self.eval.every is not None:
            out["eval_every"] = self.eval.every
        if self.eval.tokens is not None:
            out["eval_tokens"] = parse_count(self.eval.tokens, f"{where}.eval.tokens")
        if self.eval.zeroshot:
            tasks = self.eval.zeroshot
            out["zeroshot_tasks"] = tasks if isinstance(tasks, str) else ",".join(tasks)
        if self.eval.zeroshot_limit is not None:
            if self.eval.zeroshot_limit < 1:
                raise UserError(f"{where}.eval.zeroshot_limit: got {self.eval.zeroshot_limit}, "
                                "allowed a positive number of documents")
            out["zeroshot_limit"] = self.eval.zeroshot_limit
        return out

    def results_dir(self) -> Path:
        """Absolute results directory (remote workers need absolute paths)."""
        return Path(self.results or f"results/{self.name}").expanduser().resolve()


def _first_duplicate(items: list[str]) -> str:
    seen: set[str] = set()
    return next(x for x in items if x in seen or seen.add(x))  # type: ignore[func-returns-value]


def _check_lambda(value: Any, where: str) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e300:
        raise UserError(f"{where}: got {show(value)}, allowed a finite number >= 0 or 'auto'")


def _check_train_keys(data: dict[str, Any], where: str, owned: set[str] | None = None) -> None:
    owned = set(SWEEP_OWNED) if owned is None else owned
    for key in data:
        if key in owned:
            raise UserError(f"{where}.{key}: set by the sweep (use '{SWEEP_OWNED.get(key, key)}'), "
                            "not allowed here")
        if key not in TRAIN_FIELDS:
            raise UserError(f"{where}: unknown key '{key}' (allowed TrainConfig fields: "
                            f"{', '.join(f for f in TRAIN_FIELDS if f not in owned)})")


def load_sweep(path: str | Path, results: str | Path | None = None,
               overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep file; every problem is a one-line UserError naming the field.

    ``results`` (from the command line) replaces the file's ``results:`` before validation, as
    do ``overrides`` ('train.seq_len=128', castlab.sweep.overrides) their fields.
    """
    from castlab.sweep.overrides import apply_overrides

    path = Path(path)
    data = apply_overrides(read_yaml(path, what="sweep file"), overrides, str(path))
    if data is None:
        raise UserError(f"{path}: empty sweep file, allowed a mapping with name, models, methods, ...")
    if results is not None and isinstance(data, dict):
        data = {**data, "results": str(check_output_dir(results, "--results").resolve())}
    return from_dict(SweepSpec, data, where=str(path))

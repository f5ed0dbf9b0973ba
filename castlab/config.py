"""Typed, validated configs with YAML round-trip, and content-hashed run ids.

``from_dict`` checks every field against its annotation and names the offending field and what
is allowed, so a bad sweep or run file fails with one line instead of a traceback later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from castlab.errors import UserError
from castlab.yamlio import read_yaml, show

TRAINED_METHODS = ("dense", "dense-kd", "dense-kd-adam", "cast", "sr-ste", "ast")
ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")
METHODS = TRAINED_METHODS + ONESHOT_METHODS

# Largest token count any count field accepts (1e15 tokens is ~100x today's largest LLM budgets):
# a bound that keeps int(round(x)) finite and a typo like 1e400 a one-line error.
MAX_COUNT = 10**15
# Largest vocabulary castlab trains a BPE for (2^20; the biggest public LLM vocabularies are ~256k).
MAX_VOCAB = 2**20

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (ints accepted for floats); raise UserError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        finite_error = None
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except UserError as err:
                if str(err).endswith("allowed a finite number"):  # the right type, a bad value
                    finite_error = err
        if finite_error is not None:
            raise finite_error
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_type, *_) = typing.get_args(tp) or (Any,)
            items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, where)
        if isinstance(value, tp):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > 1e300 or not math.isfinite(value):
                raise UserError(f"{where}: got {show(value)}, allowed a finite number")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise UserError(f"{where}: got {show(value)}, allowed {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are UserErrors."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(fields)})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{where}: missing required key '{missing[0]}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data dict of a dataclass (tuples become lists) suitable for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def load_yaml(cls: type, path: str | Path) -> Any:
    """Read and validate a dataclass from a YAML file; bad YAML or fields are UserErrors."""
    data = read_yaml(path)
    return from_dict(cls, data if data is not None else {}, where=str(path))


def content_hash(data: Any, length: int = 12) -> str:
    """Stable short hash of plain data (sorted-key JSON)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def parse_count(value: int | float | str, where: str) -> int:
    """Parse a token count such as 2000000, '2M', '500k', '1.5G', '1T' into an int (1..MAX_COUNT)."""
    allowed = f"allowed a positive count like 2000000 or '2M' (at most {MAX_COUNT:.0e})"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where}: got {show(value)}, {allowed}")
    if isinstance(value, (int, float)):
        number = value
    else:
        text = str(value).strip().upper()
        scale = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}.get(text[-1:], 1.0)
        try:
            number = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise UserError(f"{where}: got {show(value)}, {allowed}") from None
    if not number > 0:
        raise UserError(f"{where}: got {show(value)}, allowed a positive count")
    if not number <= MAX_COUNT:  # also catches inf and NaN
        raise UserError(f"{where}: got {show(value)}, {allowed}")
    return int(round(number))


# Allowed range of numeric TrainConfig fields, checked field by field in ``validate``:
# name -> (lowest, highest or None, lowest excluded, highest excluded). Fields with cross-field
# rules (nm_n, eta, lr, ...) keep their own checks below.
FIELD_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "vocab_size": (1, MAX_VOCAB, False, False),
    "seq_len": (1, 2**20, False, False),
    "batch_size": (1, 2**20, False, False),
    "dense_lr": (0, None, True, False),
    "lr_teacher_fraction": (0, None, True, False),
    "min_lr_ratio": (0, 1, False, False),
    "weight_decay": (0, None, False, False),
    "eps": (0, None, True, False),
    "grad_clip": (0, None, False, False),  # 0 turns clipping off
    "lambda_auto_factor": (0, None, True, False),
    "srste_decay": (0, None, False, False),
    "ast_decay": (0, None, False, False),
    "calib_sequences": (1, 2**20, False, False),
    "sparsegpt_damp": (0, None, False, False),
    "seed": (0, 2**32 - 1, False, False),
    "eval_tokens": (1, MAX_COUNT, False, False),
    "final_eval_tokens": (0, MAX_COUNT, False, False),
    "checkpoint_every": (0, None, False, False),
    "threads": (0, 4096, False, False),
    "zeroshot_limit": (0, None, False, False),
}


def check_range(value: float, bounds: tuple[float, float | None, bool, bool], where: str) -> None:
    """UserError naming ``where`` unless ``value`` lies within ``bounds`` (see FIELD_RANGES)."""
    low, high, low_open, high_open = bounds
    ok = (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UserError(f"{where}: got {show(value)}, allowed {allowed}")


# Settings that change where or how fast a run goes, or what extra is measured after it, but not
# the trained model: they stay out of the run id so adding them never orphans a stored run.
NOT_IN_RUN_ID = {"sweep", "threads", "zeroshot_tasks", "zeroshot_limit", "device", "compile"}
# Settings added after runs were stored: they enter the run id only when set, so a stored run
# (which never had them) keeps its id.
IN_RUN_ID_WHEN_SET = {"dropout", "masked_decay_ratio"}

_KD = ("dense-kd", "dense-kd-adam", "cast", "sr-ste", "ast")
_SPARSE = ("cast", "sr-ste", "ast") + ONESHOT_METHODS
_LOOP = TRAINED_METHODS  # settings of the training loop (one-shot runs take no step)
# Settings only some methods read: a run id hashes a setting listed here only for these methods
# (every other setting enters every id), so e.g. a new lambda_ does not retrain a dense-kd twin.
READ_BY: dict[str, tuple[str, ...]] = {
    "dense_lr": ("dense",), "weight_decay": ("dense",),
    "lr": _LOOP, "lr_teacher_fraction": _LOOP, "lr_schedule": _LOOP, "warmup_frac": _LOOP,
    "min_lr_ratio": _LOOP, "betas": _LOOP, "eps": _LOOP, "grad_clip": _LOOP, "batch_size": _LOOP,
    "eval_every": _LOOP, "eval_tokens": _LOOP, "checkpoint_every": _LOOP,
    "lambda_": ("cast",), "lambda_auto_factor": ("cast",), "scale_blocks": ("cast",),
    "adams_bias_correct": ("cast", "dense-kd"), "masked_decay_ratio": ("cast",),
    "eta": _KD, "kd_temperature": _KD, "kd": ("sr-ste", "ast"),
    "t1": ("cast", "sr-ste", "ast"), "nm_n": _SPARSE, "nm_m": _SPARSE,
    "srste_decay": ("sr-ste",), "ast_decay": ("ast",),
    "calib_sequences": ("wanda", "sparsegpt"), "sparsegpt_damp": ("sparsegpt",),
    "seed": TRAINED_METHODS + ("wanda", "sparsegpt"),  # magnitude pruning draws nothing
}


@dataclass
class TrainConfig:
    """Everything that defines one training (or one-shot pruning) run."""

    method: Literal["dense", "dense-kd", "dense-kd-adam", "cast", "sr-ste", "ast", "magnitude", "wanda",
                    "sparsegpt"]
    model: str  # ladder preset (e.g. opt-100k), local model dir, or HF name
    init: str | None = None  # dense starting point / teacher (dir or HF name); None: fresh preset
    tokens: int | str = "1M"  # training budget (0 allowed only for one-shot methods)
    corpus: str = "default"
    vocab_size: int = 8192
    seq_len: int = 128
    batch_size: int = 16
    lr: float | None = None  # None: dense -> dense_lr; others -> from the teacher (schedule.resolve_lr)
    dense_lr: float = 3e-3  # default peak lr of dense pretraining from scratch
    lr_teacher_fraction: float = 0.1  # default peak lr of a continued run, x the teacher's peak lr
    # wsd: warmup, constant, then linear to min_lr_ratio * peak over the last WSD_DECAY_FRAC of
    # the steps (castlab.schedule.lr_at)
    lr_schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    weight_decay: float = 0.0  # AdamW decoupled decay (dense pretraining only)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    lambda_: float | Literal["auto"] = "auto"  # AdamS L1 decay coefficient (CAST only)
    # auto: lambda = factor * mean |grad| of in-scope weights at start; 300 re-measured against
    # 1..300 at 512 and 2,048 steps (ARCHITECTURE.md, lambda auto)
    lambda_auto_factor: float = 300.0
    # AdamS: m~ built from m / (1 - b1^(t+1)) enters v (True), or the spec-literal biased m~
    # (False; first steps ~10x lr). Measured (issue 15, opt-100k, 512 steps): literal 111.6 / 111.2
    # PPL vs corrected 112.1 / 111.3 at lambda factors 10 / 300, so the spec rule stays the default
    adams_bias_correct: bool = False
    # A deviation from CAST_SPEC, off (None) by default: after each AdamS step the masked entries
    # are also shrunk toward zero by a * ratio * lr_t (soft threshold, never past zero), a decay
    # decoupled from the kept weights' step, so a low lr that spares the kept weights still
    # reaches the masked weights (analysis/RECIPE_STUDY.md)
    masked_decay_ratio: float | None = None
    eta: float = 1.0 / 3.0  # KD weight on KL(teacher || student)
    kd_temperature: float = 1.0
    t1: int = 10  # mask refresh interval in steps
    scale_blocks: int = 2  # n of the R x n weight-scaling module (0 disables)
    nm_n: int = 2
    nm_m: int = 4
    srste_decay: float = 2e-4  # SR-STE sparse-refined decay lambda_W (grad += lambda_W * W, masked)
    # AST masked-weight L2 decay at alpha = 1 (grad += alpha*ast_decay*W); 2.0 tuned against 0.2
    # on opt-100k at 512 steps (analysis/LAMBDA_STUDY.md)
    ast_decay: float = 2.0
    kd: bool | None = None  # SR-STE / AST distillation; None: the method's default (AST on, SR-STE off)
    calib_sequences: int = 64  # Wanda / SparseGPT calibration windows from the train split
    sparsegpt_damp: float = 0.01
    seed: int = 0
    # bf16 = autocast forward, fp32 masters; auto = bf16 where the device is CUDA, else fp32
    # (resolved when the config is made, so the stored config and the run id name the real one)
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (castlab.device); not in the run id
    compile: bool = False  # torch.compile the model for training (measured: castlab bench gpu)
    dropout: float | None = None  # continued runs: None keeps the starting model's own dropout
    eval_every: int = 50  # steps
    eval_tokens: int = 65536  # validation-prefix tokens for periodic evals during training
    final_eval_tokens: int = 0  # validation/test-prefix tokens for the final numbers; 0 = whole split
    checkpoint_every: int = 200  # steps; 0 disables
    threads: int = 0  # torch threads; 0 leaves the default
    zeroshot_tasks: str = ""  # castlab.downstream.zeroshot tasks after the run ("" = none, "all")
    zeroshot_limit: int = 0  # documents per zero-shot task (0 = all)
    sweep: str = "adhoc"

    def __post_init__(self) -> None:
        from castlab.device import _SPEC, default_dtype

        if self.dtype == "auto" and isinstance(self.device, str) and _SPEC.match(self.device):
            self.dtype = default_dtype(self.device)

    def validate(self, where: str = "config") -> None:
        """Cross-field checks with messages naming the field."""
        from castlab.device import check_device_spec

        check_device_spec(self.device, f"{where}.device")
        if self.masked_decay_ratio is not None and not self.masked_decay_ratio >= 0:
            raise UserError(f"{where}.masked_decay_ratio: got {show(self.masked_decay_ratio)}, "
                            "allowed a number >= 0 or null (off)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UserError(f"{where}.dropout: got {self.dropout}, allowed [0, 1) or null")
        self.tokens = parse_count(self.tokens, f"{where}.tokens") if self.tokens not in (0, "0") else 0
        positive = {"vocab_size": self.vocab_size, "seq_len": self.seq_len,
                    "batch_size": self.batch_size, "t1": self.t1, "nm_m": self.nm_m,
                    "nm_n": self.nm_n, "eval_tokens": self.eval_tokens, "eval_every": self.eval_every}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"{where}.{name}: got {value}, allowed a positive integer")
        for name, bounds in FIELD_RANGES.items():
            check_range(getattr(self, name), bounds, f"{where}.{name}")
        if len(self.betas) != 2:
            raise UserError(f"{where}.betas: got {show(self.betas)}, allowed two numbers [b1, b2]")
        for i, beta in enumerate(self.betas):
            check_range(beta, (0, 1, False, True), f"{where}.betas[{i}]")
        if self.tokens == 0 and self.method in TRAINED_METHODS:
            raise UserError(f"{where}.tokens: got 0, allowed a positive budget for method {self.method}")
        if self.nm_n >= self.nm_m:
            raise UserError(f"{where}.nm_n: got {self.nm_n}, allowed 1..nm_m-1 (nm_m={self.nm_m})")
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"{where}.eta: got {self.eta}, allowed 0..1")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"{where}.lr: got {self.lr}, allowed a positive number or null")
        if isinstance(self.lambda_, float) and self.lambda_ < 0:
            raise UserError(f"{where}.lambda_: got {self.lambda_}, allowed >= 0 or 'auto'")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise UserError(f"{where}.warmup_frac: got {self.warmup_frac}, allowed [0, 1)")
        if self.kd_temperature <= 0:
            raise UserError(f"{where}.kd_temperature: got {self.kd_temperature}, allowed > 0")
        if self.scale_blocks < 0:
            raise UserError(f"{where}.scale_blocks: got {self.scale_blocks}, allowed >= 0")
        if self.method != "dense" and self.init is None and not self.model:
            raise UserError(f"{where}.init: method {self.method} needs a dense starting model")

    def run_id(self) -> str:
        """Content hash of every setting this run's method reads (``READ_BY``; not sweep name,
        not paths).

        A castlab-trained starting model (``<run_dir>/model``) enters by its run id, so the same
        cell has the same id whatever the cache location or machine.
        """
        semantic = {k: v for k, v in to_dict(self).items() if k not in NOT_IN_RUN_ID
                    and not (k in IN_RUN_ID_WHEN_SET and v is None)
                    and self.method in READ_BY.get(k, (self.method,))}
        semantic["init"] = init_identity(self.init)
        return f"{self.method}-{content_hash(semantic)}"


RUN_DIR_NAME = re.compile(r"^[a-z][a-z-]*-[0-9a-f]{12}$")


def init_identity(init: str | None) -> str | None:
    """'run:<id>' for a castlab run's model directory (``.../<run_id>/model``), else ``init``.

    Decided from the path alone, never from what exists on disk, so a run's id is the same
    before and after its teacher has been trained.
    """
    if init is None:
        return None
    path = Path(init)
    if path.name == "model" and RUN_DIR_NAME.match(path.parent.name):
        return f"run:{path.parent.name}"
    return init

"""What a law is asked to predict: new budgets, new model sizes, new sparsities, or checkpoints
along a known learning-rate schedule (``--predict-for``).

A form that cannot answer a kind of question is not chosen for it: a per-size form (power_d,
loglinear) has no parameters for a size it never saw, and only a form with a sparsity term
(frantar) predicts a sparsity level the runs did not have. The schedule-aware form (lr_anneal)
predicts a point from the lr areas of its run (``--curves``), which a bare budget does not give:
it answers "checkpoints" only, and only it does.
"""

from __future__ import annotations

import numpy as np

from castlab.errors import UserError
from castlab.law.forms import FORMS, Form

TARGETS = ("budgets", "sizes", "sparsities", "checkpoints")


def can_predict(form: Form, target: str) -> bool:
    """Whether ``form`` can predict at a new value of ``target`` (one of TARGETS)."""
    if ("areas" in form.needs) != (target == "checkpoints"):
        return False
    if target == "sizes":
        return not form.per_size
    if target == "sparsities":
        return "s" in form.needs
    return True


def missing(form: Form, targets) -> list[str]:
    """The targets of ``targets`` that ``form`` cannot predict."""
    return [t for t in targets if not can_predict(form, t)]


def default_targets(s: np.ndarray) -> tuple[str, ...]:
    """New budgets always; new sparsities too when the runs have several sparsity levels
    (``s`` is the sparsity per run). New sizes only on request: a law fitted per size is often
    the most accurate one at the sizes it saw."""
    return ("budgets", "sparsities") if len(np.unique(s)) > 1 else ("budgets",)


def parse_targets(text: str | None, s: np.ndarray) -> tuple[str, ...]:
    """``--predict-for``: 'all' (budgets, sizes, sparsities), or a comma list of budgets, sizes,
    sparsities, checkpoints; None: the default."""
    if text is None:
        return default_targets(s)
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return TARGETS[:3]
    bad = [w for w in words if w not in TARGETS]
    if bad or not words:
        raise UserError(f"--predict-for: got {text!r}, allowed 'all' or a comma list of "
                        f"{', '.join(TARGETS)}")
    if "checkpoints" in words and len(words) > 1:
        raise UserError(f"--predict-for: got {text!r}; checkpoints (along a run's known lr "
                        "schedule, form lr_anneal) cannot be combined with other targets")
    return tuple(t for t in TARGETS if t in words)


def forms_that_can(targets, forms=None) -> list[str]:
    """Registered forms (of ``forms``, default all) that can predict every one of ``targets``."""
    return [f for f in (forms or FORMS) if not missing(FORMS[f], targets)]

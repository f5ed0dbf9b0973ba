"""Where a run computes: the one place that decides the device, its dtype and its CUDA settings.

Every path that runs a model asks this module (training, evals, fine-tuning, quantization,
export, the benches): ``check_device_spec`` validates a setting's spelling when a config or
flag is read (a sweep is often planned on a login node without a GPU); ``resolve_device`` turns
``auto | cpu | cuda | cuda:N`` into a ``torch.device`` where the work runs, and fails with one
line when the GPU asked for is not there; ``prepare_device`` applies the CUDA defaults (TF32
matmuls, the current card); ``full_fp32_matmuls`` turns TF32 off for a block that needs fp32
(SparseGPT); ``teacher_copy`` makes the KD teacher in the dtype it runs in; ``device_columns``
records what ran the work in a result row.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re

import torch

# the --device flag lives with the other argparse helpers: command parsers build without torch
from castlab.argtypes import DEVICE_CHOICES, add_device_argument  # noqa: F401 - re-exported
from castlab.errors import UserError

_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device_spec(spec: object, where: str = "device") -> str:
    """``spec`` if it spells a device castlab accepts, else a one-line UserError naming ``where``."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise UserError(f"{where}: got {spec!r}, allowed {DEVICE_CHOICES}")
    return spec


def cuda_count() -> int:
    """Visible CUDA devices (0 without CUDA); does not create a CUDA context."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def wants_cuda(spec: str) -> bool:
    """Whether a (valid) spec runs on CUDA where it is resolved; ``auto`` asks the hardware."""
    return spec.startswith("cuda") or (spec == "auto" and cuda_count() > 0)


def resolve_device(spec: str = "auto", where: str = "device") -> torch.device:
    """The torch.device for a spec: ``auto`` is CUDA when one is visible, else the CPU.

    Under ``torchrun`` (``LOCAL_RANK`` set) ``auto``, ``cuda`` and ``cuda:N`` mean this rank's
    own card, ``cuda:LOCAL_RANK``: a fixed N would put every rank on one card (pick the cards
    with CUDA_VISIBLE_DEVICES). A GPU asked for but not visible is a UserError, so
    ``castlab train --device cuda`` on a machine without one stops with one line instead of a
    CUDA traceback.
    """
    check_device_spec(spec, where)
    if spec == "cpu" or (spec == "auto" and cuda_count() == 0):
        return torch.device("cpu")
    count = cuda_count()
    if count == 0:
        raise UserError(f"{where}: got '{spec}' but no CUDA device is visible "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                        "use cpu or auto")
    if "LOCAL_RANK" in os.environ:  # torchrun: one card per rank on this node
        index = int(os.environ["LOCAL_RANK"])
    elif spec == "auto" or spec == "cuda":
        index = 0
    else:
        index = int(spec.split(":")[1])
    if index >= count:
        raise UserError(f"{where}: got '{spec}' but only {count} CUDA device(s) are visible "
                        f"(allowed cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def default_dtype(spec: str) -> str:
    """The training dtype when a config says ``auto``: bf16 autocast on CUDA, fp32 on the CPU.

    bf16 autocast keeps fp32 master weights (AdamS needs them; the decay is below bf16
    resolution); on CPU fp32 stays the default so existing CPU runs keep their results.
    """
    return "bf16" if wants_cuda(check_device_spec(spec)) else "fp32"


def prepare_device(device: torch.device) -> torch.device:
    """Make ``device`` current and allow TF32 matmuls on CUDA; no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fp32 work left outside autocast (evals in fp32, the optimizer's math is elementwise)
        # may use TF32 tensor cores: ~10 bits of mantissa, as the GPU defaults ask.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


@contextlib.contextmanager
def full_fp32_matmuls():
    """TF32 off for fp32 matmuls and convolutions inside the block, the previous settings
    restored after it: for work whose accuracy is part of the method (SparseGPT's Hessian, its
    inverse and the OBS updates; the reference implementation turns TF32 off), while training
    keeps the TF32 default of ``prepare_device``. Affects CUDA only."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def teacher_copy(model: torch.nn.Module, dtype: str, device: torch.device) -> torch.nn.Module:
    """A frozen copy of ``model`` to serve as the KD teacher, on the model's device.

    Under bf16 autocast on CUDA the copy is cast to bf16 once: autocast would otherwise re-cast
    its fp32 weights to bf16 at every forward (a pass over the weights per step, and their fp32
    copy held in memory). On the CPU, and in fp32 runs, it keeps the model's dtype.
    """
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    if device.type == "cuda" and dtype == "bf16":
        teacher = teacher.to(torch.bfloat16)
    return teacher


def use_device(spec: str = "auto", where: str = "--device") -> torch.device:
    """``resolve_device`` + ``prepare_device``: what a command calls before it loads a model."""
    return prepare_device(resolve_device(spec, where))


def device_columns(device: torch.device) -> dict[str, str]:
    """Result-row columns naming what ran the work: device, its name, torch and CUDA versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        import platform

        name = platform.processor() or platform.machine() or "cpu"
    return {"device": str(device), "device_name": name,
            "cuda_version": (torch.version.cuda or "") if device.type == "cuda" else ""}


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (timers around GPU work need this); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def distributed_backend(device: torch.device) -> str:
    """The torch.distributed backend for a device: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"



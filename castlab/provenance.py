"""What a run's numbers depend on besides its config: recorded in every result row.

A rerun of the same run id with the same code on the same machine is bit-identical (measured:
weights, curve and row). Across machines the float results of the same config differ where the
kernels differ: torch dispatches its CPU kernels by ISA (``cpu_capability``: AVX512 vs AVX2 change
the reduction order of sums, softmax and norms), and MKL picks its GEMM code path by CPU; a
1e-6 relative change after 32 steps grows over a few thousand teacher steps to the spread of
teacher seeds. These columns say which of those a row ran under, so two rows are comparable
bit for bit only when they agree.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache

# Environment variables that change which kernels run or how work is split, so results.
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
                "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# CPU flags that decide which MKL / oneDNN / ATen code paths exist (a VM's model name is often
# just "Intel Xeon Processor", so the flags say more).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
             "amx_bf16", "sve", "asimd")


@lru_cache(maxsize=1)
def cpu_features() -> str:
    """The ISA_FLAGS this CPU has, comma-separated (from /proc/cpuinfo; empty if unknown)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return ",".join(f for f in ISA_FLAGS if f in have)
    except OSError:
        pass
    return ""


@lru_cache(maxsize=1)
def blas() -> str:
    """torch's BLAS and its version, e.g. 'mkl 2024.2' (from ``torch.__config__.show()``)."""
    import torch

    text = torch.__config__.show()
    name = re.search(r"BLAS_INFO=(\w+)", text)
    version = re.search(r"Math Kernel Library Version ([\d.]+)", text)
    label = name.group(1) if name else "unknown"
    return f"{label} {version.group(1)}" if label == "mkl" and version else label


def numerics_env() -> str:
    """The set NUMERICS_ENV variables as 'NAME=value' pairs (empty when none is set)."""
    return ",".join(f"{k}={os.environ[k]}" for k in NUMERICS_ENV if os.environ.get(k))


def columns() -> dict[str, str | int]:
    """Result-row columns: threads, CPU kernel ISA, CPU model and flags, BLAS, allocator, env."""
    import torch

    preload = os.environ.get("LD_PRELOAD", "")
    return {"threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model(), "cpu_features": cpu_features(), "blas": blas(),
            "allocator": "tcmalloc" if "tcmalloc" in preload else "system",
            "numerics_env": numerics_env()}

#!/usr/bin/env bash
# One-time set-up on a fresh machine (Python + pip + registry access): a venv in .venv with castlab,
# the CPU build of torch, the test/scale-out extras, and tcmalloc when apt is usable.
# Safe to re-run: everything already installed is kept.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch==2.13.0 pins the CPU wheel: an unpinned torch resolves a several-GB CUDA build.
# On a GPU machine, install the CUDA torch you want first; pyproject only asks torch>=2.4.
TORCH_SPEC=${CASTLAB_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC" -e '.[dev,ray,slurm,tensorboard]'
# tcmalloc: 1.2-3x faster fp32 training of small models here (castlab re-executes itself with it).
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null 2>&1 \
    || echo "setup.sh: could not install libtcmalloc-minimal4 (optional; training is slower without it)"
fi
echo "setup.sh: ready (.venv/bin/castlab --help)"

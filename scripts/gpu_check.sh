#!/usr/bin/env bash
# castlab's GPU check on an offline GPU node that already has torch and transformers.
#
#   here:      python scripts/pack_gpu_check.py            # -> .gpu/castlab_cache.tar.gz
#   copy the checkout and the bundle to the node, then there:
#              bash scripts/gpu_check.sh .gpu/castlab_cache.tar.gz OUT_DIR
#
# Installs castlab with --no-deps (no network needed; falls back to PYTHONPATH), unpacks the
# corpus/tokenizer bundle into a private cache, checks that castlab imports without lm-eval,
# datasets, ray or submitit, runs the CUDA-marked tests and `castlab bench gpu`, and writes
# OUT_DIR/{env.txt,imports.txt,cuda_tests.txt,bench_gpu.txt}. Sized for one 10-minute command:
# tests <= 4 min, bench <= 5 min (CASTLAB_BENCH_COMPILE=0 skips the torch.compile row).
set -uo pipefail
BUNDLE=${1:?usage: gpu_check.sh BUNDLE OUT_DIR}
OUT=${2:?usage: gpu_check.sh BUNDLE OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export CASTLAB_CACHE=${CASTLAB_CACHE:-/tmp/castlab_gpu_cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 CASTLAB_TCMALLOC=0
mkdir -p "$CASTLAB_CACHE" && tar -xzf "$BUNDLE" -C "$CASTLAB_CACHE" || { echo "bad bundle $BUNDLE"; exit 2; }

if ! $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/pip.txt" 2>&1; then
  echo "pip install -e . failed (see pip.txt); using PYTHONPATH" | tee -a "$OUT/env.txt"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} >>"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# castlab must import on a node without the optional and evaluation-only packages
$PY - >"$OUT/imports.txt" 2>&1 <<'PY'
import sys
import castlab.cli, castlab.train, castlab.commands_train, castlab.downstream.commands, castlab.sweep.commands, castlab.bench_gpu  # noqa
castlab.cli.build_parser()
eager = [m for m in ("lm_eval", "datasets", "ray", "submitit") if m in sys.modules]
print("eagerly imported:", eager or "none")
sys.exit(1 if eager else 0)
PY
echo "imports: rc=$? $(cat "$OUT/imports.txt" | tail -1)"

timeout 240 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m cuda -ra tests/test_cuda.py 2>&1 \
  | tee "$OUT/cuda_tests.txt" | tail -15
echo "cuda tests rc=${PIPESTATUS[0]}"

timeout 300 $PY -m castlab.cli bench gpu >"$OUT/bench_gpu.txt" 2>"$OUT/bench_gpu.log"
echo "bench rc=$?"
cat "$OUT/bench_gpu.log" | tail -12
cat "$OUT/bench_gpu.txt"

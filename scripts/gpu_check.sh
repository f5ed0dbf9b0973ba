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
# OUT_DIR/{env.txt,imports.txt,cuda_tests.txt,bench_gpu.txt,bench_gpu.log}. Sized to leave a
# rerun inside one 15-minute session: tests <= 150 s, bench <= 210 s (a bench stopped at its cap
# still writes the table of the rows it measured), ~6.5 min with set-up
# (CASTLAB_BENCH_COMPILE=0 skips the torch.compile row). Exit status: 0 when every step passed,
# else the first failing step's (124: a step stopped at its cap).
set -uo pipefail
BUNDLE=${1:?usage: gpu_check.sh BUNDLE OUT_DIR}
OUT=${2:?usage: gpu_check.sh BUNDLE OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export CASTLAB_CACHE=${CASTLAB_CACHE:-/tmp/castlab_gpu_cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 CASTLAB_TCMALLOC=0
mkdir -p "$CASTLAB_CACHE" && tar -xzf "$BUNDLE" -C "$CASTLAB_CACHE" || { echo "bad bundle $BUNDLE"; exit 2; }
RC=0
failed() { [ "$RC" = 0 ] && RC=$1; }  # keep the first failure's status

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
r=$?; echo "imports: rc=$r $(tail -1 "$OUT/imports.txt")"; [ $r = 0 ] || failed $r

timeout -k 10 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m cuda -ra tests/test_cuda.py 2>&1 \
  | tee "$OUT/cuda_tests.txt" | tail -15
r=${PIPESTATUS[0]}; echo "cuda tests rc=$r"; [ $r = 0 ] || failed $r

timeout -k 10 210 $PY -m castlab.cli bench gpu >"$OUT/bench_gpu.txt" 2>"$OUT/bench_gpu.log"
r=$?; echo "bench rc=$r"; [ $r = 0 ] || failed $r
if [ ! -s "$OUT/bench_gpu.txt" ]; then  # stopped or crashed: the rows it measured, as a table
  { echo "(partial: bench rc=$r)"; $PY -m castlab.bench_gpu --table-from "$OUT/bench_gpu.log"; } \
    >"$OUT/bench_gpu.txt"
fi
tail -12 "$OUT/bench_gpu.log"
cat "$OUT/bench_gpu.txt"
exit $RC

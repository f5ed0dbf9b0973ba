#!/usr/bin/env bash
# Everything a lent GPU must show, in ONE call of <= 6 minutes on one H200: the CUDA tests,
# `castlab bench gpu` (the ratio table) and the one-window GPU study (sweeps/gpu_window.yaml),
# then `castlab report`.
#
#   here:   python -m castlab.cli data pack --corpus default --out .gpu/corpus.tar.xz   (~3 MiB)
#           bash scripts/gpu_session.sh --rehearse /tmp/session      # the same steps on this CPU
#   there:  bash scripts/gpu_session.sh OUT [PACK]                   # PACK: .gpu/corpus.tar.xz
#   (the device tool: carry [".gpu"], OUT=$OUT; the checkout plus the pack stay << 64 MiB)
#
# Needs torch, transformers, pandas, pyarrow, scipy, matplotlib, tokenizers (no lm-eval, ray,
# submitit, datasets; no network): castlab is installed with `pip install --no-deps -e .`
# (PYTHONPATH when that fails). Steps, each logged with its wall time in OUT/log.txt:
#   setup    install, versions, castlab imports without the optional packages, the corpus pack
#            unpacked into a private cache and tokenized
#   tests    pytest -m cuda tests/test_cuda.py                     cap 75 s
#   bench    castlab bench gpu (torch.compile row off unless CASTLAB_SESSION_BENCH_COMPILE=1)
#            cap 100 s (CASTLAB_SESSION_BENCH_SECONDS); a bench stopped at its cap still leaves
#            the table of the rows it measured
#   estimate castlab sweep sweeps/gpu_window.yaml --dry-run (the H200 throughput model's numbers)
#   study    the window sweep by priority (scripts/gpu_window.py): teachers, CAST + dense-KD
#            seed 0, the trained baseline, the extra seeds; every tier under one hard deadline
#            (SIGINT: children stopped, done rows kept), so a slow card leaves a partial study
#   report   castlab report on whatever rows exist                  cap 60 s (or what is left)
# The session deadline is CASTLAB_SESSION_SECONDS after the start (default 340; 450 rehearsing);
# the study gets what the steps before it left, less 40 s kept for the report (capped at what
# is left), the status and the files, so the whole call ends within ~15 s of the deadline.
# OUT receives at most 7 files, each <= 16 MiB: log.txt, cuda_tests.txt, bench_gpu.txt,
# estimate.txt, rows.csv (one line per run), REPORT.md, study.tar.gz (rows, configs, curves, sweep
# logs, the report and its figures; no weights). Exit status: 0 when every step passed, else the
# first failure's (124: a step or the study stopped at its deadline; 2: bad arguments or pack).
#
# --rehearse: the same steps on this CPU at toy sizes in <= 8 minutes: the tests skip without
# CUDA, the bench runs its CPU rehearsal (CASTLAB_BENCH_GPU_REHEARSE=1, the fused CUDA path
# forced through inductor's CPU backend), the study is gpu_window.yaml rewritten to opt-tiny ..
# opt-330k on the CPU (scripts/gpu_window.py --rehearse); nothing is installed.
# Settings: PYTHON (interpreter), CASTLAB_CACHE (default: a fresh private cache under OUT's
# parent), CASTLAB_SESSION_SECONDS, CASTLAB_SESSION_INSTALL=0|1, CASTLAB_SESSION_SWEEP.
set -uo pipefail
REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; shift; fi
OUT=${1:?usage: gpu_session.sh [--rehearse] OUT [CORPUS_PACK]}
PACK=${2:-.gpu/corpus.tar.xz}
PY=${PYTHON:-python3}
SWEEP=${CASTLAB_SESSION_SWEEP:-sweeps/gpu_window.yaml}
START=$(date +%s)
if [ $REHEARSE = 1 ]; then SECONDS_ALLOWED=${CASTLAB_SESSION_SECONDS:-450}; else SECONDS_ALLOWED=${CASTLAB_SESSION_SECONDS:-340}; fi
DEADLINE=$((START + SECONDS_ALLOWED))
RESERVE=40  # seconds kept after the study for the report and the files
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/castlab_session.XXXXXX")
LOG="$OUT/log.txt"
: >"$LOG"
export CASTLAB_CACHE=${CASTLAB_CACHE:-$WORK/cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 CASTLAB_TCMALLOC=0
RESULTS="$WORK/results"
RC=0
failed() { [ "$RC" = 0 ] && RC=$1; return 0; }  # the first failure's status is the script's
left() { echo $((DEADLINE - $(date +%s))); }
cap() {  # cap WANT KEEP: WANT seconds, or what is left before the deadline less KEEP (>= 5)
  local want=$1 room; room=$(( $(left) - $2 )); [ $room -lt $want ] && want=$room
  [ $want -lt 5 ] && want=5; echo $want; }

# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # step NAME CMD...

# ---- setup
[ -f "$PACK" ] || { echo "corpus pack $PACK is missing: run castlab data pack --corpus default --out $PACK" | tee -a "$LOG"; exit 2; }
if [ "${CASTLAB_SESSION_INSTALL:-$((1 - REHEARSE))}" = 1 ]; then
  step install "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || echo "pip install -e . failed; using PYTHONPATH" | tee -a "$LOG"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CL=("$PY" -m castlab.cli)
{ date -u; echo "rehearse=$REHEARSE deadline=${SECONDS_ALLOWED}s cache=$CASTLAB_CACHE"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} >>"$LOG" 2>&1
step imports "$PY" -c "
import sys
import castlab.cli, castlab.train, castlab.sweep.commands, castlab.bench_gpu, castlab.report  # noqa
castlab.cli.build_parser()
eager = [m for m in ('lm_eval', 'datasets', 'ray', 'submitit') if m in sys.modules]
print('eagerly imported:', eager or 'none')
sys.exit(1 if eager else 0)" || failed $?
read -r CORPUS VOCAB < <("$PY" -c "
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
print(spec['corpus'], spec.get('vocab_size', 8192))" "$SWEEP") || { echo "cannot read $SWEEP" | tee -a "$LOG"; exit 2; }
step unpack-corpus "${CL[@]}" data unpack "$PACK" || { tail -3 "$LOG"; exit 2; }
step tokenize "${CL[@]}" data prepare --corpus "$CORPUS" --vocab-size "$VOCAB" || { tail -3 "$LOG"; exit 2; }

# ---- tests
step cuda-tests timeout -k 10 "$(cap 75 200)" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
  -m cuda -ra tests/test_cuda.py
r=$?; [ $r = 0 ] || failed $r
awk '/^== cuda-tests:/{on=1} on{print} /^== cuda-tests rc=/{on=0}' "$LOG" >"$OUT/cuda_tests.txt"

# ---- bench
BENCH_ENV=(CASTLAB_BENCH_COMPILE="${CASTLAB_SESSION_BENCH_COMPILE:-0}")
[ $REHEARSE = 1 ] && BENCH_ENV+=(CASTLAB_BENCH_GPU_REHEARSE=1)
step bench-gpu env "${BENCH_ENV[@]}" timeout -k 10 "$(cap "${CASTLAB_SESSION_BENCH_SECONDS:-100}" 150)" \
  "$PY" -m castlab.cli bench gpu
r=$?; [ $r = 0 ] || failed $r
{ [ $r = 0 ] || echo "(partial: bench rc=$r; the rows measured before it stopped)"
  "$PY" -m castlab.bench_gpu --table-from "$LOG"; } >"$OUT/bench_gpu.txt" 2>&1

# ---- the estimate model's numbers, then the study by priority
step estimate "${CL[@]}" sweep "$SWEEP" --results "$RESULTS" --dry-run
grep -E '^(phase |CUDA estimates|[0-9]+ runs)' "$LOG" >"$OUT/estimate.txt"
TIERS=("$PY" scripts/gpu_window.py "$SWEEP" "$WORK/tiers" --results "$RESULTS")
[ $REHEARSE = 1 ] && TIERS+=(--rehearse)
while read -r name phase file; do
  room=$(( $(left) - RESERVE ))
  if [ $room -lt 20 ]; then  # too little for one run: the tier would only start and stop
    echo "== $name skipped: the session deadline is reached" | tee -a "$LOG"; failed 124; continue
  fi
  step "$name" timeout -s INT -k 20 "$room" "${CL[@]}" sweep "$file" --results "$RESULTS" \
    --phase "$phase" --quiet
  r=$?
  [ $r = 124 ] && echo "$name stopped at the session deadline; done runs are kept" | tee -a "$LOG"
  [ $r = 0 ] || failed $r
done < <("${TIERS[@]}" 2>>"$LOG")

# ---- report and files
REPORT_ARGS=(--draws "${CASTLAB_SESSION_DRAWS:-300}" --heldout-draws "${CASTLAB_SESSION_HELDOUT_DRAWS:-50}")
step report timeout -k 5 "$(cap 60 12)" "${CL[@]}" report "$RESULTS" --out "$RESULTS/report" "${REPORT_ARGS[@]}" \
  || failed $?
[ -f "$RESULTS/report/REPORT.md" ] && cp "$RESULTS/report/REPORT.md" "$OUT/REPORT.md"
step status timeout -k 2 "$(cap 20 6)" "${CL[@]}" status "$RESULTS"
timeout -k 2 30 "$PY" - "$RESULTS" "$OUT/rows.csv" >>"$LOG" 2>&1 <<'PY'
import sys
from pathlib import Path

import pandas as pd

rows = [pd.read_parquet(p) for p in sorted(Path(sys.argv[1]).rglob("result.parquet"))]
table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
table.to_csv(sys.argv[2], index=False)
print(f"rows.csv: {len(table)} rows")
PY
if [ -d "$RESULTS" ]; then  # rows, configs, curves, sweep logs and the report; no weights
  (cd "$RESULTS" && find . \( -name result.parquet -o -name config.yaml -o -name curve.parquet \
      -o -name sweep_log.jsonl -o -path './report/*' \) -type f -print0 \
    | tar -czf "$OUT/study.tar.gz" --null -T -)
fi
echo "== session rc=$RC after $(( $(date +%s) - START )) s" | tee -a "$LOG"
for f in "$OUT"/*; do  # the device tool brings back files <= 16 MiB
  if [ "$(stat -c %s "$f")" -gt $((16 * 1024 * 1024)) ]; then
    echo "$f is over 16 MiB; keeping its last 15 MiB" | tee -a "$LOG"
    tail -c $((15 * 1024 * 1024)) "$f" >"$f.tmp" && mv "$f.tmp" "$f"
  fi
done
ls -l "$OUT" | tee -a "$LOG"
rm -rf "$WORK"
exit $RC

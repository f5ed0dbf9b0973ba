#!/usr/bin/env bash
# The GPU reference study (sweeps/opt_family_gpu.yaml) on an offline GPU node that already has
# torch and transformers, in two phases that each fit one command.
#
#   here:   castlab data pack --corpus default-xl --out .gpu/corpus.tar.xz
#   there:  bash scripts/gpu_study.sh .gpu/corpus.tar.xz OUT_DIR [all|teachers|students]
#
# With the device tool of this workplace (corpus pack + checkout <= 64 MiB; a teacher pack of
# the full study, ~235 MiB, cannot travel back): run `... teachers` and then, at once while the
# machine is warm (its /tmp cache and ignored results/ are kept between calls), `... students`,
# each with carry [".gpu"]; OUT files come back (<= 16 MiB each), teachers.tar.gz does not.
#
# Installs castlab with --no-deps (falls back to PYTHONPATH), unpacks the corpus pack into a
# private cache and tokenizes it once, then per phase:
#   teachers  `castlab sweep SWEEP --phase teachers`, then `castlab teachers pack` into OUT_DIR
#   students  (unpacks $CASTLAB_STUDY_TEACHER_PACK first when given: a fresh machine) `castlab
#             sweep SWEEP --phase students`, then `castlab report` on the results
# and always leaves in OUT_DIR at most 6 files: log.txt (every step, with times), status.txt,
# dryrun.txt (the estimate before the phase), study.tar.gz (rows, configs, curves, sweep log
# and the report), REPORT.md, teachers.tar.gz. Each phase is stopped cleanly (SIGINT: children
# terminated, done rows kept, a rerun resumes) after CASTLAB_STUDY_PHASE_SECONDS.
#
# Settings (environment), so the same script runs a tiny CPU study in the tests:
#   CASTLAB_STUDY_SWEEP          sweep file (default sweeps/opt_family_gpu.yaml)
#   CASTLAB_STUDY_RESULTS        results dir (default: the sweep file's own)
#   CASTLAB_STUDY_PHASE_SECONDS  time cap of each phase (default 330)
#   CASTLAB_STUDY_TEACHER_PACK   teacher pack to unpack before the student phase
#   CASTLAB_STUDY_INSTALL=0      skip `pip install --no-deps -e .` (PYTHONPATH only)
#   CASTLAB_STUDY_REPORT_ARGS    extra arguments of `castlab report` (e.g. --no-law)
#   CASTLAB_CACHE, PYTHON        cache (default /tmp/castlab_study_cache) and interpreter
set -uo pipefail
PACK=${1:?usage: gpu_study.sh CORPUS_PACK OUT_DIR [all|teachers|students]}
OUT=${2:?usage: gpu_study.sh CORPUS_PACK OUT_DIR [all|teachers|students]}
PHASE=${3:-all}
case "$PHASE" in all|teachers|students) ;; *) echo "phase: got '$PHASE', allowed all, teachers, students"; exit 2;; esac
PY=${PYTHON:-python3}
SWEEP=${CASTLAB_STUDY_SWEEP:-sweeps/opt_family_gpu.yaml}
SECS=${CASTLAB_STUDY_PHASE_SECONDS:-330}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
export CASTLAB_CACHE=${CASTLAB_CACHE:-/tmp/castlab_study_cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 CASTLAB_TCMALLOC=0
mkdir -p "$CASTLAB_CACHE"

# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # step NAME CMD...

if [ "${CASTLAB_STUDY_INSTALL:-1}" != 0 ]; then
  step install $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || echo "pip install -e . failed; using PYTHONPATH" | tee -a "$LOG"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CL=("$PY" -m castlab.cli)
{ date -u; command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} >>"$LOG" 2>&1

# the corpus and vocabulary the sweep file names, read by castlab's own loader
read -r CORPUS VOCAB RESULTS < <($PY - "$SWEEP" <<'PY'
import sys
from castlab.sweep.spec import load_sweep
spec = load_sweep(sys.argv[1])
print(spec.corpus, spec.vocab_size, spec.results_dir())
PY
) || { echo "cannot read $SWEEP (see above)"; exit 2; }
RESULTS=${CASTLAB_STUDY_RESULTS:-$RESULTS}
step unpack-corpus "${CL[@]}" data unpack "$PACK" || { tail -3 "$LOG"; exit 2; }
step tokenize "${CL[@]}" data prepare --corpus "$CORPUS" --vocab-size "$VOCAB" || { tail -3 "$LOG"; exit 2; }

run_phase() {  # run_phase teachers|students: the sweep phase under the time cap, then status
  local start
  start=$(wc -l <"$LOG")
  step "dry-run-$1" "${CL[@]}" sweep "$SWEEP" --results "$RESULTS" --phase "$1" --dry-run
  tail -n +"$((start + 1))" "$LOG" | grep -E '^(phase|CUDA|[0-9]+ runs)' >>"$OUT/dryrun.txt"
  step "sweep-$1" timeout -s INT -k 60 "$SECS" "${CL[@]}" sweep "$SWEEP" --results "$RESULTS" \
    --phase "$1" --quiet
  local rc=$?
  [ $rc = 124 ] && echo "phase $1 stopped at its ${SECS}s cap; done runs are kept, a rerun resumes" | tee -a "$LOG"
  return $rc
}

RC=0  # the script's exit code: the first failing phase's (2: refused, 124: stopped at the cap)
if [ "$PHASE" != students ]; then
  run_phase teachers || RC=$?
  step pack-teachers "${CL[@]}" teachers pack "$OUT/teachers.tar.gz" --sweep "$SWEEP"
  r=$?; [ $RC = 0 ] && RC=$r
fi
if [ "$PHASE" != teachers ]; then
  if [ -n "${CASTLAB_STUDY_TEACHER_PACK:-}" ]; then
    step unpack-teachers "${CL[@]}" teachers unpack "$CASTLAB_STUDY_TEACHER_PACK"
    r=$?; [ $RC = 0 ] && RC=$r
  fi
  run_phase students
  r=$?; [ $RC = 0 ] && RC=$r
  # shellcheck disable=SC2086 # word splitting of the extra report arguments is intended
  step report "${CL[@]}" report "$RESULTS" --out "$RESULTS/report" ${CASTLAB_STUDY_REPORT_ARGS:-}
  [ -f "$RESULTS/report/REPORT.md" ] && cp "$RESULTS/report/REPORT.md" "$OUT/REPORT.md"
fi

"${CL[@]}" status "$RESULTS" >"$OUT/status.txt" 2>&1
if [ -d "$RESULTS" ]; then  # rows, configs, curves, the sweep log and the report; no weights
  (cd "$RESULTS" && find . \( -name result.parquet -o -name config.yaml -o -name curve.parquet \
      -o -name sweep_log.jsonl -o -path './report/*' \) -type f -print0 \
    | tar -czf "$OUT/study.tar.gz" --null -T -)
fi
tail -4 "$OUT/status.txt"
ls -l "$OUT" | tee -a "$LOG"
exit $RC

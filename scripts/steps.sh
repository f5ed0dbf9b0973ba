# Sourced by scripts/gpu_session.sh and scripts/gpu_study.sh (needs $LOG).
# step NAME CMD...: run, append its output and wall time to $LOG, return its rc; with $START set
# (epoch seconds), the line also says how far into the session the step ended.
step() {
  local name=$1 t0 rc ms
  shift
  t0=$(date +%s%N)
  echo "== $name: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "== $name rc=$rc $((ms / 1000)).$(( ms % 1000 / 100 )) s${START:+ (t+$(( $(date +%s) - START )) s)}" | tee -a "$LOG"
  return $rc
}

#!/bin/bash
# Re-ship the default study (issue 21) once `castlab sweep sweeps/opt_family.yaml` has finished:
# the shipped rows move to results/reference/opt_family_v2 (the report's previous study), the new
# rows are copied in (rows, curves, configs; no weights), REPORT.md and its figures regenerated,
# and the closing numbers printed. Run from the repository root:
#
#     bash analysis/ship_opt_family.sh [RESULTS (default results/opt_family)] [WALL_SECONDS] [cold]
#
# WALL_SECONDS: the sweep's wall time, if it was measured on an idle machine (else the report
# says it is unknown); add 'cold' when the sweep also trained its teachers (an empty cache). Then update README's "What the reference study shows" from REPORT.md.
set -euo pipefail
src=${1:-results/opt_family}
wall=${2:-}
timing_flag=--sweep-seconds
[ "${3:-}" = cold ] && timing_flag=--cold-sweep-seconds
py=${PYTHON:-python}
$py -m castlab.cli status "$src" >/dev/null   # refuses a missing or unreadable folder
if [ -d results/reference/opt_family_v2 ]; then
  echo "results/reference/opt_family_v2 exists already: shipped before?" >&2; exit 2
fi
git mv results/reference/opt_family results/reference/opt_family_v2
$py -m analysis.make_report --ship-from "$src" ${wall:+$timing_flag "$wall"}
git add results/reference/opt_family results/reference/opt_family_v2 analysis/REPORT.md \
  analysis/figures
echo "--- castlab report (headline, paired comparisons)"
$py -m castlab.cli report results/reference/opt_family --out /tmp/opt_family_report
sed -n '1,200p' /tmp/opt_family_report/REPORT.md | grep -A40 -i "paired" | head -60
echo "--- fit-law auto (held-out: D/2 -> D, D/4 -> D)"
$py -m castlab.cli fit-law results/reference/opt_family --form auto --method cast \
  --out /tmp/opt_family_law --no-plots

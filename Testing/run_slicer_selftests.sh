#!/usr/bin/env bash
# Runs every module's self-test (<Module>Test.runTest) inside a real 3D Slicer application, without a main
# window, on a virtual screen. The same tests run in CI through the slicer-core shim (Testing/slicer_shim.py).
#
#   Testing/run_slicer_selftests.sh /path/to/Slicer [Module ...]
#
# Needs xvfb-run on Linux (Debian: apt-get install xvfb) unless a display is available, and nilearn inside
# Slicer's Python for the synthetic case (PythonSlicer -m pip install nilearn).
set -euo pipefail
slicer=${1:?usage: $0 /path/to/Slicer [Module ...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(DSCPerfusion GliomaProgression CTVPlanner)

run=()
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
  run=(xvfb-run --auto-servernum --server-args="-screen 0 1280x1024x24")
fi

status=0
for module in "${modules[@]}"; do
  echo "== ${module}"
  code="import sys, traceback, slicer
try:
    module = __import__('${module}')
    getattr(module, '${module}Test')().runTest()
    print('${module}: self-test passed')
    slicer.util.exit(0)
except Exception:
    traceback.print_exc()
    slicer.util.exit(1)"
  if ! "${run[@]}" "${slicer}" --no-splash --no-main-window --testing \
      --additional-module-paths "${root}/DSCPerfusion" "${root}/GliomaProgression" "${root}/CTVPlanner" \
      --python-code "${code}"; then
    echo "${module}: self-test FAILED" >&2
    status=1
  fi
done
exit ${status}

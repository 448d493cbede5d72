#!/usr/bin/env bash
# Runs every module in a real 3D Slicer application, on a virtual screen when there is no display: for each
# module, one Slicer process opens the module (slicer.util.selectModule, which builds its widget through
# setup()), checks that the widget exists, runs its self-test (<Module>Test.runTest) and exits non-zero on any
# exception - including one that Slicer prints through sys.excepthook from a Qt slot or from the widget's setup()
# and then carries on past.
#
# By default the modules run from a built extension's layout: Testing/install_tree.py copies exactly what each
# module's CMakeLists.txt installs into a temporary lib/Slicer-X.Y/qt-scripted-modules/ folder, and Slicer is
# started on that folder alone, so a file the CMakeLists.txt does not list fails here as it would in a package.
# --source-tree runs the module folders of this repository instead.
#
#   Testing/run_slicer_selftests.sh [--source-tree] /path/to/Slicer [Module ...]
#
# Needs python3 (or this repository's .venv) to build the install tree, xvfb-run on Linux (Debian: apt-get
# install xvfb) unless a display is available, and the Python packages of
# GliomaProgression/Resources/requirements.txt inside Slicer: the self-tests do not offer to install them; the
# Glioma Progression buttons Predict progression, Compute nCBV features and Generate and load do. This
# repository's CI has no Slicer application: there the panels and self-tests run on Slicer's Python layer
# instead (Testing/slicer_app).
set -euo pipefail

usage="usage: $0 [--source-tree] /path/to/Slicer [Module ...]"
source_tree=0
while [ $# -gt 0 ]; do
  case "$1" in
    --source-tree) source_tree=1; shift ;;
    -h|--help) echo "${usage}"; exit 0 ;;
    --) shift; break ;;
    -*) echo "unknown option: $1" >&2; echo "${usage}" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "${usage}" >&2; exit 2; }
slicer=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(DSCPerfusion GliomaProgression CTVPlanner)

if [ "${source_tree}" -eq 1 ]; then
  module_paths=("${root}/DSCPerfusion" "${root}/GliomaProgression" "${root}/CTVPlanner")
else
  python=python3
  [ -x "${root}/.venv/bin/python" ] && python="${root}/.venv/bin/python"
  prefix=$(mktemp -d -t gliomaprog-install-tree.XXXXXX)
  trap 'rm -rf "${prefix}"' EXIT
  "${python}" "${root}/Testing/install_tree.py" "${prefix}" >/dev/null
  module_paths=()
  for folder in "${prefix}"/lib/Slicer-*/qt-scripted-modules; do
    [ -d "${folder}" ] && module_paths+=("${folder}")
  done
  if [ ${#module_paths[@]} -eq 0 ]; then
    echo "Testing/install_tree.py made no qt-scripted-modules folder under ${prefix}" >&2
    exit 1
  fi
  echo "Install tree: ${module_paths[*]}"
fi

run=()
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
  run=(xvfb-run --auto-servernum --server-args="-screen 0 1280x1024x24")
fi

# Runs inside Slicer; the module name and the folders it must come from are passed in the environment.
read -r -d '' code <<'PYTHON' || true
import os, sys, traceback
import slicer

name = os.environ["GLIOMAPROG_SELFTEST_MODULE"]
folders = [os.path.realpath(f) for f in os.environ["GLIOMAPROG_SELFTEST_PATHS"].split(os.pathsep)]
errors = []
previousHook = sys.excepthook


def recordingHook(kind, value, tb):
    # Exceptions in Qt slots and in the widget's setup() reach here (printed by Slicer, then carried on past).
    errors.append(value)
    previousHook(kind, value, tb)


sys.excepthook = recordingHook
try:
    module = sys.modules.get(name) or __import__(name)
    where = os.path.realpath(module.__file__)
    if not any(where.startswith(folder + os.sep) for folder in folders):
        raise RuntimeError(f"{name} was loaded from {where}, not from {os.pathsep.join(folders)}")
    slicer.util.selectModule(name)
    slicer.app.processEvents()
    widget = slicer.util.getModuleWidget(name)
    if widget is None:
        raise RuntimeError(f"{name}: no module widget after selectModule")
    if errors:
        raise RuntimeError(f"{name}: building the widget raised {errors!r}")
    print(f"{name}: widget built from {where}")
    getattr(module, name + "Test")().runTest()
    slicer.app.processEvents()
    if errors:
        raise RuntimeError(f"{name}: the self-test raised in a Qt slot: {errors!r}")
    print(f"{name}: self-test passed")
    status = 0
except Exception:
    traceback.print_exc()
    status = 1
sys.stdout.flush()
sys.stderr.flush()
slicer.util.exit(status)
PYTHON

paths=$(IFS=:; echo "${module_paths[*]}")
status=0
for module in "${modules[@]}"; do
  echo "== ${module}"
  if ! GLIOMAPROG_SELFTEST_MODULE="${module}" GLIOMAPROG_SELFTEST_PATHS="${paths}" \
      ${run[@]+"${run[@]}"} "${slicer}" --no-splash --testing \
      --additional-module-paths "${module_paths[@]}" \
      --python-code "${code}"; then
    echo "${module}: widget or self-test FAILED" >&2
    status=1
  fi
done
exit ${status}

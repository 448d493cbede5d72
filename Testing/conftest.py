"""pytest set-up for the main suite: a fresh slicer-core MRML scene per test that asks, a throwaway model cache, and
the synthetic cases many test files share (generated once per pytest process: with ``-n 2 --dist loadfile`` once
per worker). The command-line helpers are in ``helpers.py``.

The tests that run the modules on Slicer's own Python layer live in ``slicer_app/`` and run in a pytest process
of their own, once per Slicer version (``make test`` does it; see slicer_app/conftest.py): they replace ``qt``
and parts of ``slicer`` for the whole process, so this suite does not collect them unless asked to.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Shipped models are unpacked into a cache on first use: in tests, a throwaway one, never the user's home.
os.environ.setdefault("GLIOMAPROG_MODELS_DIR", tempfile.mkdtemp(prefix="gliomaprog-test-models-"))
TESTING = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTING))
REPO = TESTING.parent
for _module in ("DSCPerfusion", "GliomaProgression", "CTVPlanner"):
    if str(REPO / _module) not in sys.path:
        sys.path.insert(0, str(REPO / _module))


def pytest_ignore_collect(collection_path, config):
    if collection_path == TESTING / "slicer_app" and not os.environ.get("GLIOMAPROG_SLICER_VERSION"):
        return True
    return None


# The test files that keep a worker longest (measured with --durations in make test, heaviest first). Only the order
# changes: pytest-xdist hands out whole files (--dist loadfile) in collection order, so these start at once and
# the short files fill the gaps, instead of one worker ending with a long file alone.
LONG_FILES = ("test_workflow.py", "test_registration.py", "test_cohort_train.py", "test_cohort_export.py",
              "test_run_case.py", "test_inference.py", "test_channels.py", "test_no_dsc_and_brats.py", "test_phantom.py",
              "test_dependencies.py", "test_hostile_models.py", "test_hostile_runs.py", "test_cli.py",
              "test_phantom_variants_run.py", "test_cohort_evaluate_ctv.py", "test_models.py", "test_run_invasion.py",
              "test_cohort_replicate.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: a file's tests keep their order


@pytest.fixture
def scene():
    from GliomaProgressionLib import mrml

    return mrml.new_scene()


@pytest.fixture(scope="module")
def fresh_model_cache(tmp_path_factory):
    """An empty model cache for one test module: shipped packages are unpacked (and verified) anew."""
    folder = tmp_path_factory.mktemp("models")
    previous = os.environ.get("GLIOMAPROG_MODELS_DIR")
    os.environ["GLIOMAPROG_MODELS_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("GLIOMAPROG_MODELS_DIR", None)
    else:
        os.environ["GLIOMAPROG_MODELS_DIR"] = previous


# --- the shared synthetic cases ------------------------------------------------------------------------------

SMALL_CASE = {"seed": 3, "size": "small"}  # the small case the command-line and end-to-end tests share
FULL_CASE = {"seed": 0, "size": "full"}  # the case `make demo` runs on


def _read_only(case):
    """The case with every array read-only: a test that changes one must work on its own copy."""
    for volume in (case.t1c, case.flair, case.dsc, case.lesion, *case.truth.values(),
                   *(getattr(case, "diffusion", None) or {}).values()):
        if volume is not None:  # a case made without DSC has none
            volume.array.flags.writeable = False
    if case.frame_times_s is not None:
        case.frame_times_s.flags.writeable = False
    return case


@pytest.fixture(scope="session")
def synthetic_case():
    """``synthetic_case(seed=..., size=..., **other PhantomConfig fields)``: the generated case, made once per
    process for each configuration and shared (arrays read-only)."""
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    made = {}

    def case(**config):
        key = tuple(sorted(config.items()))
        if key not in made:
            made[key] = _read_only(generate_case(PhantomConfig(**config)))
        return made[key]

    return case


@pytest.fixture(scope="session")
def small_case(synthetic_case):
    """The small synthetic case (seed 3; 2-2.4 mm CE-T1, 60 DSC frames), shared, arrays read-only."""
    return synthetic_case(**SMALL_CASE)


@pytest.fixture(scope="session")
def small_case_folder(tmp_path_factory, small_case) -> Path:
    """``small_case`` written as a case folder (the layout ``gliomaprog run`` reads), shared: a test that changes
    it works on a copy (``shutil.copytree`` into its ``tmp_path``)."""
    from GliomaProgressionLib.phantom.folder import write_case

    return write_case(small_case, tmp_path_factory.mktemp("small-case") / "case")


@pytest.fixture(scope="session")
def full_case(synthetic_case):
    """The full-size synthetic case (seed 0, clinical grids), as ``make demo`` generates it; ~15 s to make, so
    only for tests marked slow."""
    return synthetic_case(**FULL_CASE)

"""pytest set-up for the main suite: a fresh slicer-core MRML scene per test that asks, a throwaway model cache.

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

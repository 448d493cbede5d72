"""pytest set-up: the slicer-core test shim (see slicer_shim.py) and a fresh MRML scene per test that asks."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Shipped models are unpacked into a cache on first use: in tests, a throwaway one, never the user's home.
os.environ.setdefault("GLIOMAPROG_MODELS_DIR", tempfile.mkdtemp(prefix="gliomaprog-test-models-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_shim  # noqa: E402

slicer_shim.install()


@pytest.fixture
def scene():
    return slicer_shim.fresh_scene()


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

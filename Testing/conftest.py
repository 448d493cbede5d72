"""pytest set-up: the slicer-core test shim (see slicer_shim.py) and a fresh MRML scene per test that asks."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_shim  # noqa: E402

slicer_shim.install()


@pytest.fixture
def scene():
    return slicer_shim.fresh_scene()

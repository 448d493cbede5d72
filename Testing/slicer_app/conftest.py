"""The modules on Slicer's own Python layer (see layer.py), for one Slicer version per pytest process.

    GLIOMAPROG_SLICER_VERSION=5.12.3 python -m pytest Testing/slicer_app     (or =main; make test runs both)

Slicer's Python layer is read from SLICER_PYTHON_DIR or ../shared/slicer-reference beside the repository.
Without it these tests skip with one line saying how to point them at Slicer - except under CI=true, where a
missing layer is an error. GLIOMAPROG_PANELS_DIR=<folder> saves a picture of each panel after its Apply.
"""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import layer  # noqa: E402

VERSION = os.environ.get("GLIOMAPROG_SLICER_VERSION", "5.12.3")


def pytest_report_header(config):
    root = layer.referenceRoot(VERSION) if VERSION in layer.VERSIONS else None
    return f"Slicer Python layer {VERSION}: {root or 'not found'}"


@pytest.fixture(scope="session")
def app():
    if VERSION not in layer.VERSIONS:
        pytest.exit(f"GLIOMAPROG_SLICER_VERSION must be one of {', '.join(layer.VERSIONS)}, got {VERSION!r}.", 2)
    if layer.referenceRoot(VERSION) is None:
        message = f"Slicer {VERSION} Python layer not found: {layer.HOW_TO_POINT}."
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    application = layer.install(VERSION)
    application.loadModules()
    return application


@pytest.fixture
def scene(app):
    """The application's one scene, closed before the test as File > Close Scene does."""
    app.closeScene()
    app.recorder.take()
    app.unexpectedDialogs.clear()
    yield app.scene
    errors, dialogs = app.recorder.take(), list(app.unexpectedDialogs)
    assert not errors, f"exceptions were raised in Qt slots: {errors}"
    assert not dialogs, f"message boxes nobody expected: {dialogs}"


@pytest.fixture
def panelsDir():
    folder = os.environ.get("GLIOMAPROG_PANELS_DIR")
    return Path(folder) if folder else None


def savePanel(widget, folder, name):
    """A picture of a module panel (offscreen render of the stand-in widgets: shows layout and texts)."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    panel = widget.parent
    panel.resize(480, max(700, panel.sizeHint.height()))  # a property, as in PythonQt
    panel.show()
    path = folder / f"{name}-{VERSION}.png"
    panel.grab().save(str(path))
    return path


_exitStatus = 0


def pytest_sessionfinish(session, exitstatus):
    global _exitStatus
    _exitStatus = int(exitstatus)


def pytest_unconfigure(config):
    """PySide6 and VTK objects that outlive the Qt application can crash CPython's final garbage collection (a
    refcount abort after every test has reported). The results are final here: end the process with pytest's
    own exit status rather than let a teardown crash replace it."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exitStatus)

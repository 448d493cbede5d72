# Two commands do all set-up on a fresh machine with Python 3.10+ (3.11 tested):
#   make test   creates/updates .venv, installs everything, runs the whole test suite
#   make demo   creates/updates .venv, generates the synthetic case and writes it as files and a Slicer scene
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Every pip call goes through the constraints file: it pins torch to the CPU build (see constraints.txt).
PIP_INSTALL := $(PIP) install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed
DEMO := demo_output

.PHONY: all venv test demo clean

all: test

$(STAMP): pyproject.toml constraints.txt Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip "setuptools>=77" wheel numpy
	# pyradiomics 3.0.1 ships no wheel and its sdist needs numpy at build time: build it against the venv's numpy.
	$(PIP_INSTALL) --no-build-isolation pyradiomics==3.0.1
	$(PIP_INSTALL) --editable '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collects no test: that is a failure here, not a green run.
test: $(STAMP)
	@QT_QPA_PLATFORM=offscreen $(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

demo: $(STAMP)
	@rm -rf $(DEMO)
	$(VENV)/bin/gliomaprog phantom --out $(DEMO)/case --seed 0 --size full --scene $(DEMO)/scene.mrb
	@echo "Demo case: $(DEMO)/case   Slicer scene: $(DEMO)/scene.mrb (synthetic data, not for clinical use)"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache *.egg-info

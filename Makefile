# Two commands do all set-up on a fresh machine with Python 3.10+ (3.11 tested):
#   make test   creates/updates .venv, installs everything, runs the whole test suite
#   make demo   creates/updates .venv, generates the synthetic case and runs the whole chain on it (gliomaprog run)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Every pip call goes through the constraints file: it pins torch to the CPU build (see constraints.txt).
PIP_INSTALL := $(PIP) install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed
DEMO := demo_output

.PHONY: all venv test test-main test-replicate test-slicer test-fast test-fast-main test-fast-slicer panels demo demo-habitat-model demo-invasion-model clean

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
PYTEST = QT_QPA_PLATFORM=offscreen $(PY) -m pytest
define run_pytest
	@$(1) $(PYTEST) $(2); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests ($(2))" >&2; exit 1; fi; exit $$status
endef
# The modules on Slicer's own Python layer run in a process of their own per Slicer version (Testing/slicer_app):
# 5.12.3 (stable) and main (the 5.13 preview).
# The three parts side by side (output kept per part): the Slicer layer's tests wait on event loops and
# background jobs, so they fill the gaps the main suite's two workers leave.
test: $(STAMP)
	@$(MAKE) --no-print-directory -j3 -O test-main test-slicer-5.12.3 test-slicer-main

# Three workers on two cores, a test file each at a time (module fixtures stay in one process): the end-to-end
# tests spend much of their time waiting on child processes (nnU-Net workers, Snakemake jobs, SLURM status checks),
# so a third worker fills cores two would leave idle (CI's 1075 s with two workers used 1.5 cores on average; four
# workers were slower than three). Files are handed out in the order conftest.LONG_FILES gives them, longest first
# (--no-loadscope-reorder): pytest-xdist would otherwise start with the files that hold the most tests, and the
# workflow's five-minute file, which holds few, would start last and end alone.
test-main: $(STAMP)
	$(call run_pytest,,-n 3 --dist loadfile --no-loadscope-reorder -m "not replicate" --durations=25)

# The cohort replication end to end on a tiny cohort (~3 min on 2 cores): its parts are tested in make test, the
# whole command here, to keep make test within 15 minutes. Run it when cohort/replicate.py or what it calls changes.
test-replicate: $(STAMP)
	$(call run_pytest,,Testing/test_cohort_replicate.py -m replicate)

# Both versions side by side (two cores; output kept per version).
test-slicer: $(STAMP)
	@$(MAKE) --no-print-directory -j2 -O test-slicer-5.12.3 test-slicer-main

test-slicer-5.12.3: $(STAMP)
	$(call run_pytest,GLIOMAPROG_SLICER_VERSION=5.12.3,Testing/slicer_app)

# The 5.13 preview: every test but the slow end-to-end ones (a whole prediction or self-test), which run the same
# library code as on 5.12 and would not fit the 15-minute budget twice.
test-slicer-main: $(STAMP)
	$(call run_pytest,GLIOMAPROG_SLICER_VERSION=main,Testing/slicer_app -m "not slow")

# The fast loop for developers: everything but the slow tests, one Slicer version, the two halves side by side
# (two cores: the main suite on two workers fills them, the Slicer layer uses the gaps); stops at a first failure.
test-fast: $(STAMP)
	@$(MAKE) --no-print-directory -j2 -O test-fast-main test-fast-slicer

test-fast-main: $(STAMP)
	$(call run_pytest,,-n 2 --dist loadfile --no-loadscope-reorder -m "not slow" -x -q)

test-fast-slicer: $(STAMP)
	$(call run_pytest,GLIOMAPROG_SLICER_VERSION=5.12.3,Testing/slicer_app -m "not slow" -x -q)

# Pictures of the three panels after a full Apply (stand-in widgets, offscreen), under build/panels.
panels: $(STAMP)
	$(call run_pytest,GLIOMAPROG_SLICER_VERSION=5.12.3 GLIOMAPROG_PANELS_DIR=build/panels,Testing/slicer_app -k "panel_apply or panel_full" -q)

# The synthetic case (full size), then the whole chain on it with the shipped multiparametric demo model; the
# phantom's future-progression truth stands in for the follow-up recurrence the CTV metrics are measured against.
demo: $(STAMP)
	@rm -rf $(DEMO)
	$(VENV)/bin/gliomaprog phantom --out $(DEMO)/synthetic_case --seed 0 --size full
	$(VENV)/bin/gliomaprog run $(DEMO)/synthetic_case --out $(DEMO)/run --model multiparametric \
		--recurrence $(DEMO)/synthetic_case/truth/progression.nii.gz
	@echo "Report: $(DEMO)/run/report.png   Slicer scene: $(DEMO)/run/scene.mrb   All results: $(DEMO)/run"
	@echo "(synthetic case; demo model trained on synthetic data - not for clinical use)"

# Re-trains both demo progression models from scratch: a synthetic phantom cohort, nnU-Net v2 on the CPU, then
# GliomaProgression/Resources/models/{conventional,multiparametric}.zip and their sha256 + metadata in
# GliomaProgression/Resources/Models.json (the module's Resources, installed with it).
# About 25-30 min on 2 CPU cores. Trained on synthetic data - not for clinical use.
.PHONY: demo-models
demo-models: $(STAMP)
	rm -rf build/demo_models
	$(PY) -m GliomaProgressionLib.models.training all --work build/demo_models --resources GliomaProgression/Resources

# Simulated replication of seed 000 (issue 7): 60 training + 30 test phantom cases, both channel sets trained with
# the small CPU plan side by side, evaluated with 'gliomaprog cohort evaluate --compare'. Measured: 16.5 min on 2 CPU
# cores (docs/replication_seed000); budget 20 min. Synthetic data - not for clinical use.
REPLICATE_EPOCHS ?= 50
.PHONY: replicate
replicate: $(STAMP)
	rm -rf build/replicate
	$(PY) -m GliomaProgressionLib.cli.main cohort replicate --out build/replicate --train 60 --test 30 \
		--epochs $(REPLICATE_EPOCHS) --iterations 20

# The shipped perfusion-habitat demo model (seed 002), trained on synthetic data - not for clinical use: 60 small
# phantom cases with habitat truth (seeds 4000-4059), gliomaprog cohort habitats-train, then the package copied to
# GliomaProgression/Resources/models/habitats_demo.zip and its entry (sha256, training record, wall time) put in
# Models.json. Any other seed can be used to check it (benchmarks/bench_habitats.py uses full-size 4100-4102).
HABITAT_DEMO := build/habitats_demo
HABITAT_SEEDS := $(shell seq 4000 4059)
demo-habitat-model: $(STAMP)
	@rm -rf $(HABITAT_DEMO)
	@mkdir -p $(HABITAT_DEMO)/cohort
	@echo "Generating $(words $(HABITAT_SEEDS)) small phantom cases with habitat truth"
	@printf '%s\n' $(HABITAT_SEEDS) | xargs -P 2 -I{} $(VENV)/bin/gliomaprog phantom --habitats --size small \
		--seed {} --out $(HABITAT_DEMO)/cohort/case_{} --quiet
	$(VENV)/bin/gliomaprog cohort habitats-train $(HABITAT_DEMO)/cohort --out $(HABITAT_DEMO)/model \
		--id habitats-demo --title "Demo: perfusion habitats (synthetic)" --synthetic --seed 0
	$(PY) -m GliomaProgressionLib.models.habitat_packages register $(HABITAT_DEMO)/model/models_entry.json \
		$(HABITAT_DEMO)/model/habitats_demo.zip
	@cat $(HABITAT_DEMO)/model/models_entry.json

# The shipped invasion-map demo model (seed 004, Yan et al. 2020), trained on synthetic data - not for clinical use:
# 12 small phantom cases of the ADC replication cohort (phantom.synthetic.adc_replication_config: the progression
# wedge shows on ADC only in seeds 5006-5018's "adc" cases, on nCBV only in the others; no seed whose wedge shows
# nowhere), gliomaprog cohort invasion-train on CE-T1, FLAIR, nCBV and ADC at 2 mm (4 patients held out, seed 0),
# then the package copied to GliomaProgression/Resources/models/invasion_demo.zip and its entry (sha256, training
# record, held-out evaluation) put in Models.json. About 10 min on 2 loaded CPU cores. One thread per process: the
# same weights every time (the zip's bytes differ only by the recorded wall time).
INVASION_DEMO := build/invasion_demo
INVASION_SEEDS := 5000 5001 5002 5004 5005 5006 5008 5009 5012 5014 5017 5018
demo-invasion-model: $(STAMP)
	@rm -rf $(INVASION_DEMO)
	@mkdir -p $(INVASION_DEMO)
	@echo "Generating $(words $(INVASION_SEEDS)) small phantom cases of the ADC replication cohort"
	OMP_NUM_THREADS=1 $(PY) -c "import sys; from pathlib import Path; \
		from GliomaProgressionLib.cohort.replicate import build_phantom_cohort; \
		build_phantom_cohort(Path('$(INVASION_DEMO)/cohort'), [int(s) for s in sys.argv[1:]], study='adc')" \
		$(INVASION_SEEDS)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/gliomaprog cohort invasion-train \
		$(INVASION_DEMO)/cohort --out $(INVASION_DEMO)/model --channels t1c flair ncbv adc --spacing 2 \
		--test-fraction 0.3 --seed 0 --id invasion-demo --synthetic \
		--title "Demo: invasion map (Yan 2020), trained on synthetic data — not for clinical use"
	$(PY) -c "import json, sys; path = sys.argv[1]; entry = json.load(open(path, encoding='utf-8')); \
		entry['training'].update(phantom_seeds=[int(s) for s in sys.argv[2:]], phantom_size='small', \
		phantom_config='phantom.synthetic.adc_replication_config', recipe='make demo-invasion-model'); \
		json.dump(entry, open(path, 'w', encoding='utf-8'), indent=2, ensure_ascii=False)" \
		$(INVASION_DEMO)/model/models_entry.json $(INVASION_SEEDS)
	$(PY) -m GliomaProgressionLib.models.invasion_packages register $(INVASION_DEMO)/model/models_entry.json \
		$(INVASION_DEMO)/model/invasion_demo.zip
	@cat $(INVASION_DEMO)/model/evaluation.json

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache *.egg-info

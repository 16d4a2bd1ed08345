# semisam — two commands on a fresh machine:
#   make demo   prepare the embedded real nuclei data and run the main job
#   make test   run the test suite (the same command CI runs)
#
# Both bootstrap a virtual environment in .venv from this repository's files.
# On a machine without an NVIDIA GPU the install is constrained to the CPU torch
# build (constraints-cpu.txt); set CPU=0 to install normally (e.g. with CUDA),
# or CPU=1 to force the CPU constraints.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CPU    ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 0 || echo 1)
CONSTRAINTS := $(if $(filter 1,$(CPU)),-c constraints-cpu.txt,)
# nnU-Net on small machines: one preprocessing worker, two augmentation workers.
export nnUNet_def_n_proc ?= 1
export nnUNet_n_proc_DA ?= 2
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

DEMO_DATA ?= data/Dataset501_Nuclei
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench bench-compare bench-levers clean-venv

$(VENV)/.installed: pyproject.toml setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=23" setuptools wheel
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e ".[test,mobilesam,datasets]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m data_prep nuclei --out $(DEMO_DATA) --labeled 1 --overwrite
	$(VENV)/bin/semisam run experiment=demo dataset.raw_dir=$(DEMO_DATA)

# The test command (README and .ci/run): the whole suite, slow end-to-end tests included.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests were collected" >&2; exit 1; fi; exit $$rc

# Quick inner loop while developing: everything but the tests marked slow.
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The committed comparison (docs/benchmarks.md, sections 3, 5 and 6): supervised, full, selftrain, samdsk, corrector and the
# online methods (the second call reports them paired with mean_teacher: the SAM term's own contribution) on
# real nuclei and MNI152 tissue, 1 and 4 labeled cases, 3 labeled draws x 2 seeds each. Resumable: rerun to
# continue. BENCH_JOBS runs at a time (threads divided among them).
BENCH_DIR ?= runs/bench
BENCH_JOBS ?= 2
BENCH_METHODS ?= supervised full selftrain samdsk corrector mean_teacher weak_strong semisam
BENCH_BUDGET ?= student.epochs=8 student.iterations_per_epoch=20 student.val_iterations_per_epoch=2 \
	student.num_processes_da=0 teacher.adapt.steps=50 loop.max_rounds=1 logger=disabled
bench-compare: venv
	test -d data/bench/Dataset501_Nuclei || $(PY) -m data_prep nuclei --out data/bench/Dataset501_Nuclei --n-test 24
	test -d data/bench/Dataset503_MNI152 || $(PY) -m data_prep mni152 --out data/bench/Dataset503_MNI152
	rc=0; for ds in Dataset501_Nuclei:nuclei Dataset503_MNI152:mni152; do for n in 1 4; do \
	  $(VENV)/bin/semisam compare --dataset data/bench/$${ds%%:*} --out $(BENCH_DIR)/$${ds##*:}-$$n --labeled $$n \
	    --labeled-draws 0 1 2 --seeds 0 1 --jobs $(BENCH_JOBS) --methods $(BENCH_METHODS) --versus samdsk -- $(BENCH_BUDGET) || rc=1; \
	  $(VENV)/bin/semisam compare --dataset data/bench/$${ds%%:*} --out $(BENCH_DIR)/$${ds##*:}-$$n --labeled $$n \
	    --labeled-draws 0 1 2 --seeds 0 1 --jobs $(BENCH_JOBS) --methods supervised full semisam mean_teacher weak_strong \
	    --versus mean_teacher -- $(BENCH_BUDGET) || rc=1; \
	done; done; exit $$rc

# The retraining levers and the feature-perturbation branch (docs/benchmarks.md, sections 5d and 6d), on the nuclei
# settings, each paired with the method it changes. Run after bench-compare (same folders, shared round 0).
BENCH_LEVERS ?= "corrector student.pseudo_augmentation=da5" "corrector loop.pseudo_loss_weight=0.5"
bench-levers: venv
	rc=0; for n in 1 4; do \
	  $(VENV)/bin/semisam compare --dataset data/bench/Dataset501_Nuclei --out $(BENCH_DIR)/nuclei-$$n --labeled $$n \
	    --labeled-draws 0 1 2 --seeds 0 1 --jobs $(BENCH_JOBS) --methods supervised full corrector $(BENCH_LEVERS) \
	    --versus corrector -- $(BENCH_BUDGET) || rc=1; \
	done; \
	$(VENV)/bin/semisam compare --dataset data/bench/Dataset501_Nuclei --out $(BENCH_DIR)/nuclei-1 --labeled 1 \
	  --labeled-draws 0 1 2 --seeds 0 1 --jobs $(BENCH_JOBS) --methods supervised full weak_strong \
	  "weak_strong online.feature_perturbation=0.5" --versus weak_strong -- $(BENCH_BUDGET) || rc=1; exit $$rc

clean-venv:
	rm -rf $(VENV)

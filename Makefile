# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real tokenizers for the tests (skipped with a reason where the folder is absent).
FORMATKIT_TOKENIZERS ?= $(abspath ../shared/tokenizers)
export FORMATKIT_TOKENIZERS
# Which torch build pip installs. constraints.txt pins torch==2.13.0; pip takes it from its usual indexes:
# on PyPI that is the CUDA build for Linux (several GB); on the development/CI machines a local wheel folder
# holds the CPU build. Set TORCH_INDEX_URL to take torch from another index first, e.g. the CPU build:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make test
# Unset (the default), the install runs exactly the commands it always did.
TORCH_INDEX_URL ?=
# The trl 0.19.1 interpreter tests/test_reference_trl019.py compares against (skipped where it is absent).
REF_VENV ?= ../ref-venv

.PHONY: install demo test test-fast bench ref-venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install --quiet -c constraints.txt torch --index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,peft]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trl-formatkit demo

# pytest-xdist workers for `make test` / `make test-fast`: one per core, at most 2 (a container's CPU quota does
# not show in nproc, and each worker holds ~2 GB: torch, transformers, trl, tokenizers, tiny models). More on a
# bigger machine: `make test TEST_WORKERS=8`; in one process: `make test TEST_WORKERS=1`. Whole files go to one
# worker (--dist loadfile): a module's fixtures (the torchrun job, the trl 0.19 reference run) run once, and the
# README's blocks stay in one namespace. tests/conftest.py gives each worker its share of the cores' threads.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1); \
	echo $$(( n < 2 ? n : 2 )))
XDIST := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The whole suite, slow (subprocess) tests included: what CI runs.
test: $(STAMP)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the tests marked slow (real subprocesses), for a quick loop while developing.
test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/collate.py

# trl 0.19.1 and transformers 4.53.3 in their own virtualenv (they cannot live next to trl 1.x).
ref-venv: $(REF_VENV)/.installed

$(REF_VENV)/.installed: constraints.txt
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX_URL),$(REF_VENV)/bin/python -m pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX_URL))
	$(REF_VENV)/bin/python -m pip install --quiet "trl==0.19.1" "transformers==4.53.3" "datasets<4" "torch==2.13.0"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

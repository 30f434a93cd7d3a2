# masf-lightning — every target a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# glibc returns >32 MB buffers to the kernel on every free; keep them (see docs/performance.md)
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=34359738368

.PHONY: help install train test lint bench tensorboard clean

help:
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package (idempotent)

train: install ## run the main job: MASF on the embedded synthetic data, target 400x, CPU
	$(PY) train.py $(ARGS)

test: install ## run the test suite (offline, CPU)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## static checks
	$(PY) -m ruff check masf_lightning experiments tests train.py

tensorboard: install ## watch runs in outputs/ and multirun/
	$(VENV)/bin/tensorboard --logdir . --reload_multifile true

clean: ## remove caches (never data or runs)
	rm -rf .pytest_cache .ruff_cache

# masf-lightning — every target a newcomer needs. `make help` lists them.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
BREAKHIS ?=
SEEDS    ?= 0,1,2
TEST_WORKERS ?= 2
TARGETS  := 40x,100x,200x,400x

.PHONY: help install train test lint bench gpu-check demo data weights table1 table2 fig2 reproduce transfer mpp-curve tensorboard clean

help:
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,sweep,track,wsi]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package (idempotent)

train: install ## the main job: MASF on the embedded synthetic data, target 400x, CPU (ARGS=... for overrides)
	$(PY) train.py $(ARGS)

test: install ## the test suite (offline, CPU; TEST_WORKERS=2 processes, a test file per process at a time)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install ## static checks
	$(PY) -m ruff check masf_lightning experiments tests train.py

gpu-check: install ## on a GPU machine, < 8 min: CUDA tests, GPU step ratios fp32/bf16, 200-step runs, pool projection → results/gpu.json
	$(PY) experiments/gpu_check.py --out results/gpu.json

bench: install ## speed benchmark: DeepAll vs MASF steps, data path, a timm ViT end to end vs frozen features (results/bench.json)
	@mkdir -p results
	$(PY) experiments/bench.py --json results/bench.json
	@echo "benchmark: results/bench.json"

demo: install ## the reproduction pipeline on the synthetic data: 4 targets x 2 seeds x 2 methods, table + Fig. 2
	$(PY) train.py -m method=masf,deepall target=$(TARGETS) seed=0,1 steps=300 progress=false hydra.sweep.dir=multirun/demo
	$(PY) experiments/collect.py multirun/demo --out results/demo_table --expect-seeds 2
	$(PY) experiments/plot_embeddings.py multirun/demo/tumor_type/masf/400x/seed0 --out results/demo_fig2
	@echo "demo: results/demo_table.md (.csv, .tex), results/demo_fig2.png (.pdf); runs in multirun/demo/"

define need_breakhis
	@test -n "$(BREAKHIS)" || { echo "error: pass BREAKHIS=DIR (the folder holding BreaKHis_v1)" >&2; exit 2; }
endef

data: install ## download, verify and extract BreaKHis into BREAKHIS=DIR (BREAKHIS_URL=... for a mirror); no-op if DIR holds it
	$(need_breakhis)
	$(PY) -m masf_lightning.data.download $(BREAKHIS) $(if $(BREAKHIS_URL),--url $(BREAKHIS_URL))

weights: install ## put the ImageNet AlexNet and ResNet-18 files in the torch hub cache (under TORCH_HOME if set), e.g. before an offline cluster run
	$(PY) -c 'from masf_lightning.models.backbones import download_main; raise SystemExit(download_main())'

table1: install ## Table 1 (8 tumour types): BREAKHIS=DIR, AlexNet + ImageNet, 4 targets x 2 methods x 3 seeds
	$(need_breakhis)
	$(PY) train.py -m experiment=paper_tumor_type data.root=$(BREAKHIS) method=masf,deepall target=$(TARGETS) seed=$(SEEDS) progress=false
	$(PY) experiments/collect.py multirun/paper/tumor_type --out results/table1 --expect-seeds 3
	@echo "Table 1: results/table1.md (.csv, .tex); runs in multirun/paper/tumor_type/"

table2: install ## Table 2 (benign vs malignant): BREAKHIS=DIR
	$(need_breakhis)
	$(PY) train.py -m experiment=paper_malignancy data.root=$(BREAKHIS) method=masf,deepall target=$(TARGETS) seed=$(SEEDS) progress=false
	$(PY) experiments/collect.py multirun/paper/malignancy --out results/table2 --expect-seeds 3
	@echo "Table 2: results/table2.md (.csv, .tex); runs in multirun/paper/malignancy/"

fig2: install ## Fig. 2: embedding of the test images, target 400x, malignancy (reuses Table 2's run when present)
	$(need_breakhis)
	$(PY) train.py experiment=paper_malignancy data.root=$(BREAKHIS) method=masf target=400x seed=0 progress=false hydra.run.dir=multirun/paper/malignancy/masf/400x/seed0
	$(PY) experiments/plot_embeddings.py multirun/paper/malignancy/masf/400x/seed0 --out results/fig2
	@echo "Fig. 2: results/fig2.png (.pdf)"

reproduce: data table1 table2 fig2 ## all of the paper's artefacts: BREAKHIS=DIR (downloaded there first if absent)

TRANSFER_DIR ?= multirun/transfer$(if $(BREAKHIS),_breakhis)
TRANSFER_OUT ?= results/transfer
TRANSFER_DATA = $(if $(BREAKHIS),data=breakhis data.root=$(BREAKHIS))

transfer: install ## magnification transfer map (train x test accuracy heatmap): synthetic data, or BREAKHIS=DIR; ARGS=... overrides
	$(PY) train.py -m experiment=transfer_map method=deepall +train_on=40x,100x,200x,400x $(TRANSFER_DATA) hydra.sweep.dir=$(TRANSFER_DIR) $(ARGS)
	$(PY) train.py -m experiment=transfer_map method=masf,deepall target=$(TARGETS) $(TRANSFER_DATA) hydra.sweep.dir=$(TRANSFER_DIR) $(ARGS)
	$(PY) experiments/plot_transfer.py $(TRANSFER_DIR) --out $(TRANSFER_OUT)
	$(PY) experiments/collect.py $(TRANSFER_DIR) --out $(TRANSFER_OUT)_tables
	@echo "transfer map: $(TRANSFER_OUT).png (.pdf, .md, .csv); every metric: $(TRANSFER_OUT)_tables.md; runs in $(TRANSFER_DIR)/"

MPP_CURVE_DIR    ?= multirun/mpp_curve
MPP_CURVE_MPPS   ?= 2.83 2 1.41 1 0.71 0.5 0.35 0.25
MPP_CURVE_TRAIN  ?= [2mpp,1mpp,0.5mpp]
MPP_CURVE_TARGET ?= 0.25mpp
TILE_ARGS        ?= --annotations

mpp-curve: install ## accuracy along the µm/px axis: SLIDES=DIR → tiles at 8 µm/px → DeepAll, MASF on 0.5/1/2 µm/px x SEEDS → curve (TILE_ARGS=, ARGS=)
	@test -n "$(SLIDES)" || { echo "error: pass SLIDES=DIR (whole slides; python -m masf_lightning.data.synthetic.wsi DIR writes some)" >&2; exit 2; }
	$(PY) -m masf_lightning.data.tile $(SLIDES) --out $(MPP_CURVE_DIR)/tiles --mpp $(MPP_CURVE_MPPS) --workers 2 $(TILE_ARGS)
	$(PY) train.py -m data=manifest data.manifest=$(MPP_CURVE_DIR)/tiles/manifest.csv target=$(MPP_CURVE_TARGET) 'data.sources=$(MPP_CURVE_TRAIN)' method=deepall,masf seed=$(SEEDS) progress=false hydra.sweep.dir=$(MPP_CURVE_DIR)/runs $(ARGS)
	$(PY) experiments/plot_mpp_curve.py $(MPP_CURVE_DIR)/runs --out results/mpp_curve
	@echo "curve: results/mpp_curve.png (.pdf, .csv, _summary.csv); tiles and thumbnails in $(MPP_CURVE_DIR)/tiles, runs in $(MPP_CURVE_DIR)/runs"

tensorboard: install ## watch runs in outputs/ and multirun/
	$(VENV)/bin/tensorboard --logdir . --reload_multifile true

clean: ## remove tool caches (never data, runs or results)
	rm -rf .pytest_cache .ruff_cache

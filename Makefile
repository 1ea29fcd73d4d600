# Two commands do all the set-up on a fresh clone: `make train` and `make test`.
# Both create .venv if missing and install the project; torch comes first as the CPU
# wheel (pinned below) when no torch is installed, so set-up never pulls a multi-GB CUDA build.
# Bring your own CUDA torch by installing it into .venv (or setting PYTHON) before `make install`.

PYTHON ?= .venv/bin/python
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= dev,hf,onnx,sweep,robustness,geo
# the reference image corruptions (robustness extra), without its opencv-python dependency, which
# would overwrite opencv-python-headless's cv2 module
CORRUPTIONS ?= imagecorruptions-imaug>=1.1.5
ARGS ?=
STAMP := .venv/.installed

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format bench clean clean-logs

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.venv/bin/python:
	python3 -m venv .venv

$(STAMP): pyproject.toml | .venv/bin/python
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_CPU)"
	$(PYTHON) -m pip install -q -e ".[$(EXTRAS)]"
	$(if $(findstring robustness,$(EXTRAS)),$(PYTHON) -m pip install -q --no-deps "$(CORRUPTIONS)")
	@touch $@

install: $(STAMP) ## create .venv and install the project with its extras

train: install ## the 5-minute demo: B0 on the embedded synthetic data (no downloads); ARGS="..." adds overrides
	$(PYTHON) -m segformer.train experiment=synthetic $(ARGS)

test: install ## run the whole test suite (slow tests included)
	$(PYTHON) -m pytest $(ARGS)

test-fast: install ## run the tests not marked slow
	$(PYTHON) -m pytest -m "not slow" $(ARGS)

lint: install ## ruff lint + format check, codespell
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	$(PYTHON) -m codespell_lib src tests configs README.md docs

format: install ## apply ruff fixes and formatting
	$(PYTHON) -m ruff check --fix src tests benchmarks
	$(PYTHON) -m ruff format src tests benchmarks

bench: install ## speed/memory benchmark against transformers (benchmarks/speed.py)
	$(PYTHON) benchmarks/speed.py $(ARGS)

clean: ## remove caches and build files
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-logs: ## remove run outputs under logs/
	find logs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

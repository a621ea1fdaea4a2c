# The project's gates, the same locally and in CI. `make run` and `make test` are the README's quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
MODEL_DIR := data/models/tiny-sd
# Exactly one ONNX Runtime build: the CUDA one where an NVIDIA driver is present, else the CPU one.
ONNX_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install install-dev model run test check format bench bench-loras bench-engines bench-scale bench-affinity bench-models bench-soak bench-adherence train-default-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files make `make install` idempotent: it reinstalls only when pyproject.toml changes.
# deploy/install-deps.sh is the one install recipe (torch first and exactly, then the package, then the docs
# assets); the container image runs the same script.
$(VENV)/.installed: pyproject.toml deploy/install-deps.sh | $(BIN)/python
	deploy/install-deps.sh $(BIN)/python $(ONNX_EXTRA) --editable
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	deploy/install-deps.sh $(BIN)/python "$(ONNX_EXTRA),dev" --editable
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The embedded default model: tiny, random, built offline in seconds when missing.
$(MODEL_DIR)/model_index.json: | $(VENV)/.installed
	$(BIN)/sdapi make-tiny-model $(MODEL_DIR)

model: $(MODEL_DIR)/model_index.json

run: install model
	$(BIN)/sdapi serve --config $(CONFIG)

check: install-dev
	$(BIN)/ruff format --check sdapi export tests bench
	$(BIN)/ruff check sdapi export tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: install-dev
	$(BIN)/ruff format sdapi export tests bench
	$(BIN)/ruff check --fix sdapi export tests bench

test: check
	$(BIN)/python -m pytest

bench: install-dev model
	$(BIN)/python -m bench.service

bench-loras: install-dev
	$(BIN)/python -m bench.loras

# Builds the tiny model and a random-weight SD 1.5-architecture model (about 4 GiB) under data/bench, exports both.
# SDXL's architecture (about 14 GiB, 1024x1024): MODELS=sdxl (exports it too) or MODELS=sdxl-torch (torch only).
MODELS ?= tiny,sd15
bench-engines: install-dev
	$(BIN)/python -m bench.engines --workdir data/bench --models $(MODELS)

# PostgreSQL, one API node and one then two workers (one torch thread each) on the tiny model.
bench-scale: install-dev
	$(BIN)/python -m bench.scale

# Memory of a worker alternating 100 times between two models with max_loaded 1.
bench-models: install-dev
	$(BIN)/python -m bench.models

# Model loads of a mixed two-model queue on two workers, with and without affinity.
bench-affinity: install-dev
	$(BIN)/python -m bench.affinity

# 1,000 small tasks through one node with callbacks and retention on: memory, descriptors, database and images.
bench-soak: install-dev
	$(BIN)/python -m bench.soak

# Trains a default model that follows its prompt (issue 22, in progress) on drawn scenes, with its style LoRA and
# embedding, into data/ (resumable: run it again after an interruption). About an hour on two cores.
train-default-model: install
	$(BIN)/python -m sdapi.devtools.train_scenes --workdir data/train-scenes --out data/models/scenes-sd

# 100 held-out prompts x 4 seeds on that trained model, scored from the pixels; needs `make train-default-model`.
bench-adherence: install-dev
	$(BIN)/python -m bench.adherence --model data/models/scenes-sd

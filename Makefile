# The project's gates, the same locally and in CI. `make run` and `make test` are the README's quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
MODEL_DIR := data/models/scenes-sd
SHIPPED_MODEL := models/scenes-sd
# Exactly one ONNX Runtime build: the CUDA one where an NVIDIA driver is present, else the CPU one.
ONNX_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

# `make image`: the CPU container image, sdapi:cpu, built by podman (deploy/image/build.sh).
.PHONY: image install install-dev model run test test-fast check format bench bench-loras bench-engines bench-scale bench-affinity bench-models bench-soak bench-adherence bench-batching bench-families bench-tracing bench-speed train-default-model train-tiny-decoder

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

# The embedded default model: trained on drawn scenes (`make train-default-model`), committed under models/ with a
# manifest of sha256 sums; installed (sums checked) where config.yaml points, again whenever the manifest changes.
$(MODEL_DIR)/model_index.json: $(SHIPPED_MODEL).manifest.json | $(VENV)/.installed
	$(BIN)/sdapi install-default-model $(MODEL_DIR) --shipped $(SHIPPED_MODEL)
	touch $@

model: $(MODEL_DIR)/model_index.json

run: install model
	$(BIN)/sdapi serve --config $(CONFIG)

check: install-dev
	$(BIN)/ruff format --check sdapi export training tests bench
	$(BIN)/ruff check sdapi export training tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

format: install-dev
	$(BIN)/ruff format sdapi export training tests bench
	$(BIN)/ruff check --fix sdapi export training tests bench

# Every tier, on every core: xdist keeps a file's tests on one worker (they share its module's service), and each
# worker's torch uses its share of the cores (tests/conftest.py). One worker more than there are cores: many tests
# wait on child processes and sockets, and the extra worker keeps the cores busy meanwhile (measured on 2 cores:
# docs/benchmarks.md). The 25 slowest tests are listed at the end.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --durations=25
FAST_TIERS := not slow and not postgres and not browser and not container and not model_quality and not benchmark

# The CPU image with podman, tagged sdapi:cpu: a Debian base built here from Debian's packages where no registry
# answers, and this machine's pip sources where PyTorch's index does not (deploy/image/build.sh says how).
image:
	deploy/image/build.sh --variant cpu --tag sdapi:cpu

test: check
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# The unit and fast integration tiers, for the inner loop (no checks first, no child processes, no PostgreSQL).
test-fast: install-dev
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "$(FAST_TIERS)"

# The service's overhead on the tiny model, then what live previews cost on the default model and on SD 1.5's
# architecture (random weights, built under data/bench: about 4 GiB).
bench: install-dev model
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.previews --workdir data/bench

bench-loras: install-dev
	$(BIN)/python -m bench.loras

# Builds the tiny model and a random-weight SD 1.5-architecture model (about 4 GiB) under data/bench, exports both.
# SDXL's architecture (about 14 GiB, 1024x1024): MODELS=sdxl (exports it too) or MODELS=sdxl-torch (torch only).
MODELS ?= tiny,sd15
bench-engines: install-dev
	$(BIN)/python -m bench.engines --workdir data/bench --models $(MODELS)
	$(BIN)/python -m bench.controlnet --workdir data/bench

# PostgreSQL, one API node and one then two workers (one torch thread each) on the tiny model.
bench-scale: install-dev
	$(BIN)/python -m bench.scale

# Memory of a worker alternating 100 times between two models with max_loaded 1.
bench-models: install-dev
	$(BIN)/python -m bench.models

# Model loads of a mixed two-model queue on two workers, with and without affinity.
bench-affinity: install-dev
	$(BIN)/python -m bench.affinity

# Cross-request batching: 32 concurrent small requests at queue.batch_max 1, 2, 4, 8 on the tiny model and on SD
# 1.5's architecture (random weights, built under data/bench as bench-engines does).
# What tracing costs: a queue of tasks with tracing off and on, side by side (docs/benchmarks.md).
bench-tracing: install-dev
	$(BIN)/python -m bench.tracing

# The speed levers (issue 48): seconds per image with each alone and combined, and their quality cost, on the default
# model and SD 1.5's architecture (random weights, built under data/bench as bench-engines does). About an hour.
bench-speed: install-dev model
	$(BIN)/python -m bench.speed --workdir data/bench

# CPU seconds per step of every family's tiny model (docs/benchmarks.md).
bench-families: install-dev
	$(BIN)/python -m bench.families

bench-batching: install-dev
	$(BIN)/python -m bench.batching --workdir data/bench --models $(MODELS)

# 1,000 small tasks through one node with callbacks and retention on: memory, descriptors, database and images.
bench-soak: install-dev
	$(BIN)/python -m bench.soak

# Trains the default model on drawn scenes, with its style LoRA and embedding: about an hour on two cores.
# Writes the files that ship: models/scenes-sd (+ its manifest), data/loras/monochrome.safetensors and
# data/embeddings/sdapi-orange-ball.safetensors. Stages are kept in data/train-scenes: rerun to resume.
train-default-model: install
	$(BIN)/python -m training.train_scenes --workdir data/train-scenes --out $(SHIPPED_MODEL)

# Distils the default model's VAE decoder into its tiny decoder (models/scenes-sd/vae_tiny, added to the manifest):
# about 10 minutes on two cores.
train-tiny-decoder: install
	$(BIN)/python -m training.train_tiny_decoder --model $(SHIPPED_MODEL)

# 100 held-out prompts x 4 seeds on the shipped default model, scored from the pixels.
bench-adherence: install-dev
	$(BIN)/python -m bench.adherence --model $(SHIPPED_MODEL)

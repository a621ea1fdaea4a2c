# sdapi container images: NVIDIA GPU (default) or CPU only.
#   docker build -t sdapi .                                 # GPU: CUDA 13, needs NVIDIA driver >= 580
#   docker build -t sdapi:cpu --build-arg VARIANT=cpu .     # CPU: torch's CPU build and onnxruntime
#   make image                                              # CPU, with podman: deploy/image/build.sh
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models -v $PWD/config.yaml:/app/config.yaml sdapi
#
# One CUDA, the wheels' own. torch 2.13.0 and onnxruntime-gpu 1.31.1 from PyPI are CUDA 13 builds, and torch's pip
# dependencies bring cuBLAS, cuDNN and the other CUDA 13 libraries. So the GPU image starts from NVIDIA's CUDA 13
# *base* image (the CUDA runtime and the container toolkit's settings; no cuDNN or math libraries) rather than a
# cudnn-runtime image: nothing large is installed twice. tests/integration/operations/test_container.py checks this
# CUDA major against the majors the pinned wheels require, read from their metadata.
#
# Both stages of a variant start from the same base, so the venv built in one runs on the other's python3 (Ubuntu
# 24.04's 3.12 under CUDA, Debian 12's 3.11 on CPU). BASE_IMAGE swaps the CPU base for an equivalent one: CI, which
# reaches no registry, builds Debian 12 from Debian's packages (deploy/image/debian-base.sh) and passes it here.
ARG VARIANT=gpu
ARG BASE_IMAGE=debian:bookworm-slim

# -- bases -------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime-gpu
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS runtime-cpu

# -- build: a virtual environment with sdapi and its pinned dependencies, and the default model ------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS build
ARG VARIANT
# Where the CPU variant's torch comes from; empty: pip's own configured sources (deploy/image/build.sh's choice
# where PyTorch's index does not answer).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The distribution's package versions move with its security updates; pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/install-deps.sh ./deploy/install-deps.sh
# The same recipe as `make install` (deploy/install-deps.sh, pins from pyproject.toml), in two layers: the pinned
# dependencies first (rebuilt only when the pins change), then the package itself, not editable. The CPU image
# takes torch's CPU build of the same version (from PyTorch's own index unless TORCH_INDEX_URL is empty).
RUN python3 -m venv /opt/venv \
    && if [ "$VARIANT" = "cpu" ]; then \
        deploy/install-deps.sh /opt/venv/bin/python cpu --dependencies-only \
            ${TORCH_INDEX_URL:+--torch-index-url "$TORCH_INDEX_URL"}; \
    else \
        deploy/install-deps.sh /opt/venv/bin/python gpu --dependencies-only; \
    fi \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
COPY sdapi ./sdapi
COPY export ./export
RUN /opt/venv/bin/python -m pip install --quiet --no-deps /src \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
# The embedded default model (trained on drawn scenes, committed with its sha256 manifest), its style LoRA and its
# embedding, so the image starts on its own; mount a config that points model.path at /models for real pictures.
# images/ exists so that a volume mounted there (compose's `images`) starts owned by the image's user.
COPY models ./models
COPY data/loras ./data/loras
COPY data/embeddings ./data/embeddings
RUN /opt/venv/bin/sdapi install-default-model /app/data/models/scenes-sd --shipped /src/models/scenes-sd \
    && cp -r /src/data/loras /src/data/embeddings /app/data/ \
    && mkdir /app/data/images

# -- runtime: the venv and the model, no compilers, no pip caches, a non-root user ------------------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# The venv's interpreter is the base's python3, the same in both stages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 sdapi
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /app/data /app/data
COPY config.yaml ./config.yaml

USER 10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD ["sdapi", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0", "--port", "8000"]

# sdapi GPU image: CUDA runtime + cuDNN, torch (CUDA build) and onnxruntime-gpu, run as a non-root user.
#   docker build -t sdapi .
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models -v $PWD/config.yaml:/app/config.yaml sdapi
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's package versions move with its security updates; pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 sdapi

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. torch first and exactly pinned (see pyproject.toml);
# the gpu extra brings onnxruntime-gpu. The sidecar wheel only provides Swagger UI / ReDoc files (no Django).
COPY pyproject.toml README.md ./
COPY sdapi ./sdapi
COPY export ./export
# Every dependency of ".[gpu]" is pinned exactly in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install torch==2.13.0 \
    && pip install ".[gpu]" \
    && pip install --no-deps drf-spectacular-sidecar==2026.10.1

COPY config.yaml ./config.yaml
# The embedded tiny model, so the image starts on its own; mount a config that points model.path at /models for
# real pictures.
RUN sdapi make-tiny-model /app/data/models/tiny-sd && chown -R sdapi:sdapi /app/data

USER 10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD ["sdapi", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0", "--port", "8000"]

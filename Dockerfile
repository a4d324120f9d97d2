# syntax=docker/dockerfile:1
# One image for every aihub process: `docker run IMAGE serve gateway|auth|core`, `migrate`,
# `worker`, `admin create …`, `ledger reconcile`. Build from the repository root:
#     docker build -t aihub .
#
# Two stages: the builder has a compiler (for any dependency without a wheel for this platform)
# and builds a virtual environment in /opt/aihub; the final stage copies only that environment
# onto a slim Python, runs as an unprivileged user, and has no compiler, no pip cache, no source.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/aihub
WORKDIR /build
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && /opt/aihub/bin/pip install -r requirements.txt
# Then the package itself (a regular, non-editable install: the source tree stays behind).
COPY README.md ./
COPY src ./src
RUN /opt/aihub/bin/pip install --no-deps . \
 && /opt/aihub/bin/python -c "import aihub.cli, aihub.migrations"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aihub" \
      org.opencontainers.image.description="aihub gateway, auth, core and worker" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot and volume ownership can rely on it.
RUN groupadd --system --gid 10001 aihub \
 && useradd --system --uid 10001 --gid aihub --home-dir /var/lib/aihub --create-home --shell /usr/sbin/nologin aihub
COPY --from=builder /opt/aihub /opt/aihub
# Bytecode was compiled at install time in the builder; the read-only venv needs no more.
ENV PATH=/opt/aihub/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AIHUB_HOST=0.0.0.0
# The working directory is the only writable place: the embedded SQLite default (./aihub.db)
# lands here when no AIHUB_DATABASE_URL is given (a single-container trial).
WORKDIR /var/lib/aihub
USER 10001:10001
EXPOSE 3000 3001 3002
# Liveness without curl: whichever aihub service this container runs answers /health on its
# port (AIHUB_GATEWAY_PORT, AIHUB_AUTH_PORT or AIHUB_CORE_PORT). The compose file replaces this
# with each service's own readiness check, and gives the worker its own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r\nfor name, port in (('GATEWAY', 3000), ('AUTH', 3001), ('CORE', 3002)):\n    try:\n        r.urlopen(f\"http://127.0.0.1:{os.environ.get(f'AIHUB_{name}_PORT', port)}/health\", timeout=3)\n        raise SystemExit(0)\n    except OSError:\n        pass\nraise SystemExit(1)"]
# SIGTERM (docker stop) starts the graceful shutdown: readiness 503, drain, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aihub"]
CMD ["serve", "core"]

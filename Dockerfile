# syntax=docker/dockerfile:1
# walduck image: `docker build -t walduck:0.1.0 .` (docs/operations.md "Deploy on Kubernetes").
# Two stages: the compiler stage builds the wheel (Cython + gcc compile the connector's row encoder,
# connectors/_rowjson.pyx) and the venv; the runtime stage is python-slim with the venv only, no compiler, run
# as an unprivileged user. The install steps are scripts/install-image.sh, the same script
# tests/unit/core/test_image.py runs into a fresh venv.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY scripts/install-image.sh scripts/
COPY walduck walduck
COPY connectors connectors
COPY pipeline pipeline
COPY sinks sinks
COPY stack stack
RUN --mount=type=cache,target=/root/.cache/pip scripts/install-image.sh build /src /wheels
RUN --mount=type=cache,target=/root/.cache/pip scripts/install-image.sh venv /wheels /opt/walduck

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="walduck" org.opencontainers.image.licenses="Apache-2.0"
# numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup
RUN groupadd --gid 10001 walduck \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin walduck
COPY --from=build /opt/walduck /opt/walduck
ENV PATH=/opt/walduck/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# the root filesystem is read-only in k8s/: state goes to mounted volumes (WALDUCK_DATA_DIR, /tmp as emptyDir)
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["walduck"]
CMD ["--help"]

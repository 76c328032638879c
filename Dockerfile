# syntax=docker/dockerfile:1
# The sftjob operator image: Kopf, the Kubernetes client and boto3 (the `operator` extra) and nothing of
# the trainer stack (no torch, Ray or transformers). Build it from the repository root:
#   docker build -t sftjob-operator:0.1.0 .
# It runs as uid 10001 with a read-only root filesystem: it writes nothing but /tmp (an emptyDir in the chart).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/sftjob/bin:${PATH}
RUN python -m venv /opt/sftjob
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the tree out of the context).
COPY pyproject.toml ./
COPY operator/ operator/
COPY trainer_image/sftjob_trainer/ trainer_image/sftjob_trainer/
# A local path: the versions are the pins of pyproject.toml's `operator` extra.
RUN pip install --no-cache-dir "./[operator]" \
 && python -c "import sftjob_operator.__main__, sftjob_operator.handlers, sftjob_operator.service"

FROM ${PYTHON_IMAGE}
# A fixed uid/gid so the chart's securityContext (runAsUser 10001) and the image agree.
RUN groupadd --system --gid 10001 sftjob \
 && useradd --system --uid 10001 --gid sftjob --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sftjob
COPY --from=build /opt/sftjob /opt/sftjob
ENV PATH=/opt/sftjob/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# 8080: Kopf's liveness endpoint (/healthz); 9102: the operator's Prometheus /metrics.
EXPOSE 8080 9102
# Kopf in standalone mode (no peering: one replica); the watched namespaces and every other setting come
# from SFTJOB_* environment variables (operator/sftjob_operator/settings.py), which the chart sets.
ENTRYPOINT ["python", "-m", "sftjob_operator", "--liveness=http://0.0.0.0:8080/healthz"]

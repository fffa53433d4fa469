# The Switchyard operator. Build: docker build -t switchyard:dev .
# Stage 1 installs the package and its pinned dependencies into a virtualenv; the final
# image gets only that virtualenv: no compilers, no pip caches, no sources beyond the package.
# BASE_IMAGE: any Debian-family image with python3 and its venv module, the same for both
# stages (the virtualenv points at the base's interpreter). hack/images.py passes a local
# debootstrapped bookworm for clusters without a registry.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/switchyard
COPY constraints.txt pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/switchyard/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/switchyard/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Kubernetes operator that splits LLM traffic across providers"
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric, non-root user, so that runAsNonRoot can verify it. It has a passwd entry
# because Kopf names the operator's identity with getpass.getuser(), which fails without.
RUN groupadd --system --gid 65532 switchyard \
    && useradd --system --no-log-init --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
USER 65532:65532
# /metrics and /healthz; the xDS server for the gateways' Envoys.
EXPOSE 8000 18000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["switchyard"]
CMD ["run"]

# The Switchyard operator. Build: docker build -t switchyard:dev .
# Stage 1 installs the package and its pinned dependencies into a virtualenv; the final
# image gets only that virtualenv: no compilers, no pip caches, no sources beyond the package.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/switchyard
COPY constraints.txt pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/switchyard/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/switchyard/bin/pip uninstall --yes pip

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Kubernetes operator that splits LLM traffic across providers"
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric, non-root user, so that runAsNonRoot can verify it.
USER 65532:65532
# /metrics and /healthz; the xDS server for the gateways' Envoys.
EXPOSE 8000 18000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["switchyard"]
CMD ["run"]

# Promote itself (`promote serve`, `promote watch`, `promote rollout`, every other command), built
# from this repository: the package with its PostgreSQL extra, MLflow pinned by constraints.txt,
# in a virtualenv, run as a non-root user. No image is published: build it and push it to your
# own registry (docs/kubernetes.md).
#
#   docker build -f deploy/kubernetes/serve.Dockerfile -t promote/promote:0.2.0 .
#
# The build context is the repository root; only the files copied below are used.
# Build argument BASE_IMAGE: a Debian-based image with python3 (>= 3.11) and python3-venv
# (default: python:3.11-slim-bookworm). Extra CA certificates for pip: *.crt in
# deploy/ca-certificates/, as for deploy/Dockerfile; the final image never contains them.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY deploy/ca-certificates/ /tmp/extra-ca/
COPY pyproject.toml README.md constraints.txt /src/
COPY promotion/ /src/promotion/
RUN set -eu; \
    cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca/*.crt > /tmp/pip-ca.crt 2>/dev/null \
      || cp /etc/ssl/certs/ca-certificates.crt /tmp/pip-ca.crt; \
    python3 -m venv /opt/promote; \
    PIP_CERT=/tmp/pip-ca.crt /opt/promote/bin/pip install --no-cache-dir \
      --disable-pip-version-check -c /src/constraints.txt "/src[serve,monitor,postgres]"; \
    /opt/promote/bin/promote --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="Promote" \
      org.opencontainers.image.description="promote serve, watch and rollout: the MLflow promotion gate and its serving endpoint"
# The venv's python links to the base image's interpreter, the same in both stages.
COPY --from=build /opt/promote /opt/promote
RUN useradd --system --uid 10001 --home-dir /home/promote --create-home promote
ENV PATH=/opt/promote/bin:$PATH \
    PYTHONUNBUFFERED=1
USER promote
WORKDIR /home/promote
EXPOSE 8080
ENTRYPOINT ["promote"]
CMD ["--help"]

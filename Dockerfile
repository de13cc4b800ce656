# fedimod's image, in two stages: wheels are built where a compiler is (pdqhash ships as source
# only), and the final image gets the wheels but no compiler.
#
#   docker build -t fedimod .                                   # from python:3.11-slim
#   docker build --build-arg BASE=my-registry/python:3.11 -t fedimod .
#   docker run --rm fedimod demo                                # the bundled demo, no config
#
# BASE must be a Debian-like image with python3 (3.11 or newer) and its venv module; the builder
# stage also needs apt to install gcc and the Python headers.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
# Extra CA certificates for a build behind a TLS-inspecting proxy: CI copies the machine's into
# the context at build time (never committed); an empty directory otherwise.
COPY ci-certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1 || true
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/fedimod
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedimod ./fedimod
RUN /opt/fedimod/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/fedimod/bin/pip install --no-cache-dir . \
    && find /opt/fedimod -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/fedimod /opt/fedimod
COPY config /etc/fedimod
ENV PATH=/opt/fedimod/bin:$PATH PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 fedimod
USER fedimod
WORKDIR /home/fedimod
# Mount a volume at /home/fedimod for the SQLite store (or set [store] to PostgreSQL); pass
# FEDIMOD_TOKEN in the environment. /healthz is [ops] listen, 127.0.0.1:9464 by default.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["fedimod"]
CMD ["run", "--config", "/etc/fedimod/fedimod.toml"]

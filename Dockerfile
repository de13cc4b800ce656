FROM python:3.11-slim

# gcc and the Python headers build pdqhash, which PyPI ships as source only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedimod ./fedimod
COPY config ./config
RUN pip install --no-cache-dir . && useradd --create-home fedimod
USER fedimod
WORKDIR /home/fedimod

# Mount a volume at /home/fedimod for the store; pass FEDIMOD_TOKEN in the environment.
ENTRYPOINT ["fedimod"]
CMD ["run", "--config", "/app/config/fedimod.toml"]

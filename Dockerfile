# syntax=docker/dockerfile:1
# Two images from one file (README, "Docker"):
#   docker build --target runner  -t robot-wsrl-runner  .   # onboard: numpy, onnxruntime, pyzmq, no torch
#   docker build --target learner -t robot-wsrl-learner .   # off-board: CUDA torch, learner and simulators
# Both install the project editable in /opt/robot-wsrl (their working folder), so configs/ and policies/
# resolve as in a checkout; mount runs/ and a key folder from the host.

ARG PYTHON_VERSION=3.12
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ----- runner: the robot side only (base dependencies, the `robot` extra; `robot,sim` for sim drivers) -----
FROM python:${PYTHON_VERSION}-slim AS runner
ARG RUNNER_EXTRAS=robot
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/robot-wsrl
COPY pyproject.toml README.md ./
COPY robot_wsrl ./robot_wsrl
COPY drivers ./drivers
COPY configs ./configs
RUN pip install -e ".[${RUNNER_EXTRAS}]"
# The onboard image must never carry torch (DESIGN §3): fail the build if anything pulled it in.
RUN if python -c "import torch" 2>/dev/null; then echo "torch is importable in the runner image" >&2; exit 1; fi \
    && robot-wsrl runner --help > /dev/null && robot-wsrl link-runner --help > /dev/null
# Relative paths work as in a checkout; runs/ (spools, received policies) is the one writable folder.
RUN useradd --create-home --uid 10001 robot && mkdir runs && chown robot runs
USER robot
ENTRYPOINT ["robot-wsrl"]
CMD ["--help"]

# ----- learner: CUDA torch first (pinned, from the CUDA index), then the learner and simulators -----
FROM ${CUDA_IMAGE} AS learner
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUJOCO_GL=disable \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /opt/robot-wsrl
COPY pyproject.toml README.md ./
COPY robot_wsrl ./robot_wsrl
COPY drivers ./drivers
COPY configs ./configs
COPY policies ./policies
RUN pip install -e ".[learner,sim]" \
    && python -c "import torch; assert torch.version.cuda, 'the learner image needs a CUDA torch build'" \
    && robot-wsrl learner --help > /dev/null
RUN useradd --create-home --uid 10001 learner && mkdir runs && chown learner runs
USER learner
ENTRYPOINT ["robot-wsrl"]
CMD ["--help"]

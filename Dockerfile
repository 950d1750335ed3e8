# Two images from one file (README, "Docker"); no `# syntax=` line, so that an offline builder needs no
# frontend image:
#   docker build --target runner  -t robot-wsrl-runner  .   # onboard: numpy, onnxruntime, pyzmq, no torch
#   docker build --target learner -t robot-wsrl-learner .   # off-board: CUDA torch, learner and simulators
# Both run `robot-wsrl` under tini in /opt/robot-wsrl, where configs/ and policies/ resolve as in a checkout;
# mount runs/ and a key folder from the host. Versions: the base image by tag, torch by version, every other
# package by constraints.txt (the file `make` installs with). Each stage installs its dependencies from
# pyproject.toml and constraints.txt alone, before any source is copied, so a source or README edit reuses
# the dependency layers.
#
# Real-time scheduling (`--rt-priority`, SCHED_FIFO): `--cap-add SYS_NICE` reaches root processes only.
# Docker clears the capabilities of a non-root user (`--user`, or this file's USER) at exec and sets no
# ambient ones, so such a runner gets EPERM. Either run the runner as root with the capability
# (`--user 0 --cap-add SYS_NICE`; root reads the chmod-600 keys through CAP_DAC_OVERRIDE), or keep the
# non-root user and allow real-time priorities through the rlimit instead (`--ulimit rtprio=99`, no
# capability needed; on a kernel with RT group scheduling also `--cpu-rt-runtime=950000`).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ----- policies for the runner: the ONNX files without the 12 MB torch checkpoint it never loads -----
FROM ${PYTHON_IMAGE} AS runner-policies
COPY policies /policies
RUN find /policies -name '*.pt' -delete

# ----- base: what both images share (tini, the user, the requirement lister, stop and health) -----
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUJOCO_GL=disable \
    ROBOT_WSRL_HEALTH=""
# tini as PID 1 forwards `docker stop`'s SIGTERM to robot-wsrl, whose commands take it as Ctrl-C (for the
# runner, its safe stop), and reaps orphans. A learner writing its checkpoint may need `docker stop -t 30`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# `pyproject-requirements EXTRAS`: the build and run requirements of pyproject.toml with those extras, so
# that dependencies install without the sources.
RUN printf '%s\n' \
      'import sys, tomllib' \
      'project = tomllib.load(open("pyproject.toml", "rb"))' \
      'extras = [name for name in sys.argv[1].split(",") if name]' \
      'optional = project["project"]["optional-dependencies"]' \
      'wanted = project["build-system"]["requires"] + project["project"]["dependencies"]' \
      'print(*wanted, *(r for name in extras for r in optional[name]), sep="\n")' \
      > /usr/local/bin/pyproject-requirements
RUN useradd --create-home --uid 10001 robot-wsrl
WORKDIR /opt/robot-wsrl
# Relative paths work as in a checkout; runs/ (spools, received policies, checkpoints) is the writable one.
RUN mkdir runs && chown robot-wsrl runs
STOPSIGNAL SIGTERM
# Healthy when `robot-wsrl status ARGS` exits 0: every named peer answers its control channel and no runner
# is e-stopped or faulted. ARGS come from ROBOT_WSRL_HEALTH, e.g. "--runner robot1=tcp://127.0.0.1:5601
# --keys /keys --name health" (a console key the runner accepts); unset, there is nothing to check.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD test -z "$ROBOT_WSRL_HEALTH" || robot-wsrl status $ROBOT_WSRL_HEALTH --timeout 10 > /dev/null || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "robot-wsrl"]
CMD ["--help"]

# ----- runner: the robot side only (base dependencies, the `robot` extra; `robot,sim` for sim drivers) -----
FROM base AS runner
ARG RUNNER_EXTRAS=robot
# With the simulators, camera tasks render headless through Mesa's EGL (robot_wsrl/sim/gl.py picks egl
# when no display is set and libEGL loads).
RUN case ",${RUNNER_EXTRAS}," in *,sim,*) apt-get update \
        && apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri \
        && rm -rf /var/lib/apt/lists/* ;; esac
COPY pyproject.toml constraints.txt ./
RUN python /usr/local/bin/pyproject-requirements "${RUNNER_EXTRAS}" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY robot_wsrl ./robot_wsrl
COPY configs ./configs
COPY --from=runner-policies /policies ./policies
# The onboard image must never carry torch (DESIGN §3): fail the build if anything pulled it in. Then the
# README's commands, the shipped policy included, must work in it.
RUN pip install --no-deps --no-build-isolation -e . \
    && pip check \
    && if python -c "import torch" 2>/dev/null; then echo "torch is importable in the runner image" >&2; exit 1; fi \
    && robot-wsrl runner --help > /dev/null && robot-wsrl link-runner --help > /dev/null \
    && robot-wsrl runner --driver null --policy policies/hopper/policy.onnx --steps 50 --no-realtime \
        --state /tmp/smoke > /dev/null \
    && rm -rf /tmp/smoke
USER robot-wsrl

# ----- learner: a compiler and Python headers (Triton and torch.compile build kernels), CUDA torch -----
# python:*-slim has the headers (/usr/local/include/python3.11); build-essential adds gcc, g++ and make;
# libegl1 and Mesa's drivers let the gate and fine-tuning render camera tasks headless (MUJOCO_GL=egl).
# No CUDA base image: the pip CUDA wheels bring their own CUDA and cuDNN and load nothing from one. PyPI's
# torch 2.13.0 for Linux x86_64 is the CUDA 13 build (NVIDIA driver >= 580); for an older driver pick
# another build, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
FROM base AS learner
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# Compile caches somewhere any --user can write (HOME is / for a user the image does not know).
ENV TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    MPLCONFIGDIR=/tmp/matplotlib
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libegl1 libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/*
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml constraints.txt ./
RUN python /usr/local/bin/pyproject-requirements learner,sim > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt
# A compiled function on the CPU needs the same compiler and headers as Triton on the GPU: fail here, not
# at the first compiled update. Its caches go with it: left in /tmp they are root's, so a non-root user's
# compile fails (PermissionError on /tmp/torchinductor/locks), and its precompiled headers weigh 150 MB.
RUN python -c "import torch; f = torch.compile(lambda x: x * 2 + 1); assert f(torch.ones(4)).sum() == 12" \
    && rm -rf /tmp/*
COPY README.md ./
COPY robot_wsrl ./robot_wsrl
COPY configs ./configs
COPY policies ./policies
RUN pip install --no-deps --no-build-isolation -e . \
    && pip check \
    && python -c "import torch; assert torch.version.cuda, 'the learner image needs a CUDA torch build'" \
    && robot-wsrl learner --help > /dev/null
USER robot-wsrl

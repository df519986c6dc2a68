# edge-pipeline as a Docker image for deployment CI: `docker run IMAGE run --config ... --out /runs/X`
# exits 0 (budget met), 1 (not met), 2 (bad input / failure) or 3 (inconclusive: too noisy to tell), like the CLI.
#
# No `# syntax=` line on purpose: it would make BuildKit pull docker/dockerfile from Docker Hub.
# The built-in frontend of Docker >= 20.10 (with BuildKit) knows RUN --mount=type=secret|cache.
#
# Flavours (BASE_IMAGE; see docs/docker.md):
#   cpu      python:3.11-slim-bookworm                          (default; x86-64 or arm64)
#   tensorrt nvcr.io/nvidia/tensorrt:<YY.MM>-py3                x86-64, TensorRT 10.x, needs
#            --build-arg VENV_SYSTEM_SITE_PACKAGES=1 so the venv sees the base's tensorrt module
#   jetson   nvcr.io/nvidia/l4t-jetpack:r36.4.0                  JetPack 6.1/6.2 (L4T 36.4), arm64,
#            TensorRT 10.3 + trtexec inside; also VENV_SYSTEM_SITE_PACKAGES=1
#   local    edge-pipeline-base:bookworm (docker/make_base.sh)   debootstrap stand-in for the cpu
#            flavour where Docker Hub cannot be reached (this project's tests)
#
# Build (BuildKit; the CA bundle is only needed behind a TLS-intercepting proxy, and is never
# stored in a layer):
#   DOCKER_BUILDKIT=1 docker build -t edge-pipeline:cpu \
#     --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .
#   (or --secret id=pipconf,src=$HOME/.config/pip/pip.conf; docker/build.sh does all of this)

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- deps: the venv
FROM ${BASE_IMAGE} AS deps

# 1: --system-site-packages, so the venv sees the base image's own TensorRT (tensorrt, jetson flavours)
ARG VENV_SYSTEM_SITE_PACKAGES=0
# An extra index for torch, e.g. https://download.pytorch.org/whl/cpu (CPU-only torch without the
# nvidia-* CUDA wheels) or JetPack wheels for the jetson flavour. Empty: torch comes from PyPI.
ARG TORCH_INDEX_URL=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT=180 \
    PYTHONDONTWRITEBYTECODE=1

# pip wrapper: picks up the BuildKit secrets (CA bundle -> PIP_CERT, pip.conf -> PIP_CONFIG_FILE)
# only for the duration of one RUN; nothing of them lands in a layer.
COPY docker/pip.sh /usr/local/bin/edge-pip

# The base image's own Python, in a venv (python3-venv is added only where the base lacks it).
RUN --mount=type=secret,id=ca \
    set -eu; \
    opts=""; [ "$VENV_SYSTEM_SITE_PACKAGES" = 1 ] && opts="--system-site-packages"; \
    if ! python3 -m venv $opts /opt/venv; then \
      rm -rf /opt/venv; ca=""; [ -s /run/secrets/ca ] && ca="-o Acquire::https::CAInfo=/run/secrets/ca"; \
      apt-get $ca update -qq && DEBIAN_FRONTEND=noninteractive apt-get $ca install -y -qq --no-install-recommends python3-venv; \
      rm -rf /var/lib/apt/lists/*; python3 -m venv $opts /opt/venv; \
    fi; \
    /opt/venv/bin/python -c 'import sys; assert sys.version_info >= (3, 10), sys.version'

# Dependencies only, from pyproject.toml alone (stub packages): a source change does not
# reinstall torch. Wheels are kept in a wheelhouse on a BuildKit cache mount (survives rebuilds,
# never in the image): `pip wheel` downloads only what is not there yet, the install is offline
# from it. (pip's own HTTP cache is not enough: it stores nothing when a proxy strips the caching
# headers, as the one on the machine where this was written does.)
# DEPS_REFRESH: any new value (e.g. the date) re-resolves the dependencies without `--no-cache`
# (which, with Docker 20.10's BuildKit, also starts the cache mounts empty).
ARG DEPS_REFRESH=
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip,id=edge-pipeline-pip,sharing=locked \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    set -eu; cd /src; echo "deps refresh: ${DEPS_REFRESH:-none}"; \
    mkdir -p core search pipeline stages/load targets /tmp/stub; touch README.md core/__init__.py search/__init__.py \
      pipeline/__init__.py stages/__init__.py stages/load/__init__.py targets/__init__.py; \
    wh=/root/.cache/pip/wheelhouse; mkdir -p "$wh"; \
    edge-pip wheel -w "$wh" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} /src; \
    mv "$wh"/edge_pipeline-*.whl /tmp/stub/; \
    edge-pip install --no-index --find-links "$wh" /tmp/stub/edge_pipeline-*.whl; \
    edge-pip uninstall -y edge-pipeline; \
    cd /; rm -rf /src /tmp/stub; \
    /opt/venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "cuda", torch.version.cuda, "| onnxruntime", onnxruntime.__version__)'

# --------------------------------------------------------------------------- app: the project
FROM deps AS app

# The project itself (not editable), with the embedded default model's weights as package data;
# docker/stage_project.py checks it and stages its files (a few MB) for the runtime stage.
COPY README.md /src/README.md
COPY pyproject.toml /src/pyproject.toml
COPY core /src/core
COPY search /src/search
COPY pipeline /src/pipeline
COPY stages /src/stages
COPY targets /src/targets
COPY examples/default.yaml /src/examples/default.yaml
COPY docker/stage_project.py /usr/local/lib/edge-stage_project.py
RUN --mount=type=cache,target=/root/.cache/pip,id=edge-pipeline-pip,sharing=locked \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    set -eu; \
    edge-pip install --no-deps /src; \
    edge-pip check; \
    /opt/venv/bin/python /usr/local/lib/edge-stage_project.py /src /staging

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

ARG PIPELINE_UID=10001
# ssh/scp for `--device user@host` (remote cpu, jetson over SSH); empty to leave it out.
ARG APT_PACKAGES="openssh-client"

LABEL org.opencontainers.image.title="edge-pipeline" \
      org.opencontainers.image.description="Prune a PyTorch model until a latency / memory / accuracy budget holds, measured on the target; exit 0 met, 1 not met, 2 bad input, 3 inconclusive" \
      org.opencontainers.image.licenses="MIT"

RUN --mount=type=secret,id=ca \
    set -eu; \
    missing=""; for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then \
      ca=""; [ -s /run/secrets/ca ] && ca="-o Acquire::https::CAInfo=/run/secrets/ca"; \
      apt-get $ca update -qq && DEBIAN_FRONTEND=noninteractive apt-get $ca install -y -qq --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi; \
    groupadd -g "$PIPELINE_UID" pipeline; \
    useradd -u "$PIPELINE_UID" -g pipeline -d /home/pipeline -m -s /usr/sbin/nologin pipeline; \
    mkdir -p /runs; chown pipeline:pipeline /runs

# Two layers: the dependencies (GBs, cached while pyproject.toml is unchanged), then the project.
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /staging/ /

# Caches (matplotlib, torch, the latency LUT) go to /tmp so any --user works and --read-only with
# --tmpfs /tmp works; set XDG_CACHE_HOME=/runs/.cache to keep the LUT between CI runs.
# PATH keeps the base image's own entries (CUDA, TensorRT in NVIDIA's images); trtexec's JetPack
# location is appended.
ENV PATH=/opt/venv/bin:${PATH}:/usr/src/tensorrt/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/cache \
    HOME=/home/pipeline

# Numeric, so Kubernetes' runAsNonRoot can verify that it is not root.
USER ${PIPELINE_UID}:${PIPELINE_UID}
WORKDIR /runs
VOLUME ["/runs"]

# For containers kept alive (e.g. `pipeline worker`): the CLI, its imports and the target table
# still work. It runs every 10 minutes; pass `docker run --no-healthcheck` to measure latency
# without it competing for the CPU (the CI examples do).
HEALTHCHECK --interval=10m --timeout=60s --start-period=30s --retries=1 CMD ["pipeline", "targets"]

ENTRYPOINT ["pipeline"]
CMD ["--help"]

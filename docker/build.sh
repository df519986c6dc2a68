#!/usr/bin/env bash
# Build the edge-pipeline image with BuildKit, passing the CA bundle / pip.conf as build secrets.
#
#   docker/build.sh [--flavour cpu|tensorrt|jetson|local] [-t TAG] [--base IMAGE]
#                   [--ca FILE] [--pip-conf FILE] [--torch-index URL] [-- EXTRA DOCKER BUILD ARGS]
#
#   cpu       python:3.11-slim-bookworm (default)
#   tensorrt  nvcr.io/nvidia/tensorrt:$TRT_TAG (required, e.g. TRT_TAG=YY.MM-py3 of a release whose
#             notes list TensorRT 10.x), venv with system site-packages
#   jetson    nvcr.io/nvidia/l4t-jetpack:$L4T_TAG (default r36.4.0), linux/arm64, system site-packages
#   local     edge-pipeline-base:bookworm from docker/make_base.sh (no Docker Hub needed)
#
# --ca defaults to $EDGE_CA_BUNDLE, else $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt when
# readable: the host's trust store, which behind a TLS-intercepting proxy holds the proxy's CA.
# It is mounted for the RUN steps that use pip/apt only; `docker history` and the layers never
# contain it. Uses `docker buildx build --load` when buildx is installed, else the classic
# client's built-in BuildKit (DOCKER_BUILDKIT=1, Docker 18.09-22.x clients such as docker.io).
# When the daemon has no bridge network (docker/dockerd.sh), the build runs with --network host.
# Prints the build time and the image size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
FLAVOUR=cpu TAG="" BASE="" CA="" PIPCONF="" TORCH_INDEX=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) FLAVOUR="$2"; shift 2;;
    -t|--tag) TAG="$2"; shift 2;;
    --base) BASE="$2"; shift 2;;
    --ca) CA="$2"; shift 2;;
    --pip-conf) PIPCONF="$2"; shift 2;;
    --torch-index) TORCH_INDEX="$2"; shift 2;;
    --) shift; EXTRA+=("$@"); break;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2;;
  esac
done

ARGS=()
case "$FLAVOUR" in
  cpu)      BASE="${BASE:-python:3.11-slim-bookworm}";;
  local)    BASE="${BASE:-$(DOCKER="$DOCKER" docker/make_base.sh)}";;
  tensorrt)
    if [ -z "$BASE" ] && [ -z "${TRT_TAG:-}" ]; then
      echo "error: the tensorrt flavour needs TRT_TAG (hint: TRT_TAG=<YY.MM>-py3 of an NGC TensorRT release with TensorRT 10.x, or --base IMAGE)" >&2; exit 2
    fi
    BASE="${BASE:-nvcr.io/nvidia/tensorrt:$TRT_TAG}"; ARGS+=(--build-arg VENV_SYSTEM_SITE_PACKAGES=1);;
  jetson)   BASE="${BASE:-nvcr.io/nvidia/l4t-jetpack:${L4T_TAG:-r36.4.0}}"; ARGS+=(--build-arg VENV_SYSTEM_SITE_PACKAGES=1 --platform linux/arm64);;
  *) echo "error: unknown flavour '$FLAVOUR' (hint: cpu, tensorrt, jetson or local)" >&2; exit 2;;
esac
TAG="${TAG:-edge-pipeline:$FLAVOUR}"
ARGS+=(--build-arg "BASE_IMAGE=$BASE" -t "$TAG")
[ -n "$TORCH_INDEX" ] && ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX")

if [ -z "$CA" ]; then
  for c in "${EDGE_CA_BUNDLE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$c" ] && [ -r "$c" ]; then CA="$c"; break; fi
  done
fi
[ -n "$CA" ] && { [ -r "$CA" ] || { echo "error: CA bundle $CA is not readable" >&2; exit 2; }; ARGS+=(--secret "id=ca,src=$CA"); }
[ -n "$PIPCONF" ] && { [ -r "$PIPCONF" ] || { echo "error: pip.conf $PIPCONF is not readable" >&2; exit 2; }; ARGS+=(--secret "id=pipconf,src=$PIPCONF"); }

if ! "$DOCKER" network inspect bridge >/dev/null 2>&1; then ARGS+=(--network host); fi

start=$(date +%s)
if "$DOCKER" buildx version >/dev/null 2>&1; then
  "$DOCKER" buildx build --load --progress=plain "${ARGS[@]}" "${EXTRA[@]}" .
else
  DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "${ARGS[@]}" "${EXTRA[@]}" .
fi
secs=$(( $(date +%s) - start ))
size=$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")
echo "built $TAG from $BASE in ${secs}s; image size $(( size / 1000000 )) MB ($size bytes)"

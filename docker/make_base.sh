#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull from Docker Hub:
# debootstrap a minimal Debian bookworm with Debian's python3.11 (+ venv, pip, CA certificates)
# and `docker import` it as edge-pipeline-base:bookworm. Debian's mirror is the only network use.
#
#   DOCKER_HOST=unix://... docker/make_base.sh [IMAGE]     # prints the image name
#
# Cached twice: the image in the daemon's data root is reused as is, and the root filesystem
# tarball in $STATE/base-bookworm.tar is re-imported when the data root was wiped. Delete both
# (or set EDGE_BASE_REBUILD=1) to bootstrap afresh (about 1-2 minutes with a warm apt mirror).
set -euo pipefail

IMAGE="${1:-edge-pipeline-base:bookworm}"
STATE="${EDGE_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-pipeline/docker}"
TARBALL="$STATE/base-bookworm.tar"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"

mkdir -p "$STATE"
if [ "${EDGE_BASE_REBUILD:-0}" = 1 ]; then
  rm -f "$TARBALL"; "$DOCKER" image rm -f "$IMAGE" >/dev/null 2>&1 || true
fi
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"; exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "error: debootstrap not found (hint: apt-get install debootstrap)" >&2; exit 2; }
  ROOTFS="$(mktemp -d "$STATE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || { echo "error: debootstrap failed; see $STATE/debootstrap.log" >&2; tail -n 20 "$STATE/debootstrap.log" >&2; exit 2; }
  # What python:*-slim also leaves out: package caches, apt lists, docs.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
  : >"$ROOTFS/etc/resolv.conf"
  tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

"$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase bookworm + python3 python3-venv python3-pip ca-certificates" \
  "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"

#!/usr/bin/env bash
# Install what the docker tests need from Debian/Ubuntu packages when it is missing:
# docker.io (dockerd + a client with built-in BuildKit) and debootstrap (the local base image).
# The packaged service is not started (docker/dockerd.sh starts a private daemon instead).
# Exit 0 when everything is there afterwards, 2 otherwise (with the reason).
set -euo pipefail
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
command -v apt-get >/dev/null 2>&1 || { echo "error: ${need[*]} missing and no apt-get here (hint: install them by hand)" >&2; exit 2; }
# policy-rc.d 101: keep the package's systemd/init service from starting a system-wide dockerd
tmp_policy=""
if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
fi
trap 'if [ -n "$tmp_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || { echo "error: apt-get install ${need[*]} failed (hint: run as root or with passwordless sudo)" >&2; exit 2; }
echo "installed: ${need[*]}"

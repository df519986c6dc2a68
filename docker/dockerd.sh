#!/usr/bin/env bash
# A private Docker daemon for building and testing the image on a machine where none runs
# (CI VMs, this project's test machine). Nothing system-wide is touched: its own data root,
# exec root, pid file and socket; no docker0 bridge, no iptables rules, no ip_forward change
# (builds use --network host, runs use --network none).
#
#   docker/dockerd.sh start   # waits until it answers; prints DOCKER_HOST=unix://..., DOCKERD_PID=,
#                             # DOCKERD_STARTED=1|0 (0: one already ran on this data root) and
#                             # DOCKER= (the client to use); `eval "$(docker/dockerd.sh start)"`
#   docker/dockerd.sh stop    # stops it by its PID (TERM, then KILL after 30 s), removes the run dir
#   docker/dockerd.sh status  # exit 0 if it runs
#   docker/dockerd.sh cleanup [RUN_DIR]  # after stopping it by PID yourself: unmount what it left
#                             # (netns/default), remove the run dir
#
# STATE (EDGE_DOCKER_STATE, default ~/.cache/edge-pipeline/docker) keeps the data root between
# runs, so the local base image, the image layers and the BuildKit pip cache survive (about 16 GB
# after one build). The socket and exec root live in a short /tmp path (EDGE_DOCKER_RUN; unix
# socket paths are limited to 108 bytes). Needs root (dockerd does) and docker.io.
set -euo pipefail

STATE="${EDGE_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-pipeline/docker}"
DATA_ROOT="$STATE/data-root"
# The pid file and the address live beside the data root: one daemon per data root, whoever
# started it (a second `start` reuses it and says DOCKERD_STARTED=0).
PIDFILE="$STATE/dockerd.pid"
ENVFILE="$STATE/dockerd.env"
LOG="$STATE/dockerd.log"
RUN_DIR="${EDGE_DOCKER_RUN:-/tmp/edge-dockerd-$(id -u)}"
DOCKER="${DOCKER:-}"

pick_client() {
  # The docker.io client (20.10) has BuildKit built in; a newer client without the buildx
  # plugin refuses DOCKER_BUILDKIT=1 builds. Prefer the client that ships with dockerd.
  if [ -n "$DOCKER" ]; then echo "$DOCKER"; return; fi
  local d; d="$(command -v dockerd || true)"
  if [ -n "$d" ] && [ -x "$(dirname "$d")/../bin/docker" ]; then
    readlink -f "$(dirname "$d")/../bin/docker"; return
  fi
  command -v docker
}

cleanup() {  # after the daemon is gone: mounts it left (netns/default), the run dir, the env file
  local run_dir="$1"
  if [ -n "$run_dir" ] && [ -d "$run_dir" ]; then
    awk -v d="$run_dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$run_dir"
  fi
  rm -f "$ENVFILE"
}

running() {  # the pid file names a live dockerd (not a recycled PID)
  [ -f "$PIDFILE" ] && [ "$(cat "/proc/$(cat "$PIDFILE")/comm" 2>/dev/null)" = dockerd ]
}

case "${1:-}" in
  start)
    command -v dockerd >/dev/null || { echo "error: dockerd not found (hint: apt-get install docker.io, or docker/install-deps.sh)" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || { echo "error: dockerd needs root here (hint: sudo, or use your own Docker daemon)" >&2; exit 2; }
    mkdir -p "$DATA_ROOT"
    if running && [ -f "$ENVFILE" ]; then
      cat "$ENVFILE"; echo "DOCKERD_PID=$(cat "$PIDFILE")"; echo "DOCKERD_STARTED=0"; echo "DOCKER=$(pick_client)"
      exit 0
    fi
    SOCK="$RUN_DIR/docker.sock"
    mkdir -p "$RUN_DIR/exec"; chmod 700 "$RUN_DIR"
    rm -f "$SOCK" "$PIDFILE" "$ENVFILE"
    # setsid: its own session, so a Ctrl-C in the caller's terminal does not reach it.
    setsid dockerd \
      --data-root "$DATA_ROOT" --exec-root "$RUN_DIR/exec" --pidfile "$PIDFILE" \
      -H "unix://$SOCK" --bridge none --iptables=false --ip6tables=false \
      --ip-forward=false --ip-masq=false \
      --storage-driver "${EDGE_DOCKER_STORAGE_DRIVER:-overlay2}" \
      >>"$LOG" 2>&1 </dev/null &
    spawned=$!
    ok=""
    for _ in $(seq 1 120); do
      if [ -S "$SOCK" ] && DOCKER_HOST="unix://$SOCK" "$(pick_client)" version >/dev/null 2>&1; then ok=1; break; fi
      kill -0 "$spawned" 2>/dev/null || break
      sleep 0.5
    done
    if [ -z "$ok" ]; then
      kill -TERM "$spawned" 2>/dev/null || true
      echo "error: dockerd did not come up; last lines of $LOG:" >&2; tail -n 20 "$LOG" >&2; exit 2
    fi
    printf 'DOCKER_HOST=unix://%s\nEDGE_DOCKER_RUN=%s\n' "$SOCK" "$RUN_DIR" >"$ENVFILE"
    cat "$ENVFILE"; echo "DOCKERD_PID=$(cat "$PIDFILE")"; echo "DOCKERD_STARTED=1"; echo "DOCKER=$(pick_client)"
    ;;
  stop)
    running || { echo "not running"; exit 0; }
    pid="$(cat "$PIDFILE")"
    run_dir="$(sed -n 's/^EDGE_DOCKER_RUN=//p' "$ENVFILE" 2>/dev/null || true)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PIDFILE"
    cleanup "$run_dir"
    echo "stopped dockerd $pid"
    ;;
  cleanup)
    # for a caller that stopped the daemon by its PID itself: `dockerd.sh cleanup [RUN_DIR]`
    running && { echo "error: dockerd $(cat "$PIDFILE") still runs (stop it first)" >&2; exit 2; }
    cleanup "${2:-$(sed -n 's/^EDGE_DOCKER_RUN=//p' "$ENVFILE" 2>/dev/null || true)}"
    ;;
  status)
    if running && [ -f "$ENVFILE" ]; then cat "$ENVFILE"; echo "DOCKERD_PID=$(cat "$PIDFILE")"; exit 0; fi
    exit 1
    ;;
  *)
    echo "usage: $0 start|stop|status|cleanup [RUN_DIR]" >&2; exit 2
    ;;
esac

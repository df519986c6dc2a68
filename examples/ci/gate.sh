#!/usr/bin/env bash
# Deployment gate: run `pipeline run` in the edge-pipeline image, copy the run folder out, write a
# Markdown summary, and exit with the pipeline's code: 0 budget met, 1 not met, 2 bad input or
# failure (also when docker itself fails), 3 inconclusive (the latency interval still straddled the
# budget when the measurement cap ran out: a noisy runner; rerun it quieter, the job fails either
# way unless EDGE_ALLOW_INCONCLUSIVE=1 makes it pass), 130 / 143 interrupted / terminated (the job was cancelled:
# the run folder is consistent, `--resume` continues it). Used by the GitHub and GitLab examples here.
#
#   examples/ci/gate.sh IMAGE CONFIG.yaml OUT_DIR [pipeline run flags ...]
#
# OUT_DIR receives the run folder (report.json, report.md, manifest.json, logs/, model.onnx,
# the engine plans ...) and summary.md (verdict, numbers, violations; needs jq, else a note).
#
# Environment:
#   EDGE_DOCKER_ARGS  extra `docker create` arguments, word-split: e.g. "--runtime nvidia
#                     --network none -v /etc/nv_tegra_release:/etc/nv_tegra_release:ro"
#                     (default "--network none"; SSH needs a network: "--network host")
#   EDGE_SSH_KEY      private key file for --device (and EDGE_KNOWN_HOSTS, the pinned host keys):
#                     copied into the container, owned by its user, mode 0600, and passed as the
#                     identity_file / known_hosts target options. They never touch the image, a
#                     volume or the host's workspace, and are gone with the container.
#   EDGE_IMAGE_UID    the image's user (default 10001, Dockerfile ARG PIPELINE_UID)
#
# Why `docker create` + `docker cp` + `docker start -a` rather than `docker run -v`: the image
# runs as a non-root user, and ssh refuses keys it cannot own; copying files in with the right
# owner needs no sudo on the runner and no chmod 777 on the workspace.
set -uo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,9p' "$0" >&2; exit 2
fi
IMAGE="$1" CONFIG="$2" OUT="$3"; shift 3
DOCKER="${DOCKER:-docker}"
UID_IN="${EDGE_IMAGE_UID:-10001}"
HOME_IN=/home/pipeline
NAME="$(basename "$OUT")"

[ -r "$CONFIG" ] || { echo "error: config $CONFIG not readable" >&2; exit 2; }
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "error: $OUT exists and is not empty (hint: one OUT_DIR per run, e.g. runs/\$RUN_ID)" >&2; exit 2
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"; if [ -n "${cid:-}" ]; then "$DOCKER" rm -v -f "$cid" >/dev/null 2>&1; fi' EXIT
mkdir -p "$stage/ci"
cp "$CONFIG" "$stage/ci/config.yaml"
args=(run --config "$HOME_IN/ci/config.yaml" --out "/runs/$NAME")
if [ -n "${EDGE_SSH_KEY:-}" ]; then
  [ -r "$EDGE_SSH_KEY" ] || { echo "error: EDGE_SSH_KEY $EDGE_SSH_KEY not readable" >&2; exit 2; }
  [ -r "${EDGE_KNOWN_HOSTS:-}" ] || { echo "error: EDGE_KNOWN_HOSTS must name the device's pinned host keys (ssh-keyscan, checked by hand)" >&2; exit 2; }
  (umask 077; mkdir -p "$stage/.ssh")
  cp "$EDGE_SSH_KEY" "$stage/.ssh/id_ci"; cp "$EDGE_KNOWN_HOSTS" "$stage/.ssh/known_hosts"
  chmod 700 "$stage/.ssh"; chmod 600 "$stage/.ssh/id_ci" "$stage/.ssh/known_hosts"
  args+=(--target-option "identity_file=$HOME_IN/.ssh/id_ci" --target-option "known_hosts=$HOME_IN/.ssh/known_hosts"
         --target-option "ssh_config=none")
fi
args+=("$@")

# shellcheck disable=SC2086  # EDGE_DOCKER_ARGS is a word list on purpose
cid="$("$DOCKER" create --no-healthcheck ${EDGE_DOCKER_ARGS:---network none} "$IMAGE" "${args[@]}")" \
  || { echo "error: docker create failed (image $IMAGE built? see docs/docker.md)" >&2; exit 2; }
tar -C "$stage" --owner="$UID_IN" --group="$UID_IN" --numeric-owner -cf - . \
  | "$DOCKER" cp - "$cid:$HOME_IN/" || { echo "error: docker cp into the container failed" >&2; exit 2; }

"$DOCKER" start -a "$cid"
rc=$?
mkdir -p "$(dirname "$OUT")"
rmdir "$OUT" 2>/dev/null || true
"$DOCKER" cp "$cid:/runs/$NAME" "$OUT" 2>/dev/null || mkdir -p "$OUT"
case "$rc" in
  0|1|2) ;;
  3) echo "warning: inconclusive: the runner was too noisy to decide the latency budget (report.md: interval and advice)" >&2
     [ "${EDGE_ALLOW_INCONCLUSIVE:-0}" = 1 ] && rc=0;;
  130|143) echo "error: the run was interrupted (exit $rc); its folder is consistent: --resume continues it" >&2;;
  *) echo "error: the container ended with $rc (docker or the runtime failed, not a verdict)" >&2; rc=2;;
esac

# summary.md: the verdict and violations from report.json, for a CI step summary or PR comment
rep="$OUT/report.json"
if [ -f "$rep" ] && command -v jq >/dev/null 2>&1; then
  jq -r --arg rc "$rc" '
    def r(n): if type == "number" then (. * pow(10; n) | round / pow(10; n) | tostring) else "n/a" end;
    "### " + (if .constraints.verdict == "inconclusive" then "❔ inconclusive (too noisy to decide)"
              elif .constraints.met then "✅ budget met" else "❌ budget not met" end)
      + " on `" + .target + "` (exit " + $rc + ")",
    "",
    "| | baseline | final |", "|---|---:|---:|",
    "| latency median (ms) | \(.baseline.latency_ms.median | r(3)) | \(.final.latency_ms.median | r(3)) |",
    "| memory (MB) | \(.baseline.memory_mb | r(1)) | \(.final.memory_mb | r(1)) |",
    "| \(.final.accuracy_metric // "accuracy") (\(.metric.unit // "%")) | \(.baseline.accuracy | r(2)) | \(.final.accuracy | r(2)) |",
    "| MACs (M) | \(.baseline.macs / 1e6 | r(1)) | \(.final.macs / 1e6 | r(1)) |",
    "",
    "speedup **\(.speedup | r(2))x**" + (if .constraints.intervals.speedup then " (interval \(.constraints.intervals.speedup.low | r(2))-\(.constraints.intervals.speedup.high | r(2))x over \(.constraints.intervals.speedup.n) measuring processes)" else "" end) + ", measured on \(.final.measured_on)",
    "",
    (.constraints.violations[]? | "- " + .), (.constraints.undecided[]? | "- " + .), (.constraints.warnings[]? | "- ⚠ " + .)' "$rep" >"$OUT/summary.md"
elif [ -f "$rep" ]; then
  echo "### exit $rc: see report.md (install jq for this summary)" >"$OUT/summary.md"
elif [ "$rc" = 0 ]; then
  echo "### exit 0 without report.json (a --dry-run?)" >"$OUT/summary.md"
else
  { echo "### ❌ pipeline failed (exit $rc): no report.json"
    echo; echo "Bad input or a failing stage; the error line is in the job log, the traceback in logs/pipeline.log."
  } >"$OUT/summary.md"
fi
cat "$OUT/summary.md"
exit "$rc"

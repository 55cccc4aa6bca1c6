#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Streams the training log of every worker (tail -F, each line prefixed with the worker's host
# name), or with --collect DIR copies each worker's log into DIR/<worker>.log.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/logs.sh --name NAME --zone ZONE [--collect DIR] [options]

Without --collect: streams ~/arpo_logs/train.log from the workers (Ctrl-C to stop).
With --collect DIR: writes every worker's train.log to DIR/0.log, DIR/1.log, ... (through
`tpu-vm ssh --worker=all --output-directory`; `tpu-vm scp` cannot copy from several workers
at once); with --worker N, copies worker N's whole log directory to DIR/worker-N (scp).

Options:
  --collect DIR             local directory for the collected logs
  --worker W                all (default), a worker number, or a list such as 0,3
  --lines N                 lines of history to show when streaming (default: 100)
  --log-dir DIR             log directory on the workers (default: ~/arpo_logs)

Examples:
  tpu_scripts/logs.sh --name arpo-pod --zone us-west4-a --worker 0
  tpu_scripts/logs.sh --name arpo-pod --zone us-west4-a --collect logs/arpo-pod
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS log-dir worker collect lines" "$@"
arpo_check_resource
case $LINES in ''|*[!0-9]*) die "--lines expects a number, got '$LINES'" ;; esac
if [ -n "$COLLECT" ] && [ "$WORKER" != all ]; then
  case $WORKER in ''|*[!0-9]*) die "--collect with --worker: one worker number (or all), got '$WORKER'" ;; esac
fi
require_gcloud
do_logs

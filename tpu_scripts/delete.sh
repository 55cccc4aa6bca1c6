#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the TPU VM (tpu-vm delete --quiet), or with --queued the queued resource together
# with its TPU VM (queued-resources delete --force --quiet).
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/delete.sh --name NAME --zone ZONE [--queued] [options]

Deletes without asking (--quiet). Use --queued for a resource made with create.sh --queued.

Options:
  --async                   return without waiting for the deletion to finish

Example:
  tpu_scripts/delete.sh --name arpo-pod --zone us-west4-a --queued --dry-run
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS async" "$@"
arpo_check_resource
require_gcloud
do_delete

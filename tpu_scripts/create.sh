#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates a Cloud TPU VM (gcloud compute tpus tpu-vm create), or with --queued a queued
# resource (gcloud compute tpus queued-resources create) and waits until it is ACTIVE.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]

Creates the TPU VM (one host, or every host of a pod slice) for arpo_jax.

Options:
  --create-flag FLAG        extra flag for the create command, repeatable
                            (e.g. --create-flag=--service-account=SA --create-flag=--network=NET)
  --no-wait                 with --queued: return without waiting for the state ACTIVE

Examples:
  tpu_scripts/create.sh --name arpo-v5p --zone us-east5-a --accelerator-type v5p-8 --dry-run
  tpu_scripts/create.sh --name arpo-pod --zone us-west4-a --accelerator-type v5litepod-64 \
      --queued --spot
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS create-flag no-wait" "$@"
arpo_check_resource
require_arg --accelerator-type "$ACCELERATOR_TYPE"
require_gcloud
do_create

#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Makes the training data available on every worker: rsync from a gs:// bucket path on each
# worker, or a tarball of a local directory copied with scp.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/data.sh --name NAME --zone ZONE --data (gs://BUCKET/PATH | LOCAL_DIR) [options]

Copies the data onto every worker (--worker=all) into --data-dir; pass the same --data-dir
(or --data) to launch.sh, which adds data.root=DIR to the trainer's overrides.

Options:
  --data SRC                gs://bucket/path (each worker runs gcloud storage rsync --recursive)
                            or a local directory (tar + scp to every worker)
  --data-dir DIR            destination on the workers (default: ~/arpo_data)
  --use-gsutil              use `gsutil -m rsync -r` instead of `gcloud storage rsync`

The workers' service account needs read access to the bucket (and write access to the
checkpoint bucket given to launch.sh).

Example:
  tpu_scripts/data.sh --name arpo-pod --zone us-west4-a --data gs://my-bucket/arpo/data --dry-run
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS data data-dir use-gsutil" "$@"
arpo_check_resource
require_arg --data "$DATA"
require_gcloud
do_data

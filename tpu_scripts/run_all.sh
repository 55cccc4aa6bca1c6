#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# create -> install -> data (with --data) -> launch, with the options of those scripts.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/run_all.sh --name NAME --zone ZONE --accelerator-type TYPE
           (--repo-url URL | --src DIR) --config CONFIG [--data SRC] [key=value ...] [options]

Runs create.sh, install.sh, data.sh (when --data is given) and launch.sh in turn; every
argument is checked before anything is created. Follow the run with logs.sh, remove the
resources with delete.sh. Takes the options of all four scripts (see their --help):
  create:  --create-flag FLAG (a queued resource is waited for: install needs the VM)
  install: --repo-url URL [--ref REF] | --src DIR, --remote-dir DIR, --python PY, --extra NAME
  data:    --data SRC, --data-dir DIR, --use-gsutil
  launch:  --config CONFIG, key=value, --env KEY=VALUE, --checkpoint-dir DIR, --mesh D,F,T,
           --log-dir DIR, --foreground

Example (prints every command of a v5e-64 run):
  tpu_scripts/run_all.sh --name arpo-pod --zone us-west4-a --accelerator-type v5litepod-64 \
      --spot --src . --data gs://my-bucket/arpo/data --checkpoint-dir gs://my-bucket/arpo/ckpt \
      --config configs/arpo_qwen2.5_7b_reasoning.yaml train.total_steps=100 --dry-run
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS create-flag remote-dir repo-url ref src python extra data data-dir use-gsutil config config-positional overrides env checkpoint-dir mesh log-dir foreground" "$@"
arpo_check_resource
require_arg --accelerator-type "$ACCELERATOR_TYPE"
arpo_check_install
arpo_check_launch
require_gcloud

note "1/4 create"
do_create
note "2/4 install"
do_install
if [ -n "$DATA" ]; then
  note "3/4 data"
  do_data
else
  note "3/4 data: skipped (no --data)"
fi
note "4/4 launch"
do_launch

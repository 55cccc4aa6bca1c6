#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs arpo_jax on every worker of a TPU VM: the code (git clone, or a tarball of a local
# checkout copied with scp), a Python >= 3.11 venv and `pip install -e ".[tpu]"`.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/install.sh --name NAME --zone ZONE (--repo-url URL | --src DIR) [options]

Puts the project on every worker (--worker=all) and installs it into ~/arpo_jax/.venv.

Options:
  --repo-url URL            git clone URL on every worker (an existing clone is updated)
  --ref REF                 branch, tag or commit to check out with --repo-url (default: HEAD)
  --src DIR                 instead: tar the local checkout DIR and scp it to every worker
  --remote-dir DIR          where the project goes on the workers (default: ~/arpo_jax)
  --python PY               Python on the workers (default: the first of python3.13,
                            python3.12, python3.11, python3 that is >= 3.11 with venv, else
                            apt-get install python3.11 python3.11-venv)
  --extra NAME              the pip extra to install (default: tpu, i.e. jax[tpu])

Examples:
  tpu_scripts/install.sh --name arpo-v5p --zone us-east5-a --src . --dry-run
  tpu_scripts/install.sh --name arpo-pod --zone us-west4-a \
      --repo-url https://github.com/ORG/arpo_jax.git --ref main
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS remote-dir repo-url ref src python extra" "$@"
arpo_check_resource
arpo_check_install
require_gcloud
do_install

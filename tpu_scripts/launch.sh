#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts `arpo-jax train CONFIG key=value...` on every worker at once (--worker=all); on a TPU
# pod slice JAX finds its peers by itself. The run is detached (nohup) and logs to
# ~/arpo_logs/train.log on each worker; see logs.sh.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/launch.sh --name NAME --zone ZONE --config CONFIG [key=value ...] [options]

Runs on every worker (--worker=all), in ~/arpo_jax:
  export PYTHONUNBUFFERED=1 [--env ...] && nohup .venv/bin/arpo-jax train CONFIG
      [data.root=...] [train.checkpoint_dir=...] [mesh.shape=[...]] key=value... \
      > ~/arpo_logs/train.log 2>&1 &
and writes the pid to ~/arpo_logs/train.pid.

Options:
  --config CONFIG           config file, relative to the project (or the first bare argument)
  key=value                 config overrides, passed to the trainer as they are
  --env KEY=VALUE           environment variable exported on the workers, repeatable
  --checkpoint-dir DIR      adds train.checkpoint_dir=DIR (e.g. gs://bucket/ckpt; orbax
                            writes gs:// directly)
  --data-dir DIR            adds data.root=DIR (where data.sh put the data; ~ is the
                            worker's home); --data SRC alone adds data.root=~/arpo_data
  --mesh D,F,T              adds mesh.shape=[D,F,T] (data, fsdp, tensor; one may be -1)
  --remote-dir DIR          the project on the workers (default: ~/arpo_jax)
  --log-dir DIR             log directory on the workers (default: ~/arpo_logs)
  --foreground              run attached (output streamed, still tee'd to the log)
  --stop                    stop the run started by launch.sh (kills the pid in train.pid)

Example:
  tpu_scripts/launch.sh --name arpo-pod --zone us-west4-a \
      --config configs/arpo_qwen2.5_7b_reasoning.yaml --data-dir ~/arpo_data \
      --checkpoint-dir gs://my-bucket/arpo/ckpt --env WANDB_MODE=offline \
      train.total_steps=100 --dry-run
EOF_USAGE
  arpo_usage_resource
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "$ARPO_RESOURCE_OPTS config config-positional overrides env checkpoint-dir data data-dir mesh remote-dir log-dir foreground stop" "$@"
arpo_check_resource
arpo_check_launch
require_gcloud
do_launch

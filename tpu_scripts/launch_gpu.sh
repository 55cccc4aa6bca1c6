#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Trains on one multi-GPU host (or one host of several) with the same mesh code as on TPU:
# sets up .venv with the cuda extra, sets XLA flags for GPUs and runs
# `arpo-jax train CONFIG key=value...` with an optional mesh override. For several hosts, run
# it on each host with the same --coordinator and --num-processes and that host's
# --process-id; they reach the trainer as ARPO_COORDINATOR, ARPO_NUM_PROCESSES and
# ARPO_PROCESS_ID.
set -euo pipefail

usage() {
  arpo_cat <<'EOF_USAGE'
Usage: tpu_scripts/launch_gpu.sh CONFIG [key=value ...] [options]

Runs in the project root:
  PY -m venv .venv && .venv/bin/pip install -e ".[cuda]"       (unless --skip-install)
  export XLA_FLAGS="... --xla_gpu_enable_latency_hiding_scheduler=true"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
  [export ARPO_COORDINATOR=HOST:PORT ARPO_NUM_PROCESSES=N ARPO_PROCESS_ID=I]
  .venv/bin/arpo-jax train CONFIG [mesh.shape=[D,F,T]] key=value...

Options:
  --config CONFIG           the config (or give it as the first bare argument)
  key=value                 config overrides, passed to the trainer as they are
  --mesh D,F,T              adds mesh.shape=[D,F,T] (data, fsdp, tensor; one may be -1),
                            e.g. --mesh 1,8,1 for FSDP over 8 GPUs
  --env KEY=VALUE           extra environment variable, repeatable
  --xla-flags FLAGS         appended to XLA_FLAGS
  --mem-fraction F          XLA_PYTHON_CLIENT_MEM_FRACTION (default: 0.9, or the value
                            already in the environment)
Several GPU hosts (all three, the same coordinator and count on every host):
  --coordinator HOST:PORT   address of process 0, reachable from every host
  --num-processes N         number of hosts (processes)
  --process-id I            this host's index, 0..N-1 (0 on the coordinator's host)
Set-up:
  --python PY               Python for the venv (default: the first of python3.13,
                            python3.12, python3.11, python3 that is >= 3.11)
  --extra NAME              the pip extra (default: cuda, i.e. jax[cuda12])
  --venv DIR                virtual environment (default: .venv)
  --skip-install            use the existing venv as it is
  --dry-run                 print the commands and exports instead of running them
  -h, --help                this help

Examples:
  tpu_scripts/launch_gpu.sh configs/arpo_qwen2.5_7b_reasoning.yaml --mesh 1,8,1 \
      train.total_steps=100 --dry-run
  # host 1 of 2 (host 0 is 10.0.0.2):
  tpu_scripts/launch_gpu.sh configs/arpo_qwen2.5_7b_reasoning.yaml --mesh 2,8,1 \
      --coordinator 10.0.0.2:1234 --num-processes 2 --process-id 1
EOF_USAGE
}

case ${BASH_SOURCE[0]} in */*) ARPO_HERE=${BASH_SOURCE[0]%/*} ;; *) ARPO_HERE=. ;; esac
# shellcheck source=common.sh
. "$ARPO_HERE/common.sh"

arpo_parse "dry-run config config-positional overrides env mesh coordinator num-processes process-id xla-flags mem-fraction python extra venv skip-install" "$@"
require_arg --config "$CONFIG"
arpo_check_mesh
case $EXTRA in *[!A-Za-z0-9_,-]*) die "--extra '$EXTRA' is not an extra name such as cuda" ;; esac

if [ -n "$COORDINATOR$NUM_PROCESSES$PROCESS_ID" ]; then
  if [ -z "$COORDINATOR" ] || [ -z "$NUM_PROCESSES" ] || [ -z "$PROCESS_ID" ]; then
    die "several GPU hosts need all of --coordinator HOST:PORT, --num-processes N and --process-id I"
  fi
  case $COORDINATOR in
    ?*:[0-9]*) case ${COORDINATOR##*:} in *[!0-9]*) die "--coordinator expects HOST:PORT, got '$COORDINATOR'" ;; esac ;;
    *) die "--coordinator expects HOST:PORT, got '$COORDINATOR'" ;;
  esac
  case $NUM_PROCESSES in ''|0*|*[!0-9]*) die "--num-processes expects a positive number, got '$NUM_PROCESSES'" ;; esac
  case $PROCESS_ID in ''|*[!0-9]*) die "--process-id expects a number, got '$PROCESS_ID'" ;; esac
  ((PROCESS_ID < NUM_PROCESSES)) || die "--process-id $PROCESS_ID is not below --num-processes $NUM_PROCESSES"
fi
if [ -n "$MEM_FRACTION" ]; then
  case $MEM_FRACTION in 0.[0-9]*|1|1.0) ;; *) die "--mem-fraction expects a number in (0, 1], got '$MEM_FRACTION'" ;; esac
fi

# The commands run in the project root; a config given relative to another directory is made
# absolute first.
case $CONFIG in
  /*) ;;
  *) if [ "$PWD" != "$ARPO_REPO_ROOT" ] && [ -f "$CONFIG" ]; then CONFIG="$PWD/$CONFIG"; fi ;;
esac
cd "$ARPO_REPO_ROOT"

if ((!SKIP_INSTALL)); then
  if [ -z "$PYTHON" ]; then
    for p in python3.13 python3.12 python3.11 python3; do
      if command -v "$p" >/dev/null 2>&1 &&
        "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        PYTHON=$p
        break
      fi
    done
    if [ -z "$PYTHON" ]; then
      ((DRY_RUN)) || die "no Python >= 3.11 found on PATH; install one or pass --python PY"
      PYTHON=python3
    fi
  fi
  run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/pip" install -e ".[${EXTRA:-cuda}]"
fi

xla=${XLA_FLAGS:-}
case " $xla " in
  *" --xla_gpu_enable_latency_hiding_scheduler="*) ;;
  *) xla="${xla:+$xla }--xla_gpu_enable_latency_hiding_scheduler=true" ;;
esac
[ -z "$XLA_EXTRA" ] || xla="$xla $XLA_EXTRA"
run_export XLA_FLAGS "$xla"
run_export XLA_PYTHON_CLIENT_MEM_FRACTION "${MEM_FRACTION:-${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}}"
for e in ${ENVS[@]+"${ENVS[@]}"}; do
  run_export "${e%%=*}" "${e#*=}"
done
if [ -n "$COORDINATOR" ]; then
  run_export ARPO_COORDINATOR "$COORDINATOR"
  run_export ARPO_NUM_PROCESSES "$NUM_PROCESSES"
  run_export ARPO_PROCESS_ID "$PROCESS_ID"
fi

args=(train "$CONFIG")
[ -z "$MESH" ] || args+=("$(arpo_mesh_override)")
args+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
run "$VENV/bin/arpo-jax" "${args[@]}"

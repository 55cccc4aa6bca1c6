# shellcheck shell=bash
# shellcheck disable=SC2034  # the globals set here are read by the scripts that source it
# Shared helpers of the tpu_scripts (sourced by every script, not run on its own).
#
# - one argument parser (arpo_parse) for every option of every script; each script names
#   the options it accepts, anything else is an error that names the option;
# - run: prints a command as "+ cmd" with shell quoting, then runs it; with --dry-run it only
#   prints it (on stdout), so the output can be copied into a shell;
# - the gcloud wrappers (create / ssh / scp on --worker=all / delete) and the remote command
#   builders (install, data, launch, logs), shared by the single-step scripts and run_all.sh.
#
# Works with bash >= 3.2 (macOS's /bin/bash): no associative arrays, no ${var@Q}, and empty
# arrays are expanded as ${a[@]+"${a[@]}"} so that `set -u` accepts them.

ARPO_SCRIPT=${0##*/}
ARPO_TPU_SCRIPTS_DIR=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
ARPO_REPO_ROOT=${ARPO_TPU_SCRIPTS_DIR%/*}

# --------------------------------------------------------------------------- messages

die() {
  printf '%s: error: %s\n' "$ARPO_SCRIPT" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$ARPO_SCRIPT" "$*" >&2
}

# --------------------------------------------------------------------------- quoting

# Prints WORD quoted for a POSIX shell: unchanged when it needs no quoting, else in single
# quotes (a ' inside becomes '\'').
arpo_quote() {
  local s=$1 sq="'\\''"
  case $s in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${s//\'/$sq}" ;;
    *) printf '%s' "$s" ;;
  esac
}

# Like arpo_quote, but "--flag=value" prints as --flag='value' (easier to read, same meaning).
arpo_quote_arg() {
  local s=$1
  case $s in
    --[A-Za-z0-9]*=*)
      case ${s%%=*} in
        *[!A-Za-z0-9_-]*) arpo_quote "$s" ;;
        *) printf '%s=' "${s%%=*}"; arpo_quote "${s#*=}" ;;
      esac
      ;;
    *) arpo_quote "$s" ;;
  esac
}

# Quotes a word for a command that runs on the TPU workers (it travels inside --command='...'):
# double quotes where they suffice, so that the printed gcloud line stays readable.
arpo_rquote() {
  local s=$1
  case $s in
    '') printf '""' ;;
    *[!A-Za-z0-9_./:=@%+,-]*)
      case $s in
        *[\"\$\`\\!]*) arpo_quote "$s" ;;
        *) printf '"%s"' "$s" ;;
      esac
      ;;
    *) printf '%s' "$s" ;;
  esac
}

# A remote path as a shell word: a leading ~/ stays unquoted so the worker's shell expands it.
# shellcheck disable=SC2088  # the ~ is printed on purpose, for the remote shell
arpo_rpath() {
  case $1 in
    '~') printf '~' ;;
    '~/'*) printf '~/'; arpo_rquote "${1#\~/}" ;;
    *) arpo_rquote "$1" ;;
  esac
}

# A remote path as the value of a key=value override: ~ becomes "$HOME" (a tilde after
# "key=" is not expanded by the shell).
# shellcheck disable=SC2016,SC2088  # printed on purpose, for the remote shell
arpo_rpath_value() {
  case $1 in
    '~') printf '"$HOME"' ;;
    '~/'*) printf '"$HOME"/'; arpo_rquote "${1#\~/}" ;;
    *) arpo_rquote "$1" ;;
  esac
}

arpo_cmdline() {
  local out='' w
  for w in "$@"; do
    out+="${out:+ }$(arpo_quote_arg "$w")"
  done
  printf '%s' "$out"
}

# --------------------------------------------------------------------------- running

DRY_RUN=0

# run CMD ARGS...: prints "+ CMD ARGS" (quoted); with --dry-run only prints it (stdout),
# otherwise echoes it on stderr and runs it.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(arpo_cmdline "$@")"
    return 0
  fi
  printf '+ %s\n' "$(arpo_cmdline "$@")" >&2
  "$@"
}

# run_export NAME VALUE: exports NAME=VALUE in this shell and prints "+ export NAME=VALUE".
run_export() {
  export "$1=$2"
  if ((DRY_RUN)); then
    printf '+ export %s=%s\n' "$1" "$(arpo_quote "$2")"
  else
    printf '+ export %s=%s\n' "$1" "$(arpo_quote "$2")" >&2
  fi
}

require_arg() {  # require_arg --option "$VALUE"
  [ -n "$2" ] || die "missing required argument $1 (see $ARPO_SCRIPT --help)"
}

require_gcloud() {
  ((DRY_RUN)) && return 0
  command -v gcloud >/dev/null 2>&1 && return 0
  die "the gcloud CLI (Google Cloud CLI) is not on PATH; install it from" \
    "https://cloud.google.com/sdk/docs/install and run 'gcloud auth login'," \
    "or add --dry-run to only print the commands"
}

# --------------------------------------------------------------------------- options

# shellcheck disable=SC2088  # remote paths: the ~ is expanded on the TPU workers
REMOTE_DIR='~/arpo_jax'
# shellcheck disable=SC2088
DATA_DIR='~/arpo_data'
# shellcheck disable=SC2088
LOG_DIR='~/arpo_logs'
NAME='' ZONE='' PROJECT='' ACCELERATOR_TYPE='' RUNTIME_VERSION=''
SPOT=0 RESERVED=0 QUEUED=0 INTERNAL_IP=0 NO_WAIT=0 ASYNC=0
CREATE_FLAGS=()
REPO_URL='' REF='HEAD' SRC='' PYTHON='' EXTRA=''
DATA='' DATA_DIR_SET=0 USE_GSUTIL=0
CONFIG='' CHECKPOINT_DIR='' MESH='' FOREGROUND=0 STOP=0
ENVS=() OVERRIDES=()
WORKER='all' COLLECT='' LINES=100
# launch_gpu.sh
COORDINATOR='' NUM_PROCESSES='' PROCESS_ID='' XLA_EXTRA='' MEM_FRACTION='' SKIP_INSTALL=0 VENV='.venv'

# The options every TPU script accepts (the ones it does not need are ignored, so one set of
# arguments can be reused for every step).
ARPO_RESOURCE_OPTS="dry-run name zone project accelerator-type runtime-version spot reserved queued internal-ip"

arpo_add_override() {
  case $1 in
    *=*) ;;
    *) die "'$1' is not a key=value config override" ;;
  esac
  case ${1%%=*} in
    ''|-*|*[[:space:]]*) die "'$1' is not a key=value config override" ;;
  esac
  OVERRIDES+=("$1")
}

arpo_add_env() {
  case $1 in
    [A-Za-z_]*=*)
      case ${1%%=*} in
        *[!A-Za-z0-9_]*) die "--env '$1': '${1%%=*}' is not a valid variable name" ;;
      esac
      ENVS+=("$1")
      ;;
    *) die "--env expects KEY=VALUE, got '$1'" ;;
  esac
}

# arpo_parse "ALLOWED OPTIONS" "$@": sets the globals above. ALLOWED names the long options
# (without --) the calling script accepts, plus "overrides" (key=value arguments) and
# "config-positional" (a bare CONFIG argument). Both --opt value and --opt=value work.
arpo_parse() {
  local allowed=" $1 " opt val
  shift
  while (($#)); do
    opt=$1
    case $opt in
      --*=*)
        val=${opt#*=}
        opt=${opt%%=*}
        shift
        set -- "$opt" "$val" "$@"
        ;;
    esac
    case $opt in
      -h|--help) usage; exit 0 ;;
      --)
        shift
        case $allowed in
          *" overrides "*) ;;
          *) (($# == 0)) || die "unexpected argument '$1' (see $ARPO_SCRIPT --help)" ;;
        esac
        while (($#)); do arpo_add_override "$1"; shift; done
        break
        ;;
      --*)
        case $allowed in
          *" ${opt#--} "*) ;;
          *) die "unknown option $opt (see $ARPO_SCRIPT --help)" ;;
        esac
        ;;
      -*) die "unknown option $opt (see $ARPO_SCRIPT --help)" ;;
      *=*)
        case $allowed in
          *" overrides "*) arpo_add_override "$1"; shift; continue ;;
          *) die "unexpected argument '$1' (see $ARPO_SCRIPT --help)" ;;
        esac
        ;;
      *)
        case $allowed in
          *" config-positional "*)
            [ -z "$CONFIG" ] || die "unexpected argument '$1' (the config is already '$CONFIG'; overrides are key=value)"
            CONFIG=$1; shift; continue
            ;;
          *) die "unexpected argument '$1' (see $ARPO_SCRIPT --help)" ;;
        esac
        ;;
    esac
    # an option with a value
    case $opt in
      --dry-run|--spot|--reserved|--queued|--internal-ip|--no-wait|--async|--use-gsutil|\
      --foreground|--stop|--skip-install) ;;
      --create-flag|--xla-flags)
        (($# >= 2)) || die "option $opt needs a value" ;;
      *)
        (($# >= 2)) || die "option $opt needs a value"
        case $2 in --*) die "option $opt needs a value (got '$2')" ;; esac
        ;;
    esac
    case $opt in
      --dry-run) DRY_RUN=1; shift ;;
      --spot) SPOT=1; shift ;;
      --reserved) RESERVED=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --internal-ip) INTERNAL_IP=1; shift ;;
      --no-wait) NO_WAIT=1; shift ;;
      --async) ASYNC=1; shift ;;
      --use-gsutil) USE_GSUTIL=1; shift ;;
      --foreground) FOREGROUND=1; shift ;;
      --stop) STOP=1; shift ;;
      --skip-install) SKIP_INSTALL=1; shift ;;
      --name) NAME=$2; shift 2 ;;
      --zone) ZONE=$2; shift 2 ;;
      --project) PROJECT=$2; shift 2 ;;
      --accelerator-type) ACCELERATOR_TYPE=$2; shift 2 ;;
      --runtime-version) RUNTIME_VERSION=$2; shift 2 ;;
      --create-flag) CREATE_FLAGS+=("$2"); shift 2 ;;
      --remote-dir) REMOTE_DIR=$2; shift 2 ;;
      --repo-url) REPO_URL=$2; shift 2 ;;
      --ref) REF=$2; shift 2 ;;
      --src) SRC=$2; shift 2 ;;
      --python) PYTHON=$2; shift 2 ;;
      --extra) EXTRA=$2; shift 2 ;;
      --data) DATA=$2; shift 2 ;;
      --data-dir) DATA_DIR=$2; DATA_DIR_SET=1; shift 2 ;;
      --config) CONFIG=$2; shift 2 ;;
      --checkpoint-dir) CHECKPOINT_DIR=$2; shift 2 ;;
      --mesh) MESH=$2; shift 2 ;;
      --log-dir) LOG_DIR=$2; shift 2 ;;
      --env) arpo_add_env "$2"; shift 2 ;;
      --worker) WORKER=$2; shift 2 ;;
      --collect) COLLECT=$2; shift 2 ;;
      --lines) LINES=$2; shift 2 ;;
      --coordinator) COORDINATOR=$2; shift 2 ;;
      --num-processes) NUM_PROCESSES=$2; shift 2 ;;
      --process-id) PROCESS_ID=$2; shift 2 ;;
      --xla-flags) XLA_EXTRA="${XLA_EXTRA:+$XLA_EXTRA }$2"; shift 2 ;;
      --mem-fraction) MEM_FRACTION=$2; shift 2 ;;
      --venv) VENV=$2; shift 2 ;;
      *) die "internal error: option $opt is allowed but not handled" ;;
    esac
  done
}

# --------------------------------------------------------------------------- validation

TPU_GENERATION=''

# Checks --accelerator-type and sets TPU_GENERATION and, unless given, RUNTIME_VERSION.
arpo_check_accelerator() {
  local acc=$ACCELERATOR_TYPE default_rt
  case $acc in
    v4-*) TPU_GENERATION=v4; default_rt=tpu-ubuntu2204-base ;;
    v5litepod-*) TPU_GENERATION=v5e; default_rt=v2-alpha-tpuv5-lite ;;
    v5p-*) TPU_GENERATION=v5p; default_rt=v2-alpha-tpuv5 ;;
    v6e-*) TPU_GENERATION=v6e; default_rt=v2-alpha-tpuv6e ;;
    v5e-*) die "unknown accelerator type '$acc': v5e slices are named v5litepod-N (e.g. v5litepod-64)" ;;
    *) die "unknown accelerator type '$acc': the supported generations are v4 (v4-N)," \
      "v5e (v5litepod-N), v5p (v5p-N) and v6e (v6e-N), e.g. v5litepod-64 or v5p-8" ;;
  esac
  case ${acc#*-} in
    ''|*[!0-9]*) die "unknown accelerator type '$acc': expected ${acc%%-*}-N with N a number of cores/chips" ;;
  esac
  [ -n "$RUNTIME_VERSION" ] || RUNTIME_VERSION=$default_rt
}

# Checks the options shared by the TPU scripts.
arpo_check_resource() {
  require_arg --name "$NAME"
  require_arg --zone "$ZONE"
  if ((SPOT && RESERVED)); then die "--spot and --reserved exclude each other"; fi
  [ -z "$ACCELERATOR_TYPE" ] || arpo_check_accelerator
  [ -n "$WORKER" ] || die "--worker needs a value (all, or worker numbers such as 0 or 0,2)"
}

arpo_check_mesh() {
  [ -z "$MESH" ] && return 0
  local IFS=,
  # shellcheck disable=SC2086  # split D,F,T on the commas
  set -- $MESH
  (($# == 3)) || die "--mesh expects three sizes D,F,T (data, fsdp, tensor; one may be -1), got '$MESH'"
  local n
  for n in "$@"; do
    case $n in
      -1) ;;
      ''|0*|*[!0-9]*) die "--mesh: '$n' is not a positive size or -1" ;;
    esac
  done
}

arpo_check_install() {
  if [ -n "$REPO_URL" ] && [ -n "$SRC" ]; then
    die "--repo-url and --src exclude each other (git clone on the workers, or copy a local checkout)"
  fi
  if [ -z "$REPO_URL" ] && [ -z "$SRC" ]; then
    die "missing required argument --repo-url URL or --src DIR (how the code gets to the workers)"
  fi
  if [ -n "$SRC" ] && ! [ -f "$SRC/pyproject.toml" ]; then
    die "--src '$SRC' is not an arpo_jax checkout (no pyproject.toml there)"
  fi
  case $EXTRA in *[!A-Za-z0-9_,-]*) die "--extra '$EXTRA' is not an extra name such as tpu" ;; esac
}

arpo_check_launch() {
  ((STOP)) && return 0
  require_arg --config "$CONFIG"
  arpo_check_mesh
}

# The mesh as a config override (the trainer reads the (data, fsdp, tensor) shape there).
arpo_mesh_override() {
  printf 'mesh.shape=[%s]' "$MESH"
}

# --------------------------------------------------------------------------- gcloud

# gcloud_tpu ARGS...: runs `gcloud compute tpus ARGS... [--project=P]`.
gcloud_tpu() {
  run gcloud compute tpus "$@" ${PROJECT:+"--project=$PROJECT"}
}

# ssh_workers CMD [GCLOUD FLAGS...]: runs CMD on the selected workers (--worker, default
# all) at once.
ssh_workers() {
  local ip='' cmd=$1
  shift
  ((INTERNAL_IP)) && ip=--internal-ip
  gcloud_tpu tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" ${ip:+"$ip"} --command="$cmd" "$@"
}

# scp_to_workers LOCAL REMOTE: copies a local file to REMOTE (relative to home) on every worker.
scp_to_workers() {
  local ip=''
  ((INTERNAL_IP)) && ip=--internal-ip
  gcloud_tpu tpu-vm scp "$1" "$NAME:$2" --zone="$ZONE" --worker=all ${ip:+"$ip"}
}

do_create() {
  local tier='' ip=''
  ((SPOT)) && tier=--spot
  ((RESERVED)) && tier=--reserved
  ((INTERNAL_IP)) && ip=--internal-ips
  if ((QUEUED)); then
    gcloud_tpu queued-resources create "$NAME" --zone="$ZONE" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
      ${tier:+"$tier"} ${ip:+"$ip"} ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
    ((NO_WAIT)) || wait_queued_active
  else
    gcloud_tpu tpu-vm create "$NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
      ${tier:+"$tier"} ${ip:+"$ip"} ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
  fi
}

ARPO_POLL_SECONDS=${ARPO_POLL_SECONDS:-30}

# Polls the queued resource until its state is ACTIVE (the TPU VM exists and can be used).
wait_queued_active() {
  local cmd state
  cmd=(gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE"
    --format='value(state.state)')
  [ -z "$PROJECT" ] || cmd+=("--project=$PROJECT")
  if ((DRY_RUN)); then
    run "${cmd[@]}"
    note "(run until the state is ACTIVE, every ${ARPO_POLL_SECONDS}s)"
    return 0
  fi
  printf '+ %s\n' "$(arpo_cmdline "${cmd[@]}")" >&2
  local failures=0
  while :; do
    if ! state=$("${cmd[@]}"); then
      failures=$((failures + 1))
      ((failures < 5)) || die "could not read the state of queued resource $NAME (5 tries)"
      state=''
    else
      failures=0
    fi
    case $state in
      ACTIVE) note "queued resource $NAME is ACTIVE"; return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|DELETING)
        die "queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" ;;
    esac
    note "queued resource $NAME is ${state:-(no state yet)}; waiting ${ARPO_POLL_SECONDS}s"
    sleep "$ARPO_POLL_SECONDS"
  done
}

do_delete() {
  local async=''
  ((ASYNC)) && async=--async
  if ((QUEUED)); then
    # --force also deletes the TPU VM the queued resource created
    gcloud_tpu queued-resources delete "$NAME" --zone="$ZONE" --force --quiet ${async:+"$async"}
  else
    gcloud_tpu tpu-vm delete "$NAME" --zone="$ZONE" --quiet ${async:+"$async"}
  fi
}

# --------------------------------------------------------------------------- install

ARPO_TMP=${TMPDIR:-/tmp}
ARPO_TMP=${ARPO_TMP%/}

# The remote command that finds (or installs) Python >= 3.11 with venv support into $PY.
# TPU VM images are Ubuntu 22.04, whose python3 is 3.10; the project needs >= 3.11.
arpo_remote_python() {
  local apt='sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600'
  if [ -n "$PYTHON" ]; then
    printf '%s' "PY=$(arpo_rquote "$PYTHON") && { \"\$PY\" -c \"import ensurepip\" >/dev/null 2>&1 || { $apt update -qq && $apt install -y -qq \"\$PY\" \"\$PY-venv\"; }; }"
  else
    printf '%s' "{ PY=; for p in python3.13 python3.12 python3.11 python3; do if \$p -c \"import sys, ensurepip; sys.exit(sys.version_info < (3, 11))\" >/dev/null 2>&1; then PY=\$p; break; fi; done; if [ -z \"\$PY\" ]; then $apt update -qq && $apt install -y -qq python3.11 python3.11-venv && PY=python3.11; fi; }"
  fi
}

do_install() {
  local rdir steps fetch
  rdir=$(arpo_rpath "$REMOTE_DIR")
  local extra=${EXTRA:-tpu}
  if [ -n "$SRC" ]; then
    local tarball="$ARPO_TMP/arpo_jax-src-$NAME.tar.gz"
    run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.hypothesis -C "$SRC" .
    scp_to_workers "$tarball" arpo_jax-src.tar.gz
    run rm -f "$tarball"
    fetch="mkdir -p $rdir && tar -xzf ~/arpo_jax-src.tar.gz -C $rdir && rm -f ~/arpo_jax-src.tar.gz"
  else
    fetch="{ [ -d $rdir/.git ] || git clone $(arpo_rquote "$REPO_URL") $rdir; }"
    fetch+=" && git -C $rdir fetch --quiet origin $(arpo_rquote "$REF")"
    fetch+=" && git -C $rdir checkout --quiet --force FETCH_HEAD"
  fi
  steps="$fetch && $(arpo_remote_python) && cd $rdir && \"\$PY\" -m venv .venv"
  steps+=" && .venv/bin/pip install -q --upgrade pip"
  steps+=" && .venv/bin/pip install -e $(arpo_rquote ".[$extra]")"
  ssh_workers "$steps"
}

# --------------------------------------------------------------------------- data

do_data() {
  local ddir
  ddir=$(arpo_rpath "$DATA_DIR")
  case $DATA in
    gs://*)
      if ((USE_GSUTIL)); then
        ssh_workers "mkdir -p $ddir && gsutil -m rsync -r $(arpo_rquote "$DATA") $ddir"
      else
        ssh_workers "mkdir -p $ddir && gcloud storage rsync --recursive $(arpo_rquote "$DATA") $ddir"
      fi
      ;;
    *)
      ((DRY_RUN)) || [ -d "$DATA" ] || die "--data '$DATA' is neither a gs:// path nor a local directory"
      local tarball="$ARPO_TMP/arpo_jax-data-$NAME.tar.gz"
      run tar -czf "$tarball" -C "$DATA" .
      scp_to_workers "$tarball" arpo_jax-data.tar.gz
      run rm -f "$tarball"
      ssh_workers "mkdir -p $ddir && tar -xzf ~/arpo_jax-data.tar.gz -C $ddir && rm -f ~/arpo_jax-data.tar.gz"
      ;;
  esac
}

# --------------------------------------------------------------------------- launch

# The trainer's command line on the workers: arpo-jax train CONFIG overrides...
arpo_train_words() {
  local words o
  words=".venv/bin/arpo-jax train $(arpo_rquote "$CONFIG")"
  if ((DATA_DIR_SET)) || [ -n "$DATA" ]; then
    words+=" data.root=$(arpo_rpath_value "$DATA_DIR")"
  fi
  [ -z "$CHECKPOINT_DIR" ] || words+=" $(arpo_rquote "train.checkpoint_dir=$CHECKPOINT_DIR")"
  [ -z "$MESH" ] || words+=" $(arpo_rquote "$(arpo_mesh_override)")"
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    words+=" $(arpo_rquote "$o")"
  done
  printf '%s' "$words"
}

arpo_env_exports() {
  local e out='export PYTHONUNBUFFERED=1'
  for e in ${ENVS[@]+"${ENVS[@]}"}; do
    out+=" ${e%%=*}=$(arpo_rquote "${e#*=}")"
  done
  printf '%s' "$out"
}

do_launch() {
  local rdir ldir cmd
  rdir=$(arpo_rpath "$REMOTE_DIR")
  ldir=$(arpo_rpath "$LOG_DIR")
  if ((STOP)); then
    # the run is a session leader (setsid): kill its whole process group
    ssh_workers "if [ -f $ldir/train.pid ]; then kill -TERM -- -\$(cat $ldir/train.pid) 2>/dev/null || true; rm -f $ldir/train.pid; fi"
    return
  fi
  cmd="cd $rdir && mkdir -p $ldir && $(arpo_env_exports) && "
  if ((FOREGROUND)); then
    cmd+="$(arpo_train_words) 2>&1 | tee $ldir/train.log"
  else
    cmd+="{ setsid nohup $(arpo_train_words) > $ldir/train.log 2>&1 < /dev/null & }"
    cmd+=" && echo \$! > $ldir/train.pid"
    cmd+=" && echo \"started on \$(hostname): pid \$!, log $ldir/train.log\""
  fi
  ssh_workers "$cmd"
}

# --------------------------------------------------------------------------- logs

do_logs() {
  local ldir
  ldir=$(arpo_rpath "$LOG_DIR")
  if [ -z "$COLLECT" ]; then
    # stream: every worker's log, each line prefixed with the worker's host name
    ssh_workers "tail -n $LINES -F $ldir/train.log | sed -u \"s/^/[\$(hostname)] /\""
    return
  fi
  run mkdir -p "$COLLECT"
  if [ "$WORKER" = all ]; then
    # `tpu-vm scp` refuses --worker=all when copying to this machine; `tpu-vm ssh --worker=all
    # --output-directory` writes each worker's output to DIR/<worker>.log instead.
    ssh_workers "cat $ldir/train.log" --output-directory="$COLLECT"
  else
    local ip=''
    ((INTERNAL_IP)) && ip=--internal-ip
    gcloud_tpu tpu-vm scp --recurse "$NAME:${LOG_DIR#\~/}" "$COLLECT/worker-$WORKER" \
      --zone="$ZONE" --worker="$WORKER" ${ip:+"$ip"}
  fi
}

# --------------------------------------------------------------------------- help

# cat for the help texts, with builtins only (--help and --dry-run need no programs at all).
arpo_cat() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done
}

arpo_usage_resource() {
  arpo_cat <<'EOF_USAGE'

Resource options (accepted by every TPU script; a script ignores the ones it does not need):
  --name NAME               TPU VM / queued-resource name (required)
  --zone ZONE               zone, e.g. us-east5-a (required)
  --project PROJECT         Google Cloud project (default: gcloud's configured project)
  --accelerator-type TYPE   v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v5litepod-64, v5p-8
  --runtime-version V       default from the generation: v4 tpu-ubuntu2204-base,
                            v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot | --reserved       capacity: Spot VMs, or a reservation (default: on-demand)
  --queued                  use a queued resource (queued-resources create/delete)
  --internal-ip             create with --internal-ips; ssh/scp with --internal-ip
  --dry-run                 print the exact commands (on stdout) instead of running them
  -h, --help                this help
Options take "--opt value" or "--opt=value".
EOF_USAGE
}

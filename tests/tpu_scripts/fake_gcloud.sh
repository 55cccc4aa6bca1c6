#!/usr/bin/env bash
# A stand-in for gcloud in the tpu_scripts tests: every call is appended to $FAKE_GCLOUD_LOG
# (arguments separated by the unit separator \x1f, one call a line), and the TPU workers are
# simulated by directories $FAKE_TPU_ROOT/worker-<i> (i < ${FAKE_TPU_WORKERS:-2}), used as
# $HOME: `tpu-vm ssh --command` runs the command there with bash, `tpu-vm scp` copies
# to/from there, `queued-resources describe` answers ACTIVE (or the states in $FAKE_QR_STATES).
set -euo pipefail

{
  sep=''
  for a in "$@"; do printf '%s%s' "$sep" "$a"; sep=$'\x1f'; done
  printf '\n'
} >>"${FAKE_GCLOUD_LOG:?}"

[ "${1:-} ${2:-}" = "compute tpus" ] || exit 0
shift 2
kind="$1 $2"
shift 2

worker=0 command='' outdir='' recurse=0 positional=()
while (($#)); do
  case $1 in
    --worker=*) worker=${1#*=} ;;
    --command=*) command=${1#*=} ;;
    --output-directory=*) outdir=${1#*=} ;;
    --recurse) recurse=1 ;;
    --*) ;;
    *) positional+=("$1") ;;
  esac
  shift
done

workers=()
if [ "$worker" = all ]; then
  for ((i = 0; i < ${FAKE_TPU_WORKERS:-2}; i++)); do workers+=("$i"); done
else
  IFS=, read -r -a workers <<<"$worker"
fi

case $kind in
  "queued-resources describe")
    # $FAKE_QR_STATES: a file with the states to answer, one a line, the last one repeated
    if [ -n "${FAKE_QR_STATES:-}" ]; then
      head -n 1 "$FAKE_QR_STATES"
      if [ "$(wc -l <"$FAKE_QR_STATES")" -gt 1 ]; then
        tail -n +2 "$FAKE_QR_STATES" >"$FAKE_QR_STATES.next" && mv "$FAKE_QR_STATES.next" "$FAKE_QR_STATES"
      fi
    else
      echo ACTIVE
    fi
    ;;
  "tpu-vm ssh")
    for i in "${workers[@]}"; do
      home="${FAKE_TPU_ROOT:?}/worker-$i"
      mkdir -p "$home"
      if [ -n "$outdir" ]; then
        (cd "$home" && HOME=$home bash -c "$command") >"$outdir/$i.log"
      else
        (cd "$home" && HOME=$home bash -c "$command")
      fi
    done
    ;;
  "tpu-vm scp")
    src=${positional[0]} dst=${positional[1]}
    for i in "${workers[@]}"; do
      home="${FAKE_TPU_ROOT:?}/worker-$i"
      mkdir -p "$home"
      if [[ $dst == *:* ]]; then
        cp "$src" "$home/${dst#*:}"
      elif ((recurse)); then
        cp -r "$home/${src#*:}" "$dst"
      else
        cp "$home/${src#*:}" "$dst"
      fi
    done
    ;;
esac

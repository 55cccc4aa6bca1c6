#!/usr/bin/env bash
# Creates .venv and installs arpo_jax with its test extras at the locked versions, plus the system packages the
# project needs (bubblewrap for the Python tool's sandbox). Idempotent; re-run after
# pyproject.toml changes (the Makefile does this through a stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(bubblewrap shellcheck python3-numpy)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: cannot install ${missing[*]} (not root, no sudo); the python tool will use its rlimit fallback" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The exact versions the suite and the documented results were produced with (constraints.txt);
# pyproject.toml keeps compatible ranges for library users.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"

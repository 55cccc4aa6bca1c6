#!/usr/bin/env bash
# Refreshes constraints.txt: resolves pyproject.toml's ranges afresh in a scratch venv and
# records the exact versions. Run `make lock`, then `make test` (and re-measure whatever
# docs/results.md and docs/benchmarks.md report) before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip
"$scratch/venv/bin/python" -m pip install -q -e ".[test]"
{
  echo "# Exact versions the test suite and the documented results were produced with."
  echo "# Used as pip constraints by scripts/setup.sh; refresh with \`make lock\` (scripts/lock.sh)."
  echo "# Python $("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d)."
  # torch's local label (+cpu) is dropped: ==2.13.0 matches the CPU wheel and keeps the pin portable.
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"

# The README's two commands: `make demo` (main job) and `make test` (whole suite).
# Both set up everything on a fresh machine first (apt packages, .venv, the project).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup.stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test clean lock

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/arpo-jax tools check
	$(VENV)/bin/arpo-jax demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check arpo_jax tests bench
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lock:  # re-resolve pyproject.toml's ranges and record them in constraints.txt
	bash scripts/lock.sh

clean:
	rm -rf $(VENV) runs .pytest_cache

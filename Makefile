# The two set-up commands a new user types: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned, so pip takes the CPU wheel instead of resolving a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m swarm.demo

# Lint and type checks first: a finding fails `make test` (and so CI) before any test runs.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# bench/gpu.py needs a CUDA device: run it there (`python bench/gpu.py`), or `--device cpu --quick` here.
bench: $(STAMP)
	@for script in bench/*.py; do [ "$$script" = bench/gpu.py ] && continue; echo "== $$script"; \
		$(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

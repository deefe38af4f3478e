# Two entry points do all set-up: `make test` (and, later, `make demo`).
# The virtualenv is created on first use and refreshed whenever a requirements file or setup.py changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test venv bench clean

venv: $(STAMP)

$(STAMP): setup.py requirements/torch-cpu.txt requirements/cpu.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and alone: an unpinned resolution would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -r requirements/cpu.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) build dist *.egg-info

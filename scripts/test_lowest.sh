#!/usr/bin/env bash
# The default test run again, on the lowest versions pyproject.toml allows for steer's own
# requirements (what those need at their newest), so that its lower bounds stay true. uv resolves
# them (pip cannot resolve to lowest versions) into .venv-lowest/requirements.txt and installs
# them into .venv-lowest; .venv (bash scripts/setup.sh) holds uv. Extra arguments go to pytest.
# About 9 minutes on 2 cores, 1 of them the install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet "uv>=0.9"
uv=.venv/bin/uv
venv=.venv-lowest
"$uv" venv --quiet --allow-existing --python "${PYTHON:-python3}" "$venv"
"$uv" pip compile --quiet pyproject.toml --extra dev --resolution lowest-direct \
    --python "$venv/bin/python" -o "$venv/requirements.txt"
"$uv" pip sync --quiet --python "$venv/bin/python" "$venv/requirements.txt"
# as in scripts/setup.sh: tinysoundfont's metadata requires pyaudio, which steer never uses
"$uv" pip install --quiet --python "$venv/bin/python" --no-deps -e . "tinysoundfont==0.3.*"
"$venv/bin/python" -m pytest -q -n auto --dist worksteal "$@"

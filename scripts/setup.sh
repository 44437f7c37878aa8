#!/usr/bin/env bash
# Create .venv (if missing) and install steer with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# tinysoundfont's metadata requires pyaudio (audio playback), which does not build here and which
# steer never uses: install the synthesiser alone.
.venv/bin/python -m pip install --quiet --no-deps "tinysoundfont==0.3.*"

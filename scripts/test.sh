#!/usr/bin/env bash
# Install (if needed) and run the test suite; extra arguments go to pytest (`--slow` adds the
# tests marked slow). The tests spread over the CPU cores (pytest-xdist: `-n 0` runs them in one
# process, PYTEST_XDIST_AUTO_NUM_WORKERS caps the workers). Without arguments, or with `--slow`
# alone, the step benchmarks also run once each on the tiny model (timing off), so every
# execution path stays exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -n auto --dist worksteal "$@"
if [ $# -eq 0 ] || [ "$*" = "--slow" ]; then
    .venv/bin/python -m pytest -q benchmarks --benchmark-disable --steps 1 --rounds 1
fi

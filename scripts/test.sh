#!/usr/bin/env bash
# Install (if needed) and run the fast test suite; extra arguments go to pytest. Without
# arguments, the step benchmarks also run once each on the tiny model (timing off), so every
# execution path stays exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
    .venv/bin/python -m pytest -q benchmarks --benchmark-disable --steps 1 --rounds 1
fi

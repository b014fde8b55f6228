#!/usr/bin/env bash
# The README's test command: set everything up, then lint (ruff, configured in
# pyproject.toml), the CUDA compile check, the whole test suite and one pass of
# the bench on real frames (timing off).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check .
if [ -x tools/check_cuda_compile.sh ]; then bash tools/check_cuda_compile.sh; fi
.venv/bin/python -m pytest
XYZ=../shared/data/ellipsoids.xyz
if [ -f "$XYZ" ]; then
    .venv/bin/python -m pytest bench --xyz "$XYZ" --frames 20 --semiaxes 4,4,0.5 --benchmark-disable
else
    echo "tools/test.sh: $XYZ not found: the real-data bench pass did not run"
fi

#!/usr/bin/env bash
# Sets up .venv with everything the workbench, its tests and its bench need.
# Idempotent: a second run only checks. Torch comes from the CPU wheel first so
# that the package's torch range installs nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[all]"
# the generic Numba kernels (serve first calls for new hyper-parameter sets): compiled once per machine
.venv/bin/python -m einsum_workbench.kernels.numba.generic

#!/usr/bin/env bash
# The main job: the pinned ranking of every available variant on the default
# workload (benzenes, lmax 6, GTO sigma 1.5, cutoff 7), one thread, via
# `pytest bench/test_ranking.py` (the ranking suite of `pytest bench`), after
# tools/setup.sh (idempotent: a second run only checks).
# Extra arguments go to pytest, e.g.:
#   tools/rank.sh --benchmark-compare                 # compare with the previous saved run
#   tools/rank.sh --benchmark-compare --benchmark-compare-fail=mean:10%   # fail on a >10% regression
#   (on a noisy machine min:10% is the steadier gate)
#   tools/rank.sh --threads 2 --variant numpy_einsum  # other pinning, fewer variants
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest bench/test_ranking.py bench/test_density_ranking.py -p no:warnings "$@"

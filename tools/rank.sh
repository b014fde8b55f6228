#!/usr/bin/env bash
# The main job: the pinned ranking of every available variant on the default
# workload (benzenes, lmax 6, GTO sigma 1.5, cutoff 7), one thread, via
# `pytest bench/test_ranking.py` (the ranking suite of `pytest bench`). Sets up
# .venv first when it is missing (tools/setup.sh).
# Extra arguments go to pytest, e.g.:
#   tools/rank.sh --benchmark-compare                 # compare with the previous saved run
#   tools/rank.sh --benchmark-compare --benchmark-compare-fail=mean:10%   # fail on a >10% regression
#   tools/rank.sh --threads 2 --variant numpy_einsum  # other pinning, fewer variants
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c "import einsum_workbench.bench, pytest_benchmark" 2>/dev/null; }; then
    tools/setup.sh
fi
exec .venv/bin/python -m pytest bench/test_ranking.py -p no:warnings "$@"

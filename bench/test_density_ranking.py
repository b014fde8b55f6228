"""The centre-density ranking: every density variant on this session's frames, pinned.

Same batch as the pair ranking (``test_ranking.py``), each pair's segment its
(centre, neighbour species) row as the pipeline assigns it, pairs sorted by
segment as the pipeline hands them over. One pytest-benchmark group of its
own; time per pair is per neighbour pair, the speedup is over the reference
density (reference expansion plus sums in pair order) measured in this run.
The goal (numba_fused at most 0.03 microseconds per pair on the default
workload, one thread) is printed as met or not under the ranking.
"""


def test_density_ranking(measure_variant, density_variant, bench_input, bench_state, bench_dtype, pytestconfig):
    group = bench_input.density_label
    reference = bench_state["reference"]
    record = measure_variant(
        density_variant, bench_input, problem="density", dtype=bench_dtype, group=group,
        budget_s=pytestconfig.getoption("budget"), max_rounds=pytestconfig.getoption("max_rounds"),
        reference_best_s=reference.get(group),
    )
    if density_variant == "reference" and record["latency"]:
        reference[group] = record["latency"]["min_s"]

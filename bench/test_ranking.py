"""The ranking: every registered variant on this session's workload, pinned.

One pytest-benchmark result per variant, all in one group (the workload), so
the group is a ranking. The reference runs first; every other variant's
speedup is taken against the reference's fastest call measured in this run.
Unavailable variants are skipped with their reason and listed under the
ranking. Each result's ``extra_info`` carries pairs, time per pair, pairs per
second, speedup, latency (median, p95, p99), first-call cost, peak memory,
threads and pinning, versions and CPU model.
"""


def test_ranking(measure_variant, ranked_variant, bench_input, bench_state, bench_dtype, pytestconfig):
    reference = bench_state["reference"]
    record = measure_variant(
        ranked_variant, bench_input, dtype=bench_dtype,
        budget_s=pytestconfig.getoption("budget"), max_rounds=pytestconfig.getoption("max_rounds"),
        reference_best_s=reference.get(bench_input.label),
    )
    if ranked_variant == "reference" and record["latency"]:
        reference[bench_input.label] = record["latency"]["min_s"]

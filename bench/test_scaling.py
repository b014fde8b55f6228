"""Scaling suites, marked ``scaling`` (not run by default):
``pytest bench -m scaling`` (add ``-k pairs``, ``-k lmax`` or ``-k threads``).

- pairs: 1,000 to 1,000,000 pairs at lmax 6 (the reference only up to 10,000);
- lmax: 2 to 10 at 10,000 pairs (the reference only up to lmax 6);
- threads: 1 and 2 threads at 100,000 pairs, lmax 6 (not the reference: it is
  single-threaded Python).

Pairs come from the default workload, tiled to the exact count
(``BenchInput.tiled``); ``--scaling-max-pairs N`` caps every size at N (a quick
run). Each (size, threads) is its own pytest-benchmark group;
``einsum-workbench report`` plots log-log time against pairs
per variant and time per pair against lmax.
"""

import pytest

from einsum_workbench.bench import pinning
from einsum_workbench.kernels.registry import variant_names

pytestmark = pytest.mark.scaling

PAIR_COUNTS = (1_000, 10_000, 100_000, 1_000_000)
REFERENCE_MAX_PAIRS = 10_000
LMAXES = (2, 4, 6, 8, 10)
LMAX_PAIRS = 10_000
REFERENCE_MAX_LMAX = 6
THREADS = (1, 2)
THREAD_PAIRS = 100_000
BUDGET_S = 1.0
MAX_ROUNDS = 10


def _names(config):
    chosen = config.getoption("variant")
    return ["reference"] + [n for n in (chosen or variant_names()) if n != "reference"]


def pytest_generate_tests(metafunc):
    names = _names(metafunc.config)
    cap = metafunc.config.getoption("scaling_max_pairs")
    if "pairs_case" in metafunc.fixturenames:
        counts = [n for n in PAIR_COUNTS if n <= cap] or [cap]
        cases = [(n, v) for n in counts for v in names if v != "reference" or n <= REFERENCE_MAX_PAIRS]
        metafunc.parametrize("pairs_case", cases, ids=[f"{n}-{v}" for n, v in cases])
    if "lmax_case" in metafunc.fixturenames:
        cases = [(l, v) for l in LMAXES for v in names if v != "reference" or l <= REFERENCE_MAX_LMAX]
        metafunc.parametrize("lmax_case", cases, ids=[f"lmax{l}-{v}" for l, v in cases])
    if "threads_case" in metafunc.fixturenames:
        cases = [(t, v) for t in THREADS for v in names if v != "reference"]
        metafunc.parametrize("threads_case", cases, ids=[f"{t}thr-{v}" for t, v in cases])


@pytest.fixture(scope="module")
def base_input():
    """The default workload's pairs (lmax 6), tiled below to each size."""
    from einsum_workbench.bench import inputs

    return inputs.generated_input("benzenes", None, lmax=6)


def _with_lmax(inp, lmax):
    from dataclasses import replace

    from einsum_workbench.bench.inputs import DEFAULT_CUTOFF, DEFAULT_SIGMA
    from einsum_workbench.reference.hypers import ExpansionHypers

    hypers = ExpansionHypers(lmax=lmax, radial_basis="gto", cutoff=DEFAULT_CUTOFF, sigma=DEFAULT_SIGMA)
    return replace(inp, hypers=hypers, description={**inp.description, **hypers.as_dict()})


def _measure(measure_variant, bench_state, name, inp, group, threads, sweep):
    reference = bench_state["reference"]
    record = measure_variant(name, inp, threads=threads, budget_s=BUDGET_S, max_rounds=MAX_ROUNDS,
                             reference_best_s=reference.get(group), suite="scaling", group=group,
                             labels={"sweep": sweep})
    if name == "reference" and record["latency"]:
        reference[group] = record["latency"]["min_s"]


def test_pairs(measure_variant, bench_state, base_input, pairs_case):
    n_pairs, name = pairs_case
    threads = bench_state["threads"]
    inp = base_input.tiled(n_pairs)
    _measure(measure_variant, bench_state, name, inp, f"scaling: {n_pairs} pairs, lmax 6, {threads} thread(s)", threads,
             "pairs")


def test_lmax(measure_variant, bench_state, base_input, lmax_case, pytestconfig):
    lmax, name = lmax_case
    threads = bench_state["threads"]
    n_pairs = min(LMAX_PAIRS, pytestconfig.getoption("scaling_max_pairs"))
    inp = _with_lmax(base_input.tiled(n_pairs), lmax)
    _measure(measure_variant, bench_state, name, inp, f"scaling: {n_pairs} pairs, lmax {lmax}, {threads} thread(s)",
             threads, "lmax")


@pytest.fixture
def repinned(bench_state):
    """Re-pin to a test's thread count, and back to the session's afterwards."""
    def pin_to(threads):
        try:
            pinning.pin_and_verify(threads)
        except pinning.PinningError as err:
            pytest.skip(f"cannot pin to {threads} threads in this process: {err}")

    yield pin_to
    pinning.pin_and_verify(bench_state["threads"])


def test_threads(measure_variant, bench_state, base_input, threads_case, repinned, pytestconfig):
    threads, name = threads_case
    repinned(threads)
    n_pairs = min(THREAD_PAIRS, pytestconfig.getoption("scaling_max_pairs"))
    inp = base_input.tiled(n_pairs)
    _measure(measure_variant, bench_state, name, inp, f"scaling: {n_pairs} pairs, lmax 6, {threads} thread(s)",
             threads, "threads")

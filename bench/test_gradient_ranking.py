"""The gradient ranking (issue 14): values and derivatives of the pair coefficients, pinned.

On this session's workload (the same batch as the pair ranking), with the
session's pinned threads (``--threads``, one by default):

- ``numba_fused`` values alone (the pair problem), in a group of its own, the
  baseline of the first ratio;
- every gradient variant (``GRADIENT_VARIANTS``, or those chosen with
  ``--variant``) computing values and derivatives along positions and
  orientations, in one group: a ranking. Torch autograd (``torch_einsum``,
  about 40 us per pair) runs on the first ``SUBSET_PAIRS["torch_einsum"]``
  pairs of the batch only, its time per pair normalised by that count. The
  finite-difference reference is not measured: 13 reference expansions per
  pair, minutes per call on the default workload.

Each output is spot-checked before it is timed (values against the
reference, derivatives against its finite differences on the first pairs:
``runner.gradient_spot_check``). Under the ranking, the two ratios of issue
14, taken from this run, are printed with whether they are met
(``report.gradient_goal_lines``): ``numba_fused`` values + gradients at most
4x its values alone, and Torch autograd at least 100x ``numba_fused``
gradients, per pair. Beside them, the floor of the first ratio: the time to
write an output of the gradients' size (values, positions, orientations)
into mapped memory with NumPy's ``fill``, alone, per pair (``suite="floor"``
record; ``test_output_write_floor``). Nothing here asserts a time.
"""

from __future__ import annotations

#: the values-only baseline of the first ratio
VALUES_VARIANT = "numba_fused"
#: variants too slow for the whole batch: measured on its first pairs (time per pair normalised)
SUBSET_PAIRS = {"torch_einsum": 8192}
#: not measured (why in the module docstring)
NOT_MEASURED = ("reference",)


def pytest_generate_tests(metafunc):
    """``gradient_variant``: the session's gradient variants (``--variant`` respected), bar
    ``NOT_MEASURED``; ``values_variant``: ``VALUES_VARIANT`` when its gradients are among them.
    A selection without any is one skipped case, saying so."""
    import pytest

    from einsum_workbench.bench.plugin import ranking_names

    names = [n for n in ranking_names(metafunc.config, "gradients") if n not in NOT_MEASURED]
    def none(reason):
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="none")]

    if "gradient_variant" in metafunc.fixturenames:
        metafunc.parametrize("gradient_variant", names or none("no gradient variant selected (--variant)"))
    if "values_variant" in metafunc.fixturenames:
        metafunc.parametrize("values_variant", [VALUES_VARIANT] if VALUES_VARIANT in names else none(
            f"{VALUES_VARIANT} gradients not selected (--variant): their values-only baseline is not measured"))


def gradient_group(inp) -> str:
    """The pytest-benchmark group (one ranking) of the gradient variants on ``inp``."""
    return f"{inp.label}, values + gradients (positions, orientations)"


def values_group(inp) -> str:
    """The group of the values-only baseline on ``inp``."""
    return f"{inp.label}, values alone (baseline of the gradients)"


def test_values_baseline(measure_variant, values_variant, bench_input, bench_dtype):
    measure_variant(values_variant, bench_input, problem="pairs", dtype=bench_dtype, group=values_group(bench_input),
                    labels={"gradient_group": gradient_group(bench_input)})


def test_gradient_ranking(measure_variant, gradient_variant, bench_input, bench_dtype):
    inp = bench_input
    labels = {"workload_pairs": bench_input.n_pairs}
    if gradient_variant in SUBSET_PAIRS and bench_input.n_pairs > SUBSET_PAIRS[gradient_variant]:
        inp = bench_input.subset(SUBSET_PAIRS[gradient_variant])
        labels["subset"] = f"first {inp.n_pairs} of {bench_input.n_pairs} pairs"
    measure_variant(gradient_variant, inp, problem="gradients", dtype=bench_dtype, group=gradient_group(bench_input),
                    labels=labels)


def test_output_write_floor(benchmark, bench_state, values_variant, bench_input, bench_dtype):
    """Writing the gradient outputs alone: ``ndarray.fill`` over a buffer of their size
    (measured with the values-only baseline: when ``numba_fused`` gradients are selected).

    The buffer is allocated and written once before timing (mapped pages, as
    ``numba_gradients`` recycles its output memory), so this is the memory
    traffic the kernel cannot avoid: a floor for its time per pair.
    """
    import numpy as np

    hypers, n_pairs = bench_input.hypers, bench_input.n_pairs
    per_pair = sum(7 * (2 * l + 1) * n for l, n in enumerate(hypers.num_radial))  # values + 3 + 3 directions
    buffer = np.empty(n_pairs * per_pair, dtype=np.dtype(bench_dtype or np.float64))
    buffer.fill(0.0)
    benchmark.group = f"{bench_input.label}, output write floor"
    benchmark.pedantic(buffer.fill, args=(1.0,), rounds=30, iterations=1, warmup_rounds=2)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    best = stats.stats.min
    bench_state["results"].append({
        "suite": "floor", "variant": "numpy fill", "problem": "floor", "group": benchmark.group,
        "gradient_group": gradient_group(bench_input), "time_per_pair_s": best / n_pairs,
        "bytes_per_pair": per_pair * buffer.itemsize, "pairs": n_pairs,
    })

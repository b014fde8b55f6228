"""The backward ranking (issue 21): the centre density's vector-Jacobian product, pinned.

On this session's workload (the pair ranking's batch, sorted by segment as
the pipeline hands it over, ``runner.call_arguments``), with the session's
pinned threads (``--threads``, one by default):

- ``numba_fused`` centre density alone (problem ``"density"``), in a group of
  its own: the baseline of the first ratio;
- every backward variant (``BACKWARD_VARIANTS``, or those chosen with
  ``--variant``) on the cotangent ``runner.backward_cotangent`` (positions and
  orientations, raw rows), in one group: a ranking, every variant on the
  whole batch (Torch autograd, ``torch_einsum``, takes 0.15 to 0.35 s a call
  here; a variant named in ``SUBSET_PAIRS`` would run on the batch's first
  pairs, its time per pair normalised by that count). The finite-difference
  reference is not measured (13 reference expansions per pair, minutes per call).

Each output is spot-checked before it is timed (``runner.backward_spot_check``).
The last test prints in the terminal summary, from this run's records
(fastest calls, per pair), issue 21's ratios with their goals
(``goal_lines``): density plus backward at most ``COST_GOAL`` times the
density alone; Torch autograd at least ``TORCH_GOAL`` times ``numba_fused``'s
backward; and ``numba_fused``'s peak memory (tracemalloc's, outputs
included) against one float per pair and coefficient, with its first call's
cost (compiled here, or loaded from the disk cache). Nothing here asserts a time.
"""

from __future__ import annotations

#: the fused variant of both problems: the density baseline and the backward the goals are about
FUSED = "numba_fused"
#: variants too slow for the whole batch: measured on its first pairs (time per pair normalised); none
SUBSET_PAIRS: dict = {}
#: not measured (why in the module docstring)
NOT_MEASURED = ("reference",)
#: issue 21: (density + backward) / density at most this
COST_GOAL = 3.0
#: issue 21: Torch autograd's backward at least this many times slower per pair than the fused one
TORCH_GOAL = 300.0


def pytest_generate_tests(metafunc):
    """``backward_variant``: the session's backward variants (``--variant`` respected), bar
    ``NOT_MEASURED``; ``density_baseline``: ``FUSED`` when its backward is among them. A selection
    without any is one skipped case, saying so."""
    import pytest

    from einsum_workbench.bench.plugin import ranking_names

    names = [n for n in ranking_names(metafunc.config, "backward") if n not in NOT_MEASURED]

    def none(reason):
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="none")]

    if "backward_variant" in metafunc.fixturenames:
        metafunc.parametrize("backward_variant", names or none("no backward variant selected (--variant)"))
    if "density_baseline" in metafunc.fixturenames:
        metafunc.parametrize("density_baseline", [FUSED] if FUSED in names else none(
            f"{FUSED} backward not selected (--variant): its density baseline is not measured"))


def backward_group(inp) -> str:
    """The pytest-benchmark group (one ranking) of the backward variants on ``inp``."""
    return f"{inp.label}, centre density backward (positions, orientations)"


def density_group(inp) -> str:
    """The group of the density baseline on ``inp``."""
    return f"{inp.label}, centre density alone (baseline of the backward)"


def test_density_baseline(measure_variant, density_baseline, bench_input, bench_dtype):
    measure_variant(density_baseline, bench_input, problem="density", dtype=bench_dtype,
                    group=density_group(bench_input), labels={"backward_group": backward_group(bench_input)})


def test_backward_ranking(measure_variant, backward_variant, bench_input, bench_dtype):
    inp = bench_input
    labels = {"workload_pairs": bench_input.n_pairs}
    if backward_variant in SUBSET_PAIRS and bench_input.n_pairs > SUBSET_PAIRS[backward_variant]:
        inp = bench_input.subset(SUBSET_PAIRS[backward_variant])
        labels["subset"] = f"first {inp.n_pairs} of {bench_input.n_pairs} pairs"
    record = measure_variant(backward_variant, inp, problem="backward", dtype=bench_dtype,
                             group=backward_group(bench_input), labels=labels)
    if backward_variant == FUSED:
        record["first_call_source"] = _first_call_source(inp, bench_dtype)


def _first_call_source(inp, dtype) -> str:
    """Whether this process compiled ``numba_fused``'s backward kernel or loaded it from the disk cache."""
    import numpy as np

    from einsum_workbench.kernels.numba.backward import backward_module

    stats = backward_module(inp.hypers, np.dtype(dtype or np.float64)).backward_segments.stats
    return "loaded from the disk cache" if sum(stats.cache_hits.values()) else "compiled in this process"


def coefficients_per_pair(hypers) -> int:
    """Raw coefficients of one pair: sum over l of (2l+1) num_radial[l]."""
    return sum((2 * l + 1) * n for l, n in enumerate(hypers.num_radial))


def goal_lines(records, hypers) -> list[str]:
    """Issue 21's ratios per backward group, from records of one run (module docstring).

    The density baseline is the ``FUSED`` record of problem ``"density"`` whose
    ``backward_group`` label names the group. Ratios are of fastest calls per
    pair, so a variant measured on a subset compares per pair.
    """
    backward, baselines = {}, {}
    for r in records:
        if r.get("suite", "ranking") != "ranking" or not r.get("time_per_pair_s"):
            continue
        if r.get("problem") == "backward":
            backward.setdefault(r.get("group") or "?", {})[r["variant"]] = r
        elif r.get("problem") == "density" and r.get("backward_group") and r["variant"] == FUSED:
            baselines[r["backward_group"]] = r
    lines = []
    for group, rows in backward.items():
        fast, density, slow = rows.get(FUSED), baselines.get(group), rows.get("torch_einsum")
        if fast is not None and density is not None:
            ratio = (density["time_per_pair_s"] + fast["time_per_pair_s"]) / density["time_per_pair_s"]
            lines.append(f"goal: {FUSED} centre density + backward <= {COST_GOAL:g}x the density alone, per pair, "
                         f"on {group!r}, {fast.get('threads')} thread(s): {ratio:.2f}x (backward "
                         f"{fast['time_per_pair_s'] * 1e6:.4f} us, density {density['time_per_pair_s'] * 1e6:.4f} us"
                         f" per pair), {'met' if ratio <= COST_GOAL else 'NOT met'}")
        if fast is not None and slow is not None:
            ratio = slow["time_per_pair_s"] / fast["time_per_pair_s"]
            lines.append(f"goal: torch_einsum autograd backward >= {TORCH_GOAL:g}x the time per pair of {FUSED}'s "
                         f"on {group!r}: {ratio:.0f}x ({slow['time_per_pair_s'] * 1e6:.3g} us on {slow.get('pairs')} "
                         f"pairs vs {fast['time_per_pair_s'] * 1e6:.3g} us on {fast.get('pairs')}), "
                         f"{'met' if ratio >= TORCH_GOAL else 'NOT met'}")
        if fast is not None:
            lines.extend(_memory_lines(fast, hypers))
    return lines


def _memory_lines(record, hypers) -> list[str]:
    """The fused backward's peak memory against pairs x coefficients, and its first call."""
    lines = []
    peak = (record.get("peak_memory") or {}).get("traced_peak_bytes")
    pairs, itemsize = record["pairs"], 4 if record.get("dtype") == "float32" else 8
    dense = pairs * coefficients_per_pair(hypers) * itemsize
    if peak is not None:
        lines.append(f"goal: {FUSED} backward peak memory (tracemalloc, outputs included) below one float per pair "
                     f"and coefficient: {peak / 2**20:.2f} MiB ({peak / pairs:.0f} B per pair) against "
                     f"{dense / 2**20:.1f} MiB ({coefficients_per_pair(hypers)} coefficients per pair), "
                     f"{'met' if peak < dense else 'NOT met'}")
    lines.append(f"first call: {FUSED} backward {record['first_call_s']:.2f} s "
                 f"({record.get('first_call_source', 'source not recorded')})")
    return lines


class _GoalSummary:
    """A plugin printing the goal lines in the terminal summary (registered by the goals test)."""

    def __init__(self, lines):
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("issue 21: the backward pass's goals")
        for line in self.lines:
            terminalreporter.write_line(line)


def test_backward_goals(bench_state, bench_input, pytestconfig):
    """Issue 21's ratios from this run's records, printed in the terminal summary (nothing asserted
    about time)."""
    import pytest

    lines = goal_lines(bench_state["results"], bench_input.hypers)
    if not lines:
        pytest.skip("no backward record of this run to take the ratios from (--variant, --benchmark-disable)")
    bench_state.setdefault("backward_goals", []).extend(lines)
    if not pytestconfig.pluginmanager.has_plugin("backward-goals"):
        pytestconfig.pluginmanager.register(_GoalSummary(bench_state["backward_goals"]), name="backward-goals")

"""Loading a variant under pinned threads and measuring it: one measuring path,
:func:`measure_variant`, for the pytest-benchmark suites
(:func:`benchmark_variant`) and the command-line runner (:func:`run_variant`).

Order of a measurement (DESIGN.md section 6): load the variant, re-pin (a
variant may have just loaded Torch or Numba) and verify, time the first call
apart (JIT, ``torch.compile``, GPU warm-up), re-pin and verify again (the
first call may load Numba lazily), spot-check the output against the
reference, one warm-up call that also sizes the number of rounds, the
steady-state rounds, then one call under the memory probe. Who runs the
steady-state rounds is the only difference between the two callers: a plain
loop (:class:`PlainRounds`) or pytest-benchmark's fixture
(:class:`BenchmarkRounds`: saved, compared and gated by pytest-benchmark).
The device to synchronise is the variant's registry fact
(``Variant.device``). Import only after the threads are pinned (imports NumPy).
"""

from __future__ import annotations

import os

import numpy as np

from einsum_workbench.kernels.registry import get_variant

from einsum_workbench.bench import measure
from einsum_workbench.bench import pinning
from einsum_workbench.bench.inputs import BenchInput

#: spot check against the reference on this many pairs of the benchmarked batch
CHECK_PAIRS = 64


def load_pinned(name: str, threads: int, problem: str = "pairs"):
    """(Variant, callable) for ``name`` (of ``problem``), with the pinning re-applied and verified.

    Raises
    ------
    KeyError
        unknown variant (valid names listed).
    RuntimeError
        the variant is unavailable here (the reason is given).
    pinning.PinningError
        the pinning does not hold once the variant is loaded (what is named).
    """
    # the specialised Numba kernels are measured (compiled on the first call, reported apart), not
    # the generic one that serves first calls while a background process compiles beside the timing
    os.environ.setdefault("EINSUM_WORKBENCH_NUMBA_KERNEL", "specialised")
    variant = get_variant(name, problem)
    function = variant.load()
    pinning.pin_and_verify(threads)
    return variant, function


#: seed of the backward pass's cotangent (:func:`backward_cotangent`)
COTANGENT_SEED = 0


def backward_cotangent(hypers, n_segments: int, seed: int = COTANGENT_SEED) -> list:
    """The cotangent the backward variants are measured with: per l, ``(n_segments, 2l+1,
    num_radial[l])`` float64 standard normal draws of ``numpy.random.default_rng(seed)``
    (a dense cotangent, as a loss of every density row gives)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def call_arguments(inp: BenchInput, dtype, problem: str) -> tuple:
    """What a variant of ``problem`` is called with on ``inp``: the pair arrays and hypers; for
    ``"density"`` and ``"backward"`` sorted by segment with the segments (``inp.density_args``),
    for ``"backward"`` also :func:`backward_cotangent`."""
    if problem in ("density", "backward"):
        r_ij, rotations, semiaxes, segment, n_segments = inp.density_args(dtype)
        arguments = (r_ij, rotations, semiaxes, inp.hypers, segment, n_segments)
        return arguments + (backward_cotangent(inp.hypers, n_segments),) if problem == "backward" else arguments
    return (*inp.arrays(dtype), inp.hypers)


def density_spot_check(name: str, out, inp: BenchInput, dtype) -> None:
    """Shapes, and the rows of the first segments (their pairs: about
    ``CHECK_PAIRS``) against the reference density. Raises AssertionError."""
    from einsum_workbench.reference.compare import assert_coefficients_close
    from einsum_workbench.reference.density import segment_sum
    from einsum_workbench.reference.expansion import pairwise_ellip_expansion

    r_ij, rotations, semiaxes, segment, n_segments = inp.density_args(np.float64)
    expected_shapes = [(n_segments, 2 * l + 1, n) for l, n in enumerate(inp.hypers.num_radial)]
    got_shapes = [tuple(np.shape(b)) for b in out]
    assert got_shapes == expected_shapes, f"{name} density: shapes {got_shapes}, expected {expected_shapes}"
    if name == "reference" or not len(segment):
        return
    rows = int(segment[min(CHECK_PAIRS, len(segment)) - 1]) + 1
    mine = segment < rows
    terms = pairwise_ellip_expansion(r_ij[mine], rotations[mine], semiaxes[mine], inp.hypers)
    expected = [segment_sum(c, segment[mine], rows) for c in terms]
    # sums over small periodic cells cancel (l = 1 to ~1e-9 of its terms): scale atol by the terms
    scales = [segment_sum(np.abs(c), segment[mine], rows).max(initial=0.0) for c in terms]
    got = [np.asarray(block)[:rows] for block in out]
    assert_coefficients_close(got, expected, inp.hypers, np.dtype(got[0].dtype),
                              f"{name} centre density on the benchmarked pairs", orthonormalised=False,
                              scales=scales)


def spot_check(name: str, out, inp: BenchInput, dtype) -> None:
    """Shapes of ``out`` and, for variants other than the reference, values on the
    first ``CHECK_PAIRS`` pairs against the reference. Raises AssertionError."""
    measure.check_output_shapes(out, inp.n_pairs, inp.hypers, name)
    if name == "reference" or inp.n_pairs == 0:
        return
    from einsum_workbench.reference.compare import assert_coefficients_close
    from einsum_workbench.reference.expansion import pairwise_ellip_expansion

    small = inp.subset(CHECK_PAIRS)
    expected = pairwise_ellip_expansion(*small.arrays(np.float64), small.hypers)
    got = [np.asarray(block)[: small.n_pairs] for block in out]
    assert_coefficients_close(got, expected, small.hypers, np.dtype(got[0].dtype),
                              f"{name} on the benchmarked pairs")


#: the gradient spot check compares with finite differences of the reference on this many pairs
GRADIENT_CHECK_PAIRS = 8


def gradient_spot_check(name: str, out, inp: BenchInput, dtype) -> None:
    """Shapes of a gradient variant's ``out`` (``reference.gradients.PairGradients``)
    and, for variants other than the reference, its first ``GRADIENT_CHECK_PAIRS``
    pairs against the reference: values as :func:`spot_check`, derivatives
    against central finite differences with ``rtol = 1e-6`` and ``atol = 1e-6 x``
    the block's largest |value| (at least 1e-2 x the channel's largest
    coefficient: a derivative that vanishes is compared with the differences'
    rounding noise), as ``tests/kernels/test_gradients_equivalence.py``. Raises AssertionError."""
    from einsum_workbench.reference.compare import assert_coefficients_close
    from einsum_workbench.reference.gradients import finite_difference_gradients

    quantities = ("positions", "orientations")
    measure.check_output_shapes(out.values, inp.n_pairs, inp.hypers, name)
    for quantity in quantities:
        got = [tuple(np.shape(b)) for b in getattr(out, quantity)]
        want = [(inp.n_pairs, 3, 2 * l + 1, n) for l, n in enumerate(inp.hypers.num_radial)]
        assert got == want, f"{name} {quantity}: shapes {got}, expected {want}"
    if name == "reference" or inp.n_pairs == 0:
        return
    small = inp.subset(GRADIENT_CHECK_PAIRS)
    expected = finite_difference_gradients(*small.arrays(np.float64), small.hypers)
    got_values = [np.asarray(b)[: small.n_pairs] for b in out.values]
    assert_coefficients_close(got_values, expected.values, small.hypers, np.dtype(got_values[0].dtype),
                              f"{name} gradients' values on the benchmarked pairs")
    float32 = np.dtype(got_values[0].dtype) == np.float32
    rtol, atol_scale = (1e-3, 1e-4) if float32 else (1e-6, 1e-6)
    for quantity in quantities:
        for l, (a, e) in enumerate(zip(getattr(out, quantity), getattr(expected, quantity))):
            scale = max(float(np.max(np.abs(e))), 1e-2 * float(np.max(np.abs(expected.values[l]))))
            np.testing.assert_allclose(np.asarray(a)[: small.n_pairs].astype(np.float64), e, rtol=rtol,
                                       atol=atol_scale * scale,
                                       err_msg=f"{name} {quantity} l={l} on the benchmarked pairs (finite differences)")


#: the backward spot check compares with the reference (finite differences) on this many pairs
BACKWARD_CHECK_PAIRS = 8


def backward_spot_check(name: str, out, inp: BenchInput, dtype) -> None:
    """Shapes of a backward variant's ``out`` (``reference.backward.PairCotangents``, in the
    order of :func:`call_arguments`) and, for variants other than the reference, its first
    ``BACKWARD_CHECK_PAIRS`` pairs against ``reference.backward.centre_density_backward`` on
    those pairs (same segments and cotangent), with ``tests/kernels/test_backward.py``'s
    tolerances (float64 ``rtol = 1e-6``, ``atol = 1e-6 x`` the quantity's largest |value|,
    at least 0.1 x the largest of both; float32 ``1e-3`` and ``1e-4 x``). Raises AssertionError."""
    from einsum_workbench.reference.backward import centre_density_backward

    for quantity in ("r", "theta"):
        shape = tuple(np.shape(getattr(out, quantity)))
        assert shape == (inp.n_pairs, 3), f"{name} backward {quantity}: shape {shape}, expected {(inp.n_pairs, 3)}"
    assert out.semiaxes is None, f"{name} backward: semi-axis derivatives returned unasked"
    if name == "reference" or inp.n_pairs == 0:
        return
    r_ij, rotations, semiaxes, _, segment, n_segments, cotangent = call_arguments(inp, np.float64, "backward")
    k = min(BACKWARD_CHECK_PAIRS, inp.n_pairs)
    expected = centre_density_backward(r_ij[:k], rotations[:k], semiaxes[:k], inp.hypers, segment[:k], n_segments,
                                       cotangent)
    float32 = np.dtype(out.r.dtype) == np.float32
    rtol, atol_scale = (1e-3, 1e-4) if float32 else (1e-6, 1e-6)
    largest = max(float(np.max(np.abs(expected.r))), float(np.max(np.abs(expected.theta))))
    for quantity in ("r", "theta"):
        e = getattr(expected, quantity)
        scale = max(float(np.max(np.abs(e))), 0.1 * largest)
        np.testing.assert_allclose(np.asarray(getattr(out, quantity))[:k].astype(np.float64), e, rtol=rtol,
                                   atol=atol_scale * scale,
                                   err_msg=f"{name} backward {quantity} on the benchmarked pairs (reference)")


class PlainRounds:
    """Steady-state rounds timed in a plain loop (the command-line runner).

    Parameters
    ----------
    progress : bool
        Show a tqdm progress bar over the rounds.
    """

    enabled = True

    def __init__(self, progress: bool = False):
        self.progress = progress

    def first(self, call) -> tuple[float, object]:
        """(seconds, output) of the first call."""
        return measure.timed_call(call)

    def steady(self, call, rounds: int, label: str = "") -> list[float]:
        """Wall times of ``rounds`` calls."""
        calls = range(rounds)
        if self.progress:
            from tqdm import tqdm

            calls = tqdm(calls, desc=label, unit="call", leave=False)
        return [measure.timed_call(call)[0] for _ in calls]


class BenchmarkRounds:
    """Steady-state rounds through pytest-benchmark's ``benchmark`` fixture.

    With benchmarking disabled (``--benchmark-disable``) ``enabled`` is False:
    the variant runs once (through the fixture, as pytest-benchmark expects),
    checked, untimed.
    """

    def __init__(self, benchmark):
        self.benchmark = benchmark
        self.enabled = bool(benchmark.enabled)

    def first(self, call) -> tuple[float, object]:
        """(seconds, output) of the first call."""
        if not self.enabled:
            return self.benchmark.pedantic(lambda: measure.timed_call(call))
        return measure.timed_call(call)

    def steady(self, call, rounds: int, label: str = "") -> list[float]:
        """Wall times of ``rounds`` calls, as pytest-benchmark recorded them."""
        self.benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        return list(self.benchmark.stats.stats.data)


def measure_variant(
    name: str,
    inp: BenchInput,
    threads: int,
    *,
    problem: str = "pairs",
    dtype=np.float64,
    repeat: int | None = None,
    budget_s: float = 3.0,
    min_rounds: int = 3,
    max_rounds: int = 50,
    reference_best_s: float | None = None,
    check: bool = True,
    memory: bool = True,
    rounds=None,
) -> measure.Measurement:
    """Measure one variant on one pair batch: the one measuring path.

    Parameters
    ----------
    name : str
        Registered variant (of ``problem``).
    inp : BenchInput
    threads : int
        Must equal the count the process was pinned to.
    problem : {"pairs", "density", "gradients", "backward"}
        The pair expansion, the centre density of the batch's segments
        (time per pair is still per neighbour pair), the pair expansion
        with its derivatives along positions and orientations, or the
        centre density's backward pass (the cotangent of :func:`backward_cotangent`;
        positions and orientations).
    dtype : numpy.float64 or numpy.float32
    repeat : int or None
        Steady-state calls; None sizes them to ``budget_s`` seconds within
        [min_rounds, max_rounds] from one warm-up call (``max_rounds`` wins
        when it is the smaller).
    reference_best_s : float or None
        The reference's fastest call on the same batch in this run, for the
        speedup (the reference's own record takes its fastest call).
    check, memory : bool
        Spot-check the output against the reference; probe peak memory.
    rounds : PlainRounds, BenchmarkRounds or None
        Who runs the steady-state rounds (None: a plain loop).

    Returns
    -------
    measure.Measurement
        ``steady`` and ``peak_memory`` are None when ``rounds`` is disabled.

    Raises
    ------
    KeyError, RuntimeError, pinning.PinningError
        as :func:`load_pinned`; PinningError also when the pinning stops
        holding while the variant runs.
    AssertionError
        if the spot check fails.
    ValueError
        for ``repeat`` < 1.
    """
    if repeat is not None and repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat!r}")
    rounds = rounds if rounds is not None else PlainRounds()
    variant, function = load_pinned(name, threads, problem)
    args = call_arguments(inp, dtype, problem)
    sync = measure.synchronizer(variant.device)
    spot = {"density": density_spot_check, "gradients": gradient_spot_check,
            "backward": backward_spot_check}.get(problem, spot_check)

    def call():
        out = function(*args)
        sync()  # a GPU clock is read only after the queued work is done
        return out

    first_s, out = rounds.first(call)
    pinning.pin_and_verify(threads)  # the first call may have loaded Numba or started Torch's pools
    if check:
        spot(name, out, inp, dtype)
    del out
    steady = peak = None
    if rounds.enabled:
        warm_s, _ = measure.timed_call(call)
        n = repeat if repeat is not None else measure.choose_rounds(warm_s, budget_s, min(min_rounds, max_rounds),
                                                                    max_rounds)
        steady = measure.latency_stats(rounds.steady(call, n, f"{name} ({inp.n_pairs} pairs)"))
        peak = measure.measure_peak_memory(call, device=variant.device) if memory else None
    state = pinning.pinning_state(threads)
    if state["problems"]:
        raise pinning.PinningError(f"pinning stopped holding while {name} ran: {state['problems']}")
    if name == "reference" and steady is not None:
        reference_best_s = steady["min_s"]
    return measure.Measurement(
        variant=name, workload=inp.description, n_pairs=inp.n_pairs, dtype=np.dtype(dtype).name,
        first_call_s=first_s, steady=steady, peak_memory=peak, pinning=state,
        speedup_vs_reference=(reference_best_s / steady["min_s"]) if (reference_best_s and steady) else None,
        reference_best_s=reference_best_s,
    )


def run_variant(name: str, inp: BenchInput, threads: int, *, progress: bool = False, **kwargs) -> measure.Measurement:
    """Measure one variant in a plain loop (the command-line runner's path).

    Parameters
    ----------
    name, inp, threads
        As :func:`measure_variant`.
    progress : bool
        Show a tqdm progress bar over the steady-state calls.
    **kwargs
        Any other keyword of :func:`measure_variant` (``dtype``, ``repeat``,
        ``budget_s``, ``min_rounds``, ``max_rounds``, ``reference_best_s``,
        ``check``, ``memory``, ``problem``).

    Returns
    -------
    measure.Measurement

    Raises
    ------
    As :func:`measure_variant`.
    """
    return measure_variant(name, inp, threads, rounds=PlainRounds(progress), **kwargs)


def benchmark_variant(benchmark, name: str, inp: BenchInput, threads: int, *, max_rounds: int = 30,
                      suite: str = "ranking", group: str | None = None, labels: dict | None = None,
                      problem: str = "pairs", **kwargs) -> dict:
    """Measure one variant inside a pytest-benchmark test; returns its record.

    The steady-state rounds go through ``benchmark.pedantic`` (so they are
    saved, compared and gated by pytest-benchmark); first-call cost, latency
    percentiles and peak memory are measured around them
    (:func:`measure_variant`), and the record is stored in
    ``benchmark.extra_info``. With benchmarking disabled
    (``--benchmark-disable``) the variant runs once, checked, untimed.

    Parameters
    ----------
    benchmark : pytest-benchmark's fixture
    name, inp, threads, problem, max_rounds
        As :func:`measure_variant` (``max_rounds`` defaults to 30 here).
    suite, group : str
        Record labels; ``group`` (default ``inp.label``) is also the
        pytest-benchmark group, so that each group is one ranking.
    labels : dict or None
        More labels for the record (e.g. ``{"sweep": "lmax"}``).
    **kwargs
        Any other keyword of :func:`measure_variant` (``dtype``, ``budget_s``,
        ``min_rounds``, ``reference_best_s``, ...).

    Returns
    -------
    dict
        :meth:`measure.Measurement.as_dict` plus ``suite``, ``group`` and
        ``problem`` and the ``labels``.

    Raises
    ------
    As :func:`measure_variant`.
    """
    benchmark.group = group or inp.label
    m = measure_variant(name, inp, threads, rounds=BenchmarkRounds(benchmark), max_rounds=max_rounds,
                        problem=problem, **kwargs)
    record = m.as_dict()
    record.update(suite=suite, group=group or inp.label, problem=problem, **(labels or {}))
    benchmark.extra_info.update(record)
    return record

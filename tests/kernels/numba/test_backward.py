"""The ``numba_fused`` backward variant (``kernels.numba.backward``), beyond the equivalence suite.

``tests/kernels/test_backward.py`` checks every backward variant against the
reference (finite differences) and Torch autograd over lmax 0..8, both bases,
float32 and float64. Here: segment sizes around the lane count and batches
smaller than it (against the reference), bit-identity across thread counts,
lane counts, batch positions, sorted and unsorted input and the
``semiaxes_gradients`` flag; peak memory; the errors (bad pairs, cotangents,
segments, options); the disk cache (a second process loads the kernel) and
its key. Tolerances as the equivalence suite's (float64 ``rtol = 1e-6``,
``atol = 1e-6 x`` the quantity's largest |value|, at least 0.1 x the largest
of all). The 1-vs-2-thread check needs ``NUMBA_NUM_THREADS >= 2`` and says
so when it cannot run.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_fused backward needs numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import backward as numba_backward  # noqa: E402
from einsum_workbench.kernels.numba import generic as numba_generic  # noqa: E402
from einsum_workbench.kernels.numba.codegen import keys  # noqa: E402
from einsum_workbench.kernels.numba.codegen.backward import segment_plan  # noqa: E402
from einsum_workbench.kernels.numba.codegen.pairs import contraction_plan  # noqa: E402
from einsum_workbench.kernels.numba.dispatch import CACHE_ENV  # noqa: E402
from einsum_workbench.kernels.numba.lanes import default_density_lanes  # noqa: E402
from einsum_workbench.kernels.registry import load_variant  # noqa: E402
from einsum_workbench.reference.backward import centre_density_backward as reference_backward  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

GTO3 = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)
GTO6 = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
MONO2 = ExpansionHypers(2, "monomial", cutoff=7.0)
LANES = default_density_lanes(np.float64)
QUANTITIES = ("r", "theta", "semiaxes")

backward = numba_backward.centre_density_backward


def cotangent(hypers, n_segments: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def random_segments(n_pairs: int, n_segments: int, seed: int, empty=(0,)) -> np.ndarray:
    """Unsorted segment of every pair, in [0, n_segments) except the segments in ``empty``."""
    allowed = np.setdiff1d(np.arange(n_segments), empty)
    return np.random.default_rng(seed).choice(allowed, size=n_pairs)


def assert_close_to_reference(actual, expected, label: str) -> None:
    largest = max(np.abs(getattr(expected, q)).max(initial=0.0) for q in QUANTITIES)
    for q in QUANTITIES:
        a, e = getattr(actual, q), getattr(expected, q)
        assert a.shape == e.shape, (label, q, a.shape, e.shape)
        scale = max(np.abs(e).max(initial=0.0), 0.1 * largest, 1e-300)
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6 * scale, err_msg=f"{label} {q}")


def assert_identical(a, b, label: str) -> None:
    for q in QUANTITIES:
        x, y = getattr(a, q), getattr(b, q)
        assert (x is None) == (y is None), (label, q)
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{label}: {q} differs"


def test_segment_sizes_around_the_lane_count():
    """Segments of 1, LANES - 1, LANES, LANES + 1 and 3 LANES + 2 pairs, empty ones between, a short
    segment at the batch's end (its block reaches back into the one before), not sorted."""
    sizes = [1, 0, LANES - 1, LANES, 0, LANES + 1, 3 * LANES + 2, 2]
    segment = np.repeat(np.arange(len(sizes)), sizes)
    shuffled = np.random.default_rng(3).permutation(len(segment))
    arrays = [a[shuffled] for a in random_pair_batch(len(segment), 5, self_pair_fraction=0.1)]
    g = cotangent(GTO3, len(sizes) + 1, 5)
    for orthonormal in (False, True):
        actual = backward(*arrays, GTO3, segment[shuffled], len(sizes) + 1, g, orthonormal=orthonormal,
                          semiaxes_gradients=True)
        expected = reference_backward(*arrays, GTO3, segment[shuffled], len(sizes) + 1, g,
                                      orthonormal=orthonormal, semiaxes_gradients=True)
        assert_close_to_reference(actual, expected, f"orthonormal={orthonormal}")


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_fewer_pairs_than_lanes(n_pairs):
    arrays = random_pair_batch(n_pairs, 8)
    segment = np.arange(n_pairs)[::-1] % 2
    g = cotangent(MONO2, 2, 8)
    actual = backward(*arrays, MONO2, segment, 2, g, semiaxes_gradients=True)
    expected = reference_backward(*arrays, MONO2, segment, 2, g, semiaxes_gradients=True)
    assert_close_to_reference(actual, expected, f"{n_pairs} pairs")


def test_bit_identical_across_thread_counts():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"Numba launched {numba.config.NUMBA_NUM_THREADS} thread (NUMBA_NUM_THREADS); "
                    "the 1-vs-2-thread comparison did not run")
    arrays = random_pair_batch(3001, 12, self_pair_fraction=0.05)
    segment = np.sort(random_segments(3001, 301, seed=5, empty=(0, 150)))
    g = cotangent(GTO6, 301, 12)
    for dtype in (np.float64, np.float32):
        inputs = [a.astype(dtype) for a in arrays]
        for orthonormal in (False, True):
            one = backward(*inputs, GTO6, segment, 301, g, orthonormal=orthonormal, semiaxes_gradients=True,
                           threads=1)
            two = backward(*inputs, GTO6, segment, 301, g, orthonormal=orthonormal, semiaxes_gradients=True,
                           threads=2)
            assert_identical(one, two, f"{np.dtype(dtype)} orthonormal={orthonormal}: 1 and 2 threads")


def test_unsorted_input_gives_the_presorted_results_in_the_callers_order():
    arrays = random_pair_batch(500, 13)
    segment = random_segments(500, 40, seed=6, empty=(3,))
    g = cotangent(GTO6, 40, 13)
    order = np.argsort(segment, kind="stable")
    unsorted = backward(*arrays, GTO6, segment, 40, g, semiaxes_gradients=True)
    presorted = backward(*[a[order] for a in arrays], GTO6, segment[order], 40, g, semiaxes_gradients=True)
    for q in QUANTITIES:
        assert np.array_equal(getattr(unsorted, q)[order], getattr(presorted, q)), f"{q}: unsorted != pre-sorted"


def test_bit_identical_whatever_the_lane_or_position_of_a_pair():
    """A pair computes the same numbers in another lane (pairs moved by one place in the batch and in
    their blocks) and with another lane count."""
    arrays = random_pair_batch(90, 14)
    segment = np.sort(random_segments(90, 9, seed=7, empty=()))
    g = cotangent(GTO3, 9, 14)
    base = backward(*arrays, GTO3, segment, 9, g, semiaxes_gradients=True)
    extra = random_pair_batch(1, 15)
    shifted = backward(*[np.concatenate([e, a]) for e, a in zip(extra, arrays)], GTO3, np.r_[0, segment + 1], 10,
                       [np.concatenate([c[:1], c]) for c in g], semiaxes_gradients=True)
    assert_identical(base, type(base)(*(getattr(shifted, q)[1:] for q in QUANTITIES)), "one place later")
    assert_identical(base, backward(*arrays, GTO3, segment, 9, g, semiaxes_gradients=True, lanes=2), "lanes=2")


def test_semiaxes_flag_changes_nothing_else():
    arrays = random_pair_batch(40, 16)
    segment = random_segments(40, 5, seed=8, empty=())
    g = cotangent(GTO3, 5, 16)
    with_axes = backward(*arrays, GTO3, segment, 5, g, orthonormal=True, semiaxes_gradients=True)
    plain = backward(*arrays, GTO3, segment, 5, g, orthonormal=True)
    assert plain.semiaxes is None and with_axes.semiaxes.shape == (40, 3)
    assert_identical(plain, with_axes._replace(semiaxes=None), "semiaxes_gradients on and off")
    for q in QUANTITIES:
        out = getattr(with_axes, q)
        assert out.flags.c_contiguous and out.flags.writeable and out.dtype == np.float64, q


def test_float32_against_float64():
    arrays = random_pair_batch(60, 17)
    segment = random_segments(60, 6, seed=9, empty=(2,))
    g = cotangent(GTO3, 6, 17)
    single = backward(*[a.astype(np.float32) for a in arrays], GTO3, segment, 6, g, semiaxes_gradients=True)
    double = backward(*[a.astype(np.float32).astype(np.float64) for a in arrays], GTO3, segment, 6, g,
                      semiaxes_gradients=True)
    largest = max(np.abs(getattr(double, q)).max() for q in QUANTITIES)
    for q in QUANTITIES:
        a, e = getattr(single, q), getattr(double, q)
        assert a.dtype == np.float32, q
        np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-4 * max(np.abs(e).max(), 0.1 * largest), err_msg=q)


def test_peak_memory_holds_nothing_per_pair_and_coefficient():
    """tracemalloc's peak of a sorted call: the (P, 3) outputs and per-segment arrays, far below the
    P x coefficients floats of a per-pair coefficient table (84 per pair at lmax 6)."""
    n_pairs = 4000
    arrays = random_pair_batch(n_pairs, 18)
    segment = np.sort(random_segments(n_pairs, 50, seed=10, empty=()))
    g = cotangent(GTO6, 50, 18)
    backward(*arrays, GTO6, segment, 50, g)  # compiled or loaded before measuring
    tracemalloc.start()
    try:
        backward(*arrays, GTO6, segment, 50, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = 2 * n_pairs * 3 * 8
    coefficients = sum((2 * l + 1) * n for l, n in enumerate(GTO6.num_radial))
    assert peak <= outputs + 64 * 1024, f"peak {peak} B for {outputs} B of outputs"
    assert peak < n_pairs * coefficients * 8 / 4


DEFECTS = {
    "reflection": "rotation at pair 6 is a reflection",
    "not_orthonormal": "rotation at pair 6 is not orthonormal",
    "nan": "r_ij has a non-finite value at pair 6",
    "negative_axis": "semiaxes must be > 0; pair 6 has",
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_bad_pairs_raise_the_canonical_error_naming_the_pair(defect):
    """The kernel's screen hands the batch to check_pair_arrays; unsorted input (sorted inside) keeps
    the caller's pair indices."""
    r_ij, rotations, semiaxes = (a.copy() for a in random_pair_batch(40, 4))
    if defect == "reflection":
        rotations[6] = -rotations[6]
    elif defect == "not_orthonormal":
        rotations[6, 0, 0] += 1e-3
    elif defect == "nan":
        r_ij[6, 1] = np.nan
    else:
        semiaxes[6, 2] = -1.0
    unsorted = np.random.default_rng(8).integers(0, 5, 40)
    for segment, n_segments in ((np.zeros(40, np.int64), 1), (unsorted, 5)):
        with pytest.raises(ValueError, match=DEFECTS[defect]):
            backward(r_ij, rotations, semiaxes, GTO3, segment, n_segments, cotangent(GTO3, n_segments, 4))


def test_bad_segments_and_options_are_named():
    arrays = random_pair_batch(8, 15)
    g = cotangent(GTO3, 4, 15)
    segment = np.array([0, 1, 1, 2, 3, 0, 2, 1])
    for position, bad in ((5, 4), (5, -1), (0, 9), (3, 7)):
        wrong = segment.copy()
        wrong[position] = bad
        with pytest.raises(ValueError, match=rf"segment of pair {position} is {bad}, outside \[0, n_segments = 4\)"):
            backward(*arrays, GTO3, wrong, 4, g)
    with pytest.raises(TypeError, match="n_segments must be an int"):
        backward(*arrays, GTO3, segment, 4.0, g)
    with pytest.raises(TypeError, match="semiaxes_gradients must be a bool"):
        backward(*arrays, GTO3, segment, 4, g, semiaxes_gradients=1)
    with pytest.raises(TypeError, match="hypers must be an ExpansionHypers, got dict"):
        backward(*arrays, GTO3.as_dict(), segment, 4, g)
    with pytest.raises(ValueError, match="mix-up"):
        backward(*arrays, GTO3, segment, 4, g, dtype=np.float32)
    with pytest.raises(ValueError, match="threads"):
        backward(*arrays, GTO3, segment, 4, g, threads=0)
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        backward(*arrays, GTO3, segment, 4, g, lanes=3)
    as_float32 = [c.astype(np.float32) for c in g]  # another dtype goes through check_cotangent: still fine
    assert np.array_equal(backward(*arrays, GTO3, segment, 4, as_float32).r,
                          backward(*arrays, GTO3, segment, 4, [c.astype(np.float32).astype(np.float64)
                                                                 for c in g]).r)


def test_a_non_finite_cotangent_is_found_by_the_kernel_and_named():
    arrays = random_pair_batch(30, 19)
    segment = random_segments(30, 5, seed=11, empty=())
    g = cotangent(GTO3, 5, 19)
    g[2][4, 3, 0] = np.nan  # the last segment: its group's last lane
    with pytest.raises(ValueError, match=r"cotangent for l = 2 has a non-finite entry nan at \(4, 3, 0\)"):
        backward(*arrays, GTO3, segment, 5, g)


def test_segment_starts_never_writes_past_its_output():
    """``numba_generic.segment_starts`` (the grouping both fused density kernels use) returns 1, writing
    nothing past ``starts``, for unsorted segments holding values >= n_segments (it once did)."""
    for segment in ([9, 4, 2, 1, 5], [0, 12, 1], [0, 3, 2], [7]):
        memory = np.full(12, -7, dtype=np.int64)
        assert numba_generic.segment_starts(np.array(segment, dtype=np.int64), memory[:8]) == 1, segment
        assert np.all(memory[8:] == -7), f"{segment}: wrote past starts"


def test_registry_entry_is_this_function():
    assert load_variant("numba_fused", "backward") is numba_backward.centre_density_backward


def test_segment_plan_matches_the_contraction():
    """The per-segment contraction has the pair kernel's non-zeros; the ten vectors' entries at lmax 6
    are the moments of degree <= 6, <= 5 (three times) and <= 4 (six times): 84 + 3 x 56 + 6 x 35."""
    gm_terms, entries = segment_plan(GTO6)
    assert sum(len(c) for rows in gm_terms for _, c in rows) == sum(
        len(terms) for columns in contraction_plan(GTO6) for terms in columns) == 362
    assert len(entries) == 84 + 3 * 56 + 6 * 35
    assert [u for u, *_ in entries] == sorted(u for u, *_ in entries), "entries in the moments' order"


_CACHE_PROBE = """
    import json, sys
    import numpy as np
    from einsum_workbench.kernels.numba import backward as numba_backward
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.375)
    arrays = random_pair_batch(20, 1)
    g = [np.ones((2, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]
    out = numba_backward.centre_density_backward(*arrays, hypers, np.arange(20) % 2, 2, g)
    module = numba_backward.backward_module(hypers, np.float64)
    stats = module.backward_segments.stats
    print(json.dumps({"file": module.__file__, "hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()), "r": out.r.tolist()}))
"""


def test_a_second_process_loads_the_kernel_from_the_disk_cache(tmp_path):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", **{CACHE_ENV: str(tmp_path)})
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(_CACHE_PROBE)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.375)
    assert first["file"].startswith(str(tmp_path)) and keys.backward_kernel_key(hypers, np.float64) in first["file"]
    assert (first["misses"], first["hits"]) == (1, 0), first
    assert (second["misses"], second["hits"]) == (0, 1), second
    assert first["r"] == second["r"]


def test_the_key_covers_every_module_the_generated_code_comes_from():
    """The modules ``codegen/backward.py`` imports from the Numba family, transitively, are hashed
    (``keys.py`` excepted: it names kernels and shapes no code)."""
    prefix = "einsum_workbench.kernels.numba."
    reached, todo = set(), ["codegen/backward.py"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for node in ast.walk(ast.parse((keys.SOURCE_ROOT / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                relative = node.module[len(prefix):].replace(".", "/") + ".py"
                if (keys.SOURCE_ROOT / relative).is_file():
                    todo.append(relative)
    missing = reached - {"codegen/keys.py"} - set(keys.KERNEL_SOURCES["backward"])
    assert not missing, f"the backward kernels' key does not hash {sorted(missing)}"

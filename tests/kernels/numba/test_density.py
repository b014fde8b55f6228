"""The ``numba_fused`` centre-density variant (``kernels.numba.density``).

Against the reference centre density (raw and orthonormalised), its edge
cases (unsorted and empty segments, a segment of one pair and of LANES + 1
pairs, fewer pairs than lanes, the empty batch), bit-identity across thread
counts and between unsorted and pre-sorted input, and its errors (bad pairs: ``test_screen.py``).

Tolerances (DESIGN.md section 5, per l block): float64 ``rtol = 1e-6``,
``atol = 1e-8 x`` the block's largest |value|; float32 ``rtol = 1e-3``,
``atol = 1e-4 x`` the block's largest |value| (``reference.compare``'s),
always against the reference computed in float64. Kernels compile once per
hyper-parameter set and are cached on disk (``dispatch.cache_dir``).

These tests are about the specialised kernels: they run with
``EINSUM_WORKBENCH_NUMBA_KERNEL=specialised`` (compile in this process on a
cold cache instead of serving the first calls with the generic kernel); the
generic kernel: ``tests/kernels/numba/test_dispatch.py``. Bit-identity is
asserted only between calls of one compiled kernel (our own arithmetic).
"""

from __future__ import annotations


import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_density needs numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import density as numba_density  # noqa: E402
from einsum_workbench.kernels.numba.lanes import default_density_lanes  # noqa: E402
from einsum_workbench.kernels.registry import density_function, load_variant  # noqa: E402
from einsum_workbench.reference.compare import TOLERANCES  # noqa: E402
from einsum_workbench.reference.density import centre_density as reference_density  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402
from einsum_workbench.reference.workloads import make_workload  # noqa: E402

GTO6 = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
GTO3 = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)
LANES64 = default_density_lanes(np.float64)

pytestmark = pytest.mark.usefixtures("specialised_kernels")  # the subject of these tests (conftest.py)


def assert_density_close(actual, expected, hypers, dtype, label=""):
    """Shapes, dtypes and values per l block within the tolerances of the module docstring."""
    dtype = np.dtype(dtype)
    tol = TOLERANCES[dtype]
    assert len(actual) == hypers.lmax + 1, f"{label}: {len(actual)} blocks"
    for l, (a, e) in enumerate(zip(actual, expected)):
        assert isinstance(a, np.ndarray) and a.dtype == dtype, f"{label} l={l}: {type(a)} {getattr(a, 'dtype', '')}"
        assert a.shape == e.shape == (e.shape[0], 2 * l + 1, hypers.num_radial[l]), f"{label} l={l}: {a.shape}"
        assert a.flags.c_contiguous and a.flags.writeable
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale,
                                   err_msg=f"{label} l={l} ({dtype})")


def random_segments(n_pairs, n_segments, seed, empty=(0,)):
    """Unsorted segment of every pair, in [0, n_segments) except the segments in ``empty``."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(n_segments), empty)
    return rng.choice(allowed, size=n_pairs)


def both(arrays, hypers, segment, n_segments, dtype=np.float64, **kwargs):
    """(numba density, reference density) for raw and orthonormalised output."""
    inputs = [a.astype(dtype) for a in arrays]
    for orthonormal in (False, True):
        actual = numba_density.centre_density(*inputs, hypers, segment, n_segments, orthonormal=orthonormal, **kwargs)
        expected = reference_density(*[a.astype(np.float64) for a in inputs], hypers, segment, n_segments,
                                     orthonormal=orthonormal)
        yield orthonormal, actual, expected


@pytest.mark.parametrize("hypers", [
    ExpansionHypers(0, "gto", cutoff=7.0, sigma=1.5),
    ExpansionHypers(3, "monomial", cutoff=7.0),
    ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.2, max_radial=[3, 0, 2, 1]),
    GTO6,
    ExpansionHypers(6, "monomial", cutoff=7.0, max_radial=2),
    ExpansionHypers(8, "gto", cutoff=7.0, sigma=1.5),
], ids=lambda h: f"{h.radial_basis}-lmax{h.lmax}-{h.max_radial}")
def test_against_reference(hypers):
    arrays = random_pair_batch(90, hypers.lmax, self_pair_fraction=0.05)
    segment = random_segments(90, 13, seed=hypers.lmax, empty=(0, 7, 12))  # unsorted, empty rows first/middle/last
    for orthonormal, actual, expected in both(arrays, hypers, segment, 13):
        assert_density_close(actual, expected, hypers, np.float64, f"orthonormal={orthonormal}")
        for l in range(hypers.lmax + 1):
            assert not actual[l][[0, 7, 12]].any(), "a segment without pairs must be zero"


@pytest.mark.parametrize("shape", ["prolate", "oblate", "spherical"])
def test_needles_plates_spheres(shape):
    arrays = random_pair_batch(70, 11, shape=shape, self_pair_fraction=0.1)
    segment = np.sort(random_segments(70, 5, seed=3, empty=()))
    for orthonormal, actual, expected in both(arrays, GTO6, segment, 5):
        assert_density_close(actual, expected, GTO6, np.float64, f"{shape} orthonormal={orthonormal}")


@pytest.mark.parametrize("hypers", [GTO6, ExpansionHypers(6, "monomial", cutoff=7.0, max_radial=2)],
                         ids=["gto", "monomial"])
def test_float32_against_reference(hypers):
    """float32: rtol 1e-3, atol 1e-4 x block max, needles and plates included."""
    arrays = random_pair_batch(80, 21, self_pair_fraction=0.05)
    segment = random_segments(80, 6, seed=2, empty=(4,))
    for orthonormal, actual, expected in both(arrays, hypers, segment, 6, dtype=np.float32):
        assert_density_close(actual, expected, hypers, np.float32, f"orthonormal={orthonormal}")


def test_segment_sizes_around_the_lane_count():
    """Segments of 1, LANES - 1, LANES, LANES + 1 and 3 LANES + 2 pairs, empty ones between,
    a short segment at the batch's end."""
    sizes = [1, 0, LANES64 - 1, LANES64, 0, LANES64 + 1, 3 * LANES64 + 2, 2]
    segment = np.repeat(np.arange(len(sizes)), sizes)
    arrays = random_pair_batch(len(segment), 5, self_pair_fraction=0.1)
    for orthonormal, actual, expected in both(arrays, GTO3, segment, len(sizes) + 1):
        assert_density_close(actual, expected, GTO3, np.float64, f"orthonormal={orthonormal}")
        assert not actual[0][[1, 4, len(sizes)]].any()


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_fewer_pairs_than_lanes(n_pairs):
    arrays = random_pair_batch(n_pairs, 8)
    segment = np.arange(n_pairs)[::-1] % 2
    for orthonormal, actual, expected in both(arrays, GTO3, segment, 2):
        assert_density_close(actual, expected, GTO3, np.float64, f"orthonormal={orthonormal}")


def test_real_frames_per_centre_and_species():
    """Benzene frames, segments = (frame, centre, neighbour species), the pipeline's sorted order."""
    work = make_workload("benzenes", 1, seed=4, lmax=4)
    pairs = work.pairs
    key = np.stack([pairs.frame, pairs.centre, pairs.neighbour_species], axis=1)
    _, segment = np.unique(key, axis=0, return_inverse=True)
    segment = segment.reshape(-1)
    order = np.argsort(segment, kind="stable")
    arrays = [a[order] for a in (pairs.r_ij, pairs.rotations, pairs.semiaxes)]
    for orthonormal, actual, expected in both(arrays, work.hypers, segment[order], int(segment.max()) + 1):
        assert_density_close(actual, expected, work.hypers, np.float64, f"orthonormal={orthonormal}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_empty_batch(dtype):
    empty = (np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype))
    for n_segments in (0, 5):
        for orthonormal in (False, True):
            out = numba_density.centre_density(*empty, GTO3, np.zeros(0, np.int64), n_segments,
                                               orthonormal=orthonormal)
            assert [b.shape for b in out] == [(n_segments, 2 * l + 1, n) for l, n in enumerate(GTO3.num_radial)]
            assert all(b.dtype == np.dtype(dtype) and not b.any() for b in out)


def test_bit_identical_across_thread_counts():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"Numba launched {numba.config.NUMBA_NUM_THREADS} thread (NUMBA_NUM_THREADS); "
                    "the 1-vs-2-thread comparison did not run")
    arrays = random_pair_batch(3001, 12, self_pair_fraction=0.05)
    segment = np.sort(random_segments(3001, 301, seed=5, empty=(0, 150)))
    for dtype in (np.float64, np.float32):
        inputs = [a.astype(dtype) for a in arrays]
        for orthonormal in (False, True):
            one = numba_density.centre_density(*inputs, GTO6, segment, 301, orthonormal=orthonormal, threads=1)
            two = numba_density.centre_density(*inputs, GTO6, segment, 301, orthonormal=orthonormal, threads=2)
            for l, (a, b) in enumerate(zip(one, two)):
                assert np.array_equal(a, b), (
                    f"{np.dtype(dtype)} orthonormal={orthonormal} l={l}: 1 and 2 threads differ")


def test_unsorted_input_equals_stably_presorted_input_bit_for_bit():
    arrays = random_pair_batch(500, 13)
    segment = random_segments(500, 40, seed=6, empty=(3,))
    order = np.argsort(segment, kind="stable")
    unsorted = numba_density.centre_density(*arrays, GTO6, segment, 40)
    presorted = numba_density.centre_density(*[a[order] for a in arrays], GTO6, segment[order], 40)
    for l, (a, b) in enumerate(zip(unsorted, presorted)):
        assert np.array_equal(a, b), f"l={l}: unsorted and pre-sorted input differ"


def test_lane_count_option():
    """Another lane count gives the same numbers to rounding (it sums in another order)."""
    arrays = random_pair_batch(60, 14)
    segment = random_segments(60, 7, seed=7, empty=())
    default = numba_density.centre_density(*arrays, GTO3, segment, 7)
    other = numba_density.centre_density(*arrays, GTO3, segment, 7, lanes=2)
    assert_density_close(other, default, GTO3, np.float64, "lanes=2")
    with pytest.raises(ValueError, match="lanes"):
        numba_density.centre_density(*arrays, GTO3, segment, 7, lanes=3)


def test_segment_as_list_or_int32_or_strided():
    arrays = random_pair_batch(30, 17)
    segment = np.sort(random_segments(30, 6, seed=9, empty=(2,)))
    expected = numba_density.centre_density(*arrays, GTO3, segment, 6)
    strided = np.repeat(segment, 2)[::2]
    for other in (segment.tolist(), segment.astype(np.int32), strided, np.uint16(6)):
        if isinstance(other, np.integer):  # n_segments as a NumPy integer
            actual = numba_density.centre_density(*arrays, GTO3, segment, other)
        else:
            actual = numba_density.centre_density(*arrays, GTO3, other, 6)
        for l, (a, b) in enumerate(zip(actual, expected)):
            assert np.array_equal(a, b), f"l={l}: {type(other).__name__} segment differs"


def test_registry_entry_is_this_function():
    assert load_variant("numba_fused", "density") is numba_density.centre_density
    assert density_function("numba_fused") is numba_density.centre_density


def test_segment_out_of_range_names_the_pair():
    arrays = random_pair_batch(8, 15)
    segment = np.array([0, 1, 1, 2, 3, 0, 2, 1])
    for bad in (4, -1):
        segment_bad = segment.copy()
        segment_bad[5] = bad
        with pytest.raises(ValueError, match=rf"segment of pair 5 is {bad}, outside \[0, n_segments = 4\)"):
            numba_density.centre_density(*arrays, GTO3, segment_bad, 4)
    with pytest.raises(ValueError, match="segment of pair 0"):
        numba_density.centre_density(*arrays, GTO3, segment, 0)
    with pytest.raises(ValueError, match="shape"):
        numba_density.centre_density(*arrays, GTO3, segment[:-1], 4)


@pytest.mark.parametrize("n_segments", [4.0, "4", None, True])
def test_non_int_n_segments_is_a_type_error(n_segments):
    arrays = random_pair_batch(8, 15)
    with pytest.raises(TypeError, match="n_segments must be an int"):
        numba_density.centre_density(*arrays, GTO3, np.zeros(8, np.int64), n_segments)


def test_non_integer_segment_is_a_type_error():
    arrays = random_pair_batch(8, 15)
    with pytest.raises(TypeError, match="segment must hold integers"):
        numba_density.centre_density(*arrays, GTO3, np.zeros(8), 1)


def test_hypers_must_be_expansion_hypers():
    arrays = random_pair_batch(8, 15)
    with pytest.raises(TypeError, match="hypers must be an ExpansionHypers, got dict"):
        numba_density.centre_density(*arrays, GTO3.as_dict(), np.zeros(8, np.int64), 1)


def test_dtype_mix_up_and_bad_threads_are_refused():
    arrays = random_pair_batch(4, 4)
    with pytest.raises(ValueError, match="mix-up"):
        numba_density.centre_density(*arrays, GTO3, np.zeros(4, np.int64), 1, dtype=np.float32)
    with pytest.raises(ValueError, match="threads"):
        numba_density.centre_density(*arrays, GTO3, np.zeros(4, np.int64), 1, threads=0)


# ---------------------------------------------------------------------------
# rotations and semi-axes per atom, read by neighbour (the AniSOAP pipeline's form)


def atoms_and_neighbours(n_pairs, n_atoms, seed, dtype=np.float64):
    """(r_ij, per-atom rotations and semi-axes, neighbour of each pair)."""
    r_ij, rotations, semiaxes = random_pair_batch(n_atoms, seed)
    rng = np.random.default_rng(seed)
    neighbour = rng.integers(0, n_atoms, size=n_pairs)
    r_pairs = random_pair_batch(n_pairs, seed + 1)[0]
    return r_pairs.astype(dtype), rotations.astype(dtype), semiaxes.astype(dtype), neighbour


@pytest.mark.parametrize("kernel", ["specialised", "generic"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_pairs, sort", [(700, True), (700, False), (3, True)],
                         ids=["sorted", "unsorted", "fewer-pairs-than-lanes"])
def test_rows_by_neighbour_equal_the_rows_gathered_per_pair_bit_for_bit(kernel, dtype, n_pairs, sort):
    """``neighbour=`` with per-atom arrays gives exactly the per-pair call on ``rotations[neighbour]``."""
    r_ij, rotations, semiaxes, neighbour = atoms_and_neighbours(n_pairs, 37, seed=11, dtype=dtype)
    segment = random_segments(n_pairs, 50, seed=12, empty=(7,))
    segment = np.sort(segment) if sort else segment
    for orthonormal in (False, True):
        by_atom = numba_density.centre_density(r_ij, rotations, semiaxes, GTO6, segment, 50, neighbour=neighbour,
                                               orthonormal=orthonormal, kernel=kernel)
        by_pair = numba_density.centre_density(r_ij, rotations[neighbour], semiaxes[neighbour], GTO6, segment, 50,
                                               orthonormal=orthonormal, kernel=kernel)
        for l, (a, b) in enumerate(zip(by_atom, by_pair)):
            assert a.dtype == np.dtype(dtype) and np.array_equal(a, b), f"orthonormal={orthonormal} l={l} differ"
        expected = reference_density(r_ij.astype(np.float64), rotations[neighbour].astype(np.float64),
                                     semiaxes[neighbour].astype(np.float64), GTO6, segment, 50,
                                     orthonormal=orthonormal)
        assert_density_close(by_atom, expected, GTO6, dtype, f"{kernel} orthonormal={orthonormal}")


def test_rows_by_neighbour_through_the_registry_for_every_density_variant():
    """``density_function(name, per_atom=True)``: numba_fused's own form, the others gather first; same numbers."""
    r_ij, rotations, semiaxes, neighbour = atoms_and_neighbours(120, 9, seed=13)
    segment = np.sort(random_segments(120, 10, seed=14))
    for name in ("numba_fused", "numpy_einsum"):
        function = density_function(name, per_atom=True)
        actual = function(r_ij, rotations, semiaxes, GTO3, segment, 10, neighbour=neighbour, orthonormal=True)
        expected = reference_density(r_ij, rotations[neighbour], semiaxes[neighbour], GTO3, segment, 10,
                                     orthonormal=True)
        assert_density_close(actual, expected, GTO3, np.float64, name)
    assert density_function("numba_fused", per_atom=True) is numba_density.centre_density


def test_bad_neighbour_is_refused_with_the_offending_value():
    r_ij, rotations, semiaxes, neighbour = atoms_and_neighbours(10, 4, seed=15)
    segment = np.zeros(10, np.int64)
    outside = neighbour.copy()
    outside[6] = 4
    with pytest.raises(ValueError, match=r"neighbour\[6\] = 4 is not a row of the 4 atoms"):
        numba_density.centre_density(r_ij, rotations, semiaxes, GTO3, segment, 1, neighbour=outside)
    outside[6] = -1
    with pytest.raises(ValueError, match=r"neighbour\[6\] = -1"):
        numba_density.centre_density(r_ij, rotations, semiaxes, GTO3, segment, 1, neighbour=outside)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        numba_density.centre_density(r_ij, rotations, semiaxes, GTO3, segment, 1, neighbour=neighbour[:9])
    with pytest.raises(TypeError, match="integers"):
        numba_density.centre_density(r_ij, rotations, semiaxes, GTO3, segment, 1, neighbour=neighbour * 1.0)
    with pytest.raises(ValueError, match=r"\(N, 3, 3\)"):
        numba_density.centre_density(r_ij, rotations[:, :2], semiaxes, GTO3, segment, 1, neighbour=neighbour)


def test_a_bad_atom_read_by_neighbour_gives_the_per_pair_error():
    """A semi-axis <= 0 of an atom: the error names the first pair that reads it, as the per-pair call does."""
    r_ij, rotations, semiaxes, neighbour = atoms_and_neighbours(40, 6, seed=16)
    semiaxes[neighbour[5], 1] = -1.0
    segment = np.zeros(40, np.int64)
    with pytest.raises(ValueError) as by_pair:
        numba_density.centre_density(r_ij, rotations[neighbour], semiaxes[neighbour], GTO3, segment, 1)
    with pytest.raises(ValueError) as by_atom:
        numba_density.centre_density(r_ij, rotations, semiaxes, GTO3, segment, 1, neighbour=neighbour)
    assert str(by_atom.value) == str(by_pair.value)

"""The ``numba_fused`` gradient variant (``kernels.numba.gradients``).

Against the finite-difference reference (``reference.gradients``) for lmax
0..8, GTO and monomial, needle-, plate-, sphere-like and general ellipsoids
and self pairs; values bit-identical to ``numba_fused.expand``'s specialised
kernel; bit-identical for any thread count and batch position; float32
against float64; the constant rotation generators (the input screen's errors: ``test_screen.py``).
Each hyper-parameter set compiles once per machine (Numba's disk cache);
compile time is measured and reported, not asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_fused gradients need numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import pairs as numba_fused  # noqa: E402
from einsum_workbench.kernels.numba.codegen import gradients as numba_gradient_codegen  # noqa: E402
from einsum_workbench.kernels.numba import gradients as numba_gradients  # noqa: E402
from einsum_workbench.reference.gradients import finite_difference_gradients  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

GTO4 = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)
FIELDS = ("values", "positions", "orientations")

#: Finite differences are good to ~1e-9 relative on these pairs (reference.gradients); the
#: kernel must agree to this fraction of each block's largest magnitude.
FD_RTOL = 1e-6


def shaped_batch(seed: int, max_distance: float = 6.0):
    """Two pairs of each semi-axis family (needles, plates, spheres, general) and a self pair."""
    parts = [random_pair_batch(2, seed + i, shape=shape, max_distance=max_distance)
             for i, shape in enumerate(("prolate", "oblate", "spherical", "general"))]
    parts.append(random_pair_batch(1, seed + 9, shape="general", self_pair_fraction=1.0))
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def assert_blocks_close(ours, expected, what: str, rtol: float = FD_RTOL, values=None):
    """Per l, ``ours`` close to ``expected`` to ``rtol`` of the block's largest magnitude, or of the
    values' (``values``: the finite differences' rounding noise, ~1e-11 of the values, is all there
    is where a derivative vanishes, e.g. the monomial l = 0 along rotations)."""
    for l, (a, b) in enumerate(zip(ours, expected)):
        assert a.shape == b.shape, f"{what} l={l}: shape {a.shape} != {b.shape}"
        scale = max(float(np.abs(b).max(initial=0.0)), 1e-300)
        if values is not None:
            scale = max(scale, float(np.abs(values[l]).max(initial=0.0)))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=f"{what} l={l}")


@pytest.mark.parametrize("basis", ["gto", "monomial"])
@pytest.mark.parametrize("lmax", range(9))
def test_against_finite_differences(lmax, basis):
    if basis == "gto":
        hypers = ExpansionHypers(lmax, "gto", cutoff=7.0, sigma=1.5)
        arrays = shaped_batch(10 * lmax)
    else:
        hypers = ExpansionHypers(lmax, "monomial", cutoff=4.0)
        arrays = shaped_batch(10 * lmax + 5, max_distance=3.0)
    ours = numba_gradients.expand_with_gradients(*arrays, hypers)
    fd = finite_difference_gradients(*arrays, hypers)
    assert ours.semiaxes is None
    for field in FIELDS:
        assert_blocks_close(getattr(ours, field), getattr(fd, field), f"{basis} lmax {lmax} {field}", values=fd.values)


@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_semiaxes_gradients_against_finite_differences(basis):
    hypers = (ExpansionHypers(5, "gto", cutoff=7.0, sigma=1.5) if basis == "gto"
              else ExpansionHypers(4, "monomial", cutoff=4.0, max_radial=2))
    arrays = shaped_batch(77, max_distance=6.0 if basis == "gto" else 3.0)
    ours = numba_gradients.expand_with_gradients(*arrays, hypers, semiaxes_gradients=True)
    fd = finite_difference_gradients(*arrays, hypers, semiaxes_gradients=True)
    for field in FIELDS + ("semiaxes",):
        assert_blocks_close(getattr(ours, field), getattr(fd, field), f"{basis} {field}", values=fd.values)


def test_values_bit_identical_to_numba_fused():
    arrays = random_pair_batch(203, 3, self_pair_fraction=0.05)
    values = numba_fused.expand(*arrays, GTO4, kernel="specialised")
    for semiaxes, lanes in ((False, None), (True, None), (False, 4), (False, 2)):
        ours = numba_gradients.expand_with_gradients(*arrays, GTO4, semiaxes_gradients=semiaxes, lanes=lanes)
        for l, (a, b) in enumerate(zip(ours.values, values)):
            assert np.array_equal(a, b), f"semiaxes_gradients={semiaxes}, lanes {lanes}, l={l}: values differ"


def test_bit_identical_across_thread_counts():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"Numba launched {numba.config.NUMBA_NUM_THREADS} thread (NUMBA_NUM_THREADS); "
                    "the 1-vs-2-thread comparison did not run")
    arrays = random_pair_batch(2051, 5, self_pair_fraction=0.05)  # not a multiple of any lane count
    for dtype, semiaxes in ((np.float64, False), (np.float32, False), (np.float64, True)):
        inputs = [a.astype(dtype) for a in arrays]
        one = numba_gradients.expand_with_gradients(*inputs, GTO4, threads=1, semiaxes_gradients=semiaxes)
        two = numba_gradients.expand_with_gradients(*inputs, GTO4, threads=2, semiaxes_gradients=semiaxes)
        for field in FIELDS + (("semiaxes",) if semiaxes else ()):
            for l, (a, b) in enumerate(zip(getattr(one, field), getattr(two, field))):
                assert np.array_equal(a, b), f"{np.dtype(dtype)} {field} l={l}: 1 and 2 threads differ"


def test_bit_identical_whatever_the_position_in_the_batch():
    arrays = random_pair_batch(37, 6)
    whole = numba_gradients.expand_with_gradients(*arrays, GTO4)
    for part in (slice(5, 6), slice(3, 14), slice(30, 37)):
        alone = numba_gradients.expand_with_gradients(*(a[part] for a in arrays), GTO4)
        for field in FIELDS:
            for l, (a, b) in enumerate(zip(getattr(alone, field), getattr(whole, field))):
                assert np.array_equal(a, b[part]), f"{field} l={l}, pairs {part}: differs inside a larger batch"


def test_shapes_dtypes_and_empty_batch():
    out = numba_gradients.expand_with_gradients(*random_pair_batch(6, 1), GTO4)
    empty = numba_gradients.expand_with_gradients(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), GTO4)
    for l, n in enumerate(GTO4.num_radial):
        assert out.values[l].shape == (6, 2 * l + 1, n) and out.values[l].dtype == np.float64
        for field in ("positions", "orientations"):
            assert getattr(out, field)[l].shape == (6, 3, 2 * l + 1, n)
            assert getattr(out, field)[l].flags.c_contiguous
            assert getattr(empty, field)[l].shape == (0, 3, 2 * l + 1, n)
        assert empty.values[l].shape == (0, 2 * l + 1, n)


def test_float32_against_float64():
    arrays = shaped_batch(21)
    double = numba_gradients.expand_with_gradients(*arrays, GTO4, semiaxes_gradients=True)
    single = numba_gradients.expand_with_gradients(*(a.astype(np.float32) for a in arrays), GTO4,
                                                   semiaxes_gradients=True)
    for field in FIELDS + ("semiaxes",):
        assert all(block.dtype == np.float32 for block in getattr(single, field))
        # float32 (eps 6e-8) through cancellations of up to ~1e3: stated tolerance 1e-3 of the block maximum
        assert_blocks_close([b.astype(np.float64) for b in getattr(single, field)], getattr(double, field),
                            f"float32 {field}", rtol=1e-3)


def test_bad_threads_and_hypers():
    arrays = random_pair_batch(4, 0)
    with pytest.raises(ValueError, match="threads"):
        numba_gradients.expand_with_gradients(*arrays, GTO4, threads=0)
    with pytest.raises(TypeError):
        numba_gradients.expand_with_gradients(*arrays, {"lmax": 4})
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        numba_gradients.expand_with_gradients(*arrays, GTO4, lanes=3)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        numba_gradients.expand_with_gradients(*arrays, GTO4, dtype=np.float16)


def test_rotation_generators_are_angular_momentum():
    """In the (equally normalised) real solid harmonics the generators are antisymmetric
    and close the rotation algebra: [L_x, L_y] = L_z, cyclically, and the Casimir is -l (l + 1)."""
    for l, generators in enumerate(numba_gradient_codegen.rotation_generators(ExpansionHypers(6, "gto", 7.0, 1.5))):
        for alpha in range(3):
            np.testing.assert_allclose(generators[alpha], -generators[alpha].T, atol=1e-12, err_msg=f"l={l}")
        x, y, z = generators
        np.testing.assert_allclose(x @ y - y @ x, z, atol=1e-10, err_msg=f"l={l}")
        np.testing.assert_allclose(y @ z - z @ y, x, atol=1e-10, err_msg=f"l={l}")
        np.testing.assert_allclose(-(x @ x + y @ y + z @ z), l * (l + 1) * np.eye(2 * l + 1), atol=1e-9,
                                   err_msg=f"l={l}")


def test_output_memory_is_recycled_only_when_no_result_is_alive():
    import gc

    from einsum_workbench.kernels.numba import gradients as ng
    from einsum_workbench.reference.compare import make_hypers
    from einsum_workbench.reference.random_pairs import random_pair_batch

    hypers = make_hypers(3, "gto")
    arrays = random_pair_batch(40, 5, shape="mixed")
    first = ng.expand_with_gradients(*arrays, hypers)
    kept = [a.copy() for a in first.positions]
    second = ng.expand_with_gradients(*arrays, hypers)          # first is alive: fresh memory
    assert not np.shares_memory(first.positions[0], second.positions[0])
    for a, b in zip(first.positions, kept):
        np.testing.assert_array_equal(a, b)
    only_view = second.orientations[2]
    del first, second
    gc.collect()
    third = ng.expand_with_gradients(*arrays, hypers)           # one view of second still alive
    assert not np.shares_memory(third.values[0], only_view)
    del only_view, third
    gc.collect()
    fourth = ng.expand_with_gradients(*arrays, hypers)          # nothing alive: recycled
    assert fourth.values[0].base is ng._spare[np.dtype(np.float64)]
    for a, b in zip(fourth.positions, kept):
        np.testing.assert_array_equal(a, b)

"""The reference backward pass (``reference.backward``) against finite differences of the centre density.

``centre_density_backward`` contracts the reference pair gradients with the
cotangent turned raw (``g_l W_l^T``); ``finite_difference_backward``
recomputes a whole centre density (``reference.density.centre_density``,
its own orthonormalisation) with one pair moved at a time and differentiates
``L = sum_l <g_l, rho_l>``. The two share only the step sizes, so a wrong
transpose of ``W``, a wrong gather of the cotangent or a wrong sign of a
rotation shows here.

Tolerance: both are central differences with errors near 1e-9 relative:
``rtol = 1e-6``, ``atol = 1e-6 x`` the largest |value| over r, theta and
the semi-axes (quantities that vanish identically, e.g. theta on a sphere,
meet rounding noise only).
"""

from __future__ import annotations

import numpy as np
import pytest

from einsum_workbench.reference.backward import (
    PairCotangents,
    centre_density_backward,
    check_cotangent,
    density_functional,
    finite_difference_backward,
    raw_cotangent,
)
from einsum_workbench.reference.compare import make_hypers
from einsum_workbench.reference.density import centre_density
from einsum_workbench.reference.random_pairs import random_pair_batch

SEGMENT = np.array([0, 2, 2, 0, 3, 2, 0, 3, 3, 0])
N_SEGMENTS = 5  # rows 1 and 4 without pairs


def _case(hypers, seed, shape="mixed"):
    r, rot, ax = random_pair_batch(len(SEGMENT), seed=seed, shape=shape, max_distance=5.0)
    r[7] = 0.0  # a self pair
    rng = np.random.default_rng(seed + 100)
    g = [rng.normal(size=(N_SEGMENTS, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]
    return r, rot, ax, g


def _close(actual: PairCotangents, expected: PairCotangents, label):
    largest = max(np.abs(x).max() for x in expected if x is not None)
    for q, a, e in zip(PairCotangents._fields, actual, expected):
        if e is None:
            assert a is None, (label, q)
            continue
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6 * largest, err_msg=f"{label} {q}")


@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("lmax,basis,max_radial,shape", [
    (2, "gto", None, "mixed"), (3, "monomial", 2, "mixed"), (4, "gto", [2, 1, 1, 0, 1], "prolate"),
    (3, "gto", 1, "oblate"),
])
def test_reference_matches_finite_differences_of_the_density(lmax, basis, max_radial, shape, orthonormal):
    hypers = make_hypers(lmax, basis, max_radial)
    r, rot, ax, g = _case(hypers, lmax * 10 + len(basis))
    expected = finite_difference_backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal,
                                          semiaxes_gradients=True)
    assert max(np.abs(x).max() for x in expected) > 1e-2  # a real signal
    actual = centre_density_backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal,
                                     semiaxes_gradients=True)
    _close(actual, expected, f"lmax {lmax} {basis} {shape} orthonormal={orthonormal}")


def test_raw_cotangent_is_the_transpose_of_the_orthonormalisation():
    """<g, rho W> = <g W^T, rho> for the reference density (the identity the backward pass rests on)."""
    hypers = make_hypers(4, "gto")
    r, rot, ax, g = _case(hypers, 3)
    raw = centre_density(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, orthonormal=False)
    orth = centre_density(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, orthonormal=True)
    lhs = density_functional(orth, g)
    rhs = density_functional(raw, raw_cotangent(g, hypers, True))
    assert abs(lhs) > 1e-3
    assert lhs == pytest.approx(rhs, rel=1e-12)
    assert raw_cotangent(g, hypers, False) == g


def test_semiaxes_only_when_asked_and_dtype():
    hypers = make_hypers(2, "gto")
    r, rot, ax, g = _case(hypers, 4)
    out = centre_density_backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g)
    assert out.semiaxes is None and out.r.shape == out.theta.shape == (len(SEGMENT), 3)
    r32, rot32, ax32 = (a.astype(np.float32) for a in (r, rot, ax))
    out32 = centre_density_backward(r32, rot32, ax32, hypers, SEGMENT, N_SEGMENTS, g)
    assert out32.r.dtype == np.float32 and out32.theta.dtype == np.float32
    # computed in float64 on the float32-rounded inputs (about 1e-7 relative away from the float64 ones)
    np.testing.assert_allclose(out32.r, out.r, rtol=1e-4, atol=1e-4 * np.abs(out.r).max())


def test_check_cotangent_names_the_l_and_the_shape():
    hypers = make_hypers(2, "monomial", 1)
    good = [np.zeros((3, 2 * l + 1, 2)) for l in range(3)]
    assert all(a.dtype == np.float64 for a in check_cotangent(good, hypers, 3))
    bad = list(good)
    bad[1] = np.zeros((3, 2, 2))
    with pytest.raises(ValueError, match=r"cotangent for l = 1 must have shape \(3, 3, 2\).*got \(3, 2, 2\)"):
        check_cotangent(bad, hypers, 3)
    bad[1] = np.zeros((3, 3, 2), dtype=complex)
    with pytest.raises(TypeError, match=r"cotangent for l = 1 must be real-valued"):
        check_cotangent(bad, hypers, 3)
    with pytest.raises(ValueError, match=r"one array per l = 0\.\.2 \(3\), got 4"):
        check_cotangent(good + good[:1], hypers, 3)

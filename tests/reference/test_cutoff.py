"""The shifted-cosine smooth cutoff (``reference.cutoff.ShiftedCosine``): the function, its derivative, bad input.

Checked against the closed form written out here, against central finite
differences of itself (step 1e-6 angstrom inside the shell, where f is
smooth: error ~ (pi / w)^3 h^2, below 1e-10), at its limits (exactly 1 at
and below ``rc - w``, exactly 0 at and beyond ``rc``, a zero derivative at
both ends and for a self pair) and on bad input (a clear error naming the value).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from einsum_workbench.reference.cutoff import ShiftedCosine

CUTOFF = 7.0
WIDTH = 2.0


def closed_form(r, cutoff=CUTOFF, width=WIDTH):
    """f and f' from DESIGN.md section 3, one distance at a time."""
    if r <= cutoff - width:
        return 1.0, 0.0
    if r >= cutoff:
        return 0.0, 0.0
    phase = math.pi * (r - cutoff + width) / width
    return 0.5 * (1.0 + math.cos(phase)), -0.5 * math.pi / width * math.sin(phase)


DISTANCES = np.array([0.0, 1e-12, 2.5, 4.999999, 5.0, 5.000001, 5.3, 6.0, 6.7, 6.999999, 7.0, 7.000001, 9.0, 500.0])


def test_values_and_derivatives_follow_the_closed_form():
    cutoff = ShiftedCosine(WIDTH)
    f, df = cutoff.values(DISTANCES, CUTOFF), cutoff.derivatives(DISTANCES, CUTOFF)
    assert f.dtype == df.dtype == np.float64 and f.shape == df.shape == DISTANCES.shape
    expected = np.array([closed_form(r) for r in DISTANCES])
    np.testing.assert_allclose(f, expected[:, 0], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(df, expected[:, 1], rtol=1e-14, atol=1e-15)
    assert np.all((f >= 0.0) & (f <= 1.0)) and np.all(np.diff(f) <= 0.0) and np.all(df <= 0.0)


def test_derivative_equals_finite_differences_in_the_shell():
    cutoff, h = ShiftedCosine(WIDTH), 1e-6
    r = np.linspace(CUTOFF - WIDTH + 0.01, CUTOFF - 0.01, 41)
    numeric = (cutoff.values(r + h, CUTOFF) - cutoff.values(r - h, CUTOFF)) / (2 * h)
    np.testing.assert_allclose(cutoff.derivatives(r, CUTOFF), numeric, rtol=1e-8, atol=1e-10)


def test_limits_are_exact():
    cutoff = ShiftedCosine(WIDTH)
    ends = np.array([0.0, CUTOFF - WIDTH, CUTOFF, CUTOFF + 1.0])
    np.testing.assert_array_equal(cutoff.values(ends, CUTOFF), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(cutoff.derivatives(ends, CUTOFF), [0.0, 0.0, 0.0, 0.0])
    # continuous with its first derivative at both ends: f ~ 1 - (pi t / 2w)^2 and (pi s / 2w)^2
    for t in (1e-2, 1e-3, 1e-4):
        below_end, above_start = np.array([CUTOFF - t]), np.array([CUTOFF - WIDTH + t])
        bound = (math.pi * t / (2 * WIDTH)) ** 2 * (1 + 1e-9)  # 1e-9: the rounding of rc - t
        assert 0.0 < cutoff.values(below_end, CUTOFF)[0] <= bound
        assert 0.0 < 1.0 - cutoff.values(above_start, CUTOFF)[0] <= bound + 1e-15  # 1 - f rounds to 1e-16
        for r in (below_end, above_start):
            assert 0.0 < -cutoff.derivatives(r, CUTOFF)[0] <= math.pi ** 2 * t / (2 * WIDTH ** 2) * (1 + 1e-9)


def test_width_equal_to_the_cutoff_fades_from_the_centre():
    cutoff = ShiftedCosine(CUTOFF)
    r = np.array([0.0, 1e-8, 3.5, CUTOFF])
    f, df = cutoff.values(r, CUTOFF), cutoff.derivatives(r, CUTOFF)
    assert f[0] == 1.0 and df[0] == 0.0  # a self pair
    assert 1.0 - 1e-15 < f[1] <= 1.0 and f[2] == pytest.approx(0.5, abs=1e-15) and f[3] == 0.0


def test_pair_factors_gradient_points_along_the_pair():
    cutoff, h = ShiftedCosine(WIDTH), 1e-6
    rng = np.random.default_rng(4)
    direction = rng.normal(size=(6, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r_ij = direction * np.array([0.0, 3.0, 5.5, 6.2, 6.9, 8.0])[:, None]
    with np.errstate(all="raise"):  # the self pair is never divided by
        f, gradient = cutoff.pair_factors(r_ij, CUTOFF)
    np.testing.assert_array_equal(f, cutoff.values(np.linalg.norm(r_ij, axis=1), CUTOFF))
    assert gradient.shape == (6, 3) and gradient.dtype == np.float64
    np.testing.assert_array_equal(gradient[[0, 1, 5]], 0.0)
    for alpha in range(3):
        step = np.zeros(3)
        step[alpha] = h
        numeric = (cutoff.pair_factors(r_ij + step, CUTOFF)[0] - cutoff.pair_factors(r_ij - step, CUTOFF)[0]) / (2 * h)
        np.testing.assert_allclose(gradient[2:5, alpha], numeric[2:5], rtol=1e-7, atol=1e-10)


def test_width_is_stored_as_float_and_frozen():
    cutoff = ShiftedCosine(2)
    assert isinstance(cutoff.width, float) and cutoff.width == 2.0
    assert cutoff == ShiftedCosine(2.0) and hash(cutoff) == hash(ShiftedCosine(2.0))
    with pytest.raises(AttributeError):
        cutoff.width = 3.0


def test_exported_where_users_look():
    import einsum_workbench.pipeline as pipeline
    import einsum_workbench.reference as reference

    assert reference.ShiftedCosine is ShiftedCosine and pipeline.ShiftedCosine is ShiftedCosine
    assert "ShiftedCosine" in reference.__all__ and "ShiftedCosine" in pipeline.__all__


@pytest.mark.parametrize("width,error,words", [
    (0.0, ValueError, "width must be finite and > 0 (angstrom), got 0.0"),
    (-1.5, ValueError, "got -1.5"),
    (float("nan"), ValueError, "got nan"),
    (float("inf"), ValueError, "got inf"),
    ("2.0", TypeError, "width must be a real number (angstrom), got '2.0'"),
    (True, TypeError, "got True"),
    (None, TypeError, "got None"),
    (1 + 2j, TypeError, "got (1+2j)"),
])
def test_bad_width_is_named(width, error, words):
    with pytest.raises(error) as caught:
        ShiftedCosine(width)
    assert words in str(caught.value)


@pytest.mark.parametrize("call,args,error,words", [
    ("values", ([1.0], 1.5), ValueError, "width = 2.0 angstrom is larger than the cutoff 1.5"),
    ("derivatives", ([1.0], 1.5), ValueError, "larger than the cutoff 1.5"),
    ("values", ([1.0], 0.0), ValueError, "cutoff must be finite and > 0 (angstrom), got 0.0"),
    ("values", ([1.0], "7"), TypeError, "cutoff must be a real number (angstrom), got '7'"),
    ("values", ([1.0, -0.5], 7.0), ValueError, "pair 1 has -0.5"),
    ("derivatives", ([1.0, 2.0, np.nan], 7.0), ValueError, "pair 2 has nan"),
    ("values", ([[1.0, 2.0]], 7.0), ValueError, "r must have shape (P,), one distance per pair, got (1, 2)"),
    ("values", (np.array([1 + 0j]), 7.0), TypeError, "got dtype complex128"),
    ("pair_factors", (np.zeros((2, 2)), 7.0), ValueError, "r_ij must have shape (P, 3), got (2, 2)"),
])
def test_bad_call_is_named(call, args, error, words):
    with pytest.raises(error) as caught:
        getattr(ShiftedCosine(WIDTH), call)(*args)
    assert words in str(caught.value)

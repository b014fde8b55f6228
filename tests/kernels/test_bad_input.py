"""Bad input raises a clear error naming the offending value, in every variant.

(Frame-level bad input — non-finite positions in frames, zero-norm
quaternions, semi-axes read from files — is covered in test_pairs.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from einsum_workbench.kernels.registry import VARIANTS, get_variant, load_variant
from einsum_workbench.reference.hypers import ExpansionHypers, num_radial_per_l
from einsum_workbench.reference.random_pairs import random_pair_batch

HYPERS = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
def expand(request, load_or_skip):
    return load_or_skip(request.param)


def _batch():
    return [a.copy() for a in random_pair_batch(6, 1)]


def test_non_finite_vector_is_named(expand):
    r_ij, rotations, semiaxes = _batch()
    r_ij[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"r_ij has a non-finite value at pair 4"):
        expand(r_ij, rotations, semiaxes, HYPERS)


@pytest.mark.parametrize("bad", [0.0, -1.5])
def test_non_positive_semiaxis_is_named(expand, bad):
    r_ij, rotations, semiaxes = _batch()
    semiaxes[2, 0] = bad
    with pytest.raises(ValueError, match=rf"semiaxes must be > 0; pair 2 has \[{bad}"):
        expand(r_ij, rotations, semiaxes, HYPERS)


def test_non_orthonormal_rotation_is_named(expand):
    r_ij, rotations, semiaxes = _batch()
    rotations[3] *= 1.1
    with pytest.raises(ValueError, match=r"rotation at pair 3 is not orthonormal"):
        expand(r_ij, rotations, semiaxes, HYPERS)


def test_reflection_is_rejected(expand):
    r_ij, rotations, semiaxes = _batch()
    rotations[1] = -rotations[1]
    with pytest.raises(ValueError, match=r"rotation at pair 1 is a reflection"):
        expand(r_ij, rotations, semiaxes, HYPERS)


def test_float32_float64_mix_up(expand):
    r_ij, rotations, semiaxes = _batch()
    with pytest.raises(ValueError, match=r"mix floating dtypes \['float32', 'float64'\]"):
        expand(r_ij.astype(np.float32), rotations, semiaxes, HYPERS)
    with pytest.raises(ValueError, match=r"dtype=float32 requested but the inputs are float64"):
        expand(r_ij, rotations, semiaxes, HYPERS, dtype=np.float32)
    with pytest.raises(ValueError, match=r"dtype must be float32 or float64, got float16"):
        expand(*(a.astype(np.float16) for a in (r_ij, rotations, semiaxes)), HYPERS)


def test_shape_mismatch_is_named(expand):
    r_ij, rotations, semiaxes = _batch()
    with pytest.raises(ValueError, match=r"semiaxes must have shape \(6, 3\) to match r_ij, got \(5, 3\)"):
        expand(r_ij, rotations, semiaxes[:5], HYPERS)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lmax=-1, sigma=1.0), ValueError, r"lmax must be >= 0, got -1"),
    (dict(lmax=2.5, sigma=1.0), TypeError, r"lmax must be an int, got 2.5"),
    (dict(lmax=3, radial_basis="gto"), ValueError, r"needs a width: sigma=None"),
    (dict(lmax=3, radial_basis="monomial", sigma=1.0), ValueError, r"sigma=1.0 with 'monomial'"),
    (dict(lmax=3, radial_basis="slater", sigma=1.0), ValueError, r"radial_basis must be one of .* got 'slater'"),
    (dict(lmax=3, sigma=1.0, max_radial=[1, 2]), ValueError, r"lmax \+ 1 = 4 entries .* got 2: \[1, 2\]"),
    (dict(lmax=2, sigma=1.0, max_radial=[1, -2, 0]), ValueError, r"max_radial\[1\] must be >= 0, got -2"),
    (dict(lmax=2, sigma=1.0, max_radial="3"), TypeError, r"max_radial must be None, an int or a list of ints, got '3'"),
    (dict(lmax=2, sigma=1.0, cutoff=0), ValueError, r"cutoff must be finite and > 0, got 0.0"),
    (dict(lmax=2, sigma=float("nan")), ValueError, r"sigma must be finite and > 0, got nan"),
])
def test_bad_hyper_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        ExpansionHypers(**kwargs)


def test_int_cutoff_is_accepted_as_float():
    hypers = ExpansionHypers(2, "gto", cutoff=7, sigma=1)
    assert isinstance(hypers.cutoff, float) and hypers.cutoff == 7.0
    assert isinstance(hypers.sigma, float)


@pytest.mark.parametrize("lmax,max_radial,expected", [
    (6, None, (4, 3, 3, 2, 2, 1, 1)),
    (3, 2, (3, 3, 3, 3)),
    (2, [0, 4, 1], (1, 5, 2)),
])
def test_radial_count_rules(lmax, max_radial, expected):
    assert num_radial_per_l(lmax, max_radial) == expected
    assert ExpansionHypers(lmax, "gto", sigma=1.0, max_radial=max_radial).num_radial == expected


def test_unknown_variant_lists_the_valid_names():
    with pytest.raises(KeyError, match=r"unknown variant 'numpy_einsun'; registered variants: reference, numpy_einsum"):
        get_variant("numpy_einsun")


def test_unavailable_variant_says_why():
    unavailable = [v for v in VARIANTS if not v.available]
    if not unavailable:
        pytest.skip("every registered variant is available on this machine; nothing to check")
    v = unavailable[0]
    with pytest.raises(RuntimeError, match=rf"variant '{v.name}' is unavailable: "):
        load_variant(v.name)

"""Every centre-density variant against the reference density.

A variant joins this suite by being in ``kernels.registry.DENSITY_VARIANTS``.
The pair backends without an entry of their own get their density through
``density_function`` (their expansion, proven by the pair suite, plus one
shared segment sum); they run the frame, empty-batch, bad-input tests and
three of the hyper-parameter sets. Variants that cannot run here are skipped
with the registry's reason, never passed.

The reference is the reference expansion summed per segment in pair order
(upstream's order), computed in float64. Tolerances are
``reference.compare``'s (float64 rtol 1e-6, atol 1e-8 x block max; float32
rtol 1e-3, atol 1e-4 x block max), on the raw sums and, separately, on the
variant's own ``orthonormal=True`` output against the reference's.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from einsum_workbench.kernels.registry import DENSITY_VARIANTS, VARIANTS, density_function, get_variant
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, make_hypers
from einsum_workbench.reference.density import centre_density as reference_density
from einsum_workbench.reference.random_pairs import random_pair_batch

DENSITY_NAMES = {v.name for v in DENSITY_VARIANTS}
OWN = [v.name for v in DENSITY_VARIANTS if v.name != "reference"]
THROUGH_EXPANSION = [v.name for v in VARIANTS if v.name not in DENSITY_NAMES]
FEW_HYPERS = ("l0-gto-default", "l5-gto-int", "l8-monomial-list")


def _loaded(name):
    variant = get_variant(name, "density") if name in DENSITY_NAMES else get_variant(name)
    reason = variant.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{name} centre density not run on this machine: {reason}")
    return name, density_function(name)


@pytest.fixture(params=OWN + THROUGH_EXPANSION)
def density(request):
    return _loaded(request.param)


@pytest.fixture(params=OWN)
def own_density(request):
    return _loaded(request.param)


@functools.lru_cache(maxsize=None)
def _case(n_pairs, seed, shape, n_segments, dtype):
    """Pairs, and unsorted segments of which a few are empty and one holds one pair."""
    arrays = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    rng = np.random.default_rng(seed)
    segment = rng.integers(0, n_segments - 3, n_pairs)   # the last three rows stay empty ...
    segment[0] = n_segments - 2                           # ... but one, which gets a single pair
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays) + (segment,)


@functools.lru_cache(maxsize=None)
def _reference(hypers, key, orthonormal):
    r_ij, rotations, semiaxes, segment = _case(*key)
    return reference_density(r_ij.astype(np.float64), rotations.astype(np.float64), semiaxes.astype(np.float64),
                             hypers, segment, key[3], orthonormal=orthonormal)


def _compare(name, compute, hypers, key, dtype):
    r_ij, rotations, semiaxes, segment = _case(*key)
    for orthonormal in (False, True):
        actual = compute(r_ij, rotations, semiaxes, hypers, segment, key[3], dtype=dtype, orthonormal=orthonormal)
        assert [a.shape for a in actual] == [(key[3], 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert_coefficients_close(actual, _reference(hypers, key, orthonormal), hypers, dtype,
                                  f"{name} density orthonormal={orthonormal}", orthonormalised=False)
        assert all(not a[key[3] - 3:][np.arange(3) != 1].any() for a in actual), "an empty segment is not zero"


def _float64_cases():
    """Every set for the variants with their own density, FEW_HYPERS for the others."""
    cases = [pytest.param(name, h, id=f"{name}-{case}") for case, h in equivalence_hypers() for name in OWN]
    return cases + [pytest.param(name, h, id=f"{name}-{case}") for case, h in equivalence_hypers()
                    if case in FEW_HYPERS for name in THROUGH_EXPANSION]


@pytest.mark.parametrize("name,hypers", _float64_cases())
def test_random_pairs_float64(name, hypers):
    name, compute = _loaded(name)
    _compare(name, compute, hypers, (40, 300 + hypers.lmax, "mixed", 9, np.float64), np.float64)


@pytest.mark.parametrize("lmax,basis,max_radial", [
    pytest.param(0, "gto", None, id="l0-gto"),
    pytest.param(6, "gto", None, id="l6-gto-default"),
    pytest.param(8, "monomial", [3, 2, 2, 1, 1, 1, 0, 0, 0], id="l8-monomial-list"),
])
def test_random_pairs_float32(own_density, lmax, basis, max_radial):
    name, compute = own_density
    _compare(name, compute, make_hypers(lmax, basis, max_radial), (40, 400 + lmax, "mixed", 9, np.float32),
             np.float32)


@pytest.mark.parametrize("shape", ["spherical", "prolate", "oblate"])
def test_extreme_shapes(own_density, shape):
    name, compute = own_density
    _compare(name, compute, make_hypers(6, "gto", None), (48, 5, shape, 6, np.float64), np.float64)


def test_frame_segments(density):
    """Real frames, several species, segments from the pipeline's layout."""
    from einsum_workbench.pipeline.layout import density_layout
    from einsum_workbench.reference.pairs import frames_to_pairs
    from einsum_workbench.reference.workloads import benzenes

    name, compute = density
    pairs = frames_to_pairs(benzenes(1, seed=3, n_species=3), 4.0)
    layout, segment = density_layout(pairs)
    hypers = make_hypers(4, "gto", None)
    expected = reference_density(*pairs.arrays(), hypers, segment, layout.n_segments, orthonormal=True)
    actual = compute(*pairs.arrays(), hypers, segment, layout.n_segments, dtype=np.float64, orthonormal=True)
    assert_coefficients_close(actual, expected, hypers, np.float64, f"{name} frames", orthonormalised=False)


def test_empty_batch(density):
    name, compute = density
    hypers = make_hypers(3, "gto", None)
    for dtype in (np.float64, np.float32):
        empty = (np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype))
        out = compute(*empty, hypers, np.zeros(0, np.int64), 4, dtype=dtype)
        assert [b.shape for b in out] == [(4, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert all(b.dtype == np.dtype(dtype) and not b.any() for b in out)


@pytest.mark.parametrize("segment,n_segments,error,words", [
    ([0, 1, 5], 5, ValueError, "pair 2 is 5"),
    ([0, -1, 1], 5, ValueError, "pair 1 is -1"),
    ([0, 1], 5, ValueError, "shape (3,)"),
    ([0.0, 1.0, 2.0], 5, TypeError, "integers"),
    ([0, 1, 2], 5.0, TypeError, "n_segments must be an int"),
])
def test_bad_segments_are_named(density, segment, n_segments, error, words):
    name, compute = density
    r_ij, rotations, semiaxes = random_pair_batch(3, 1)
    with pytest.raises(error) as caught:
        compute(r_ij, rotations, semiaxes, make_hypers(2, "gto", None), np.asarray(segment), n_segments)
    assert words in str(caught.value), f"{name}: {caught.value}"

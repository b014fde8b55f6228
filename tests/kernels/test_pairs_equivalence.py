"""Every registered variant against the reference.

A variant joins this suite by being in ``kernels.registry.VARIANTS``; nothing
here names one. Variants that cannot run on this machine are reported as
skipped with the registry's reason (e.g. no CUDA device), never as passed.

Tolerances: ``reference.compare`` (float64 rtol 1e-6, atol 1e-8 x block max;
float32 rtol 1e-3, atol 1e-4 x block max; raw and orthonormalised). The
reference runs in float64 on the same (float32-rounded) inputs.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from einsum_workbench.kernels.registry import VARIANTS
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.random_pairs import random_pair_batch


CANDIDATES = [v for v in VARIANTS if v.name != "reference"]


def _hyper_cases(sets=equivalence_hypers):
    return [pytest.param(h.lmax, h.radial_basis, h.max_radial, id=case) for case, h in sets()]


@pytest.fixture(params=CANDIDATES, ids=lambda v: v.name)
def variant(request, load_or_skip):
    return request.param.name, load_or_skip(request.param)


@functools.lru_cache(maxsize=None)
def _reference(hypers, inputs_key, dtype):
    r_ij, rotations, semiaxes = _inputs(inputs_key, dtype)
    return pairwise_ellip_expansion(
        r_ij.astype(np.float64), rotations.astype(np.float64), semiaxes.astype(np.float64), hypers
    )


@functools.lru_cache(maxsize=None)
def _inputs(inputs_key, dtype):
    n_pairs, seed, shape = inputs_key
    arrays = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _check_random_pairs(variant, hypers, dtype, seed):
    """24 mixed pairs drawn with ``seed`` in ``dtype``, against the reference in float64."""
    name, expand = variant
    key = (24, seed, "mixed")
    r_ij, rotations, semiaxes = _inputs(key, dtype)
    actual = expand(r_ij, rotations, semiaxes, hypers, dtype=dtype)
    assert_coefficients_close(actual, _reference(hypers, key, dtype), hypers, dtype, name)


@pytest.mark.parametrize("lmax,basis,max_radial", _hyper_cases())
def test_random_pairs_float64(variant, lmax, basis, max_radial):
    _check_random_pairs(variant, make_hypers(lmax, basis, max_radial), np.float64, 100 + lmax)


@pytest.mark.parametrize("lmax,basis,max_radial", _hyper_cases(float32_hypers))
def test_random_pairs_float32(variant, lmax, basis, max_radial):
    _check_random_pairs(variant, make_hypers(lmax, basis, max_radial), np.float32, 200 + lmax)


@pytest.mark.parametrize("shape", ["spherical", "prolate", "oblate"])
@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_extreme_shapes(variant, shape, basis):
    name, expand = variant
    hypers = make_hypers(6, basis, None)
    key = (32, 7, shape)
    r_ij, rotations, semiaxes = _inputs(key, np.float64)
    actual = expand(r_ij, rotations, semiaxes, hypers, dtype=np.float64)
    assert_coefficients_close(actual, _reference(hypers, key, np.float64), hypers, np.float64, f"{name} {shape}")


def test_empty_batch(variant):
    name, expand = variant
    hypers = make_hypers(4, "gto", None)
    for dtype in (np.float64, np.float32):
        out = expand(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype), hypers, dtype=dtype)
        assert [b.shape for b in out] == [(0, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert all(b.dtype == np.dtype(dtype) for b in out)


def test_inputs_left_untouched(variant):
    name, expand = variant
    hypers = make_hypers(4, "gto", None)
    arrays = random_pair_batch(10, 3)
    copies = [a.copy() for a in arrays]
    expand(*arrays, hypers)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


# Pairs from frames: species, periodic or not, self pairs on and off.
FRAME_CASES = [
    pytest.param("ellipsoids", 1, True, True, id="ellipsoids-1sp-periodic-self"),
    pytest.param("ellipsoids", 3, True, False, id="ellipsoids-3sp-periodic-noself"),
    pytest.param("benzenes", 2, True, True, id="benzenes-2sp-periodic-self"),
    pytest.param("benzenes", 4, False, False, id="benzenes-4sp-open-noself"),
    pytest.param("ellipsoids", 2, False, True, id="ellipsoids-2sp-open-self"),
]


@functools.lru_cache(maxsize=None)
def _frame_pairs(workload, n_species, periodic, self_pairs):
    from einsum_workbench.reference.pairs import frames_to_pairs
    from einsum_workbench.reference.workloads import WORKLOADS

    frames = WORKLOADS[workload](2, seed=11, n_species=n_species)
    if not periodic:
        for frame in frames:
            frame.pbc = False
    pairs = frames_to_pairs(frames, 5.0, self_pairs=self_pairs)
    # a sample keeps the reference quick while every species pair stays in
    keep = np.unique(np.concatenate([
        np.flatnonzero((pairs.centre_species == a) & (pairs.neighbour_species == b))[:15]
        for a in np.unique(pairs.centre_species) for b in np.unique(pairs.neighbour_species)
    ]))
    return pairs.select(keep)


@pytest.mark.parametrize("workload,n_species,periodic,self_pairs", FRAME_CASES)
def test_frame_pairs(variant, workload, n_species, periodic, self_pairs):
    name, expand = variant
    pairs = _frame_pairs(workload, n_species, periodic, self_pairs)
    assert len(np.unique(pairs.neighbour_species)) == n_species
    if self_pairs:
        assert np.any(np.all(pairs.r_ij == 0, axis=1)), "self pairs requested but none present"
    hypers = make_hypers(5, "gto", None)
    expected = pairwise_ellip_expansion(pairs.r_ij, pairs.rotations, pairs.semiaxes, hypers)
    actual = expand(pairs.r_ij, pairs.rotations, pairs.semiaxes, hypers, dtype=np.float64)
    assert_coefficients_close(actual, expected, hypers, np.float64, f"{name} {workload}")

"""The compiled input screens of the Numba kernels (``kernels.numba.screening``).

Every kernel, specialised or generic, pairs, centre density or gradients,
hands a batch with an invalid pair to ``check_pair_arrays`` and raises its
canonical error, naming the pair by its index in the caller's batch; the
thresholds come from ``reference.validation`` (one place) and enter the cache
key; pairs at the edges of the admitted ranges are computed.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the Numba kernels need numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import density as numba_density  # noqa: E402
from einsum_workbench.kernels.numba import generic as numba_generic  # noqa: E402
from einsum_workbench.kernels.numba import gradients as numba_gradients  # noqa: E402
from einsum_workbench.kernels.numba import pairs as numba_fused  # noqa: E402
from einsum_workbench.kernels.numba import screening as numba_screening  # noqa: E402
from einsum_workbench.kernels.numba.codegen.keys import kernel_key  # noqa: E402
from einsum_workbench.reference.compare import assert_coefficients_close  # noqa: E402
from einsum_workbench.reference.expansion import pairwise_ellip_expansion  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

GTO4 = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)
GTO3 = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)

#: Defect of pair 6 -> check_pair_arrays' message.
DEFECTS = {
    "reflection": "rotation at pair 6 is a reflection",
    "not_orthonormal": "rotation at pair 6 is not orthonormal",
    "nan": "r_ij has a non-finite value at pair 6",
    "inf_axis": "semiaxes has a non-finite value at pair 6",
    "negative_axis": "semiaxes must be > 0; pair 6 has",
}

#: (problem, kernel): every compiled screen (the gradients have a specialised kernel only).
KERNELS = [("pairs", "specialised"), ("pairs", "generic"), ("density", "specialised"), ("density", "generic"),
           ("gradients", "specialised")]


def with_defect(defect: str):
    """40 random pairs, pair 6 made invalid by ``defect`` (a key of ``DEFECTS``)."""
    r_ij, rotations, semiaxes = (a.copy() for a in random_pair_batch(40, 4))
    if defect == "reflection":
        rotations[6] = -rotations[6]
    elif defect == "not_orthonormal":
        rotations[6, 0, 0] += 1e-3
    elif defect == "nan":
        r_ij[6, 1] = np.nan
    elif defect == "inf_axis":
        semiaxes[6, 1] = np.inf
    else:
        semiaxes[6, 2] = -1.0
    return r_ij, rotations, semiaxes


@pytest.mark.parametrize("defect", list(DEFECTS))
@pytest.mark.parametrize("problem,kernel", KERNELS, ids=[f"{p}-{k}" for p, k in KERNELS])
def test_bad_pairs_raise_the_canonical_error_naming_the_pair(problem, kernel, defect):
    """The kernel's screen hands the batch to check_pair_arrays; the centre density's unsorted
    input (sorted inside) keeps the caller's pair indices."""
    arrays = with_defect(defect)
    message = DEFECTS[defect]
    if problem == "pairs":
        with pytest.raises(ValueError, match=message):
            numba_fused.expand(*arrays, GTO4, kernel=kernel)
    elif problem == "density":
        unsorted = np.random.default_rng(8).integers(0, 5, 40)
        for segment, n_segments in ((np.zeros(40, np.int64), 1), (unsorted, 5)):
            with pytest.raises(ValueError, match=message):
                numba_density.centre_density(*arrays, GTO3, segment, n_segments, kernel=kernel)
    else:
        with pytest.raises(ValueError, match=message):
            numba_gradients.expand_with_gradients(*arrays, GTO4)


def test_screen_limits_come_from_reference_validation(monkeypatch):
    """One place (``kernels.numba.screening.screen_limits``) reads the thresholds; they enter the cache key."""
    import dataclasses

    from einsum_workbench.reference import validation

    f64 = np.dtype(np.float64)
    limits = numba_screening.screen_limits(f64, GTO4)
    admitted = validation.PAIR_LIMITS[f64]
    assert limits.orthonormal_tol == validation.ORTHONORMAL_TOL[f64]
    assert limits.semiaxis_min == admitted.semiaxis_min and limits.r_max == admitted.distance_max
    assert limits.semiaxis_max == min(admitted.semiaxis_max, admitted.semiaxis_per_sigma_max * GTO4.sigma)
    key = kernel_key(GTO4, f64)
    narrower = dict(validation.PAIR_LIMITS)
    narrower[f64] = dataclasses.replace(admitted, semiaxis_max=50.0, distance_max=100.0)
    monkeypatch.setattr(validation, "PAIR_LIMITS", narrower)
    numba_screening.screen_limit_array.cache_clear()
    try:
        assert numba_screening.screen_limits(f64, GTO4)[2:] == (50.0, 100.0)
        assert kernel_key(GTO4, f64) != key, "the thresholds are part of the cache key"
        # the generic kernel flags (hands to check_pair_arrays) pairs outside the ranges, not those inside
        r, rot, ax = random_pair_batch(40, 9)
        limit_array = numba_screening.screen_limit_array(f64, GTO4)
        assert numba_generic.run_pairs(r, rot, ax, GTO4, limit_array)[1] == 0
        for array, row, value in ((ax, 7, 60.0), (r, 12, 200.0)):
            bad = array.copy()
            bad[row, 0] = value
            args = (bad, rot, ax) if array is r else (r, rot, bad)
            assert numba_generic.run_pairs(*args, GTO4, limit_array)[1] > 0
    finally:
        numba_screening.screen_limit_array.cache_clear()


@pytest.mark.parametrize("kernel", ["generic", "specialised"])
def test_pairs_at_the_edges_of_the_ranges_are_computed(kernel):
    """Edge values (inclusive bounds) are flagged by the screen and admitted by check_pair_arrays."""
    from einsum_workbench.reference import validation

    admitted = validation.PAIR_LIMITS[np.dtype(np.float64)]
    hypers = ExpansionHypers(2, "monomial", cutoff=7.0)
    r, rot, ax = random_pair_batch(12, 19)
    ax[3] = admitted.semiaxis_min
    ax[5, 1] = admitted.semiaxis_max
    r[8] = np.array([0.0, 0.0, admitted.distance_max])
    actual = numba_fused.expand(r, rot, ax, hypers, kernel=kernel)
    assert all(np.isfinite(block).all() for block in actual)
    assert_coefficients_close(actual, pairwise_ellip_expansion(r, rot, ax, hypers), hypers, np.float64)

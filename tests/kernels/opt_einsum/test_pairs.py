"""opt_einsum_planned / opt_einsum_torch: agreement with the reference, plan
caching, the factored form's tables and what the planner finds.

Tolerances as in test_equivalence.py: float64 rtol 1e-6 (atol 1e-8 x block
max), float32 rtol 1e-3 (atol 1e-4 x block max).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("opt_einsum", reason="opt_einsum is not installed: the planned variants did not run")

from einsum_workbench.kernels.opt_einsum import pairs as planned  # noqa: E402
from einsum_workbench.kernels.tables import compact_solid_harmonics, factored_tables  # noqa: E402
from einsum_workbench.kernels.wigner import degree_monomials, wigner_matrices  # noqa: E402
from einsum_workbench.reference.expansion import pairwise_ellip_expansion  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.compare import assert_coefficients_close  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    "numpy",
    pytest.param("torch", marks=pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed: backend='torch' did not run")),
]


def assert_matches_reference(actual, arrays, hypers, dtype):
    expected = pairwise_ellip_expansion(*(a.astype(np.float64) for a in arrays), hypers)
    assert_coefficients_close(actual, expected, hypers, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", planned.FORMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lmax,basis,max_radial", [
    (0, "monomial", None), (4, "gto", 2), (6, "gto", None), (8, "monomial", [3, 2, 2, 1, 1, 1, 0, 0, 0]),
    (3, "gto", [6, 0, 0, 0]),  # padding would triple the work: one table per l
])
def test_matches_reference(lmax, basis, max_radial, dtype, form, backend):
    hypers = ExpansionHypers(lmax, basis, cutoff=7.0, sigma=1.5 if basis == "gto" else None, max_radial=max_radial)
    arrays = [a.astype(dtype) for a in random_pair_batch(30, 50 + lmax, self_pair_fraction=0.1)]
    out = planned.expand(*arrays, hypers, dtype=dtype, backend=backend, form=form)
    assert_matches_reference(out, arrays, hypers, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_and_buckets_agree(backend):
    hypers = ExpansionHypers(5, "gto", cutoff=7.0, sigma=1.5)
    arrays = random_pair_batch(150, 3)
    whole = planned.expand(*arrays, hypers, backend=backend)
    chunked = planned.expand(*arrays, hypers, backend=backend, chunk=64)  # chunks of 64 and 22 pairs
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(a).max())


def test_plan_reused_across_calls_in_one_bucket():
    hypers = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.3)  # a key no other test plans
    arrays = random_pair_batch(128, 4)
    before = planned.plan_count()
    for n_pairs in (70, 100, 127):
        planned.expand(*(a[:n_pairs] for a in arrays), hypers)
    assert planned.plan_count() - before == 1, "planned more than once inside one bucket (65..128 pairs)"
    planned.expand(*(a[:10] for a in arrays), hypers)
    assert planned.plan_count() - before == 2, "a new bucket should be planned exactly once"


@pytest.mark.parametrize("lmax,basis,max_radial", [(6, "gto", None), (5, "monomial", [0, 3, 1, 2, 0, 1])])
def test_factored_tables_rebuild_the_compact_tables(lmax, basis, max_radial):
    hypers = ExpansionHypers(lmax, basis, cutoff=7.0, sigma=1.5 if basis == "gto" else None, max_radial=max_radial)
    for l, ((harmonics, radial), compact) in enumerate(zip(factored_tables(hypers),
                                                            compact_solid_harmonics(hypers))):
        rebuilt = np.einsum("ma,nak->kmn", harmonics, radial)
        np.testing.assert_allclose(rebuilt, compact, rtol=0, atol=1e-12 * np.abs(compact).max(), err_msg=f"l={l}")


def test_wigner_matrices_rotate_the_harmonics():
    """D_l orthogonal, and R_lm(R x) = sum_q D_l[m, q] R_lq(x) at fresh points."""
    hypers = ExpansionHypers(7, "gto", cutoff=7.0, sigma=1.5)
    _, rotations, _ = random_pair_batch(20, 8)
    points = np.random.default_rng(1).normal(size=(20, 3))
    for l, (wigner, (harmonics, _)) in enumerate(zip(wigner_matrices(rotations, hypers),
                                                      factored_tables(hypers))):
        np.testing.assert_allclose(wigner @ wigner.transpose(0, 2, 1), np.broadcast_to(np.eye(2 * l + 1), wigner.shape),
                                   atol=1e-10, err_msg=f"l={l}")
        rotated_points = np.einsum("pij,pj->pi", rotations, points)
        lhs = degree_monomials(rotated_points, l) @ harmonics.T
        rhs = np.einsum("pmq,pq->pm", wigner, degree_monomials(points, l) @ harmonics.T)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * np.abs(lhs).max(), err_msg=f"l={l}")


def test_planner_folds_the_constant_factors_first():
    hypers = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
    for row in planned.plan_report(hypers, "factored", n_pairs=4096):
        assert tuple(row["path"][0]) == (2, 3), f"expected Y_l and R_l contracted first, got {row['path']}"
        assert row["flops"] <= row["naive_flops"]
    for row in planned.plan_report(hypers, "body", n_pairs=4096):
        # the planner never builds the (d+1)^3 moment cube: the largest intermediate stays far below it
        assert row["largest_intermediate"] < 4096 * 7**3, row["path"]
        assert row["flops"] < row["naive_flops"] / 2
    (compact,) = planned.plan_report(hypers, "compact", n_pairs=4096)
    assert compact["equation"] == "kp,kq,p->pq" and compact["flops"] > 0


def test_empty_batch_and_bad_options():
    hypers = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)
    for dtype in (np.float64, np.float32):
        out = planned.expand(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype), hypers)
        assert [b.shape for b in out] == [(0, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert all(b.dtype == np.dtype(dtype) for b in out)
    arrays = random_pair_batch(2, 0)
    with pytest.raises(ValueError, match="'jax'"):
        planned.expand(*arrays, hypers, backend="jax")
    with pytest.raises(ValueError, match="'dense'"):
        planned.expand(*arrays, hypers, form="dense")
    with pytest.raises(ValueError, match="chunk"):
        planned.expand(*arrays, hypers, chunk=-1)

"""Wigner-D matrices of the real solid harmonics, fitted per rotation.

``R_lm(R x) = sum_q D_l[m, q] R_lq(x)``: the matrix ``D_l(R)`` that rotates
body-frame coefficients of channel l into the lab frame, used by the
separable body-frame form of ``opt_einsum_planned`` (``form="body"``).
It is fitted exactly from the harmonics (the ``Y_l`` factor of
:func:`einsum_workbench.kernels.tables.factored_tables`) at a few fixed
sample directions: ``D_l = Y_l(R u) pinv(Y_l(u))``.
"""

from __future__ import annotations

import functools

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.tables import factored_tables, monomial_exponents, num_monomials


@functools.lru_cache(maxsize=16)
def wigner_fit(hypers: ExpansionHypers) -> tuple:
    """Sample directions u (S, 3) and, per l, ``pinv(Y_l(u))`` (S, 2l+1).

    S = 2 lmax + 3 fixed pseudo-random unit vectors; ``Y_l(u)`` (2l+1, S) has
    full row rank for every l <= lmax (checked), so ``D = Y_l(R u) pinv(Y_l(u))``
    is exact.
    """
    rng = np.random.default_rng(20240611)
    samples = rng.normal(size=(2 * hypers.lmax + 3, 3))
    samples /= np.linalg.norm(samples, axis=1, keepdims=True)
    inverses = []
    for l, (harmonics, _) in enumerate(factored_tables(hypers)):
        values = harmonics @ degree_monomials(samples, l).T   # (2l+1, S)
        if np.linalg.cond(values) > 1e8:
            raise AssertionError(f"sample directions ill-conditioned for l={l}")
        inverses.append(np.linalg.pinv(values))
    return samples, tuple(inverses)


def degree_monomials(points, l: int):
    """Monomials of degree exactly l (flat order) at points (..., 3) -> (..., A_l)."""
    exps = monomial_exponents(l)[num_monomials(l - 1) if l > 0 else 0:]
    powers = np.empty(points.shape + (l + 1,), dtype=points.dtype)   # (..., 3, l+1)
    powers[..., 0] = 1.0
    for j in range(1, l + 1):
        powers[..., j] = powers[..., j - 1] * points
    return powers[..., 0, exps[:, 0]] * powers[..., 1, exps[:, 1]] * powers[..., 2, exps[:, 2]]


def wigner_matrices(rotations, hypers: ExpansionHypers) -> list:
    """Per l, ``D_l (P, 2l+1, 2l+1)`` with ``R_lm(R x) = sum_q D_l[m, q] R_lq(x)``.

    Fitted exactly from the harmonics at the rotated sample directions of
    :func:`wigner_fit`: ``D_l = Y_l(R u) pinv(Y_l(u))``. Orthogonal for proper
    rotations (the real harmonics of one l share one normalisation).
    """
    samples, inverses = wigner_fit(hypers)
    dtype = rotations.dtype
    n_pairs, n_samples = rotations.shape[0], samples.shape[0]
    # coordinate-major (3, P S) so that every power and monomial is a contiguous row
    rotated = np.ascontiguousarray(np.einsum("pij,sj->ips", rotations, samples.astype(dtype))).reshape(3, -1)
    powers = np.empty((hypers.lmax + 1, 3, rotated.shape[1]), dtype=dtype)
    powers[0] = 1.0
    for j in range(1, hypers.lmax + 1):
        np.multiply(powers[j - 1], rotated, out=powers[j])
    out = []
    for l, (harmonics, _) in enumerate(factored_tables(hypers)):
        exps = monomial_exponents(l)[num_monomials(l - 1) if l > 0 else 0:]
        monomials = powers[exps[:, 0], 0] * powers[exps[:, 1], 1] * powers[exps[:, 2], 2]   # (A_l, P S)
        values = harmonics.astype(dtype) @ monomials                                     # (2l+1, P S)
        wigner = values.reshape(-1, n_samples) @ inverses[l].astype(dtype)               # ((2l+1) P, 2l+1)
        out.append(np.ascontiguousarray(wigner.reshape(2 * l + 1, n_pairs, 2 * l + 1).transpose(1, 0, 2)))
    return out

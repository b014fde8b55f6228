"""Radial bases: Gaussian parameters per pair, norms, overlaps and Loewdin
orthonormalisation.

Formulas as in AniSOAP 0.1.1 (``anisoap.representations.radial_basis``) and
DESIGN.md section 3:

- GTO of width sigma: the product of the basis' ``exp(-|x|^2 / (2 sigma^2))``
  with the neighbour's density is one Gaussian of precision
  ``A' = A + I / sigma^2``, centre ``a = r - A'^(-1) r / sigma^2`` and extra
  factor ``exp(-k/2)``, ``k = r^T A'^(-1) A r / sigma^2``.
- monomial: ``A' = A``, ``a = r``, ``k = 0``.
- squared norms of ``r^p f(r)`` over ``r^2 dr``: GTO ``sigma^(2p+3) Gamma(p + 3/2) / 2``
  on [0, inf); monomial ``rc^(2p+3) / (2p+3)`` on [0, rc]; overlaps use
  ``p = (p_a + p_b) / 2``.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import gamma

from einsum_workbench.reference.hypers import ExpansionHypers


def precision_matrix(rotation, semiaxes):
    """``A = R diag(1 / l_k^2) R^T`` for one ellipsoid (R body to lab, angstrom)."""
    return rotation @ np.diag(1.0 / np.asarray(semiaxes) ** 2) @ rotation.T


def gaussian_parameters(r_ij, rotation, semiaxes, hypers: ExpansionHypers):
    """Gaussian of the (basis x density) product for one neighbour pair.

    Written like upstream's ``compute_gaussian_parameters`` (two linear solves
    in the lab frame) because the reference must be faithful; fast variants
    invert in the body frame instead.

    Parameters
    ----------
    r_ij : (3,) float64, angstrom
    rotation : (3, 3) float64, body to lab
    semiaxes : (3,) float64, angstrom, > 0
    hypers : ExpansionHypers

    Returns
    -------
    precision (3, 3) [1/angstrom^2], centre (3,) [angstrom], constant k (float)
    """
    precision = precision_matrix(rotation, semiaxes)
    if hypers.radial_basis == "monomial":
        return precision, np.array(r_ij, dtype=np.float64), 0.0
    inv_s2 = 1.0 / hypers.sigma**2
    new_precision = precision + np.eye(3) * inv_s2
    centre = r_ij - inv_s2 * np.linalg.solve(new_precision, r_ij)
    constant = inv_s2 * r_ij @ np.linalg.solve(new_precision, precision @ r_ij)
    return new_precision, centre, float(constant)


def square_norm(p, hypers: ExpansionHypers):
    """Squared norm of the order-p radial function ``r^p f(r)`` over ``r^2 dr``.

    p may be a float or an array (overlaps use half-integer orders).
    """
    p = np.asarray(p, dtype=np.float64)
    if hypers.radial_basis == "gto":
        return 0.5 * hypers.sigma ** (2 * p + 3) * gamma(p + 1.5)
    return hypers.cutoff ** (2 * p + 3) / (2 * p + 3)


def norm_prefactors(l: int, hypers: ExpansionHypers) -> np.ndarray:
    """``1 / sqrt(square_norm(l + 2n))`` for n in 0..num_radial[l]-1; shape (num_radial[l],)."""
    orders = l + 2 * np.arange(hypers.num_radial[l])
    return 1.0 / np.sqrt(square_norm(orders, hypers))


def overlap_matrix(l: int, hypers: ExpansionHypers) -> np.ndarray:
    """Overlap of the normalised order ``l + 2n`` functions of channel l.

    Returns (num_radial[l], num_radial[l]) float64, symmetric, unit diagonal.
    """
    orders = (l + 2 * np.arange(hypers.num_radial[l])).astype(np.float64)
    norms = np.sqrt(square_norm(orders, hypers))
    mixed = square_norm(0.5 * (orders[:, None] + orders[None, :]), hypers)
    return mixed / np.outer(norms, norms)


def inverse_sqrt(matrix, rcond: float, tol: float) -> np.ndarray:
    """Symmetric (Loewdin) ``S^(-1/2)``, eigenvalues ``<= rcond`` dropped.

    Raises
    ------
    ValueError
        if the matrix is not symmetric, or if ``S`` rebuilt from the result
        (``pinv(X @ X)``) differs from ``S`` by more than ``tol`` in Frobenius
        norm (the error is named), as upstream's ``inverse_matrix_sqrt``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.allclose(matrix, matrix.T):
        raise ValueError(f"overlap matrix is not symmetric: {matrix!r}")
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    keep = eigenvalues > rcond
    vecs = eigenvectors[:, keep]
    result = vecs @ np.diag(1.0 / np.sqrt(eigenvalues[keep])) @ vecs.T
    error = np.linalg.norm(matrix - np.linalg.pinv(result @ result))
    if error > tol:
        raise ValueError(
            f"orthonormalisation lost precision: |S - (S^-1/2)^-2| = {error:.3e} > tol = {tol:.3e}"
        )
    return result


@functools.lru_cache(maxsize=256)
def orthonormalization_matrix(l: int, hypers: ExpansionHypers) -> np.ndarray:
    """Matrix ``W`` with ``c_orth = c @ W`` for channel l's radial index.

    ``W = diag(norm_prefactors) @ S^(-1/2)``; shape (num_radial[l], num_radial[l]).
    """
    w = norm_prefactors(l, hypers)[:, None] * inverse_sqrt(
        overlap_matrix(l, hypers), hypers.rcond, hypers.tol
    )
    w.setflags(write=False)
    return w


def orthonormalize(coefficients, hypers: ExpansionHypers):
    """Loewdin-orthonormalise raw coefficients along the radial index n.

    Parameters
    ----------
    coefficients : list over l of (..., 2l+1, num_radial[l]) arrays
    hypers : ExpansionHypers

    Returns
    -------
    new list of arrays of the same shapes and dtypes (inputs untouched).
    """
    if len(coefficients) != hypers.lmax + 1:
        raise ValueError(
            f"expected lmax + 1 = {hypers.lmax + 1} coefficient blocks, got {len(coefficients)}"
        )
    out = []
    for l, c in enumerate(coefficients):
        w = orthonormalization_matrix(l, hypers)
        out.append((c @ w.astype(c.dtype, copy=False)).astype(c.dtype, copy=False))
    return out

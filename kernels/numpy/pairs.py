"""``numpy_einsum``: the expansion batched over pairs in NumPy.

Per chunk of pairs: Gaussian parameters in the ellipsoid's body frame
(``A' = R diag(d) R^T`` with ``d_k = 1/l_k^2 + 1/sigma^2`` for GTO, so the
covariance and the determinant need no lab-frame inversion), the moments of
every monomial up to the largest degree a channel uses, vectorised across
pairs (one multiply-add over a contiguous row of pairs per recurrence term),
then one contraction per l, ``einsum("kmn,kp->pmn", T_l, M)``, written as the
BLAS product it is. Chunking bounds the extra memory and keeps rows in cache.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.tables import compact_solid_harmonics, num_monomials, recurrence_table

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of working memory beyond inputs and outputs
# Chunks of a few thousand pairs keep the moment rows in cache; the memory
# bound can only make them smaller.
CACHE_FRIENDLY_CHUNK = 4096


def body_frame_gaussians(r_ij, rotations, semiaxes, hypers: ExpansionHypers):
    """Covariance, centre and scale of the (basis x density) Gaussian per pair.

    Parameters
    ----------
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3): one float dtype.

    Returns
    -------
    covariance (P, 3, 3) = ``A'^(-1)`` [angstrom^2], centre (P, 3) [angstrom],
    scale (P,) = ``exp(-k/2) / (l1 l2 l3 sqrt(det A'))``: the density's
    normalisation times the moments' ``(2 pi)^(3/2) det(A')^(-1/2)``, so that
    coefficients are ``scale * sum T E`` with E the normal law's expectations.
    """
    inv_l2 = 1.0 / semiaxes**2
    if hypers.radial_basis == "gto":
        inv_s2 = 1.0 / hypers.sigma**2
        d = inv_l2 + inv_s2
    else:
        inv_s2 = 0.0
        d = inv_l2
    body = np.einsum("pji,pj->pi", rotations, r_ij)  # R^T r
    covariance = np.einsum("pik,pk,pjk->pij", rotations, 1.0 / d, rotations)
    if hypers.radial_basis == "gto":
        centre = r_ij - inv_s2 * np.einsum("pij,pj->pi", rotations, body / d)
        k = inv_s2 * np.sum(body * body * inv_l2 / d, axis=1)
    else:
        centre = r_ij.copy()
        k = np.zeros(r_ij.shape[0], dtype=r_ij.dtype)
    scale = np.exp(-0.5 * k) / (np.prod(semiaxes, axis=1) * np.sqrt(np.prod(d, axis=1)))
    return covariance, centre, scale


def normal_moments(covariance, centre, max_degree: int):
    """Expectations ``E[x^n0 y^n1 z^n2]`` of N(centre, covariance), flat order.

    Parameters
    ----------
    covariance : (P, 3, 3) array; centre : (P, 3) array of the same dtype.

    Returns
    -------
    (num_monomials(max_degree), P) array: monomial-major, so that every step
    of the recurrence is a multiply-add on contiguous rows of P values.
    """
    table = recurrence_table(max_degree)
    n_pairs = centre.shape[0]
    cov = np.ascontiguousarray(np.moveaxis(covariance, 0, -1))  # (3, 3, P)
    mean = np.ascontiguousarray(centre.T)  # (3, P)
    moments = np.empty((num_monomials(max_degree), n_pairs), dtype=centre.dtype)
    moments[0] = 1.0
    scratch = np.empty(n_pairs, dtype=centre.dtype)
    for t, (k, parent, lower, coef) in enumerate(
        zip(table.axis.tolist(), table.parent.tolist(), table.lower.tolist(), table.coef.tolist()), start=1
    ):
        row = moments[t]
        np.multiply(mean[k], moments[parent], out=row)
        for m in range(3):
            if coef[m]:
                np.multiply(cov[k, m], moments[lower[m]], out=scratch)
                if coef[m] != 1.0:
                    scratch *= coef[m]
                row += scratch
    return moments


def _bytes_per_pair(hypers: ExpansionHypers, itemsize: int) -> int:
    k = num_monomials(hypers.max_degree)
    widest_out = max((2 * l + 1) * n for l, n in enumerate(hypers.num_radial))
    # moments, geometry temporaries (einsum intermediates up to 27 per pair,
    # covariance twice, centres, scales), one l's product and its transposed copy
    return itemsize * (k + 2 * widest_out + 128)


def chunk_size(hypers: ExpansionHypers, dtype, max_memory: int = DEFAULT_MAX_MEMORY) -> int:
    """Pairs per chunk: cache-sized, and small enough that working memory stays
    under ``max_memory`` bytes."""
    fit = int(max_memory) // _bytes_per_pair(hypers, np.dtype(dtype).itemsize)
    return max(1, min(CACHE_FRIENDLY_CHUNK, fit))


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
           max_memory: int = DEFAULT_MAX_MEMORY):
    """Raw expansion coefficients of every pair, batched in NumPy.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, body to lab
    semiaxes : (P, 3) float array, angstrom, > 0
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'). float32 computes
        everything in float32.
    max_memory : int, bytes
        Bound on working memory beyond the inputs and outputs (default 512 MiB);
        pairs are processed in chunks that fit.

    Returns
    -------
    list over l of (P, 2l+1, num_radial[l]) arrays of ``dtype``.

    Raises
    ------
    ValueError on malformed input (see ``check_pair_arrays``) or a
    non-positive ``max_memory``.
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    if int(max_memory) <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    tables = [t.astype(dtype).reshape(t.shape[0], -1) for t in compact_solid_harmonics(hypers)]
    n_pairs = r_ij.shape[0]
    out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    step = chunk_size(hypers, dtype, max_memory)
    for start in range(0, n_pairs, step):
        chunk = slice(start, min(start + step, n_pairs))
        covariance, centre, scale = body_frame_gaussians(r_ij[chunk], rotations[chunk], semiaxes[chunk], hypers)
        moments = normal_moments(covariance, centre, hypers.max_degree)
        moments *= scale
        for l, table in enumerate(tables):
            # (C_l, K_l) @ (K_l, chunk): one BLAS product per l, then back to pair-major
            block = table.T @ moments[: table.shape[0]]
            out[l][chunk] = block.T.reshape(-1, 2 * l + 1, hypers.num_radial[l])
    return out

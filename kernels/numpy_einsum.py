"""``numpy_einsum``: the expansion batched over pairs in NumPy.

Per chunk of pairs: Gaussian parameters in the ellipsoid's body frame
(``A' = R diag(d) R^T`` with ``d_k = 1/l_k^2 + 1/sigma^2`` for GTO, so the
covariance and the determinant need no lab-frame inversion), the moments of
every monomial up to the largest degree a channel uses, vectorised across
pairs one degree at a time, then one contraction per l
(``einsum("pk,kmn->pmn")``, which NumPy hands to BLAS). Chunking bounds the
extra memory.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from .tables import compact_solid_harmonics, num_monomials, recurrence_table

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of working memory beyond inputs and outputs


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

    Returns (P, num_monomials(max_degree)) array, one degree layer at a time.
    """
    table = recurrence_table(max_degree)
    n_pairs = centre.shape[0]
    moments = np.empty((n_pairs, num_monomials(max_degree)), dtype=centre.dtype)
    moments[:, 0] = 1.0
    coef = table.coef.astype(centre.dtype)
    for layer in table.layers:
        axis, parent = table.axis[layer], table.parent[layer]
        lower, cf = table.lower[layer], coef[layer]
        value = centre[:, axis] * moments[:, parent]
        for m in range(3):
            value += covariance[:, axis, m] * cf[:, m] * moments[:, lower[:, m]]
        moments[:, layer.start + 1 : layer.stop + 1] = value
    return moments


def _bytes_per_pair(hypers: ExpansionHypers, itemsize: int) -> int:
    k = num_monomials(hypers.max_degree)
    widest_layer = (hypers.max_degree + 1) * (hypers.max_degree + 2) // 2
    widest_out = max((2 * l + 1) * n for l, n in enumerate(hypers.num_radial))
    # moments, four layer temporaries, geometry temporaries, one l's product
    return itemsize * (k + 4 * widest_layer + 64 + 2 * widest_out)


def chunk_size(hypers: ExpansionHypers, dtype, max_memory: int = DEFAULT_MAX_MEMORY) -> int:
    """Pairs per chunk so that working memory stays under ``max_memory`` bytes."""
    return max(1, int(max_memory) // _bytes_per_pair(hypers, np.dtype(dtype).itemsize))


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
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype)
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
        moments *= scale[:, None]
        for l, table in enumerate(tables):
            k = table.shape[0]
            np.matmul(moments[:, :k], table, out=out[l][chunk].reshape(chunk.stop - chunk.start, -1))
    return out

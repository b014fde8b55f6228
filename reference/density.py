"""The centre density: pair coefficients summed over each centre's neighbours.

What AniSOAP's ``transform`` returns before metatensor wraps it (DESIGN.md
section 3, "Centre density"): per centre i and neighbour species b,

    rho_l[i, b][m, n] = sum over neighbours j of species b of c_l(i, j)[m, n]

then, when orthonormalised, per l the radial matrix ``W_l`` of
:func:`einsum_workbench.reference.radial.orthonormalization_matrix` applied on
n (``rho_l @ W_l``). Both steps are linear in the pair coefficients.

Here a *segment* is one output row: one (centre, neighbour species) pair, or
any grouping of pairs the caller chooses. Every density variant has this
contract (the registry's ``DENSITY_VARIANTS``)::

    centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
                   dtype=None, orthonormal=False, **options)
        -> list over l of (n_segments, 2l+1, num_radial[l]) arrays of dtype

Pairs may come in any order; a segment without pairs gives zeros.

The reference below is the reference expansion followed by the sums in pair
order (upstream's ``contract_pairwise_feat`` sums ``values[pairs].sum(axis=0)``,
row after row in the neighbour list's order), then the orthonormalisation.
"""

from __future__ import annotations

import numbers

import numpy as np

from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix


def check_segments(segment, n_segments, n_pairs: int):
    """Validate the segment of every pair.

    Parameters
    ----------
    segment : (P,) array_like of int
        Output row of each pair.
    n_segments : int >= 0
        Number of output rows.
    n_pairs : int
        P, the number of pairs in the batch; negative when the caller could
        not tell (``r_ij`` is not an array): the shape is then left to the
        pair checks, which name ``r_ij``.

    Returns
    -------
    segment as a C-contiguous int64 array, and ``n_segments`` as an int.

    Raises
    ------
    TypeError
        ``n_segments`` is not an int, or ``segment`` is not integer-valued.
    ValueError
        wrong shape, or a segment outside ``[0, n_segments)`` (the pair and
        the value are named).
    """
    if isinstance(n_segments, bool) or not isinstance(n_segments, numbers.Integral):
        raise TypeError(f"n_segments must be an int, got {n_segments!r}")
    if n_segments < 0:
        raise ValueError(f"n_segments must be >= 0, got {n_segments}")
    array = np.asarray(segment)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"segment must hold integers (one output row per pair), got dtype {array.dtype}")
    if n_pairs < 0:
        n_pairs = array.shape[0] if array.ndim == 1 else -1
    if array.shape != (n_pairs,):
        raise ValueError(f"segment must have shape ({n_pairs},), one row per pair, got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if n_pairs:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= n_segments:
            p = int(np.argmax((array < 0) | (array >= n_segments)))
            raise ValueError(
                f"segment of pair {p} is {int(array[p])}, outside [0, n_segments = {int(n_segments)})"
            )
    return array, int(n_segments)


def segment_sum(values, segment, n_segments: int) -> np.ndarray:
    """Sum the rows of ``values`` per segment, in pair order within a segment.

    Parameters
    ----------
    values : (P, ...) array
    segment : (P,) int64, in ``[0, n_segments)`` (validated by the caller)
    n_segments : int

    Returns
    -------
    (n_segments, ...) array of ``values.dtype``; zeros where a segment has no pair.
    """
    values = np.asarray(values)
    out = np.zeros((n_segments,) + values.shape[1:], dtype=values.dtype)
    if values.shape[0] == 0:
        return out
    if np.any(segment[1:] < segment[:-1]):
        order = np.argsort(segment, kind="stable")  # stable: pair order kept inside a segment
        segment, values = segment[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))
    out[segment[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


def orthonormalize_density(density, hypers: ExpansionHypers):
    """``rho_l @ W_l`` for each l, in place; returns ``density``.

    ``density``: list over l of (S, 2l+1, num_radial[l]) float arrays.
    """
    for l, rho in enumerate(density):
        w = orthonormalization_matrix(l, hypers).astype(rho.dtype, copy=False)
        rho[...] = rho @ w
    return density


def centre_density(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, *,
                   dtype=None, orthonormal: bool = False):
    """Reference centre density: the reference expansion, then sums per segment.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
        Position of neighbour j (with its periodic shift) minus centre i.
    rotations : (P, 3, 3) float array
        Body-to-lab rotation of neighbour j.
    semiaxes : (P, 3) float array, angstrom, > 0
        Semi-axes of neighbour j.
    hypers : ExpansionHypers
    segment : (P,) int array
        Output row of each pair (e.g. one row per centre and neighbour species).
    n_segments : int
        Number of output rows.
    dtype : None, float32 or float64
        Output dtype (None: the inputs'); computed in float64 as the reference
        expansion is.
    orthonormal : bool
        Apply the Loewdin orthonormalisation along n (AniSOAP's
        ``normalize=True``).

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) arrays of ``dtype``.

    Raises
    ------
    ValueError, TypeError
        malformed pairs (``check_pair_arrays``) or segments (:func:`check_segments`).
    """
    segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
    coefficients = pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers, dtype=np.float64)
    out_dtype = np.dtype(dtype) if dtype is not None else np.asarray(r_ij).dtype
    if out_dtype.kind != "f":
        out_dtype = np.dtype(np.float64)
    density = [segment_sum(c, segment, n_segments) for c in coefficients]
    if orthonormal:
        orthonormalize_density(density, hypers)
    return [rho.astype(out_dtype, copy=False) for rho in density]

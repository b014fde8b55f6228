"""Checks on a pair batch shared by every variant.

A bad input gets an error that names the offending value (and the pair index
where it is one pair's), never a silent wrong number.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_CHECK_CHUNK = 8192  # pairs validated at a time (bounded scratch memory)
ORTHONORMAL_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}


def resolve_dtype(dtype, *arrays) -> np.dtype:
    """Compute dtype of a call: ``dtype`` if given, else the inputs' own.

    Raises
    ------
    ValueError
        ``dtype`` is not float32/float64; the floating inputs disagree in
        dtype; or ``dtype`` differs from the inputs' (a float32/float64 mix-up:
        cast the inputs first, nothing is converted silently).
    """
    float_dtypes = sorted({np.asarray(a).dtype for a in arrays if np.asarray(a).dtype.kind == "f"}, key=str)
    if len(float_dtypes) > 1:
        raise ValueError(
            "inputs mix floating dtypes "
            f"{[str(d) for d in float_dtypes]}; give r_ij, rotations and semiaxes one dtype"
        )
    given = float_dtypes[0] if float_dtypes else np.dtype(np.float64)
    if dtype is None:
        dtype = given
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from err
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if float_dtypes and given != dtype:
        raise ValueError(
            f"dtype={dtype} requested but the inputs are {given}: a float32/float64 mix-up; "
            f"cast the inputs with .astype(np.{dtype}) first"
        )
    return dtype


def check_pair_arrays(r_ij, rotations, semiaxes, dtype=None, *, check_rotations: bool = True):
    """Validate and normalise a pair batch.

    Parameters
    ----------
    r_ij : (P, 3) array, angstrom, finite
    rotations : (P, 3, 3) array, proper rotations (body to lab)
    semiaxes : (P, 3) array, angstrom, finite and > 0
    dtype : None, float32 or float64
        Compute dtype; None means the inputs' dtype (float64 for integers).
    check_rotations : bool
        False accepts any finite 3x3 matrices (the reference's ``any_matrix``).

    Returns
    -------
    r_ij, rotations, semiaxes as C-contiguous arrays of ``dtype``, and ``dtype``.

    Raises
    ------
    ValueError
        wrong shapes, non-finite values, non-positive semi-axes, a rotation
        that is not orthonormal or not proper, or a dtype mix-up; the message
        names the value and the first offending pair.
    """
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    r_ij = np.ascontiguousarray(r_ij, dtype=dtype)
    rotations = np.ascontiguousarray(rotations, dtype=dtype)
    semiaxes = np.ascontiguousarray(semiaxes, dtype=dtype)
    if r_ij.ndim != 2 or r_ij.shape[1] != 3:
        raise ValueError(f"r_ij must have shape (P, 3), got {r_ij.shape}")
    n = r_ij.shape[0]
    if rotations.shape != (n, 3, 3):
        raise ValueError(f"rotations must have shape ({n}, 3, 3) to match r_ij, got {rotations.shape}")
    if semiaxes.shape != (n, 3):
        raise ValueError(f"semiaxes must have shape ({n}, 3) to match r_ij, got {semiaxes.shape}")
    # checked in slices so that validation needs little memory at any batch size
    for first in range(0, n, _CHECK_CHUNK):
        chunk = slice(first, min(first + _CHECK_CHUNK, n))
        _check_values(r_ij[chunk], rotations[chunk], semiaxes[chunk], first, check_rotations)
    return r_ij, rotations, semiaxes, dtype


def _check_values(r_ij, rotations, semiaxes, first: int, rotations_too: bool = True) -> None:
    # cheap whole-chunk tests first; the exact culprit is located only on failure
    for name, arr in (("r_ij", r_ij), ("rotations", rotations), ("semiaxes", semiaxes)):
        if not np.isfinite(arr.sum()):
            bad = ~np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))
            if bad.any():
                p = int(np.argmax(bad))
                raise ValueError(f"{name} has a non-finite value at pair {first + p}: {arr[p].tolist()}")
    if len(semiaxes) and semiaxes.min() <= 0:
        p = int(np.argmax((semiaxes <= 0).any(axis=1)))
        raise ValueError(f"semiaxes must be > 0; pair {first + p} has {semiaxes[p].tolist()}")
    if len(rotations) and rotations_too:
        check_rotations(rotations, first)


def check_rotations(rotations, first: int = 0) -> None:
    """Raise ValueError naming the first rotation that is not a proper rotation.

    Checks ``max |R R^T - I|`` against 1e-6 (1e-4 in float32) and ``det R > 0``,
    with elementwise products of contiguous rows (much cheaper than batched einsum / det).
    ``first`` is the pair index of ``rotations[0]`` (for the message).
    """
    rotations = np.asarray(rotations)
    tol = ORTHONORMAL_TOL.get(rotations.dtype, 1e-6)
    # one transposed copy makes every entry a contiguous row of pairs
    e = np.ascontiguousarray(rotations.reshape(-1, 9).T)
    rows = [e[3 * i : 3 * i + 3] for i in range(3)]
    deviation = np.zeros(len(rotations), dtype=rotations.dtype)
    for i in range(3):
        for j in range(i, 3):
            dot = rows[i][0] * rows[j][0] + rows[i][1] * rows[j][1] + rows[i][2] * rows[j][2]
            if i == j:
                dot -= 1.0
            np.maximum(deviation, np.abs(dot), out=deviation)
    bad = deviation > tol
    if bad.any():
        p = int(np.argmax(bad))
        raise ValueError(
            f"rotation at pair {first + p} is not orthonormal (max |R R^T - I| = {deviation[p]:.3g}): "
            f"{rotations[p].tolist()}"
        )
    (a, b, c) = rows
    det = (a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2])
           + a[2] * (b[0] * c[1] - b[1] * c[0]))
    bad = det < 0
    if bad.any():
        p = int(np.argmax(bad))
        raise ValueError(f"rotation at pair {first + p} is a reflection (det = {det[p]:.3g}): {rotations[p].tolist()}")

"""Checks on a pair batch shared by every variant, and the documented limits.

A bad input gets an error that names the offending value (and the pair index
where it is one pair's), never a silent wrong number. One kind of error per
kind of mistake, in every variant:

- ``TypeError``: a value of the wrong kind: ``hypers`` that is not an
  :class:`~einsum_workbench.reference.hypers.ExpansionHypers`; arrays of
  complex numbers (their imaginary part would be lost), of strings (numeric
  strings are not parsed), of booleans, or of Python objects (``None``, ragged
  lists);
- ``ValueError``: a value of the right kind outside what the problem admits:
  wrong shapes, non-finite values, values outside the ranges below, a rotation
  that is not proper, an unsupported or mixed-up float dtype.

Integer arrays are lengths like any other and are converted to float64 (or
the requested dtype): nothing is lost.

The limits themselves (ranges per dtype, with the measurements behind them)
are stated in :mod:`einsum_workbench.reference.limits`.
"""


from __future__ import annotations

import numpy as np

from einsum_workbench.reference.limits import ORTHONORMAL_TOL, PAIR_LIMITS, SUPPORTED_DTYPES, PairLimits

_CHECK_CHUNK = 8192  # pairs validated at a time (bounded scratch memory)
_ARRAY_NAMES = ("r_ij", "rotations", "semiaxes")
_NOT_GIVEN = object()  # check_pair_arrays without hypers (None is a mistake to report)


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_array_kind(name: str, value) -> np.ndarray:
    """``value`` as an array of real numbers, or a TypeError naming it.

    Accepts floating and integer arrays (and anything ``numpy.asarray`` turns
    into one, e.g. nested lists of numbers). Rejects complex numbers (the
    imaginary part would be dropped), strings (numeric strings are not
    parsed), booleans (not lengths), and Python objects (``None``, ragged
    lists): each with ``TypeError``.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists (NumPy >= 1.24)
        raise TypeError(f"{name} must be an array of real numbers, got {_short(value)} ({err})") from None
    kind = array.dtype.kind
    if kind in "fiu":
        return array
    what = {
        "c": "complex numbers (the imaginary part would be lost; pass the real part explicitly)",
        "b": "booleans (not lengths or matrix entries)",
        "U": "strings (numbers are not parsed from text)",
        "S": "bytes (numbers are not parsed from text)",
        "O": "Python objects",
    }.get(kind, f"dtype {array.dtype}")
    raise TypeError(f"{name} must be an array of real numbers, got {what}: {_short(value)}")


def check_hypers(hypers, dtype=None):
    """``hypers`` if it is an ExpansionHypers usable in ``dtype``.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        When given, the dtype's limits (``PAIR_LIMITS[dtype]``: largest degree
        and cutoff) are checked too.

    Raises
    ------
    TypeError
        ``hypers`` is not an ``ExpansionHypers`` (its type is named).
    ValueError
        float32 with a degree or cutoff above float32's limits (the value,
        the limit and the way out are named).
    """
    from einsum_workbench.reference.hypers import ExpansionHypers

    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(
            f"hypers must be an ExpansionHypers, got {type(hypers).__name__}: {_short(hypers, 80)}"
        )
    if dtype is not None:
        limits = PAIR_LIMITS.get(np.dtype(dtype))
        if limits is not None:
            if hypers.max_degree > limits.degree_max:
                raise ValueError(
                    f"{np.dtype(dtype)} supports channels of degree l + 2 (num_radial[l] - 1) up to "
                    f"{limits.degree_max}; lmax={hypers.lmax}, max_radial={hypers.max_radial!r} reach degree "
                    f"{hypers.max_degree} (its coefficients overflow or lose all digits): compute in float64"
                )
            if hypers.cutoff > limits.cutoff_max:
                raise ValueError(
                    f"cutoff = {hypers.cutoff!r} is above {np.dtype(dtype)}'s limit {limits.cutoff_max!r} angstrom "
                    "(pairs and radial norms leave its range): compute in float64"
                )
    return hypers


def resolve_dtype(dtype, *arrays, names=_ARRAY_NAMES) -> np.dtype:
    """Compute dtype of a call: ``dtype`` if given, else the inputs' own.

    Parameters
    ----------
    dtype : None, float32 or float64
    *arrays : the inputs (``r_ij, rotations, semiaxes``)
    names : their names, for messages

    Raises
    ------
    TypeError
        an input that is not an array of real numbers (complex, strings,
        booleans, objects; :func:`check_array_kind`).
    ValueError
        ``dtype`` is not float32/float64; the floating inputs disagree in
        dtype; or ``dtype`` differs from the inputs' (a float32/float64 mix-up:
        cast the inputs first, nothing is converted silently).
    """
    arrays = [check_array_kind(names[k] if k < len(names) else f"input {k}", a) for k, a in enumerate(arrays)]
    float_dtypes = sorted({a.dtype for a in arrays if a.dtype.kind == "f"}, key=str)
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


def check_pair_arrays(r_ij, rotations, semiaxes, dtype=None, *, check_rotations: bool = True,
                      hypers=_NOT_GIVEN):
    """Validate and normalise a pair batch.

    Parameters
    ----------
    r_ij : (P, 3) array, angstrom, finite, ``|r_ij| <= PAIR_LIMITS[dtype].distance_max``
    rotations : (P, 3, 3) array, proper rotations (body to lab)
    semiaxes : (P, 3) array, angstrom, in ``[semiaxis_min, semiaxis_max]`` of ``PAIR_LIMITS[dtype]``
    dtype : None, float32 or float64
        Compute dtype; None means the inputs' dtype (float64 for integers).
    check_rotations : bool
        False accepts any finite 3x3 matrices (the reference's ``any_matrix``).
    hypers : ExpansionHypers
        When given (``None`` included), checked first with :func:`check_hypers`
        (its type, and the dtype's limits on degree and cutoff). Every variant
        passes it.

    Returns
    -------
    r_ij, rotations, semiaxes as C-contiguous arrays of ``dtype``, and ``dtype``.

    Raises
    ------
    TypeError
        ``hypers`` is not an ExpansionHypers; an input of complex numbers,
        strings, booleans or objects.
    ValueError
        wrong shapes, non-finite values, semi-axes or distances outside the
        dtype's range, a rotation that is not orthonormal or not proper, a
        dtype mix-up, hyper-parameters beyond float32's limits; the message
        names the value and the first offending pair.
    """
    if hypers is not _NOT_GIVEN:
        check_hypers(hypers)
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    if hypers is not _NOT_GIVEN:
        check_hypers(hypers, dtype)
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
    limits = PAIR_LIMITS[dtype]
    semiaxis_max = limits.semiaxis_max
    if hypers is not _NOT_GIVEN and hypers.radial_basis == "gto":
        semiaxis_max = min(semiaxis_max, limits.semiaxis_per_sigma_max * hypers.sigma)
    # checked in slices so that validation needs little memory at any batch size
    for first in range(0, n, _CHECK_CHUNK):
        chunk = slice(first, min(first + _CHECK_CHUNK, n))
        _check_values(r_ij[chunk], rotations[chunk], semiaxes[chunk], first, check_rotations, limits,
                      semiaxis_max)
    return r_ij, rotations, semiaxes, dtype


def _check_values(r_ij, rotations, semiaxes, first: int, rotations_too: bool = True,
                  limits: PairLimits | None = None, semiaxis_max: float | None = None) -> None:
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
    if limits is not None and len(semiaxes):
        kind = semiaxes.dtype.type
        semiaxis_max = limits.semiaxis_max if semiaxis_max is None else semiaxis_max
        low, high = kind(limits.semiaxis_min), kind(semiaxis_max)
        if semiaxes.min() < low or semiaxes.max() > high:
            p = int(np.argmax(((semiaxes < low) | (semiaxes > high)).any(axis=1)))
            if semiaxes[p].min() >= low and semiaxis_max < limits.semiaxis_max:
                raise ValueError(
                    f"semiaxes must be <= {limits.semiaxis_per_sigma_max:g} x sigma = {semiaxis_max:g} angstrom "
                    f"with the GTO basis in {semiaxes.dtype} (a GTO much narrower than the ellipsoid has its "
                    "centre computed as a difference of nearly equal numbers and loses its digits); "
                    f"pair {first + p} has {semiaxes[p].tolist()}: widen sigma or compute in float64"
                )
            raise ValueError(
                f"semiaxes must be in [{limits.semiaxis_min:g}, {limits.semiaxis_max:g}] angstrom in "
                f"{semiaxes.dtype} (smaller or larger ones leave its range or lose all digits; "
                f"for a point-like particle use {limits.semiaxis_min:g}); "
                f"pair {first + p} has {semiaxes[p].tolist()}"
            )
        with np.errstate(over="ignore"):  # an overflow to inf is out of range, as it should be
            squared = r_ij[:, 0] * r_ij[:, 0] + r_ij[:, 1] * r_ij[:, 1] + r_ij[:, 2] * r_ij[:, 2]
        bound = kind(limits.distance_max * limits.distance_max)
        if squared.max() > bound:
            p = int(np.argmax(squared > bound))
            raise ValueError(
                f"|r_ij| must be <= {limits.distance_max:g} angstrom in {r_ij.dtype} (a pair further apart is "
                f"beyond any admitted cutoff and its moments leave the range); pair {first + p} has "
                f"r_ij = {r_ij[p].tolist()} (|r_ij| = {float(np.sqrt(np.sum(r_ij[p].astype(np.float64) ** 2))):.6g})"
            )
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

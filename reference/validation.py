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

Limits
------
All bounds inclusive; lengths in angstrom. Every input inside them gives
finite coefficients equal to the reference's in every variant, in float64
and float32 (checked at the corners by ``tests/kernels/test_limits.py``).

==============================  ===============  ===============  ==========================================
quantity                        float64          float32          where
==============================  ===============  ===============  ==========================================
``lmax``                        0 .. 20          0 .. 20          ``ExpansionHypers`` (``LMAX_LIMIT``)
degree ``l + 2(num_radial-1)``  <= 24            <= 12            ``ExpansionHypers`` (``DEGREE_LIMIT``);
                                                                  float32: :func:`check_hypers`
``sigma`` (GTO)                 [0.01, 100]      [0.01, 100]      ``ExpansionHypers`` (``SIGMA_RANGE``)
``cutoff``                      [0.01, 1000]     [0.01, 100]      ``ExpansionHypers`` (``CUTOFF_RANGE``);
                                                                  float32: :func:`check_hypers`
semi-axes ``l_k``               [0.01, 100]      [0.01, 100]      :func:`check_pair_arrays`
semi-axes, GTO basis            <= 1000 sigma    <= 16 sigma      :func:`check_pair_arrays` (with ``hypers``)
``|r_ij|``                      <= 1000          <= 100           :func:`check_pair_arrays`
pairs of one neighbour list     <= 20 million (estimated)         ``reference.neighbours.MAX_PAIRS``
==============================  ===============  ===============  ==========================================

``PAIR_LIMITS[dtype]`` (:class:`PairLimits`) holds the per-dtype values. The
lower bounds 0.01 are stored as the float32 number just below 0.01
(0.0099999998), so that an edge value survives a float32 round trip. Beyond
a limit, a ``ValueError`` names the value, the pair (for arrays) and the
limit; nothing is computed.

Why these values (measured on a 2-core Intel Xeon with AVX-512, November 2026):

- ``lmax <= 20``: the dense solid-harmonic tables ``T_l`` (kept by the
  reference and cached per hyper-parameter set; ``max_memory`` does not cover
  them) grow like ``lmax^5`` with the default radial counts: 0.2 MiB at lmax 6,
  2.6 MiB at 10, 34 MiB at 16, 117 MiB at 20 (built in 1.0 s, peak RSS
  300 MiB), 330 MiB at 24, 1.2 GiB at 30, 6.3 GiB at 40. numba_fused compiles
  its straight-line kernel in 4.5 s at lmax 10, 16 s at 14 and 69 s (peak
  800 MiB) at 20.
- degree ``<= 24``: the tables grow with the cube of each channel's degree
  (lmax 10 with max_radial 8, degree 26: 116 MiB; max_radial 10, degree 30:
  224 MiB; max_radial 20: 2.1 GiB); within lmax 20 and degree 24 they stay
  below ~330 MiB. (Radial counts are bounded earlier by the Loewdin
  orthonormalisation, which raises its own error at ``tol = 1e-8`` from 11
  GTO or 7 monomial radial functions per channel; raw coefficients have no
  such bound.)
- float32 degree ``<= 12``, cutoff and ``|r_ij|`` ``<= 100``: moments grow like
  ``(|r| + sqrt(degree) l)^degree``. At degree 12 with lengths of 100 the
  largest moment is 1.4e29 and the largest coefficient 1.6e29 (float32 stops
  at 3.4e38); at degree 14 the moments reach ~3e37. The monomial
  orthonormalisation factor ``cutoff^-(degree + 1.5)`` stays a normal float32
  number for cutoff <= 100.
- semi-axes and sigma in ``[0.01, 100]``: every variant's geometry
  (``1/l^2``, ``det A'``, ``exp(-k/2)``) stays finite and normal in both
  dtypes, and the reference (upstream's lab-frame solves) keeps ~8 digits on
  the most elongated ellipsoid admitted (aspect ratio 1e4, condition number
  1e8). Before: semi-axes of 1e-100 gave zeros in every variant, 1e-160 NaN
  in the batched ones (the right value is ~0.93), float32 semi-axes of 1e-7
  zeros in numba_fused; sigma 1e-160 gave NaN, 1e-200 ``ZeroDivisionError``,
  1e200 ``OverflowError``. For a point-like particle use 0.01.
- semi-axes ``<= 1000 sigma`` (float64), ``<= 16 sigma`` (float32) with the
  GTO basis: the product Gaussian's centre ``a = r sigma^2 / (l^2 + sigma^2)``
  is computed (by every variant, and by upstream) as ``r - A'^-1 r / sigma^2``,
  a difference of nearly equal numbers that loses ``(l / sigma)^2`` units in
  the last place. Measured error of the variants against the reference,
  relative to the size of the terms summed: float32 4e-5 at l = 16 sigma,
  2e-4 at 32, 3.7e-3 at 128 (tolerance 1e-4); float64 9e-10 at 1000 sigma,
  9e-8 at 1e4 (tolerance 1e-8).
- ``|r_ij| <= 1000`` (float64): pairs come from a neighbour list within the
  cutoff (at most 1000); up to there moments stay below ~1e73 at degree 24.
  Before: a pair at |r| = 1e100 gave NaN (NumPy) or 0 (Numba).

Where physics makes a channel tiny (a GTO narrower than the ellipsoid sees a
nearly flat density, so its l >= 1 coefficients are small against l = 0),
every variant, the reference included, computes it as a difference of much
larger terms: it is accurate to the dtype's precision relative to those
terms, not to its own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_CHECK_CHUNK = 8192  # pairs validated at a time (bounded scratch memory)
ORTHONORMAL_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}


def _float32_floor(value: float) -> float:
    """The largest float32 number <= ``value``, as a Python float.

    Lower bounds are stored so: 0.01 is not a binary number, and a semi-axis
    of 0.01 stored in float32 (0.0099999998) must stay inside the range after
    a round trip through float32 and back to float64. Upper bounds used here
    (100, 1000) are float32 numbers already.
    """
    low = np.float32(value)
    if float(low) > value:
        low = np.nextafter(low, np.float32(-np.inf))
    return float(low)


#: Largest ``lmax`` of :class:`ExpansionHypers` (inclusive).
LMAX_LIMIT = 20
#: Largest total monomial degree ``l + 2 (num_radial[l] - 1)`` of any channel
#: (inclusive), :class:`ExpansionHypers`; float32 has its own, ``PAIR_LIMITS``.
DEGREE_LIMIT = 24
#: GTO width ``sigma``, angstrom, inclusive (:class:`ExpansionHypers`).
SIGMA_RANGE = (_float32_floor(1e-2), 1e2)
#: Neighbour cutoff, angstrom, inclusive (:class:`ExpansionHypers`); float32
#: has a smaller largest value, ``PAIR_LIMITS``.
CUTOFF_RANGE = (_float32_floor(1e-2), 1e3)


@dataclass(frozen=True)
class PairLimits:
    """What one compute dtype admits (all bounds inclusive, lengths in angstrom).

    Attributes
    ----------
    semiaxis_min, semiaxis_max : float
        Every semi-axis ``l_k`` of every pair: ``semiaxis_min <= l_k <= semiaxis_max``.
    distance_max : float
        Every pair: ``|r_ij| <= distance_max``, tested as
        ``x*x + y*y + z*z <= distance_max**2`` in the compute dtype.
    degree_max : int
        ``hypers.max_degree <= degree_max`` (:func:`check_hypers`).
    cutoff_max : float
        ``hypers.cutoff <= cutoff_max`` (:func:`check_hypers`).
    semiaxis_per_sigma_max : float
        GTO basis only (needs ``hypers``): every semi-axis
        ``l_k <= min(semiaxis_max, semiaxis_per_sigma_max * sigma)``, that
        bound computed in float64 (Python floats) and then rounded to the
        nearest number of the compute dtype. The centre of
        the product Gaussian, ``a = r sigma^2 / (l^2 + sigma^2)`` along each
        body axis, is computed by every variant (and upstream) as
        ``r - A'^(-1) r / sigma^2``, a difference of nearly equal numbers
        that loses ``(l / sigma)^2`` units in the last place.

    The bounds are float32 numbers (0.01 is stored as 0.0099999998, the
    float32 nearest below it), so they are exact in both dtypes and a value
    at an edge stays inside after a round trip through float32. Comparisons
    are made in the compute dtype.
    """

    semiaxis_min: float
    semiaxis_max: float
    distance_max: float
    degree_max: int
    cutoff_max: float
    semiaxis_per_sigma_max: float


#: The ranges per compute dtype (module docstring: values and reasons).
PAIR_LIMITS = {
    np.dtype(np.float64): PairLimits(semiaxis_min=_float32_floor(1e-2), semiaxis_max=1e2, distance_max=1e3,
                                     degree_max=DEGREE_LIMIT, cutoff_max=CUTOFF_RANGE[1],
                                     semiaxis_per_sigma_max=1e3),
    np.dtype(np.float32): PairLimits(semiaxis_min=_float32_floor(1e-2), semiaxis_max=1e2, distance_max=1e2,
                                     degree_max=12, cutoff_max=1e2, semiaxis_per_sigma_max=16.0),
}

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

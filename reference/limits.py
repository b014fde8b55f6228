"""The documented limits of the problem: what every variant admits, per compute dtype.

The checks that enforce them are in :mod:`einsum_workbench.reference.validation`
(pair arrays, dtypes) and :class:`einsum_workbench.reference.hypers.ExpansionHypers`
(hyper-parameters); this module holds only the constants, so both can import it.

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
                                                                  float32: ``validation.check_hypers``
``sigma`` (GTO)                 [0.01, 100]      [0.01, 100]      ``ExpansionHypers`` (``SIGMA_RANGE``)
``cutoff``                      [0.01, 1000]     [0.01, 100]      ``ExpansionHypers`` (``CUTOFF_RANGE``);
                                                                  float32: ``validation.check_hypers``
semi-axes ``l_k``               [0.01, 100]      [0.01, 100]      ``validation.check_pair_arrays``
semi-axes, GTO basis            <= 1000 sigma    <= 16 sigma      ``validation.check_pair_arrays`` (with ``hypers``)
``|r_ij|``                      <= 1000          <= 100           ``validation.check_pair_arrays``
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
ORTHONORMAL_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}


def float32_floor(value: float) -> float:
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
SIGMA_RANGE = (float32_floor(1e-2), 1e2)
#: Neighbour cutoff, angstrom, inclusive (:class:`ExpansionHypers`); float32
#: has a smaller largest value, ``PAIR_LIMITS``.
CUTOFF_RANGE = (float32_floor(1e-2), 1e3)


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
    np.dtype(np.float64): PairLimits(semiaxis_min=float32_floor(1e-2), semiaxis_max=1e2, distance_max=1e3,
                                     degree_max=DEGREE_LIMIT, cutoff_max=CUTOFF_RANGE[1],
                                     semiaxis_per_sigma_max=1e3),
    np.dtype(np.float32): PairLimits(semiaxis_min=float32_floor(1e-2), semiaxis_max=1e2, distance_max=1e2,
                                     degree_max=12, cutoff_max=1e2, semiaxis_per_sigma_max=16.0),
}

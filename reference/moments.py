"""Moments of an unnormalised 3-D Gaussian, by recurrence.

``M[n0, n1, n2] = integral x^n0 y^n1 z^n2 exp(-1/2 (x - a)^T A (x - a)) d^3x
= (2 pi)^(3/2) det(A)^(-1/2) E[x^n0 y^n1 z^n2]`` for a normal law with mean
``a`` and covariance ``S = A^(-1)``. The recurrence (Isserlis / Stein)

    E[x^(n + e_k)] = a_k E[x^n] + sum_m S_km n_m E[x^(n - e_m)]

fills every total degree from 0 up. This is the computation of AniSOAP's Rust
``anisoap_rust_lib.compute_moments(precision, center, maxdeg)`` (same
arguments, same dense output); here it is compiled with numba so that the
reference loop pays about what upstream pays for its moments.
"""

from __future__ import annotations

import math

import numpy as np


def _moments_body(precision, centre, max_degree):
    cov = np.linalg.inv(precision)
    size = max_degree + 1
    m = np.zeros((size, size, size))
    m[0, 0, 0] = 1.0
    for degree in range(1, max_degree + 1):
        for n0 in range(degree, -1, -1):
            for n1 in range(degree - n0, -1, -1):
                n2 = degree - n0 - n1
                # step along the first non-zero exponent k from parent p = n - e_k
                if n0 > 0:
                    k, p0, p1, p2 = 0, n0 - 1, n1, n2
                elif n1 > 0:
                    k, p0, p1, p2 = 1, n0, n1 - 1, n2
                else:
                    k, p0, p1, p2 = 2, n0, n1, n2 - 1
                value = centre[k] * m[p0, p1, p2]
                if p0 > 0:
                    value += cov[k, 0] * p0 * m[p0 - 1, p1, p2]
                if p1 > 0:
                    value += cov[k, 1] * p1 * m[p0, p1 - 1, p2]
                if p2 > 0:
                    value += cov[k, 2] * p2 * m[p0, p1, p2 - 1]
                m[n0, n1, n2] = value
    factor = (2.0 * math.pi) ** 1.5 / math.sqrt(np.linalg.det(precision))
    return m * factor


_compiled = None


def _compiled_moments():
    # numba is imported on first use so that importing the workbench stays light
    global _compiled
    if _compiled is None:
        import numba

        _compiled = numba.njit(cache=True)(_moments_body)
    return _compiled


def compute_moments(precision, centre, max_degree):
    """Dense moment cube of an unnormalised Gaussian (drop-in for upstream's Rust).

    Parameters
    ----------
    precision : (3, 3) float64 array
        Symmetric positive-definite precision matrix ``A`` (1/angstrom^2).
    centre : (3,) float64 array
        Centre ``a`` (angstrom).
    max_degree : int, >= 0
        Largest total degree ``n0 + n1 + n2`` computed.

    Returns
    -------
    (max_degree+1,)*3 float64 array; entries of total degree above
    ``max_degree`` are zero. Units: angstrom^(3 + n0 + n1 + n2).

    Raises
    ------
    ValueError
        on wrong shapes, a negative degree, non-finite input or a precision
        matrix that is not positive definite (its eigenvalues are named).
    """
    precision = np.ascontiguousarray(precision, dtype=np.float64)
    centre = np.ascontiguousarray(centre, dtype=np.float64)
    if precision.shape != (3, 3) or centre.shape != (3,):
        raise ValueError(
            f"precision must be (3, 3) and centre (3,), got {precision.shape} and {centre.shape}"
        )
    if int(max_degree) < 0:
        raise ValueError(f"max_degree must be >= 0, got {max_degree!r}")
    if not (np.all(np.isfinite(precision)) and np.all(np.isfinite(centre))):
        raise ValueError(f"non-finite precision {precision!r} or centre {centre!r}")
    return _compiled_moments()(precision, centre, int(max_degree))


def compute_moments_python(precision, centre, max_degree):
    """The same recurrence in plain Python (slow; for checking the compiled one)."""
    return _moments_body(
        np.asarray(precision, dtype=np.float64), np.asarray(centre, dtype=np.float64),
        int(max_degree),
    )

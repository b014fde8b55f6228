"""Real solid harmonics as monomial tensors, in AniSOAP's convention.

``T_l[m + l, n, n0, n1, n2]`` is the coefficient of ``x^n0 y^n1 z^n2`` in
``|x|^(2n) R_lm(x)`` where ``R_lm = sqrt(4 pi / (2l+1)) |x|^l Y_lm`` are real
solid harmonics: sine-like for m < 0, cosine-like for m > 0, no Condon-Shortley
phase. This is what ``anisoap.utils.spherical_to_cartesian`` returns.

Built here from the closed form of the real regular solid harmonics (Racah
normalisation), e.g. Wikipedia, "Solid harmonics", section "Real form":

    C_l^m = sqrt((2 - delta_m0) (l-m)! / (l+m)!) Pi_l^m(z, r) A_m(x, y)
    S_l^m = sqrt(2 (l-m)! / (l+m)!)              Pi_l^m(z, r) B_m(x, y)
    Pi_l^m = sum_k (-1)^k 2^-l C(l,k) C(2l-2k,l) (l-2k)!/(l-2k-m)! r^2k z^(l-2k-m)
    A_m + i B_m = (x + i y)^m

and checked against scipy's spherical harmonics in the test suite.
"""

from __future__ import annotations

import functools
from math import comb, factorial, sqrt

import numpy as np

# A polynomial in x, y, z is a dict {(n0, n1, n2): coefficient}.


def _multiply(p: dict, q: dict) -> dict:
    out: dict = {}
    for (a0, a1, a2), ca in p.items():
        for (b0, b1, b2), cb in q.items():
            key = (a0 + b0, a1 + b1, a2 + b2)
            out[key] = out.get(key, 0.0) + ca * cb
    return out


def _r_squared_power(k: int) -> dict:
    """(x^2 + y^2 + z^2)^k, expanded with the multinomial theorem."""
    out = {}
    for i in range(k + 1):
        for j in range(k + 1 - i):
            out[(2 * i, 2 * j, 2 * (k - i - j))] = float(
                factorial(k) // (factorial(i) * factorial(j) * factorial(k - i - j))
            )
    return out


def _pi_lm(l: int, m: int) -> dict:
    out: dict = {}
    for k in range((l - m) // 2 + 1):
        coef = (
            (-1) ** k * comb(l, k) * comb(2 * l - 2 * k, l)
            * factorial(l - 2 * k) / factorial(l - 2 * k - m) / 2.0**l
        )
        for (a, b, c), cr in _r_squared_power(k).items():
            key = (a, b, c + l - 2 * k - m)
            out[key] = out.get(key, 0.0) + coef * cr
    return out


def _xy_power_parts(m: int) -> tuple[dict, dict]:
    """Real and imaginary parts of (x + i y)^m."""
    real, imag = {}, {}
    for p in range(m + 1):
        # term C(m,p) x^p (i y)^(m-p); i^(m-p) cycles 1, i, -1, -i
        c = comb(m, p)
        phase = (m - p) % 4
        if phase == 0:
            real[(p, m - p, 0)] = float(c)
        elif phase == 1:
            imag[(p, m - p, 0)] = float(c)
        elif phase == 2:
            real[(p, m - p, 0)] = -float(c)
        else:
            imag[(p, m - p, 0)] = -float(c)
    return real, imag


def solid_harmonic_polynomial(l: int, m: int) -> dict:
    """R_lm (Racah-normalised real solid harmonic) as ``{(n0, n1, n2): coef}``."""
    am = abs(m)
    real, imag = _xy_power_parts(am)
    norm = sqrt((1.0 if m == 0 else 2.0) * factorial(l - am) / factorial(l + am))
    angular = imag if m < 0 else real
    poly = _multiply(_pi_lm(l, am), angular)
    return {key: norm * c for key, c in poly.items() if c != 0.0}


@functools.lru_cache(maxsize=64)
def _solid_harmonic_tensors_cached(lmax: int, num_radial: tuple) -> tuple:
    tensors = []
    for l in range(lmax + 1):
        num_n = num_radial[l]
        d = l + 2 * (num_n - 1)
        t = np.zeros((2 * l + 1, num_n, d + 1, d + 1, d + 1))
        for m in range(-l, l + 1):
            poly = solid_harmonic_polynomial(l, m)
            for n in range(num_n):
                for (n0, n1, n2), c in _multiply(poly, _r_squared_power(n)).items():
                    t[m + l, n, n0, n1, n2] = c
        t.setflags(write=False)
        tensors.append(t)
    return tuple(tensors)


def solid_harmonic_tensors(lmax: int, num_radial) -> list[np.ndarray]:
    """Monomial tensors of ``|x|^(2n) R_lm`` for every l in 0..lmax.

    Parameters
    ----------
    lmax : int, >= 0
    num_radial : sequence of int, length lmax + 1
        Number of radial functions n per l (see ``ExpansionHypers.num_radial``).

    Returns
    -------
    list of read-only float64 arrays; entry l has shape
    ``(2l+1, num_radial[l], d+1, d+1, d+1)`` with ``d = l + 2 (num_radial[l] - 1)``.
    Non-zero only where ``n0 + n1 + n2 = l + 2n``. Cached per (lmax, num_radial).

    Raises
    ------
    ValueError if ``len(num_radial) != lmax + 1``.
    """
    num_radial = tuple(int(n) for n in num_radial)
    if len(num_radial) != lmax + 1:
        raise ValueError(
            f"num_radial must have lmax + 1 = {lmax + 1} entries, got {len(num_radial)}: {num_radial}"
        )
    return list(_solid_harmonic_tensors_cached(int(lmax), num_radial))

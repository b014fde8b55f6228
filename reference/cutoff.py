"""The optional smooth cutoff: featomic's shifted cosine.

Upstream AniSOAP cuts its neighbour pairs hard at ``rc``: a pair crossing
the cutoff is a jump in the density (and in any energy built on it) that no
force sees. featomic's ``ShiftedCosine(width w)`` (DESIGN.md section 3,
"Smooth cutoff (optional)") multiplies each pair's coefficients by

    f(r) = 1                                          for r <= rc - w,
    f(r) = (1 + cos(pi (r - rc + w) / w)) / 2         for rc - w < r < rc,
    f(r) = 0                                          for r >= rc,

with ``r = |r_ij|``, so that values and their first derivative

    f'(r) = -pi / (2 w) sin(pi (r - rc + w) / w)      in the shell, 0 elsewhere,

go to zero continuously at ``rc``. A pair's position derivative gains
``c_p f'(|r|) r / |r|``. Off by default everywhere (``smooth_cutoff=None``):
upstream's numbers stay. Where the cutoff applies to every variant:
:mod:`einsum_workbench.kernels.smooth_cutoff`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


def _check_cutoff(cutoff) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number (angstrom), got {cutoff!r}")
    cutoff = float(cutoff)
    if not math.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"cutoff must be finite and > 0 (angstrom), got {cutoff!r}")
    return cutoff


def _check_distances(r) -> np.ndarray:
    array = np.asarray(r)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"r must be an array of real distances (angstrom), got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"r must have shape (P,), one distance per pair, got {array.shape}")
    bad = ~np.isfinite(array) | (array < 0.0)
    if bad.any():
        p = int(np.argmax(bad))
        raise ValueError(f"r must hold finite distances >= 0; pair {p} has {float(array[p])!r}")
    return array


@dataclass(frozen=True)
class ShiftedCosine:
    """featomic's shifted-cosine smooth cutoff (module docstring).

    Parameters
    ----------
    width : float, angstrom, > 0
        Width ``w`` of the shell ``(rc - w, rc)`` in which the pairs fade
        out; at most the cutoff ``rc`` (checked where the cutoff is known:
        :meth:`values`, :meth:`derivatives`, and every call of a smoothed
        variant, whose cutoff is ``hypers.cutoff``). An int is stored as a float.

    Raises
    ------
    TypeError
        ``width`` is not a real number (a string, a bool, None; named).
    ValueError
        ``width`` is not finite or not > 0 (named).
    """

    width: float

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, numbers.Real):
            raise TypeError(f"ShiftedCosine width must be a real number (angstrom), got {self.width!r}")
        width = float(self.width)
        if not math.isfinite(width) or width <= 0.0:
            raise ValueError(f"ShiftedCosine width must be finite and > 0 (angstrom), got {self.width!r}")
        object.__setattr__(self, "width", width)

    def check_cutoff(self, cutoff) -> float:
        """``cutoff`` as a float, or ValueError when the width exceeds it (both named).

        Raises
        ------
        TypeError, ValueError
            ``cutoff`` is not a finite real number > 0, or ``width > cutoff``.
        """
        cutoff = _check_cutoff(cutoff)
        if self.width > cutoff:
            raise ValueError(f"ShiftedCosine width = {self.width!r} angstrom is larger than the cutoff "
                             f"{cutoff!r} angstrom: the shell (cutoff - width, cutoff) must lie in [0, cutoff]")
        return cutoff

    def _phase(self, r, cutoff):
        """(distances, shell mask, pi (r - rc + w) / w on the shell)."""
        cutoff = self.check_cutoff(cutoff)
        r = _check_distances(r)
        shell = (r > cutoff - self.width) & (r < cutoff)
        return r, shell, math.pi * (r[shell] - (cutoff - self.width)) / self.width

    def values(self, r, cutoff) -> np.ndarray:
        """``f(r)`` for each pair (module docstring).

        Parameters
        ----------
        r : (P,) float array, angstrom, finite, >= 0
            Pair distances ``|r_ij|`` (0 for a self pair: f = 1).
        cutoff : float, angstrom, > 0, >= width

        Returns
        -------
        (P,) float64 in [0, 1]: exactly 1 at and below ``cutoff - width``,
        exactly 0 at and beyond ``cutoff``.

        Raises
        ------
        TypeError, ValueError
            a bad cutoff or ``width > cutoff`` (:meth:`check_cutoff`); ``r``
            not a (P,) array of finite distances >= 0 (the pair is named).
        """
        return self.values_and_derivatives(r, cutoff)[0]

    def derivatives(self, r, cutoff) -> np.ndarray:
        """``f'(r) = df/dr`` for each pair (per angstrom; module docstring).

        Parameters and errors as :meth:`values`. Returns (P,) float64, <= 0:
        ``-pi / (2 w) sin(pi (r - rc + w) / w)`` in the shell, exactly 0
        elsewhere (both ends of the shell included, a self pair included).
        """
        return self.values_and_derivatives(r, cutoff)[1]

    def values_and_derivatives(self, r, cutoff):
        """(:meth:`values`, :meth:`derivatives`) from one check and one pass over ``r``."""
        r, shell, phase = self._phase(r, cutoff)
        f = (r <= cutoff - self.width).astype(np.float64)
        f[shell] = np.cos(0.5 * phase) ** 2  # = (1 + cos) / 2, without its cancellation near rc
        df = np.zeros(r.shape)
        df[shell] = -0.5 * math.pi / self.width * np.sin(phase)
        return f, df

    def pair_factors(self, r_ij, cutoff):
        """``f(|r_ij|)`` and its gradient ``f'(|r|) r / |r|`` along the pair vector.

        Parameters
        ----------
        r_ij : (P, 3) float array, angstrom, already validated (finite)
        cutoff : float, angstrom

        Returns
        -------
        f : (P,) float64
        gradient : (P, 3) float64, per angstrom; zero wherever ``f'`` is
            (a self pair, r = 0, is never divided by).

        Raises
        ------
        As :meth:`values`; ValueError for a ``r_ij`` that is not (P, 3).
        """
        r_ij = np.asarray(r_ij, dtype=np.float64)
        if r_ij.ndim != 2 or r_ij.shape[1] != 3:
            raise ValueError(f"r_ij must have shape (P, 3), got {r_ij.shape}")
        distance = np.sqrt(np.einsum("pa,pa->p", r_ij, r_ij))
        f, df = self.values_and_derivatives(distance, cutoff)
        gradient = np.zeros_like(r_ij)
        moving = np.flatnonzero(df)  # only in the shell, where |r| > cutoff - width >= 0
        gradient[moving] = (df[moving] / distance[moving])[:, None] * r_ij[moving]
        return f, gradient

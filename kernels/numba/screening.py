"""The thresholds of the Numba kernels' compiled input screens, read from ``reference.validation`` in one place.

Every Numba kernel screens each pair with ``check_pair_arrays``'s value tests
on the fly and hands a batch with a suspect pair to ``check_pair_arrays``,
which raises the canonical error. Both kinds of kernel read their thresholds
here: the specialised kernels have them inlined as constants
(``codegen.pairs.emit_screen``, with ``screen_limits``; they are part of the
cache key, ``codegen.keys``), the generic kernels take them as an array
(``generic``, with ``screen_limit_array``). So this is not code generation,
and sits beside the kernels rather than inside ``codegen``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import ORTHONORMAL_TOL


class ScreenLimits(NamedTuple):
    """Thresholds of the compiled input screens (``codegen.pairs.emit_screen``, ``generic._lane``).

    A pair passes when its values are finite, ``semiaxis_min < l_k < semiaxis_max``
    (and ``l_k > 0``), ``|r| < r_max``, ``max |R R^T - I| <= orthonormal_tol``
    and ``det R >= 0``; otherwise the caller hands the batch to
    ``check_pair_arrays``, which raises the canonical error (or finds the
    pair valid: the screen may flag more than it rejects, never less).
    Lengths in angstrom.
    """

    orthonormal_tol: float
    semiaxis_min: float = 0.0
    semiaxis_max: float = float("inf")
    r_max: float = float("inf")


def _validation_ranges(dtype, hypers: ExpansionHypers | None) -> tuple[float, float, float]:
    """(semi-axis min, semi-axis max, |r| max) that ``check_pair_arrays`` admits in ``dtype``.

    Read from ``reference.validation.PAIR_LIMITS[dtype]`` (inclusive bounds;
    with ``hypers`` of the GTO basis the semi-axis maximum is also
    ``semiaxis_per_sigma_max * sigma``); (0, inf, inf), the screen of before,
    where it is absent. The one place to rewire if those names change.
    """
    from einsum_workbench.reference import validation

    limits = getattr(validation, "PAIR_LIMITS", {}).get(np.dtype(dtype))
    if limits is None:
        return 0.0, float("inf"), float("inf")
    high = float(limits.semiaxis_max)
    if hypers is not None and hypers.radial_basis == "gto":
        high = min(high, float(limits.semiaxis_per_sigma_max) * float(hypers.sigma))
    return float(limits.semiaxis_min), high, float(limits.distance_max)


def screen_limits(dtype, hypers: ExpansionHypers | None = None) -> ScreenLimits:
    """The compiled screens' thresholds for ``dtype`` (and ``hypers``), from ``reference.validation``.

    The one place they are read: ``ORTHONORMAL_TOL`` and the ranges of
    ``PAIR_LIMITS`` (``_validation_ranges``). They shape the generated code
    and are part of ``codegen.keys.kernel_key``. The screen flags every pair outside the
    open ranges shrunk by 8 units of rounding, so a pair at an edge goes to
    ``check_pair_arrays``, which decides (a superset of what it rejects).
    Hyper-parameter limits (lmax, degree, sigma, cutoff) are checked once
    per call by ``check_hypers``, not per pair.
    """
    dtype = np.dtype(dtype)
    low, high, distance = _validation_ranges(dtype, hypers)
    return ScreenLimits(orthonormal_tol=float(ORTHONORMAL_TOL[dtype]), semiaxis_min=low, semiaxis_max=high,
                        r_max=distance)


@functools.lru_cache(maxsize=128)
def screen_limit_array(dtype, hypers: ExpansionHypers | None = None) -> np.ndarray:
    """``screen_limits(dtype, hypers)`` for the generic kernels, which screen in float64:
    (orthonormal tolerance, semi-axis min, semi-axis max, |r|^2 max), each
    tightened by 8 units of ``dtype``'s rounding so that a pair that
    ``check_pair_arrays`` (computing in ``dtype``) could reject is always flagged.
    Read-only (4,) float64, cached."""
    dtype = np.dtype(dtype)
    limits = screen_limits(dtype, hypers)
    eps = 8 * float(np.finfo(dtype).eps)
    array = np.array([
        limits.orthonormal_tol - eps,
        limits.semiaxis_min * (1 + eps),
        limits.semiaxis_max * (1 - eps),
        (limits.r_max * (1 - eps)) ** 2,
    ], dtype=np.float64)
    array.setflags(write=False)
    return array

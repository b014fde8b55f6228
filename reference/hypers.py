"""Hyper-parameters of the pairwise ellipsoidal expansion.

The rules follow AniSOAP 0.1.1 (``anisoap.representations.radial_basis``):
the number of radial functions per angular channel l is
``(lmax - l) // 2 + 1`` when ``max_radial`` is None, ``max_radial + 1`` for an
int and ``max_radial[l] + 1`` for a list.

Limits (:mod:`einsum_workbench.reference.validation` states them all, with
the measurements behind them): ``lmax <= LMAX_LIMIT`` (20), every channel's
degree ``l + 2 (num_radial[l] - 1) <= DEGREE_LIMIT`` (24), ``sigma`` in
``SIGMA_RANGE`` ([0.01, 100] angstrom), ``cutoff`` in ``CUTOFF_RANGE``
([0.01, 1000] angstrom). They are checked before anything is allocated.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from einsum_workbench.reference.limits import CUTOFF_RANGE, DEGREE_LIMIT, LMAX_LIMIT, SIGMA_RANGE

RADIAL_BASES = ("gto", "monomial")


def _as_real(name: str, value) -> float:
    """``value`` as a float; TypeError for anything that is not a real number
    (strings are not parsed, complex numbers and booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _as_positive_float(name: str, value, valid_range=None) -> float:
    value = _as_real(name, value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if valid_range is not None and not (valid_range[0] <= value <= valid_range[1]):
        raise ValueError(
            f"{name} must be in [{valid_range[0]:g}, {valid_range[1]:g}] angstrom, got {value!r} "
            "(outside it coefficients underflow, overflow or lose all digits; "
            "see einsum_workbench.reference.validation)"
        )
    return value


def _check_degree(lmax: int, max_radial) -> None:
    """ValueError when a channel's degree ``l + 2 max_radial[l]`` exceeds
    ``DEGREE_LIMIT`` (checked before any per-channel table is built)."""
    if isinstance(max_radial, numbers.Integral) and not isinstance(max_radial, bool):
        pairs = [(lmax, int(max_radial))] if max_radial >= 0 else []
    elif isinstance(max_radial, (list, tuple)) and len(max_radial) == lmax + 1:
        pairs = [(l, int(n)) for l, n in enumerate(max_radial)
                 if isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0]
    else:
        return  # None (degree <= lmax) or malformed: num_radial_per_l names the problem
    for l, n in pairs:
        if l + 2 * n > DEGREE_LIMIT:
            raise ValueError(
                f"max_radial={max_radial!r} with lmax={lmax} gives channel l={l} the degree "
                f"l + 2 max_radial = {l + 2 * n}, above the limit {DEGREE_LIMIT} (its solid-harmonic "
                "tables and moments grow with the cube of the degree); lower max_radial"
            )


def _as_non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def num_radial_per_l(lmax: int, max_radial) -> tuple[int, ...]:
    """Number of radial functions for each l in 0..lmax.

    Parameters
    ----------
    lmax : int, >= 0
    max_radial : None, int or sequence of int (length lmax + 1)

    Returns
    -------
    tuple of int, length lmax + 1

    Raises
    ------
    ValueError
        negative entries, or a list whose length is not lmax + 1 (the value and
        the expected length are named).
    TypeError
        anything that is neither None, an int nor a sequence of ints.
    """
    if max_radial is None:
        return tuple((lmax - l) // 2 + 1 for l in range(lmax + 1))
    if isinstance(max_radial, numbers.Integral) and not isinstance(max_radial, bool):
        n = _as_non_negative_int("max_radial", max_radial)
        return tuple(n + 1 for _ in range(lmax + 1))
    if isinstance(max_radial, (list, tuple)):
        if len(max_radial) != lmax + 1:
            raise ValueError(
                f"max_radial as a list must have lmax + 1 = {lmax + 1} entries "
                f"(one per angular channel), got {len(max_radial)}: {list(max_radial)!r}"
            )
        return tuple(
            _as_non_negative_int(f"max_radial[{l}]", n) + 1 for l, n in enumerate(max_radial)
        )
    raise TypeError(f"max_radial must be None, an int or a list of ints, got {max_radial!r}")


@dataclass(frozen=True)
class ExpansionHypers:
    """Hyper-parameters of one expansion, validated on construction.

    Parameters
    ----------
    lmax : int
        Largest angular channel l (>= 0).
    radial_basis : {"gto", "monomial"}
        GTO ``|x|^(2n) R_lm(x) exp(-|x|^2 / (2 sigma^2))`` or monomial
        ``|x|^(2n) R_lm(x)`` (orthonormalised on [0, cutoff]).
    cutoff : float
        Neighbour cutoff radius in angstrom (> 0). An int is accepted and
        stored as a float (upstream rejects ints for fear of overflow).
    sigma : float or None
        GTO width in angstrom; required for "gto", must be None for "monomial".
    max_radial : None, int or list of int
        Radial counts, see :func:`num_radial_per_l`.
    rcond, tol : float
        Loewdin orthonormalisation: eigenvalues of the overlap at or below
        ``rcond`` are dropped; a reconstruction error above ``tol`` is an error.
        Defaults are those of ``EllipsoidalDensityProjection`` (0 and 1e-8).

    Raises
    ------
    TypeError
        a value of the wrong kind (e.g. a string, a complex number, a bool
        where a number is expected), named.
    ValueError
        a value outside its range, named with the range: ``lmax`` in
        ``[0, LMAX_LIMIT]``, channel degrees up to ``DEGREE_LIMIT``, ``sigma``
        in ``SIGMA_RANGE``, ``cutoff`` in ``CUTOFF_RANGE``
        (:mod:`einsum_workbench.reference.validation`).
    """

    lmax: int
    radial_basis: str = "gto"
    cutoff: float = 7.0
    sigma: float | None = None
    max_radial: object = None
    rcond: float = 0.0
    tol: float = 1e-8
    num_radial: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        lmax = _as_non_negative_int("lmax", self.lmax)
        if lmax > LMAX_LIMIT:
            raise ValueError(
                f"lmax must be <= {LMAX_LIMIT}, got {lmax} (the solid-harmonic tables grow like lmax^5: "
                "117 MiB at lmax 20, 6.3 GiB at 40)"
            )
        if not isinstance(self.radial_basis, str):
            raise TypeError(f"radial_basis must be a str, one of {RADIAL_BASES}, got {self.radial_basis!r}")
        if self.radial_basis not in RADIAL_BASES:
            raise ValueError(
                f"radial_basis must be one of {RADIAL_BASES}, got {self.radial_basis!r}"
            )
        cutoff = _as_positive_float("cutoff", self.cutoff, CUTOFF_RANGE)
        sigma = self.sigma
        if self.radial_basis == "gto":
            if sigma is None:
                raise ValueError("the GTO radial basis needs a width: sigma=None given")
            sigma = _as_positive_float("sigma", sigma, SIGMA_RANGE)
        elif sigma is not None:
            raise ValueError(
                f"sigma is only used by the GTO basis; got sigma={sigma!r} with 'monomial'"
            )
        max_radial = self.max_radial
        if isinstance(max_radial, tuple):
            max_radial = list(max_radial)
        _check_degree(lmax, max_radial)
        num_radial = num_radial_per_l(lmax, max_radial)
        if isinstance(max_radial, list):
            max_radial = tuple(max_radial)  # keep the dataclass hashable
        rcond = _as_real("rcond", self.rcond)
        tol = _as_real("tol", self.tol)
        if not (math.isfinite(rcond) and rcond >= 0):
            raise ValueError(f"rcond must be finite and >= 0, got {self.rcond!r}")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be finite and > 0, got {self.tol!r}")
        for name, value in [
            ("lmax", lmax), ("cutoff", cutoff), ("sigma", sigma),
            ("max_radial", max_radial), ("rcond", rcond), ("tol", tol),
            ("num_radial", num_radial),
        ]:
            object.__setattr__(self, name, value)

    def degree(self, l: int) -> int:
        """Largest total monomial degree used by channel l: ``l + 2 (num_radial[l] - 1)``."""
        return l + 2 * (self.num_radial[l] - 1)

    @property
    def max_degree(self) -> int:
        """Largest total degree any channel uses."""
        return max(self.degree(l) for l in range(self.lmax + 1))

    @property
    def upstream_max_degree(self) -> int:
        """Degree of upstream's dense moment cube: ``max_l(l + 2 num_radial[l])``,
        two more than any channel uses."""
        return max(l + 2 * self.num_radial[l] for l in range(self.lmax + 1))

    def as_dict(self) -> dict:
        """The constructor's arguments, e.g. for benchmark metadata."""
        return {
            "lmax": self.lmax, "radial_basis": self.radial_basis, "cutoff": self.cutoff,
            "sigma": self.sigma, "max_radial": self.max_radial,
            "rcond": self.rcond, "tol": self.tol,
        }

"""Tables shared by the fast variants, computed once per hyper-parameter set.

Monomials ``x^n0 y^n1 z^n2`` are numbered by total degree first (then n0
descending, then n1 descending), so those of degree <= d are a prefix of
length ``(d+1)(d+2)(d+3)/6``. Moments are stored flat in that order, which
turns the contraction of channel l into one (pairs x K_l) @ (K_l x (2l+1) n_l)
product (:func:`compact_solid_harmonics`, :func:`stacked_tables`).
:func:`factored_tables` and :func:`dense_tables` are the other forms that
``opt_einsum_planned`` contracts; :mod:`einsum_workbench.kernels.wigner`
fits the rotations of its body-frame form.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.solid_harmonics import solid_harmonic_tensors

logger = logging.getLogger(__name__)


def power_of_two_bucket(n_pairs: int, smallest: int, largest: int) -> int:
    """Pair count a chunk of ``n_pairs`` pairs is padded or planned for.

    The next power of two at or above ``n_pairs``, clamped to
    ``[smallest, largest]``; ``largest`` itself for ``n_pairs >= largest``.
    Used where one specialisation per size must be reused (plans, compiled graphs).
    """
    if n_pairs >= largest:
        return largest
    return min(largest, max(smallest, 1 << max(0, int(n_pairs - 1).bit_length())))


def num_monomials(max_degree: int) -> int:
    """Number of monomials of total degree <= max_degree in three variables."""
    d = max_degree
    return (d + 1) * (d + 2) * (d + 3) // 6


@functools.lru_cache(maxsize=32)
def monomial_exponents(max_degree: int) -> np.ndarray:
    """(K, 3) int64 exponents (n0, n1, n2) in the flat order described above."""
    rows = [
        (n0, n1, d - n0 - n1)
        for d in range(max_degree + 1)
        for n0 in range(d, -1, -1)
        for n1 in range(d - n0, -1, -1)
    ]
    out = np.array(rows, dtype=np.int64).reshape(-1, 3)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class RecurrenceTable:
    """One step of the moment recurrence per monomial t of degree >= 1.

    ``E[t] = a[k] E[parent] + sum_m S[k, m] coef[m] E[lower[m]]`` where
    ``parent = t - e_k`` (k the first non-zero exponent of t),
    ``lower[m] = parent - e_m`` and ``coef[m]`` the exponent m of parent
    (0 where it is 0; ``lower[m]`` then points at monomial 0 harmlessly).
    All arrays are indexed by t - 1 (monomial 0 is the constant 1).
    ``layers[d]`` is the slice of targets of degree d + 1.
    """

    axis: np.ndarray      # (K-1,) int64, k
    parent: np.ndarray    # (K-1,) int64
    lower: np.ndarray     # (K-1, 3) int64
    coef: np.ndarray      # (K-1, 3) float64
    layers: tuple         # tuple of slices into the arrays above


@functools.lru_cache(maxsize=32)
def recurrence_table(max_degree: int) -> RecurrenceTable:
    """Flat-order recurrence for the moments up to ``max_degree``."""
    exps = monomial_exponents(max_degree)
    index = {tuple(e): i for i, e in enumerate(exps.tolist())}
    axis, parent, lower, coef = [], [], [], []
    for t in exps[1:].tolist():
        k = next(i for i in range(3) if t[i] > 0)
        p = list(t)
        p[k] -= 1
        axis.append(k)
        parent.append(index[tuple(p)])
        low, cf = [], []
        for m in range(3):
            if p[m] > 0:
                q = list(p)
                q[m] -= 1
                low.append(index[tuple(q)])
                cf.append(float(p[m]))
            else:
                low.append(0)
                cf.append(0.0)
        lower.append(low)
        coef.append(cf)
    layers = tuple(
        slice(num_monomials(d) - 1, num_monomials(d + 1) - 1) for d in range(max_degree)
    )
    arrays = [np.array(axis, dtype=np.int64), np.array(parent, dtype=np.int64),
              np.array(lower, dtype=np.int64).reshape(-1, 3),
              np.array(coef, dtype=np.float64).reshape(-1, 3)]
    for a in arrays:
        a.setflags(write=False)
    return RecurrenceTable(*arrays, layers=layers)


@functools.lru_cache(maxsize=64)
def compact_solid_harmonics(hypers: ExpansionHypers) -> tuple:
    """Per l, ``T_l / sqrt(4 pi / (2l+1))`` on the flat monomials of degree <= d_l.

    Returns
    -------
    tuple over l of read-only float64 arrays of shape
    ``(num_monomials(d_l), 2l+1, num_radial[l])``, with d_l = ``hypers.degree(l)``,
    ready for ``moments_flat[:, :K_l] @ table.reshape(K_l, -1)``.
    """
    start = time.perf_counter()
    out = []
    for l, t in enumerate(solid_harmonic_tensors(hypers.lmax, hypers.num_radial)):
        d = hypers.degree(l)
        exps = monomial_exponents(d)
        compact = t[:, :, exps[:, 0], exps[:, 1], exps[:, 2]]  # (2l+1, n, K)
        compact = np.ascontiguousarray(np.moveaxis(compact, -1, 0)) / np.sqrt(4 * np.pi / (2 * l + 1))
        compact.setflags(write=False)
        out.append(compact)
    logger.debug("compact solid-harmonic tables for %r built in %.3f s", hypers, time.perf_counter() - start)
    return tuple(out)


# one wide GEMM beats several thin ones unless zero padding more than doubles the work
MAX_PADDING_RATIO = 2.0


@functools.lru_cache(maxsize=64)
def stacked_tables(hypers: ExpansionHypers) -> tuple:
    """Solid-harmonic tables grouped into wide ``(K, Q)`` matrices.

    All channels go into one matrix (zero-padded to the largest monomial
    count) unless padding more than doubles the multiply-adds; then one
    matrix per l.

    Returns
    -------
    tuple of (table (K, Q) float64, columns) with ``columns`` a tuple of
    ``(l, start, stop)``: channel l's ``(2l+1) * num_radial[l]`` values are
    columns ``start:stop`` of the product.
    """
    tables = [t.reshape(t.shape[0], -1) for t in compact_solid_harmonics(hypers)]
    padded = max(t.shape[0] for t in tables) * sum(t.shape[1] for t in tables)
    needed = sum(t.size for t in tables)
    if padded <= MAX_PADDING_RATIO * needed:
        groups = [list(enumerate(tables))]
    else:
        groups = [[(l, t)] for l, t in enumerate(tables)]
    out = []
    for group in groups:
        stacked = np.zeros((max(t.shape[0] for _, t in group), sum(t.shape[1] for _, t in group)))
        columns, start = [], 0
        for l, t in group:
            stacked[: t.shape[0], start: start + t.shape[1]] = t
            columns.append((l, start, start + t.shape[1]))
            start += t.shape[1]
        stacked.setflags(write=False)
        out.append((stacked, tuple(columns)))
    return tuple(out)


# ---------------------------------------------------------------- tables of opt_einsum's other forms


@functools.lru_cache(maxsize=64)
def factored_tables(hypers: ExpansionHypers) -> tuple:
    """Per l, the factors ``(Y_l, R_l)`` of the compact table ``T_l = einsum("ma,nak->kmn")``.

    Returns
    -------
    tuple over l of (Y_l (2l+1, A_l), R_l (num_radial[l], A_l, K_l)) float64,
    ``A_l = (l+1)(l+2)/2`` monomials of degree l, ``K_l = num_monomials(hypers.degree(l))``.
    ``Y_l[m, a]`` is the coefficient of degree-l monomial a in
    ``R_lm / sqrt(4 pi / (2l+1))``; ``R_l[n, a, k]`` the coefficient of
    monomial k in ``|x|^(2n) x^a`` (multinomial expansion of
    ``(x^2 + y^2 + z^2)^n``).
    """
    out = []
    for l, compact in enumerate(compact_solid_harmonics(hypers)):
        degree = hypers.degree(l)
        exps = monomial_exponents(degree)
        index = {tuple(e): i for i, e in enumerate(exps.tolist())}
        first = num_monomials(l - 1) if l > 0 else 0
        harmonics = compact[first: num_monomials(l), :, 0].T.copy()     # (2l+1, A_l)
        n_radial = hypers.num_radial[l]
        radial = np.zeros((n_radial, harmonics.shape[1], exps.shape[0]))
        for n in range(n_radial):
            for a, (a0, a1, a2) in enumerate(exps[first: num_monomials(l)].tolist()):
                for i in range(n + 1):
                    for j in range(n - i + 1):
                        weight = math.factorial(n) // (math.factorial(i) * math.factorial(j) * math.factorial(n - i - j))
                        radial[n, a, index[(a0 + 2 * i, a1 + 2 * j, a2 + 2 * (n - i - j))]] += weight
        for arr in (harmonics, radial):
            arr.setflags(write=False)
        out.append((harmonics, radial))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def dense_tables(hypers: ExpansionHypers) -> tuple:
    """Per l, ``T_l / sqrt(4 pi / (2l+1))`` dense: (2l+1, num_radial[l], d+1, d+1, d+1) float64."""
    out = []
    for l, t in enumerate(solid_harmonic_tensors(hypers.lmax, hypers.num_radial)):
        dense = t / np.sqrt(4.0 * np.pi / (2 * l + 1))
        dense.setflags(write=False)
        out.append(dense)
    return tuple(out)

"""Generic Numba kernels for ``numba_fused``: one compiled kernel per dtype, driven by tables.

``numba_fused`` generates straight-line code per hyper-parameter set
(``codegen``), which is fastest but takes seconds to minutes to compile
(lmax 6: ~4 s, lmax 10: ~11 s here; lmax 20: minutes). The kernels here
compute the same coefficients for *any* hyper-parameter set: the moment
recurrence and the sparse contraction against ``T'_l`` are read from index
tables passed as arrays (``generic_tables``), so they are compiled once per
machine and dtype (``cache=True``: Numba's disk cache, beside this file or in
``NUMBA_CACHE_DIR``) and then load in a fraction of a second. ``numba_fused``
and ``numba_density`` run them on the first calls for a new hyper-parameter
set while the specialised kernel compiles in the background, and instead of
the specialised kernel above ``numba_dispatch.SPECIALISE_MAX_LMAX``.

Per block of ``BLOCK`` pairs (one pair per lane of the scratch arrays):

1. per pair, in float64: the screen of ``check_pair_arrays``'s value tests
   (limits from ``screening.screen_limits``) and the body-frame geometry
   (centre, covariance, scale; the formulas of ``codegen.pairs.emit_geometry``);
2. moments ``E[t]`` of the block by the recurrence table of
   ``codegen.pairs.moment_plan`` (the specialised kernel's recurrence),
   each step one loop over the block's lanes (vectorised by LLVM);
3. per output column, ``sum_k T'_l[k, m, n] E[k]`` over the non-zeros of the
   column (CSR tables), a loop over the lanes per non-zero.

Every pair goes through the same instructions whatever its block, lane or
thread (no fast-math: vector and scalar lanes round alike; NumPy's error
model: a division by zero gives inf, as in the specialised kernel, for pairs
the screen flags anyway), so results are
bit-identical for any thread count and any position in the batch. They are
not bit-identical to the specialised kernel's (other order of operations,
no fused multiply-adds, geometry in float64): they agree to rounding.

The centre density (``density_segments``) sums each segment's scaled moments
per lane in float64, adds the lanes in a fixed order, contracts once per
segment in float64 and multiplies by ``W_l`` (as ``numba_density``).

Compiled once per machine, on first use: ~5 s per kernel and dtype here
(pair kernel float64 5.8 s, centre density 5.0 s; float32 5.3 s and 4.8 s),
then loaded from Numba's disk cache in ~0.03 s.
``python -m einsum_workbench.kernels.numba.generic`` compiles all four ahead
of time (e.g. at set-up). Speed (one thread, GTO, default radial counts,
27,484 pairs): lmax 6 0.33 us per pair (the specialised kernel 0.08), lmax
10 1.75 us (1.0); see ``numba_dispatch.SPECIALISE_MAX_LMAX`` for larger lmax.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from einsum_workbench.reference.hypers import ExpansionHypers

logger = logging.getLogger(__name__)

#: Pairs per block of the pair kernel: the lanes of the scratch arrays (the inner loops, which
#: LLVM vectorises from 64 on here: 16 and 32 ran 1.5x to 2x slower at lmax 6 and 10, 128 alike).
BLOCK = 64
#: Blocks of pairs per parallel task (scratch allocated once per task).
BLOCKS_PER_TASK = 8
#: Pairs per block of the centre density (segments average ~70 pairs: shorter blocks waste fewer lanes).
DENSITY_BLOCK = 32
#: Segments per parallel task of the centre density.
SEGMENTS_PER_TASK = 8


class GenericTables(NamedTuple):
    """Index tables of one hyper-parameter set for the generic kernels (read-only arrays).

    Moment recurrence (monomial t >= 1 at row t - 1, ``codegen.pairs.moment_plan``):
    ``E[t] = centre[rec_k] E[rec_parent] + sum_q<rec_n cov[rec_k, rec_m[q]] rec_mult[q] E[rec_low[q]]``.
    Contraction (CSR over all output columns, channel l's columns
    ``col_first[l] .. col_first[l+1] - 1``, column ``m n_l + n``): non-zeros
    ``term_k[q], term_val[q]`` for ``q`` in ``col_ptr[c] .. col_ptr[c+1] - 1``.
    """

    rec_k: np.ndarray        # (K-1,) int64
    rec_parent: np.ndarray   # (K-1,) int64
    rec_n: np.ndarray        # (K-1,) int64, lower terms used (0..3)
    rec_m: np.ndarray        # (K-1, 3) int64
    rec_mult: np.ndarray     # (K-1, 3) float64
    rec_low: np.ndarray      # (K-1, 3) int64
    widths: np.ndarray       # (L,) int64, (2l+1) n_l
    n_radial: np.ndarray     # (L,) int64
    col_first: np.ndarray    # (L+1,) int64
    col_ptr: np.ndarray      # (C+1,) int64
    term_k: np.ndarray       # (nnz,) int64
    term_val: np.ndarray     # (nnz,) float64
    params: np.ndarray       # (2,) float64: gto (1.0 or 0.0), 1/sigma^2


@functools.lru_cache(maxsize=64)
def generic_tables(hypers: ExpansionHypers) -> GenericTables:
    """The tables of ``hypers`` (built in milliseconds up to lmax 10; cached per process)."""
    from einsum_workbench.kernels.numba.codegen.pairs import contraction_plan, moment_plan

    plan = moment_plan(hypers.max_degree)
    n = len(plan)
    rec_k = np.zeros(n, np.int64)
    rec_parent = np.zeros(n, np.int64)
    rec_n = np.zeros(n, np.int64)
    rec_m = np.zeros((n, 3), np.int64)
    rec_mult = np.zeros((n, 3), np.float64)
    rec_low = np.zeros((n, 3), np.int64)
    for i, (k, parent, lower) in enumerate(plan):
        rec_k[i], rec_parent[i], rec_n[i] = k, parent, len(lower)
        for q, (m, multiplicity, low) in enumerate(lower):
            rec_m[i, q], rec_mult[i, q], rec_low[i, q] = m, multiplicity, low
    contraction = contraction_plan(hypers)
    widths = np.array([len(columns) for columns in contraction], np.int64)
    col_first = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    counts = [len(terms) for columns in contraction for terms in columns]
    col_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    term_k = np.array([k for columns in contraction for terms in columns for k, _ in terms], np.int64)
    term_val = np.array([v for columns in contraction for terms in columns for _, v in terms], np.float64)
    gto = hypers.radial_basis == "gto"
    params = np.array([1.0 if gto else 0.0, 1.0 / hypers.sigma**2 if gto else 0.0])
    tables = GenericTables(rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low, widths,
                           np.array(hypers.num_radial, np.int64), col_first, col_ptr, term_k, term_val, params)
    for array in tables:
        array.setflags(write=False)
    return tables


@njit(cache=True, nogil=True, error_model="numpy")
def _lane(r, rot, ax, p, params, limits, cen, cov, E, j):
    """Screen and geometry of pair ``p`` into lane ``j``: centre, covariance, E[0] = scale.

    Returns True when the pair passes the screen (``limits``: orthonormality
    tolerance, semi-axis range (open), squared |r| bound (open)). float64
    arithmetic whatever the dtype.
    """
    tol, ax_min, ax_max, r2_max = limits[0], limits[1], limits[2], limits[3]
    r0, r1, r2 = np.float64(r[p, 0]), np.float64(r[p, 1]), np.float64(r[p, 2])
    s0, s1, s2 = np.float64(ax[p, 0]), np.float64(ax[p, 1]), np.float64(ax[p, 2])
    R00, R01, R02 = np.float64(rot[p, 0, 0]), np.float64(rot[p, 0, 1]), np.float64(rot[p, 0, 2])
    R10, R11, R12 = np.float64(rot[p, 1, 0]), np.float64(rot[p, 1, 1]), np.float64(rot[p, 1, 2])
    R20, R21, R22 = np.float64(rot[p, 2, 0]), np.float64(rot[p, 2, 1]), np.float64(rot[p, 2, 2])
    total = r0 + r1 + r2 + s0 + s1 + s2 + R00 + R01 + R02 + R10 + R11 + R12 + R20 + R21 + R22
    fine = total - total == 0.0
    fine = fine and s0 > 0.0 and s1 > 0.0 and s2 > 0.0
    fine = fine and s0 > ax_min and s1 > ax_min and s2 > ax_min
    fine = fine and s0 < ax_max and s1 < ax_max and s2 < ax_max
    fine = fine and r0 * r0 + r1 * r1 + r2 * r2 < r2_max
    g00 = R00 * R00 + R01 * R01 + R02 * R02 - 1.0
    g11 = R10 * R10 + R11 * R11 + R12 * R12 - 1.0
    g22 = R20 * R20 + R21 * R21 + R22 * R22 - 1.0
    g01 = R00 * R10 + R01 * R11 + R02 * R12
    g02 = R00 * R20 + R01 * R21 + R02 * R22
    g12 = R10 * R20 + R11 * R21 + R12 * R22
    fine = fine and abs(g00) <= tol and abs(g11) <= tol and abs(g22) <= tol
    fine = fine and abs(g01) <= tol and abs(g02) <= tol and abs(g12) <= tol
    det = R00 * (R11 * R22 - R12 * R21) + R01 * (R12 * R20 - R10 * R22) + R02 * (R10 * R21 - R11 * R20)
    fine = fine and det >= 0.0

    gto = params[0] != 0.0
    inv_s2 = params[1]
    il0, il1, il2 = 1.0 / (s0 * s0), 1.0 / (s1 * s1), 1.0 / (s2 * s2)
    d0, d1, d2 = il0 + inv_s2, il1 + inv_s2, il2 + inv_s2
    id0, id1, id2 = 1.0 / d0, 1.0 / d1, 1.0 / d2
    cov[0, 0, j] = R00 * R00 * id0 + R01 * R01 * id1 + R02 * R02 * id2
    cov[1, 1, j] = R10 * R10 * id0 + R11 * R11 * id1 + R12 * R12 * id2
    cov[2, 2, j] = R20 * R20 * id0 + R21 * R21 * id1 + R22 * R22 * id2
    c01 = R00 * R10 * id0 + R01 * R11 * id1 + R02 * R12 * id2
    c02 = R00 * R20 * id0 + R01 * R21 * id1 + R02 * R22 * id2
    c12 = R10 * R20 * id0 + R11 * R21 * id1 + R12 * R22 * id2
    cov[0, 1, j] = c01
    cov[1, 0, j] = c01
    cov[0, 2, j] = c02
    cov[2, 0, j] = c02
    cov[1, 2, j] = c12
    cov[2, 1, j] = c12
    norm = s0 * s1 * s2 * np.sqrt(d0 * d1 * d2)
    if gto:
        b0 = R00 * r0 + R10 * r1 + R20 * r2
        b1 = R01 * r0 + R11 * r1 + R21 * r2
        b2 = R02 * r0 + R12 * r1 + R22 * r2
        w0, w1, w2 = b0 * id0, b1 * id1, b2 * id2
        cen[0, j] = r0 - inv_s2 * (R00 * w0 + R01 * w1 + R02 * w2)
        cen[1, j] = r1 - inv_s2 * (R10 * w0 + R11 * w1 + R12 * w2)
        cen[2, j] = r2 - inv_s2 * (R20 * w0 + R21 * w1 + R22 * w2)
        kk = inv_s2 * (b0 * w0 * il0 + b1 * w1 * il1 + b2 * w2 * il2)
        E[0, j] = np.exp(-0.5 * kk) / norm
    else:
        cen[0, j] = r0
        cen[1, j] = r1
        cen[2, j] = r2
        E[0, j] = 1.0 / norm
    return fine


@njit(cache=True, nogil=True, error_model="numpy")
def _moments(E, cen, cov, rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low):
    """E[t, :] for t >= 1 from E[0, :] (the scale) by the recurrence table, SIMD over the lanes."""
    lanes = E.shape[1]
    for i in range(rec_k.shape[0]):
        t = i + 1
        k = rec_k[i]
        parent = rec_parent[i]
        for j in range(lanes):
            E[t, j] = cen[k, j] * E[parent, j]
        for q in range(rec_n[i]):
            m = rec_m[i, q]
            mult = rec_mult[i, q]
            low = rec_low[i, q]
            for j in range(lanes):
                E[t, j] += (cov[k, m, j] * mult) * E[low, j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def expand_pairs(r, rot, ax, out, out_start, widths, col_first, col_ptr, term_k, term_val,
                 rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low, params, limits):
    """Coefficients of every pair into ``out`` (flat; channel l's (P, 2l+1, n_l) block at ``out_start[l]``).

    Returns the number of tasks holding a pair that ``check_pair_arrays`` could reject.
    """
    n = r.shape[0]
    n_moments = rec_k.shape[0] + 1
    n_blocks = (n + BLOCK - 1) // BLOCK
    n_tasks = (n_blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK
    suspects = 0
    for task in prange(n_tasks):
        E = np.empty((n_moments, BLOCK), out.dtype)
        cen = np.empty((3, BLOCK), out.dtype)
        cov = np.empty((3, 3, BLOCK), out.dtype)
        acc = np.empty(BLOCK, out.dtype)
        vals = np.empty(term_val.shape[0], out.dtype)
        for q in range(term_val.shape[0]):
            vals[q] = term_val[q]
        bad = 0
        last = min(n_blocks, (task + 1) * BLOCKS_PER_TASK)
        for block in range(task * BLOCKS_PER_TASK, last):
            p0 = block * BLOCK
            for j in range(BLOCK):
                if not _lane(r, rot, ax, min(p0 + j, n - 1), params, limits, cen, cov, E, j):
                    bad = 1
            _moments(E, cen, cov, rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low)
            rows = min(BLOCK, n - p0)
            for l in range(widths.shape[0]):
                width = widths[l]
                base = out_start[l] + p0 * width
                for c in range(width):
                    column = col_first[l] + c
                    for j in range(BLOCK):
                        acc[j] = 0.0
                    for q in range(col_ptr[column], col_ptr[column + 1]):
                        k = term_k[q]
                        value = vals[q]
                        for j in range(BLOCK):
                            acc[j] += value * E[k, j]
                    for j in range(rows):
                        out[base + j * width + c] = acc[j]
        suspects += bad
    return suspects


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def density_segments(r, rot, ax, starts, w, w_start, out, out_start, widths, n_radial, col_first, col_ptr,
                     term_k, term_val, rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low, params, limits):
    """Segment s = pairs ``starts[s] .. starts[s+1] - 1``: summed coefficients times ``W_l`` into ``out``.

    ``out``: flat, channel l's (S, 2l+1, n_l) block at ``out_start[l]``; ``w``:
    float64 row-major ``W_l`` at ``w_start[l]``. Moments summed per lane in
    float64, lanes added in order, contraction and W in float64. Returns the
    number of tasks holding a pair that ``check_pair_arrays`` could reject.
    """
    n_segments = starts.shape[0] - 1
    n_moments = rec_k.shape[0] + 1
    widest = 0
    for l in range(widths.shape[0]):
        widest = max(widest, widths[l])
    n_tasks = (n_segments + SEGMENTS_PER_TASK - 1) // SEGMENTS_PER_TASK
    suspects = 0
    for task in prange(n_tasks):
        E = np.empty((n_moments, DENSITY_BLOCK), r.dtype)
        cen = np.empty((3, DENSITY_BLOCK), r.dtype)
        cov = np.empty((3, 3, DENSITY_BLOCK), r.dtype)
        sums = np.empty((n_moments, DENSITY_BLOCK), np.float64)
        moments = np.empty(n_moments, np.float64)
        row = np.empty(widest, np.float64)
        bad = 0
        for s in range(task * SEGMENTS_PER_TASK, min(n_segments, (task + 1) * SEGMENTS_PER_TASK)):
            start, stop = starts[s], starts[s + 1]
            sums[:, :] = 0.0
            for p0 in range(start, stop, DENSITY_BLOCK):
                for j in range(DENSITY_BLOCK):
                    p = p0 + j
                    if not _lane(r, rot, ax, min(p, stop - 1), params, limits, cen, cov, E, j):
                        bad = 1
                    if p >= stop:
                        E[0, j] = 0.0  # every moment of this lane is then exactly 0
                _moments(E, cen, cov, rec_k, rec_parent, rec_n, rec_m, rec_mult, rec_low)
                for t in range(n_moments):
                    for j in range(DENSITY_BLOCK):
                        sums[t, j] += E[t, j]
            for t in range(n_moments):
                total = 0.0
                for j in range(DENSITY_BLOCK):
                    total += sums[t, j]
                moments[t] = total
            for l in range(widths.shape[0]):
                width = widths[l]
                n_l = n_radial[l]
                for c in range(width):
                    column = col_first[l] + c
                    value = 0.0
                    for q in range(col_ptr[column], col_ptr[column + 1]):
                        value += term_val[q] * moments[term_k[q]]
                    row[c] = value
                base = out_start[l] + s * width
                for m in range(width // n_l):
                    for b in range(n_l):
                        value = 0.0
                        for i in range(n_l):
                            value += row[m * n_l + i] * w[w_start[l] + i * n_l + b]
                        out[base + m * n_l + b] = value
        suspects += bad
    return suspects


@njit(cache=True, nogil=True, error_model="numpy")
def segment_starts(segment, starts):
    """Fill ``starts`` (S + 1 entries) with each segment's first pair and return 0, if
    ``segment`` is non-decreasing with values in [0, S); else return 1 (``starts`` then
    meaningless)."""
    n_pairs = segment.shape[0]
    n_segments = starts.shape[0] - 1
    if n_pairs == 0:
        starts[:] = 0
        return 0
    first = segment[0]
    last = segment[n_pairs - 1]
    if first < 0 or first >= n_segments or last >= n_segments:
        return 1
    for s in range(first + 1):
        starts[s] = 0
    for p in range(1, n_pairs):  # one pass; the branch is rarely taken
        before = segment[p - 1]
        now = segment[p]
        if now != before:
            if now < before or now >= n_segments:  # unsorted, or out of range: never write past starts
                return 1
            for s in range(before + 1, now + 1):
                starts[s] = p
    for s in range(last + 1, n_segments + 1):
        starts[s] = n_pairs
    return 0


def flat_output(widths, n_rows: int, dtype):
    """One flat allocation for every channel's (n_rows, width) block, 8-element aligned starts.

    Returns (memory, starts (L,) int64).
    """
    sizes = [int(n_rows) * int(w) for w in widths]
    starts = np.cumsum([0] + [-(-size // 8) * 8 for size in sizes])
    return np.empty(int(starts[-1]), dtype=dtype), np.ascontiguousarray(starts[:-1], dtype=np.int64)


def _compile_all(dtypes=(np.float64, np.float32)) -> dict:
    """Compile (or load from Numba's disk cache) every generic kernel for ``dtypes``; seconds per dtype."""
    from einsum_workbench.reference.random_pairs import random_pair_batch

    from einsum_workbench.kernels.numba.screening import screen_limit_array

    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.0)
    seconds = {}
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        start = time.perf_counter()
        r, rot, ax = (np.ascontiguousarray(a, dtype=dtype) for a in random_pair_batch(3, 0))
        run_pairs(r, rot, ax, hypers, screen_limit_array(dtype))
        starts = np.zeros(2, np.int64)
        segment_starts(np.zeros(3, np.int64), starts)
        w = np.ascontiguousarray(np.concatenate([np.eye(n).reshape(-1) for n in hypers.num_radial]))
        w.setflags(write=False)
        run_density(r, rot, ax, starts, w, hypers, screen_limit_array(dtype))
        seconds[dtype.name] = time.perf_counter() - start
    return seconds


_first_use: set = set()


def _call(function, what: str, dtype, *args):
    """``function(*args)``; the first call per process and dtype logs the compilation (INFO, with
    its duration: once per machine) or the load from Numba's disk cache (DEBUG)."""
    key = (what, np.dtype(dtype))
    if key in _first_use:
        return function(*args)
    misses = sum(function.stats.cache_misses.values())
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    _first_use.add(key)
    if sum(function.stats.cache_misses.values()) > misses:
        logger.info("generic %s kernel (%s): compiled in %.1f s, once per machine (Numba's disk cache: %s)",
                    what, np.dtype(dtype), seconds, function.stats.cache_path)
    else:
        logger.debug("generic %s kernel (%s): loaded from Numba's disk cache, first call %.2f s",
                     what, np.dtype(dtype), seconds)
    return result


def run_pairs(r, rot, ax, hypers: ExpansionHypers, limits):
    """The generic pair kernel on prepared arrays: (list over l of (P, 2l+1, n_l) views, suspects)."""
    tables = generic_tables(hypers)
    n = r.shape[0]
    memory, out_start = flat_output(tables.widths, n, r.dtype)
    suspects = _call(expand_pairs, "pair", r.dtype, r, rot, ax, memory, out_start, tables.widths,
                     tables.col_first, tables.col_ptr, tables.term_k, tables.term_val, tables.rec_k,
                     tables.rec_parent, tables.rec_n, tables.rec_m, tables.rec_mult, tables.rec_low,
                     tables.params, limits)
    blocks = [memory[int(s):int(s) + n * int(w)].reshape(n, 2 * l + 1, int(n_l))
              for l, (s, w, n_l) in enumerate(zip(out_start, tables.widths, tables.n_radial))]
    return blocks, suspects


def weight_starts(hypers: ExpansionHypers) -> np.ndarray:
    """Offsets of W_0, W_1, ... in the concatenated row-major weights (read-only int64)."""
    starts = np.ascontiguousarray(np.cumsum([0] + [n * n for n in hypers.num_radial])[:-1], dtype=np.int64)
    starts.setflags(write=False)
    return starts


def run_density(r, rot, ax, starts, w, hypers: ExpansionHypers, limits):
    """The generic centre-density kernel on prepared, segment-sorted arrays:
    (list over l of (S, 2l+1, n_l) views, suspects)."""
    tables = generic_tables(hypers)
    n_segments = starts.shape[0] - 1
    memory, out_start = flat_output(tables.widths, n_segments, r.dtype)
    suspects = _call(density_segments, "centre-density", r.dtype, r, rot, ax, starts, w, _weight_starts(hypers),
                     memory, out_start, tables.widths, tables.n_radial, tables.col_first, tables.col_ptr,
                     tables.term_k, tables.term_val, tables.rec_k, tables.rec_parent, tables.rec_n, tables.rec_m,
                     tables.rec_mult, tables.rec_low, tables.params, limits)
    blocks = [memory[int(s):int(s) + n_segments * int(wd)].reshape(n_segments, 2 * l + 1, int(n_l))
              for l, (s, wd, n_l) in enumerate(zip(out_start, tables.widths, tables.n_radial))]
    return blocks, suspects


_weight_starts = functools.lru_cache(maxsize=64)(weight_starts)


if __name__ == "__main__":  # compile ahead of time: python -m einsum_workbench.kernels.numba.generic
    logging.basicConfig(level=logging.INFO)
    for name, seconds in _compile_all().items():
        print(f"numba_generic kernels for {name}: ready in {seconds:.1f} s")

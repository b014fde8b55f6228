"""``numba_fused`` backward pass: the centre density's vector-Jacobian product in one fused Numba kernel.

Registry problem ``"backward"`` (``kernels.registry.BACKWARD_VARIANTS``): the
contract is :mod:`einsum_workbench.reference.backward`; DESIGN.md section 3,
"Backward pass (vector-Jacobian product)", the formulas; the generated code
``codegen.backward`` (the centre density's emitters, ``codegen.density``
and ``codegen.pairs``).

Per segment (density row) the raw cotangent ``g W^T`` is contracted once with
the non-zeros of ``T'`` into ``gM = dL/dM`` and nine derived vectors of
lower moments (the moments' derivatives along the Gaussian's centre and
covariance); per pair only ten dot products of its own moment table with its
segment's vectors, then the chain rule to ``dL/dr``, ``dL/dtheta`` (and
``dL/dl``). No per-pair coefficient, Jacobian or scratch reaches memory; the
per-segment vectors live on the stack, so peak memory is the (P, 3) outputs
(plus sorted copies of the pair arrays when ``segment`` is unsorted).

Pairs are grouped by segment as in the centre density
(``kernels.numba.density``): a stable argsort only when ``segment`` is not
non-decreasing (results scattered back to the caller's pair order),
``prange`` over groups of ``LANES`` consecutive segments (dynamic
scheduling, about ``BLOCKS_PER_CHUNK`` blocks of pairs per chunk), each
segment's pairs in blocks of ``LANES``, one pair per SIMD lane. Every pair is
computed by the same instructions whatever its lane, block, thread or
position: results are bit-identical for any thread count, and an unsorted
batch gives exactly the results of the same batch sorted.

Compilation, as ``numba_fused`` gradients: one kernel per (hypers, dtype,
lanes), serving both ``semiaxes_gradients`` settings, written to
``dispatch.cache_dir()`` and compiled with ``njit(cache=True)`` in this
process on the first call (no generic fallback; logged at INFO), loaded from
the disk cache by later processes. First call on a cold cache here: 2.5 s
at lmax 6 (float32 3.8 s), 6.3 s at lmax 8 (9.3 s).

Measured (``bench/test_backward_ranking.py``: default workload, 27,484 pairs,
384 segments, one pinned thread, float64, 8 lanes, whole calls):

- Intel Xeon (AVX-512, family 6 model 167; 2026-12-07, since the entries are
  read per block, ``codegen.backward._opaque``): 0.035 us per pair against
  0.023 for the ``numba_fused`` centre density (density plus backward 2.5x
  the density alone), Torch autograd 12 us per pair (345x). Before that
  change: 0.043 us (3.0x, 248x). 16 lanes: 0.054 us, 4 lanes: 0.053 us.
- AMD EPYC Zen 5 (before that change): 0.024 to 0.026 us per pair (2.6 to
  2.8x), Torch autograd 220 to 480x; float32 0.015 against 0.009 us (2.6x).
- AMD EPYC Zen 4 (double-pumped AVX-512, before that change): 0.073 us per
  pair (3.8x, 104x); 16 lanes were 14% faster than 8 there.

Peak memory 48 B per pair, the outputs. About 10% of a call is the Python
wrapper and the first writes of the fresh outputs, 15% per-segment work (the
cotangent's contraction, the last block of each segment).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

import numpy as np

from einsum_workbench.reference.backward import PairCotangents, check_cotangent
from einsum_workbench.reference.density import check_segments
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays

from einsum_workbench.kernels.numba import generic as numba_generic
from einsum_workbench.kernels.numba.arrays import prepared_arrays, writable
from einsum_workbench.kernels.numba.dispatch import (
    BLOCKS_PER_CHUNK,
    cache_dir,
    cache_variables,
    dynamic_schedule,
    generated_module,
    num_threads,
    parallel_guard,
)
from einsum_workbench.kernels.numba.lanes import LANES_ENV, checked_density_lanes

__all__ = ["backward_module", "centre_density_backward"]

logger = logging.getLogger(__name__)

_modules: dict[tuple, object] = {}
_called: set[str] = set()  # the modules whose first call in this process has been logged
_lock = threading.Lock()
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def backward_module(hypers: ExpansionHypers, dtype, *, lanes: int | None = None):
    """The generated backward module for ``(hypers, dtype, lanes)``, written and imported once.

    Returns
    -------
    module with ``LANES`` and ``backward_segments`` (``codegen.backward.generate_backward_source``);
    its function compiles on first call or loads from Numba's disk cache next to the source.

    Raises
    ------
    ValueError
        dtype not float32/float64, or a bad ``lanes`` (``lanes.checked_density_lanes``).
    """
    from einsum_workbench.kernels.numba.codegen.backward import generate_backward_source
    from einsum_workbench.kernels.numba.codegen.keys import backward_kernel_key

    # keyed on the variables cache_dir reads (cache_dir() itself costs ~10 us), looked up before
    # resolving the lane count (reading the CPU's features costs ~1 ms)
    lookup = (hypers, dtype, lanes, cache_variables(), os.environ.get(LANES_ENV))
    module = _modules.get(lookup)
    if module is not None:
        return module
    dtype = np.dtype(dtype)
    with _lock:
        lanes = checked_density_lanes(dtype, lanes)
        name = f"einsum_workbench_numba_backward_{backward_kernel_key(hypers, dtype, lanes)}"
        module = generated_module(name, generate_backward_source(hypers, dtype, lanes), cache_dir())
        _modules[lookup] = module
        return module


@functools.lru_cache(maxsize=64)
def _weights(hypers: ExpansionHypers, orthonormal: bool) -> np.ndarray:
    """float64 row-major W_0, ..., W_lmax concatenated, read-only (identities when not ``orthonormal``:
    the kernel's ``g W^T`` then leaves the cotangent unchanged bit for bit, x * 1 + y * 0 = x)."""
    blocks = [orthonormalization_matrix(l, hypers) if orthonormal else np.eye(n)
              for l, n in enumerate(hypers.num_radial)]
    w = np.ascontiguousarray(np.concatenate([b.reshape(-1) for b in blocks] + [np.zeros(0)]), dtype=np.float64)
    w.setflags(write=False)
    return w


def _cotangent_arrays(cotangent, hypers: ExpansionHypers, n_segments: int) -> list:
    """Flat writable C-contiguous float64 views of the cotangent, for the kernel.

    Arrays that are already float64, C-contiguous and of the right shapes are
    used as they are (their finiteness is checked by the kernel, which then
    hands them to ``check_cotangent``); anything else goes through
    ``check_cotangent`` first (its errors name the l and the shape).
    """
    if type(cotangent) in (list, tuple) and len(cotangent) == hypers.lmax + 1:
        flat = []
        for l, (g, n) in enumerate(zip(cotangent, hypers.num_radial)):
            if not (type(g) is np.ndarray and g.dtype == np.float64 and g.shape == (n_segments, 2 * l + 1, n)
                    and g.flags.c_contiguous and g.flags.writeable):
                break
            flat.append(g.reshape(-1))
        else:
            return flat
    return [writable(g).reshape(-1) for g in check_cotangent(cotangent, hypers, n_segments)]


def _pair_arrays(r_ij, rotations, semiaxes, dtype, hypers):
    """``arrays.prepared_arrays``, skipping its conversions for arrays that need none (float32 or
    float64 alike, C-contiguous, writable, of the right shapes, ``dtype`` None or theirs)."""
    if (type(r_ij) is np.ndarray and type(rotations) is np.ndarray and type(semiaxes) is np.ndarray
            and r_ij.dtype == rotations.dtype == semiaxes.dtype and r_ij.dtype in _FLOATS
            and (dtype is None or (isinstance(dtype, (type, np.dtype)) and np.dtype(dtype) == r_ij.dtype))
            and r_ij.ndim == 2 and r_ij.shape[1] == 3 and rotations.shape == (r_ij.shape[0], 3, 3)
            and semiaxes.shape == (r_ij.shape[0], 3)
            and r_ij.flags.c_contiguous and rotations.flags.c_contiguous and semiaxes.flags.c_contiguous
            and r_ij.flags.writeable and rotations.flags.writeable and semiaxes.flags.writeable):
        return r_ij, rotations, semiaxes, r_ij.dtype
    return prepared_arrays(r_ij, rotations, semiaxes, dtype, hypers)


def _segments(segment, n_segments, n_pairs_hint: int):
    """``check_segments``'s result, skipping its O(P) pass for a C-contiguous writable int64 vector
    and an int ``n_segments`` (``numba_generic.segment_starts`` checks the range afterwards)."""
    if (type(segment) is np.ndarray and segment.dtype == np.int64 and segment.ndim == 1
            and segment.shape[0] == n_pairs_hint and segment.flags.c_contiguous and segment.flags.writeable
            and type(n_segments) is int and n_segments >= 0):
        return segment, n_segments
    segment, n_segments = check_segments(segment, n_segments, n_pairs_hint)
    return writable(segment), n_segments


def _check_flags(orthonormal, semiaxes_gradients) -> None:
    for name, flag in (("orthonormal", orthonormal), ("semiaxes_gradients", semiaxes_gradients)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r}")


def centre_density_backward(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, cotangent, *,
                            dtype=None, orthonormal: bool = False, semiaxes_gradients: bool = False,
                            threads=None, lanes: int | None = None) -> PairCotangents:
    """Vector-Jacobian product of the centre density from one fused Numba kernel.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
        Neighbour j minus centre i.
    rotations : (P, 3, 3) float array
        Body-to-lab rotation of neighbour j.
    semiaxes : (P, 3) float array, angstrom, > 0
    hypers : ExpansionHypers
        GTO or monomial basis.
    segment : (P,) int array
        Density row of each pair in ``[0, n_segments)``, any order (sorted input,
        as the pipeline supplies, skips the internal sort).
    n_segments : int >= 0
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dL/drho_l``, on orthonormalised rows when ``orthonormal``.
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes the pairs'
        moments and dot products in float32, the per-segment vectors in float64.
    orthonormal : bool
        The density is Loewdin-orthonormalised along n (``rho_l @ W_l``).
    semiaxes_gradients : bool
        Also ``dL/dl_k`` (the same kernel; about 40 operations per block of pairs more).
    threads : None or int >= 1
        Numba threads for this call (None: the current count), restored afterwards.
    lanes : None or a power of two >= 2
        Pairs per SIMD block and segments per group (None: the centre density's
        choice, ``lanes.default_density_lanes``).

    Returns
    -------
    PairCotangents
        ``r`` (P, 3) dL/dr_ij [L per angstrom], ``theta`` (P, 3) dL/dtheta about
        the lab axes [L per radian], ``semiaxes`` (P, 3) dL/dl_k [L per angstrom]
        or None; C-contiguous arrays of ``dtype`` in the caller's pair order.
        Bit-identical for any ``threads``; an unsorted batch gives the results of
        the same batch sorted by a stable sort on ``segment``.

    Raises
    ------
    TypeError
        ``hypers`` not an ``ExpansionHypers``; ``orthonormal`` or ``semiaxes_gradients``
        not a bool; inputs that are not real numbers; ``n_segments`` not an int,
        ``segment`` not integer; a cotangent that is not a list of real arrays.
    ValueError
        malformed pairs or values outside ``reference.validation``'s limits
        (``check_pair_arrays``'s own message naming the pair; the kernel screens
        every pair and hands suspect batches to it); a segment outside
        ``[0, n_segments)`` (``check_segments``); a cotangent of the wrong
        length, an entry of the wrong shape or a non-finite entry
        (``reference.backward.check_cotangent``: the l, the shape, the index);
        a bad ``threads`` or ``lanes``; an orthonormalisation that loses precision.

    Notes
    -----
    Formulas: ``codegen.backward`` (DESIGN.md section 3, "Backward pass"; the
    moments' derivatives of "Derivatives"). Dot products run in moment order
    per pair (the longest in two alternating partial sums,
    ``codegen.backward.PARTIAL_SUMS``): float64 results agree with the
    reference to rounding (its finite differences' ~1e-9). Memory: the
    outputs, plus sorted copies of the inputs and outputs when ``segment``
    is unsorted; no per-pair scratch.
    """
    check_hypers(hypers)
    _check_flags(orthonormal, semiaxes_gradients)
    want_axes = bool(semiaxes_gradients)
    segment, n_segments = _segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
    with num_threads(threads):
        r, rot, ax, dtype = _pair_arrays(r_ij, rotations, semiaxes, dtype, hypers)
        check_hypers(hypers, dtype)  # the dtype's limits (float32: degree, cutoff)
        n_pairs = r.shape[0]
        g = _cotangent_arrays(cotangent, hypers, n_segments)
        if n_pairs == 0 or n_segments == 0:
            check_segments(segment, n_segments, n_pairs)  # a pair without a segment is an error
            check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
            check_cotangent(cotangent, hypers, n_segments)
            empty = np.zeros((n_pairs, 3), dtype=dtype)
            return PairCotangents(r=empty, theta=empty.copy(), semiaxes=empty.copy() if want_axes else None)
        module = backward_module(hypers, dtype, lanes=lanes)
        starts = np.empty(n_segments + 1, dtype=np.int64)
        order = None
        if numba_generic.segment_starts(segment, starts):  # unsorted, or a value out of range
            segment, n_segments = check_segments(segment, n_segments, n_pairs)  # raises if out of range
            order = np.argsort(segment, kind="stable")  # pair order kept inside a segment
            r, rot, ax = r[order], rot[order], ax[order]
            numba_generic.segment_starts(segment[order], starts)
        if n_pairs < module.LANES:  # every block loads LANES rows: pad with pairs of no segment
            r, rot, ax = _padded(r, rot, ax, module.LANES, dtype)
        outs = [np.empty((n_pairs, 3), dtype=dtype) for _ in range(3 if want_axes else 2)]
        axes_out = outs[2] if want_axes else np.empty((0, 3), dtype=dtype)
        n_rows = -(-n_segments // module.LANES) * module.LANES
        chunk = max(1, (BLOCKS_PER_CHUNK * n_rows) // n_pairs)
        # a set lookup: the dispatcher's ``signatures`` costs ~10 us a call (it hashes the types)
        first_call, began = module.__name__ not in _called, time.perf_counter()
        with dynamic_schedule(chunk), parallel_guard():
            suspects = module.backward_segments(r, rot, ax, starts, _weights(hypers, bool(orthonormal)), *g,
                                                outs[0], outs[1], axes_out, int(want_axes))
        if first_call:
            _called.add(module.__name__)
            _log_first_call(module, time.perf_counter() - began)
    if suspects:
        check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)  # raises the canonical error
        check_cotangent(cotangent, hypers, n_segments)
    if order is not None:  # back to the caller's pair order
        for k, sorted_out in enumerate(outs):
            outs[k] = np.empty_like(sorted_out)
            outs[k][order] = sorted_out
    return PairCotangents(r=outs[0], theta=outs[1], semiaxes=outs[2] if want_axes else None)


def _log_first_call(module, seconds: float) -> None:
    """INFO: the first call of a kernel in this process, compiled here or loaded from the disk cache."""
    stats = module.backward_segments.stats
    how = "loaded from the disk cache" if sum(stats.cache_hits.values()) else "compiled"
    logger.info("numba_fused backward kernel %s: first call %.2f s (%s)", module.__name__, seconds, how)


def _padded(r, rot, ax, lanes: int, dtype):
    """The pair arrays padded to ``lanes`` rows with benign pairs (r = 0, R = I, semi-axes 1)."""
    n_pairs = r.shape[0]
    padded = (np.zeros((lanes, 3), dtype), np.zeros((lanes, 3, 3), dtype), np.ones((lanes, 3), dtype))
    padded[1][:] = np.eye(3, dtype=dtype)
    for whole, part in zip(padded, (r, rot, ax)):
        whole[:n_pairs] = part
    return padded

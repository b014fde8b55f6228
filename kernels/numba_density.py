"""``numba_fused`` centre density: pair moments summed per segment inside the kernel.

Contract: :mod:`einsum_workbench.reference.density` (one output row per
segment, e.g. per (frame, centre, neighbour species)). Built from
``numba_fused``'s generated straight-line LLVM IR (``numba_codegen``:
screen, body-frame geometry, unrolled moment recurrence, unrolled sparse
contraction, SIMD lanes), but no pair's coefficients ever reach memory:

- pairs are grouped by segment (a stable argsort only when ``segment`` is
  not already non-decreasing); ``prange`` runs over groups of ``LANES``
  consecutive segments with ``numba_fused``'s dynamic scheduling (about
  ``BLOCKS_PER_CHUNK`` blocks of pairs per chunk); a segment is always
  computed by one thread, in a fixed order;
- a segment is processed in blocks of ``LANES`` consecutive pairs, one pair
  per SIMD lane; surplus lanes of a segment's last block get scale 0 and
  add exactly 0;
- the contraction is linear in the moments, so instead of contracting every
  pair, each block adds ``scale * E[k]`` to one accumulator vector per
  moment (SoA, on the stack): at lmax 6 the ~360 multiply-adds of the
  pair kernel's contraction become 84 per block of pairs;
- at the segment's end the lanes are summed by a fixed shuffle tree; per
  group of ``LANES`` segments the summed moments are contracted with the
  non-zeros of ``T'_l`` (float64, SIMD across the segments), multiplied by
  ``W_l`` and each segment's row is written once
  (``numba_codegen.density_intrinsic``).

So results are bit-identical for any thread count, and an unsorted batch
gives exactly what the same batch pre-sorted by a stable sort on
``segment`` gives. The sums run in lane order, not pair order as the
reference's: float64 results agree with it to rounding.

Orthonormalisation (``orthonormal=True``) is applied per segment, when the
row is written: ``rho_l @ W_l`` in float64, ``W_l =
reference.radial.orthonormalization_matrix(l, hypers)`` read at run time
(identity matrices for raw output, which leave values unchanged bit for
bit). Folding ``W_l`` into the constant tables instead would make the
contraction denser (W_l is dense: 738 non-zeros against 362 at lmax 6,
more than the 362 + 176 multiply-adds of contracting then applying W) and
need one compiled kernel per (raw, orthonormal); applied after the sum it
keeps the reference's order (sum, then W), costs ~2.5 multiply-adds per pair
at the default workload's ~72 pairs per segment, and stays in float64 for
float32 outputs.

Measured (one pinned thread, float64, 8 lanes, default workload sorted by
(frame, centre, neighbour species): 27,484 pairs, 384 segments; Intel Xeon
Emerald Rapids with AVX-512, 2 cores shared with other jobs; 500
interleaved calls): this whole call 0.024 us per pair (minimum; 10th
percentile 0.027, median 0.033 under the other jobs' load), the kernel alone
0.022, against 0.061 (0.067, 0.10) for ``numba_fused.expand`` on the same
pairs in the same run. Lane counts: ``numba_codegen.default_density_lanes``.

Kernels are generated and compiled per (hypers, dtype, lanes) and cached on
disk like ``numba_fused``'s (``numba_fused.cache_dir``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading

import numba
import numpy as np

from einsum_workbench.reference.density import check_segments
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.validation import check_pair_arrays

from .numba_codegen import BLOCKS_PER_CHUNK, generate_density_source, kernel_key
from .numba_fused import CACHE_ENV, _num_threads, _prepared_arrays, _write_once, cache_dir

_modules: dict[tuple, object] = {}
_lock = threading.Lock()
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def density_module(hypers: ExpansionHypers, dtype, **options):
    """The generated centre-density module for ``(hypers, dtype)``, written and imported once.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64
    **options : ``lanes`` of ``numba_codegen.generate_density_source``.

    Returns
    -------
    module with ``LANES``, ``density_segments(r, rot, ax, starts, w, out0,
    ..., out_lmax)`` and ``segment_starts(segment, starts)`` (see
    ``numba_codegen.generate_density_source``), compiled on first call or
    loaded from Numba's disk cache (``numba_fused.cache_dir``).
    """
    # keyed on the variables cache_dir reads, not on cache_dir() itself (pathlib costs ~10 us a call)
    lookup = (hypers, np.dtype(dtype), tuple(sorted(options.items())),
              os.environ.get(CACHE_ENV), os.environ.get("XDG_CACHE_HOME"))
    module = _modules.get(lookup)
    if module is not None:
        return module
    dtype = np.dtype(dtype)
    with _lock:
        directory = cache_dir()
        key = kernel_key(hypers, dtype, kind="density", **options)
        name = f"einsum_workbench_numba_density_{key}"
        path = directory / f"{name}.py"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(path):
            _write_once(path, generate_density_source(hypers, dtype, **options))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # Numba's cache locator looks the module up by name
            spec.loader.exec_module(module)
        _modules[lookup] = module
        return module


@functools.lru_cache(maxsize=64)
def _weights(hypers: ExpansionHypers, orthonormal: bool) -> np.ndarray:
    """float64 row-major W_0, W_1, ..., W_lmax concatenated (read-only); identities when not ``orthonormal``.

    The kernel always multiplies by W; by an identity the raw values come out
    unchanged, bit for bit (x * 1 + y * 0 = x), which keeps one code path.
    """
    blocks = [orthonormalization_matrix(l, hypers) if orthonormal else np.eye(n)
              for l, n in enumerate(hypers.num_radial)]
    w = np.ascontiguousarray(np.concatenate([b.reshape(-1) for b in blocks]), dtype=np.float64)
    w.setflags(write=False)
    return w


def _output_rows(hypers: ExpansionHypers, n_rows: int, dtype) -> list:
    """Per l, a C-contiguous (n_rows, 2l+1, n_l) array (uninitialised: the kernel writes every row).

    One allocation per l: at the default workload each is below glibc's mmap
    threshold, so it is recycled from the heap instead of being mapped (and
    page-faulted) afresh on every call as one large allocation would be.
    """
    return [np.empty((n_rows, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]


def _pair_arrays(r_ij, rotations, semiaxes, dtype):
    """``numba_fused._prepared_arrays``, with a fast path for arrays that need nothing
    (same float32/float64 dtype, C-contiguous, right shapes, ``dtype`` None or theirs)."""
    if (type(r_ij) is np.ndarray and type(rotations) is np.ndarray and type(semiaxes) is np.ndarray
            and r_ij.dtype == rotations.dtype == semiaxes.dtype and r_ij.dtype in _FLOATS
            and (dtype is None or (isinstance(dtype, (type, np.dtype)) and np.dtype(dtype) == r_ij.dtype))
            and r_ij.flags.c_contiguous and rotations.flags.c_contiguous and semiaxes.flags.c_contiguous
            and r_ij.ndim == 2 and r_ij.shape[1] == 3 and rotations.shape == (r_ij.shape[0], 3, 3)
            and semiaxes.shape == (r_ij.shape[0], 3)):
        return r_ij, rotations, semiaxes, r_ij.dtype
    return _prepared_arrays(r_ij, rotations, semiaxes, dtype)


def _segment_array(segment, n_segments, n_pairs: int):
    """``check_segments``'s result, skipping its O(P) pass for a C-contiguous int64 vector and
    an int ``n_segments`` (the kernel module's ``segment_starts`` checks the range; any doubt
    goes to ``check_segments`` for the canonical error)."""
    if (type(segment) is np.ndarray and segment.dtype == np.int64 and segment.shape == (n_pairs,)
            and segment.flags.c_contiguous and type(n_segments) is int and n_segments >= 0):
        return segment, n_segments
    return check_segments(segment, n_segments, n_pairs)


def centre_density(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, *,
                   dtype=None, orthonormal: bool = False, threads=None, lanes=None):
    """Centre density from a fused Numba kernel: per segment, the sum of its pairs' coefficients.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
        Position of neighbour j (with its periodic shift) minus centre i.
    rotations : (P, 3, 3) float array
        Body-to-lab rotation of neighbour j.
    semiaxes : (P, 3) float array, angstrom, > 0
        Semi-axes of neighbour j.
    hypers : ExpansionHypers
    segment : (P,) array of int
        Output row of each pair, in ``[0, n_segments)``; any order (sorted
        input, as the AniSOAP pipeline supplies, skips the internal sort).
    n_segments : int >= 0
        Number of output rows.
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes the
        pairs' moments and their sums in float32, the per-segment
        contraction and orthonormalisation in float64.
    orthonormal : bool
        Apply the radial Loewdin orthonormalisation ``rho_l @ W_l``
        (AniSOAP's ``normalize=True``), per segment when the row is written.
    threads : None or int >= 1
        Numba threads for this call (None: ``numba.get_num_threads()``).
    lanes : None or power of two >= 2
        Pairs per SIMD block and segments per group (None:
        ``numba_codegen.default_density_lanes``, this machine's vector
        width); for measuring other machines.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) C-contiguous arrays of
    ``dtype``: row s is ``sum over p with segment[p] == s of c_l(p)`` with
    ``c_l`` the coefficients of DESIGN.md section 3 (zeros for a segment
    without pairs), times ``W_l`` when ``orthonormal``. Bit-identical for any
    ``threads``; an unsorted batch gives bit-for-bit the result of the same
    batch pre-sorted by a stable sort on ``segment``.

    Raises
    ------
    TypeError
        ``hypers`` is not an ``ExpansionHypers``; ``n_segments`` not an int or
        ``segment`` not integer (``check_segments``).
    ValueError
        malformed pairs, with ``check_pair_arrays``'s own message (the kernel
        screens every pair with its tests and hands suspect batches to it);
        a segment outside ``[0, n_segments)`` or of the wrong shape, naming
        the pair (``check_segments``); a bad ``threads`` or ``lanes``; an
        orthonormalisation that loses precision (``orthonormalization_matrix``).

    Notes
    -----
    Formula: DESIGN.md section 3, "Centre density" (upstream AniSOAP's
    ``contract_pairwise_feat`` sum, then the orthonormalisation along n).
    The sum inside a segment runs per SIMD lane, lanes summed at the end by
    a fixed tree, not in pair order as the reference does, and it sums
    moments (contracted once per segment) rather than coefficients: float64
    results agree with the reference to rounding. The first call per
    (hypers, dtype, lanes) generates and compiles the kernel (1-2 s at
    lmax 6 here; once per machine thanks to the disk cache). Memory: the
    outputs (rounded up to a whole group of segments), plus copies of the
    pair arrays when ``segment`` is unsorted; no per-pair scratch.
    """
    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(f"hypers must be an ExpansionHypers, got {type(hypers).__name__}")
    with _num_threads(threads):
        r, rot, ax, dtype = _pair_arrays(r_ij, rotations, semiaxes, dtype)
        n_pairs = r.shape[0]
        segment, n_segments = _segment_array(segment, n_segments, n_pairs)
        if n_pairs == 0 or n_segments == 0:
            check_segments(segment, n_segments, n_pairs)  # a pair without a segment is an error
            check_pair_arrays(r_ij, rotations, semiaxes, dtype)
            return [np.zeros((n_segments, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
        module = density_module(hypers, dtype, **({} if lanes is None else {"lanes": lanes}))
        starts = np.empty(n_segments + 1, dtype=np.int64)
        if module.segment_starts(segment, starts):  # unsorted, or a value out of range
            segment, n_segments = check_segments(segment, n_segments, n_pairs)  # raises if out of range
            order = np.argsort(segment, kind="stable")  # pair order kept inside a segment
            segment, r, rot, ax = segment[order], r[order], rot[order], ax[order]
            module.segment_starts(segment, starts)
        if n_pairs < module.LANES:  # every block loads LANES rows: pad with pairs of no segment
            padded = (np.zeros((module.LANES, 3), dtype), np.zeros((module.LANES, 3, 3), dtype),
                      np.ones((module.LANES, 3), dtype))
            padded[1][:] = np.eye(3, dtype=dtype)
            for whole, part in zip(padded, (r, rot, ax)):
                whole[:n_pairs] = part
            r, rot, ax = padded
        n_rows = -(-n_segments // module.LANES) * module.LANES
        out = _output_rows(hypers, n_rows, dtype)
        weights = _weights(hypers, bool(orthonormal))
        # dynamic scheduling: about BLOCKS_PER_CHUNK blocks of pairs per chunk, as numba_fused
        chunk = max(1, (BLOCKS_PER_CHUNK * n_rows) // n_pairs)
        previous = numba.set_parallel_chunksize(chunk)
        try:
            suspects = module.density_segments(r, rot, ax, starts, weights, *(o.reshape(-1) for o in out))
        finally:
            numba.set_parallel_chunksize(previous)
    if suspects:
        check_pair_arrays(r_ij, rotations, semiaxes, dtype)  # raises the canonical error
    return [o[:n_segments] for o in out]

"""``numba_fused`` centre density: pair moments summed per segment inside the kernel.

Contract: :mod:`einsum_workbench.reference.density` (one output row per
segment, e.g. per (frame, centre, neighbour species)). Built from
``numba_fused``'s generated straight-line LLVM IR (``codegen.pairs``:
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
  (``codegen.density.density_intrinsic``).

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
pairs in the same run. Lane counts: ``lanes.default_density_lanes``.

Kernels are generated and compiled per (hypers, dtype, lanes) and cached on
disk like ``numba_fused``'s (``dispatch.cache_dir``). Until a kernel is
compiled, and above ``numba_dispatch.SPECIALISE_MAX_LMAX``, the generic
centre-density kernel (``numba_generic.density_segments``: compiled once
per machine, table-driven; sums in float64) serves the calls, as for
``numba_fused`` (modes: ``numba_dispatch``). Each kernel is deterministic;
the first calls for a new hyper-parameter set may differ from later ones by
rounding.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np

from einsum_workbench.reference.density import check_segments
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays, resolve_dtype

from einsum_workbench.kernels.numba import dispatch as numba_dispatch
from einsum_workbench.kernels.numba import generic as numba_generic
from einsum_workbench.kernels.numba.arrays import prepared_arrays, writable
from einsum_workbench.kernels.numba.codegen.density import generate_density_source
from einsum_workbench.kernels.numba.codegen.keys import kernel_key
from einsum_workbench.kernels.numba.dispatch import (
    BLOCKS_PER_CHUNK,
    cache_dir,
    cache_variables,
    dynamic_schedule,
    generated_module,
    num_threads,
    parallel_guard,
)
from einsum_workbench.kernels.numba.lanes import checked_density_lanes
from einsum_workbench.kernels.numba.screening import screen_limit_array

_modules: dict[tuple, object] = {}
_lock = threading.Lock()
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: The kernel's ``neighbour`` argument for rotations and semi-axes given per pair.
_BY_PAIR = np.empty(0, np.int64)


def density_module(hypers: ExpansionHypers, dtype, **options):
    """The generated centre-density module for ``(hypers, dtype)``, written and imported once.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64
    **options : ``lanes`` of ``codegen.density.generate_density_source``.

    Returns
    -------
    module with ``LANES`` and ``density_segments(r, rot, ax, neighbour, starts, w, out0,
    ..., out_lmax)`` (see ``codegen.density.generate_density_source``),
    compiled on first call or loaded from Numba's disk cache
    (``dispatch.cache_dir``). ``centre_density`` goes through
    ``numba_dispatch.specialised`` instead (background compilation, generic
    kernel meanwhile).
    """
    # keyed on the variables cache_dir reads, not on cache_dir() itself (pathlib costs ~10 us a call)
    lookup = (hypers, np.dtype(dtype), tuple(sorted(options.items())), cache_variables())
    module = _modules.get(lookup)
    if module is not None:
        return module
    dtype = np.dtype(dtype)
    with _lock:
        name = f"einsum_workbench_numba_density_{kernel_key(hypers, dtype, kind='density', **options)}"
        module = generated_module(name, generate_density_source(hypers, dtype, **options), cache_dir())
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


def _pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=None):
    """``arrays.prepared_arrays``, with a fast path for arrays that need nothing
    (same float32/float64 dtype, C-contiguous, writable, right shapes, ``dtype`` None or theirs)."""
    if (type(r_ij) is np.ndarray and type(rotations) is np.ndarray and type(semiaxes) is np.ndarray
            and r_ij.dtype == rotations.dtype == semiaxes.dtype and r_ij.dtype in _FLOATS
            and (dtype is None or (isinstance(dtype, (type, np.dtype)) and np.dtype(dtype) == r_ij.dtype))
            and r_ij.flags.c_contiguous and rotations.flags.c_contiguous and semiaxes.flags.c_contiguous
            and r_ij.flags.writeable and rotations.flags.writeable and semiaxes.flags.writeable
            and r_ij.ndim == 2 and r_ij.shape[1] == 3 and rotations.shape == (r_ij.shape[0], 3, 3)
            and semiaxes.shape == (r_ij.shape[0], 3)):
        return r_ij, rotations, semiaxes, r_ij.dtype
    return prepared_arrays(r_ij, rotations, semiaxes, dtype, hypers)


def _atom_arrays(r_ij, rotations, semiaxes, dtype):
    """``(r (P, 3), rot (N, 3, 3), ax (N, 3), dtype)`` as writable C-contiguous arrays, for
    rotations and semi-axes given per atom (``centre_density(..., neighbour=...)``).

    Raises
    ------
    ValueError naming the shapes when they are not (P, 3), (N, 3, 3) and (N, 3); those of ``resolve_dtype``.
    """
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    r, rot, ax = (writable(np.ascontiguousarray(a, dtype=dtype)) for a in (r_ij, rotations, semiaxes))
    if not (r.ndim == 2 and r.shape[1] == 3 and rot.ndim == 3 and rot.shape[1:] == (3, 3)
            and ax.shape == (rot.shape[0], 3)):
        raise ValueError("with neighbour given, r_ij must be (P, 3), rotations (N, 3, 3) and semiaxes (N, 3), "
                         f"one row per atom; got {r.shape}, {rot.shape} and {ax.shape}")
    return r, rot, ax, dtype


@numba.njit(cache=True)
def _first_outside(index, n_rows):
    """The first p with ``index[p]`` outside ``[0, n_rows)``, or -1."""
    for p in range(index.shape[0]):
        if index[p] < 0 or index[p] >= n_rows:
            return p
    return -1


def _neighbour_array(neighbour, n_pairs: int, n_atoms: int) -> np.ndarray:
    """``neighbour`` as a writable C-contiguous int64 (P,) vector of rows in ``[0, N)``.

    Raises
    ------
    TypeError for a non-integer array; ValueError for a wrong shape or, naming the
    first such pair, a row outside the per-atom arrays.
    """
    array = np.asarray(neighbour)
    if array.dtype.kind not in "iu":
        raise TypeError(f"neighbour must hold integers (rows of the per-atom arrays), got dtype {array.dtype}")
    if array.shape != (n_pairs,):
        raise ValueError(f"neighbour must have shape ({n_pairs},), one atom per pair, got {array.shape}")
    array = writable(np.ascontiguousarray(array, dtype=np.int64))
    bad = _first_outside(array, n_atoms)
    if bad >= 0:
        raise ValueError(f"neighbour[{bad}] = {int(np.asarray(neighbour)[bad])} is not a row of the {n_atoms} "
                         "atoms' rotations and semi-axes")
    return array


def _segment_array(segment, n_segments, n_pairs: int):
    """``check_segments``'s result, skipping its O(P) pass for a C-contiguous int64 vector and
    an int ``n_segments`` (``numba_generic.segment_starts`` checks the range; any doubt
    goes to ``check_segments`` for the canonical error)."""
    if (type(segment) is np.ndarray and segment.dtype == np.int64 and segment.shape == (n_pairs,)
            and segment.flags.c_contiguous and type(n_segments) is int and n_segments >= 0):
        return segment, n_segments
    return check_segments(segment, n_segments, n_pairs)


def centre_density(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, *,
                   neighbour=None, dtype=None, orthonormal: bool = False, threads=None, lanes=None, kernel=None):
    """Centre density from a fused Numba kernel: per segment, the sum of its pairs' coefficients.

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, n_segments
        The contract's (:func:`einsum_workbench.reference.density.centre_density`): (P, 3)
        neighbour j minus centre i (angstrom), (P, 3, 3) body-to-lab rotations, (P, 3)
        semi-axes (angstrom, > 0) as float arrays; ``n_segments`` >= 0 output rows.
    segment : (P,) array of int
        Output row of each pair, in ``[0, n_segments)``; any order (sorted
        input, as the AniSOAP pipeline supplies, skips the internal sort).
    neighbour : None or (P,) array of int
        None: ``rotations`` and ``semiaxes`` are per pair. Else they are per
        atom, (N, 3, 3) and (N, 3), and pair p takes row ``neighbour[p]``
        (in ``[0, N)``): the result is bit for bit that of
        ``centre_density(r_ij, rotations[neighbour], semiaxes[neighbour], ...)``,
        and the specialised kernel reads the rows where they are instead of
        per-pair copies (the AniSOAP pipeline's 96 bytes a pair).
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes the
        pairs' moments in float32 (their sums too in the specialised
        kernel; the generic one sums in float64), the per-segment
        contraction and orthonormalisation in float64.
    orthonormal : bool
        Apply the radial Loewdin orthonormalisation ``rho_l @ W_l``
        (AniSOAP's ``normalize=True``), per segment when the row is written.
    threads : None or int >= 1
        Numba threads for this call (None: ``numba.get_num_threads()``).
    lanes : None or power of two >= 2
        Pairs per SIMD block and segments per group of the specialised
        kernel (None: ``lanes.default_density_lanes``, this
        machine's choice); for measuring other machines.
    kernel : None, "auto", "specialised" or "generic"
        Which kernel serves the call (None: ``$EINSUM_WORKBENCH_NUMBA_KERNEL``,
        else ``"auto"``); see ``numba_dispatch``.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) C-contiguous arrays of
    ``dtype``: row s is ``sum over p with segment[p] == s of c_l(p)`` with
    ``c_l`` the coefficients of DESIGN.md section 3 (zeros for a segment
    without pairs), times ``W_l`` when ``orthonormal``. For a given kernel,
    bit-identical for any ``threads``, and an unsorted batch gives
    bit-for-bit the result of the same batch pre-sorted by a stable sort on
    ``segment``.

    Raises
    ------
    TypeError
        ``hypers`` is not an ``ExpansionHypers`` (``check_hypers``); inputs
        that are not real numbers; ``n_segments`` not an int or ``segment``
        not integer (``check_segments``).
    ValueError
        malformed pairs or values outside ``reference.validation``'s limits,
        with ``check_pair_arrays``'s / ``check_hypers``'s own message (the
        kernel screens every pair with their tests and hands suspect batches
        to ``check_pair_arrays``);
        a segment outside ``[0, n_segments)`` or of the wrong shape, naming
        the pair (``check_segments``); with ``neighbour``, arrays of the wrong
        shape or a row outside the per-atom arrays (a TypeError if not
        integers); a bad ``threads``, ``lanes`` or
        ``kernel``; an orthonormalisation that loses precision
        (``orthonormalization_matrix``).

    Notes
    -----
    Formula: DESIGN.md section 3, "Centre density" (upstream AniSOAP's
    ``contract_pairwise_feat`` sum, then the orthonormalisation along n).
    The sum inside a segment runs per SIMD lane, lanes summed at the end by
    a fixed tree, not in pair order as the reference does, and it sums
    moments (contracted once per segment) rather than coefficients: float64
    results agree with the reference to rounding. With ``kernel="auto"`` the
    first call for a (hypers, dtype, lanes) on a machine is served by the
    generic kernel while the specialised one compiles in a background
    process (3 to 12 s up to lmax 10 here; once per machine thanks to the disk
    cache); see ``numba_fused.expand``. Memory: the outputs (rounded up to a
    whole group of segments), plus copies of the pair arrays when
    ``segment`` is unsorted; no per-pair scratch.
    """
    check_hypers(hypers)
    mode = numba_dispatch.resolve_mode(kernel)
    by_atom = neighbour is not None
    with num_threads(threads):
        if by_atom:
            r, rot, ax, dtype = _atom_arrays(r_ij, rotations, semiaxes, dtype)
            index = _neighbour_array(neighbour, r.shape[0], rot.shape[0])
        else:
            r, rot, ax, dtype = _pair_arrays(r_ij, rotations, semiaxes, dtype, hypers)
            index = _BY_PAIR
        check_hypers(hypers, dtype)  # the dtype's limits (float32: degree, cutoff)
        options = {} if lanes is None else {"lanes": checked_density_lanes(dtype, lanes)}
        n_pairs = r.shape[0]
        segment, n_segments = _segment_array(segment, n_segments, n_pairs)
        if n_pairs == 0 or n_segments == 0:
            check_segments(segment, n_segments, n_pairs)  # a pair without a segment is an error
            check_pair_arrays(r, *_per_pair(rot, ax, index), dtype, hypers=hypers)
            return [np.zeros((n_segments, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
        if not segment.flags.writeable:  # one compiled signature (writable int64) for segment_starts
            segment = segment.copy()
        starts = np.empty(n_segments + 1, dtype=np.int64)
        if numba_generic.segment_starts(segment, starts):  # unsorted, or a value out of range
            segment, n_segments = check_segments(segment, n_segments, n_pairs)  # raises if out of range
            order = np.argsort(segment, kind="stable")  # pair order kept inside a segment
            segment, r = segment[order], r[order]
            if by_atom:
                index = index[order]
            else:
                rot, ax = rot[order], ax[order]
            numba_generic.segment_starts(segment, starts)
        weights = _weights(hypers, bool(orthonormal))
        module = numba_dispatch.specialised("density", hypers, dtype, options, mode, n_pairs=n_pairs)
        if module is None or n_pairs < module.LANES:  # these read rows per pair
            rot, ax = _per_pair(rot, ax, index)
            index = _BY_PAIR
        if module is None:
            # about 2,048 pairs per chunk of tasks (SEGMENTS_PER_TASK segments each)
            chunk = max(1, (2048 * n_segments) // (numba_generic.SEGMENTS_PER_TASK * n_pairs))
            with dynamic_schedule(chunk), parallel_guard():
                out, suspects = numba_generic.run_density(r, rot, ax, starts, weights, hypers,
                                                          screen_limit_array(dtype, hypers))
            numba_dispatch.start_pending()
        else:
            if n_pairs < module.LANES:  # every block loads LANES rows: pad with pairs of no segment
                padded = (np.zeros((module.LANES, 3), dtype), np.zeros((module.LANES, 3, 3), dtype),
                          np.ones((module.LANES, 3), dtype))
                padded[1][:] = np.eye(3, dtype=dtype)
                for whole, part in zip(padded, (r, rot, ax)):
                    whole[:n_pairs] = part
                r, rot, ax = padded
            n_rows = -(-n_segments // module.LANES) * module.LANES
            out = _output_rows(hypers, n_rows, dtype)
            # dynamic scheduling: about BLOCKS_PER_CHUNK blocks of pairs per chunk, as numba_fused
            chunk = max(1, (BLOCKS_PER_CHUNK * n_rows) // n_pairs)
            with dynamic_schedule(chunk), parallel_guard():
                suspects = module.density_segments(r, rot, ax, index, starts, weights, *(o.reshape(-1) for o in out))
            out = [o[:n_segments] for o in out]
    if suspects:  # raises the canonical error (message and pair index)
        check_pair_arrays(r_ij, *_per_pair(rotations, semiaxes, neighbour), dtype, hypers=hypers)
    return out


def _per_pair(rotations, semiaxes, neighbour):
    """Rotations and semi-axes per pair: themselves, or their rows ``neighbour`` (per-atom arrays)."""
    if neighbour is None or neighbour is _BY_PAIR:
        return rotations, semiaxes
    return np.take(rotations, neighbour, axis=0), np.take(semiaxes, neighbour, axis=0)

"""``numba_fused`` gradients: values and their derivatives in one fused, specialised Numba pass.

Registry problem ``"gradients"`` (``kernels.registry.GRADIENT_VARIANTS``):
the contract and formulas are in :mod:`einsum_workbench.reference.gradients`,
the generated code in ``codegen.gradients`` (the pair kernel's
screen, geometry and moment recurrence, then per l the values, three
first-order contractions and explicit linear combinations; orientation
derivatives by rotation covariance). One SIMD lane per pair, blocks of pairs
spread over threads with ``numba.prange``; bit-identical for any thread
count, and the values are bit-identical to ``numba_fused.expand``'s
specialised kernel (same instructions).

The generated module is written to ``dispatch.cache_dir()`` and compiled
with ``njit(cache=True)``: the first call for a (hypers, dtype, semiaxes)
set compiles in this process (seconds; no generic fallback, unlike
``numba_fused.expand``), later processes load the machine code from disk. Measured here (Intel Xeon,
Emerald Rapids, 2 shared cores, loaded machine): first call on a cold cache
about 9 s at lmax 6 and 16 s at lmax 8 (14 s and 25 s with semi-axes),
against about 3 s for the values-only kernel.

Cost, default workload (lmax 6, GTO), one thread, same machine: the kernel
alone takes about 5.5 to 7x the values-only kernel per pair while its
outputs stay in cache (0.42 against 0.075 us per pair on 1,024 pairs); a
whole call on the 27,484 pairs is bound by writing 4.7 kB of output per pair
(130 MB; 7x the values' 672 B). Fresh pages for that output cost as much
again (1.3 to 1.5 us per pair in all); the output memory of the last call is
therefore recycled once nothing refers to it (``_output_memory``), which
brings a call to about 0.8 us per pair, 7 to 8x ``numba_fused.expand``
(whose 18 MB output malloc recycles by itself).
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

from einsum_workbench.reference.gradients import PairGradients
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays

from einsum_workbench.kernels.numba.arrays import prepared_arrays
from einsum_workbench.kernels.numba.dispatch import cache_dir, dynamic_schedule, generated_module, num_threads, parallel_guard
from einsum_workbench.kernels.numba.lanes import LANES_ENV, checked_gradient_lanes

__all__ = ["expand_with_gradients", "gradient_module"]

_modules: dict[tuple, object] = {}
_lock = threading.Lock()


def gradient_module(hypers: ExpansionHypers, dtype, *, lanes: int | None = None, semiaxes: bool = False):
    """The generated gradient module for ``(hypers, dtype, lanes, semiaxes)``, written and imported once.

    Returns
    -------
    module with ``LANES``, ``KINDS`` and ``expand_gradients(r, rot, ax, outs)``
    (``codegen.gradients.generate_gradient_source``); its function
    compiles on first call or loads from Numba's disk cache next to the source.

    Raises
    ------
    ValueError
        dtype not float32/float64, or a bad ``lanes`` (``lanes.checked_gradient_lanes``).
    """
    from einsum_workbench.kernels.numba.codegen.gradients import generate_gradient_source
    from einsum_workbench.kernels.numba.codegen.keys import gradient_kernel_key

    dtype = np.dtype(dtype)
    directory = cache_dir()
    # looked up before resolving the lane count: reading the CPU's features costs ~1 ms a call
    lookup = (hypers, dtype, lanes, bool(semiaxes), str(directory), os.environ.get(LANES_ENV))
    module = _modules.get(lookup)
    if module is not None:
        return module
    with _lock:
        lanes = checked_gradient_lanes(dtype, lanes)
        name = f"einsum_workbench_numba_gradients_{gradient_kernel_key(hypers, dtype, lanes, semiaxes)}"
        module = generated_module(name, generate_gradient_source(hypers, dtype, lanes, semiaxes), directory)
        _modules[lookup] = module
        return module


#: The last output allocation per dtype, handed out again once nothing refers to it (``_output_memory``).
_spare: dict = {}
_spare_lock = threading.Lock()


def _output_memory(size: int, dtype) -> np.ndarray:
    """``size`` elements of fresh or recycled output memory.

    Gradient outputs are large (4.7 kB per pair at lmax 6, 130 MB for the
    default workload): above glibc's largest mmap threshold (32 MiB) every
    allocation is a new mapping whose pages the kernel faults in and zeroes
    on first write, which measured about as long as the kernel itself.
    Smaller arrays (the values-only outputs) get recycled heap memory from
    malloc; this does the same for the gradients: the last allocation is kept
    and reused when no array from it is alive any more (its reference count
    is back to the cache's own), so a loop that drops each result before the
    next call (molecular dynamics, the bench) writes into mapped pages.
    Results still alive are never overwritten.
    """
    dtype = np.dtype(dtype)
    with _spare_lock:
        spare = _spare.get(dtype)
        # references: the cache's, getrefcount's argument, the local name
        if spare is not None and spare.size >= size and sys.getrefcount(spare) <= 3:
            return spare[:size]
        memory = np.empty(size, dtype=dtype)
        _spare[dtype] = memory
        return memory


def _output_arrays(hypers: ExpansionHypers, padded: int, kinds: int, dtype) -> list:
    """Flat per-(kind, l) output arrays carved from one allocation (see ``pairs._output_blocks``:
    one large allocation maps its pages faster than many medium ones; :func:`_output_memory`
    recycles it). Kind 0 holds (P_pad, 2l+1, n_l) rows, the others (P_pad, 3, 2l+1, n_l)."""
    sizes = [padded * (1 if kind == 0 else 3) * (2 * l + 1) * n
             for kind in range(kinds) for l, n in enumerate(hypers.num_radial)]
    starts = np.cumsum([0] + [-(-size // 8) * 8 for size in sizes])
    memory = _output_memory(int(starts[-1]), dtype)
    return [memory[start:start + size] for start, size in zip(starts, sizes)]


def expand_with_gradients(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                          semiaxes_gradients: bool = False, threads=None, lanes: int | None = None) -> PairGradients:
    """Raw pair coefficients and their derivatives, from one fused Numba kernel.

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, dtype
        As :func:`einsum_workbench.kernels.numba.pairs.expand`: (P, 3) float array (angstrom),
        (P, 3, 3) body to lab, (P, 3) semi-axes (angstrom, > 0); an ``ExpansionHypers``; the
        compute and output dtype, None (the inputs'), float32 (computes in float32) or float64.
    semiaxes_gradients : bool
        Also the derivatives along each semi-axis (a separate kernel with six
        second-order contractions more).
    threads : None or int >= 1
        Numba threads for this call (None: the current count), restored afterwards.
    lanes : None or a power of two >= 2
        Pairs per SIMD block (None: ``lanes.gradient_lane_choice``, per machine).

    Returns
    -------
    PairGradients
        ``values[l]`` (P, 2l+1, num_radial[l]), bit-identical to
        ``numba_fused.expand(..., kernel="specialised")``; ``positions[l]`` and
        ``orientations[l]`` (P, 3, 2l+1, num_radial[l]) (angstrom^-1, radian^-1
        times the coefficients' unit), ``semiaxes[l]`` likewise or None:
        the contract of :mod:`einsum_workbench.reference.gradients`.
        Bit-identical for any ``threads`` and any position of a pair in the batch.

    Raises
    ------
    ValueError
        malformed pairs or values outside ``reference.validation``'s limits,
        with ``check_pair_arrays``'s own message naming the pair (the kernel
        screens every pair as ``numba_fused`` does); bad ``threads``, ``lanes``
        or hyper-parameters (``check_hypers``).
    TypeError
        ``hypers`` is not an ``ExpansionHypers``; inputs that are not real numbers.

    Notes
    -----
    Formulas: ``codegen.gradients`` (DESIGN.md section 3,
    "Derivatives"). Memory: the outputs only (one allocation), no per-pair scratch.
    """
    check_hypers(hypers)
    semiaxes_gradients = bool(semiaxes_gradients)
    with num_threads(threads):
        r, rot, ax, dtype = prepared_arrays(r_ij, rotations, semiaxes, dtype, hypers)
        check_hypers(hypers, dtype)  # the dtype's limits (float32: degree, cutoff)
        n_pairs = r.shape[0]
        kinds = 4 if semiaxes_gradients else 3
        if n_pairs == 0:
            check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
            return _assemble(hypers, _output_arrays(hypers, 0, kinds, dtype), 0, 0, kinds)
        module = gradient_module(hypers, dtype, lanes=lanes, semiaxes=semiaxes_gradients)
        padded = -(-n_pairs // module.LANES) * module.LANES
        flat = _output_arrays(hypers, padded, kinds, dtype)
        with dynamic_schedule(), parallel_guard():
            suspects = module.expand_gradients(r, rot, ax, tuple(flat))
    if suspects:
        check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)  # raises the canonical error
    return _assemble(hypers, flat, padded, n_pairs, kinds)


def _assemble(hypers: ExpansionHypers, flat: list, padded: int, n_pairs: int, kinds: int) -> PairGradients:
    """The flat outputs as a ``PairGradients`` of (P, [3,] 2l+1, n_l) views (padding rows cut off)."""
    channels = hypers.lmax + 1
    fields = []
    for kind in range(kinds):
        blocks = []
        for l, n in enumerate(hypers.num_radial):
            shape = (padded, 2 * l + 1, n) if kind == 0 else (padded, 3, 2 * l + 1, n)
            blocks.append(flat[kind * channels + l].reshape(shape)[:n_pairs])
        fields.append(blocks)
    return PairGradients(values=fields[0], positions=fields[1], orientations=fields[2],
                         semiaxes=fields[3] if kinds == 4 else None)

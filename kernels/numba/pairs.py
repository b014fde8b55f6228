"""``numba_fused``: one fused, specialised, parallel Numba kernel per hyper-parameter set.

For each pair: Gaussian parameters in the ellipsoid's body frame, moments up to
the degree the channels need, contraction against the non-zeros of ``T_l``
only, the scale folded into the moments, each output written once. The
per-pair code is generated as straight-line code specialised to the
hyper-parameters and dtype (``codegen.pairs``), blocks of pairs are vectorised
across SIMD lanes (``lanes.lane_choice``: chosen per machine), and
pairs are spread over threads with ``numba.prange``. Results are
bit-identical for any thread count.

The generated module is written to a cache directory and compiled with
``njit(cache=True)``, so a second process loads the machine code from disk
instead of compiling again. Directory: ``cache_dir()``
(``$EINSUM_WORKBENCH_NUMBA_CACHE``, else ``<cache root>/numba``:
``einsum_workbench.paths``).

Compiling a specialised kernel takes seconds to minutes (lmax 6: ~4 s,
lmax 10: ~11 s here). Until it is ready, and above
``numba_dispatch.SPECIALISE_MAX_LMAX``, calls are served by the generic
kernel (``numba_generic``: compiled once per machine, driven by tables),
while a background process compiles the specialised one: see
``numba_dispatch`` for the modes (``kernel=`` or
``EINSUM_WORKBENCH_NUMBA_KERNEL``: ``auto``, ``specialised``, ``generic``).
Each kernel is deterministic; the first calls for a new hyper-parameter set
may differ from later ones by rounding.
"""

from __future__ import annotations

import threading

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays

from einsum_workbench.kernels.numba import dispatch as numba_dispatch
from einsum_workbench.kernels.numba import generic as numba_generic
from einsum_workbench.kernels.numba.arrays import prepared_arrays
from einsum_workbench.kernels.numba.codegen.keys import kernel_key
from einsum_workbench.kernels.numba.dispatch import (
    CACHE_ENV,
    cache_dir,
    dynamic_schedule,
    generated_module,
    num_threads,
    parallel_guard,
)
from einsum_workbench.kernels.numba.screening import screen_limit_array

__all__ = ["CACHE_ENV", "cache_dir", "expand", "kernel_module"]

_modules: dict[tuple, object] = {}
_lock = threading.Lock()


def kernel_module(hypers: ExpansionHypers, dtype, **options):
    """The generated module for ``(hypers, dtype)``, written and imported once (not compiled).

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64
    **options : ``lanes`` and ``split`` of ``codegen.pairs.generate_source``
        (for experiments; the defaults are the per-machine choice).

    Returns
    -------
    module with ``LANES`` and ``expand_pairs(r, rot, ax, out0, ..., out_lmax)``
    (see ``codegen.pairs.generate_source``). Its function compiles on first
    call, or loads from Numba's disk cache next to the source. ``expand``
    goes through ``numba_dispatch.specialised`` instead (background
    compilation, generic kernel meanwhile).
    """
    from einsum_workbench.kernels.numba.codegen.pairs import generate_source

    dtype = np.dtype(dtype)
    directory = cache_dir()
    lookup = (hypers, dtype, tuple(sorted(options.items())), str(directory))
    module = _modules.get(lookup)
    if module is not None:
        return module
    with _lock:
        name = f"einsum_workbench_numba_fused_{kernel_key(hypers, dtype, **options)}"
        module = generated_module(name, generate_source(hypers, dtype, **options), directory)
        _modules[lookup] = module
        return module


def _output_blocks(hypers: ExpansionHypers, n_pairs: int, lanes: int, dtype) -> list:
    """Per l, a C-contiguous (P_padded, 2l+1, n_l) array, all carved from one allocation.

    P_padded rounds n_pairs up to a multiple of ``lanes`` (every block of
    pairs is written whole). One large allocation instead of lmax + 1 medium
    ones: fresh medium allocations are mapped page by page on first write
    (minor page faults cost ~5x the kernel itself here), while one large
    NumPy allocation is advised to use transparent huge pages.
    """
    padded = -(-n_pairs // lanes) * lanes
    sizes = [padded * (2 * l + 1) * n for l, n in enumerate(hypers.num_radial)]
    starts = np.cumsum([0] + [-(-size // 8) * 8 for size in sizes])  # 8-element aligned blocks
    memory = np.empty(int(starts[-1]), dtype=dtype)
    return [
        memory[start:start + size].reshape(padded, 2 * l + 1, n)
        for l, (n, start, size) in enumerate(zip(hypers.num_radial, starts, sizes))
    ]


#: Tasks of the generic kernel (``numba_generic.BLOCKS_PER_TASK`` blocks of pairs) a thread takes at a time.
GENERIC_TASKS_PER_CHUNK = 8


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None, threads=None, kernel=None):
    """Raw expansion coefficients of every pair from the fused Numba kernel.

    Parameters
    ----------
    r_ij, rotations, semiaxes : (P, 3), (P, 3, 3), (P, 3) float arrays
        Pair vectors (angstrom), body-to-lab rotations, semi-axes (angstrom, > 0), within
        the limits of ``reference.validation.check_pair_arrays``.
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes in float32.
    threads : None or int >= 1
        Numba threads for this call (None: ``numba.get_num_threads()``);
        the previous count is restored afterwards.
    kernel : None, "auto", "specialised" or "generic"
        Which kernel serves the call (None: ``$EINSUM_WORKBENCH_NUMBA_KERNEL``,
        else ``"auto"``); see ``numba_dispatch``.

    Returns
    -------
    list over l of (P, 2l+1, num_radial[l]) C-contiguous arrays of ``dtype``:
    the coefficients of DESIGN.md section 3, bit-identical for any ``threads``
    and any position of a pair in the batch, for a given kernel.

    Raises
    ------
    ValueError
        malformed input or values outside ``reference.validation``'s limits,
        with ``check_pair_arrays``'s / ``check_hypers``'s own message (the
        kernel screens every pair with their tests, thresholds from
        ``screening.screen_limits``, and hands suspect batches to
        ``check_pair_arrays``), or a bad ``threads`` or ``kernel``.
    TypeError
        ``hypers`` is not an ``ExpansionHypers`` (``check_hypers``); inputs
        that are not real numbers.

    Notes
    -----
    ``kernel="auto"``: the first call for a (hypers, dtype) pair on a machine
    returns in well under a second up to lmax 10, computed by the generic
    kernel, while the specialised one compiles in a background process (4 to
    11 s up to lmax 10 here; once per machine thanks to the disk cache, see
    ``cache_dir``); later calls use it once it is ready, and the first call
    of a later process loads it from disk (~0.3 s). The two kernels agree to
    rounding, not bit for bit. Above ``numba_dispatch.SPECIALISE_MAX_LMAX``
    the generic kernel only. Thread-safe, also under Numba's workqueue
    threading layer (calls are then serialised). Memory: the outputs only
    (one allocation, rounded up to a whole block of pairs), no scratch
    beyond a few kB per thread.
    """
    check_hypers(hypers)
    mode = numba_dispatch.resolve_mode(kernel)
    with num_threads(threads):
        r, rot, ax, dtype = prepared_arrays(r_ij, rotations, semiaxes, dtype, hypers)
        check_hypers(hypers, dtype)  # the dtype's limits (float32: degree, cutoff)
        n_pairs = r.shape[0]
        if n_pairs == 0:
            check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
            return [np.empty((0, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
        module = numba_dispatch.specialised("pairs", hypers, dtype, {}, mode, n_pairs=n_pairs)
        if module is not None:
            out = _output_blocks(hypers, n_pairs, module.LANES, dtype)
            with dynamic_schedule(), parallel_guard():
                suspects = module.expand_pairs(r, rot, ax, *(o.reshape(-1) for o in out))
            out = [o[:n_pairs] for o in out]
        else:
            with dynamic_schedule(GENERIC_TASKS_PER_CHUNK), parallel_guard():
                out, suspects = numba_generic.run_pairs(r, rot, ax, hypers, screen_limit_array(dtype, hypers))
            numba_dispatch.start_pending()
    if suspects:
        check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)  # raises the canonical error
    return out

"""``numba_fused``: one fused, specialised, parallel Numba kernel per hyper-parameter set.

For each pair: Gaussian parameters in the ellipsoid's body frame, moments up to
the degree the channels need, contraction against the non-zeros of ``T_l``
only, the scale folded into the moments, each output written once. The
per-pair code is generated as straight-line code specialised to the
hyper-parameters and dtype (``numba_codegen``), blocks of pairs are vectorised
across SIMD lanes, and pairs are spread over threads with ``numba.prange``.
Results are bit-identical for any thread count.

The generated module is written to a cache directory and compiled with
``njit(cache=True)``, so a second process loads the machine code from disk
instead of compiling again. Directory: ``$EINSUM_WORKBENCH_NUMBA_CACHE`` if
set, else ``$XDG_CACHE_HOME/einsum_workbench/numba`` (``~/.cache/...``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays, resolve_dtype

from .numba_codegen import BLOCKS_PER_CHUNK, generate_source, kernel_key

CACHE_ENV = "EINSUM_WORKBENCH_NUMBA_CACHE"

_modules: dict[tuple, object] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """Directory holding generated kernel sources and Numba's cache files."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "einsum_workbench" / "numba"


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it.

    Numba's disk cache is keyed on the source file's modification time, so an
    existing file with the same text is never touched; a new one is written
    to a temporary file and renamed, so concurrent processes never see half
    a file.
    """
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def kernel_module(hypers: ExpansionHypers, dtype, **options):
    """The generated module for ``(hypers, dtype)``, written and imported once.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64
    **options : ``lanes`` and ``split`` of ``numba_codegen.generate_source``
        (for experiments; the defaults are the measured best).

    Returns
    -------
    module with ``LANES`` and ``expand_pairs(r, rot, ax, out0, ..., out_lmax)``
    (see ``numba_codegen.generate_source``). Its function compiles on first
    call, or loads from Numba's disk cache next to the source.
    """
    dtype = np.dtype(dtype)
    directory = cache_dir()
    lookup = (hypers, dtype, tuple(sorted(options.items())), str(directory))
    module = _modules.get(lookup)
    if module is not None:
        return module
    with _lock:
        key = kernel_key(hypers, dtype, **options)
        name = f"einsum_workbench_numba_fused_{key}"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(directory / f"{name}.py"):
            path = directory / f"{name}.py"
            _write_once(path, generate_source(hypers, dtype, **options))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # Numba's cache locator looks the module up by name
            spec.loader.exec_module(module)
        _modules[lookup] = module
        return module


def _prepared_arrays(r_ij, rotations, semiaxes, dtype):
    """dtype resolution, C-contiguous copies and shape checks of ``check_pair_arrays``.

    Its per-pair value checks (finite, semi-axes > 0, proper rotations) cost
    ~0.03 us per pair in NumPy here, about 60% of this whole kernel's time
    (0.05 us); the kernel runs the same tests on the fly, vectorised, and
    ``expand`` calls ``check_pair_arrays`` itself only when a pair looks
    invalid, so every error is its own (message and pair index). A wrong
    shape is handed to it straight away.
    """
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    r, rot, ax = (np.ascontiguousarray(a, dtype=dtype) for a in (r_ij, rotations, semiaxes))
    if not (r.ndim == 2 and r.shape[1] == 3 and rot.shape == (r.shape[0], 3, 3) and ax.shape == (r.shape[0], 3)):
        return check_pair_arrays(r_ij, rotations, semiaxes, dtype)
    return r, rot, ax, dtype


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


@contextmanager
def _num_threads(threads):
    """Run with ``numba.set_num_threads(threads)``; None keeps the current count."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"threads={threads} exceeds the {numba.config.NUMBA_NUM_THREADS} threads Numba "
            "launched (NUMBA_NUM_THREADS); raise NUMBA_NUM_THREADS before importing numba"
        )
    previous = numba.get_num_threads()
    numba.set_num_threads(int(threads))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@contextmanager
def _dynamic_schedule():
    """prange hands out BLOCKS_PER_CHUNK blocks at a time (a thread slowed by
    another process takes fewer); which thread computes a pair never changes
    its result."""
    previous = numba.set_parallel_chunksize(BLOCKS_PER_CHUNK)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(previous)


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None, threads=None):
    """Raw expansion coefficients of every pair from the fused Numba kernel.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, body to lab
    semiaxes : (P, 3) float array, angstrom, > 0
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes in float32.
    threads : None or int >= 1
        Numba threads for this call (None: ``numba.get_num_threads()``);
        the previous count is restored afterwards.

    Returns
    -------
    list over l of (P, 2l+1, num_radial[l]) C-contiguous arrays of ``dtype``:
    the coefficients of DESIGN.md section 3, bit-identical for any ``threads``.

    Raises
    ------
    ValueError
        malformed input, with ``check_pair_arrays``'s own message (the kernel
        screens every pair with its tests and hands suspect batches to it),
        or a bad ``threads``.
    TypeError
        ``hypers`` is not an ``ExpansionHypers``.

    Notes
    -----
    The first call for a (hypers, dtype) pair generates and compiles the
    kernel (1 to 8 s up to lmax 10 here; once per machine thanks to the
    disk cache, see ``cache_dir``). Memory: the outputs only (one
    allocation, rounded up to a whole block of pairs), no scratch.
    """
    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(f"hypers must be an ExpansionHypers, got {type(hypers).__name__}")
    with _num_threads(threads):
        r, rot, ax, dtype = _prepared_arrays(r_ij, rotations, semiaxes, dtype)
        n_pairs = r.shape[0]
        if n_pairs == 0:
            check_pair_arrays(r_ij, rotations, semiaxes, dtype)
            return [np.empty((0, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
        module = kernel_module(hypers, dtype)
        out = _output_blocks(hypers, n_pairs, module.LANES, dtype)
        with _dynamic_schedule():
            suspects = module.expand_pairs(r, rot, ax, *(o.reshape(-1) for o in out))
    if suspects:
        check_pair_arrays(r_ij, rotations, semiaxes, dtype)  # raises the canonical error
    return [o[:n_pairs] for o in out]

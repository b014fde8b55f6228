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
from einsum_workbench.reference.validation import check_pair_arrays

from .numba_codegen import generate_source, kernel_key

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


def kernel_module(hypers: ExpansionHypers, dtype):
    """The generated module for ``(hypers, dtype)``, written and imported once.

    Returns
    -------
    module with ``expand_pairs(r, rot, ax, out0, ..., out_lmax)`` (see
    ``numba_codegen.generate_source``). Its functions compile on first call,
    or load from Numba's disk cache next to the source.
    """
    dtype = np.dtype(dtype)
    key = kernel_key(hypers, dtype)
    directory = cache_dir()
    with _lock:
        cached = _modules.get((key, str(directory)))
        if cached is not None:
            return cached
        name = f"einsum_workbench_numba_fused_{key}"
        path = directory / f"{name}.py"
        _write_once(path, generate_source(hypers, dtype))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Numba's cache locator looks the module up by name
        spec.loader.exec_module(module)
        _modules[(key, str(directory))] = module
        return module


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
        malformed input (see ``check_pair_arrays``) or a bad ``threads``.

    Notes
    -----
    The first call for a (hypers, dtype) pair generates and compiles the
    kernel (seconds; once per machine thanks to the disk cache, see
    ``cache_dir``).
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype)
    n_pairs = r_ij.shape[0]
    out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    if n_pairs == 0:
        return out
    module = kernel_module(hypers, dtype)
    with _num_threads(threads):
        module.expand_pairs(r_ij, rotations, semiaxes, *(o.reshape(n_pairs, -1) for o in out))
    return out

"""The pair arrays as the compiled Numba kernels take them (shared by the pair, density and gradient kernels)."""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.validation import check_pair_arrays, resolve_dtype


def prepared_arrays(r_ij, rotations, semiaxes, dtype, hypers=None):
    """``(r, rot, ax, dtype)``: the inputs as writable C-contiguous arrays of the resolved dtype.

    Parameters: the pair arrays of ``check_pair_arrays`` (``r_ij`` (P, 3) and
    ``semiaxes`` (P, 3) in angstrom, ``rotations`` (P, 3, 3)), ``dtype`` None
    (the inputs'), float32 or float64 (``resolve_dtype``), ``hypers`` for its
    messages. Only dtype resolution, copies and shape checks happen here:
    the per-pair value checks (finite, semi-axes > 0, proper rotations) cost
    ~0.03 us per pair in NumPy here, about 60% of the whole pair kernel's
    time (0.05 us); the kernels run the same tests on the fly, vectorised,
    and call ``check_pair_arrays`` only when a pair looks invalid, so every
    error is its own (message and pair index). A wrong shape is handed to it
    straight away.

    Raises
    ------
    ValueError, TypeError
        those of ``resolve_dtype`` and, for a wrong shape, ``check_pair_arrays``.
    """
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    # writable copies of read-only inputs: the kernels are compiled for writable arrays only
    r, rot, ax = (writable(np.ascontiguousarray(a, dtype=dtype)) for a in (r_ij, rotations, semiaxes))
    if not (r.ndim == 2 and r.shape[1] == 3 and rot.shape == (r.shape[0], 3, 3) and ax.shape == (r.shape[0], 3)):
        return check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    return r, rot, ax, dtype


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself if writable, else a copy (the kernels are compiled for writable arrays)."""
    return array if array.flags.writeable else array.copy()

"""Centre density in Torch: ``torch_einsum``'s expansion, then ``index_add_``.

Contract: :mod:`einsum_workbench.reference.density`. The pair coefficients of
each chunk are added into their segment rows with ``Tensor.index_add_`` (the
scatter-add Torch models use for neighbour sums), so no sort is needed; the
order of the additions inside a segment is Torch's.
"""

from __future__ import annotations

import numpy as np
import torch

from einsum_workbench.reference.density import check_segments, orthonormalize_density
from einsum_workbench.reference.validation import check_hypers, resolve_dtype

from einsum_workbench.kernels.torch.pairs import expand


def centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *, dtype=None,
                   orthonormal: bool = False, **options):
    """Centre density: ``torch_einsum.expand`` then ``index_add_`` per l.

    Parameters
    ----------
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3) : float arrays, angstrom
    hypers : ExpansionHypers
    segment : (P,) int, output row of each pair, in ``[0, n_segments)``
    n_segments : int
    dtype : None, float32 or float64 (None: the inputs')
    orthonormal : bool
        Loewdin orthonormalisation along n, applied per segment.
    **options
        Passed to ``torch_einsum.expand`` (``chunk``, ``compile``).

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) NumPy arrays of ``dtype``.

    Raises
    ------
    ValueError, TypeError on malformed pairs or segments.
    """
    check_hypers(hypers)
    dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
    segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
    coefficients = expand(r_ij, rotations, semiaxes, hypers, dtype=dtype, **options)
    index = torch.from_numpy(segment)
    density = []
    for c in coefficients:
        rows = torch.zeros((n_segments,) + c.shape[1:], dtype=torch.from_numpy(c[:0]).dtype)
        rows.index_add_(0, index, torch.from_numpy(c))
        density.append(rows.numpy())
    return orthonormalize_density(density, hypers) if orthonormal else density

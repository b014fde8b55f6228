"""Centre density from any pair variant: its expansion, then a NumPy segment sum.

``numpy_einsum_density`` is the registered ``numpy_einsum`` density variant;
:func:`density_from_expansion` gives every other pair backend a centre density
(the registry's ``density_function``). Contract: the module docstring of
:mod:`einsum_workbench.reference.density`.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.density import check_segments, orthonormalize_density, segment_sum
from einsum_workbench.reference.validation import check_hypers, resolve_dtype


def density_from_expansion(expand, name: str = "expansion"):
    """A ``centre_density`` function built on the pair variant ``expand``.

    Parameters
    ----------
    expand : callable
        A pair variant (``expand(r_ij, rotations, semiaxes, hypers, *, dtype)``).
    name : str
        Recorded as the returned function's ``__name__``.

    Returns
    -------
    ``centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
    dtype=None, orthonormal=False)`` (see :mod:`einsum_workbench.reference.density`).
    """

    def centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
                       dtype=None, orthonormal: bool = False, **options):
        check_hypers(hypers)
        dtype = resolve_dtype(dtype, r_ij, rotations, semiaxes)
        segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
        coefficients = expand(r_ij, rotations, semiaxes, hypers, dtype=dtype, **options)
        density = [segment_sum(c, segment, n_segments) for c in coefficients]
        return orthonormalize_density(density, hypers) if orthonormal else density

    centre_density.__name__ = f"{name}_density"
    return centre_density


def numpy_einsum_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
                         dtype=None, orthonormal: bool = False, **options):
    """Centre density: ``numpy_einsum``'s batched expansion plus a segment sum.

    Parameters and result as :func:`einsum_workbench.reference.density.centre_density`;
    ``options`` (e.g. ``max_memory``) go to ``numpy_einsum.expand``.

    Raises
    ------
    ValueError, TypeError on malformed pairs or segments.
    """
    from einsum_workbench.kernels.numpy.pairs import expand

    return density_from_expansion(expand, "numpy_einsum")(
        r_ij, rotations, semiaxes, hypers, segment, n_segments,
        dtype=dtype, orthonormal=orthonormal, **options,
    )

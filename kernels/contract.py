"""The contracts of the registry's four problems, stated once.

DESIGN.md section 4 (the pair expansion), section 3, "Centre density",
section 3, "Derivatives" (the gradients) and section 3, "Backward pass
(vector-Jacobian product)" (the backward pass).
:mod:`einsum_workbench.kernels.registry` lists the implementations
(``VARIANTS`` for :class:`PairExpansion`, ``DENSITY_VARIANTS`` for
:class:`CentreDensity`, ``GRADIENT_VARIANTS`` for :class:`PairExpansionGradients`,
``BACKWARD_VARIANTS`` for :class:`CentreDensityBackward`);
a variant module's docstring names the contract it
implements and documents only its own keyword options. The protocols are
structural (``typing.Protocol``): a plain function with this signature
implements them, and static type checkers can check it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from einsum_workbench.reference.backward import PairCotangents
from einsum_workbench.reference.gradients import PairGradients
from einsum_workbench.reference.hypers import ExpansionHypers


@runtime_checkable
class PairExpansion(Protocol):
    """``expand(r_ij, rotations, semiaxes, hypers, *, dtype=None, **options)``.

    Raw expansion coefficients of every neighbour pair (DESIGN.md section 4;
    the reference is
    :func:`einsum_workbench.reference.expansion.pairwise_ellip_expansion`).

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
        Position of neighbour j (with its periodic shift) minus centre i; every
        frame's pairs together.
    rotations : (P, 3, 3) float array
        Body-to-lab rotation of neighbour j.
    semiaxes : (P, 3) float array, angstrom, > 0
        Semi-axes of neighbour j.
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        Output dtype (None: the inputs'). A variant states whether it also
        computes in it (the fast variants do; the reference computes in float64).
    **options
        Keyword options of the variant (memory bounds, chunk sizes, devices,
        ...), documented in its module; every one has a default.

    Returns
    -------
    list over l = 0..lmax of (P, 2l+1, num_radial[l]) arrays of ``dtype``
    (NumPy unless an option says otherwise, e.g. ``keep_on_device``).

    Raises
    ------
    ValueError, TypeError
        malformed pairs (:func:`einsum_workbench.reference.validation.check_pair_arrays`
        names the pair and the value) or a bad option (named).
    RuntimeError
        the variant cannot run here (no GPU, ...): the message says why.
    """

    def __call__(self, r_ij: np.ndarray, rotations: np.ndarray, semiaxes: np.ndarray,
                 hypers: ExpansionHypers, *, dtype=None, **options) -> list: ...


@runtime_checkable
class CentreDensity(Protocol):
    """``centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
    dtype=None, orthonormal=False, **options)``.

    Pair coefficients summed per output row (DESIGN.md section 3, "Centre
    density"; the reference is
    :func:`einsum_workbench.reference.density.centre_density`).

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, dtype
        As :class:`PairExpansion`.
    segment : (P,) int array
        Output row of each pair (e.g. one row per centre and neighbour
        species), pairs in any order.
    n_segments : int >= 0
        Number of output rows.
    orthonormal : bool
        Apply the Loewdin orthonormalisation along n (``rho_l @ W_l``,
        :func:`einsum_workbench.reference.radial.orthonormalization_matrix`;
        AniSOAP's ``normalize=True``).
    **options
        Keyword options of the variant, documented in its module.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) arrays of ``dtype``;
    row s is the sum of the raw coefficients of the pairs with
    ``segment[p] == s`` (zeros for a segment without pairs), then
    orthonormalised when asked.

    Raises
    ------
    ValueError, TypeError
        malformed pairs or segments
        (:func:`einsum_workbench.reference.density.check_segments` names the
        pair), or a bad option.
    RuntimeError
        the variant cannot run here: the message says why.
    """

    def __call__(self, r_ij: np.ndarray, rotations: np.ndarray, semiaxes: np.ndarray,
                 hypers: ExpansionHypers, segment: np.ndarray, n_segments: int, *, dtype=None,
                 orthonormal: bool = False, **options) -> list: ...


@runtime_checkable
class PairExpansionGradients(Protocol):
    """``expand_with_gradients(r_ij, rotations, semiaxes, hypers, *, dtype=None,
    semiaxes_gradients=False, **options)``.

    Raw pair coefficients with their derivatives (DESIGN.md section 3,
    "Derivatives"; :mod:`einsum_workbench.reference.gradients` states the
    contract and the formulas, and its finite differences are the reference,
    :func:`einsum_workbench.reference.gradients.finite_difference_gradients`).

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, dtype
        As :class:`PairExpansion`.
    semiaxes_gradients : bool
        Also the derivatives along each body semi-axis.
    **options
        Keyword options of the variant, documented in its module.

    Returns
    -------
    PairGradients
        ``values[l]`` (P, 2l+1, num_radial[l]) as :class:`PairExpansion`;
        ``positions[l]`` and ``orientations[l]`` (P, 3, 2l+1, num_radial[l]):
        derivatives along r_ij (angstrom^-1 times the coefficients' unit) and
        along infinitesimal rotations of the neighbour about each lab axis
        (radian^-1); ``semiaxes[l]`` likewise (angstrom^-1), or None unless asked.

    Raises
    ------
    ValueError, TypeError
        malformed pairs, or a bad option (named).
    RuntimeError
        the variant cannot run here: the message says why.
    """

    def __call__(self, r_ij: np.ndarray, rotations: np.ndarray, semiaxes: np.ndarray,
                 hypers: ExpansionHypers, *, dtype=None, semiaxes_gradients: bool = False,
                 **options) -> PairGradients: ...


@runtime_checkable
class CentreDensityBackward(Protocol):
    """``centre_density_backward(r_ij, rotations, semiaxes, hypers, segment, n_segments,
    cotangent, *, dtype=None, orthonormal=False, semiaxes_gradients=False, **options)``.

    The vector-Jacobian product of the centre density (DESIGN.md section 3,
    "Backward pass (vector-Jacobian product)"; :mod:`einsum_workbench.reference.backward`
    states the contract, and its
    :func:`~einsum_workbench.reference.backward.centre_density_backward` is the reference).

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, dtype
        As :class:`PairExpansion`.
    segment, n_segments, orthonormal
        As :class:`CentreDensity`.
    cotangent : list over l = 0..lmax of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dL/drho_l`` of a scalar L of the density rows (on orthonormalised
        rows when ``orthonormal``).
    semiaxes_gradients : bool
        Also ``dL/dl_k`` along each body semi-axis.
    **options
        Keyword options of the variant, documented in its module.

    Returns
    -------
    PairCotangents
        ``r`` (P, 3) = dL/dr_ij (L per angstrom); ``theta`` (P, 3) = dL/dtheta
        along infinitesimal rotations of the neighbour about each lab axis,
        ``R -> (I + theta_alpha [e_alpha]_x) R`` (L per radian); ``semiaxes``
        (P, 3) = dL/dl_k (L per angstrom) or None unless asked. Nothing else
        per pair.

    Raises
    ------
    ValueError, TypeError
        malformed pairs or segments (named as :class:`CentreDensity`), a
        cotangent of the wrong length or an entry of the wrong shape (the
        message names the l and the shape), or a bad option.
    RuntimeError
        the variant cannot run here: the message says why.
    """

    def __call__(self, r_ij: np.ndarray, rotations: np.ndarray, semiaxes: np.ndarray,
                 hypers: ExpansionHypers, segment: np.ndarray, n_segments: int, cotangent: list, *,
                 dtype=None, orthonormal: bool = False, semiaxes_gradients: bool = False,
                 **options) -> PairCotangents: ...

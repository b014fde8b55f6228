"""Gradients of the centre density, from the pairs' gradients.

The pair coefficients' derivatives (contract and formulas:
:mod:`einsum_workbench.reference.gradients`; one gradient variant call for
all frames) are summed into the centre density's derivatives with respect to
every atom's position and orientation:

- pair (i, j) adds ``d c / d r_ij`` to the row of centre i under atom j and
  subtracts it under atom i (``r_ij = pos_j + shift - pos_i``; a self pair or
  a periodic image of the centre itself cancels exactly);
- pair (i, j) adds ``d c / d theta`` (infinitesimal rotation of j's body
  frame about each lab axis, ``R_j -> (I + [dtheta]_x) R_j``) under atom j.

The orthonormalisation along n is linear, so it is applied to the gradients
as to the values. The power spectrum's gradients follow by the chain rule
(:mod:`einsum_workbench.pipeline.power_spectrum`); the gradient blocks of the
TensorMaps are built by :mod:`einsum_workbench.pipeline.tensormaps`.

Convention (featomic's for position gradients): a gradient block's samples
are ``("sample", "system", "atom")`` (the row of the values block, its
system, the atom moved), its first component ``"xyz"`` (the lab axis of the
displacement or of the rotation), then the values' components; properties
are the values'. Rows exist for every (centre row, atom) with a pair
contributing: the centre itself and each neighbour inside the cutoff.

By default the expansion has no smooth cutoff (as upstream's): the
gradients are those of the smooth function between pair-list changes; a
pair crossing the cutoff is a jump no derivative sees. With
``smooth_cutoff=ShiftedCosine(width)`` (:mod:`einsum_workbench.reference.cutoff`)
each pair's coefficients are multiplied by ``f(|r_ij|)`` and its position
derivative gains ``c f'(|r|) r/|r|`` (:mod:`einsum_workbench.kernels.smooth_cutoff`):
values and derivatives go to zero as a pair reaches the cutoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from einsum_workbench.reference.density import segment_sum
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.validation import check_hypers

from einsum_workbench.pipeline.layout import DensityLayout, table_pairs
from einsum_workbench.pipeline.stages import stage

#: What the pipeline differentiates with respect to (metatensor's gradient parameter names).
GRADIENT_PARAMETERS = ("positions", "orientations")


def check_gradients(gradients) -> tuple[str, ...]:
    """The requested gradient parameters as a tuple (empty for None).

    Raises
    ------
    ValueError naming an unknown parameter (the valid ones listed), or TypeError for a bare string.
    """
    if gradients is None:
        return ()
    if isinstance(gradients, str):
        raise TypeError(f"gradients must be a list of parameter names such as ['positions'], got the string {gradients!r}")
    gradients = tuple(gradients)
    for parameter in gradients:
        if parameter not in GRADIENT_PARAMETERS:
            raise ValueError(f"unknown gradient parameter {parameter!r}; valid: {', '.join(GRADIENT_PARAMETERS)}")
    if len(set(gradients)) != len(gradients):
        raise ValueError(f"gradient parameters repeated in {list(gradients)}")
    return gradients


@dataclass
class GradientRows:
    """The rows of one gradient parameter: which (row, atom) each is, and its derivatives.

    As held by :class:`DensityGradients`, for one centre species' density blocks:

    Attributes
    ----------
    samples : (G, 3) int32
        ``(sample, system, atom)``: the row of the values block, its system,
        and the atom (index within its frame) whose position or orientation moves.
    values : list over l of (G, 3, 2l+1, E_c, num_radial[l]) float64
        The derivative of the row's density, per neighbour species e of the
        centre species, along each lab axis.

    The power spectrum's per-structure rows are
    :class:`einsum_workbench.pipeline.power_spectrum.StructureGradients`.
    """

    samples: np.ndarray
    values: list


@dataclass
class DensityGradients:
    """Density values and gradients of all frames (what :func:`density_gradients_of_table` returns).

    Attributes
    ----------
    layout : DensityLayout
    density : list over l of (n_segments, 2l+1, num_radial[l]) float64
    gradients : dict parameter -> list over centre species of :class:`GradientRows`
    """

    layout: DensityLayout
    density: list
    gradients: dict = field(default_factory=dict)


def _gradient_rows(layout: DensityLayout, c: int, segment, terms, first_atom, ends):
    """Where each pair's derivative goes among centre species ``c``'s gradient rows.

    ``terms``: (atom (P,) global index, sign) pairs: every pair of the species
    adds ``sign`` times its derivative under that atom; ``segment`` (P,) the
    pairs' global segments. Returns (samples (G, 3) int32, index (K,) = gradient
    row * E_c + neighbour species, pair (K,), sign (K,)), rows sorted by
    (values row, global atom).
    """
    lo, hi = layout.offsets[c], layout.offsets[c + 1]
    n_types = len(layout.neighbour_types[c])
    mine = np.flatnonzero((segment >= lo) & (segment < hi))
    local = segment[mine] - lo
    row, species = local // n_types, local % n_types
    n_total = int(ends[-1]) if len(ends) else 0
    keys, pairs, signs, types = [], [], [], []
    for atom, sign in terms:
        keys.append(row * n_total + atom[mine])
        pairs.append(mine)
        signs.append(np.full(len(mine), sign))
        types.append(species)
    keys, pairs, signs, types = (np.concatenate(x) for x in (keys, pairs, signs, types))
    unique, inverse = np.unique(keys, return_inverse=True)
    rows, atoms = unique // max(n_total, 1), unique % max(n_total, 1)
    system = np.searchsorted(ends, atoms, side="right")
    samples = np.stack([rows, system, atoms - first_atom[system]], axis=1).astype(np.int32)
    return samples, inverse.reshape(-1) * n_types + types, pairs, signs


def _summation_matrix(index, pairs, signs, n_rows: int, n_pairs: int):
    """Sparse (n_rows, n_pairs) matrix with ``signs[k]`` at ``(index[k], pairs[k])``: the sum of
    pair terms into gradient rows as one product, built once and used for every l."""
    from scipy.sparse import csr_matrix

    return csr_matrix((signs, (index, pairs)), shape=(n_rows, n_pairs))


def _accumulate(summation, n_rows: int, pair_gradient, n_types: int, orthonormal_w):
    """(G, 3, 2l+1, E_c, n) sums of the signed pair derivatives per gradient row and species."""
    n_pairs, _, n_m, n_radial = pair_gradient.shape
    out = summation @ pair_gradient.reshape(n_pairs, -1)                 # (G * E_c, 3 (2l+1) n)
    if orthonormal_w is not None:
        out = out.reshape(-1, n_radial) @ orthonormal_w                 # one tall product, not a batch of tiny ones
    out = out.reshape(n_rows, n_types, 3, n_m, n_radial).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(out)


def density_gradients_of_table(table: AtomsTable, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                               orthonormal: bool = True, self_pairs: bool = True,
                               gradients=GRADIENT_PARAMETERS, smooth_cutoff=None) -> DensityGradients:
    """Centre density of every frame with its gradients, one gradient variant call.

    Parameters
    ----------
    table : AtomsTable
    hypers : ExpansionHypers
    backend : str
        A variant registered for the ``"gradients"`` problem
        (``kernels.registry.variant_names("gradients")``).
    orthonormal, self_pairs : as :func:`einsum_workbench.pipeline.density.density_of_table`
    gradients : sequence of {"positions", "orientations"}
    smooth_cutoff : None or ShiftedCosine
        None: upstream's hard cutoff. A ``reference.cutoff.ShiftedCosine``:
        the pairs' values and derivatives of ``f(|r_ij|) c`` (module
        docstring), the cutoff ``hypers.cutoff``.

    Returns
    -------
    DensityGradients (float64).

    Raises
    ------
    KeyError, RuntimeError
        unknown gradient backend, or one that cannot run here.
    TypeError, ValueError
        a ``smooth_cutoff`` that is not a ShiftedCosine, or wider than the cutoff.
    ValueError
        a malformed pair (the variant's message), an unknown gradient parameter.
    """
    from einsum_workbench.kernels.registry import load_variant
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff

    gradients = check_gradients(gradients)
    check_smooth_cutoff(smooth_cutoff, hypers)
    expand_with_gradients = load_variant(backend, "gradients", smooth_cutoff=smooth_cutoff)
    with stage("neighbour_list"):
        pairs = table_pairs(table, hypers.cutoff, self_pairs=self_pairs)
        layout, segment, gi, gj = pairs.layout, pairs.segment, pairs.centre, pairs.neighbour
    with stage("kernel"):
        pair = expand_with_gradients(pairs.r_ij, table.rotations[gj], table.semiaxes[gj], hypers, dtype=np.float64)
    with stage("gradients"):
        density = [segment_sum(v, segment, layout.n_segments) for v in pair.values]
        weights = [orthonormalization_matrix(l, hypers) if orthonormal else None for l in range(hypers.lmax + 1)]
        if orthonormal:
            density = [rho @ w for rho, w in zip(density, weights)]
        ends = np.cumsum(table.n_atoms)
        terms = {"positions": ((gj, 1.0), (gi, -1.0)), "orientations": ((gj, 1.0),)}
        result = {}
        for parameter in gradients:
            per_pair = pair.positions if parameter == "positions" else pair.orientations
            per_species = []
            for c in range(len(layout.centre_types)):
                samples, index, rows_pairs, signs = _gradient_rows(layout, c, segment, terms[parameter],
                                                                   table.first_atom, ends)
                n_types = len(layout.neighbour_types[c])
                summation = _summation_matrix(index, rows_pairs, signs, len(samples) * n_types, len(segment))
                values = [_accumulate(summation, len(samples), g, n_types, weights[l]) for l, g in enumerate(per_pair)]
                per_species.append(GradientRows(samples=samples, values=values))
            result[parameter] = per_species
    return DensityGradients(layout=layout, density=density, gradients=result)


def density_gradients_of_frames(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                                orthonormal: bool = True, self_pairs: bool = True, semiaxes=None,
                                rotation_key: str | None = "c_q", rotation_type: str = "quaternion",
                                gradients=GRADIENT_PARAMETERS, smooth_cutoff=None) -> DensityGradients:
    """:func:`density_gradients_of_table` of frames (parameters as
    :func:`einsum_workbench.pipeline.density.centre_density`)."""
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff
    from einsum_workbench.reference.frames import as_atoms_table

    check_hypers(hypers)
    gradients = check_gradients(gradients)
    check_smooth_cutoff(smooth_cutoff, hypers)
    with stage("frames"):
        table = as_atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    return density_gradients_of_table(table, hypers, backend=backend, orthonormal=orthonormal,
                                      self_pairs=self_pairs, gradients=gradients, smooth_cutoff=smooth_cutoff)

"""Frames to AniSOAP's centre density, one kernel call for all frames.

The data flow (DESIGN.md section 2): frames -> flat atom arrays
(:func:`einsum_workbench.reference.frames.atoms_table`) -> neighbour pairs of
all frames in one pass -> each pair's *segment* (its output row: centre atom
and neighbour species; :mod:`einsum_workbench.pipeline.layout`) -> one call of
a density variant (the pairs sorted by segment, each centre's sum accumulated
by the kernel) -> per centre species and l, one TensorBlock built from arrays
(:mod:`einsum_workbench.pipeline.tensormaps`).

The result is what ``EllipsoidalDensityProjection.transform`` returns
(DESIGN.md section 3, "Centre density"):

- keys ``(types_center, angular_channel)``, sorted;
- samples ``("type", "center")``: (system, centre atom) of every centre of
  that species with at least one pair, sorted (the first name is upstream's,
  the column holds the system index);
- components ``spherical_component_m`` = -l..l;
- properties ``(n, neighbor_types)`` listed species-major, for the neighbour
  species that have at least one pair with a centre of that species; values
  n-major under them (``property_layout="upstream"``, AniSOAP's layout) or
  species-major, matching the labels (``"labelled"``).

Every function here takes ``smooth_cutoff=None`` (upstream's hard cutoff) or
a :class:`einsum_workbench.reference.cutoff.ShiftedCosine`: each pair's
coefficients times ``f(|r_ij|)`` with the hypers' cutoff
(:mod:`einsum_workbench.kernels.smooth_cutoff`; DESIGN.md section 3,
"Smooth cutoff (optional)").
"""

from __future__ import annotations

import itertools

import numba
import numpy as np

from einsum_workbench.reference.density import orthonormalize_density, segment_sum
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.pairs import PairBatch
from einsum_workbench.reference.validation import check_hypers

from einsum_workbench.pipeline.gradients import density_gradients_of_frames
from einsum_workbench.pipeline.grouping import neighbour_groups
from einsum_workbench.pipeline.layout import DensityLayout, check_property_layout, density_layout, rows_as_block
from einsum_workbench.pipeline.stages import stage
from einsum_workbench.pipeline.tensormaps import density_tensormap, tensormap_gradients


def is_rotation(matrices) -> np.ndarray:
    """(N,) bool: each 3x3 matrix is orthonormal within the kernels' float64 tolerance
    (``max |R R^T - I| <= ORTHONORMAL_TOL``; one compiled loop: 20x NumPy's batched products)."""
    from einsum_workbench.reference.limits import ORTHONORMAL_TOL

    matrices = np.ascontiguousarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    return _orthonormality_error(matrices) <= ORTHONORMAL_TOL[np.dtype(np.float64)]


@numba.njit(cache=True)
def _orthonormality_error(matrices):
    """(N,) max over entries of ``|R R^T - I|`` (NaN where R holds a NaN)."""
    out = np.empty(len(matrices))
    for p in range(len(matrices)):
        worst = 0.0
        for a in range(3):
            for b in range(3):
                dot = matrices[p, a, 0] * matrices[p, b, 0] + matrices[p, a, 1] * matrices[p, b, 1] \
                    + matrices[p, a, 2] * matrices[p, b, 2]
                deviation = abs(dot - (1.0 if a == b else 0.0))
                if deviation > worst or deviation != deviation:
                    worst = deviation
        out[p] = worst
    return out


def sorted_by_segment(segment):
    """The permutation that groups the pairs by segment (stable: pair order kept
    inside a segment), or None when they already are."""
    if len(segment) < 2 or not np.any(segment[1:] < segment[:-1]):
        return None
    return np.argsort(segment, kind="stable")


def _run_density(centre_density, r_ij, rotations, semiaxes, segment, layout, hypers, orthonormal, general,
                 smooth_cutoff=None, neighbour=None):
    """One density variant call on pairs sorted by segment; the pairs in the
    ``general`` mask (matrices that are not rotations) through upstream's arithmetic,
    times the smooth cutoff's ``f(|r_ij|)`` when there is one (``centre_density`` applies it to the others).
    With ``neighbour`` (only without ``general``), rotations and semi-axes are per atom and
    ``centre_density`` takes them so (``density_function(..., per_atom=True)``)."""
    with stage("kernel"):
        if neighbour is not None:
            return centre_density(r_ij, rotations, semiaxes, hypers, segment, layout.n_segments,
                                  neighbour=neighbour, dtype=np.float64, orthonormal=orthonormal)
        if general is None:
            return centre_density(r_ij, rotations, semiaxes, hypers, segment, layout.n_segments,
                                  dtype=np.float64, orthonormal=orthonormal)
        from einsum_workbench.reference.expansion import pairwise_ellip_expansion

        ok = ~general
        density = centre_density(r_ij[ok], rotations[ok], semiaxes[ok], hypers, segment[ok],
                                 layout.n_segments, dtype=np.float64, orthonormal=False)
        extra = pairwise_ellip_expansion(r_ij[general], rotations[general], semiaxes[general], hypers,
                                         any_matrix=True)
        if smooth_cutoff is not None:
            f = smooth_cutoff.values(np.linalg.norm(r_ij[general], axis=1), hypers.cutoff)
            extra = [c * f[:, None, None] for c in extra]
        for rho, c in zip(density, extra):
            rho += segment_sum(c, segment[general], layout.n_segments)
        return orthonormalize_density(density, hypers) if orthonormal else density


def density_of_pairs(pairs: PairBatch, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                     orthonormal: bool = True, smooth_cutoff=None):
    """The centre density of a pair batch, computed by one density variant call.

    Parameters
    ----------
    pairs : PairBatch
    hypers : ExpansionHypers
    backend : str
        A registered pair variant name; its density variant (or its expansion
        plus a segment sum, see ``kernels.registry.density_function``) runs.
    orthonormal : bool
        Loewdin-orthonormalise along n (AniSOAP's ``normalize=True``).
    smooth_cutoff : None or ShiftedCosine
        None: upstream's hard cutoff. A ``reference.cutoff.ShiftedCosine``:
        each pair's coefficients times ``f(|r_ij|)``, the cutoff
        ``hypers.cutoff`` (module docstring).

    Returns
    -------
    (DensityLayout, density): density is a list over l of
    (n_segments, 2l+1, num_radial[l]) float64 arrays.

    Raises
    ------
    KeyError, RuntimeError
        unknown backend or one that cannot run here.
    TypeError, ValueError
        a ``smooth_cutoff`` that is not a ShiftedCosine, or wider than the
        cutoff (``kernels.smooth_cutoff.check_smooth_cutoff``).
    ValueError
        a malformed pair (the variant's own message).
    """
    from einsum_workbench.kernels.registry import density_function
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff

    check_smooth_cutoff(smooth_cutoff, hypers)

    layout, segment = density_layout(pairs)
    order = sorted_by_segment(segment)
    arrays = pairs.arrays() if order is None else (a[order] for a in pairs.arrays())
    segment = segment if order is None else segment[order]
    return layout, _run_density(density_function(backend, smooth_cutoff=smooth_cutoff), *arrays, segment, layout,
                                hypers, orthonormal, None)


def density_of_table(table: AtomsTable, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                     orthonormal: bool = True, self_pairs: bool = True, any_matrix: bool = False,
                     smooth_cutoff=None):
    """The centre density of every frame of an :class:`AtomsTable`.

    One neighbour-list pass over all frames, each pair's segment, the pairs
    grouped by segment with their neighbour, the search and the grouping
    fused in one compiled function
    (:func:`einsum_workbench.pipeline.grouping.neighbour_groups`), one
    density variant call reading the neighbours' rotations and semi-axes
    from the per-atom arrays (``density_function(..., per_atom=True)``).

    Parameters
    ----------
    table : AtomsTable
    hypers, backend, orthonormal, smooth_cutoff : as :func:`density_of_pairs`
    self_pairs : bool
        Count each centre's own density (AniSOAP's default).
    any_matrix : bool
        Accept matrices that are not rotations, as upstream AniSOAP does for
        frames stored without rotations (it warns and uses zero matrices):
        the pairs whose neighbour has one are computed with upstream's
        lab-frame arithmetic (the reference with ``any_matrix=True``)
        and added in. False: such a matrix is the variant's error.

    Returns
    -------
    (DensityLayout, density) as :func:`density_of_pairs`.

    Raises
    ------
    As :func:`density_of_pairs`, and ValueError for a bad cutoff or cell.
    """
    from einsum_workbench.kernels.registry import density_function
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff

    check_smooth_cutoff(smooth_cutoff, hypers)
    grouped = neighbour_groups(table, hypers.cutoff, self_pairs=self_pairs)  # stages neighbour_list, grouping
    layout, segment, gj = grouped.layout, grouped.segment, grouped.neighbour
    general = None
    if any_matrix and len(table.rotations):
        bad_atom = ~is_rotation(table.rotations)
        general = bad_atom[gj] if bad_atom.any() else None
    if general is not None:  # per pair: the general pairs are masked out
        return layout, _run_density(density_function(backend, smooth_cutoff=smooth_cutoff), grouped.r_ij,
                                    grouped.rotations, grouped.semiaxes, segment, layout, hypers, orthonormal,
                                    general, smooth_cutoff)
    return layout, _run_density(density_function(backend, smooth_cutoff=smooth_cutoff, per_atom=True), grouped.r_ij,
                                grouped.atom_rotations, grouped.atom_semiaxes, segment, layout, hypers, orthonormal,
                                None, smooth_cutoff, neighbour=gj)


def density_blocks(layout: DensityLayout, density, *, property_layout: str = "upstream",
                   orthonormalize_columns: ExpansionHypers | None = None):
    """The values of every block: ``blocks[c][l]`` is (S_c, 2l+1, num_radial[l] * E_c).

    Parameters
    ----------
    layout : DensityLayout
    density : list over l of (n_segments, 2l+1, num_radial[l]) arrays
    property_layout : {"upstream", "labelled"}
    orthonormalize_columns : ExpansionHypers or None
        Apply ``W_l`` (``reference.radial.orthonormalization_matrix``) to each
        run of ``num_radial[l]`` consecutive columns after the layout. That is
        what anisoap 0.1.1's ``orthonormalize_basis`` does: it selects columns
        by their species-major labels, so under its own n-major values and two
        or more neighbour species it mixes values of different (n, species).
        The AniSOAP switch passes it to give 0.1.1's numbers; with the
        labelled layout, or one neighbour species, it is the orthonormalisation.
    """
    check_property_layout(property_layout)
    n_centres = [len(samples) for samples in layout.samples]
    n_types = [len(types) for types in layout.neighbour_types]
    if len(set(n_types)) == 1:
        # every centre species has as many neighbour species (all-atom frames, typically): each l
        # laid out (and times W) for all centres at once, then cut into the species' blocks (views)
        runs = [(0, len(layout.centre_types))]
    else:
        runs = [(c, c + 1) for c in range(len(layout.centre_types))]
    blocks = [[] for _ in layout.centre_types]
    for first, last in runs:
        rows = slice(layout.offsets[first], layout.offsets[last])
        bounds = list(itertools.accumulate(n_centres[first:last], initial=0))
        for l, rho in enumerate(density):
            values = rows_as_block(rho[rows], bounds[-1], n_types[first], property_layout)
            if orthonormalize_columns is not None:
                n_radial = rho.shape[2]
                w = orthonormalization_matrix(l, orthonormalize_columns)
                # one radial function: a scalar (a 1 x 1 matrix product costs ~30 us a call here)
                values = values * w[0, 0] if n_radial == 1 else (values.reshape(-1, n_radial) @ w).reshape(values.shape)
            for c in range(first, last):
                blocks[c].append(values[bounds[c - first]:bounds[c - first + 1]])
    return blocks


def centre_density(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused", orthonormal: bool = True,
                   self_pairs: bool = True, semiaxes=None, rotation_key: str | None = "c_q",
                   rotation_type: str = "quaternion", property_layout: str = "labelled", gradients=None,
                   smooth_cutoff=None):
    """AniSOAP's centre density of frames, as a metatensor TensorMap.

    Parameters
    ----------
    frames : ase.Atoms, sequence of ase.Atoms, or AtomsTable
        Ellipsoids: positions (angstrom), orientations in ``rotation_key``,
        semi-axes from ``c_diameter[k] / 2`` unless ``semiaxes`` is given;
        or frames already read into a ``reference.frames.AtomsTable``.
    hypers : ExpansionHypers
        lmax, radial basis, cutoff (angstrom), sigma, radial counts.
    backend : str
        Registered variant name (``einsum_workbench.kernels.variant_names()``).
    orthonormal : bool
        Loewdin orthonormalisation along n (AniSOAP's ``normalize=True``).
    self_pairs : bool
        Count each centre's own density (AniSOAP's default,
        ``subtract_center_contribution=False``).
    semiaxes, rotation_key, rotation_type
        See :func:`einsum_workbench.reference.pairs.frames_to_pairs`.
    property_layout : {"labelled", "upstream"}
        Values matching their labels (default here), or AniSOAP's n-major layout.
    gradients : None or list of {"positions", "orientations"}
        Add gradient blocks: derivatives along each atom's displacement and
        along infinitesimal rotations of its body frame about each lab axis
        (:mod:`einsum_workbench.pipeline.gradients`); ``backend`` must then be
        a gradient variant (``kernels.registry.variant_names("gradients")``).
    smooth_cutoff : None or ShiftedCosine
        None: upstream's hard cutoff (its numbers, bit for bit). A
        ``reference.cutoff.ShiftedCosine(width)``: each pair's coefficients
        (and their gradients) times ``f(|r_ij|)``, fading out over
        ``(cutoff - width, cutoff)`` (:func:`density_of_pairs`).

    Returns
    -------
    metatensor.TensorMap (module docstring), values float64, with gradient
    blocks when asked.

    Raises
    ------
    TypeError
        ``hypers`` is not an ExpansionHypers (``reference.validation.check_hypers``);
        ``frames`` is not an ase.Atoms, a sequence of them or an AtomsTable.
    ValueError
        malformed frames (frame and atom named), bad hyper-parameters or layout, a
        ``smooth_cutoff`` wider than the cutoff (a TypeError if it is not a ShiftedCosine).
    KeyError, RuntimeError
        unknown backend, or one that cannot run here.
    """
    check_property_layout(property_layout)
    if gradients:
        result = density_gradients_of_frames(frames, hypers, backend=backend, orthonormal=orthonormal,
                                             self_pairs=self_pairs, semiaxes=semiaxes, rotation_key=rotation_key,
                                             rotation_type=rotation_type, gradients=gradients,
                                             smooth_cutoff=smooth_cutoff)
        blocks = density_blocks(result.layout, result.density, property_layout=property_layout)
        return density_tensormap(result.layout, blocks, tensormap_gradients(result, property_layout))
    layout, density = density_of_frames(frames, hypers, backend=backend, orthonormal=orthonormal,
                                        self_pairs=self_pairs, semiaxes=semiaxes, rotation_key=rotation_key,
                                        rotation_type=rotation_type, smooth_cutoff=smooth_cutoff)
    return density_tensormap(layout, density_blocks(layout, density, property_layout=property_layout))


def density_of_frames(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused", orthonormal: bool = True,
                      self_pairs: bool = True, semiaxes=None, rotation_key: str | None = "c_q",
                      rotation_type: str = "quaternion", smooth_cutoff=None):
    """(DensityLayout, density arrays) of frames: :func:`centre_density` before
    the TensorMap (parameters and errors the same)."""
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff
    from einsum_workbench.reference.frames import as_atoms_table

    check_hypers(hypers)
    check_smooth_cutoff(smooth_cutoff, hypers)
    with stage("frames"):
        table = as_atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    return density_of_table(table, hypers, backend=backend, orthonormal=orthonormal, self_pairs=self_pairs,
                            smooth_cutoff=smooth_cutoff)

"""Frames to AniSOAP's centre density, one kernel call for all frames.

The data flow (DESIGN.md section 2): frames -> flat atom arrays
(:func:`einsum_workbench.reference.frames.atoms_table`) -> neighbour pairs of
all frames in one pass -> each pair's *segment* (its output row: centre atom
and neighbour species) -> one call of a density variant (the pairs sorted by
segment, each centre's sum accumulated by the kernel) -> per centre species
and l, one TensorBlock built from arrays.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.density import orthonormalize_density, segment_sum
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.pairs import PairBatch

from einsum_workbench.pipeline.stages import stage

#: "upstream": values n-major under species-major labels (AniSOAP's layout);
#: "labelled": values species-major, matching the labels.
PROPERTY_LAYOUTS = ("upstream", "labelled")
#: Samples of a gradient block (featomic's convention): the values row, its system, the atom that moves.
GRADIENT_SAMPLE_NAMES = ("sample", "system", "atom")


def check_property_layout(property_layout) -> str:
    """Return ``property_layout`` or raise ValueError naming it and the valid ones."""
    if property_layout not in PROPERTY_LAYOUTS:
        raise ValueError(f"property_layout must be one of {PROPERTY_LAYOUTS}, got {property_layout!r}")
    return property_layout


@dataclass
class DensityLayout:
    """Which output row (segment) each (centre, neighbour species) owns.

    Segments of centre species ``centre_types[c]`` are
    ``offsets[c] : offsets[c + 1]``, laid out (centre row, neighbour species)
    row-major: centre row ``u`` and neighbour species index ``e`` own segment
    ``offsets[c] + u * E_c + e``.

    Attributes
    ----------
    centre_types : (C,) int32, sorted atomic numbers of the centres with pairs
    neighbour_types : list of C (E_c,) int32 arrays, sorted: the neighbour
        species that have at least one pair with a centre of that species
    samples : list of C (S_c, 2) int32 arrays: (system, centre atom), sorted
    offsets : (C + 1,) int64
    n_frames : int
    """

    centre_types: np.ndarray
    neighbour_types: list
    samples: list
    offsets: np.ndarray
    n_frames: int

    @property
    def n_segments(self) -> int:
        return int(self.offsets[-1])

    def block_values(self, rho_l: np.ndarray, c: int, property_layout: str = "upstream") -> np.ndarray:
        """Centre species ``c``'s block of one l: (S_c, 2l+1, n_l * E_c).

        ``rho_l``: (n_segments, 2l+1, n_l), the density variant's output for
        that l. Columns ``n * E_c + e`` (upstream) or ``e * n_l + n`` (labelled).
        """
        n_centres, n_types = len(self.samples[c]), len(self.neighbour_types[c])
        rows = rho_l[self.offsets[c]:self.offsets[c + 1]]
        if n_types == 1:
            return rows  # one neighbour species: both layouts are the rows themselves
        rows = rows.reshape(n_centres, n_types, rho_l.shape[1], rho_l.shape[2])
        order = (0, 2, 3, 1) if property_layout == "upstream" else (0, 2, 1, 3)
        return np.ascontiguousarray(rows.transpose(order)).reshape(n_centres, rho_l.shape[1], -1)

    def property_rows(self, c: int, n_radial: int) -> np.ndarray:
        """(n_radial * E_c, 2) int32 labels ``(n, neighbor_types)``, species-major."""
        types = self.neighbour_types[c]
        return np.stack([np.tile(np.arange(n_radial), len(types)), np.repeat(types, n_radial)],
                        axis=1).astype(np.int32)


def density_layout(pairs: PairBatch):
    """The segments of a pair batch.

    Parameters
    ----------
    pairs : PairBatch
        Its frame, centre, centre_species, neighbour_species and n_atoms are read.

    Returns
    -------
    (DensityLayout, segment): ``segment`` (P,) int64 is each pair's output row.
    """
    return segments(pairs.frame, pairs.centre, pairs.centre_species, pairs.neighbour_species, pairs.n_atoms)


def segments(frame, centre, centre_species, neighbour_species, n_atoms):
    """Each pair's output row and the :class:`DensityLayout` of the rows.

    Parameters
    ----------
    frame, centre : (P,) int64, the pair's frame and centre atom within it
    centre_species, neighbour_species : (P,) int, atomic numbers
    n_atoms : (F,) int64, atoms per frame

    Returns
    -------
    (DensityLayout, segment (P,) int64)
    """
    first_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    centre_atom = first_atom[frame] + centre
    segment = np.empty(len(frame), dtype=np.int64)
    centre_types = np.unique(centre_species).astype(np.int32)
    neighbour_types, samples, offsets = [], [], [0]
    ends = np.cumsum(n_atoms)
    for c in centre_types:
        mine = np.flatnonzero(centre_species == c)
        types = np.unique(neighbour_species[mine]).astype(np.int32)
        centres, row = np.unique(centre_atom[mine], return_inverse=True)
        segment[mine] = offsets[-1] + row.reshape(-1) * len(types) + np.searchsorted(types, neighbour_species[mine])
        frame_of = np.searchsorted(ends, centres, side="right")
        samples.append(np.stack([frame_of, centres - first_atom[frame_of]], axis=1).astype(np.int32))
        neighbour_types.append(types)
        offsets.append(offsets[-1] + len(centres) * len(types))
    layout = DensityLayout(centre_types=centre_types, neighbour_types=neighbour_types, samples=samples,
                           offsets=np.asarray(offsets, dtype=np.int64), n_frames=len(n_atoms))
    return layout, segment


@dataclass
class TablePairs:
    """Every frame's neighbour pairs as global atom indices, with their segments.

    Attributes
    ----------
    frame : (P,) int64, the pair's frame
    centre, neighbour : (P,) int64, global atom indices of i and j (into the table's atoms)
    shift : (P, 3) int64, cell shift of j's image
    r_ij : (P, 3) float64, angstrom
    layout : DensityLayout
    segment : (P,) int64, each pair's output row
    """

    frame: np.ndarray
    centre: np.ndarray
    neighbour: np.ndarray
    shift: np.ndarray
    r_ij: np.ndarray
    layout: DensityLayout
    segment: np.ndarray


def table_pairs(table: AtomsTable, cutoff: float, *, self_pairs: bool = True) -> TablePairs:
    """One neighbour-list pass over every frame of ``table`` and each pair's segment (pair order
    as :func:`einsum_workbench.reference.neighbours.neighbour_pairs` gives it).

    Raises
    ------
    ValueError for a bad cutoff or cell (``neighbour_pairs``).
    """
    from einsum_workbench.reference.neighbours import neighbour_pairs

    frame, i, j, shift, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, cutoff,
                                               self_pairs=self_pairs)
    first = table.first_atom
    gi, gj = first[frame] + i, first[frame] + j
    layout, segment = segments(frame, i, table.numbers[gi], table.numbers[gj], table.n_atoms)
    return TablePairs(frame=frame, centre=gi, neighbour=gj, shift=shift, r_ij=r_ij, layout=layout, segment=segment)


def is_rotation(matrices) -> np.ndarray:
    """(N,) bool: each 3x3 matrix is orthonormal within the kernels' float64 tolerance."""
    from einsum_workbench.reference.limits import ORTHONORMAL_TOL

    gram = np.matmul(matrices, np.swapaxes(matrices, 1, 2)) - np.eye(3)
    return np.abs(gram).max(axis=(1, 2), initial=0.0) <= ORTHONORMAL_TOL[np.dtype(np.float64)]


def sorted_by_segment(segment):
    """The permutation that groups the pairs by segment (stable: pair order kept
    inside a segment), or None when they already are."""
    if len(segment) < 2 or not np.any(segment[1:] < segment[:-1]):
        return None
    return np.argsort(segment, kind="stable")


def _run_density(centre_density, r_ij, rotations, semiaxes, segment, layout, hypers, orthonormal, general):
    """One density variant call on pairs sorted by segment; the pairs in the
    ``general`` mask (matrices that are not rotations) through upstream's arithmetic."""
    with stage("kernel"):
        if general is None:
            return centre_density(r_ij, rotations, semiaxes, hypers, segment, layout.n_segments,
                                  dtype=np.float64, orthonormal=orthonormal)
        from einsum_workbench.reference.expansion import pairwise_ellip_expansion

        ok = ~general
        density = centre_density(r_ij[ok], rotations[ok], semiaxes[ok], hypers, segment[ok],
                                 layout.n_segments, dtype=np.float64, orthonormal=False)
        extra = pairwise_ellip_expansion(r_ij[general], rotations[general], semiaxes[general], hypers,
                                         any_matrix=True)
        for rho, c in zip(density, extra):
            rho += segment_sum(c, segment[general], layout.n_segments)
        return orthonormalize_density(density, hypers) if orthonormal else density


def density_of_pairs(pairs: PairBatch, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                     orthonormal: bool = True):
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

    Returns
    -------
    (DensityLayout, density): density is a list over l of
    (n_segments, 2l+1, num_radial[l]) float64 arrays.

    Raises
    ------
    KeyError, RuntimeError
        unknown backend or one that cannot run here.
    ValueError
        a malformed pair (the variant's own message).
    """
    from einsum_workbench.kernels.registry import density_function

    layout, segment = density_layout(pairs)
    order = sorted_by_segment(segment)
    arrays = pairs.arrays() if order is None else (a[order] for a in pairs.arrays())
    segment = segment if order is None else segment[order]
    return layout, _run_density(density_function(backend), *arrays, segment, layout, hypers, orthonormal, None)


def density_of_table(table: AtomsTable, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                     orthonormal: bool = True, self_pairs: bool = True, any_matrix: bool = False):
    """The centre density of every frame of an :class:`AtomsTable`.

    One neighbour-list pass over all frames, each pair's segment, the pairs
    grouped by segment with the neighbour's rotation and semi-axes gathered
    once in that order, one density variant call.

    Parameters
    ----------
    table : AtomsTable
    hypers, backend, orthonormal : as :func:`density_of_pairs`
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

    centre_density = density_function(backend)
    with stage("neighbour_list"):
        pairs = table_pairs(table, hypers.cutoff, self_pairs=self_pairs)
        layout, segment, r_ij, gj = pairs.layout, pairs.segment, pairs.r_ij, pairs.neighbour
        order = sorted_by_segment(segment)
        if order is not None:
            segment, r_ij, gj = segment[order], r_ij[order], gj[order]
        rotations, semiaxes = table.rotations[gj], table.semiaxes[gj]
    general = None
    if any_matrix and len(table.rotations):
        bad_atom = ~is_rotation(table.rotations)
        general = bad_atom[gj] if bad_atom.any() else None
    return layout, _run_density(centre_density, r_ij, rotations, semiaxes, segment, layout, hypers,
                                orthonormal, general)


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
    from einsum_workbench.reference.radial import orthonormalization_matrix

    check_property_layout(property_layout)
    blocks = []
    for c in range(len(layout.centre_types)):
        per_l = []
        for l, rho in enumerate(density):
            values = layout.block_values(rho, c, property_layout)
            if orthonormalize_columns is not None:
                n_radial = rho.shape[2]
                w = orthonormalization_matrix(l, orthonormalize_columns)
                values = (values.reshape(-1, n_radial) @ w).reshape(values.shape)
            per_l.append(values)
        blocks.append(per_l)
    return blocks


def density_tensormap(layout: DensityLayout, blocks, gradients=None):
    """Wrap density block values in AniSOAP's TensorMap (module docstring).

    Parameters
    ----------
    layout : DensityLayout
    blocks : ``density_blocks(layout, density, ...)``
    gradients : None or dict parameter -> list over centre species of
        (samples (G, 3) int32, list over l of (G, 3, 2l+1, Q) values), added
        as gradient blocks (:mod:`einsum_workbench.pipeline.gradients`).

    Returns
    -------
    metatensor.TensorMap, keys (types_center, angular_channel); one block
    per centre species and l, values (S_c, 2l+1, num_radial[l] * E_c).
    """
    from metatensor import Labels, TensorBlock, TensorMap

    with stage("tensormap"):
        lmax = len(blocks[0]) - 1 if blocks else -1
        components = [Labels(["spherical_component_m"], np.arange(-l, l + 1, dtype=np.int32).reshape(-1, 1))
                      for l in range(lmax + 1)]
        keys, tensor_blocks = [], []
        for c, centre_type in enumerate(layout.centre_types):
            samples = Labels(["type", "center"], layout.samples[c])
            n_types = len(layout.neighbour_types[c])
            for l, values in enumerate(blocks[c]):
                keys.append((int(centre_type), l))
                block = TensorBlock(
                    values=values,
                    samples=samples,
                    components=[components[l]],
                    properties=Labels(["n", "neighbor_types"], layout.property_rows(c, values.shape[2] // n_types)),
                )
                for parameter, per_species in (gradients or {}).items():
                    gradient_samples, gradient_values = per_species[c]
                    block.add_gradient(parameter, gradient_block(block, gradient_samples, gradient_values[l]))
                tensor_blocks.append(block)
        key_values = np.asarray(keys, dtype=np.int32).reshape(-1, 2)
        return TensorMap(Labels(["types_center", "angular_channel"], key_values), tensor_blocks)


def gradient_block(block, samples, values):
    """The TensorBlock of one gradient of ``block`` (featomic's convention).

    ``samples`` (G, 3) int32 ``(sample, system, atom)``, ``values`` (G, 3,
    *block components, properties): components ``xyz`` then the block's.
    """
    from metatensor import Labels, TensorBlock

    return TensorBlock(
        values=values,
        samples=Labels(list(GRADIENT_SAMPLE_NAMES), samples),
        components=[Labels(["xyz"], np.arange(3, dtype=np.int32).reshape(-1, 1))] + list(block.components),
        properties=block.properties,
    )


def centre_density(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused", orthonormal: bool = True,
                   self_pairs: bool = True, semiaxes=None, rotation_key: str | None = "c_q",
                   rotation_type: str = "quaternion", property_layout: str = "labelled", gradients=None):
    """AniSOAP's centre density of frames, as a metatensor TensorMap.

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
        Ellipsoids: positions (angstrom), orientations in ``rotation_key``,
        semi-axes from ``c_diameter[k] / 2`` unless ``semiaxes`` is given.
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

    Returns
    -------
    metatensor.TensorMap (module docstring), values float64, with gradient
    blocks when asked.

    Raises
    ------
    ValueError
        malformed frames (frame and atom named), bad hyper-parameters or layout.
    KeyError, RuntimeError
        unknown backend, or one that cannot run here.
    """
    check_property_layout(property_layout)
    if gradients:
        from einsum_workbench.pipeline.gradients import density_gradients_of_frames, tensormap_gradients

        result = density_gradients_of_frames(frames, hypers, backend=backend, orthonormal=orthonormal,
                                             self_pairs=self_pairs, semiaxes=semiaxes, rotation_key=rotation_key,
                                             rotation_type=rotation_type, gradients=gradients)
        blocks = density_blocks(result.layout, result.density, property_layout=property_layout)
        return density_tensormap(result.layout, blocks, tensormap_gradients(result, property_layout))
    layout, density = density_of_frames(frames, hypers, backend=backend, orthonormal=orthonormal,
                                        self_pairs=self_pairs, semiaxes=semiaxes, rotation_key=rotation_key,
                                        rotation_type=rotation_type)
    return density_tensormap(layout, density_blocks(layout, density, property_layout=property_layout))


def density_of_frames(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused", orthonormal: bool = True,
                      self_pairs: bool = True, semiaxes=None, rotation_key: str | None = "c_q",
                      rotation_type: str = "quaternion"):
    """(DensityLayout, density arrays) of frames: :func:`centre_density` before
    the TensorMap (parameters and errors the same)."""
    from einsum_workbench.reference.frames import atoms_table

    check_hypers(hypers)
    with stage("frames"):
        table = atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    return density_of_table(table, hypers, backend=backend, orthonormal=orthonormal, self_pairs=self_pairs)


def check_hypers(hypers) -> ExpansionHypers:
    """Return ``hypers`` or raise TypeError naming what was given instead."""
    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(
            f"hypers must be an einsum_workbench ExpansionHypers, got {type(hypers).__name__}: {hypers!r}"
        )
    return hypers

"""The segments: which output row of the centre density each pair feeds.

A *segment* is one (centre atom, neighbour species) row of the density
(DESIGN.md section 2): the density variant sums the pairs of each segment.
:func:`segments` gives every pair its segment and the :class:`DensityLayout`
of the rows (per centre species: its centres, its neighbour species, where its
rows start); :func:`table_pairs` runs the neighbour list of every frame of an
:class:`~einsum_workbench.reference.frames.AtomsTable` and does the same.

Property layouts (:data:`PROPERTY_LAYOUTS`): a block's property labels
``(n, neighbor_types)`` are listed species-major; its values are laid out
n-major under them (``"upstream"``, AniSOAP's layout) or species-major,
matching the labels (``"labelled"``). The one definition of the names: the
pipeline, the neighbour sum and the AniSOAP switch check against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.pairs import PairBatch

#: "upstream": values n-major under species-major labels (AniSOAP's layout);
#: "labelled": values species-major, matching the labels.
PROPERTY_LAYOUTS = ("upstream", "labelled")


def check_property_layout(property_layout, what: str = "property_layout") -> str:
    """Return ``property_layout`` if it is one of :data:`PROPERTY_LAYOUTS`.

    ``what`` names the setting in the message (the AniSOAP switch adds its
    environment variable).

    Raises
    ------
    ValueError naming the value given and the valid ones.
    """
    if property_layout not in PROPERTY_LAYOUTS:
        raise ValueError(f"{what} must be one of {PROPERTY_LAYOUTS}, got {property_layout!r}")
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
        return rows_as_block(rho_l[self.offsets[c]:self.offsets[c + 1]], len(self.samples[c]),
                             len(self.neighbour_types[c]), property_layout)

    def property_rows(self, c: int, n_radial: int) -> np.ndarray:
        """(n_radial * E_c, 2) int32 labels ``(n, neighbor_types)``, species-major."""
        return property_rows(self.neighbour_types[c], n_radial)


def rows_as_block(rows: np.ndarray, n_centres: int, n_types: int, property_layout: str = "upstream") -> np.ndarray:
    """(n_centres * n_types, 2l+1, n_l) density rows, centre-major, as block values (n_centres, 2l+1, n_l * n_types):
    columns ``n * n_types + e`` (upstream) or ``e * n_l + n`` (labelled); the rows themselves for one species."""
    if n_types == 1:
        return rows  # one neighbour species: both layouts are the rows themselves
    n_m, n_l = rows.shape[1], rows.shape[2]
    rows = rows.reshape(n_centres, n_types, n_m, n_l)
    upstream = property_layout == "upstream"
    block = np.empty((n_centres, n_m, n_l, n_types) if upstream else (n_centres, n_m, n_types, n_l), rows.dtype)
    # one strided copy per neighbour species: twice as fast as NumPy's copy of the whole transposed
    # view, whose innermost axis (the species) is too short (10 small cells, lmax 6: 53 -> 30 us)
    for e in range(n_types):
        if upstream:
            block[:, :, :, e] = rows[:, e]
        else:
            block[:, :, e, :] = rows[:, e]
    return block.reshape(n_centres, n_m, -1)


def property_rows(types, n_radial: int) -> np.ndarray:
    """(n_radial * len(types), 2) int32 labels ``(n, neighbor_types)``, species-major."""
    types = np.asarray(types, dtype=np.int32)
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

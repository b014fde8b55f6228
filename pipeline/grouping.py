"""Neighbour pairs to the density kernel's inputs, grouped by segment, in one compiled pass.

What :func:`einsum_workbench.pipeline.layout.segments`, a stable sort by
segment and four gathers (``r_ij``, the neighbour's rotation and semi-axes,
the segment) do in NumPy, done here in O(pairs + atoms) compiled loops,
parallel over centres: on 16 benzene frames (27,484 pairs) those NumPy steps
took 1.9 ms against the kernel's 1.0, and they did not use a second thread.

The input is the neighbour list in its order, (frame, i, j, shift): each
centre's pairs are one contiguous run, centres in global atom order. The
output order is the segment order of the :class:`DensityLayout` (centre
species, then centre, then neighbour species), pairs of one segment in their
neighbour-list order: exactly what ``np.argsort(segment, kind="stable")``
gives, so the density is bit-for-bit the one of the NumPy path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from einsum_workbench.pipeline.layout import DensityLayout, segments

#: Largest atomic number the compiled path tabulates species for (118 elements, 0 for ASE's X).
MAX_SPECIES = 127


@dataclass
class GroupedPairs:
    """The density kernel's inputs, pairs ordered by segment.

    Attributes
    ----------
    layout : DensityLayout
    segment : (P,) int64, non-decreasing
    r_ij : (P, 3) float64, angstrom
    rotations : (P, 3, 3) float64, the neighbour's body-to-lab rotation
    semiaxes : (P, 3) float64, the neighbour's semi-axes, angstrom
    neighbour : (P,) int64, global index of the neighbour atom
    """

    layout: DensityLayout
    segment: np.ndarray
    r_ij: np.ndarray
    rotations: np.ndarray
    semiaxes: np.ndarray
    neighbour: np.ndarray


@numba.njit(cache=True)
def _species_tables(pair_frame, i, j, first_atom, numbers, n_atoms_total):
    """Per atom: whether it is a centre with pairs; per (centre species, neighbour species): present."""
    is_centre = np.zeros(n_atoms_total, np.bool_)
    present = np.zeros((MAX_SPECIES + 1, MAX_SPECIES + 1), np.bool_)
    for p in range(len(pair_frame)):
        gi = first_atom[pair_frame[p]] + i[p]
        gj = first_atom[pair_frame[p]] + j[p]
        is_centre[gi] = True
        present[numbers[gi], numbers[gj]] = True
    return is_centre, present


@numba.njit(cache=True)
def _run_starts(pair_frame, i, first_atom):
    """Start of each centre's run of pairs (and the end), the input being sorted by (frame, i)."""
    n = len(pair_frame)
    count = 0
    for p in range(n):
        if p == 0 or pair_frame[p] != pair_frame[p - 1] or i[p] != i[p - 1]:
            count += 1
    starts = np.empty(count + 1, np.int64)
    k = 0
    for p in range(n):
        if p == 0 or pair_frame[p] != pair_frame[p - 1] or i[p] != i[p - 1]:
            starts[k] = p
            k += 1
    starts[count] = n
    return starts


@numba.njit(parallel=True, cache=True)
def _group(pair_frame, i, j, r_ij, first_atom, numbers, rotations, semiaxes, starts, pair_start, row_start,
           n_types, type_index, out_segment, out_r, out_rot, out_ax, out_neighbour):
    """Write each run's pairs, grouped by neighbour species (stable), at its rows' place."""
    n_runs = len(starts) - 1
    for run in numba.prange(n_runs):
        a, b = starts[run], starts[run + 1]
        gi = first_atom[pair_frame[a]] + i[a]
        c = numbers[gi]
        n_t = n_types[c]
        base = pair_start[gi]  # first output pair of this centre
        row = row_start[gi]  # its first segment
        counts = np.zeros(n_t + 1, np.int64)
        for p in range(a, b):
            gj = first_atom[pair_frame[p]] + j[p]
            counts[type_index[c, numbers[gj]] + 1] += 1
        for e in range(n_t):
            counts[e + 1] += counts[e]
        for p in range(a, b):
            gj = first_atom[pair_frame[p]] + j[p]
            e = type_index[c, numbers[gj]]
            d = base + counts[e]
            counts[e] += 1
            out_segment[d] = row + e
            out_neighbour[d] = gj
            for x in range(3):
                out_r[d, x] = r_ij[p, x]
                out_ax[d, x] = semiaxes[gj, x]
                for y in range(3):
                    out_rot[d, x, y] = rotations[gj, x, y]


def group_pairs(pair_frame, i, j, r_ij, table) -> GroupedPairs:
    """The neighbour pairs of ``table`` grouped by segment, with the neighbour's
    rotation and semi-axes gathered (the density kernel's inputs).

    Parameters
    ----------
    pair_frame, i, j : (P,) int64
        The neighbour list (``reference.neighbours.neighbour_pairs``), sorted by
        (frame, i); i and j index atoms within the frame.
    r_ij : (P, 3) float64, angstrom
    table : AtomsTable

    Returns
    -------
    GroupedPairs, in the order ``np.argsort(segment, kind="stable")`` of
    :func:`einsum_workbench.pipeline.layout.segments` gives (falls back to
    that NumPy path when the pairs are not sorted by (frame, i) or an atomic
    number is outside 0..``MAX_SPECIES``).
    """
    first_atom = table.first_atom
    numbers = table.numbers
    n_total = len(numbers)
    sortable = len(pair_frame) < 2 or bool(np.all(
        (pair_frame[1:] > pair_frame[:-1]) | ((pair_frame[1:] == pair_frame[:-1]) & (i[1:] >= i[:-1]))))
    if not sortable or (n_total and (numbers.min() < 0 or numbers.max() > MAX_SPECIES)):
        return _numpy_group(pair_frame, i, j, r_ij, table)
    is_centre, present = _species_tables(pair_frame, i, j, first_atom, numbers, n_total)
    centre_types = np.flatnonzero(present.any(axis=1)).astype(np.int32)
    n_types = present.sum(axis=1).astype(np.int64)
    type_index = np.cumsum(present, axis=1) - 1  # index of neighbour species e among c's (where present)
    neighbour_types, samples, offsets = [], [], [0]
    row_start_of_atom = np.zeros(n_total, dtype=np.int64)  # first segment row of each centre atom
    ends = np.cumsum(table.n_atoms)
    for c in centre_types:
        centres = np.flatnonzero(is_centre & (numbers == c))
        types = np.flatnonzero(present[c]).astype(np.int32)
        row_start_of_atom[centres] = offsets[-1] + np.arange(len(centres)) * len(types)
        frame_of = np.searchsorted(ends, centres, side="right")
        samples.append(np.stack([frame_of, centres - first_atom[frame_of]], axis=1).astype(np.int32))
        neighbour_types.append(types)
        offsets.append(offsets[-1] + len(centres) * len(types))
    layout = DensityLayout(centre_types=centre_types, neighbour_types=neighbour_types, samples=samples,
                           offsets=np.asarray(offsets, dtype=np.int64), n_frames=len(table.n_atoms))
    starts = _run_starts(pair_frame, i, first_atom)
    # pairs per segment row -> where each centre's pairs start in segment order
    centre_of_run = first_atom[pair_frame[starts[:-1]]] + i[starts[:-1]]
    run_length = np.diff(starts)
    order = np.argsort(row_start_of_atom[centre_of_run], kind="stable")  # runs in segment order
    run_offset = np.empty(len(run_length), dtype=np.int64)
    run_offset[order] = np.concatenate([[0], np.cumsum(run_length[order])[:-1]]) if len(order) else 0
    pair_start_of_atom = np.zeros(n_total, dtype=np.int64)
    pair_start_of_atom[centre_of_run] = run_offset
    n_pairs = len(pair_frame)
    out = (np.empty(n_pairs, np.int64), np.empty((n_pairs, 3)), np.empty((n_pairs, 3, 3)), np.empty((n_pairs, 3)),
           np.empty(n_pairs, np.int64))
    _group(pair_frame, i, j, np.ascontiguousarray(r_ij, dtype=np.float64), first_atom, numbers,
           np.ascontiguousarray(table.rotations, dtype=np.float64), np.ascontiguousarray(table.semiaxes, dtype=np.float64),
           starts, pair_start_of_atom, row_start_of_atom, n_types, type_index, *out)
    segment, r_out, rot_out, ax_out, neighbour = out
    return GroupedPairs(layout=layout, segment=segment, r_ij=r_out, rotations=rot_out, semiaxes=ax_out,
                        neighbour=neighbour)


def _numpy_group(pair_frame, i, j, r_ij, table) -> GroupedPairs:
    """The NumPy path: segments, a stable sort, gathers."""
    first = table.first_atom
    gi, gj = first[pair_frame] + i, first[pair_frame] + j
    layout, segment = segments(pair_frame, i, table.numbers[gi], table.numbers[gj], table.n_atoms)
    order = np.argsort(segment, kind="stable")
    gj = gj[order]
    return GroupedPairs(layout=layout, segment=segment[order], r_ij=r_ij[order], rotations=table.rotations[gj],
                        semiaxes=table.semiaxes[gj], neighbour=gj)

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

:func:`neighbour_groups` fuses the neighbour search into it: the compiled
search's first pass (``reference.neighbours.plan_search``) counts each
centre's pairs per neighbour species, which fixes the layout and where every
pair goes; its second pass, parallel over centres, finds each centre's pairs
again in upstream's order and writes each one straight to its row in segment
order, with its segment and its neighbour. The neighbour list (frame, i, j,
shift, r_ij: 72 bytes per pair) is never written nor read back, and no pass
over the pairs is left outside the search: on 16 benzene frames 0.39 ms
against 0.96 for ``neighbour_pairs`` then :func:`group_pairs`
(``bench/test_neighbour_list.py``). Same arrays, bit for bit, as those two
steps.

The neighbour's rotation and semi-axes are not copied per pair (96 bytes a
pair, about as much as the rest of the writing): :class:`GroupedPairs` keeps
the per-atom arrays and the neighbour of each pair; the density kernel reads
the rows by neighbour (``density_function(..., per_atom=True)``), and
``GroupedPairs.rotations`` / ``.semiaxes`` gather them per pair for whoever
needs them so (forces, the power spectrum's backward pass).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numba
import numpy as np

from einsum_workbench.threads import parallel_guard, prange_only

from einsum_workbench.pipeline.layout import DensityLayout, segments
from einsum_workbench.pipeline.stages import stage
from einsum_workbench.reference.neighbours import (
    BRUTE_FORCE,
    CENTRES_PER_BLOCK,
    accept_pair,
    centre_pairs,
    centre_pairs_in_order,
    plan_search,
    shift_ranges,
)

#: Largest atomic number the compiled path tabulates species for (118 elements, 0 for ASE's X).
MAX_SPECIES = 127
#: Room the counting pass keeps for the pairs of a block of brute-force centres, over the plan's
#: estimate of them (measured: blocks hold 0.76 to 1.09 of the estimate); plus KEPT_SLACK pairs.
KEPT_MARGIN = 1.25
KEPT_SLACK = 16


@dataclass
class GroupedPairs:
    """The density kernel's inputs, pairs ordered by segment.

    Attributes
    ----------
    layout : DensityLayout
    segment : (P,) int64, non-decreasing
    r_ij : (P, 3) float64, angstrom
    neighbour : (P,) int64, global index of the neighbour atom
    atom_rotations : (N, 3, 3) float64, C-contiguous, every atom's body-to-lab rotation
    atom_semiaxes : (N, 3) float64, C-contiguous, every atom's semi-axes, angstrom
    rotations : (P, 3, 3) float64, the neighbour's rotation per pair (gathered on first use)
    semiaxes : (P, 3) float64, the neighbour's semi-axes per pair (gathered on first use)
    """

    layout: DensityLayout
    segment: np.ndarray
    r_ij: np.ndarray
    neighbour: np.ndarray
    atom_rotations: np.ndarray
    atom_semiaxes: np.ndarray

    @functools.cached_property
    def rotations(self) -> np.ndarray:
        return np.take(self.atom_rotations, self.neighbour, axis=0)

    @functools.cached_property
    def semiaxes(self) -> np.ndarray:
        return np.take(self.atom_semiaxes, self.neighbour, axis=0)


def _atom_arrays(table):
    """The table's rotations and semi-axes as C-contiguous float64 (no copy when they are)."""
    return (np.ascontiguousarray(table.rotations, dtype=np.float64),
            np.ascontiguousarray(table.semiaxes, dtype=np.float64))


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


@numba.njit(parallel=prange_only(), cache=True)
def _group(pair_frame, i, j, r_ij, first_atom, numbers, starts, pair_start, row_start,
           n_types, type_index, out_segment, out_r, out_neighbour):
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


def group_pairs(pair_frame, i, j, r_ij, table) -> GroupedPairs:
    """The neighbour pairs of ``table`` grouped by segment, with each pair's
    neighbour (the density kernel's inputs).

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
    out = (np.empty(n_pairs, np.int64), np.empty((n_pairs, 3)), np.empty(n_pairs, np.int64))
    _group(pair_frame, i, j, np.ascontiguousarray(r_ij, dtype=np.float64), first_atom, numbers,
           starts, pair_start_of_atom, row_start_of_atom, n_types, type_index, *out)
    segment, r_out, neighbour = out
    return GroupedPairs(layout, segment, r_out, neighbour, *_atom_arrays(table))


def _numpy_group(pair_frame, i, j, r_ij, table) -> GroupedPairs:
    """The NumPy path: segments, a stable sort, gathers."""
    first = table.first_atom
    gi, gj = first[pair_frame] + i, first[pair_frame] + j
    layout, segment = segments(pair_frame, i, table.numbers[gi], table.numbers[gj], table.n_atoms)
    order = np.argsort(segment, kind="stable")
    gj = gj[order]
    return GroupedPairs(layout, segment[order], np.ascontiguousarray(r_ij[order], dtype=np.float64), gj,
                        *_atom_arrays(table))


# ---------------------------------------------------------------------------
# The neighbour search and the grouping in one


@numba.njit(cache=True)
def _species_index(numbers):
    """(sorted species present, (MAX_SPECIES + 1,) index of each atomic number among them, -1 if absent);
    the species array is empty when an atomic number lies outside 0..MAX_SPECIES."""
    seen = np.zeros(MAX_SPECIES + 1, np.bool_)
    for a in range(len(numbers)):
        z = numbers[a]
        if z < 0 or z > MAX_SPECIES:
            return np.zeros(0, np.int32), np.full(MAX_SPECIES + 1, -1, np.int64)
        seen[z] = True
    index = np.full(MAX_SPECIES + 1, -1, np.int64)
    species = np.empty(seen.sum(), np.int32)
    k = 0
    for z in range(MAX_SPECIES + 1):
        if seen[z]:
            index[z] = k
            species[k] = z
            k += 1
    return species, index


@numba.njit(parallel=prange_only(), cache=True)
def _count_and_keep(geometry, centres, block, species, n_species, estimate, margin):
    """The first pass: each centre's pairs, per neighbour species, and for brute-force frames
    the pairs themselves (j, r_ij, in upstream's order) kept for the second pass, which then
    copies them instead of searching again. A parallel loop over blocks of centres.

    Pairs kept per centre of a brute-force frame: ``margin`` (``KEPT_MARGIN``) times the plan's
    ``estimate`` (F,) over its atoms (none for other frames). A block keeps its centres' pairs
    in its own room while they fit; a centre that does not fit gets ``start[c] = -1`` (searched
    again).

    Returns (counts (C,), by_species (C, S), start (C,) first kept row or -1, kept_j, kept_r).
    """
    (positions, owner, first_atom, n_atoms, mode, cells, inverse_cells, reach, periodic) = geometry[:9]
    cutoff2, self_pairs = geometry[20], geometry[21]
    n_centres = len(centres)
    n_blocks = (n_centres + block - 1) // block
    room_per_centre = np.zeros(len(n_atoms))
    for f in range(len(n_atoms)):
        if mode[f] == BRUTE_FORCE:
            room_per_centre[f] = margin * estimate[f] / max(n_atoms[f], 1)
    room = np.zeros(n_blocks + 1, np.int64)  # the blocks' rooms, end to end
    for blk in range(n_blocks):
        wanted = 0.0
        for c in range(blk * block, min(n_centres, (blk + 1) * block)):
            wanted += room_per_centre[owner[centres[c]]]
        room[blk + 1] = room[blk] + (np.int64(np.ceil(wanted)) + KEPT_SLACK if wanted > 0 else 0)
    sink = room[n_blocks]  # one more row: where the candidates that do not fit are stored
    kept_j = np.empty(sink + 1, np.int64)
    kept_r = np.empty((sink + 1, 3), np.float64)
    counts = np.zeros(n_centres, np.int64)
    by_species = np.zeros((n_centres, n_species), np.int64)
    start = np.full(n_centres, -1, np.int64)
    no_j = np.zeros(0, np.int64)
    no_v = np.zeros((0, 3), np.int64)
    no_r = np.zeros((0, 3), np.float64)
    for blk in numba.prange(n_blocks):
        o, end = room[blk], room[blk + 1]
        for c in range(blk * block, min(n_centres, (blk + 1) * block)):
            a = centres[c]
            f = owner[a]
            if mode[f] != BRUTE_FORCE or room_per_centre[f] == 0:
                counts[c] = centre_pairs(a, geometry, False, no_j, no_v, no_r, no_j, species, by_species[c])
                continue
            base = first_atom[f]
            i = a - base
            # the cell and the centre as scalars: the stores below could alias arrays, and would
            # make LLVM reload them for every candidate (measured 1.7x slower)
            cell = cells[f]
            x0, x1, x2 = cell[0, 0], cell[0, 1], cell[0, 2]
            y0, y1, y2 = cell[1, 0], cell[1, 1], cell[1, 2]
            z0, z1, z2 = cell[2, 0], cell[2, 1], cell[2, 2]
            p0, p1, p2 = positions[a, 0], positions[a, 1], positions[a, 2]
            count = 0
            for j in range(n_atoms[f]):  # reference.neighbours' brute-force loop, pairs kept while there is room
                d0 = positions[base + j, 0] - p0
                d1 = positions[base + j, 1] - p1
                d2 = positions[base + j, 2] - p2
                lo0, hi0, lo1, hi1, lo2, hi2 = shift_ranges(d0, d1, d2, inverse_cells, reach, periodic, f)
                before = count
                for s0 in range(lo0, hi0 + 1):
                    for s1 in range(lo1, hi1 + 1):
                        for s2 in range(lo2, hi2 + 1):
                            # accept_pair's arithmetic, term for term (the same r_ij, bit for bit)
                            if i == j and s0 == 0 and s1 == 0 and s2 == 0:
                                kept, r0, r1, r2 = self_pairs, 0.0, 0.0, 0.0
                            else:
                                r0 = d0 + s0 * x0 + s1 * y0 + s2 * z0
                                r1 = d1 + s0 * x1 + s1 * y1 + s2 * z1
                                r2 = d2 + s0 * x2 + s1 * y2 + s2 * z2
                                kept = r0 * r0 + r1 * r1 + r2 * r2 < cutoff2
                            # every candidate stored, the count advanced by the test: no branch to
                            # mispredict (most candidates of small periodic cells fail it)
                            d = o + count
                            d = d if d < end else sink
                            kept_j[d] = j
                            kept_r[d, 0] = r0
                            kept_r[d, 1] = r1
                            kept_r[d, 2] = r2
                            count += kept
                by_species[c, species[base + j]] += count - before
            counts[c] = count
            if o + count <= end:
                start[c] = o
                o += count
    return counts, by_species, start, kept_j, kept_r


@numba.njit(cache=True, inline="always")
def _put(d, segment, gj, r0, r1, r2, out_segment, out_r, out_neighbour):
    """One grouped pair at output row ``d``: its segment, neighbour and r_ij."""
    out_segment[d] = segment
    out_neighbour[d] = gj
    out_r[d, 0] = r0
    out_r[d, 1] = r1
    out_r[d, 2] = r2


@numba.njit(parallel=prange_only(), cache=True)
def _write_grouped(geometry, centres, block, counts, by_species, pair_start, row_start, type_index, species,
                   start, kept_j, kept_r, out_segment, out_r, out_neighbour):
    """Each centre's pairs written at their place in segment order: grouped by neighbour species
    (``by_species``, the first pass's counts), in upstream's order within a species, with their
    segment and neighbour. A parallel loop over blocks of centres.

    A centre whose pairs the first pass kept (``start[c] >= 0``: rows of ``kept_j``, ``kept_r``)
    has them copied; another brute-force centre's are found again in order
    (``reference.neighbours``' loop over j and the shifts); a cell-list frame's come sorted
    from ``centre_pairs_in_order``."""
    (positions, owner, first_atom, n_atoms, mode, cells, inverse_cells, reach, periodic) = geometry[:9]
    cutoff2, self_pairs = geometry[20], geometry[21]
    n_species = by_species.shape[1]
    n_blocks = (len(centres) + block - 1) // block
    for blk in numba.prange(n_blocks):
        first, last = blk * block, min(len(centres), (blk + 1) * block)
        size = 0
        for c in range(first, last):
            if mode[owner[centres[c]]] != BRUTE_FORCE:  # buffers of the cell-list search
                size = max(size, counts[c])
        bj = np.empty(size, np.int64)
        bs = np.empty((size, 3), np.int64)
        br = np.empty((size, 3), np.float64)
        keys = np.empty(size, np.int64)
        order = np.empty(size, np.int64)
        place = np.empty(n_species, np.int64)
        for c in range(first, last):
            if counts[c] == 0:
                continue
            a = centres[c]
            f = owner[a]
            base = first_atom[f]
            o = pair_start[c]
            for e in range(n_species):  # where the centre's pairs with each neighbour species go
                place[e] = o
                o += by_species[c, e]
            row = row_start[c]
            kinds = type_index[species[a]]
            if start[c] >= 0:
                # one scan of the kept pairs per neighbour species present, the output row a scalar
                # (a running place[e] in memory is a store-to-load chain through every pair)
                for e in range(n_species):
                    if by_species[c, e] == 0:
                        continue
                    d, segment = place[e], row + kinds[e]
                    for q in range(start[c], start[c] + counts[c]):
                        gj = base + kept_j[q]
                        if species[gj] == e:
                            _put(d, segment, gj, kept_r[q, 0], kept_r[q, 1], kept_r[q, 2], out_segment, out_r,
                                 out_neighbour)
                            d += 1
            elif mode[f] == BRUTE_FORCE:
                i, cell = a - base, cells[f]
                for j in range(n_atoms[f]):
                    gj = base + j
                    e = species[gj]
                    segment, d = row + kinds[e], place[e]
                    d0 = positions[gj, 0] - positions[a, 0]
                    d1 = positions[gj, 1] - positions[a, 1]
                    d2 = positions[gj, 2] - positions[a, 2]
                    lo0, hi0, lo1, hi1, lo2, hi2 = shift_ranges(d0, d1, d2, inverse_cells, reach, periodic, f)
                    for s0 in range(lo0, hi0 + 1):
                        for s1 in range(lo1, hi1 + 1):
                            for s2 in range(lo2, hi2 + 1):
                                kept, r0, r1, r2 = accept_pair(i, j, s0, s1, s2, d0, d1, d2, cell, cutoff2, self_pairs)
                                if kept:
                                    _put(d, segment, gj, r0, r1, r2, out_segment, out_r, out_neighbour)
                                    d += 1
                    place[e] = d
            else:
                m = centre_pairs_in_order(a, geometry, bj, bs, br, keys, order)
                for p in range(m):
                    q = order[p]
                    gj = base + bj[q]
                    e = species[gj]
                    _put(place[e], row + kinds[e], gj, br[q, 0], br[q, 1], br[q, 2], out_segment, out_r,
                         out_neighbour)
                    place[e] += 1


@numba.njit(cache=True)
def _centre_rows(centres, counts, by_species, species, n_species, owner, first_atom):
    """The segment rows of the centres with pairs, and where each centre's pairs start, in one pass.

    Returns (present (S, S): centre species s has a pair with neighbour species e; type_index
    (S, S): the index of neighbour species e among those of centre species s; row_start (C,):
    each centre's first segment row; pair_start (C,): where each centre's pairs start in segment
    order (centre species, then centre atom), and n_pairs, their total; samples (M, 2) int32
    (system, atom within it) of the centres with pairs, species by species, in centre order;
    per_species (S,): their count; offsets (S + 1,): each species' first segment row)."""
    present = np.zeros((n_species, n_species), np.bool_)
    per_species = np.zeros(n_species, np.int64)
    pairs_of = np.zeros(n_species + 1, np.int64)
    for c in range(len(centres)):
        s = species[centres[c]]
        pairs_of[s + 1] += counts[c]
        if counts[c] > 0:
            per_species[s] += 1
            for e in range(n_species):
                if by_species[c, e] > 0:
                    present[s, e] = True
    type_index = np.empty((n_species, n_species), np.int64)
    n_types = np.zeros(n_species, np.int64)
    for s in range(n_species):
        for e in range(n_species):
            n_types[s] += present[s, e]
            type_index[s, e] = n_types[s] - 1
    offsets = np.zeros(n_species + 1, np.int64)
    first_sample = np.zeros(n_species + 1, np.int64)
    for s in range(n_species):
        offsets[s + 1] = offsets[s] + per_species[s] * n_types[s]
        first_sample[s + 1] = first_sample[s] + per_species[s]
        pairs_of[s + 1] += pairs_of[s]
    row_start = np.zeros(len(centres), np.int64)
    pair_start = np.empty(len(centres), np.int64)
    samples = np.empty((first_sample[n_species], 2), np.int32)
    rank = np.zeros(n_species, np.int64)
    for c in range(len(centres)):
        a = centres[c]
        s = species[a]
        pair_start[c] = pairs_of[s]
        pairs_of[s] += counts[c]
        if counts[c] > 0:
            row_start[c] = offsets[s] + rank[s] * n_types[s]
            k = first_sample[s] + rank[s]
            samples[k, 0] = owner[a]
            samples[k, 1] = a - first_atom[owner[a]]
            rank[s] += 1
    return present, type_index, row_start, pair_start, pairs_of[n_species], samples, per_species, offsets


def _grouped_layout(search, counts, by_species, atom_species, species, n_frames):
    """The DensityLayout of the fused search's pairs, each centre's first segment row and first pair
    (segment order), the number of pairs, and the index of each neighbour species among those of
    each centre species (S, S)."""
    present, type_index, row_start, pair_start, n_pairs, samples, per_species, offsets = _centre_rows(
        search.centres, counts, by_species, atom_species, len(species), search.geometry[1], search.first_atom)
    counts_per_species = per_species.tolist()
    kinds = [s for s, count in enumerate(counts_per_species) if count]
    bounds = list(itertools.accumulate((counts_per_species[s] for s in kinds), initial=0))
    layout = DensityLayout(centre_types=species[kinds],
                           neighbour_types=[species[present[s]] for s in kinds],
                           samples=[samples[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                           offsets=offsets[kinds + [len(species)]], n_frames=n_frames)
    return layout, row_start, pair_start, n_pairs, type_index


def neighbour_groups(table, cutoff: float, *, self_pairs: bool = True, max_pairs: int | None = None) -> GroupedPairs:
    """The neighbour pairs of every frame of ``table``, found and grouped by segment in one
    compiled search, with each pair's neighbour (the density kernel's inputs).

    The same arrays, bit for bit, as ``group_pairs(frame, i, j, r_ij, table)`` of
    ``reference.neighbours.neighbour_pairs(table.positions, table.n_atoms, table.cells,
    table.pbc, cutoff, self_pairs=self_pairs, max_pairs=max_pairs)``, which it
    runs instead when an atomic number lies outside 0..``MAX_SPECIES``. Records the
    stages ``neighbour_list`` (planning, the first pass counting each centre's
    pairs) and ``grouping`` (the second pass, which searches again and writes the
    grouped pairs, and the layout).

    Parameters
    ----------
    table : AtomsTable
    cutoff : float, angstrom, > 0
    self_pairs : bool
        Add (i, i, shift 0, r = 0) for every atom.
    max_pairs : int or None
        As ``neighbour_pairs``: refuse beyond this many estimated pairs (None: its default).

    Returns
    -------
    GroupedPairs

    Raises
    ------
    TypeError, ValueError
        as ``reference.neighbours.neighbour_pairs`` (a bad cutoff or cell, too many pairs).
    """
    numbers = table.numbers
    species, species_index = _species_index(numbers)
    if len(numbers) and not len(species):  # an atomic number beyond the tables
        from einsum_workbench.reference.neighbours import neighbour_pairs

        with stage("neighbour_list"):
            frame, i, j, _, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, cutoff,
                                                   self_pairs=self_pairs, max_pairs=max_pairs)
        with stage("grouping"):
            return group_pairs(frame, i, j, r_ij, table)
    with stage("neighbour_list"):
        search = plan_search(table.positions, table.n_atoms, table.cells, table.pbc, cutoff, self_pairs=self_pairs,
                             max_pairs=max_pairs)
        atom_species = species_index[numbers]
        # brute-force frames: the first pass keeps their pairs, the second copies them
        with parallel_guard():
            counts, by_species, start, kept_j, kept_r = _count_and_keep(search.geometry, search.centres,
                                                                        CENTRES_PER_BLOCK, atom_species, len(species),
                                                                        search.estimate, float(KEPT_MARGIN))
    with stage("grouping"):
        centres = search.centres
        layout, row_start, pair_start, n_pairs, type_index = _grouped_layout(search, counts, by_species,
                                                                             atom_species, species,
                                                                             len(table.n_atoms))
        out = (np.empty(n_pairs, np.int64), np.empty((n_pairs, 3)), np.empty(n_pairs, np.int64))
        with parallel_guard():
            _write_grouped(search.geometry, centres, CENTRES_PER_BLOCK, counts, by_species, pair_start, row_start,
                           type_index, atom_species, start, kept_j, kept_r, *out)
        segment, r_ij, neighbour = out
        return GroupedPairs(layout, segment, r_ij, neighbour, *_atom_arrays(table))

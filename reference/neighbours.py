"""Full neighbour lists of many frames at once, in one compiled search.

:func:`neighbour_pairs` serves every frame of one call with one compiled
(Numba) search in two parallel passes over blocks of centres (``prange``: a
batch of frames or one large frame alike): the first counts each centre's
pairs, the second writes them at the prefix-sum offsets. Per frame, one of two
inner paths, chosen by a rule on candidate counts (:data:`BRUTE_FORCE_RATIO`):

- **brute force** (tiny coarse-grained frames, small periodic cells much
  smaller than the cutoff, small molecules): for each (i, j), only the cell
  shifts whose fractional separation is within ``cutoff / h_k`` along every
  axis (``h_k``: distance between lattice planes) are tried, in (j, shift)
  order, so no sort is needed (about 0.7 us per 2-atom frame);
- **cell list** (large boxes, open clusters): atoms binned in fractional
  coordinates (``floor(BIN_SPLIT h_k / cutoff)`` bins across a periodic
  axis, the atoms' extent along an open one, at most :data:`BINS_PER_ATOM`
  per atom); a centre visits the bins within ``cutoff / h_k`` of it, periodic
  images unrolled (a cell smaller than the cutoff is visited several times
  with different shifts), so the cost grows with atoms x neighbours; each
  centre's few pairs are sorted by (j, shift).

The rule: brute force when ``n^2 prod_k (2 cutoff / h_k + 1)`` (its
candidates) is at most :data:`BRUTE_FORCE_RATIO` (4) times ``n x visited bins
x (1 + atoms per bin)`` (the cell list's); :func:`neighbour_paths` says which
path each frame takes. vesin (one call per frame, then a sort) stays as
``method="vesin"``, the tests' oracle: measured slower than the compiled search
on every workload once its output is put in upstream's order (1.6x on a
10,000-atom box, 8 to 25x on small frames; docs/pipeline.md, "Neighbour list").

Every path gives the same pairs as featomic's ``NeighborList`` (which AniSOAP
uses): full list (i -> j and j -> i), every periodic image within the cutoff
(atoms need not be wrapped into the cell), mixed periodicity, self pairs (i,
i, shift 0, r = 0) only when asked. Output is in upstream's order, (frame, i,
j, shift) lexicographic with the shift compared component by component, with
no sort over all pairs; it does not depend on the thread count. Parallel calls
run under :func:`einsum_workbench.threads.parallel_guard`.

The per-frame plan (cell inverses, lattice-plane distances, fractional
coordinates, bins, path, pair estimate) is one compiled pass over the frames
(:func:`_plan_frames`; the NumPy version cost 0.6 ms on 1,000 two-atom frames).
:func:`plan_search` hands the planned search to compiled callers that consume
the pairs centre by centre (:func:`centre_pairs_in_order`, the first pass's
counts per neighbour species): ``pipeline.grouping.neighbour_groups``.

Before anything is allocated the number of pairs is estimated
(:func:`estimate_pairs`: atoms x atom density x the cutoff sphere's volume);
beyond ``max_pairs`` (default :data:`MAX_PAIRS`) the call is refused with the
estimate, the frame and the way out in the message, instead of growing a
neighbour list until the machine runs out of memory (a periodic 2-atom frame
with cutoff 1e4 used to reach 23.5 GB, or crash vesin under a memory limit).
"""


from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from einsum_workbench.reference.frames import first_non_finite_row
from einsum_workbench.threads import parallel_guard, prange_only

#: Largest estimated number of neighbour pairs (all frames of one call
#: together, self pairs included) a neighbour list is built for. A pair costs
#: 176 bytes in a ``PairBatch`` (r_ij, rotation, semi-axes, indices, species,
#: shift) and peaks at ~284 while the list is built and sorted (measured:
#: 2.7 million pairs of a 20,000-atom periodic box), so 20 million pairs need
#: about 5.7 GB before any coefficient is computed (coefficients add
#: (2l+1) num_radial[l] values per pair and l: ~670 bytes at lmax 6 in float64).
#: Callers with the memory pass a larger ``max_pairs``.
MAX_PAIRS = 20_000_000
#: Peak bytes per pair of :func:`neighbour_pairs` plus the ``PairBatch``,
#: quoted in the refusal message (see ``MAX_PAIRS``).
BYTES_PER_PAIR = 284

#: The old split's threshold (deprecated ``small_frame_candidates``): frames with at
#: most this many candidate (i, j, shift) triples (over the whole shift box,
#: :func:`image_ranges`) by brute force, the others by vesin. Not used by default.
SMALL_FRAME_CANDIDATES = 65536


def _inverse_cells(cells, pbc):
    """(F, 3, 3) inverses of the cells and (F, 3) distances between lattice
    planes; along a non-periodic axis a unit vector stands in for the cell
    vector (it never shifts), which keeps every cell invertible.

    From cross products (``inv[:, k]`` = cross of the other two rows / det):
    10x faster than ``np.linalg.inv`` on a thousand 3x3 cells."""
    cell = cells.copy()
    flat = ~pbc | ~(cells != 0).any(axis=2)
    cell[flat] = np.eye(3)[np.nonzero(flat)[1]]
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]

    def cross(u, v):
        return np.stack([u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1], u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2],
                         u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]], axis=1)

    normals = np.stack([cross(b, c), cross(c, a), cross(a, b)], axis=2)  # (F, 3 xyz, 3 k)
    det = (a * normals[:, :, 0]).sum(axis=1)
    heights = np.abs(det)[:, None] / np.sqrt((normals * normals).sum(axis=1))
    return normals / det[:, None, None], heights


def estimate_pairs(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True,
                   heights=None) -> np.ndarray:
    """Estimated number of neighbour pairs of each frame, computed in O(atoms).

    - fully periodic frame of n atoms and cell volume V: ``n x (n / V) x
      4/3 pi cutoff^3`` (atoms times the atom density times the cutoff
      sphere's volume; exact on average over positions);
    - periodic along one or two axes: ``n^2`` times ``2 cutoff / h_k`` per
      periodic axis (``h_k``: distance between lattice planes; times pi/4,
      a disc over a square, for two), times the open axes' factor below;
    - open frame: ``n^2`` times, per Cartesian axis, ``min(1, 2 cutoff /
      extent)`` (the fraction of the atoms' bounding box a cutoff cube covers);
      never more than ``n^2``;

    plus ``n`` self pairs when ``self_pairs``. Float64, so that any cutoff
    gives a finite, comparable estimate. Measured against the real lists: 1.01x
    the pairs of a random periodic box, 1.07x on ``ellipsoids.xyz``, 1.6x on a
    random slab, 2.8x on a random open cluster (surface atoms have fewer
    neighbours). ``heights``: the (F, 3) distances between lattice planes
    when the caller has them (:func:`neighbour_pairs` computes them once for
    the estimate and the search).

    Returns
    -------
    (F,) float64 estimates.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    n = n_atoms.astype(np.float64)
    estimate = np.zeros(len(n_atoms))
    filled = n_atoms > 0
    if not filled.any():
        return estimate
    cutoff = float(cutoff)
    if heights is None:
        _, heights = _inverse_cells(cells, pbc)
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])[filled]
    extent = np.zeros((len(n_atoms), 3))
    extent[filled] = (np.maximum.reduceat(positions, starts, axis=0)
                      - np.minimum.reduceat(positions, starts, axis=0)) if len(positions) else 0.0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        open_factor = np.where(extent > 0, np.minimum(1.0, 2.0 * cutoff / np.where(extent > 0, extent, 1.0)), 1.0)
        # periodic axes: 2 cutoff / h_k images (a k-ball over a k-box: pi/4 for two axes)
        images = np.where(pbc, 2.0 * cutoff / heights, open_factor).prod(axis=1)
        images = images * np.where(pbc.sum(axis=1) == 2, math.pi / 4.0, 1.0)
        volume = np.abs(np.linalg.det(cells))
        full = pbc.all(axis=1) & (volume > 0)
        sphere = 4.0 / 3.0 * math.pi * cutoff**3
        estimate = np.where(full, n * n * sphere / np.where(full, volume, 1.0), n * n * images)
    estimate = np.where(filled, estimate, 0.0)
    if self_pairs:
        estimate = estimate + n
    return np.nan_to_num(estimate, nan=np.inf)


def check_pair_estimate(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True,
                        max_pairs: int = MAX_PAIRS, heights=None) -> float:
    """Refuse a neighbour list estimated (:func:`estimate_pairs`, ``heights`` passed on) above
    ``max_pairs`` pairs.

    Returns
    -------
    The estimated total number of pairs.

    Raises
    ------
    ValueError
        naming the estimate, the limit, the frame with the most pairs (its
        atoms, periodicity, cell volume and neighbours per atom) and the way
        out (a smaller cutoff, fewer frames per call, or a larger ``max_pairs``).
    """
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Real):
        raise TypeError(f"max_pairs must be a number, got {max_pairs!r}")
    if not max_pairs >= 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs!r}")
    estimate = estimate_pairs(positions, n_atoms, cells, pbc, cutoff, self_pairs=self_pairs, heights=heights)
    total = float(estimate.sum()) if len(estimate) else 0.0
    if total > max_pairs:
        f = int(np.argmax(estimate))
        n = int(np.asarray(n_atoms)[f])
        cell = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)[f]
        periodic = np.asarray(pbc, dtype=bool).reshape(-1, 3)[f].tolist()
        where = (f"frame {f}: {n} atoms, pbc {periodic}, cell volume {abs(np.linalg.det(cell)):.4g} A^3, "
                 f"about {estimate[f]:.3g} pairs ({estimate[f] / max(n, 1):.3g} neighbours per atom within "
                 f"the cutoff sphere)")
        raise ValueError(
            f"cutoff {cutoff:g} angstrom would give about {total:.3g} neighbour pairs "
            f"(~{total * BYTES_PER_PAIR / 1e9:.3g} GB), above max_pairs = {max_pairs:,.0f}; the largest is "
            f"{where}. Use a smaller cutoff or fewer frames per call, or pass a larger max_pairs "
            "if the memory is there"
        )
    return total


def image_ranges(positions, n_atoms, cells, pbc, cutoff: float) -> np.ndarray:
    """Largest cell shift |S_k| along each axis that can hold a neighbour, per frame.

    A pair (i, j, S) has fractional separation ``f_j - f_i + S`` whose k-th
    component is at most ``cutoff / h_k`` in magnitude (``h_k``: distance
    between lattice planes k), so ``|S_k| <= cutoff / h_k + spread_k`` with
    ``spread_k`` the frame's range of fractional coordinates (atoms need not
    be wrapped into the cell).

    Parameters
    ----------
    positions : (N, 3) float, angstrom, frame after frame
    n_atoms : (F,) int64
    cells : (F, 3, 3) float, angstrom, rows are the lattice vectors
    pbc : (F, 3) bool
    cutoff : float, angstrom

    Returns
    -------
    (F, 3) int64, 0 along non-periodic axes and for empty frames.
    """
    ranges = np.zeros((len(n_atoms), 3), dtype=np.int64)
    if not pbc.any() or not len(positions):
        return ranges
    inverse_cells, heights = _inverse_cells(cells, pbc)
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
    fractional = np.matmul(positions[:, None, :], inverse_cells[owner])[:, 0]
    filled = n_atoms > 0
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])[filled]  # non-empty frames tile the atoms
    spread = np.zeros((len(n_atoms), 3))
    spread[filled] = np.maximum.reduceat(fractional, starts) - np.minimum.reduceat(fractional, starts)
    ranges[:] = np.where(pbc & filled[:, None], np.ceil(cutoff / heights + spread), 0)
    return ranges


#: Cell-list bins per axis: ``floor(BIN_SPLIT / reach_k)`` bins across the cell
#: (``reach_k = cutoff / h_k`` in fractional units), so a bin is at least
#: ``reach_k / BIN_SPLIT`` wide; 2 (half-reach bins) visits 5^3 / 8 = 15.6
#: reach^3 per centre against 27 with reach-wide bins.
BIN_SPLIT = 2
#: At most this many bins per atom of a frame (sparse boxes and open clusters
#: far apart would otherwise get mostly empty bins).
BINS_PER_ATOM = 1.0
#: A frame takes the brute-force search when its candidate (i, j, shift)
#: count ``n^2 prod_k (2 reach_k + 1)`` is at most this many times the cell
#: list's cost ``n x visited bins x (1 + atoms per bin)``: a cell-list
#: candidate costs about 4 brute-force ones (binning, bin loop, per-centre
#: sort). Measured on AMD EPYC, one thread, periodic boxes at 0.1 atoms/A^3,
#: cutoff 7 (4,000 atoms per call): the two break even at 400 atoms (ratio
#: 3.96: 72.8 ms brute force against 69.3 for 10 frames); at 200 atoms (ratio
#: 2.75) brute force is 1.6x faster, at 800 (5.83) the cell list 2.0x.
BRUTE_FORCE_RATIO = 4.0
#: Centres per work item of the parallel loops.
CENTRES_PER_BLOCK = 32

BRUTE_FORCE, CELL_LIST = 1, 2
#: Path names as :func:`neighbour_paths` reports them, by path code.
PATH_NAMES = {BRUTE_FORCE: "brute_force", CELL_LIST: "cell_list"}


@numba.njit(cache=True, inline="always")
def accept_pair(i, j, s0, s1, s2, d0, d1, d2, cell, cutoff2, self_pairs):
    """(kept, r0, r1, r2) of the candidate (i, j, shift): r_ij = d + shift @ cell (angstrom), kept when
    ``|r_ij|^2 < cutoff2``, the self pair (i, i, 0) when ``self_pairs``. Compiled, for compiled callers."""
    if i == j and s0 == 0 and s1 == 0 and s2 == 0:
        return self_pairs, 0.0, 0.0, 0.0
    r0 = d0 + s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
    r1 = d1 + s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
    r2 = d2 + s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
    return r0 * r0 + r1 * r1 + r2 * r2 < cutoff2, r0, r1, r2


@numba.njit(cache=True, inline="always")
def shift_range(d0, d1, d2, inverse_cells, reach, periodic, f, k):
    """(lowest, highest) cell shift along axis ``k`` of frame ``f`` whose fractional separation from
    ``d`` (angstrom) is within reach ((0, 0) along an open axis). Compiled, for compiled callers."""
    if not periodic[f, k]:
        return 0, 0
    fr = d0 * inverse_cells[f, 0, k] + d1 * inverse_cells[f, 1, k] + d2 * inverse_cells[f, 2, k]
    return np.int64(np.ceil(-fr - reach[f, k])), np.int64(np.floor(-fr + reach[f, k]))


@numba.njit(cache=True, inline="always")
def shift_ranges(d0, d1, d2, inverse_cells, reach, periodic, f):
    """(lo0, hi0, lo1, hi1, lo2, hi2): :func:`shift_range` along the three axes. Compiled, for compiled callers."""
    lo0, hi0 = shift_range(d0, d1, d2, inverse_cells, reach, periodic, f, 0)
    lo1, hi1 = shift_range(d0, d1, d2, inverse_cells, reach, periodic, f, 1)
    lo2, hi2 = shift_range(d0, d1, d2, inverse_cells, reach, periodic, f, 2)
    return lo0, hi0, lo1, hi1, lo2, hi2


@numba.njit(cache=True, inline="always")
def centre_pairs(a, geometry, write, out_j, out_shift, out_r, keys, species, tally):
    """Neighbour pairs of centre ``a`` (global atom index): their count, and when ``write``
    their j, shift, r_ij (and for cell-list frames the sort keys) in the buffers, in (j, shift)
    order for brute-force frames and in visit order (``keys`` then sort) for cell-list ones.
    ``geometry``: :attr:`PlannedSearch.geometry`. When ``species`` (per global atom) is not
    empty, ``tally[species[j]]`` counts the pairs of each neighbour species. Compiled, for
    compiled callers (the search and ``pipeline.grouping``'s counting pass)."""
    (positions, owner, first_atom, n_atoms, mode, cells, inverse_cells, reach, periodic, fractional, wrap, origin,
     width, n_bins, bin_base, bin_start, bin_atoms, binned_positions, binned_wrap, half_widths, cutoff2,
     self_pairs) = geometry
    f = owner[a]
    base = first_atom[f]
    i = a - base
    cell = cells[f]
    count = 0
    if mode[f] == 1:  # brute force: every j, the shifts its fractional separation allows
        for j in range(n_atoms[f]):
            d0 = positions[base + j, 0] - positions[a, 0]
            d1 = positions[base + j, 1] - positions[a, 1]
            d2 = positions[base + j, 2] - positions[a, 2]
            lo0, hi0, lo1, hi1, lo2, hi2 = shift_ranges(d0, d1, d2, inverse_cells, reach, periodic, f)
            before = count
            for s0 in range(lo0, hi0 + 1):
                for s1 in range(lo1, hi1 + 1):
                    for s2 in range(lo2, hi2 + 1):
                        kept, r0, r1, r2 = accept_pair(i, j, s0, s1, s2, d0, d1, d2, cell, cutoff2, self_pairs)
                        if kept:
                            if write:
                                out_j[count] = j
                                out_shift[count, 0] = s0
                                out_shift[count, 1] = s1
                                out_shift[count, 2] = s2
                                out_r[count, 0] = r0
                                out_r[count, 1] = r1
                                out_r[count, 2] = r2
                            count += 1
            if len(species):
                tally[species[base + j]] += count - before
        return count
    # cell list: the (virtual, image-unrolled) bins within reach of the centre along every axis
    low = np.zeros(3, np.int64)
    high = np.zeros(3, np.int64)
    for k in range(3):
        if periodic[f, k]:
            low[k] = np.int64(np.floor((fractional[a, k] - reach[f, k]) * n_bins[f, k]))
            high[k] = np.int64(np.floor((fractional[a, k] + reach[f, k]) * n_bins[f, k]))
        else:
            low[k] = max(0, np.int64(np.floor((fractional[a, k] - origin[f, k] - reach[f, k]) / width[f, k])))
            high[k] = min(n_bins[f, k] - 1,
                          np.int64(np.floor((fractional[a, k] - origin[f, k] + reach[f, k]) / width[f, k])))
    nb0, nb1, nb2 = n_bins[f, 0], n_bins[f, 1], n_bins[f, 2]
    wa0, wa1, wa2 = wrap[a, 0], wrap[a, 1], wrap[a, 2]
    pa0, pa1, pa2 = positions[a, 0], positions[a, 1], positions[a, 2]
    w1 = 2 * half_widths[f, 1] + 1
    w2 = 2 * half_widths[f, 2] + 1
    w0 = 2 * half_widths[f, 0] + 1
    for v0 in range(low[0], high[0] + 1):
        t0 = v0 // nb0
        b0 = v0 - t0 * nb0
        for v1 in range(low[1], high[1] + 1):
            t1 = v1 // nb1
            b1 = v1 - t1 * nb1
            for v2 in range(low[2], high[2] + 1):
                t2 = v2 // nb2
                b2 = v2 - t2 * nb2
                b = bin_base[f] + (b0 * nb1 + b1) * nb2 + b2
                for q in range(bin_start[b], bin_start[b + 1]):  # the bin's atoms, stored contiguously
                    j = bin_atoms[q] - base
                    s0 = t0 - binned_wrap[q, 0] + wa0
                    s1 = t1 - binned_wrap[q, 1] + wa1
                    s2 = t2 - binned_wrap[q, 2] + wa2
                    d0 = binned_positions[q, 0] - pa0
                    d1 = binned_positions[q, 1] - pa1
                    d2 = binned_positions[q, 2] - pa2
                    kept, r0, r1, r2 = accept_pair(i, j, s0, s1, s2, d0, d1, d2, cell, cutoff2, self_pairs)
                    if kept:
                        if write:
                            out_j[count] = j
                            out_shift[count, 0] = s0
                            out_shift[count, 1] = s1
                            out_shift[count, 2] = s2
                            out_r[count, 0] = r0
                            out_r[count, 1] = r1
                            out_r[count, 2] = r2
                            keys[count] = ((j * w0 + s0 + half_widths[f, 0]) * w1 + s1 + half_widths[f, 1]) * w2 \
                                + s2 + half_widths[f, 2]
                        if len(species):
                            tally[species[bin_atoms[q]]] += 1
                        count += 1
    return count


@numba.njit(cache=True, inline="always")
def centre_pairs_in_order(a, geometry, out_j, out_shift, out_r, keys, order) -> int:
    """The neighbour pairs of centre ``a`` (global atom index) in upstream's (j, shift) order.

    Compiled (Numba), for compiled callers: the search's second pass and the
    fused grouping (``pipeline.grouping.neighbour_groups``).

    Parameters
    ----------
    a : int, global atom index of a centre of :attr:`PlannedSearch.centres`
    geometry : tuple, :attr:`PlannedSearch.geometry`
    out_j : (M,) int64, out_shift : (M, 3) int64, out_r : (M, 3) float64, keys : (M,) int64,
    order : (M,) int64
        Buffers of at least the centre's pair count (:meth:`PlannedSearch.count_pairs`).

    Returns
    -------
    m, the pair count: pair ``p`` (0 <= p < m) in upstream's order is buffer
    row ``order[p]``: its j (within the frame), cell shift and r_ij (angstrom).
    """
    m = centre_pairs(a, geometry, True, out_j, out_shift, out_r, keys, out_j[:0], out_j[:0])
    if geometry[4][geometry[1][a]] == BRUTE_FORCE:  # mode of the centre's frame: found in order
        for p in range(m):
            order[p] = p
    else:
        sorted_keys = np.argsort(keys[:m])
        for p in range(m):  # a loop, not a slice assignment: that would be a parfor nested in the callers' prange
            order[p] = sorted_keys[p]
    return m


@numba.njit(parallel=prange_only(), cache=True)
def _count_pairs(geometry, centres, block, species, by_species):
    """Pairs of each centre in ``centres`` (first pass), a parallel loop over blocks of ``block`` centres;
    per neighbour species in ``by_species[c]`` when ``species`` (per global atom) is not empty."""
    counts = np.zeros(len(centres), np.int64)
    no_j = np.zeros(0, np.int64)
    no_v = np.zeros((0, 3), np.int64)
    no_r = np.zeros((0, 3), np.float64)
    n_blocks = (len(centres) + block - 1) // block
    for blk in numba.prange(n_blocks):
        for c in range(blk * block, min(len(centres), (blk + 1) * block)):
            counts[c] = centre_pairs(centres[c], geometry, False, no_j, no_v, no_r, no_j, species, by_species[c])
    return counts


@numba.njit(parallel=prange_only(), cache=True)
def _write_pairs(geometry, centres, block, counts, offsets, out_frame, out_i, out_j, out_shift, out_r):
    """Second pass: each centre's pairs written at ``offsets[c]`` in (j, shift) order (a cell-list
    centre's few pairs sorted by their key), a parallel loop over blocks of centres."""
    owner, first_atom = geometry[1], geometry[2]
    n_blocks = (len(centres) + block - 1) // block
    for blk in numba.prange(n_blocks):
        first, last = blk * block, min(len(centres), (blk + 1) * block)
        size = 0
        for c in range(first, last):
            size = max(size, counts[c])
        bj = np.empty(size, np.int64)
        bs = np.empty((size, 3), np.int64)
        br = np.empty((size, 3), np.float64)
        keys = np.empty(size, np.int64)
        order = np.empty(size, np.int64)
        for c in range(first, last):
            a = centres[c]
            f = owner[a]
            m = centre_pairs_in_order(a, geometry, bj, bs, br, keys, order)
            o = offsets[c]
            i = a - first_atom[f]
            for p in range(m):
                q = order[p]
                out_frame[o + p] = f
                out_i[o + p] = i
                out_j[o + p] = bj[q]
                for k in range(3):
                    out_shift[o + p, k] = bs[q, k]
                    out_r[o + p, k] = br[q, k]


@numba.njit(cache=True)
def _bin_index(bin_of, n_bins_total):
    """(bin_start, bin_atoms): the atoms sorted by bin (a counting sort, stable) and each bin's first."""
    start = np.zeros(n_bins_total + 1, np.int64)
    for a in range(len(bin_of)):
        start[bin_of[a] + 1] += 1
    for b in range(n_bins_total):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    atoms = np.empty(len(bin_of), np.int64)
    for a in range(len(bin_of)):
        atoms[fill[bin_of[a]]] = a
        fill[bin_of[a]] += 1
    return start, atoms


@numba.njit(cache=True, inline="always")
def _cross_column(u, v, out, k):
    """``out[:, k] = u x v`` for rows ``u``, ``v`` of a 3x3 array."""
    out[0, k] = u[1] * v[2] - u[2] * v[1]
    out[1, k] = u[2] * v[0] - u[0] * v[2]
    out[2, k] = u[0] * v[1] - u[1] * v[0]


@numba.njit(cache=True, error_model="numpy")
def _frame_cells(cells, pbc, inverse_cells, heights):
    """:func:`_inverse_cells` of every frame, in one compiled loop (inverses, lattice-plane distances)."""
    cell = np.empty((3, 3))
    normals = np.empty((3, 3))
    for f in range(len(cells)):
        for k in range(3):
            flat = not pbc[f, k] or (cells[f, k, 0] == 0 and cells[f, k, 1] == 0 and cells[f, k, 2] == 0)
            for x in range(3):
                cell[k, x] = (1.0 if x == k else 0.0) if flat else cells[f, k, x]
        _cross_column(cell[1], cell[2], normals, 0)
        _cross_column(cell[2], cell[0], normals, 1)
        _cross_column(cell[0], cell[1], normals, 2)
        det = cell[0, 0] * normals[0, 0] + cell[0, 1] * normals[1, 0] + cell[0, 2] * normals[2, 0]
        for k in range(3):
            heights[f, k] = abs(det) / np.sqrt(normals[0, k] ** 2 + normals[1, k] ** 2 + normals[2, k] ** 2)
            for x in range(3):
                inverse_cells[f, x, k] = normals[x, k] / det


@numba.njit(cache=True, error_model="numpy", inline="always")
def _frame_estimate(positions, start, n, cell, pbc, heights, cutoff, self_pairs):
    """:func:`estimate_pairs` of one frame (same formulas, one compiled loop)."""
    if n == 0:
        return 0.0
    images = 1.0
    n_periodic = 0
    for k in range(3):
        if pbc[k]:
            n_periodic += 1
            images *= 2.0 * cutoff / heights[k]
            continue
        lo, hi = positions[start, k], positions[start, k]
        for a in range(start, start + n):
            lo = min(lo, positions[a, k])
            hi = max(hi, positions[a, k])
        extent = hi - lo
        images *= min(1.0, 2.0 * cutoff / extent) if extent > 0 else 1.0
    if n_periodic == 2:
        images *= math.pi / 4.0
    volume = abs(cell[0, 0] * (cell[1, 1] * cell[2, 2] - cell[1, 2] * cell[2, 1])
                 - cell[0, 1] * (cell[1, 0] * cell[2, 2] - cell[1, 2] * cell[2, 0])
                 + cell[0, 2] * (cell[1, 0] * cell[2, 1] - cell[1, 1] * cell[2, 0]))
    m = float(n)
    if n_periodic == 3 and volume > 0:
        estimate = m * m * (4.0 / 3.0 * math.pi * cutoff**3) / volume
    else:
        estimate = m * m * images
    if self_pairs:
        estimate += m
    return np.inf if estimate != estimate else estimate


@numba.njit(cache=True, error_model="numpy", inline="always")
def _wanted_bins(periodic, reach, spread):
    """Bins wanted along one axis: ``BIN_SPLIT / reach`` across the cell (periodic) or the atoms' spread."""
    w = np.floor(BIN_SPLIT / reach) if periodic else np.floor(BIN_SPLIT * spread / reach)
    if w != w:
        return 1.0
    return min(max(w, 1.0), 1e12)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _frame_bins(n, pbc, reach, spread, n_bins, width):
    """Cell-list bins of one frame (``n_bins``, ``width`` written) and the (brute force, cell list)
    candidate costs of the rule of :data:`BRUTE_FORCE_RATIO`."""
    w0, w1, w2 = _wanted_bins(pbc[0], reach[0], spread[0]), _wanted_bins(pbc[1], reach[1], spread[1]), \
        _wanted_bins(pbc[2], reach[2], spread[2])
    scale = min(1.0, (max(1.0, BINS_PER_ATOM * n) / (w0 * w1 * w2)) ** (1.0 / 3.0))
    brute = float(n) * float(n)
    visited = 1.0
    total_bins = 1.0
    for k in range(3):
        wanted = w0 if k == 0 else (w1 if k == 1 else w2)
        n_bins[k] = max(1, np.int64(np.floor(wanted * scale * (1 + 1e-12))))
        width[k] = 1.0 / n_bins[k] if pbc[k] else (spread[k] / n_bins[k] if spread[k] > 0 else 1.0)
        total_bins *= n_bins[k]
        if pbc[k]:
            brute *= 2.0 * reach[k] + 1.0
            visited *= 2.0 * reach[k] * n_bins[k] + 1.0
        else:
            visited *= min(float(n_bins[k]), 2.0 * reach[k] / width[k] + 1.0)
    return brute, n * visited * (1.0 + n / total_bins)


@numba.njit(cache=True, error_model="numpy")
def _plan_frames(positions, n_atoms, cells, pbc, cutoff, method, self_pairs):
    """Everything :func:`_plan` returns, and each frame's pair estimate, in one compiled pass
    over the frames (the per-frame NumPy work cost ~0.6 ms on 1,000 two-atom frames)."""
    n_frames, n_total = len(n_atoms), len(positions)
    inverse_cells, heights = np.empty((n_frames, 3, 3)), np.empty((n_frames, 3))
    _frame_cells(cells, pbc, inverse_cells, heights)
    reach = cutoff / heights * (1 + 1e-9) + 1e-9
    first_atom = np.empty(n_frames, np.int64)
    owner = np.empty(n_total, np.int64)
    fractional = np.empty((n_total, 3))
    low, spread = np.zeros((n_frames, 3)), np.zeros((n_frames, 3))
    n_bins, width = np.ones((n_frames, 3), np.int64), np.ones((n_frames, 3))
    mode, estimate = np.zeros(n_frames, np.int64), np.zeros(n_frames)
    start = 0
    for f in range(n_frames):
        n = n_atoms[f]
        first_atom[f] = start
        for a in range(start, start + n):
            owner[a] = f
            for k in range(3):
                fractional[a, k] = positions[a, 0] * inverse_cells[f, 0, k] + positions[a, 1] * inverse_cells[f, 1, k] \
                    + positions[a, 2] * inverse_cells[f, 2, k]
        estimate[f] = _frame_estimate(positions, start, n, cells[f], pbc[f], heights[f], cutoff, self_pairs)
        if n > 0:
            for k in range(3):
                lo, hi = fractional[start, k], fractional[start, k]
                for a in range(start, start + n):
                    lo = min(lo, fractional[a, k])
                    hi = max(hi, fractional[a, k])
                low[f, k] = lo
                spread[f, k] = hi - lo
            brute, cell_cost = _frame_bins(n, pbc[f], reach[f], spread[f], n_bins[f], width[f])
            if method == 0:
                mode[f] = BRUTE_FORCE if brute <= BRUTE_FORCE_RATIO * cell_cost else CELL_LIST
            else:
                mode[f] = method
        start += n
    return inverse_cells, heights, reach, first_atom, owner, fractional, low, spread, n_bins, width, mode, estimate


#: ``_plan_frames``'s codes of the ``method`` values (0: the rule).
_METHOD_CODES = {"auto": 0, "brute_force": BRUTE_FORCE, "cell_list": CELL_LIST}


def _plan(positions, n_atoms, cells, pbc, cutoff, method="auto", self_pairs=True):
    """Per frame: the path (0 empty, 1 brute force, 2 cell list), everything the kernels need,
    and each frame's pair estimate (``estimate``, :func:`estimate_pairs`' formulas), from
    one compiled pass over the frames (:func:`_plan_frames`)."""
    names = ("inverse_cells", "heights", "reach", "first_atom", "owner", "fractional", "low", "spread", "n_bins",
             "width", "mode", "estimate")
    planned = _plan_frames(positions, n_atoms, cells, pbc, float(cutoff), _METHOD_CODES[method], bool(self_pairs))
    return dict(zip(names, planned))


@dataclass
class PlannedSearch:
    """A compiled neighbour search planned for some frames (:func:`plan_search`), ready to run.

    Attributes
    ----------
    n_atoms : (F,) int64
    first_atom : (F,) int64, global index of each frame's first atom
    mode : (F,) int64, each frame's path (:data:`PATH_NAMES`; 0: not searched)
    centres : (C,) int64, the global atoms searched, in order (every atom of the searched frames)
    geometry : tuple
        The compiled search's arguments (positions, per-frame plan, bins,
        cutoff squared, self pairs), as :func:`centre_pairs_in_order` takes them.
    estimate : (F,) float64
        Each frame's pair estimate (:func:`estimate_pairs`' formulas), for
        callers that size buffers before counting.
    """

    n_atoms: np.ndarray
    first_atom: np.ndarray
    mode: np.ndarray
    centres: np.ndarray
    geometry: tuple
    estimate: np.ndarray

    def count_pairs(self, species=None, n_species: int = 0):
        """(C,) int64: the pairs of each centre (the search's first pass, parallel over centres).

        With ``species`` ((N,) int64, each atom's species index, 0 <= index < ``n_species``):
        (counts, (C, n_species) int64 pairs of each centre with each neighbour species)."""
        by_species = np.zeros((len(self.centres), n_species if species is not None else 0), np.int64)
        with parallel_guard():
            counts = _count_pairs(self.geometry, self.centres, CENTRES_PER_BLOCK,
                                  np.zeros(0, np.int64) if species is None else species, by_species)
        return counts if species is None else (counts, by_species)

    def write_pairs(self, counts):
        """The pairs of every centre, ``counts`` (:meth:`count_pairs`) at a time: frame, i, j, shift,
        r_ij as :func:`neighbour_pairs` returns them (the second pass)."""
        offsets = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        total = int(offsets[-1] + counts[-1]) if len(counts) else 0
        out = (np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.int64),
               np.empty((total, 3), np.int64), np.empty((total, 3), np.float64))
        with parallel_guard():
            _write_pairs(self.geometry, self.centres, CENTRES_PER_BLOCK, counts, offsets, *out)
        return out


def _cell_list_bins(positions, n_atoms, pbc, plan, listed, n_bins, origin):
    """The cell list of the frames in ``listed``: (wrapped fractional coordinates, wrap, bin_base,
    bin_start, bin_atoms, binned positions, binned wrap, half widths of the shift keys)."""
    owner, fractional = plan["owner"], plan["fractional"]
    counts = np.where(listed, n_bins.prod(axis=1), 0)
    bin_base = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    mine = listed[owner]
    f = owner[mine]
    periodic = pbc[f]
    frac = fractional[mine]
    w = np.where(periodic, np.floor(frac), 0.0)
    wrap = np.zeros((len(positions), 3), np.int64)
    wrapped = fractional.copy()
    wrapped[mine] = frac - w
    wrap[mine] = w.astype(np.int64)
    coord = np.where(periodic, wrapped[mine] * n_bins[f], (frac - origin[f]) / plan["width"][f])
    coord = np.clip(np.floor(coord), 0, n_bins[f] - 1).astype(np.int64)
    bins = bin_base[f] + (coord[:, 0] * n_bins[f, 1] + coord[:, 1]) * n_bins[f, 2] + coord[:, 2]
    bin_of = np.full(len(positions), int(counts.sum()), np.int64)  # atoms of other frames: a bin nobody visits
    bin_of[mine] = bins
    bin_start, bin_atoms = _bin_index(bin_of, int(counts.sum()) + 1)
    bound = np.ceil(plan["reach"] + plan["spread"]).astype(np.int64) + 1
    half_widths = np.where(pbc & listed[:, None], bound, 0).astype(np.int64)
    key_range = n_atoms.astype(np.float64) * (2 * half_widths + 1).prod(axis=1)
    if np.any(key_range[listed] >= 2.0**62):
        f = int(np.argmax(np.where(listed, key_range, 0)))
        raise ValueError(f"frame {f}: {n_atoms[f]} atoms x {(2 * half_widths[f] + 1).tolist()} cell shifts "
                         "overflow the int64 sort key of the cell list; use a smaller cutoff")
    # positions and wraps contiguous per bin
    return wrapped, wrap, bin_base, bin_start, bin_atoms, positions[bin_atoms], wrap[bin_atoms], half_widths


def _planned(positions, n_atoms, cells, pbc, cutoff, self_pairs, plan, frames_mask=None) -> PlannedSearch:
    """The :class:`PlannedSearch` of the frames in ``frames_mask`` (None: every frame with atoms)."""
    mode = plan["mode"] if frames_mask is None else np.where(frames_mask, plan["mode"], 0).astype(np.int64)
    owner, n_frames = plan["owner"], len(n_atoms)
    listed = mode == CELL_LIST
    origin = np.where(pbc, 0.0, plan["low"])
    if listed.any():
        n_bins = np.where(listed[:, None], plan["n_bins"], 1).astype(np.int64)
        binned = _cell_list_bins(positions, n_atoms, pbc, plan, listed, n_bins, origin)
        centres = np.flatnonzero(mode[owner] > 0).astype(np.int64)
    else:  # brute force only: no bins
        n_bins = np.ones((n_frames, 3), np.int64)
        binned = (plan["fractional"], np.zeros((len(positions), 3), np.int64), np.zeros(n_frames, np.int64),
                  np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.int64),
                  np.zeros((n_frames, 3), np.int64))
        centres = np.arange(len(positions), dtype=np.int64) if frames_mask is None else \
            np.flatnonzero(mode[owner] > 0).astype(np.int64)
    wrapped, wrap, bin_base, bin_start, bin_atoms, binned_positions, binned_wrap, half_widths = binned
    geometry = (positions, owner, plan["first_atom"], n_atoms, mode, cells, plan["inverse_cells"], plan["reach"],
                pbc, wrapped, wrap, origin, plan["width"], n_bins, bin_base, bin_start, bin_atoms,
                binned_positions, binned_wrap, half_widths, float(cutoff) ** 2, bool(self_pairs))
    return PlannedSearch(n_atoms=n_atoms, first_atom=plan["first_atom"], mode=mode, centres=centres,
                         geometry=geometry, estimate=plan["estimate"])


def _pair_sort_key(frame, i, j, shift, n_max: int, half_widths) -> np.ndarray:
    """One int64 per pair ordering pairs by (frame, i, j, shift): one argsort
    instead of a five-key lexsort (3x faster)."""
    widths = 2 * np.asarray(half_widths, dtype=np.int64) + 1
    code = ((shift[:, 0] + half_widths[0]) * widths[1] + shift[:, 1] + half_widths[1]) * widths[2] \
        + shift[:, 2] + half_widths[2]
    return ((frame * n_max + i) * n_max + j) * int(widths.prod()) + code


def _vesin_frame(positions, cell, pbc, cutoff, self_pairs):
    import vesin

    n = len(positions)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    periodic = bool(pbc[0]) if np.all(pbc == pbc[0]) else pbc.tolist()
    box = cell if np.any(pbc) else np.zeros((3, 3))
    i, j, shift, r_ij = calculator.compute(positions, box, periodic, quantities="ijSD")
    i, j = i.astype(np.int64), j.astype(np.int64)
    shift, r_ij = shift.astype(np.int64).reshape(-1, 3), np.asarray(r_ij, np.float64).reshape(-1, 3)
    if self_pairs:
        atoms = np.arange(n, dtype=np.int64)
        i, j = np.concatenate([i, atoms]), np.concatenate([j, atoms])
        shift = np.concatenate([shift, np.zeros((n, 3), np.int64)])
        r_ij = np.concatenate([r_ij, np.zeros((n, 3))])
    half_widths = np.abs(shift).max(axis=0) if len(shift) else np.zeros(3, np.int64)
    order = np.argsort(_pair_sort_key(0, i, j, shift, n, half_widths))
    return i[order], j[order], shift[order], r_ij[order]


#: Values of ``neighbour_pairs(method=...)``.
METHODS = ("auto", "brute_force", "cell_list", "vesin")


@numba.njit(cache=True)
def _first_degenerate(cells, pbc, n_atoms) -> int:
    """The first frame with atoms that is periodic along a zero lattice vector (norm 0), or -1."""
    for f in range(len(cells)):
        for k in range(3):
            if n_atoms[f] > 0 and pbc[f, k] and cells[f, k, 0] ** 2 + cells[f, k, 1] ** 2 + cells[f, k, 2] ** 2 == 0:
                return f
    return -1


@numba.njit(cache=True)
def _geometry_problem(positions, n_atoms, cells, pbc):
    """The first problem of checked-shape inputs, as (code, index): (0, -1) none; (1, frame) a
    negative atom count; (2, sum) counts that do not add up to the positions; (3, atom) a
    non-finite position; (4, frame) a periodic zero lattice vector. One compiled pass: the
    NumPy checks cost ~25 us a call."""
    total = 0
    for f in range(len(n_atoms)):
        if n_atoms[f] < 0:
            return 1, f
        total += n_atoms[f]
    if total != len(positions):
        return 2, total
    a = first_non_finite_row(positions)
    if a >= 0:
        return 3, a
    f = _first_degenerate(cells, pbc, n_atoms)
    return (4, f) if f >= 0 else (0, -1)


def _checked(positions, n_atoms, cells, pbc, cutoff):
    """The inputs as arrays (positions (N, 3) float64, n_atoms (F,) int64, cells (F, 3, 3),
    pbc (F, 3) bool), else TypeError / ValueError naming the offending value."""
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number, got {cutoff!r}")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a finite number > 0, got {cutoff!r}")
    n_atoms = np.ascontiguousarray(n_atoms, dtype=np.int64).reshape(-1)
    cells = np.ascontiguousarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.ascontiguousarray(pbc, dtype=bool).reshape(-1, 3)
    positions = np.ascontiguousarray(np.asarray(positions, dtype=np.float64).reshape(-1, 3))
    if len(cells) != len(n_atoms) or len(pbc) != len(n_atoms):  # a negative count is still named first
        code, index = (1, int(np.argmax(n_atoms < 0))) if np.any(n_atoms < 0) else (5, -1)
    else:
        code, index = _geometry_problem(positions, n_atoms, cells, pbc)
    if code == 1:
        raise ValueError(f"n_atoms must be >= 0, got {n_atoms[index]} (frame {index})")
    if code == 5:
        raise ValueError(f"{len(n_atoms)} frames in n_atoms but {len(cells)} cells and {len(pbc)} pbc rows")
    if code == 2:
        raise ValueError(f"sum(n_atoms) = {index} but {len(positions)} positions")
    if code == 3:
        raise ValueError(f"positions must be finite, got {positions[index].tolist()}")
    if code == 4:
        raise ValueError(f"frame {index} is periodic along {pbc[index].tolist()} but its cell is {cells[index].tolist()}")
    return positions, n_atoms, cells, pbc


def _refuse_beyond(estimate, positions, n_atoms, cells, pbc, cutoff, self_pairs, max_pairs) -> None:
    """:func:`check_pair_estimate`'s refusal, from the planning pass's estimate (``estimate``, (F,)):
    NumPy's estimate is computed, and decides, only when the total is near or beyond the limit."""
    limit = MAX_PAIRS if max_pairs is None else max_pairs
    if isinstance(limit, bool) or not isinstance(limit, numbers.Real):
        raise TypeError(f"max_pairs must be a number, got {limit!r}")
    if not limit >= 0:
        raise ValueError(f"max_pairs must be >= 0, got {limit!r}")
    if not float(estimate.sum()) <= 0.999 * limit:  # also NaN
        check_pair_estimate(positions, n_atoms, cells, pbc, cutoff, self_pairs=self_pairs, max_pairs=limit)


def plan_search(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True, method: str = "auto",
                max_pairs: int | None = None) -> PlannedSearch:
    """The compiled search of :func:`neighbour_pairs`, checked and planned but not run.

    For callers that consume the pairs centre by centre in compiled code
    (``pipeline.grouping.neighbour_groups``): :meth:`PlannedSearch.count_pairs`
    is the first pass, :func:`centre_pairs_in_order` gives one centre's pairs.

    Parameters
    ----------
    positions, n_atoms, cells, pbc, cutoff, self_pairs, max_pairs : as :func:`neighbour_pairs`
    method : {"auto", "brute_force", "cell_list"}

    Returns
    -------
    PlannedSearch of every frame.

    Raises
    ------
    TypeError, ValueError
        as :func:`neighbour_pairs` (``method="vesin"`` is a ValueError here).
    """
    positions, n_atoms, cells, pbc = _checked(positions, n_atoms, cells, pbc, cutoff)
    if method not in _METHOD_CODES:
        raise ValueError(f"method must be one of {tuple(_METHOD_CODES)}, got {method!r}")
    plan = _plan(positions, n_atoms, cells, pbc, float(cutoff), method, self_pairs)
    _refuse_beyond(plan["estimate"], positions, n_atoms, cells, pbc, float(cutoff), self_pairs, max_pairs)
    return _planned(positions, n_atoms, cells, pbc, float(cutoff), self_pairs, plan)


def neighbour_paths(positions, n_atoms, cells, pbc, cutoff: float, *, method: str = "auto") -> dict[str, int]:
    """Frames per search path that :func:`neighbour_pairs` takes for these frames (no search runs).

    Parameters as :func:`neighbour_pairs`. Costs the search's O(atoms)
    planning pass (compiled), no search.

    Returns
    -------
    dict path name -> number of frames, only paths with at least one frame:
    ``"brute_force"``, ``"cell_list"``, ``"vesin"`` (``method="vesin"``),
    ``"empty"`` (frames without atoms), e.g. ``{"cell_list": 10}``.

    Raises
    ------
    as :func:`neighbour_pairs` (not the ``max_pairs`` refusal).
    """
    positions, n_atoms, cells, pbc = _checked(positions, n_atoms, cells, pbc, cutoff)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    empty = int((n_atoms == 0).sum())
    paths = {}
    if method == "vesin":
        paths["vesin"] = len(n_atoms) - empty
    else:
        mode = _plan(positions, n_atoms, cells, pbc, float(cutoff), method)["mode"]
        for code, name in PATH_NAMES.items():
            paths[name] = int((mode == code).sum())
    paths["empty"] = empty
    return {name: count for name, count in paths.items() if count}


def neighbour_pairs(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True,
                    method: str = "auto", small_frame_candidates: int | None = None, max_pairs: int | None = None):
    """Full neighbour lists of every frame, in one call.

    Parameters
    ----------
    positions : (N, 3) float64, angstrom
        Every frame's atoms, frame after frame (need not be wrapped into the cell).
    n_atoms : (F,) int
        Atoms per frame (``sum(n_atoms) == N``; 0 allowed).
    cells : (F, 3, 3) float64, angstrom
        Lattice vectors (rows) of each frame.
    pbc : (F, 3) bool
        Periodicity of each frame; a periodic axis needs a non-zero lattice vector.
    cutoff : float, angstrom, > 0
        Pairs with ``|r_ij| < cutoff``.
    self_pairs : bool
        Add (i, i, shift 0, r = 0) for every atom.
    method : {"auto", "brute_force", "cell_list", "vesin"}
        ``auto``: each frame by the rule of the module docstring (brute force
        or cell list); the others force one path on every frame (``vesin``:
        one vesin call per frame and a sort, kept as the oracle of the tests).
        Every method gives the same pairs in the same order.
    small_frame_candidates : int or None
        Deprecated (DeprecationWarning): the old split, frames with at most
        this many candidate (i, j, shift) triples (over the whole shift box,
        :func:`image_ranges`) by brute force, the others by vesin. Use ``method``.
    max_pairs : int or None
        Refuse (before allocating) when :func:`estimate_pairs` expects more
        pairs than this in all frames together (None: :data:`MAX_PAIRS`).

    Returns
    -------
    frame, i, j : (P,) int64 (atom indices within the frame);
    shift : (P, 3) int64 cell shifts; r_ij : (P, 3) float64, angstrom,
    ``pos[j] + shift @ cell - pos[i]``. Sorted by (frame, i, j, shift), the
    shift compared component by component; ``|r_ij| < cutoff``.

    Raises
    ------
    TypeError
        a cutoff that is not a real number.
    ValueError
        a non-finite or non-positive cutoff; n_atoms negative or not matching
        the positions, cells or pbc; non-finite positions; a periodic axis
        with a zero lattice vector (frame named); an unknown method; more
        pairs expected than ``max_pairs`` (:func:`check_pair_estimate`: the
        estimate and the frame named).
    """
    positions, n_atoms, cells, pbc = _checked(positions, n_atoms, cells, pbc, cutoff)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cutoff = float(cutoff)
    filled = n_atoms > 0
    planned = "brute_force" if small_frame_candidates is not None or method == "vesin" else method
    plan = _plan(positions, n_atoms, cells, pbc, cutoff, planned, self_pairs)  # the estimate too, before allocating
    _refuse_beyond(plan["estimate"], positions, n_atoms, cells, pbc, cutoff, self_pairs, max_pairs)
    if small_frame_candidates is not None:
        warnings.warn("neighbour_pairs(small_frame_candidates=...) is deprecated: the cell list serves every "
                      "frame size; pass method='brute_force', 'cell_list' or 'vesin' to force a path",
                      DeprecationWarning, stacklevel=2)
        ranges = image_ranges(positions, n_atoms, cells, pbc, cutoff)
        candidates = n_atoms * n_atoms * (2 * ranges + 1).prod(axis=1)
        compiled = (candidates <= small_frame_candidates) & filled
    elif method == "vesin":
        compiled = np.zeros(len(n_atoms), bool)
    else:
        compiled = filled
    parts = []
    if compiled.any():
        search = _planned(positions, n_atoms, cells, pbc, cutoff, self_pairs, plan,
                          None if compiled is filled else compiled)
        parts.append(search.write_pairs(search.count_pairs()))
    first_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    for f in np.flatnonzero(~compiled & filled):
        atoms = slice(first_atom[f], first_atom[f] + n_atoms[f])
        i, j, shift, r_ij = _vesin_frame(positions[atoms], cells[f], pbc[f], cutoff, self_pairs)
        parts.append((np.full(len(i), f, dtype=np.int64), i, j, shift, r_ij))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy(), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    if len(parts) == 1:
        return parts[0]
    frame, i, j, shift, r_ij = (np.concatenate(column) for column in zip(*parts))
    if np.any(frame[1:] < frame[:-1]):
        order = np.argsort(frame, kind="stable")  # each part is sorted within its frames (deprecated split only)
        frame, i, j, shift, r_ij = frame[order], i[order], j[order], shift[order], r_ij[order]
    return frame, i, j, shift, r_ij

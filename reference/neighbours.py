"""Full neighbour lists of many frames at once.

One call for all frames. Frames are split by size:

- **small frames** (few atoms times few periodic images, e.g. the 1 to 3
  coarse-grained ellipsoids of AniSOAP's ``ellipsoids.xyz``): every candidate
  (i, j, cell shift) of every such frame is enumerated in one vectorised
  NumPy pass and kept where ``|r_ij| < cutoff``. vesin has no multi-system
  call and costs 24 to 50 microseconds per call here, which for 1,000 tiny
  frames is more than the whole AniSOAP transform should take;
- **other frames** go to vesin, one call each (its fixed cost is then small
  against the pairs it finds).

Both give the same set of pairs as featomic's ``NeighborList`` (which AniSOAP
uses): full list (i -> j and j -> i), every periodic image within the cutoff,
self pairs (i, i, shift 0, r = 0) only when asked. Output is sorted by
(frame, i, j, shift), the order of featomic's samples within a block.
"""

from __future__ import annotations

import numpy as np

#: Frames with at most this many candidate (i, j, shift) triples take the
#: vectorised path; above it one vesin call per frame is cheaper.
SMALL_FRAME_CANDIDATES = 4096
#: Candidates enumerated at a time (bounds the scratch memory to ~200 MB).
CANDIDATE_CHUNK = 1 << 20


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
    cell = cells.copy()
    # a non-periodic axis never shifts; a unit vector there keeps the cell invertible
    flat = ~pbc | (np.linalg.norm(cells, axis=2) == 0)
    cell[flat] = np.eye(3)[np.nonzero(flat)[1]]
    volume = np.abs(np.linalg.det(cell))
    heights = np.stack([volume / np.linalg.norm(np.cross(cell[:, (k + 1) % 3], cell[:, (k + 2) % 3]), axis=1)
                        for k in range(3)], axis=1)
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
    fractional = np.einsum("pk,pkj->pj", positions, np.linalg.inv(cell)[owner])
    filled = n_atoms > 0
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])[filled]  # non-empty frames tile the atoms
    spread = np.zeros((len(n_atoms), 3))
    spread[filled] = np.maximum.reduceat(fractional, starts) - np.minimum.reduceat(fractional, starts)
    ranges[:] = np.where(pbc & filled[:, None], np.ceil(cutoff / heights + spread), 0)
    return ranges
    cell = cells[periodic].copy()
    # a non-periodic axis never shifts; a unit vector keeps the cell invertible
    flat = ~pbc[periodic]
    cell[flat] = np.eye(3)[np.nonzero(flat)[1]]
    volume = np.abs(np.linalg.det(cell))
    heights = np.stack([volume / np.linalg.norm(np.cross(cell[:, (k + 1) % 3], cell[:, (k + 2) % 3]), axis=1)
                        for k in range(3)], axis=1)
    first_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])[periodic]
    owner = np.repeat(np.arange(len(periodic)), n_atoms[periodic])
    atoms = np.concatenate([np.arange(a, a + n) for a, n in zip(first_atom, n_atoms[periodic])])
    fractional = np.einsum("pk,pkj->pj", positions[atoms], np.linalg.inv(cell)[owner])
    starts = np.concatenate([[0], np.cumsum(n_atoms[periodic])[:-1]])
    spread = np.maximum.reduceat(fractional, starts) - np.minimum.reduceat(fractional, starts)
    ranges[periodic] = np.where(pbc[periodic], np.ceil(cutoff / heights + spread), 0).astype(np.int64)
    return ranges


def _ragged_arange(counts):
    """For counts (K,): the owner k and the index 0..counts[k]-1 of every element."""
    owner = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, local


def _extents(positions, first_atom, n_atoms) -> np.ndarray:
    """(F,) largest distance between two atoms' bounding-box corners, per frame."""
    extent = np.zeros(len(n_atoms))
    filled = n_atoms > 0
    if filled.any():
        starts = first_atom[filled]  # non-empty frames tile the atoms, so reduceat is per frame
        extent[filled] = np.linalg.norm(np.maximum.reduceat(positions, starts)
                                        - np.minimum.reduceat(positions, starts), axis=1)
    return extent


def _shift_grid(half_widths) -> np.ndarray:
    """(K, 3) int64: every shift S with |S_k| <= half_widths[k], lexicographic."""
    axes = [np.arange(-h, h + 1) for h in half_widths]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _small_frames(positions, first_atom, n_atoms, cells, ranges, frames, cutoff, self_pairs):
    """Vectorised search over the candidate (i, j, shift) of ``frames``.

    Frames are grouped by their shift box. For each group, the cell shifts S
    whose translation ``S @ cell`` can reach a neighbour (``|S @ cell| <
    cutoff + extent``, extent the diagonal of the frame's bounding box) are
    kept, then every (i, j) is tried for each of them; pairs with
    ``|r_ij| < cutoff`` are returned sorted by (frame, i, j, shift).
    """
    reach = cutoff + _extents(positions, first_atom, n_atoms)
    boxes, group = np.unique(ranges[frames], axis=0, return_inverse=True)
    frame_parts, shift_parts, translation_parts = [], [], []
    for g, box in enumerate(boxes):
        members = frames[group.reshape(-1) == g]
        grid = _shift_grid(box)
        translation = np.matmul(grid.astype(np.float64), cells[members])  # (F_g, K, 3)
        useful = np.einsum("fkj,fkj->fk", translation, translation) < reach[members, None] ** 2
        f_index, k_index = np.nonzero(useful)
        frame_parts.append(members[f_index])
        shift_parts.append(grid[k_index])
        translation_parts.append(translation[f_index, k_index])
    owner = np.concatenate(frame_parts)
    shift = np.concatenate(shift_parts)
    translation = np.concatenate(translation_parts)
    # every (i, j) of the frame for each useful shift
    n = n_atoms[owner]
    which, local = _ragged_arange(n * n)
    frame_n = n[which]
    i = local // frame_n
    j = local - i * frame_n
    base = first_atom[owner][which]
    r_ij = positions[base + j] - positions[base + i] + translation[which]
    keep = np.einsum("pk,pk->p", r_ij, r_ij) < cutoff * cutoff  # a self pair has r = 0 exactly
    shift = shift[which]
    if not self_pairs:
        keep &= (i != j) | shift.any(axis=1)
    frame = owner[which][keep]
    i, j, shift, r_ij = i[keep], j[keep], shift[keep], r_ij[keep]
    order = np.argsort(_pair_sort_key(frame, i, j, shift, int(n_atoms[frames].max()), ranges[frames].max(axis=0)))
    return frame[order], i[order], j[order], shift[order], r_ij[order]


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


def neighbour_pairs(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True,
                    small_frame_candidates: int = SMALL_FRAME_CANDIDATES):
    """Full neighbour lists of every frame, in one call.

    Parameters
    ----------
    positions : (N, 3) float64, angstrom
        Every frame's atoms, frame after frame.
    n_atoms : (F,) int
        Atoms per frame (``sum(n_atoms) == N``).
    cells : (F, 3, 3) float64, angstrom
        Lattice vectors (rows) of each frame.
    pbc : (F, 3) bool
        Periodicity of each frame; a periodic axis needs a non-zero lattice vector.
    cutoff : float, angstrom, > 0
        Pairs with ``|r_ij| < cutoff``.
    self_pairs : bool
        Add (i, i, shift 0, r = 0) for every atom.
    small_frame_candidates : int
        Frames with at most this many candidate (i, j, shift) triples take
        the vectorised path, the others vesin.

    Returns
    -------
    frame, i, j : (P,) int64 (atom indices within the frame);
    shift : (P, 3) int64 cell shifts; r_ij : (P, 3) float64,
    ``pos[j] + shift @ cell - pos[i]``. Sorted by (frame, i, j, shift).

    Raises
    ------
    ValueError
        a periodic axis with a zero lattice vector (frame named).
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    first_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    degenerate = (pbc & (np.linalg.norm(cells, axis=2) == 0)).any(axis=1) & (n_atoms > 0)
    if degenerate.any():
        f = int(np.argmax(degenerate))
        raise ValueError(f"frame {f} is periodic along {pbc[f].tolist()} but its cell is {cells[f].tolist()}")
    ranges = image_ranges(positions, n_atoms, cells, pbc, cutoff)
    candidates = n_atoms * n_atoms * (2 * ranges + 1).prod(axis=1)
    small = (candidates <= small_frame_candidates) & (n_atoms > 0)
    parts = []
    small_frames = np.flatnonzero(small)
    chunk_ends = np.searchsorted(np.cumsum(candidates[small_frames]),
                                 np.arange(CANDIDATE_CHUNK, candidates[small_frames].sum() + CANDIDATE_CHUNK,
                                           CANDIDATE_CHUNK), side="right")
    start = 0
    for end in chunk_ends:
        end = max(int(end), start + 1)
        if start < len(small_frames):
            parts.append(_small_frames(positions, first_atom, n_atoms, cells, ranges,
                                       small_frames[start:end], cutoff, self_pairs))
        start = end
    for f in np.flatnonzero(~small & (n_atoms > 0)):
        atoms = slice(first_atom[f], first_atom[f] + n_atoms[f])
        i, j, shift, r_ij = _vesin_frame(positions[atoms], cells[f], pbc[f], cutoff, self_pairs)
        parts.append((np.full(len(i), f, dtype=np.int64), i, j, shift, r_ij))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros((0, 3), np.int64), np.zeros((0, 3))
    frame, i, j, shift, r_ij = (np.concatenate(column) for column in zip(*parts))
    if len(parts) > 1 and np.any(frame[1:] < frame[:-1]):
        order = np.argsort(frame, kind="stable")  # each part is sorted within its frames
        frame, i, j, shift, r_ij = frame[order], i[order], j[order], shift[order], r_ij[order]
    return frame, i, j, shift, r_ij

"""Full neighbour lists of many frames at once.

One call for all frames. Frames are split by size:

- **small frames** (few atoms times few periodic images, e.g. the 1 to 3
  coarse-grained ellipsoids of AniSOAP's ``ellipsoids.xyz``): every candidate
  (i, j, cell shift) of every such frame is tried in one compiled (Numba)
  loop over all of them and kept where ``|r_ij| < cutoff``. vesin has no
  multi-system call and costs 24 to 50 microseconds per call here, which for
  1,000 tiny frames is more than the whole AniSOAP transform should take;
  the loop takes about 1 microsecond per such frame;
- **other frames** go to vesin, one call each (its fixed cost is then small
  against the pairs it finds).

Both give the same set of pairs as featomic's ``NeighborList`` (which AniSOAP
uses): full list (i -> j and j -> i), every periodic image within the cutoff,
self pairs (i, i, shift 0, r = 0) only when asked. Output is sorted by
(frame, i, j, shift), the order of featomic's samples within a block.

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

import numba
import numpy as np

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

#: Frames with at most this many candidate (i, j, shift) triples (counted over
#: the whole shift box, see :func:`image_ranges`) take the compiled path; above
#: it one vesin call per frame is cheaper. Measured here (Xeon, AVX-512): at
#: 38,000 candidates (a 12-atom benzene cell, cutoff 7) the compiled path took
#: 3 ms for 16 frames against vesin's 7; it grows with atoms squared, vesin
#: linearly.
SMALL_FRAME_CANDIDATES = 65536


def _inverse_cells(cells, pbc):
    """(F, 3, 3) inverses of the cells and (F, 3) distances between lattice
    planes; along a non-periodic axis a unit vector stands in for the cell
    vector (it never shifts), which keeps every cell invertible."""
    cell = cells.copy()
    flat = ~pbc | (np.linalg.norm(cells, axis=2) == 0)
    cell[flat] = np.eye(3)[np.nonzero(flat)[1]]
    volume = np.abs(np.linalg.det(cell))
    heights = np.stack([volume / np.linalg.norm(np.cross(cell[:, (k + 1) % 3], cell[:, (k + 2) % 3]), axis=1)
                        for k in range(3)], axis=1)
    return np.linalg.inv(cell), heights


def estimate_pairs(positions, n_atoms, cells, pbc, cutoff: float, *, self_pairs: bool = True) -> np.ndarray:
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
    neighbours).

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
                        max_pairs: int = MAX_PAIRS) -> float:
    """Refuse a neighbour list estimated (:func:`estimate_pairs`) above ``max_pairs`` pairs.

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
    estimate = estimate_pairs(positions, n_atoms, cells, pbc, cutoff, self_pairs=self_pairs)
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


@numba.njit(cache=True)
def _small_frames_kernel(positions, first_atom, n_atoms, cells, inverse_cells, reach, frames, cutoff,
                         self_pairs, out_frame, out_i, out_j, out_shift, out_r):
    """Every (i, j, shift) of ``frames`` within the cutoff, in (frame, i, j, shift)
    order; writes them when the outputs are large enough and returns the count.

    For each (i, j) only the shifts S whose fractional separation
    ``f_j - f_i + S`` is within ``reach_k = cutoff / h_k`` along every axis
    are tried (a pair beyond that is beyond the cutoff).
    """
    count = 0
    capacity = out_frame.shape[0]
    cutoff2 = cutoff * cutoff
    low = np.zeros(3, np.int64)
    high = np.zeros(3, np.int64)
    for f in frames:
        base = first_atom[f]
        n = n_atoms[f]
        for i in range(n):
            for j in range(n):
                d0 = positions[base + j, 0] - positions[base + i, 0]
                d1 = positions[base + j, 1] - positions[base + i, 1]
                d2 = positions[base + j, 2] - positions[base + i, 2]
                for k in range(3):
                    if reach[f, k] < 0.0:  # not periodic along k
                        low[k] = 0
                        high[k] = 0
                        continue
                    fractional = d0 * inverse_cells[f, 0, k] + d1 * inverse_cells[f, 1, k] + d2 * inverse_cells[f, 2, k]
                    low[k] = np.int64(np.ceil(-fractional - reach[f, k]))
                    high[k] = np.int64(np.floor(-fractional + reach[f, k]))
                for s0 in range(low[0], high[0] + 1):
                    for s1 in range(low[1], high[1] + 1):
                        for s2 in range(low[2], high[2] + 1):
                            if i == j and s0 == 0 and s1 == 0 and s2 == 0:
                                if not self_pairs:
                                    continue
                                r0 = r1 = r2 = 0.0
                            else:
                                r0 = d0 + s0 * cells[f, 0, 0] + s1 * cells[f, 1, 0] + s2 * cells[f, 2, 0]
                                r1 = d1 + s0 * cells[f, 0, 1] + s1 * cells[f, 1, 1] + s2 * cells[f, 2, 1]
                                r2 = d2 + s0 * cells[f, 0, 2] + s1 * cells[f, 1, 2] + s2 * cells[f, 2, 2]
                                if r0 * r0 + r1 * r1 + r2 * r2 >= cutoff2:
                                    continue
                            if count < capacity:
                                out_frame[count] = f
                                out_i[count] = i
                                out_j[count] = j
                                out_shift[count, 0] = s0
                                out_shift[count, 1] = s1
                                out_shift[count, 2] = s2
                                out_r[count, 0] = r0
                                out_r[count, 1] = r1
                                out_r[count, 2] = r2
                            count += 1
    return count


def _small_frames(positions, first_atom, n_atoms, cells, pbc, frames, cutoff, self_pairs):
    """Compiled search over the candidate (i, j, shift) of ``frames``: a
    first pass counts, a second writes (no per-frame Python work)."""
    inverse_cells, heights = _inverse_cells(cells, pbc)
    # a little slack: a shift the rounding would exclude is tried, and the distance test decides
    reach = np.where(pbc, cutoff / heights * (1 + 1e-9) + 1e-9, -1.0)

    def run(capacity):
        out = (np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.int64),
               np.empty((capacity, 3), np.int64), np.empty((capacity, 3), np.float64))
        count = _small_frames_kernel(positions, first_atom, n_atoms, cells, inverse_cells, reach, frames,
                                     float(cutoff), bool(self_pairs), *out)
        return count, out

    count, _ = run(0)
    _, out = run(count)
    return out


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
                    small_frame_candidates: int = SMALL_FRAME_CANDIDATES, max_pairs: int | None = None):
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
    max_pairs : int or None
        Refuse (before allocating) when :func:`estimate_pairs` expects more
        pairs than this in all frames together (None: :data:`MAX_PAIRS`).

    Returns
    -------
    frame, i, j : (P,) int64 (atom indices within the frame);
    shift : (P, 3) int64 cell shifts; r_ij : (P, 3) float64,
    ``pos[j] + shift @ cell - pos[i]``. Sorted by (frame, i, j, shift).

    Raises
    ------
    TypeError
        a cutoff that is not a real number.
    ValueError
        a non-finite or non-positive cutoff; a periodic axis with a zero
        lattice vector (frame named); more pairs expected than ``max_pairs``
        (:func:`check_pair_estimate`: the estimate and the frame named).
    """
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number, got {cutoff!r}")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a finite number > 0, got {cutoff!r}")
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    first_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    degenerate = (pbc & (np.linalg.norm(cells, axis=2) == 0)).any(axis=1) & (n_atoms > 0)
    if degenerate.any():
        f = int(np.argmax(degenerate))
        raise ValueError(f"frame {f} is periodic along {pbc[f].tolist()} but its cell is {cells[f].tolist()}")
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    check_pair_estimate(positions, n_atoms, cells, pbc, cutoff, self_pairs=self_pairs,
                        max_pairs=MAX_PAIRS if max_pairs is None else max_pairs)
    ranges = image_ranges(positions, n_atoms, cells, pbc, cutoff)
    candidates = n_atoms * n_atoms * (2 * ranges + 1).prod(axis=1)
    small = (candidates <= small_frame_candidates) & (n_atoms > 0)
    parts = []
    if small.any():
        parts.append(_small_frames(positions, first_atom, n_atoms, cells, pbc, np.flatnonzero(small),
                                   cutoff, self_pairs))
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

"""Neighbour pairs: the flat pair batch every variant consumes.

Builds the full periodic neighbour lists of all frames in one pass
(:mod:`.neighbours`: vesin, or one vectorised search over all small frames;
the same set of pairs as featomic's ``NeighborList``, which AniSOAP uses),
optionally with the self pairs (i, i, no shift, r = 0) AniSOAP keeps when
``subtract_center_contribution`` is False, and flattens everything into a
:class:`PairBatch`. The frames are read once into an
:class:`~einsum_workbench.reference.frames.AtomsTable` (:mod:`.frames`).

Conventions follow AniSOAP 0.1.1: the rotation, semi-axes and species used
for pair (i, j) are those of the neighbour j.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import numpy as np

from einsum_workbench.reference.frames import AtomsTable, atoms_table


@dataclass
class PairBatch:
    """A flat batch of neighbour pairs with its bookkeeping.

    Attributes
    ----------
    r_ij : (P, 3) float64, angstrom
        Position of neighbour j, with its periodic image shift, minus centre i.
    rotations : (P, 3, 3) float64
        Body-to-lab rotation of neighbour j's ellipsoid.
    semiaxes : (P, 3) float64, angstrom
        Semi-axes (l1, l2, l3) of neighbour j.
    frame : (P,) int64
        Index of the frame the pair belongs to.
    centre, neighbour : (P,) int64
        Atom indices of i and j within their frame.
    centre_species, neighbour_species : (P,) int32
        Atomic numbers of i and j (0 for ASE's dummy species ``X``).
    shift : (P, 3) int64
        Cell shift of j's image: ``r_ij = pos[j] + shift @ cell - pos[i]``.
    n_atoms : (F,) int64
        Number of atoms of every frame (frames without pairs included).
    """

    r_ij: np.ndarray
    rotations: np.ndarray
    semiaxes: np.ndarray
    frame: np.ndarray
    centre: np.ndarray
    neighbour: np.ndarray
    centre_species: np.ndarray
    neighbour_species: np.ndarray
    shift: np.ndarray
    n_atoms: np.ndarray

    def __len__(self) -> int:
        return int(self.r_ij.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def atom_offsets(self) -> np.ndarray:
        """(F,) int64: global index of each frame's first atom (AniSOAP's
        ``frame_to_global_atom_idx``)."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)

    @property
    def species(self) -> np.ndarray:
        """Sorted atomic numbers present as centre or neighbour, int32."""
        return np.unique(np.concatenate([self.centre_species, self.neighbour_species])).astype(np.int32)

    def select(self, mask_or_index) -> "PairBatch":
        """New batch holding the chosen pairs (boolean mask or integer index),
        same ``n_atoms``."""
        index = np.asarray(mask_or_index)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"a boolean mask must have shape ({len(self)},), got {index.shape}")
        values = {
            f.name: (getattr(self, f.name) if f.name == "n_atoms" else getattr(self, f.name)[index])
            for f in fields(self)
        }
        return PairBatch(**values)

    def arrays(self):
        """``(r_ij, rotations, semiaxes)``: the arguments of a variant's ``expand``."""
        return self.r_ij, self.rotations, self.semiaxes


def empty_pair_batch(n_atoms=()) -> PairBatch:
    """A batch with no pairs (arrays of the right shapes and dtypes)."""
    return PairBatch(
        r_ij=np.zeros((0, 3)),
        rotations=np.zeros((0, 3, 3)),
        semiaxes=np.zeros((0, 3)),
        frame=np.zeros(0, np.int64),
        centre=np.zeros(0, np.int64),
        neighbour=np.zeros(0, np.int64),
        centre_species=np.zeros(0, np.int32),
        neighbour_species=np.zeros(0, np.int32),
        shift=np.zeros((0, 3), np.int64),
        n_atoms=np.asarray(n_atoms, dtype=np.int64).reshape(-1),
    )


def _check_cutoff(cutoff) -> None:
    """TypeError for a cutoff that is not a real number (strings are not
    parsed), ValueError for a non-finite or non-positive one."""
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number, got {cutoff!r}")
    if not (float(cutoff) > 0 and np.isfinite(float(cutoff))):
        raise ValueError(f"cutoff must be a finite number > 0, got {cutoff!r}")


def pairs_from_table(table: AtomsTable, cutoff: float, *, self_pairs: bool = True,
                     max_pairs: int | None = None) -> PairBatch:
    """The pair batch of an :class:`AtomsTable`: one neighbour-list pass over
    all frames (:func:`einsum_workbench.reference.neighbours.neighbour_pairs`),
    neighbour j's rotation and semi-axes gathered per pair.

    ``max_pairs``: refuse, before allocating, when more pairs than this are
    expected (:func:`einsum_workbench.reference.neighbours.check_pair_estimate`;
    None: its default ``MAX_PAIRS``).

    Returns
    -------
    PairBatch sorted by (frame, centre, neighbour, shift).

    Raises
    ------
    TypeError
        a cutoff that is not a real number.
    ValueError
        a non-positive or non-finite cutoff, a periodic axis with a zero cell
        vector, more pairs expected than ``max_pairs`` (the estimate and the
        frame named).
    """
    from einsum_workbench.reference.neighbours import neighbour_pairs

    _check_cutoff(cutoff)
    frame, i, j, shift, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc,
                                               float(cutoff), self_pairs=self_pairs, max_pairs=max_pairs)
    first = table.first_atom
    gi, gj = first[frame] + i, first[frame] + j
    return PairBatch(
        r_ij=r_ij, rotations=table.rotations[gj], semiaxes=table.semiaxes[gj],
        frame=frame, centre=i, neighbour=j,
        centre_species=table.numbers[gi], neighbour_species=table.numbers[gj],
        shift=shift, n_atoms=table.n_atoms,
    )


def frames_to_pairs(
    frames,
    cutoff: float,
    *,
    self_pairs: bool = True,
    semiaxes=None,
    rotation_key: str | None = "c_q",
    rotation_type: str = "quaternion",
    max_pairs: int | None = None,
) -> PairBatch:
    """Flatten the full neighbour lists of frames into one pair batch.

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
        Periodic (any pbc combination) or not; an empty frame is allowed.
    cutoff : float, angstrom, > 0
        Neighbour cutoff radius (pairs with |r_ij| < cutoff).
    self_pairs : bool
        Add (i, i, shift 0, r = 0) for every atom, as AniSOAP does when
        ``subtract_center_contribution`` is False (its default). Images of i
        itself in other cells are always present.
    semiaxes : None, (3,) array_like or dict
        None (``c_diameter[k] / 2``), a (3,) constant (angstrom) or a dict from
        atomic number or chemical symbol to (3,) semi-axes
        (:func:`einsum_workbench.reference.frames.atoms_table`).
    rotation_key : str or None
        Per-atom array holding the orientations (None: identity rotations).
    rotation_type : {"quaternion", "matrix"}
        Quaternions stored (w, x, y, z), or 3x3 matrices flattened row-major.
    max_pairs : int
        Refuse, before building the neighbour list, when more pairs than this
        are expected in all frames together: atoms x atom density x 4/3 pi
        cutoff^3 per periodic frame, at most atoms^2 per open one
        (:func:`einsum_workbench.reference.neighbours.estimate_pairs`).
        None: :data:`einsum_workbench.reference.neighbours.MAX_PAIRS`
        (20 million, ~5.5 GB of pairs).

    Returns
    -------
    PairBatch
        Pairs sorted by (frame, centre, neighbour, shift); rotations,
        semi-axes of the neighbour j.

    Raises
    ------
    TypeError
        a cutoff that is not a real number.
    ValueError
        non-finite positions, bad or missing semi-axes, zero-norm quaternions,
        non-rotation matrices, a non-positive cutoff (the value named), more
        pairs expected than ``max_pairs`` (the estimate, the frame and the way
        out named).
    """
    _check_cutoff(cutoff)
    table = atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    return pairs_from_table(table, cutoff, self_pairs=self_pairs, max_pairs=max_pairs)

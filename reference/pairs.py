"""Frames to neighbour pairs: the flat pair batch every variant consumes.

Reads extxyz frames with ASE, turns each ellipsoid's stored orientation into a
body-to-lab rotation matrix and its stored diameters into semi-axes, builds the
full periodic neighbour lists of all frames in one pass
(:mod:`.neighbours`: vesin, or one vectorised search over all small frames;
the same set of pairs as featomic's ``NeighborList``, which AniSOAP uses),
optionally with the self pairs (i, i, no shift, r = 0) AniSOAP keeps when
``subtract_center_contribution`` is False, and flattens everything into a
:class:`PairBatch`. The frames are read once into an :class:`AtomsTable`.

Conventions follow AniSOAP 0.1.1 (``EllipsoidalDensityProjection.transform``):
quaternions are stored (w, x, y, z) (array ``c_q``), semi-axes are
``c_diameter[k] / 2``, and the rotation, semi-axes and species used for pair
(i, j) are those of the neighbour j.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, fields

import numpy as np

#: Names under which the three diameters may be stored (ASE's extxyz reader
#: may rename ``c_diameter[1]`` to ``c_diameter1``).
DIAMETER_KEYS = (
    ("c_diameter[1]", "c_diameter[2]", "c_diameter[3]"),
    ("c_diameter1", "c_diameter2", "c_diameter3"),
)
ROTATION_TYPES = ("quaternion", "matrix")
_ROTATION_TOL = 1e-6


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


def read_frames(path, index=":"):
    """Read extxyz frames with ``ase.io.read``.

    Parameters
    ----------
    path : str or os.PathLike
        An extended-XYZ file.
    index : str, int or slice
        ASE's frame selection, e.g. ``":"`` (all), ``":20"`` or ``0``.

    Returns
    -------
    list of ase.Atoms (always a list, even for a single integer index)

    Raises
    ------
    FileNotFoundError
        naming the path if it does not exist.
    """
    import ase.io

    if not os.path.exists(path):
        raise FileNotFoundError(f"no extxyz file at {os.fspath(path)!r}")
    frames = ase.io.read(path, index=index, format="extxyz")
    return frames if isinstance(frames, list) else [frames]


def rotations_from_quaternions(q_wxyz, *, what="atom") -> np.ndarray:
    """Body-to-lab rotation matrices from quaternions stored (w, x, y, z).

    Quaternions are normalised first; ``q`` and ``-q`` give the same rotation.
    Same matrices as ``scipy.spatial.transform.Rotation.from_quat([x, y, z, w])``.

    Parameters
    ----------
    q_wxyz : (N, 4) or (4,) array_like
    what : str
        Word used for the row index in error messages (e.g. "atom").

    Returns
    -------
    (N, 3, 3) float64 (or (3, 3) for a single quaternion)

    Raises
    ------
    ValueError
        wrong shape, a non-finite value, or a quaternion of zero norm (the
        index and the value are named).
    """
    q = np.asarray(q_wxyz, dtype=np.float64)
    single = q.ndim == 1
    q = np.atleast_2d(q)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"quaternions must have shape (N, 4) stored (w, x, y, z), got {np.shape(q_wxyz)}")
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"quaternion of {what} {k} has a non-finite value: {q[k].tolist()}")
    norm = np.linalg.norm(q, axis=1)
    bad = ~(norm > 1e-12)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"quaternion of {what} {k} has zero norm: {q[k].tolist()} (stored w, x, y, z)")
    w, x, y, z = (q / norm[:, None]).T
    rot = np.empty((q.shape[0], 3, 3))
    rot[:, 0, 0] = 1 - 2 * (y * y + z * z)
    rot[:, 0, 1] = 2 * (x * y - z * w)
    rot[:, 0, 2] = 2 * (x * z + y * w)
    rot[:, 1, 0] = 2 * (x * y + z * w)
    rot[:, 1, 1] = 1 - 2 * (x * x + z * z)
    rot[:, 1, 2] = 2 * (y * z - x * w)
    rot[:, 2, 0] = 2 * (x * z - y * w)
    rot[:, 2, 1] = 2 * (y * z + x * w)
    rot[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return rot[0] if single else rot


def rotations_from_matrices(flat, *, what="atom") -> np.ndarray:
    """Rotation matrices stored flattened, 9 values per atom (row-major).

    Raises
    ------
    ValueError
        wrong size, a non-finite value, or a matrix that is not a proper
        rotation (index and value named).
    """
    m = np.asarray(flat, dtype=np.float64)
    if m.size % 9 != 0 or (m.ndim >= 2 and m.shape[-1] not in (9, 3)):
        raise ValueError(f"rotation matrices must be stored as 9 values per {what}, got shape {m.shape}")
    m = m.reshape(-1, 3, 3)
    bad = ~np.isfinite(m).all(axis=(1, 2))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"rotation matrix of {what} {k} has a non-finite value: {m[k].tolist()}")
    deviation = np.abs(m @ m.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    bad = (deviation > _ROTATION_TOL) | (np.linalg.det(m) < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"rotation matrix of {what} {k} is not a proper rotation: {m[k].tolist()}")
    return m


def frame_rotations(frame, frame_index, rotation_key="c_q", rotation_type="quaternion") -> np.ndarray:
    """(N, 3, 3) body-to-lab rotations of one frame's atoms.

    ``rotation_key=None`` gives identity rotations (e.g. spheres).

    Raises
    ------
    ValueError
        unknown ``rotation_type``, missing array, or bad values (frame and
        atom named).
    """
    n = len(frame)
    if rotation_type not in ROTATION_TYPES:
        raise ValueError(f"rotation_type must be one of {ROTATION_TYPES}, got {rotation_type!r}")
    if rotation_key is None:
        return np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    if rotation_key not in frame.arrays:
        raise ValueError(
            f"frame {frame_index} has no {rotation_key!r} array holding rotations; "
            f"its arrays are {sorted(frame.arrays)}"
        )
    stored = frame.arrays[rotation_key]
    try:
        if rotation_type == "quaternion":
            return rotations_from_quaternions(np.asarray(stored).reshape(n, -1), what="atom")
        return rotations_from_matrices(np.asarray(stored).reshape(n, -1), what="atom")
    except ValueError as err:
        raise ValueError(f"frame {frame_index}: {err}") from None


def _check_semiaxes(values, where) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(-1, 3)
    for k, row in enumerate(flat):
        if not (np.isfinite(row).all() and (row > 0).all()):
            raise ValueError(f"semi-axes must be finite and > 0; {where(k)} has {row.tolist()}")
    return values


def frame_semiaxes(frame, frame_index, semiaxes=None) -> np.ndarray:
    """(N, 3) semi-axes of one frame's atoms, angstrom.

    Parameters
    ----------
    frame : ase.Atoms
    frame_index : int
        Used in error messages.
    semiaxes : None, (3,) array_like or dict
        None: ``c_diameter[k] / 2`` (or ASE's renamed ``c_diameterk``) from the
        frame's arrays; a (3,) constant for every atom; or a dict from atomic
        number (int) or chemical symbol (str) to (3,) semi-axes.

    Raises
    ------
    ValueError
        missing diameters or species, or a zero, negative or non-finite
        semi-axis (the value, frame and atom are named).
    """
    n = len(frame)
    if semiaxes is None:
        for keys in DIAMETER_KEYS:
            if all(k in frame.arrays for k in keys):
                diam = np.stack([np.asarray(frame.arrays[k], dtype=np.float64).reshape(n) for k in keys], axis=1)
                return _check_semiaxes(diam / 2.0, lambda k: f"frame {frame_index} atom {k} (c_diameter / 2)")
        raise ValueError(
            f"frame {frame_index} stores no diameters (looked for {DIAMETER_KEYS[0]} and "
            f"{DIAMETER_KEYS[1]}); pass semiaxes=(l1, l2, l3) or a per-species dict"
        )
    if isinstance(semiaxes, dict):
        numbers_ = frame.numbers
        symbols = frame.get_chemical_symbols()
        out = np.empty((n, 3))
        for k in range(n):
            if int(numbers_[k]) in semiaxes:
                value = semiaxes[int(numbers_[k])]
            elif symbols[k] in semiaxes:
                value = semiaxes[symbols[k]]
            else:
                raise ValueError(
                    f"semiaxes dict has no entry for species {symbols[k]} (Z = {int(numbers_[k])}) "
                    f"of frame {frame_index} atom {k}; keys: {list(semiaxes)}"
                )
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (3,):
                raise ValueError(f"semiaxes for species {symbols[k]} must have shape (3,), got {value.tolist()}")
            out[k] = value
        return _check_semiaxes(out, lambda k: f"frame {frame_index} atom {k} ({symbols[k]})")
    value = np.asarray(semiaxes, dtype=np.float64)
    if value.shape != (3,):
        raise ValueError(f"semiaxes must be None, a (3,) constant or a per-species dict, got {semiaxes!r}")
    _check_semiaxes(value, lambda k: "the constant semiaxes")
    return np.broadcast_to(value, (n, 3)).copy()


@dataclass
class AtomsTable:
    """Every atom of every frame in flat arrays: what the neighbour list and
    the pair batch are built from.

    Attributes
    ----------
    n_atoms : (F,) int64
        Atoms per frame.
    positions : (N, 3) float64, angstrom
        Frame after frame.
    numbers : (N,) int32
        Atomic numbers (0 for ASE's dummy ``X``).
    rotations : (N, 3, 3) float64
        Body-to-lab rotation of every ellipsoid.
    semiaxes : (N, 3) float64, angstrom
    cells : (F, 3, 3) float64, angstrom (rows are lattice vectors)
    pbc : (F, 3) bool
    """

    n_atoms: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    rotations: np.ndarray
    semiaxes: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray

    @property
    def first_atom(self) -> np.ndarray:
        """(F,) int64: global index of each frame's first atom."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)

    def locate(self, atom: int) -> tuple[int, int]:
        """(frame, atom within the frame) of the global atom index ``atom``."""
        frame = int(np.searchsorted(np.cumsum(self.n_atoms), atom, side="right"))
        return frame, int(atom - self.first_atom[frame])


def frame_geometry(frames):
    """n_atoms (F,), positions (N, 3), numbers (N,), cells (F, 3, 3), pbc (F, 3)
    of a list of ``ase.Atoms``, read once per frame.

    Raises
    ------
    ValueError
        a non-finite position (frame and atom named).
    """
    arrays = [f.arrays for f in frames]  # ASE keeps positions and numbers there: no property calls
    n_atoms = np.fromiter((len(a["numbers"]) for a in arrays), dtype=np.int64, count=len(frames))
    positions = np.concatenate([a["positions"] for a in arrays]) if len(frames) else np.zeros((0, 3))
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    numbers = (np.concatenate([a["numbers"] for a in arrays]) if len(frames) else np.zeros(0)).astype(np.int32)
    cells = np.array([f.cell.array for f in frames], dtype=np.float64).reshape(-1, 3, 3)
    pbc = np.array([f.pbc for f in frames], dtype=bool).reshape(-1, 3)
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        atom = int(np.argmax(bad))
        first = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        frame = int(np.searchsorted(first, atom, side="right") - 1)
        raise ValueError(f"frame {frame} atom {atom - first[frame]} has a non-finite position: "
                         f"{positions[atom].tolist()}")
    return n_atoms, positions, numbers, cells, pbc


def atoms_table(frames, *, semiaxes=None, rotation_key: str | None = "c_q",
                rotation_type: str = "quaternion") -> AtomsTable:
    """Read every frame's atoms into one :class:`AtomsTable` (one pass over
    the frames, rotations converted for all atoms at once).

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
    semiaxes, rotation_key, rotation_type
        As :func:`frames_to_pairs`.

    Raises
    ------
    ValueError
        as :func:`frame_rotations` and :func:`frame_semiaxes` (frame and
        atom named), or a non-finite position.
    """
    if rotation_type not in ROTATION_TYPES:
        raise ValueError(f"rotation_type must be one of {ROTATION_TYPES}, got {rotation_type!r}")
    if hasattr(frames, "positions"):
        frames = [frames]
    frames = list(frames)
    n_atoms, positions, numbers, cells, pbc = frame_geometry(frames)
    filled = [(k, f) for k, f in enumerate(frames) if len(f)]
    if rotation_key is None:
        rotations = np.broadcast_to(np.eye(3), (len(positions), 3, 3)).copy()
    else:
        stored = []
        for k, f in filled:
            if rotation_key not in f.arrays:
                raise ValueError(
                    f"frame {k} has no {rotation_key!r} array holding rotations; its arrays are {sorted(f.arrays)}"
                )
            stored.append(np.asarray(f.arrays[rotation_key], dtype=np.float64).reshape(len(f), -1))
        stored = np.concatenate(stored) if stored else np.zeros((0, 4 if rotation_type == "quaternion" else 9))
        try:
            convert = rotations_from_quaternions if rotation_type == "quaternion" else rotations_from_matrices
            rotations = convert(stored, what="atom").reshape(-1, 3, 3)
        except ValueError:
            # locate the culprit with the per-frame reader (its message names frame and atom)
            for k, f in filled:
                frame_rotations(f, k, rotation_key, rotation_type)
            raise
    if semiaxes is None or isinstance(semiaxes, dict):
        lengths = [frame_semiaxes(f, k, semiaxes) for k, f in filled]
        lengths = np.concatenate(lengths) if lengths else np.zeros((0, 3))
    else:
        lengths = np.broadcast_to(frame_semiaxes(frames[filled[0][0]], filled[0][0], semiaxes)[:1]
                                  if filled else np.ones((1, 3)), (len(positions), 3)).copy()
    return AtomsTable(n_atoms=n_atoms, positions=positions, numbers=numbers, rotations=rotations,
                      semiaxes=lengths, cells=cells, pbc=pbc)


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
        See :func:`frame_semiaxes`.
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

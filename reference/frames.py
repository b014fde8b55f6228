"""Frames to atom arrays: every atom of every frame in one flat table.

Reads extxyz frames with ASE, turns each ellipsoid's stored orientation into a
body-to-lab rotation matrix and its stored diameters into semi-axes, and puts
every atom of every frame into one :class:`AtomsTable` (positions, atomic
numbers, rotations, semi-axes, cells, periodicity), which the neighbour list
and the pair batch (:mod:`.pairs`) are built from.

Conventions follow AniSOAP 0.1.1 (``EllipsoidalDensityProjection.transform``):
quaternions are stored (w, x, y, z) (array ``c_q``), semi-axes are
``c_diameter[k] / 2``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: Names under which the three diameters may be stored (ASE's extxyz reader
#: may rename ``c_diameter[1]`` to ``c_diameter1``).
DIAMETER_KEYS = (
    ("c_diameter[1]", "c_diameter[2]", "c_diameter[3]"),
    ("c_diameter1", "c_diameter2", "c_diameter3"),
)
ROTATION_TYPES = ("quaternion", "matrix")
_ROTATION_TOL = 1e-6


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

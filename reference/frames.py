"""Frames to atom arrays: every atom of every frame in one flat table.

Reads ``ase.Atoms`` frames once (:func:`gather_frames`; files are read by
:mod:`.readers`), turns each ellipsoid's stored orientation into a
body-to-lab rotation matrix and its stored diameters into semi-axes, and puts
every atom of every frame into one :class:`AtomsTable` (positions, atomic
numbers, rotations, semi-axes, cells, periodicity), which the neighbour list
and the pair batch (:mod:`.pairs`) are built from.

Conventions follow AniSOAP 0.1.1 (``EllipsoidalDensityProjection.transform``):
quaternions are stored (w, x, y, z) (array ``c_q``), semi-axes are
``c_diameter[k] / 2``.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass

import numba
import numpy as np

#: Names under which the three diameters may be stored (ASE's extxyz reader
#: may rename ``c_diameter[1]`` to ``c_diameter1``).
DIAMETER_KEYS = (
    ("c_diameter[1]", "c_diameter[2]", "c_diameter[3]"),
    ("c_diameter1", "c_diameter2", "c_diameter3"),
)
ROTATION_TYPES = ("quaternion", "matrix")
_ROTATION_TOL = 1e-6


@numba.njit(cache=True, error_model="numpy")  # a zero norm gives NaN rows (reported), not an exception
def quaternion_matrices(q_wxyz):
    """Rotation matrices of quaternions stored (w, x, y, z), in one compiled pass.

    scipy's arithmetic (``Rotation.from_quat`` normalising by the norm summed
    x, y, z, w, then ``as_matrix``), term for term, without its ~16 us of
    Python per call (47 us inside a transform of 200 atoms). Equal to scipy's
    matrices within rounding (bit for bit where scipy's build does not fuse
    multiply-adds, as on the machines measured).

    Parameters
    ----------
    q_wxyz : (N, 4) float64

    Returns
    -------
    matrices : (N, 3, 3) float64
    first_bad : int, the first row with a non-finite value or a norm <= 1e-12
        (its matrix is not meaningful), -1 if none.
    """
    n = q_wxyz.shape[0]
    out = np.empty((n, 3, 3))
    first_bad = -1
    for k in range(n):
        w, x, y, z = q_wxyz[k, 0], q_wxyz[k, 1], q_wxyz[k, 2], q_wxyz[k, 3]
        norm = np.sqrt(x * x + y * y + z * z + w * w)
        if not (norm > 1e-12 and np.isfinite(norm)) and first_bad < 0:
            first_bad = k
        x, y, z, w = x / norm, y / norm, z / norm, w / norm
        x2, y2, z2, w2 = x * x, y * y, z * z, w * w
        xy, zw, xz, yw, yz, xw = x * y, z * w, x * z, y * w, y * z, x * w
        out[k, 0, 0] = x2 - y2 - z2 + w2
        out[k, 1, 0] = 2 * (xy + zw)
        out[k, 2, 0] = 2 * (xz - yw)
        out[k, 0, 1] = 2 * (xy - zw)
        out[k, 1, 1] = -x2 + y2 - z2 + w2
        out[k, 2, 1] = 2 * (yz + xw)
        out[k, 0, 2] = 2 * (xz + yw)
        out[k, 1, 2] = 2 * (yz - xw)
        out[k, 2, 2] = -x2 - y2 + z2 + w2
    return out, first_bad


def rotations_from_quaternions(q_wxyz, *, what="atom") -> np.ndarray:
    """Body-to-lab rotation matrices from quaternions stored (w, x, y, z).

    Quaternions are normalised first; ``q`` and ``-q`` give the same rotation.
    The same matrices as
    ``scipy.spatial.transform.Rotation.from_quat([x, y, z, w]).as_matrix()``
    (:func:`quaternion_matrices`: its arithmetic).

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
    rot, first_bad = quaternion_matrices(np.ascontiguousarray(q))
    if first_bad >= 0:  # the first non-finite row, else the first of zero norm, named
        bad = ~np.isfinite(q).all(axis=1)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"quaternion of {what} {k} has a non-finite value: {q[k].tolist()}")
        raise ValueError(f"quaternion of {what} {first_bad} has zero norm: {q[first_bad].tolist()} "
                         "(stored w, x, y, z)")
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
        first = np.zeros(len(self.n_atoms), np.int64)
        np.cumsum(self.n_atoms[:-1], out=first[1:])
        return first

    def locate(self, atom: int) -> tuple[int, int]:
        """(frame, atom within the frame) of the global atom index ``atom``."""
        frame = int(np.searchsorted(np.cumsum(self.n_atoms), atom, side="right"))
        return frame, int(atom - self.first_atom[frame])


def as_frame_list(frames) -> list:
    """``frames`` as a list of ``ase.Atoms``: one ``Atoms`` is one frame.

    Raises
    ------
    TypeError
        a path or string (read it first: ``reference.readers.read_frames``), anything that
        is not a sequence, or an element that is not an ``ase.Atoms`` (its
        index and type named).
    """
    from ase import Atoms

    if isinstance(frames, Atoms):
        return [frames]
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise TypeError(
            f"frames must be an ase.Atoms or a sequence of ase.Atoms, got the {type(frames).__name__} "
            f"{os.fspath(frames)!r}; read the file first, e.g. "
            "einsum_workbench.reference.readers.read_frames(path)"
        )
    try:
        frames = list(frames)
    except TypeError:
        raise TypeError(f"frames must be an ase.Atoms or a sequence of ase.Atoms, got {type(frames).__name__} "
                        f"{frames!r:.80}") from None
    for k, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            raise TypeError(f"frames[{k}] is a {type(frame).__name__}, not an ase.Atoms: {frame!r:.80}")
    return frames


@dataclass
class FrameArrays:
    """Everything read from a list of frames, in one pass, before any conversion.

    Attributes
    ----------
    n_atoms : (F,) int64
    positions : (N, 3) float64, angstrom
    numbers : (N,) int32
    cells : (F, 3, 3) float64, angstrom (rows are lattice vectors)
    pbc : (F, 3) bool
    rotations : (M, ...) float64 or None
        The stored rotation array of the frames that have it (all atoms of
        those frames, frame after frame); None when no rotation key was asked.
    diameters : (M', 3) float64 or None
        The stored diameters, likewise; None when not asked.
    without_rotation, without_diameters : list of int
        Frames holding atoms but not the array (in frame order).
    """

    n_atoms: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    rotations: np.ndarray | None = None
    diameters: np.ndarray | None = None
    without_rotation: list = None
    without_diameters: list = None

    @property
    def first_atom(self) -> np.ndarray:
        first = np.zeros(len(self.n_atoms), np.int64)
        np.cumsum(self.n_atoms[:-1], out=first[1:])
        return first


def _concatenate(parts, width, dtype=np.float64) -> np.ndarray:
    return (np.concatenate(parts) if parts else np.zeros((0,) + width)).astype(dtype, copy=False)


_DTYPE = operator.attrgetter("dtype")


def _joined(parts, dtype, rows: int):
    """``np.concatenate(parts)`` through one byte join (on a thousand small arrays, 2x faster:
    the per-array cost of ``np.concatenate`` is most of reading small frames), or None where
    that might not be its result: a part that is not a C-contiguous ndarray of exactly
    ``dtype``, or not ``rows`` rows of the first part's row shape in all (checks that cost
    one attribute read per part, not one per array dimension)."""
    dtype = np.dtype(dtype)
    try:
        if not parts or list(map(_DTYPE, parts)).count(dtype) != len(parts):
            return None
        buffer = bytearray().join(parts)  # a bytearray: the array over it is writable
    except (AttributeError, TypeError, ValueError, BufferError):  # not arrays, or not C-contiguous
        return None
    tail = parts[0].shape[1:]
    if len(buffer) != rows * math.prod(tail) * dtype.itemsize:
        return None
    return np.frombuffer(buffer, dtype).reshape((-1,) + tail)


def _column(parts, width, dtype, rows: int, stored=np.float64) -> np.ndarray:
    """``_concatenate(parts, width, dtype)``, through :func:`_joined` when the parts are ``stored`` arrays."""
    joined = _joined(parts, stored, rows)
    if joined is None and parts and isinstance(parts[0], np.ndarray) and parts[0].dtype != np.dtype(stored):
        joined = _joined(parts, parts[0].dtype, rows)  # every frame storing another dtype (integer diameters)
    return _concatenate(parts, width, dtype) if joined is None else joined.astype(dtype, copy=False)


def _stored_rotations(parts, n_atoms, without) -> np.ndarray:
    """(M, k) float64: the rotation arrays of the frames that hold one, one row per atom."""
    if not parts:
        return np.zeros((0, 4))
    rows = int(n_atoms.sum()) - int(n_atoms[without].sum())
    if not without:
        joined = _joined(parts, np.float64, rows)
        if joined is not None:
            return joined.reshape(rows, -1)
    try:
        return np.concatenate(parts).astype(np.float64, copy=False).reshape(rows, -1)
    except ValueError:  # frames storing different shapes (e.g. (n, 9) and (n, 3, 3)): one row per atom each
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(len(p), -1) for p in parts if len(p)])


def _gather_uniform(frames, rotation_key, diameter_keys) -> FrameArrays:
    """:func:`gather_frames` when every frame holds every array asked for under the
    same names (the common case): one comprehension and one join per array, no
    per-frame bookkeeping. Raises KeyError otherwise."""
    arrays = [frame.arrays for frame in frames]
    numbers = [a["numbers"] for a in arrays]
    n_atoms = np.fromiter(map(len, numbers), dtype=np.int64, count=len(arrays))
    n_total = int(n_atoms.sum())
    positions = _column([a["positions"] for a in arrays], (3,), np.float64, n_total).reshape(-1, 3)
    numbers = _column(numbers, (), np.int32, n_total, stored=np.int64)
    cells = _column([frame.cell.array for frame in frames], (3,), np.float64, 3 * len(frames)).reshape(-1, 3, 3)
    pbc = _column([frame.pbc for frame in frames], (), bool, 3 * len(frames), stored=bool).reshape(-1, 3)
    rotations = diameters = None
    if rotation_key is not None:
        rotations = _stored_rotations([a[rotation_key] for a in arrays], n_atoms, [])
    if diameter_keys:
        names = next((keys for keys in diameter_keys if all(k in arrays[0] for k in keys)), diameter_keys[0])
        diameters = np.stack([_column([a[key] for a in arrays], (), np.float64, n_total) for key in names], axis=1)
    return FrameArrays(n_atoms=n_atoms, positions=positions, numbers=numbers, cells=cells, pbc=pbc,
                       rotations=rotations, diameters=diameters, without_rotation=[], without_diameters=[])


def gather_frames(frames, *, rotation_key: str | None = None, diameter_keys=(), progress=None) -> FrameArrays:
    """Read each frame's arrays once: positions, numbers, cell, pbc, the rotation
    array ``rotation_key`` and the diameters (the first of ``diameter_keys``,
    names of three arrays, that the frame holds), concatenated over all frames.

    Parameters
    ----------
    frames : list of ase.Atoms (see :func:`as_frame_list`)
    rotation_key : str or None
    diameter_keys : sequence of 3-tuples of str
        e.g. :data:`DIAMETER_KEYS`; empty: diameters not read.
    progress : callable or None
        Wraps the iteration over the frames (e.g. a tqdm bar).

    Returns
    -------
    FrameArrays (frames without atoms contribute no rotation or diameters and
    are never counted as lacking them).
    """
    if progress is None and frames:
        try:
            return _gather_uniform(frames, rotation_key, diameter_keys)
        except KeyError:  # a frame lacks an array, or names its diameters otherwise: frame by frame below
            pass
    positions, numbers, cells, pbc, rotations, d1, d2, d3 = [], [], [], [], [], [], [], []
    without_rotation, without_diameters = [], []
    iterator = enumerate(frames) if progress is None else enumerate(progress(frames))
    for k, frame in iterator:
        arrays = frame.arrays  # ASE keeps positions and numbers there: no property calls
        position = arrays["positions"]
        positions.append(position)
        numbers.append(arrays["numbers"])
        cells.append(frame.cell.array)
        pbc.append(frame.pbc)
        if not len(position):
            continue
        if rotation_key is not None:
            stored = arrays.get(rotation_key)
            if stored is None:
                without_rotation.append(k)
            else:
                rotations.append(stored)
        for names in diameter_keys:
            try:
                found = arrays[names[0]], arrays[names[1]], arrays[names[2]]
            except KeyError:
                continue
            d1.append(found[0])
            d2.append(found[1])
            d3.append(found[2])
            break
        else:
            if diameter_keys:
                without_diameters.append(k)
    # lists first, one concatenation each: 5x cheaper than writing into preallocated arrays frame by frame
    n_atoms = np.fromiter(map(len, positions), dtype=np.int64, count=len(positions))
    return FrameArrays(
        n_atoms=n_atoms,
        positions=_concatenate(positions, (3,)).reshape(-1, 3),
        numbers=_concatenate(numbers, (), np.int32),
        cells=_concatenate(cells, (3,)).reshape(-1, 3, 3), pbc=_concatenate(pbc, (), bool).reshape(-1, 3),
        rotations=_stored_rotations(rotations, n_atoms, without_rotation) if rotation_key is not None else None,
        diameters=(np.stack([_concatenate(d, ()) for d in (d1, d2, d3)], axis=1) if diameter_keys else None),
        without_rotation=without_rotation, without_diameters=without_diameters,
    )


def frame_geometry(frames):
    """n_atoms (F,), positions (N, 3), numbers (N,), cells (F, 3, 3), pbc (F, 3)
    of a list of ``ase.Atoms``, read once per frame.

    Raises
    ------
    ValueError
        a non-finite position (frame and atom named).
    """
    read = gather_frames(as_frame_list(frames))
    check_positions(read.positions, read.n_atoms)
    return read.n_atoms, read.positions, read.numbers, read.cells, read.pbc


def _locate(atom: int, n_atoms) -> tuple[int, int]:
    """(frame, atom within the frame) of global atom index ``atom``."""
    first = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    frame = int(np.searchsorted(first, atom, side="right") - 1)
    while n_atoms[frame] == 0:  # empty frames share their first index with the next one
        frame += 1
    return frame, int(atom - first[frame])


@numba.njit(cache=True)
def first_non_finite_row(values):
    """The first row of the 2-D ``values`` holding a non-finite value, or -1 (one compiled pass).
    Compiled, for compiled and Python callers (the frames' and the neighbour search's checks)."""
    for a in range(values.shape[0]):
        for k in range(values.shape[1]):
            if not np.isfinite(values[a, k]):
                return a
    return -1


def check_positions(positions, n_atoms) -> None:
    """Raise ValueError naming the first non-finite position (frame and atom)."""
    atom = first_non_finite_row(np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3))
    if atom >= 0:
        frame, local = _locate(atom, n_atoms)
        raise ValueError(f"frame {frame} atom {local} has a non-finite position: {positions[atom].tolist()}")


def _convert_rotations(stored, n_atoms, rotation_type) -> np.ndarray:
    """(N, 3, 3) rotations of every atom from the stored array; on a bad value
    the culprit's frame is found by converting frame by frame (error path only)."""
    convert = rotations_from_quaternions if rotation_type == "quaternion" else rotations_from_matrices
    try:
        return convert(stored, what="atom").reshape(-1, 3, 3)
    except ValueError:
        first = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
        for k in np.flatnonzero(n_atoms):
            try:
                convert(stored[first[k]:first[k + 1]], what="atom")
            except ValueError as err:
                raise ValueError(f"frame {k}: {err}") from None
        raise


def _checked_semiaxes(values, n_atoms, what: str) -> np.ndarray:
    """``values`` (N, 3) after checking every one is finite and > 0 (frame and atom named)."""
    bad = ~(np.isfinite(values) & (values > 0)).all(axis=1)
    if bad.any():
        atom = int(np.argmax(bad))
        frame, local = _locate(atom, n_atoms)
        raise ValueError(f"semi-axes must be finite and > 0; frame {frame} atom {local} ({what}) has "
                         f"{values[atom].tolist()}")
    return values


def _species_semiaxes(semiaxes: dict, numbers, n_atoms) -> np.ndarray:
    """(N, 3) semi-axes looked up per species (atomic number or chemical symbol keys)."""
    from ase.data import chemical_symbols

    species, inverse = np.unique(numbers, return_inverse=True)
    table = np.empty((len(species), 3))
    for s, z in enumerate(species.tolist()):
        symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)
        if z in semiaxes:
            value = semiaxes[z]
        elif symbol in semiaxes:
            value = semiaxes[symbol]
        else:
            frame, local = _locate(int(np.argmax(numbers == z)), n_atoms)
            raise ValueError(f"semiaxes dict has no entry for species {symbol} (Z = {z}) of frame {frame} "
                             f"atom {local}; keys: {list(semiaxes)}")
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (3,):
            raise ValueError(f"semiaxes for species {symbol} must have shape (3,), got {np.asarray(value).tolist()}")
        if not (np.isfinite(value).all() and (value > 0).all()):
            raise ValueError(f"semi-axes must be finite and > 0; species {symbol} has {value.tolist()}")
        table[s] = value
    return table[inverse.reshape(-1)]


def _table(read: FrameArrays, *, semiaxes, rotation_key, rotation_type) -> AtomsTable:
    """The AtomsTable of what :func:`gather_frames` read, every conversion over all atoms at once."""
    n_atoms, n_total = read.n_atoms, len(read.positions)
    check_positions(read.positions, n_atoms)
    if rotation_key is None:
        rotations = np.broadcast_to(np.eye(3), (n_total, 3, 3)).copy()
    else:
        rotations = _convert_rotations(read.rotations, n_atoms, rotation_type)
    if semiaxes is None:
        lengths = _checked_semiaxes(read.diameters / 2.0, n_atoms, "c_diameter / 2")
    elif isinstance(semiaxes, dict):
        lengths = _species_semiaxes(semiaxes, read.numbers, n_atoms)
    else:
        value = np.asarray(semiaxes, dtype=np.float64)
        if value.shape != (3,):
            raise ValueError(f"semiaxes must be None, a (3,) constant or a per-species dict, got {semiaxes!r}")
        if not (np.isfinite(value).all() and (value > 0).all()):
            raise ValueError(f"semi-axes must be finite and > 0; the constant semiaxes has {value.tolist()}")
        lengths = np.broadcast_to(value, (n_total, 3)).copy()
    return AtomsTable(n_atoms=n_atoms, positions=read.positions, numbers=read.numbers, rotations=rotations,
                      semiaxes=lengths, cells=read.cells, pbc=read.pbc)


def _check_rotation_type(rotation_type) -> None:
    if rotation_type not in ROTATION_TYPES:
        raise ValueError(f"rotation_type must be one of {ROTATION_TYPES}, got {rotation_type!r}")


def atoms_table(frames, *, semiaxes=None, rotation_key: str | None = "c_q",
                rotation_type: str = "quaternion") -> AtomsTable:
    """Read every frame's atoms into one :class:`AtomsTable`: one pass over the
    frames (:func:`gather_frames`), every conversion vectorised over all atoms.

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
    semiaxes, rotation_key, rotation_type
        As :func:`einsum_workbench.reference.pairs.frames_to_pairs`:
        ``semiaxes`` None (``c_diameter[k] / 2`` or ASE's renamed
        ``c_diameterk``), a (3,) constant, or a dict from atomic number or
        chemical symbol to (3,) semi-axes (angstrom).

    Raises
    ------
    TypeError
        ``frames`` is not an ``ase.Atoms`` or a sequence of them (:func:`as_frame_list`).
    ValueError
        a missing rotation array or diameters, a bad quaternion or matrix, a
        zero, negative or non-finite semi-axis, a non-finite position (frame
        and atom named).
    """
    _check_rotation_type(rotation_type)
    frames = as_frame_list(frames)
    read = gather_frames(frames, rotation_key=rotation_key, diameter_keys=DIAMETER_KEYS if semiaxes is None else ())
    if read.without_rotation:
        k = read.without_rotation[0]
        raise ValueError(f"frame {k} has no {rotation_key!r} array holding rotations; its arrays are "
                         f"{sorted(frames[k].arrays)}")
    if read.without_diameters:
        raise ValueError(
            f"frame {read.without_diameters[0]} stores no diameters (looked for {DIAMETER_KEYS[0]} and "
            f"{DIAMETER_KEYS[1]}); pass semiaxes=(l1, l2, l3) or a per-species dict"
        )
    return _table(read, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)


def table_from_arrays(n_atoms, positions, numbers, cells, pbc, arrays: dict, *, semiaxes=None,
                      rotation_key: str | None = "c_q", rotation_type: str = "quaternion") -> AtomsTable:
    """The :class:`AtomsTable` of frames already read into flat arrays (e.g. by a
    parser that builds no ``ase.Atoms``), with the conversions of :func:`atoms_table`.

    Parameters
    ----------
    n_atoms : (F,) int
    positions : (N, 3) float, angstrom, frame after frame
    numbers : (N,) int, atomic numbers
    cells : (F, 3, 3) float, angstrom (rows are lattice vectors)
    pbc : (F, 3) bool
    arrays : dict from str to (N, ...) arrays
        Per-atom arrays concatenated over all frames: ``rotation_key`` and,
        when ``semiaxes`` is None, the diameters (``c_diameter[k]`` or ``c_diameterk``).
    semiaxes, rotation_key, rotation_type : as :func:`atoms_table`

    Raises
    ------
    ValueError
        inconsistent shapes, a missing array (the available ones named), and
        as :func:`atoms_table`.
    """
    _check_rotation_type(rotation_type)
    n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n_total = int(n_atoms.sum())
    if len(positions) != n_total:
        raise ValueError(f"positions hold {len(positions)} atoms but n_atoms sums to {n_total}")
    cells = np.asarray(cells, dtype=np.float64).reshape(len(n_atoms), 3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(len(n_atoms), 3)
    rotations = diameters = None
    if rotation_key is not None:
        if rotation_key not in arrays:
            raise ValueError(f"no {rotation_key!r} array holding rotations; the arrays are {sorted(arrays)}")
        rotations = np.asarray(arrays[rotation_key], dtype=np.float64).reshape(n_total, -1)
    if semiaxes is None:
        names = next((keys for keys in DIAMETER_KEYS if all(k in arrays for k in keys)), None)
        if names is None:
            raise ValueError(f"no diameters (looked for {DIAMETER_KEYS[0]} and {DIAMETER_KEYS[1]}); the arrays "
                             f"are {sorted(arrays)}; pass semiaxes=(l1, l2, l3) or a per-species dict")
        diameters = np.stack([np.asarray(arrays[k], dtype=np.float64).reshape(n_total) for k in names], axis=1)
    read = FrameArrays(n_atoms=n_atoms, positions=positions, numbers=np.asarray(numbers).astype(np.int32).reshape(-1),
                       cells=cells, pbc=pbc, rotations=rotations, diameters=diameters)
    return _table(read, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)


def as_atoms_table(frames, *, semiaxes=None, rotation_key: str | None = "c_q",
                   rotation_type: str = "quaternion") -> AtomsTable:
    """``frames`` itself when it is already an :class:`AtomsTable` (e.g. read by
    ``reference.readers``), else :func:`atoms_table` of it.

    Raises
    ------
    ValueError
        ``semiaxes`` given with an AtomsTable (the table holds its semi-axes already).
    TypeError, ValueError
        as :func:`atoms_table`.
    """
    if isinstance(frames, AtomsTable):
        if semiaxes is not None:
            raise ValueError(f"semiaxes={semiaxes!r} was given with an AtomsTable, which holds its own semi-axes; "
                             "pass the semi-axes when the table is built")
        return frames
    return atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)

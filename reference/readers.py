"""Extended-XYZ files read through libAtoms' C parser, with ASE's reader as the fallback.

Two readers, both giving what ``ase.io.read(path, format="extxyz")`` gives:

- :func:`read_frames_fast`: a list of ``ase.Atoms``, through the C parser of
  the ``extxyz`` package (``extxyz.cextxyz``, about 5x faster than ASE's
  Python parser on small frames) wherever it gives ASE's frames; ASE's reader
  otherwise (another format, a compressed file, the package missing, a frame
  the C parser rejects, or a frame ASE would give a calculator or constraints).
- :func:`read_arrays`: the frames of a file, or of a byte range of it (one
  chunk of ``featurize``), straight into flat arrays (:class:`ExtxyzArrays`),
  no ``ase.Atoms`` built; :meth:`ExtxyzArrays.table` turns them into the
  :class:`~einsum_workbench.reference.frames.AtomsTable` the pipeline takes
  (``reference.frames.table_from_arrays``). It raises :class:`Unsupported`
  where it cannot promise ASE's arrays; the caller then reads with ASE
  (:func:`read_table` does so itself).

ASE's conventions are mirrored, not the C parser's own: the cell is the
transpose of ``Lattice`` (ASE's rows are the lattice vectors); ``pbc`` is the
``pbc`` key if given, else all True with a ``Lattice`` and all False without
one (the C parser would say all True); a frame without ``Lattice`` has a zero
cell; numbers come from a ``Z`` column if there is one, else from the
``species`` symbols capitalised (``X`` -> 0, ASE's ``symbols2numbers``);
column names are ASE's: ``pos`` becomes ``positions``, ``c_diameter[1]``
stays ``c_diameter[1]`` in a quoted ``Properties="..."`` and becomes
``c_diameter1`` in an unquoted one (as ASE's writer leaves it; the C grammar
rejects that line, which is then given to the C parser as ASE reads it,
:func:`ase_comment`); columns ASE hands to a calculator
(``forces``, ``charge``, ...) and ``move_mask`` are not per-atom arrays.
Per-atom arrays are (N,) for one column and (N, k) for k columns, float64
(``R``), integers (``I``), bool (``L``) or str (``S``). Info values keep the
C parser's types (equal to ASE's values, NumPy scalars where ASE has Python
ones). A ``Lattice`` given as nested brackets, which ASE refuses, is read.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from einsum_workbench.reference.frames import DIAMETER_KEYS, AtomsTable, atoms_table, table_from_arrays

log = logging.getLogger(__name__)

#: Formats read through the C parser (others go to ASE).
C_FORMATS = ("extxyz", "xyz")
#: Suffixes ASE opens through a decompressor (the C parser reads plain files only).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
#: Column names ASE renames (``ase.io.extxyz.REV_PROPERTY_NAME_MAP``).
_ASE_NAMES = {"pos": "positions", "Z": "numbers", "species": "symbols", "charge": "charges"}


_ALL_TRUE = np.ones(3, dtype=bool)
_ALL_FALSE = np.zeros(3, dtype=bool)
_NO_LATTICE = np.zeros((3, 3))


class Unsupported(Exception):
    """The C parser cannot give ASE's frames for this input (the message says why): read it with ASE."""


@functools.lru_cache(maxsize=1)
def _calculator_names():
    """(per-atom names ASE gives a calculator or constraints, per-frame info keys ASE gives a calculator)."""
    from ase.calculators.calculator import all_properties
    from ase.io.extxyz import per_config_properties

    return frozenset(all_properties) | {"move_mask"}, frozenset(per_config_properties)


def _cextxyz():
    try:
        from extxyz import cextxyz
    except ImportError as err:  # the package, or its compiled library, missing
        raise Unsupported(f"the extxyz package's C parser cannot be imported ({err})") from None
    return cextxyz


def raw_frames(path, *, first_byte: int | None = None, end_byte: int | None = None, n_frames: int | None = None,
               at_most: bool = False):
    """The C parser's own view of frames: a list of ``(natoms, info, arrays)`` dicts.

    Parameters
    ----------
    path : str or os.PathLike
        A plain (uncompressed) extxyz file.
    first_byte, end_byte : int or None
        Start reading at ``first_byte``; when ``end_byte`` is given, the frames
        read must end exactly there (a byte range from a frame index).
    n_frames : int or None
        Read this many frames (None: to the end of the file).
    at_most : bool
        ``n_frames`` is a limit, not a promise (fewer at the end of the file is fine).

    Returns
    -------
    list of (int, dict, dict): atom count, comment-line dict (``Lattice``,
    ``pbc`` and ``Properties`` included), arrays by column name as written.

    Raises
    ------
    Unsupported
        the package missing, the file not openable by the C library, a frame
        it rejects or one of 0 atoms (its index from ``first_byte`` named),
        fewer frames than ``n_frames``, or frames not ending at ``end_byte``.
    """
    cx = _cextxyz()
    path = os.fspath(path)
    with open(path, "rb") as text:  # the frames delimited first: the C parser crashes on a frame of 0 atoms
        starts, stop = _frame_starts(text, first_byte or 0, end_byte, n_frames)
        if n_frames is not None and not at_most and len(starts) != n_frames:
            raise Unsupported(f"found {len(starts)} frames where {n_frames} were expected")
        if end_byte is not None and stop != end_byte:
            raise Unsupported(f"the frames end at byte {stop}, not at {end_byte}")
        fp = cx.cfopen(path, "r")
        if not fp:
            raise Unsupported(f"the C library cannot open {path!r}")
        try:
            frames = _read_c(cx, fp, text, starts)
            where = cx.cftell(fp)
        finally:
            cx.cfclose(fp)
    if starts and where != stop:
        raise Unsupported(f"the C parser's frames end at byte {where}, not at {stop}")
    return frames


def _frame_starts(text, first_byte: int, end_byte: int | None, n_frames: int | None):
    """(byte offset of every frame from ``first_byte``, end of the last), by a line scan of ``text``
    (up to ``n_frames`` frames or ``end_byte``); Unsupported on what ASE should judge: an atom
    count that is not an integer > 0, a frame cut short, a blank line before a frame."""
    text.seek(first_byte)
    readline = text.readline
    starts, position = [], first_byte
    while (n_frames is None or len(starts) < n_frames) and (end_byte is None or position < end_byte):
        line = readline()
        if not line:
            break
        if not line.strip():
            if (line + text.read(1 << 16)).strip():
                raise Unsupported(f"a blank line before frame {len(starts)} of the range")
            break  # blank lines at the end of the file
        try:
            n_atoms = int(line)
        except ValueError:
            raise Unsupported(f"frame {len(starts)} of the range: the atom-count line {line[:40]!r}") from None
        if n_atoms <= 0:
            raise Unsupported(f"frame {len(starts)} of the range has {n_atoms} atoms (not for the C parser)")
        size = len(line)
        for _ in range(n_atoms + 1):
            line = readline()
            if not line:
                raise Unsupported(f"frame {len(starts)} of the range is cut short")
            size += len(line)
        starts.append(position)
        position += size
    return starts, position


def _read_c(cx, fp, text, starts) -> list:
    """The C parser's dicts of the frames at byte offsets ``starts`` (consecutive) of open file ``fp``."""
    frames = []
    if starts:
        cx.cfseek(fp, starts[0], 0)
    for k, start in enumerate(starts):
        position = cx.cftell(fp)
        if position != start:
            raise Unsupported(f"the C parser's frame {k} of the range starts at byte {position}, not at {start}")
        try:  # the comment line by the first-character dispatch parser: twice as fast as libcleri's
            frames.append(cx.read_frame_dicts(fp, use_cleri=False))
            continue
        except Exception:  # ExtXYZError, EOFError and whatever the extension raises on bad text
            cx.cfseek(fp, position, 0)
        try:  # the grammar parser (the same language, by extxyz's own conformance tests)
            frames.append(cx.read_frame_dicts(fp))
            continue
        except Exception as err:
            why = f"the C parser rejects frame {k} of the range: {type(err).__name__}: {err}"
        comment = ase_comment(text, position)
        if comment is None:
            raise Unsupported(why)
        cx.cfseek(fp, position, 0)
        try:
            frames.append(cx.read_frame_dicts(fp, comment=comment))
        except Exception as err:
            raise Unsupported(f"{why}; with ASE's reading of its comment line: {type(err).__name__}: {err}") from None
    return frames


_UNQUOTED_PROPERTIES = re.compile(r'(^|\s)Properties=([^\s"]*[\[\]][^\s"]*)')


def ase_comment(text, position: int) -> str | None:
    """The comment line of the frame at byte ``position`` of ``text`` (a binary file) as ASE
    reads it, for the C parser, or None where that is not known.

    Handles the case ASE's writer produces for names with brackets: an unquoted
    ``Properties=...:c_diameter[1]:R:1...``, which the C grammar rejects and
    ASE's parser reads with the brackets dropped (``c_diameter1``). Any other
    bracket on the line: None (ASE's reader then reads the frame).
    """
    text.seek(position)
    text.readline()
    line = text.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    match = _UNQUOTED_PROPERTIES.search(line)
    if match is None:
        return None
    value = match.group(2).replace("[", "").replace("]", "")
    line = line[:match.start(2)] + value + line[match.end(2):]
    return None if "[" in line or "]" in line else line


def _geometry(k, natoms, info, arrays):
    """(cell (3, 3), pbc (3,), positions (n, 3)) of raw frame ``k`` in ASE's conventions; pops
    ``Lattice``, ``pbc`` and ``Properties`` from ``info``."""
    lattice = info.pop("Lattice", None)
    pbc = info.pop("pbc", None)
    info.pop("Properties", None)
    if lattice is None:
        cell = np.zeros((3, 3))
    else:
        lattice = np.asarray(lattice, dtype=np.float64)
        if lattice.shape != (3, 3):  # ASE wants 9 numbers; let it say so
            raise Unsupported(f"frame {k}: Lattice of shape {lattice.shape}")
        cell = lattice.T
    if pbc is None:
        pbc = _ALL_TRUE if lattice is not None else _ALL_FALSE
    elif not (isinstance(pbc, np.ndarray) and pbc.shape == (3,) and pbc.dtype == bool):
        try:
            pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        except (ValueError, TypeError):
            raise Unsupported(f"frame {k}: pbc={pbc!r} is not 1 or 3 flags") from None
    positions = arrays.get("pos")
    if positions is None or positions.dtype.kind != "f":
        raise Unsupported(f"frame {k}: no real 'pos' column")
    return cell, pbc, positions.reshape(natoms, 3)


def _numbers_of_symbols(symbols, k0=0) -> np.ndarray:
    """Atomic numbers of ``symbols`` (str array), capitalised as ASE does; Unsupported on an unknown one."""
    from ase.data import atomic_numbers

    unique, inverse = np.unique(symbols, return_inverse=True)
    table = np.empty(len(unique), dtype=np.int64)
    for u, symbol in enumerate(unique.tolist()):
        z = atomic_numbers.get(symbol.capitalize())
        if z is None:
            raise Unsupported(f"unknown chemical symbol {symbol!r}")
        table[u] = z
    return table[inverse.reshape(-1)]


@dataclass
class ExtxyzArrays:
    """Frames of an extxyz file in flat arrays, in ASE's conventions (module docstring).

    Attributes
    ----------
    n_atoms : (F,) int64
    positions : (N, 3) float64, angstrom, frame after frame
    numbers : (N,) int64, atomic numbers (0 for ``X``)
    cells : (F, 3, 3) float64, angstrom, rows are lattice vectors (zeros without ``Lattice``)
    pbc : (F, 3) bool
    arrays : dict from str to (N,) or (N, k) arrays
        Every other per-atom column (``c_q`` (N, 4), ``c_diameter[1]`` (N,), ...)
        that every frame with atoms holds with the same width, concatenated.
    info : list of dict
        Each frame's comment-line keys (without ``Lattice``, ``pbc``, ``Properties``).
    partial : dict from str to (int, list of str)
        Columns some frame with atoms lacks (or holds with another width): the
        first such frame and its column names.
    parts : dict from str to list of (int, ndarray)
        Per-frame pieces of the ``partial`` columns (frame, array).
    """

    n_atoms: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    arrays: dict
    info: list
    partial: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.n_atoms)

    def table(self, *, semiaxes=None, rotation_key: str | None = "c_q",
              rotation_type: str = "quaternion") -> AtomsTable:
        """The :class:`AtomsTable` of these frames (``reference.frames.table_from_arrays``).

        Parameters
        ----------
        semiaxes, rotation_key, rotation_type
            As :func:`einsum_workbench.reference.frames.atoms_table`.

        Raises
        ------
        ValueError
            a frame without the rotation array or the diameters (the frame,
            counted from the first of these frames, and its arrays named; the
            same words as ``atoms_table``), and as ``table_from_arrays``.
        """
        arrays = dict(self.arrays)
        if rotation_key is not None and rotation_key not in arrays:
            if rotation_key in self.partial:
                k, names = self.partial[rotation_key]
                raise ValueError(f"frame {k} has no {rotation_key!r} array holding rotations (or one of "
                                 f"another width); its arrays are {names}")
            if self.n_frames and int(self.n_atoms.sum()):
                k = int(np.flatnonzero(self.n_atoms)[0])
                raise ValueError(f"frame {k} has no {rotation_key!r} array holding rotations; its arrays are "
                                 f"{self._names(k)}")
        if semiaxes is None and not any(all(n in arrays for n in names) for names in DIAMETER_KEYS):
            arrays.update(self._mixed_diameters())
        return table_from_arrays(self.n_atoms, self.positions, self.numbers, self.cells, self.pbc, arrays,
                                 semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)

    def _names(self, k) -> list:
        return sorted(["numbers", "positions", *self.arrays, *(n for n, (f, _) in self.partial.items() if f != k)])

    def _mixed_diameters(self) -> dict:
        """Diameters of frames storing them under either name of :data:`DIAMETER_KEYS` (as
        ``atoms_table`` takes them), as the first name; ValueError naming a frame with neither."""
        first = np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)
        n_total = int(first[-1])
        out = {name: np.full(n_total, np.nan) for name in DIAMETER_KEYS[0]}
        covered = np.zeros(len(self.n_atoms), dtype=bool)
        covered[self.n_atoms == 0] = True
        for names in DIAMETER_KEYS:
            pieces = []
            for name in names:
                if name in self.arrays:
                    pieces.append({k: self.arrays[name][first[k]:first[k + 1]] for k in range(self.n_frames)})
                else:
                    pieces.append(dict(self.parts.get(name, ())))
            for k in sorted(set(pieces[0]) & set(pieces[1]) & set(pieces[2])):
                if covered[k] or any(np.ndim(p[k]) != 1 for p in pieces):
                    continue
                for target, p in zip(DIAMETER_KEYS[0], pieces):
                    out[target][first[k]:first[k + 1]] = p[k]
                covered[k] = True
        if not covered.all():
            k = int(np.argmin(covered))
            raise ValueError(f"frame {k} stores no diameters (looked for {DIAMETER_KEYS[0]} and "
                             f"{DIAMETER_KEYS[1]}); pass semiaxes=(l1, l2, l3) or a per-species dict")
        return out


def arrays_of_raw(frames) -> ExtxyzArrays:
    """:class:`ExtxyzArrays` of the C parser's frames (:func:`raw_frames`), in ASE's conventions.

    Raises
    ------
    Unsupported
        a frame ASE would read otherwise (no ``pos`` column, a ``Lattice`` that is
        not 9 numbers, a bad ``pbc``, an unknown symbol, no ``species`` nor ``Z``).
    """
    columns = {tuple(arrays) for _, _, arrays in frames}
    if len(columns) == 1:  # every frame with the same columns (the usual trajectory): column by column
        fast = _same_columns(frames, next(iter(columns)))
        if fast is not None:
            return fast
    return _frame_by_frame(frames)


def _same_columns(frames, names) -> ExtxyzArrays | None:
    """:func:`arrays_of_raw` of frames that all hold the columns ``names``, each column
    concatenated once; None where a column's width differs between frames."""
    calculator_columns, _ = _calculator_names()
    if "pos" not in names:
        raise Unsupported("no 'pos' column")
    n_frames = len(frames)
    n_atoms = np.fromiter((natoms for natoms, _, _ in frames), dtype=np.int64, count=n_frames)
    lattices, periodic, infos = [], [], []
    for k, (_, info, _) in enumerate(frames):
        lattice = info.pop("Lattice", None)
        pbc = info.pop("pbc", None)
        info.pop("Properties", None)
        if pbc is None:
            pbc = _ALL_TRUE if lattice is not None else _ALL_FALSE
        elif not (isinstance(pbc, np.ndarray) and pbc.shape == (3,) and pbc.dtype == bool):
            try:
                pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
            except (ValueError, TypeError):
                raise Unsupported(f"frame {k}: pbc={pbc!r} is not 1 or 3 flags") from None
        lattices.append(_NO_LATTICE if lattice is None else lattice)
        periodic.append(pbc)
        infos.append(info)
    try:
        cells = np.asarray(lattices, dtype=np.float64).reshape(n_frames, 3, 3).transpose(0, 2, 1)
    except ValueError:  # ASE wants 9 numbers; let it say so
        raise Unsupported("a Lattice that is not 3 x 3") from None
    n_total = int(n_atoms.sum())
    try:
        positions = np.concatenate([arrays["pos"] for _, _, arrays in frames])
        if positions.dtype.kind != "f" or positions.shape != (n_total, 3):
            raise Unsupported("a 'pos' column that is not 3 reals per atom")
        if "Z" in names:
            numbers = np.concatenate([arrays["Z"] for _, _, arrays in frames]).astype(np.int64).reshape(-1)
        elif "species" in names:
            numbers = _numbers_of_symbols(np.concatenate([arrays["species"] for _, _, arrays in frames]))
        else:
            raise Unsupported("neither a 'species' nor a 'Z' column")
        extras = {}
        for raw in names:
            name = _ASE_NAMES.get(raw, raw)
            if raw in ("pos", "Z", "species") or name in calculator_columns:
                continue
            extras[name] = np.concatenate([arrays[raw] for _, _, arrays in frames])
    except ValueError:  # widths that differ between frames
        return None
    if len(numbers) != n_total or any(len(v) != n_total for v in extras.values()):
        return None
    return ExtxyzArrays(n_atoms=n_atoms, positions=np.ascontiguousarray(positions, dtype=np.float64),
                        numbers=numbers, cells=np.ascontiguousarray(cells), pbc=np.asarray(periodic, dtype=bool),
                        arrays=extras, info=infos)


def _frame_by_frame(frames) -> ExtxyzArrays:
    """:func:`arrays_of_raw` of frames whose columns differ: piece by piece, a column some frame
    lacks kept in ``partial``/``parts``."""
    calculator_columns, _ = _calculator_names()
    n_frames = len(frames)
    n_atoms = np.empty(n_frames, dtype=np.int64)
    cells = np.empty((n_frames, 3, 3))
    pbc = np.empty((n_frames, 3), dtype=bool)
    positions, species, numbers, infos = [], [], [], []
    parts: dict = {}
    names_of: dict = {}
    by_z = False
    for k, (natoms, info, arrays) in enumerate(frames):
        cell, periodic, position = _geometry(k, natoms, info, arrays)
        n_atoms[k], cells[k], pbc[k] = natoms, cell, periodic
        positions.append(position)
        infos.append(info)
        z = arrays.get("Z")
        if z is not None:
            by_z = True
            numbers.append((k, np.asarray(z, dtype=np.int64).reshape(natoms)))
        elif "species" in arrays:
            species.append((k, arrays["species"].reshape(natoms)))
        elif natoms:
            raise Unsupported(f"frame {k}: neither a 'species' nor a 'Z' column")
        for name, value in arrays.items():
            if name in ("pos", "Z", "species"):
                continue
            name = _ASE_NAMES.get(name, name)
            if name in calculator_columns:
                continue
            parts.setdefault(name, []).append((k, value))
        if natoms:
            names_of[k] = arrays.keys()
    if by_z or len(species) != n_frames:
        per_frame = dict(numbers)
        for k, symbols in species:
            per_frame[k] = _numbers_of_symbols(symbols) if len(symbols) else np.zeros(0, np.int64)
        all_numbers = np.concatenate([per_frame.get(k, np.zeros(0, np.int64)) for k in range(n_frames)]) \
            if n_frames else np.zeros(0, np.int64)
    else:
        all_numbers = _numbers_of_symbols(np.concatenate([s for _, s in species])) if species else np.zeros(0, np.int64)
    with_atoms = [k for k in range(n_frames) if n_atoms[k]]
    complete, partial, partial_parts = {}, {}, {}
    for name, pieces in parts.items():
        pieces = [(k, v) for k, v in pieces if n_atoms[k]]
        widths = {v.shape[1:] for _, v in pieces}
        if len(pieces) == len(with_atoms) and len(widths) <= 1:
            complete[name] = np.concatenate([v for _, v in pieces]) if pieces else np.zeros(0)
            continue
        have = {k for k, _ in pieces}
        width = pieces[0][1].shape[1:] if pieces else ()
        k = next((k for k in with_atoms if k not in have), None)
        if k is None:
            k = next(k for k, v in pieces if v.shape[1:] != width)
        partial[name] = (k, sorted({"numbers", "positions", *(_ASE_NAMES.get(n, n) for n in names_of[k]
                                                            if n not in ("pos", "Z", "species"))}))
        partial_parts[name] = pieces
    return ExtxyzArrays(
        n_atoms=n_atoms,
        positions=np.concatenate(positions).reshape(-1, 3) if positions else np.zeros((0, 3)),
        numbers=all_numbers, cells=cells, pbc=pbc, arrays=complete, info=infos, partial=partial,
        parts=partial_parts)


def read_arrays(path, *, first_byte: int | None = None, end_byte: int | None = None,
                n_frames: int | None = None) -> ExtxyzArrays:
    """Frames of a plain extxyz file (all, or the byte range of some) into flat arrays, no ``ase.Atoms``.

    Parameters
    ----------
    path : str or os.PathLike
    first_byte, end_byte, n_frames
        As :func:`raw_frames` (a frame range's bytes from a frame index, e.g.
        ``featurize.trajectory.FrameIndex.byte_range``).

    Returns
    -------
    ExtxyzArrays, equal to what ASE's reader gives for the same frames.

    Raises
    ------
    Unsupported
        the C parser is missing or cannot give ASE's frames (why named): read with ASE.
    """
    return arrays_of_raw(raw_frames(path, first_byte=first_byte, end_byte=end_byte, n_frames=n_frames))


class FrameReadError(ValueError):
    """A frame ASE's reader cannot read; ``frame`` is its index (in the file for ``index=":"``,
    else within the selection)."""

    def __init__(self, frame: int, message: str):
        super().__init__(message)
        self.frame = frame

    def __reduce__(self):
        return (type(self), (self.frame, self.args[0]))


def _frames_with_ase(path, index, format):
    """ASE's frames of ``path`` (a list), an unreadable one named by :class:`FrameReadError`."""
    import ase.io

    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return [ase.io.read(path, index=int(index), format=format)]
    frames = []
    iterator = ase.io.iread(path, index=index, format=format)
    while True:
        try:
            frames.append(next(iterator))
        except StopIteration:
            return frames
        except Exception as err:  # ASE's parsers raise many kinds; all mean this frame is unreadable
            frame = len(frames)
            if index in (":", None) and format in C_FORMATS:
                frame = max(frame, _bad_header(path) or 0)  # ASE reads every header before the first frame
            where = f"frame {frame}" + ("" if index in (":", None) else f" of the selection {index!r}")
            raise FrameReadError(frame, f"{where} of {os.fspath(path)!r} cannot be read: "
                                        f"{type(err).__name__}: {err}") from None


def _bad_header(path) -> int | None:
    """Index of the first frame of a plain xyz file whose atom-count line is not an integer or
    whose atom lines are cut short (error path only), or None."""
    try:
        with open(path, "rb") as f:
            frame = 0
            while line := f.readline():
                if not line.strip():
                    return None
                try:
                    n_atoms = int(line)
                except ValueError:
                    return frame
                if n_atoms < 0 or len([f.readline() for _ in range(n_atoms + 1)][-1]) == 0:
                    return frame
                frame += 1
    except OSError:
        return None
    return None


def read_table(path, *, semiaxes=None, rotation_key: str | None = "c_q", rotation_type: str = "quaternion",
               index=":") -> AtomsTable:
    """The :class:`AtomsTable` of an extxyz file's frames: :func:`read_arrays` where the C parser
    gives ASE's frames, ``reference.frames.atoms_table`` of ASE's frames otherwise.

    Parameters
    ----------
    path : str or os.PathLike
    semiaxes, rotation_key, rotation_type : as ``atoms_table``
    index : ":" (all frames) or anything ASE's ``index`` takes (then ASE's reader is used)

    Raises
    ------
    FileNotFoundError
        naming the path.
    FrameReadError
        a frame neither parser reads (the frame named).
    ValueError
        as ``atoms_table`` (frame and atom named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no extxyz file at {path!r}")
    if index == ":" and not path.endswith(COMPRESSED_SUFFIXES):
        try:
            read = read_arrays(path)
        except Unsupported as why:
            log.debug("reading %s with ASE: %s", path, why)
        else:
            return read.table(semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    return atoms_table(_frames_with_ase(path, index, "extxyz"), semiaxes=semiaxes, rotation_key=rotation_key,
                       rotation_type=rotation_type)


def _atoms_of_raw(frames) -> list:
    """``ase.Atoms`` of the C parser's frames, as ASE's reader builds them."""
    from ase import Atoms

    calculator_columns, calculator_info = _calculator_names()
    out = []
    for k, (natoms, info, arrays) in enumerate(frames):
        cell, periodic, positions = _geometry(k, natoms, info, arrays)
        if any(key in calculator_info for key in info) or \
                any(_ASE_NAMES.get(name, name) in calculator_columns for name in arrays):
            raise Unsupported(f"frame {k} holds calculator results or constraints")
        if "Z" in arrays:
            numbers = np.asarray(arrays["Z"], dtype=np.int64).reshape(natoms)
        elif "species" in arrays:
            numbers = _numbers_of_symbols(arrays["species"]) if natoms else np.zeros(0, np.int64)
        else:
            raise Unsupported(f"frame {k}: neither a 'species' nor a 'Z' column")
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=periodic, info=info)
        for name, value in arrays.items():
            if name not in ("pos", "Z", "species"):
                atoms.new_array(_ASE_NAMES.get(name, name), value)
        out.append(atoms)
    return out


def _c_index(index):
    """(stop to read up to or None, selection slice or int) of an ASE-style index, or None if unsupported."""
    if isinstance(index, str):
        from ase.io.formats import string2index

        try:
            index = string2index(index)
        except ValueError:
            return None
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return (int(index) + 1 if index >= 0 else None), int(index)
    if isinstance(index, slice):
        ends = [v for v in (index.start, index.stop) if v is not None]
        if any(v < 0 for v in ends) or (index.step is not None and index.step < 0):
            return None, index
        return index.stop, index
    return None


def read_frames_fast(path, index=":", format: str | None = None) -> list:
    """Frames of a trajectory as ``ase.Atoms``, through the C parser where it gives ASE's frames.

    Parameters
    ----------
    path : str or os.PathLike
    index : str, int or slice
        ASE's frame selection (``":"``, ``"10:20"``, ``-1``, ``slice(0, 5)``).
    format : str or None
        ASE format name; None: ``extxyz`` for ``.xyz``/``.extxyz`` files, else ASE guesses.

    Returns
    -------
    list of ase.Atoms (a list even for an integer index), equal to
    ``ase.io.read(path, index, format="extxyz")``: numbers, positions, cell, pbc,
    per-atom arrays, info.

    Raises
    ------
    FileNotFoundError
        naming the path.
    IndexError
        an integer index past the frames.
    FrameReadError
        a frame neither parser reads (ASE's message, the frame named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no trajectory file at {path!r}")
    fmt = format
    if fmt is None and path.endswith((".xyz", ".extxyz")):
        fmt = "extxyz"
    why = None
    plan = _c_index(index)
    if fmt not in C_FORMATS:
        why = f"format {fmt!r} is not (ext)xyz"
    elif path.endswith(COMPRESSED_SUFFIXES):
        why = "the file is compressed"
    elif plan is None:
        why = f"index {index!r} is read by ASE"
    else:
        stop, selection = plan
        try:
            frames = _atoms_of_raw(raw_frames(path, n_frames=stop, at_most=True))
        except Unsupported as err:
            why = str(err)
        else:
            if isinstance(selection, int):
                if not -len(frames) <= selection < len(frames):
                    raise IndexError(f"frame index {index!r} is out of range: {path!r} has {len(frames)} frames")
                return [frames[selection]]
            return frames[selection]
    log.debug("reading %s with ASE: %s", path, why)
    return _frames_with_ase(path, index, fmt if fmt != "xyz" else "extxyz")


def read_frames(path, index=":"):
    """Read extxyz frames: libAtoms' C parser where it gives ASE's frames, else
    ``ase.io.read`` (:func:`einsum_workbench.reference.readers.read_frames_fast`).

    Parameters
    ----------
    path : str or os.PathLike
        An extended-XYZ file.
    index : str, int or slice
        ASE's frame selection, e.g. ``":"`` (all), ``":20"`` or ``0``.

    Returns
    -------
    list of ase.Atoms (always a list, even for a single integer index), equal
    to what ``ase.io.read(path, index, format="extxyz")`` gives.

    Raises
    ------
    FileNotFoundError
        naming the path if it does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no extxyz file at {os.fspath(path)!r}")
    return read_frames_fast(path, index=index, format="extxyz")

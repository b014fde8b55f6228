"""Lazy, chunked reading of a trajectory: frame ranges that each worker reads itself.

Plain (ext)xyz files are indexed once by a line scan (the byte offset of every
frame: the atom-count line, the comment line, that many atom lines), so a
worker seeks to its own frame range and parses only those bytes:
:func:`read_chunk` with libAtoms' C parser straight into flat arrays
(``reference.readers.read_arrays``, about 20 us per frame of
``ellipsoids.xyz`` against 145 us for ASE's reader), ASE's extxyz reader
(:func:`read_frames`) where the C parser cannot give ASE's frames (the reason
logged at DEBUG). ``ase.io.read(path, index="a:b")`` would scan the file from its
start for every chunk (0.1 s for a 100-frame slice at frame 6,000 of
``ellipsoids.xyz``; quadratic in the trajectory length over all chunks), the
line scan takes 10 ms for all 6,826 frames. Every other format ASE reads
(compressed files included) goes through ``ase.io.iread(path, index=slice(a, b))``
in the worker, and is counted once by the client with ``ase.io.iread``.

Nothing holds the whole file: the scan streams it line by line, the index is
8 bytes per frame, a worker reads its chunk's bytes only.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass

import numpy as np

#: Formats whose frames the line scan can delimit (atom count, comment, atoms).
XYZ_FORMATS = ("extxyz", "xyz")
#: Suffixes ASE opens through a decompressor: byte offsets would not apply.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")

_FRAME_IN_MESSAGE = re.compile(r"\bframe (\d+)")
log = logging.getLogger(__name__)


class FrameError(ValueError):
    """A frame that cannot be read or featurized; ``frame`` is its index in the trajectory."""

    def __init__(self, frame: int, message: str):
        super().__init__(message)
        self.frame = frame

    def __reduce__(self):  # picklable across Dask workers
        return (type(self), (self.frame, self.args[0]))


@dataclass(frozen=True)
class FrameIndex:
    """Where the frames of a trajectory are.

    Attributes
    ----------
    path : str
        Absolute path of the trajectory.
    format : str
        ASE format name (``ase.io.formats.filetype``).
    n_frames : int
        Frames readable from the start of the file (before ``error``, if any).
    offsets : (n_frames + 1,) int64 or None
        Byte offset of each frame and of the end of the last one (xyz formats),
        None where frames are read with ``ase.io.iread``.
    error : FrameError or None
        The first frame the scan could not delimit; frames from it on are not planned.
    """

    path: str
    format: str
    n_frames: int
    offsets: np.ndarray | None
    error: FrameError | None = None

    def byte_range(self, start: int, stop: int):
        """(first byte, end byte) of frames ``start:stop``, or (None, None) without offsets."""
        if self.offsets is None:
            return None, None
        return int(self.offsets[start]), int(self.offsets[stop])


def trajectory_format(path) -> str:
    """ASE's format name for ``path``.

    Raises
    ------
    FileNotFoundError
        naming the path when there is no such file.
    ValueError
        when ASE cannot tell the format (its message, with the path).
    """
    import ase.io.formats

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no trajectory file at {path!r}")
    try:
        return ase.io.formats.filetype(path, guess=True)
    except Exception as err:  # ASE raises UnknownFileTypeError and plain errors alike
        raise ValueError(f"cannot tell the format of trajectory {path!r}: {err}") from None


def scan_xyz(path) -> FrameIndex:
    """Byte offsets of every frame of a plain (ext)xyz file, streamed line by line.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    FrameIndex with ``offsets``; ``error`` names the first frame whose
    atom-count line is not a non-negative integer or whose atom lines are
    cut short (frames before it are indexed). Blank lines at the end are ignored.
    """
    path = os.path.abspath(os.fspath(path))
    offsets = []
    error = None
    with open(path, "rb") as f:
        position = 0
        while True:
            line = f.readline()
            if not line.strip():
                rest = line + f.read(1 << 16)
                if not rest.strip():
                    break  # end of file, possibly after blank lines
                error = FrameError(len(offsets), f"frame {len(offsets)} (byte {position}) is preceded by a blank line; "
                                                 "an (ext)xyz frame starts with its atom count")
                break
            try:
                n_atoms = int(line)
            except ValueError:
                n_atoms = -1
            if n_atoms < 0:
                text = line[:60].decode(errors="replace").strip()
                error = FrameError(len(offsets), f"frame {len(offsets)} (byte {position}): the atom-count line "
                                                 f"{text!r} is not a non-negative integer")
                break
            lines = [f.readline() for _ in range(n_atoms + 1)]
            if not lines[-1]:
                error = FrameError(len(offsets), f"frame {len(offsets)} (byte {position}) announces {n_atoms} atoms "
                                                 "but the file ends before them")
                break
            offsets.append(position)
            position = f.tell()
    offsets.append(position)  # end of the last indexed frame (the start of a bad one)
    return FrameIndex(path=path, format="extxyz", n_frames=len(offsets) - 1, offsets=np.asarray(offsets, np.int64),
                      error=error)


def index_frames(path, format: str | None = None) -> FrameIndex:
    """Plan-ready index of a trajectory: byte offsets for plain xyz files, a frame count otherwise.

    Parameters
    ----------
    path : str or os.PathLike
    format : str or None
        ASE format name; None: guessed by ASE from the file.

    Returns
    -------
    FrameIndex

    Raises
    ------
    FileNotFoundError
        naming the path.
    ValueError
        unknown format.
    """
    path = os.path.abspath(os.fspath(path))
    fmt = format or trajectory_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no trajectory file at {path!r}")
    if fmt in XYZ_FORMATS and not path.endswith(COMPRESSED_SUFFIXES):
        return scan_xyz(path)
    import ase.io

    count, error = 0, None
    iterator = ase.io.iread(path, index=":", format=fmt)
    while True:
        try:
            next(iterator)
        except StopIteration:
            break
        except Exception as err:  # the reader's own error, whatever its kind
            error = FrameError(count, f"frame {count} cannot be read: {type(err).__name__}: {err}")
            break
        count += 1
    return FrameIndex(path=path, format=fmt, n_frames=count, offsets=None, error=error)


def read_frames(index_or_path, start: int, stop: int, *, format: str | None = None, byte_range=(None, None),
                max_frames: int | None = None):
    """The frames ``start:stop`` of a trajectory as a list of ``ase.Atoms``.

    Parameters
    ----------
    index_or_path : str
        Path of the trajectory.
    start, stop : int
        Frame range, ``0 <= start < stop``.
    format : str or None
        ASE format name (None: guessed).
    byte_range : (int, int) or (None, None)
        Bytes of these frames (from :meth:`FrameIndex.byte_range`): read and
        parsed alone; (None, None): ``ase.io.iread`` with a slice.
    max_frames : int or None
        Stop after this many frames (the byte range may hold more).

    Returns
    -------
    list of ase.Atoms, ``stop - start`` of them.

    Raises
    ------
    FrameError
        naming the trajectory's frame index that ASE could not parse, or a
        range that holds fewer frames than planned.
    """
    import ase.io

    path = os.fspath(index_or_path)
    first, end = byte_range
    if first is not None:
        with open(path, "rb") as f:
            f.seek(first)
            text = f.read(end - first).decode("utf-8", errors="replace")
        iterator = ase.io.iread(io.StringIO(text), index=":", format="extxyz")
    else:
        iterator = ase.io.iread(path, index=slice(start, stop), format=format)
    frames = []
    while max_frames is None or len(frames) < max_frames:
        try:
            frames.append(next(iterator))
        except StopIteration:
            break
        except Exception as err:  # ASE's parsers raise many kinds; all mean this frame is unreadable
            frame = start + len(frames)
            raise FrameError(frame, f"frame {frame} cannot be read: {type(err).__name__}: {err}") from None
    if max_frames is None and len(frames) != stop - start:
        frame = start + len(frames)
        raise FrameError(frame, f"frames {start}-{stop - 1}: expected {stop - start} frames, read {len(frames)} "
                                f"(frame {frame} is missing or unreadable)")
    return frames


def read_chunk(path, start: int, stop: int, *, format: str | None = None, byte_range=(None, None),
               max_frames: int | None = None):
    """The frames ``start:stop`` of a trajectory, as flat arrays where the C parser reads them.

    Parameters
    ----------
    As :func:`read_frames`.

    Returns
    -------
    ``reference.readers.ExtxyzArrays`` (a plain extxyz byte range the C parser
    reads as ASE would; ``.table(...)`` gives the pipeline's ``AtomsTable``), or
    a list of ``ase.Atoms`` from :func:`read_frames` (every other format, and
    the fallback: the ``extxyz`` package missing, a frame it rejects, ...).

    Raises
    ------
    FrameError
        as :func:`read_frames` (a frame the C parser rejects is read by ASE,
        whose error names it).
    """
    first, end = byte_range
    if first is not None:
        from einsum_workbench.reference.readers import Unsupported, read_arrays

        wanted = stop - start if max_frames is None else min(max_frames, stop - start)
        try:
            return read_arrays(os.fspath(path), first_byte=first, n_frames=wanted,
                               end_byte=end if wanted == stop - start else None)
        except Unsupported as why:
            log.debug("frames %d-%d of %s: read with ASE: %s", start, stop - 1, path, why)
    return read_frames(path, start, stop, format=format, byte_range=byte_range, max_frames=max_frames)


def globalise_frames(message: str, start: int) -> str:
    """Rewrite "frame k" (k counted within a chunk) as the trajectory's frame ``start + k``."""
    return _FRAME_IN_MESSAGE.sub(lambda m: f"frame {start + int(m.group(1))}", message)


def first_frame_in(message: str) -> int | None:
    """The first "frame k" number of a message, or None."""
    match = _FRAME_IN_MESSAGE.search(message)
    return int(match.group(1)) if match else None

"""The on-disk feature store of :func:`featurize`: one Zarr (v3) group per run directory.

Layout (every node is plain Zarr: ``zarr.open_group(DIR)`` and
``dask.array.from_zarr(DIR, component="chunks/<name>/values")`` read it)::

    DIR/zarr.json                    root group; attrs: "einsum_workbench_store" (format 1), "config"
                                     (descriptor, backend, hypers, orthonormal, self_pairs, semiaxes,
                                     rotation_key, rotation_type, chunk_frames, trajectory identity),
                                     "n_frames", "versions" (of the run that created it), "created"
    DIR/chunks/<start>-<stop>/       one group per finished chunk of frames start..stop-1 (10-digit,
                                     zero-padded); attrs: start, stop, done, seconds, host, pid,
                                     threads (Numba and BLAS threads seen inside the task), versions
        values, properties           power spectrum: (frames, F) float64 and (F, 7) int32 labels
        blocks/<types_center>_<l>/   centre density: values (S, 2l+1, Q) float64, samples (S, 2) int32
                                     (system = the trajectory's frame index, centre atom), properties (Q, 2)
    DIR/partial/                     chunks being written (``<name>.<random>``); safe to delete
                                     when no run holds the lock
    DIR/featurize.lock               the run lock (``filelock``): the pid, host, start time and
                                     command (JSON) of the last run that held it; the OS lock on
                                     it, not the file, says whether a run goes

A chunk is written whole under ``partial/``, its files synced, then moved to
``chunks/<start>-<stop>`` with one ``os.rename`` (atomic on one file system):
a reader sees a chunk entirely or not at all, and a chunk written twice (a
task run again after its worker died) keeps the first copy. The "done"
attribute is written last, before the move. Chunks are encoded by zarr in
memory and their files written and synced directly (a tenth of the time of
zarr's folder store on chunks this small); array chunk files are named
``c.0.0`` (the ``"."`` separator of zarr's default chunk-key encoding, in each
array's metadata: no ``c/0/`` folders to create and sync).

One run at a time writes a store: :func:`locked` holds an exclusive lock on
``DIR/featurize.lock`` (``filelock``: an OS lock, released by the kernel when
the process ends, even killed) for the whole run, and a second run is refused
with :class:`StoreLockedError` naming the holder, or waits for it (``wait=``).
Reading a store (:func:`open_store`) takes no lock.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import socket
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

#: Version of this layout, in the root group's attrs.
STORE_FORMAT = 1
CHUNKS = "chunks"
PARTIAL = "partial"
POWER_SPECTRUM_NAMES = ("types_center", "n_1_a", "neighbor_types_1_a", "k_2", "n_1_b", "neighbor_types_1_b", "l_2")
DENSITY_PROPERTY_NAMES = ("n", "neighbor_types")
DENSITY_SAMPLE_NAMES = ("type", "center")


#: The run lock's file, inside the store.
LOCK_FILE = "featurize.lock"


class StoreMismatchError(ValueError):
    """An existing store was written with other settings than this run's."""


class StoreLockedError(OSError):
    """Another run holds the store's lock.

    Attributes
    ----------
    out : str, the store
    holder : dict, what the lock file says of the run holding it (pid, host, started, command;
        empty if it could not be read)
    """

    def __init__(self, out: str, holder: dict, message: str):
        super().__init__(message)
        self.out, self.holder = out, holder

    def __reduce__(self):
        return (type(self), (self.out, self.holder, self.args[0]))


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError("the feature store needs zarr >= 3: pip install 'einsum-workbench[distributed]'") from None
    return zarr


def chunk_name(start: int, stop: int) -> str:
    """Name of the chunk of frames ``start:stop``: ``"0000000000-0000000500"``."""
    return f"{start:010d}-{stop:010d}"


def parse_chunk_name(name: str):
    """(start, stop) of a chunk name, or None for anything else."""
    parts = name.split("-")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def plain(value):
    """``value`` as JSON would give it back (tuples to lists, NumPy scalars to Python)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot record {value!r} ({type(value).__name__}) in the store's attributes")


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    import platform
    from importlib import metadata

    found = [("python", platform.python_version())]
    for name in ("einsum-workbench", "numpy", "numba", "ase", "zarr", "dask", "distributed"):
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def versions() -> dict:
    """Versions of Python and of the packages that shape the numbers and the store (read once per process)."""
    return dict(_versions())


def _is_store(path: str) -> bool:
    meta = os.path.join(path, "zarr.json")
    if not os.path.isfile(meta):
        return False
    with open(meta) as f:
        return "einsum_workbench_store" in json.load(f).get("attributes", {})


def differences(stored: dict, asked: dict) -> list[str]:
    """Lines ``key: store has X, this run asks Y`` for every setting that differs."""
    lines = []
    for key in sorted(set(stored) | set(asked)):
        if stored.get(key) != asked.get(key):
            lines.append(f"{key}: the store has {stored.get(key)!r}, this run asks {asked.get(key)!r}")
    return lines


def _holder_text() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "command": " ".join(getattr(sys, "orig_argv", sys.argv))[:500]}).encode()


def _write_holder(path: str) -> None:
    """This run's pid, host, start and command into the lock file it holds (through a descriptor
    of its own: closing it leaves filelock's ``flock`` in place)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _holder_text())
    finally:
        os.close(fd)


def lock_holder(out) -> dict:
    """What the lock file of the store at ``out`` says of the run holding it (pid, host, started,
    command), or {} when there is none or it cannot be read (a run just starting)."""
    try:
        with open(os.path.join(os.fspath(out), LOCK_FILE)) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def check_wait(wait) -> float:
    """``wait`` as float seconds; ValueError naming it unless it is a number >= 0 (``math.inf`` allowed)."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float, np.integer, np.floating)) or not wait >= 0:
        raise ValueError(f"wait must be seconds >= 0 (0: refuse a store in use at once, math.inf: wait until "
                         f"it is free), got {wait!r}")
    return float(wait)


def refuse_foreign(out) -> None:
    """Raise StoreMismatchError if ``out`` is a non-empty folder that is not a feature store
    (checked before anything is written into it)."""
    out = os.fspath(out)
    if os.path.isdir(out) and set(os.listdir(out)) - {LOCK_FILE} and not _is_store(out):
        raise StoreMismatchError(f"--out {out!r} is a non-empty folder that is not an einsum-workbench "
                                 "feature store; give a new or empty folder")


@contextmanager
def locked(out, wait: float = 0.0):
    """Hold the run lock of the store at ``out`` for the block (the folder is created if need be).

    Parameters
    ----------
    out : str or os.PathLike
        The store's folder.
    wait : float >= 0
        Seconds to wait while another run holds the lock; 0: refuse at once;
        ``math.inf``: wait until it is free.

    Raises
    ------
    StoreLockedError
        another run holds the lock (after ``wait`` seconds): the store and that
        run's pid, host, start time and command named.
    StoreMismatchError
        ``out`` is a non-empty folder that is not a store (nothing written into it).
    ValueError
        a bad ``wait``.
    """
    from filelock import FileLock, Timeout

    wait = check_wait(wait)
    out = os.fspath(out)
    refuse_foreign(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    lock = FileLock(path)
    try:
        if wait == 0:
            lock.acquire(blocking=False)
        else:
            lock.acquire(timeout=-1 if math.isinf(wait) else wait, poll_interval=min(0.5, max(0.01, wait / 20)))
    except Timeout:
        holder = lock_holder(out)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
               f"{holder.get('command')}") if holder else "its details not yet written"
        waited = f" (waited {wait:g} s)" if wait else ""
        raise StoreLockedError(out, holder, f"the store at {out!r} is in use by another featurize run ({who}){waited}; "
                                            "wait for it to end, pass wait=SECONDS to wait for it, or use "
                                            "another --out") from None
    try:
        _write_holder(path)
        yield
    finally:
        lock.release()


def prepare_store(out, config: dict, n_frames: int) -> dict:
    """Create the store at ``out``, or check that the existing one has this run's settings.

    Parameters
    ----------
    out : str or os.PathLike
        Run directory (created with its parents).
    config : dict
        The run's settings (JSON values); compared key by key with a stored one.
    n_frames : int
        Frames of the trajectory (planned).

    Returns
    -------
    dict: the root group's attributes.

    Raises
    ------
    StoreMismatchError
        ``out`` holds a store written with other settings (each difference
        named), or is a non-empty folder that is not a store.
    """
    zarr = _zarr()
    out = os.fspath(out)
    config = plain(config)
    if os.path.isdir(out) and set(os.listdir(out)) - {LOCK_FILE}:
        if not _is_store(out):
            raise StoreMismatchError(f"--out {out!r} is a non-empty folder that is not an einsum-workbench "
                                     "feature store; give a new or empty folder")
        attrs = dict(zarr.open_group(out, mode="r").attrs)
        lines = differences(attrs.get("config", {}), config)
        if attrs.get("n_frames") != n_frames and not lines:
            lines.append(f"n_frames: the store has {attrs.get('n_frames')!r}, this run finds {n_frames!r}")
        if lines:
            raise StoreMismatchError(f"the store at {out!r} was written with other settings; use another --out "
                                     "or delete it to start over:\n  " + "\n  ".join(lines))
        return attrs
    os.makedirs(out, exist_ok=True)
    root = zarr.open_group(out, mode="a")  # "w" would delete the lock file beside it
    root.require_group(CHUNKS)
    root.require_group(PARTIAL).attrs["note"] = "chunks being written; safe to delete when no run is going"
    attrs = {"einsum_workbench_store": STORE_FORMAT, "config": config, "n_frames": int(n_frames),
             "versions": versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    root.attrs.update(attrs)
    _sync_tree(out)
    return attrs


def clean_partial(out) -> int:
    """Delete chunks left half-written by an earlier run; returns how many."""
    folder = os.path.join(os.fspath(out), PARTIAL)
    removed = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def finished_chunks(out) -> list[tuple[int, int]]:
    """Sorted (start, stop) of the chunks whose group is in place and marked done."""
    folder = os.path.join(os.fspath(out), CHUNKS)
    found = []
    if not os.path.isdir(folder):
        return found
    for name in os.listdir(folder):
        span = parse_chunk_name(name)
        if span is not None and _chunk_done(os.path.join(folder, name)):
            found.append(span)
    return sorted(found)


def _chunk_done(path) -> bool:
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            return bool(json.load(f).get("attributes", {}).get("done"))
    except (OSError, ValueError):
        return False


def is_finished(out, start: int, stop: int) -> bool:
    """Whether the chunk of frames ``start:stop`` is in the store."""
    return _chunk_done(os.path.join(os.fspath(out), CHUNKS, chunk_name(start, stop)))


#: Chunk files named ``c.0.0`` beside the array's ``zarr.json`` (no ``c/0/`` folders to create and sync).
_CHUNK_KEYS = {"name": "default", "separator": "."}


def _put(group, name, data):
    data = np.ascontiguousarray(data)
    group.create_array(name, data=data, chunks=tuple(max(1, s) for s in data.shape), chunk_key_encoding=_CHUNK_KEYS)


def _sync_tree(path):
    """fsync every file and folder under ``path`` (the chunk survives a crash once moved)."""
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(folder)


def _sync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_chunk(arrays: dict, attrs: dict) -> dict:
    """The chunk's Zarr files, ``{relative path: bytes}``, encoded by zarr in memory (the
    bytes zarr would write to a folder: same metadata, codecs, chunk keys)."""
    from zarr.storage import MemoryStore

    zarr = _zarr()
    files: dict = {}
    group = zarr.create_group(MemoryStore(store_dict=files), attributes=attrs)
    for name, data in arrays.items():
        *parents, leaf = name.split("/")
        parent = group
        for p in parents:
            parent = parent.require_group(p)
        _put(parent, leaf, data)
    # the group's own metadata (with "done") last: written to disk after every array
    return dict(sorted(((key, value.to_bytes()) for key, value in files.items()), key=lambda kv: kv[0] == "zarr.json"))


def warm_writer() -> None:
    """Import zarr and encode a one-value chunk in memory, nothing written: a process's first
    :func:`write_chunk` then costs what the others do (zarr's import and first encoding take
    about half a second).

    Raises
    ------
    ImportError
        zarr is not installed (naming the extra to install).
    """
    _encode_chunk({"values": np.zeros((1, 1))}, {"done": True})


def _write_files(folder: str, files: dict) -> None:
    """Write ``files`` (relative path -> bytes) under ``folder`` (new), then sync every file and folder."""
    folders = {folder}
    for key in files:
        parts = key.split("/")[:-1]
        folders.update(os.path.join(folder, *parts[:k]) for k in range(1, len(parts) + 1))
    for path in sorted(folders, key=len):
        os.makedirs(path, exist_ok=True)
    for key, data in files.items():
        fd = os.open(os.path.join(folder, *key.split("/")), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    _sync_tree(folder)


def write_chunk(out, start: int, stop: int, arrays: dict, attrs: dict) -> bool:
    """Write one chunk atomically: whole under ``partial/``, then renamed into ``chunks/``.

    The chunk's Zarr nodes are encoded by zarr in memory and written out as
    plain files (each synced), which costs a tenth of zarr's own folder store on
    small chunks; the files are the ones zarr writes.

    Parameters
    ----------
    out : run directory made by :func:`prepare_store`
    start, stop : int, the chunk's frame range
    arrays : dict of name -> ndarray; a name may hold "/" (nested groups)
    attrs : dict of JSON values, recorded on the chunk's group with
        ``start``, ``stop``, ``host``, ``pid`` and ``done``

    Returns
    -------
    bool: True if this call put the chunk in place, False if it was already
    there (written by an earlier attempt; the copy in place is kept).
    """
    out = os.fspath(out)
    final = os.path.join(out, CHUNKS, chunk_name(start, stop))
    if _chunk_done(final):
        return False
    files = _encode_chunk(arrays, plain({**attrs, "start": int(start), "stop": int(stop),
                                         "host": socket.gethostname(), "pid": os.getpid(), "done": True}))
    temporary = os.path.join(out, PARTIAL, f"{chunk_name(start, stop)}.{uuid.uuid4().hex}")
    try:
        _write_files(temporary, files)
        try:
            os.rename(temporary, final)
        except OSError:
            if _chunk_done(final):
                return False  # another attempt finished first: identical numbers, keep that one
            raise
        _sync_dir(os.path.dirname(final))
        return True
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


# ---------------------------------------------------------------- reading


@dataclass
class StoredFeatures:
    """The finished chunks of a feature store, read back and put side by side.

    Attributes
    ----------
    path : str
    config : dict
        The run's settings (descriptor, backend, hypers, ...).
    n_frames : int
        Frames planned (the trajectory's).
    finished, missing : list of (start, stop)
        Chunks in the store, and planned chunks not (yet) in it.
    frames : (n,) int64
        The trajectory's frame index of every row of ``values`` (power
        spectrum), or every frame covered (density).
    values : (n, F) float64 or None
        Power spectrum: per-structure features, columns the union over
        chunks (zeros where a chunk lacks a species, as one run over all
        frames gives), equal to ``pipeline.power_spectrum`` of those frames.
    properties : (F, 7) int32 or None
        Labels of the columns, named by ``names``.
    blocks : dict or None
        Centre density: ``{(types_center, l): (values (S, 2l+1, Q), samples (S, 2), properties (Q, 2))}``.
    versions : dict
        Versions of the run that created the store.
    """

    path: str
    config: dict
    n_frames: int
    finished: list
    missing: list
    frames: np.ndarray
    values: np.ndarray | None = None
    properties: np.ndarray | None = None
    names: tuple = POWER_SPECTRUM_NAMES
    blocks: dict | None = None
    versions: dict = field(default_factory=dict)

    @property
    def descriptor(self) -> str:
        return self.config["descriptor"]

    def tensormap(self):
        """The centre density as AniSOAP's metatensor TensorMap (keys (types_center, angular_channel))."""
        if self.blocks is None:
            raise ValueError(f"the store at {self.path!r} holds a {self.descriptor}, not a centre density")
        from metatensor import Labels, TensorBlock, TensorMap

        keys, blocks = [], []
        for (tc, l), (values, samples, properties) in sorted(self.blocks.items()):
            keys.append((tc, l))
            blocks.append(TensorBlock(
                values=values, samples=Labels(list(DENSITY_SAMPLE_NAMES), samples),
                components=[Labels(["spherical_component_m"], np.arange(-l, l + 1, dtype=np.int32).reshape(-1, 1))],
                properties=Labels(list(DENSITY_PROPERTY_NAMES), properties)))
        return TensorMap(Labels(["types_center", "angular_channel"], np.asarray(keys, np.int32).reshape(-1, 2)), blocks)


def planned_chunks(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """(start, stop) of every chunk: ``chunk_frames`` frames each, the last one shorter."""
    return [(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def iter_chunks(path):
    """Yield ``(start, stop, zarr.Group)`` of every finished chunk, in frame order (one at a time)."""
    zarr = _zarr()
    for start, stop in finished_chunks(path):
        yield start, stop, zarr.open_group(os.path.join(os.fspath(path), CHUNKS, chunk_name(start, stop)), mode="r")


def _union_rows(tables, order_columns):
    """Sorted unique rows of several (k, c) int tables; ``order_columns``: most significant first."""
    rows = np.unique(np.vstack(tables), axis=0) if tables else np.zeros((0, 0), np.int32)
    if len(rows):
        rows = rows[np.lexsort(tuple(rows[:, c] for c in reversed(order_columns)))]
    return rows


def _columns_of(rows, union):
    where = {tuple(r): k for k, r in enumerate(union.tolist())}
    return np.fromiter((where[tuple(r)] for r in rows.tolist()), dtype=np.int64, count=len(rows))


def open_store(path) -> StoredFeatures:
    """Read the finished chunks of a feature store.

    Parameters
    ----------
    path : str or os.PathLike
        A run directory written by :func:`einsum_workbench.featurize.featurize`.

    Returns
    -------
    StoredFeatures: the chunks' features side by side with their labels, and
    which planned chunks are missing.

    Raises
    ------
    FileNotFoundError
        no store at ``path``.
    """
    zarr = _zarr()
    path = os.fspath(path)
    if not _is_store(path):
        raise FileNotFoundError(f"no einsum-workbench feature store at {path!r}")
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    config = attrs["config"]
    finished = finished_chunks(path)
    missing = sorted(set(planned_chunks(attrs["n_frames"], config["chunk_frames"])) - set(finished))
    frames = (np.concatenate([np.arange(a, b) for a, b in finished]) if finished else np.zeros(0)).astype(np.int64)
    result = StoredFeatures(path=path, config=config, n_frames=attrs["n_frames"], finished=finished,
                            missing=missing, frames=frames, versions=attrs.get("versions", {}))
    if config["descriptor"] == "power_spectrum":
        result.values, result.properties = _read_power_spectrum(path, len(frames))
    else:
        result.blocks = _read_density(path)
    return result


def _read_power_spectrum(path, n_rows):
    chunks = [(g["values"][...], g["properties"][...]) for _, _, g in iter_chunks(path)]
    # pipeline order: centre species, l, then (species, n) of a, then of b
    union = _union_rows([p for _, p in chunks], order_columns=(0, 6, 2, 1, 5, 4)).astype(np.int32).reshape(-1, 7)
    values = np.zeros((n_rows, len(union)))
    row = 0
    for chunk_values, properties in chunks:
        values[row:row + len(chunk_values), _columns_of(properties, union)] = chunk_values
        row += len(chunk_values)
    return values, union


def _read_density(path):
    per_key = {}
    for _, _, group in iter_chunks(path):
        for name, block in group["blocks"].groups():
            tc, l = (int(v) for v in name.split("_"))
            per_key.setdefault((tc, l), []).append((block["values"][...], block["samples"][...],
                                                    block["properties"][...]))
    blocks = {}
    for key, parts in per_key.items():
        union = _union_rows([p for _, _, p in parts], order_columns=(1, 0)).astype(np.int32).reshape(-1, 2)
        n_samples = sum(len(s) for _, s, _ in parts)
        values = np.zeros((n_samples, 2 * key[1] + 1, len(union)))
        row = 0
        for v, s, p in parts:
            values[row:row + len(s)][:, :, _columns_of(p, union)] = v
            row += len(s)
        samples = np.vstack([s for _, s, _ in parts]).astype(np.int32)
        blocks[key] = (values, samples, union)
    return blocks

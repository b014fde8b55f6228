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

A chunk is written whole under ``partial/``, its files synced, then moved to
``chunks/<start>-<stop>`` with one ``os.rename`` (atomic on one file system):
a reader sees a chunk entirely or not at all, and a chunk written twice (a
task run again after its worker died) keeps the first copy. The "done"
attribute is written last, before the move.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import uuid
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


class StoreMismatchError(ValueError):
    """An existing store was written with other settings than this run's."""


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
    if os.path.isdir(out) and os.listdir(out):
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
    root = zarr.open_group(out, mode="w")
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


def _put(group, name, data):
    data = np.ascontiguousarray(data)
    group.create_array(name, data=data, chunks=tuple(max(1, s) for s in data.shape))


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


def write_chunk(out, start: int, stop: int, arrays: dict, attrs: dict) -> bool:
    """Write one chunk atomically: whole under ``partial/``, then renamed into ``chunks/``.

    Parameters
    ----------
    out : run directory made by :func:`prepare_store`
    start, stop : int, the chunk's frame range
    arrays : dict of name -> ndarray; a name may hold "/" (nested groups)
    attrs : dict of JSON values, recorded on the chunk's group with
        ``start``, ``stop``, ``host``, ``pid`` and, last, ``done``

    Returns
    -------
    bool: True if this call put the chunk in place, False if it was already
    there (written by an earlier attempt; the copy in place is kept).
    """
    zarr = _zarr()
    out = os.fspath(out)
    final = os.path.join(out, CHUNKS, chunk_name(start, stop))
    if _chunk_done(final):
        return False
    temporary = os.path.join(out, PARTIAL, f"{chunk_name(start, stop)}.{uuid.uuid4().hex}")
    try:
        group = zarr.open_group(temporary, mode="w")
        for name, data in arrays.items():
            *parents, leaf = name.split("/")
            parent = group
            for p in parents:
                parent = parent.require_group(p)
            _put(parent, leaf, data)
        group.attrs.update(plain({**attrs, "start": int(start), "stop": int(stop), "host": socket.gethostname(),
                                  "pid": os.getpid()}))
        group.attrs["done"] = True
        _sync_tree(temporary)
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

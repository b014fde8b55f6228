"""One chunk of frames, the task every worker runs: read its frames, featurize them, store them.

:func:`compute_chunk` reads the chunk's own frame range from the file
(:mod:`.trajectory`: flat arrays from the C parser for plain extxyz, ASE's
frames otherwise), runs the pipeline (``pipeline.power_spectrum`` or the
centre density, :func:`chunk_features`) and writes the chunk to the store
atomically (:mod:`.store`); :func:`warm` compiles or loads the kernels in a
process before its first chunk. Every task pins its threads (:func:`pinned`:
Numba and BLAS, ``threads`` each, checked with threadpoolctl and recorded on
the chunk) and runs the Numba kernels as
``EINSUM_WORKBENCH_NUMBA_KERNEL=specialised`` unless that variable says
otherwise, so that every chunk uses the same, deterministic kernel whatever
process computed it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from einsum_workbench.kernels.numba.dispatch import KERNEL_ENV
from einsum_workbench.threads import limited_threads, thread_env_vars

from einsum_workbench.featurize import store
from einsum_workbench.featurize.trajectory import FrameError, globalise_frames, read_chunk

#: Frames read and featurized by the client to compile or load the kernels before the chunks run.
WARM_FRAMES = 4


class ChunkError(ValueError):
    """A chunk that could not be featurized; the message names its frame range and the frame at fault."""

    def __init__(self, start: int, stop: int, message: str):
        super().__init__(message)
        self.start, self.stop = start, stop

    def __reduce__(self):  # picklable across Dask workers
        return (type(self), (self.start, self.stop, self.args[0]))


@dataclass(frozen=True)
class ChunkTask:
    """Everything a worker needs to compute and store one chunk (small: shipped to the worker)."""

    path: str
    format: str
    start: int
    stop: int
    first_byte: int | None
    end_byte: int | None
    out: str
    settings: dict
    threads: int


def thread_env(threads: int) -> dict:
    """Environment that pins a worker process to ``threads`` Numba/BLAS/OpenMP threads, and the
    deterministic (specialised) Numba kernels unless ``EINSUM_WORKBENCH_NUMBA_KERNEL`` says otherwise."""
    env = thread_env_vars(threads)
    env[KERNEL_ENV] = os.environ.get(KERNEL_ENV) or "specialised"
    return env


@contextmanager
def pinned(threads: int):
    """Numba and BLAS/OpenMP threads of the calling thread limited to ``threads``; the specialised
    Numba kernels unless the environment says otherwise. Yields a function that reports the
    thread counts in force (``{"numba": n, "<library>": n, ...}``)."""
    previous_env = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = previous_env or "specialised"
    try:
        with limited_threads(threads) as seen:
            yield seen
    finally:
        if previous_env is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = previous_env


def _semiaxes_value(semiaxes):
    """Stored semi-axes back to what the pipeline takes (JSON made int dict keys strings)."""
    if isinstance(semiaxes, dict):
        return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: tuple(v) for k, v in semiaxes.items()}
    return None if semiaxes is None else tuple(semiaxes)


def chunk_features(frames, settings: dict, start: int) -> dict:
    """The arrays of one chunk's store entry.

    Parameters
    ----------
    frames : list of ase.Atoms or reference.readers.ExtxyzArrays
        The trajectory's frames ``start, start + 1, ...`` (:func:`.trajectory.read_chunk`).
    settings : dict, the run's config (descriptor, backend, hypers, ...)
    start : int, trajectory index of ``frames[0]``

    Returns
    -------
    dict name -> ndarray: power spectrum ``values`` (n, F) float64 and
    ``properties`` (F, 7) int32; density ``blocks/<types_center>_<l>/{values,samples,properties}``
    with samples' system column the trajectory's frame index.
    """
    from einsum_workbench.pipeline import density_blocks, density_of_frames, power_spectrum
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.readers import ExtxyzArrays

    hypers = ExpansionHypers(**settings["hypers"])
    semiaxes = _semiaxes_value(settings["semiaxes"])
    rotation = dict(rotation_key=settings["rotation_key"], rotation_type=settings["rotation_type"])
    if isinstance(frames, ExtxyzArrays):  # the pipeline takes the AtomsTable, which holds the semi-axes
        frames = frames.table(semiaxes=semiaxes, **rotation)
        semiaxes = None
    kwargs = dict(backend=settings["backend"], orthonormal=settings["orthonormal"], self_pairs=settings["self_pairs"],
                  semiaxes=semiaxes, **rotation)
    if settings["descriptor"] == "power_spectrum":
        ps = power_spectrum(frames, hypers, **kwargs)
        return {"values": ps.values, "properties": ps.properties}
    layout, density = density_of_frames(frames, hypers, **kwargs)
    arrays = {}
    for c, blocks in enumerate(density_blocks(layout, density, property_layout="labelled")):
        samples = layout.samples[c].copy()
        samples[:, 0] += start
        n_types = len(layout.neighbour_types[c])
        for l, values in enumerate(blocks):
            name = f"blocks/{int(layout.centre_types[c])}_{l}"
            arrays[f"{name}/values"] = values
            arrays[f"{name}/samples"] = samples
            arrays[f"{name}/properties"] = layout.property_rows(c, values.shape[2] // n_types)
    return arrays


def compute_chunk(task: ChunkTask) -> dict:
    """Read, featurize and store one chunk (the task every worker runs).

    Returns
    -------
    dict: start, stop, frames, seconds, written (False: the store already had it).

    Raises
    ------
    ChunkError
        naming the frame range and, where known, the trajectory's frame at fault.
    """
    if store.is_finished(task.out, task.start, task.stop):
        return {"start": task.start, "stop": task.stop, "frames": task.stop - task.start, "seconds": 0.0,
                "written": False}
    where = f"frames {task.start}-{task.stop - 1}"
    began = time.perf_counter()
    with pinned(task.threads) as seen:
        try:
            frames = read_chunk(task.path, task.start, task.stop, format=task.format,
                                byte_range=(task.first_byte, task.end_byte))
            arrays = chunk_features(frames, task.settings, task.start)
        except FrameError as err:
            raise ChunkError(task.start, task.stop, f"{where}: {err}") from None
        except (ValueError, TypeError, KeyError) as err:
            raise ChunkError(task.start, task.stop, f"{where}: {globalise_frames(str(err), task.start)}") from None
        threads = seen()
    seconds = time.perf_counter() - began
    written = store.write_chunk(task.out, task.start, task.stop, arrays,
                                {"seconds": seconds, "threads": threads, "versions": store.versions()})
    return {"start": task.start, "stop": task.stop, "frames": task.stop - task.start, "seconds": seconds,
            "written": written}


def warm(task: ChunkTask) -> float:
    """Featurize the first few frames of a chunk without storing them (compiles or loads the
    kernels in this process, imports the reader) and encode a tiny chunk in memory (imports
    zarr); returns the seconds it took, or NaN if those frames fail (the chunk's own task then
    reports why)."""
    began = time.perf_counter()
    stop = min(task.stop, task.start + WARM_FRAMES)
    with pinned(task.threads):
        try:
            frames = read_chunk(task.path, task.start, stop, format=task.format,
                                byte_range=(task.first_byte, task.end_byte), max_frames=stop - task.start)
            chunk_features(frames, task.settings, task.start)
        except (ValueError, TypeError, KeyError):
            return float("nan")
    store.warm_writer()
    return time.perf_counter() - began

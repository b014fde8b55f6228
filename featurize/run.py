"""Featurize a trajectory chunk by chunk into an on-disk store, in one process or on Dask workers.

:func:`featurize` checks its arguments, plans chunks of ``chunk_frames``
frames, skips those the store already holds, and runs each remaining one as
a task (:func:`.chunk.compute_chunk`: the worker reads its own frame range,
featurizes it and writes it to the store atomically) where the arguments say
(:mod:`.executors`): embedded (default, one process, no server),
``workers=N`` (a ``distributed.LocalCluster`` of N worker processes on this
machine, one thread each), ``scheduler="tcp://host:port"`` or ``client=``
(an existing Dask cluster). Every task pins its threads and runs the
deterministic Numba kernels (:mod:`.chunk`), so the store's values do not
depend on where or when a chunk ran. A run holds the store's lock
(:func:`.store.locked`) from before it reads the store to its end: a second
run on it is refused, naming the first, or waits (``wait=``).
:class:`FeaturizeReport` says what a run did.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import numpy as np

from einsum_workbench.featurize import executors
from einsum_workbench.featurize import store
from einsum_workbench.featurize.chunk import ChunkTask, warm
from einsum_workbench.featurize.trajectory import index_frames

DESCRIPTORS = ("power_spectrum", "density")


class FeaturizeError(RuntimeError):
    """Some chunks failed (after their retries); every other chunk is in the store.

    Attributes
    ----------
    failures : list of (start, stop, message)
    report : FeaturizeReport of the run
    """

    def __init__(self, failures, report):
        lines = [message for _, _, message in failures]
        super().__init__(f"{len(failures)} chunk(s) failed; the {report.chunks_done} finished chunk(s) are in "
                         f"{report.out!r}, a re-run computes only the missing ones:\n  " + "\n  ".join(lines))
        self.failures, self.report = failures, report


@dataclass
class FeaturizeReport:
    """What a :func:`featurize` run did.

    Attributes
    ----------
    out : str, the store
    n_frames : int, frames of the trajectory (readable ones)
    chunks_planned, chunks_skipped, chunks_computed, chunks_failed : int
        Planned; already in the store before the run; computed by this run; failed.
    frames_computed : int
    seconds : float
        Wall time of the compute phase (first submission to last result).
    warmup_seconds : float
        Kernel compile or load in the client before the chunks (a per-process cost).
    startup_seconds : float
        Starting (or connecting to) the Dask cluster and warming its workers.
    workers : int
        Worker processes (1 when embedded).
    """

    out: str
    n_frames: int
    chunks_planned: int
    chunks_skipped: int = 0
    chunks_computed: int = 0
    chunks_failed: int = 0
    frames_computed: int = 0
    seconds: float = 0.0
    warmup_seconds: float = 0.0
    startup_seconds: float = 0.0
    workers: int = 1
    failures: list = field(default_factory=list)

    @property
    def chunks_done(self) -> int:
        return self.chunks_skipped + self.chunks_computed

    @property
    def frames_per_second(self) -> float:
        return self.frames_computed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "chunks_done": self.chunks_done, "frames_per_second": self.frames_per_second}


# ---------------------------------------------------------------- settings


def hypers_dict(hypers) -> dict:
    """The constructor arguments of an ``ExpansionHypers`` as JSON values."""
    from einsum_workbench.reference.validation import check_hypers

    check_hypers(hypers)
    return store.plain({name: getattr(hypers, name)
                        for name in ("lmax", "radial_basis", "cutoff", "sigma", "max_radial", "rcond", "tol")})


def file_identity(path) -> dict:
    """Name, size and SHA-256 of the first MiB of a file: enough to refuse another trajectory."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path), "head_sha256": head}


# ---------------------------------------------------------------- the run


def _check_arguments(descriptor, chunk_frames, threads, retries, workers, scheduler, client, out, wait):
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
    for name, value, low in (("chunk_frames", chunk_frames, 1), ("threads", threads, 1), ("retries", retries, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ValueError(f"workers must be None (one process) or an int >= 1, got {workers!r}")
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise ValueError("give at most one of workers=, scheduler= and client=")
    if out is None:
        raise ValueError("out= is required: the folder of the feature store")
    store.check_wait(wait)


def featurize(trajectory, hypers, descriptor: str = "power_spectrum", backend: str = "numba_fused",
              chunk_frames: int = 500, out=None, client=None, *, workers: int | None = None,
              scheduler: str | None = None, threads: int = 1, semiaxes=None, rotation_key: str | None = "c_q",
              rotation_type: str = "quaternion", orthonormal: bool = True, self_pairs: bool = True,
              format: str | None = None, retries: int = 1, progress: bool | None = None,
              wait: float = 0.0) -> FeaturizeReport:
    """Featurize every frame of a trajectory into a chunked Zarr store, resumably.

    Parameters
    ----------
    trajectory : str or os.PathLike
        Any file ASE reads (ellipsoids: orientations in ``rotation_key``), read
        lazily chunk by chunk, never whole.
    hypers : ExpansionHypers
    descriptor : {"power_spectrum", "density"}
        Per-structure power spectrum (``pipeline.power_spectrum``) or the
        centre density (``pipeline.centre_density``, labelled layout).
    backend : str
        Registered variant (``numba_fused``: deterministic, so every chunk's
        values are the same wherever it ran).
    chunk_frames : int >= 1
        Frames per chunk (the unit of work, of writing and of resuming).
    out : str or os.PathLike
        The store's folder (:mod:`.store`); created, or resumed when it holds
        a store of the same settings.
    client : distributed.Client or None
        An existing Dask client to run the chunks on (not closed).
    workers : int or None
        None: one process, no server. N: a local Dask cluster of N worker
        processes, one task and ``threads`` threads each, closed at the end.
    scheduler : str or None
        Address of a running Dask scheduler (``tcp://host:port``). The store and
        the trajectory must be on a file system every worker sees.
    threads : int >= 1
        Numba and BLAS threads per task (per worker process).
    semiaxes, rotation_key, rotation_type, orthonormal, self_pairs
        As ``pipeline.power_spectrum`` (e.g. ``semiaxes=(4, 4, 0.5)``).
    format : str or None
        ASE format (None: guessed from the file).
    retries : int >= 0
        Extra attempts for a chunk whose task raised (a worker that dies is
        replaced and its tasks rerun by Dask in any case).
    progress : bool or None
        A tqdm bar over the frames (frames per second, chunks done); None: when
        stderr is a terminal.
    wait : float >= 0
        Seconds to wait for another run holding the store's lock
        (``DIR/featurize.lock``, :func:`.store.locked`); 0 (default): refuse at
        once; ``math.inf``: wait until that run ends.

    Returns
    -------
    FeaturizeReport

    Raises
    ------
    FileNotFoundError
        no trajectory file (its path named).
    store.StoreMismatchError
        ``out`` holds a store written with other settings (each named).
    store.StoreLockedError
        another run holds the store (its pid, host, start and command named);
        nothing in the store was touched.
    FeaturizeError
        some chunks failed after their retries: each is named by its frame range
        and the frame at fault; every other chunk was computed and stored.
    ValueError, TypeError
        bad arguments, named.
    """
    _check_arguments(descriptor, chunk_frames, threads, retries, workers, scheduler, client, out, wait)
    from einsum_workbench.kernels.registry import get_variant

    get_variant(backend)  # unknown names fail here, listing the valid ones
    path = os.path.abspath(os.fspath(trajectory))
    index = index_frames(path, format)
    settings = {"descriptor": descriptor, "backend": backend, "hypers": hypers_dict(hypers),
                "orthonormal": bool(orthonormal), "self_pairs": bool(self_pairs), "semiaxes": semiaxes,
                "rotation_key": rotation_key, "rotation_type": rotation_type, "chunk_frames": int(chunk_frames),
                "format": index.format, "trajectory": file_identity(path)}
    settings = store.plain(settings)
    out = os.path.abspath(os.fspath(out))
    with store.locked(out, wait):  # before anything in the store is read, cleaned or written
        return _run_locked(index, settings, out, chunk_frames=chunk_frames, threads=threads, retries=retries,
                           client=client, workers=workers, scheduler=scheduler, progress=progress)


def _run_locked(index, settings, out, *, chunk_frames, threads, retries, client, workers, scheduler, progress):
    """The run once it holds the store's lock: prepare, plan, compute, report."""
    path = index.path
    store.prepare_store(out, settings, index.n_frames)
    store.clean_partial(out)

    plan = store.planned_chunks(index.n_frames, chunk_frames)
    failures = []
    if index.error is not None:  # frames from the bad one on cannot be delimited: its chunk fails
        bad = index.error.frame
        first = bad - bad % chunk_frames
        plan = [c for c in plan if c[1] <= first]
        failures.append((first, first + chunk_frames,
                         f"frames {first}-{first + chunk_frames - 1}: {index.error} (frames after it are not read)"))
    done = set(store.finished_chunks(out))
    todo = [ChunkTask(path, index.format, a, b, *index.byte_range(a, b), out, settings, int(threads))
            for a, b in plan if (a, b) not in done]
    report = FeaturizeReport(out=out, n_frames=index.n_frames, chunks_planned=len(plan),
                             chunks_skipped=len(plan) - len(todo))
    if todo:
        began = time.perf_counter()
        warm(todo[0])
        report.warmup_seconds = time.perf_counter() - began
    show = sys.stderr.isatty() if progress is None else bool(progress)
    with ExitStack() as stack:
        runner = executors.start_runner(stack, todo, report, client=client, workers=workers, scheduler=scheduler,
                                        threads=threads)
        if todo:
            bar = stack.enter_context(executors.progress_bar(sum(t.stop - t.start for t in todo), len(plan),
                                                             report.chunks_skipped, show))
            began = time.perf_counter()
            failures += runner(todo, retries, bar, report)
            report.seconds = time.perf_counter() - began
    report.failures = failures
    report.chunks_failed = len(failures)
    if failures:
        raise FeaturizeError(sorted(failures), report)
    return report

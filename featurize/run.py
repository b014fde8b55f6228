"""Featurize a trajectory chunk by chunk into an on-disk store, in one process or on Dask workers.

:func:`featurize` plans chunks of ``chunk_frames`` frames, skips those the
store already holds, and runs each remaining one as a task
(:func:`compute_chunk`): the worker reads its own frame range from the file
(:mod:`.trajectory`), runs the pipeline (``pipeline.power_spectrum`` or the
centre density), and writes the chunk to the store atomically
(:mod:`.store`). The client only plans, submits a bounded window of small
tasks and counts: its memory does not grow with the trajectory.

Where it runs: embedded (default, one process, no server), ``workers=N``
(a ``distributed.LocalCluster`` of N worker processes on this machine, one
thread each), ``scheduler="tcp://host:port"`` or ``client=`` (an existing
Dask cluster). Every task pins its threads (Numba and BLAS, ``threads``
each, checked with threadpoolctl and recorded on the chunk). The Numba
kernels run as ``EINSUM_WORKBENCH_NUMBA_KERNEL=specialised`` unless that
variable says otherwise, so that every chunk uses the same, deterministic
kernel whatever process computed it: the store's values do not depend on
where or when a chunk ran.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from einsum_workbench.bench.pinning import THREAD_ENV_VARS
from einsum_workbench.kernels.numba.dispatch import KERNEL_ENV

from einsum_workbench.featurize import store
from einsum_workbench.featurize.trajectory import FrameError, globalise_frames, index_frames, read_frames

DESCRIPTORS = ("power_spectrum", "density")
#: Frames read and featurized by the client to compile or load the kernels before the chunks run.
WARM_FRAMES = 4
log = logging.getLogger(__name__)


class ChunkError(ValueError):
    """A chunk that could not be featurized; the message names its frame range and the frame at fault."""

    def __init__(self, start: int, stop: int, message: str):
        super().__init__(message)
        self.start, self.stop = start, stop

    def __reduce__(self):  # picklable across Dask workers
        return (type(self), (self.start, self.stop, self.args[0]))


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
    from einsum_workbench.pipeline.density import check_hypers

    check_hypers(hypers)
    return store.plain({name: getattr(hypers, name)
                        for name in ("lmax", "radial_basis", "cutoff", "sigma", "max_radial", "rcond", "tol")})


def _semiaxes_value(semiaxes):
    """Stored semi-axes back to what the pipeline takes (JSON made int dict keys strings)."""
    if isinstance(semiaxes, dict):
        return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: tuple(v) for k, v in semiaxes.items()}
    return None if semiaxes is None else tuple(semiaxes)


def file_identity(path) -> dict:
    """Name, size and SHA-256 of the first MiB of a file: enough to refuse another trajectory."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path), "head_sha256": head}


def thread_env(threads: int) -> dict:
    """Environment that pins a worker process to ``threads`` Numba/BLAS/OpenMP threads, and the
    deterministic (specialised) Numba kernels unless ``EINSUM_WORKBENCH_NUMBA_KERNEL`` says otherwise."""
    env = {name: str(threads) for name in THREAD_ENV_VARS}
    env[KERNEL_ENV] = os.environ.get(KERNEL_ENV) or "specialised"
    return env


# ---------------------------------------------------------------- one chunk (runs on a worker)


@contextmanager
def pinned(threads: int):
    """Numba and BLAS/OpenMP threads of the calling thread limited to ``threads``; the specialised
    Numba kernels unless the environment says otherwise. Yields a function that reports the
    thread counts in force (``{"numba": n, "<library>": n, ...}``)."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    previous_env = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = previous_env or "specialised"
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=threads):
            def seen():
                counts = {"numba": numba.get_num_threads()}
                for pool in threadpool_info():
                    counts[pool["internal_api"]] = max(counts.get(pool["internal_api"], 0), pool["num_threads"])
                return counts

            yield seen
    finally:
        numba.set_num_threads(previous)
        if previous_env is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = previous_env


def chunk_features(frames, settings: dict, start: int) -> dict:
    """The arrays of one chunk's store entry.

    Parameters
    ----------
    frames : list of ase.Atoms, the trajectory's frames ``start, start + 1, ...``
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

    hypers = ExpansionHypers(**settings["hypers"])
    kwargs = dict(backend=settings["backend"], orthonormal=settings["orthonormal"], self_pairs=settings["self_pairs"],
                  semiaxes=_semiaxes_value(settings["semiaxes"]), rotation_key=settings["rotation_key"],
                  rotation_type=settings["rotation_type"])
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
            frames = read_frames(task.path, task.start, task.stop, format=task.format,
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
    kernels in this process); returns the seconds it took, or NaN if those frames fail (the
    chunk's own task then reports why)."""
    began = time.perf_counter()
    stop = min(task.stop, task.start + WARM_FRAMES)
    with pinned(task.threads):
        try:
            frames = read_frames(task.path, task.start, stop, format=task.format,
                                 byte_range=(task.first_byte, task.end_byte), max_frames=stop - task.start)
            chunk_features(frames, task.settings, task.start)
        except (ValueError, TypeError, KeyError):
            return float("nan")
    return time.perf_counter() - began


# ---------------------------------------------------------------- the run


def _check_arguments(descriptor, chunk_frames, threads, retries, workers, scheduler, client, out):
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


def featurize(trajectory, hypers, descriptor: str = "power_spectrum", backend: str = "numba_fused",
              chunk_frames: int = 500, out=None, client=None, *, workers: int | None = None,
              scheduler: str | None = None, threads: int = 1, semiaxes=None, rotation_key: str | None = "c_q",
              rotation_type: str = "quaternion", orthonormal: bool = True, self_pairs: bool = True,
              format: str | None = None, retries: int = 1, progress: bool | None = None) -> FeaturizeReport:
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

    Returns
    -------
    FeaturizeReport

    Raises
    ------
    FileNotFoundError
        no trajectory file (its path named).
    store.StoreMismatchError
        ``out`` holds a store written with other settings (each named).
    FeaturizeError
        some chunks failed after their retries: each is named by its frame range
        and the frame at fault; every other chunk was computed and stored.
    ValueError, TypeError
        bad arguments, named.
    """
    import sys

    _check_arguments(descriptor, chunk_frames, threads, retries, workers, scheduler, client, out)
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
        if client is None and workers is None and scheduler is None:
            runner = _run_embedded
        else:
            began = time.perf_counter()
            client = _dask_client(stack, client, workers, scheduler, threads)
            report.workers = _warm_workers(client, todo)
            report.startup_seconds = time.perf_counter() - began
            runner = _dask_runner(client)
        if todo:
            bar = stack.enter_context(_progress_bar(sum(t.stop - t.start for t in todo), len(plan),
                                                    report.chunks_skipped, show))
            began = time.perf_counter()
            failures += runner(todo, retries, bar, report)
            report.seconds = time.perf_counter() - began
    report.failures = failures
    report.chunks_failed = len(failures)
    if failures:
        raise FeaturizeError(sorted(failures), report)
    return report


@contextmanager
def _progress_bar(total_frames, n_chunks, skipped, show):
    from tqdm import tqdm

    bar = tqdm(total=total_frames, unit="frame", desc="featurize", disable=not show, smoothing=0.05)
    bar.chunks = [skipped, n_chunks]
    bar.set_postfix_str(f"chunks {skipped}/{n_chunks}", refresh=False)
    try:
        yield bar
    finally:
        bar.close()


def _advance(bar, report, result):
    report.frames_computed += result["frames"]
    report.chunks_computed += 1
    bar.chunks[0] += 1
    bar.set_postfix_str(f"chunks {bar.chunks[0]}/{bar.chunks[1]}", refresh=False)
    bar.update(result["frames"])


def _failure(task, err):
    if isinstance(err, ChunkError):
        return (task.start, task.stop, str(err))
    return (task.start, task.stop, f"frames {task.start}-{task.stop - 1}: {type(err).__name__}: {err}")


def _run_embedded(todo, retries, bar, report):
    failures = []
    for task in todo:
        for attempt in range(retries + 1):
            try:
                result = compute_chunk(task)
            except Exception as err:  # any failure of a chunk is reported with its frame range
                if attempt == retries:
                    failures.append(_failure(task, err))
                    log.warning("%s", _failure(task, err)[2])
            else:
                _advance(bar, report, result)
                break
    return failures


def _dask_client(stack, client, workers, scheduler, threads):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("workers=/scheduler= need Dask: pip install 'einsum-workbench[distributed]'") from None
    if client is not None:
        return client
    if scheduler is not None:
        return stack.enter_context(Client(scheduler))
    cluster = stack.enter_context(LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                               env=thread_env(threads), dashboard_address=None,
                                               silence_logs=logging.ERROR))
    return stack.enter_context(Client(cluster))


def _warm_workers(client, todo) -> int:
    """Load the kernels on every worker (one small task each) so the compute phase is steady; returns the worker count."""
    addresses = list(client.scheduler_info()["workers"])
    if todo and addresses:
        client.gather([client.submit(warm, todo[0], workers=[a], allow_other_workers=False, pure=False)
                       for a in addresses])
    return max(1, len(addresses))


def _dask_runner(client):
    def run(todo, retries, bar, report):
        from distributed import as_completed

        window = max(4, 2 * sum(client.nthreads().values()))
        pending = iter(todo)
        by_key, failures = {}, []
        completed = as_completed()

        def submit_next():
            task = next(pending, None)
            if task is not None:
                future = client.submit(compute_chunk, task, pure=False, retries=retries,
                                       key=f"featurize-{store.chunk_name(task.start, task.stop)}-{os.urandom(4).hex()}")
                by_key[future.key] = task
                completed.add(future)

        for _ in range(window):
            submit_next()
        for future in completed:
            task = by_key.pop(future.key)
            try:
                result = future.result()
            except Exception as err:  # reported by frame range, the other chunks go on
                failures.append(_failure(task, err))
                log.warning("%s", failures[-1][2])
            else:
                _advance(bar, report, result)
            future.release()
            submit_next()
        return failures

    return run

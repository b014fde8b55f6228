"""Where the chunk tasks run: embedded (one process, no server), a ``distributed.LocalCluster``
of N worker processes on this machine, or an existing Dask cluster (``scheduler=`` address or
``client=``), with a progress bar over the frames.

:func:`start_runner` picks the runner and starts, connects and warms the
workers; a runner takes the tasks and returns the failures, counting each
finished chunk on the report and the bar. On Dask the client submits a
bounded window of small tasks and counts: its memory does not grow with the
trajectory.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

from einsum_workbench.featurize import chunk
from einsum_workbench.featurize import store

log = logging.getLogger(__name__)


@contextmanager
def progress_bar(total_frames: int, n_chunks: int, skipped: int, show: bool):
    """A tqdm bar over ``total_frames`` frames, its postfix counting the chunks done of ``n_chunks``
    (``skipped`` already done); disabled unless ``show``. Closed at the end of the block."""
    from tqdm import tqdm

    bar = tqdm(total=total_frames, unit="frame", desc="featurize", disable=not show, smoothing=0.05)
    bar.chunks = [skipped, n_chunks]
    bar.set_postfix_str(f"chunks {skipped}/{n_chunks}", refresh=False)
    try:
        yield bar
    finally:
        bar.close()


def start_runner(stack, todo, report, *, client=None, workers: int | None = None, scheduler: str | None = None,
                 threads: int = 1):
    """The function that runs the chunk tasks where the arguments say.

    Parameters
    ----------
    stack : contextlib.ExitStack
        Closes what this starts (a local cluster, a client of ``scheduler``) when it closes;
        a ``client`` given is not closed.
    todo : list of chunk.ChunkTask
        Their first task warms every Dask worker (compiles or loads the kernels).
    report : FeaturizeReport
        Gets ``workers`` and ``startup_seconds`` on Dask.
    client, workers, scheduler
        At most one given: an existing ``distributed.Client``; N local worker processes (one
        thread each, pinned to ``threads`` through :func:`.chunk.thread_env`); a scheduler's
        address. None of them: embedded.

    Returns
    -------
    callable ``run(todo, retries, bar, report) -> failures``, a list of (start, stop, message).

    Raises
    ------
    ImportError
        Dask asked for but not installed.
    """
    if client is None and workers is None and scheduler is None:
        return _run_embedded
    began = time.perf_counter()
    client = _dask_client(stack, client, workers, scheduler, threads)
    report.workers = _warm_workers(client, todo)
    report.startup_seconds = time.perf_counter() - began
    return _dask_runner(client)


def _advance(bar, report, result):
    report.frames_computed += result["frames"]
    report.chunks_computed += 1
    bar.chunks[0] += 1
    bar.set_postfix_str(f"chunks {bar.chunks[0]}/{bar.chunks[1]}", refresh=False)
    bar.update(result["frames"])


def _failure(task, err):
    if isinstance(err, chunk.ChunkError):
        return (task.start, task.stop, str(err))
    return (task.start, task.stop, f"frames {task.start}-{task.stop - 1}: {type(err).__name__}: {err}")


def _run_embedded(todo, retries, bar, report):
    failures = []
    for task in todo:
        for attempt in range(retries + 1):
            try:
                result = chunk.compute_chunk(task)
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
                                               env=chunk.thread_env(threads), dashboard_address=None,
                                               silence_logs=logging.ERROR))
    return stack.enter_context(Client(cluster))


def _warm_workers(client, todo) -> int:
    """Load the kernels on every worker (one small task each) so the compute phase is steady; returns the worker count."""
    addresses = list(client.scheduler_info()["workers"])
    if todo and addresses:
        client.gather([client.submit(chunk.warm, todo[0], workers=[a], allow_other_workers=False, pure=False)
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
                future = client.submit(chunk.compute_chunk, task, pure=False, retries=retries,
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

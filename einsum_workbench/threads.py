"""Thread-count variables and the primitives that limit a process's thread pools.

Used by the product (``featurize`` pins every chunk task and its Dask workers)
and by the bench (:mod:`einsum_workbench.bench.pinning`, which adds CPU affinity
and the checks that a measurement's pinning holds):

- :data:`THREAD_ENV_VARS` and :func:`thread_env_vars`: the environment
  variables that size a library's thread pool when it loads;
- :func:`thread_pools` and :func:`thread_counts`: what threadpoolctl (and
  Numba) say is in force;
- :func:`limited_threads`: Numba and BLAS/OpenMP limited to a thread count
  inside a block;
- :func:`parallel_guard`: the context every call of a parallel Numba kernel
  runs in (the kernels' and the reference neighbour list's): Numba's
  ``workqueue`` threading layer (the one left when neither OpenMP nor TBB is
  available) aborts the process when two Python threads run parallel Numba
  code at once, so under it the calls are serialised by one process-wide lock
  (fresh in a forked child);
- :data:`OPENMP_WAIT_POLICY`: set as ``OMP_WAIT_POLICY`` when this module is
  imported (unless the variable is set already), before Numba's OpenMP layer
  loads. With OpenMP's default, a worker spins after each parallel region,
  through the serial work between regions; on a machine where another process
  holds a core, the spinning worker and the calling thread then share the
  other one, and the serial work waits whole time slices. Measured (2-core AMD
  EPYC, 50 small periodic cells, a busy process beside it): the transform's
  serial rest 0.55 ms on one thread, 4.5 ms on two (spinning), 0.65 ms on two
  (passive); on an idle machine the two policies measured the same.

Imports only the standard library at import time (threadpoolctl and Numba
when a function needs them): the variables must be set before NumPy loads.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from contextlib import contextmanager

#: ``OMP_WAIT_POLICY`` set at import when unset: OpenMP workers sleep between parallel regions
#: instead of spinning through the serial work (module docstring).
OPENMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)

#: environment variables fixing the size of a library's thread pool at load time
def prange_only() -> dict:
    """Numba ``parallel=`` options for a function whose only parallel loop is its ``prange``
    (a new dict each call: Numba empties the one it is given).

    With ``parallel=True`` every ``np.zeros`` / ``np.full`` inside becomes a parallel region
    of its own, and under ``OMP_WAIT_POLICY=PASSIVE`` each wakes the sleeping workers (the
    counting pass of the fused neighbour search had seven besides its loop).
    """
    return {"comprehension": False, "inplace_binop": False, "setitem": False, "numpy": False,
            "stencil": False, "fusion": False}


THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def check_thread_count(threads) -> int:
    """``threads`` as a positive int, else ValueError naming the value."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"thread count must be an int >= 1, got {threads!r}")
    return threads


def thread_env_vars(threads: int) -> dict[str, str]:
    """Every variable of :data:`THREAD_ENV_VARS` set to ``threads`` (str values, for ``os.environ``
    or a child process's environment); no check of ``threads``."""
    return {name: str(threads) for name in THREAD_ENV_VARS}


def thread_pools() -> list[dict]:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded in this process.

    Returns
    -------
    list of dict with user_api, internal_api, prefix, version, num_threads (int).
    """
    from threadpoolctl import threadpool_info

    return [
        {k: info.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads")}
        for info in threadpool_info()
    ]


def thread_counts() -> dict[str, int]:
    """Thread counts in force: ``{"numba": n}`` when Numba is loaded, and for each threadpoolctl
    library kind (``"openblas"``, ``"openmp"``, ...) the largest count among its loaded libraries."""
    counts = {}
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "get_num_threads"):
        counts["numba"] = numba.get_num_threads()
    for pool in thread_pools():
        counts[pool["internal_api"]] = max(counts.get(pool["internal_api"], 0), pool["num_threads"])
    return counts


@contextmanager
def limited_threads(threads: int):
    """Numba's threads (at most the pool it launched, ``NUMBA_NUM_THREADS``) and every loaded
    BLAS/OpenMP library (threadpoolctl) limited to ``threads`` inside the block; the previous
    counts are restored at its end. Imports Numba. Yields :func:`thread_counts`.

    Raises
    ------
    ValueError
        ``threads`` not an int >= 1.
    """
    import numba

    threads = check_thread_count(threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with _controller().limit(limits=threads):
            yield thread_counts
    finally:
        numba.set_num_threads(previous)


_scanned: list = []  # [(number of imported modules at the scan, ThreadpoolController)]


def _controller():
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries, scanned again only when modules
    were imported since the last scan (a scan costs ~5 us per loaded library; featurize limits
    the threads twice per chunk)."""
    from threadpoolctl import ThreadpoolController

    if not _scanned or _scanned[0][0] != len(sys.modules):
        _scanned[:] = [(len(sys.modules), ThreadpoolController())]
    return _scanned[0][1]


# ---------------------------------------------------------------------------
# Parallel Numba calls

_parallel_lock = threading.Lock()
_layer: list[str] = []  # the active threading layer, once Numba has launched its threads


def _fresh_lock_in_child() -> None:
    """A forked child starts with a free lock (the parent's may be held by a thread the child lacks)."""
    global _parallel_lock
    _parallel_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def parallel_guard():
    """Context for one call of a parallel Numba kernel (``with parallel_guard(): kernel(...)``).

    A process-wide lock under Numba's ``workqueue`` threading layer (not
    thread-safe: concurrent parallel calls abort the process), also before the
    layer is known (the first parallel call of a process); a null context
    otherwise (the OpenMP and TBB layers accept concurrent calls). Imports
    Numba on its first call.

    Returns
    -------
    a context manager (a ``threading.Lock`` or ``contextlib.nullcontext()``).
    """
    if not _layer:
        import numba

        try:
            _layer.append(numba.threading_layer())
        except ValueError:  # no parallel region has run yet: the layer is not chosen yet
            return _parallel_lock
    return _parallel_lock if _layer[0] == "workqueue" else contextlib.nullcontext()

"""Thread pinning for measurements, set up and verified.

A ranking is only meaningful when every variant runs on the same number of
threads. Four mechanisms decide that, and each can silently fail:

1. thread-count environment variables, read once when a library loads
   (OpenBLAS, MKL, OpenMP, numexpr, numba, Accelerate);
2. threadpoolctl limits on the BLAS / OpenMP libraries already loaded;
3. the CPU affinity of every thread of the process;
4. Torch's and Numba's own thread counts, when those are loaded.

:func:`set_thread_env` must run before NumPy is imported (it records what was
already loaded); :func:`pin` applies 2-4 (call it again after a variant loads
Torch or Numba); :func:`verify` lists what does not hold, and
:func:`pinning_state` reports the whole state with every result.

The thread variables and the threadpoolctl view are the product's
(:mod:`einsum_workbench.threads`); this module adds the bench's enforcement.
It imports neither NumPy, Torch nor Numba at import time.
"""

from __future__ import annotations

import os
import sys

from einsum_workbench.threads import THREAD_ENV_VARS, check_thread_count, thread_env_vars, thread_pools

#: modules whose thread pools the environment variables must reach before they load
_POOL_MODULES = ("numpy", "scipy", "torch", "numba", "numexpr")

# threadpoolctl limiter objects: kept alive so that their limits stay applied
_LIMITERS: list = []
# modules already imported when set_thread_env first ran (a pinning caveat)
_LOADED_BEFORE_ENV: list[str] | None = None
# size of Numba's pool to ask for when it loads (the largest thread count requested so far)
_NUMBA_POOL: int | None = None
# CPUs the process could use before it was first pinned
_ALLOWED_CPUS: list[int] | None = None


class PinningError(RuntimeError):
    """Raised when thread pinning cannot be set up or does not hold."""


def threads_from_argv(argv, default: int = 1, option: str = "--threads") -> int:
    """The value of ``--threads N`` / ``--threads=N`` in a command line.

    For a program that must set the environment before its options are
    parsed; the bench's tools parse theirs first (argparse, and pytest's
    ``pytest_configure`` in :mod:`.plugin`), importing nothing heavy before.

    Raises
    ------
    ValueError
        if the value is not an int >= 1 (the value is named).
    """
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    if value is None:
        return default
    try:
        return check_thread_count(int(value))
    except ValueError:
        raise ValueError(f"{option} must be an int >= 1, got {value!r}") from None


def set_thread_env(threads: int, numba_pool: int | None = None) -> list[str]:
    """Set every thread-count variable of ``THREAD_ENV_VARS`` to ``threads``.

    ``NUMBA_NUM_THREADS`` is the size of Numba's pool, fixed when Numba loads:
    a cap, not the count used (``numba.set_num_threads`` sets that, and
    :func:`verify` checks it). ``numba_pool`` raises the cap above ``threads``
    for a process that will also measure at more threads (the thread-scaling
    suite); by default it equals ``threads``.

    Returns the thread-pool modules (numpy, scipy, torch, numba, numexpr)
    already imported at the first call: their pools were sized before the
    variables were set, so only runtime limits (:func:`pin`) reach them.
    """
    global _LOADED_BEFORE_ENV, _NUMBA_POOL
    threads = check_thread_count(threads)
    if numba_pool is not None:
        check_thread_count(numba_pool)
    # the largest pool asked for so far: a later, smaller pin must not shrink it before Numba loads
    _NUMBA_POOL = max(threads, numba_pool or 0, _NUMBA_POOL or 0)
    if _LOADED_BEFORE_ENV is None:
        _LOADED_BEFORE_ENV = [m for m in _POOL_MODULES if m in sys.modules]
        allowed_cpus()  # remember them before anything is pinned
    os.environ.update(thread_env_vars(threads))
    if "numba" in sys.modules:  # its pool is fixed: keep the variable telling its true size
        os.environ["NUMBA_NUM_THREADS"] = str(sys.modules["numba"].config.NUMBA_NUM_THREADS)
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(_NUMBA_POOL)
    return list(_LOADED_BEFORE_ENV)


def loaded_before_env() -> list[str]:
    """Modules that were imported before :func:`set_thread_env` first ran."""
    return list(_LOADED_BEFORE_ENV or [])


def _thread_ids() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:  # not Linux: the calling thread only
        return [0]


def allowed_cpus() -> list[int]:
    """The CPUs this process could run on before it was first pinned.

    Remembered at the first call (before any pinning), so that a process
    pinned to one CPU can later be pinned to two (the thread-scaling suite).
    """
    global _ALLOWED_CPUS
    if _ALLOWED_CPUS is None:
        _ALLOWED_CPUS = sorted(os.sched_getaffinity(0))
    return list(_ALLOWED_CPUS)


def chosen_cpus(threads: int) -> list[int]:
    """The first ``threads`` of :func:`allowed_cpus`.

    Raises
    ------
    PinningError
        if fewer CPUs are available than threads asked for.
    """
    allowed = allowed_cpus()
    if len(allowed) < threads:
        raise PinningError(
            f"CPU affinity: asked for {threads} threads but this process may only run "
            f"on {len(allowed)} CPU(s) {allowed}"
        )
    return allowed[:threads]


def set_affinity(cpus) -> None:
    """Restrict every existing thread of the process (and its future threads) to ``cpus``."""
    cpus = set(cpus)
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, FileNotFoundError):  # thread ended meanwhile
            pass


def pin(threads: int) -> dict:
    """Apply the runtime limits for ``threads`` threads and return the state.

    Sets the environment variables (no effect on pools already built, see
    :func:`set_thread_env`), threadpoolctl limits on every loaded BLAS/OpenMP
    library, the CPU affinity of every thread to the first ``threads``
    allowed CPUs, and ``torch.set_num_threads`` / ``numba.set_num_threads``
    when those modules are loaded. Idempotent: call it again after a variant
    loads a new library.

    Raises
    ------
    PinningError
        when a limit cannot be applied (too few CPUs, Numba's pool smaller
        than ``threads``).
    ValueError
        for a thread count that is not an int >= 1.
    """
    threads = check_thread_count(threads)
    set_thread_env(threads)
    cpus = chosen_cpus(threads)
    # Torch and Numba first: setting their counts may start a threading layer
    # (Numba's OpenMP one loads libgomp), which the limits below must then reach.
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)
    if "numba" in sys.modules:
        import numba

        pool = numba.config.NUMBA_NUM_THREADS
        if threads > pool:
            raise PinningError(
                f"Numba: its thread pool was fixed at NUMBA_NUM_THREADS={pool} when it loaded, "
                f"so it cannot run {threads} threads; start a new process with {threads} threads"
            )
        numba.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    _LIMITERS.append(threadpool_limits(limits=threads))
    set_affinity(cpus)  # last: also reaches threads the steps above started
    return pinning_state(threads)


def verify(threads: int) -> list[str]:
    """What does not hold of the pinning to ``threads`` threads (empty: all holds).

    Checks the environment variables, every threadpoolctl-visible library's
    thread count, the CPU affinity of every thread of the process, and
    Torch's and Numba's thread counts when they are loaded.
    """
    threads = check_thread_count(threads)
    problems = []
    for name in THREAD_ENV_VARS:
        value = os.environ.get(name)
        if name == "NUMBA_NUM_THREADS":  # a pool cap: at least the thread count
            if value is None or not value.isdigit() or int(value) < threads:
                problems.append(f"environment: {name}={value!r}, expected a pool of at least {threads}")
        elif value != str(threads):
            problems.append(f"environment: {name}={value!r}, expected {threads!r}")
    for info in thread_pools():
        if info["num_threads"] != threads:
            problems.append(
                f"threadpoolctl: {info['internal_api']} ({info['prefix']}) runs "
                f"{info['num_threads']} threads, expected {threads}"
            )
    for tid in _thread_ids():
        try:
            cpus = os.sched_getaffinity(tid)
        except (ProcessLookupError, FileNotFoundError):
            continue
        if len(cpus) != threads:
            problems.append(
                f"CPU affinity: thread {tid} may run on {len(cpus)} CPU(s) {sorted(cpus)}, expected {threads}"
            )
    if "torch" in sys.modules:
        n = sys.modules["torch"].get_num_threads()
        if n != threads:
            problems.append(f"torch.get_num_threads() = {n}, expected {threads}")
    if "numba" in sys.modules and hasattr(sys.modules["numba"], "get_num_threads"):
        n = sys.modules["numba"].get_num_threads()
        if n != threads:
            problems.append(f"numba.get_num_threads() = {n}, expected {threads}")
    return problems


def pinning_state(threads: int) -> dict:
    """JSON-serialisable record of the pinning, stored with every result.

    Keys: threads, verified (bool), problems (list of str), env, affinity
    (CPUs of the main thread), blas (threadpoolctl's view), torch_threads,
    numba_threads (None when not loaded), loaded_before_env.
    """
    problems = verify(threads)
    torch = sys.modules.get("torch")
    numba = sys.modules.get("numba")
    return {
        "threads": threads,
        "verified": not problems,
        "problems": problems,
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        "affinity": sorted(os.sched_getaffinity(0)),
        "blas": thread_pools(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "numba_threads": (
            numba.get_num_threads() if numba is not None and hasattr(numba, "get_num_threads") else None
        ),
        "loaded_before_env": loaded_before_env(),
    }


def pin_and_verify(threads: int) -> dict:
    """:func:`pin`, then raise :class:`PinningError` listing what does not hold."""
    state = pin(threads)
    if state["problems"]:
        raise PinningError(
            f"thread pinning to {threads} thread(s) does not hold:\n  - " + "\n  - ".join(state["problems"])
        )
    return state

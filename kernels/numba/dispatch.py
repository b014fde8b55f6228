"""Which compiled kernel serves a ``numba_fused`` call, and the guards around calling it.

``numba_fused`` (pairs) and ``numba_density`` (centre density) have two kinds
of kernel:

- the *specialised* kernel, generated as straight-line code per
  (hyper-parameters, dtype, lanes) by ``codegen`` and compiled by
  Numba (seconds to minutes: ~4 s at lmax 6, ~11 s at lmax 10 here), then
  cached on disk (``cache_dir``): the fastest;
- the *generic* kernel (``numba_generic``), one per dtype, driven by index
  tables: compiled once per machine (Numba's disk cache), it serves any
  hyper-parameter set at once, a few times slower.

Modes (``kernel=`` of ``expand`` / ``centre_density``, else the environment
variable ``EINSUM_WORKBENCH_NUMBA_KERNEL``, else ``auto``):

``auto``
    A specialised kernel already in Numba's disk cache is loaded and used
    (~0.3 s on the first call of a process). Otherwise the first calls use
    the generic kernel while a background *process* compiles the specialised
    one into the disk cache (one at a time, the most recently requested
    first, at lower CPU priority); the first call after it is done loads it
    and uses it from then on. Above ``SPECIALISE_MAX_LMAX`` only the generic
    kernel is used. So the first calls may differ from later ones by
    rounding (both agree with the reference within the suite's tolerances;
    each kernel is deterministic).
``specialised``
    Wait for the specialised kernel: compile it in this process on the first
    call if it is not cached (the behaviour before the generic kernel;
    the tests use it). Above ``SPECIALISE_MAX_LMAX`` the generic kernel.
``generic``
    Always the generic kernel.

Why a process and not a thread: Numba's compiler is mostly Python (it holds
the GIL) and holds Numba's global compiler lock for the whole compilation,
which would stall any other Numba function's first call in the user's
process for up to minutes; a compilation at lmax 30 needed 4 GB; and a
daemon thread stopped inside LLVM at interpreter exit is not safe. A
background process still compiling when this one exits is terminated (so no
process outlives its parent's interpreter; an unfinished kernel is compiled
again next time).

Logging (``logging.getLogger(__name__)`` and ``numba_generic``'s): every
compilation at INFO with its duration; loads from the disk cache at DEBUG.

Threads: Numba's ``workqueue`` threading layer (the one left when neither
OpenMP nor TBB is available) aborts the process when two Python threads run
parallel Numba code at once; ``parallel_guard`` serialises the kernels'
calls under it (and on the first call of a process, before the layer is
known). The other guards around a call, shared by every kernel of the family:
``num_threads`` (a call's ``threads=``) and ``dynamic_schedule`` (prange's
chunk size, ``BLOCKS_PER_CHUNK``). Importing this module imports no Numba.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.numba.lanes import LANES_ENV

logger = logging.getLogger(__name__)

CACHE_ENV = "EINSUM_WORKBENCH_NUMBA_CACHE"
KERNEL_ENV = "EINSUM_WORKBENCH_NUMBA_KERNEL"
MODES = ("auto", "specialised", "generic")

#: Blocks a thread takes at a time (dynamic scheduling of prange, set by the caller with
#: ``dynamic_schedule``: ``numba.set_parallel_chunksize`` inside a cached function defeats the cache).
BLOCKS_PER_CHUNK = 256

#: Largest lmax for which a specialised (straight-line) kernel is compiled; above it only the
#: generic kernel runs (a documented limit: ``kernel="specialised"`` does not override it;
#: ``numba_fused.kernel_module`` still builds one for experiments). Measured here (Intel Xeon
#: Emerald Rapids, one thread, float64, GTO, default radial counts, compile on an empty cache):
#:
#: ====  ============  ===========  ==========  ==========
#: lmax  compile (s)   peak RSS MB  specialised generic
#: ====  ============  ===========  ==========  ==========
#:    8   2.5           249         0.18 us     0.57 us
#:   12   6.3           305         1.11        1.94
#:   14  14.4           365         3.43        5.56
#:   16  23.6           457         4.98        8.60
#:   18  35.2           602         10.1        13.1
#:   20  53.7           805         18.8        18.7
#: ====  ============  ===========  ==========  ==========
#:
#: (per pair; the issue's machine: lmax 20 80 s, lmax 30 455 s and 4 GB). Straight-line code
#: stops paying between 16 (1.7x faster than the generic kernel) and 20 (no faster).
SPECIALISE_MAX_LMAX = 16

_KINDS = {
    # kind: (module name prefix, kernel function)
    "pairs": ("einsum_workbench_numba_fused_", "expand_pairs"),
    "density": ("einsum_workbench_numba_density_", "density_segments"),
}


def cache_dir() -> Path:
    """Directory holding generated kernel sources and Numba's cache files for them:
    ``einsum_workbench.paths.numba_cache_dir()`` (``$EINSUM_WORKBENCH_NUMBA_CACHE``, else
    ``<cache root>/numba``, the root ``$EINSUM_WORKBENCH_CACHE`` or the user cache folder)."""
    from einsum_workbench.paths import numba_cache_dir

    return numba_cache_dir()


def cache_variables() -> tuple:
    """The values of the environment variables ``cache_dir`` reads (a tuple of str or None, cheap to
    compare on every call: the kernels key their module caches on it instead of on ``cache_dir()``,
    whose pathlib work costs ~10 us a call)."""
    return os.environ.get(CACHE_ENV), os.environ.get("EINSUM_WORKBENCH_CACHE"), os.environ.get("XDG_CACHE_HOME")


def write_once(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it.

    Numba's disk cache is keyed on the source file's modification time, so an
    existing file with the same text is never touched; a new one is written
    to a temporary file and renamed, so concurrent processes never see half
    a file.
    """
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def generated_module(name: str, text: str, directory: Path):
    """The generated module ``name`` with source ``text``: written to ``directory / f"{name}.py"``
    (``write_once``) and imported (``import_generated``); not compiled.

    Raises
    ------
    OSError
        ``directory`` is not writable.
    """
    path = directory / f"{name}.py"
    write_once(path, text)
    return import_generated(name, path)


def import_generated(name: str, path: Path):
    """Import the generated module ``name`` from ``path`` (once per process and path)."""
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Numba's cache locator looks the module up by name
        spec.loader.exec_module(module)
    return module


def resolve_mode(kernel=None) -> str:
    """``kernel`` if given, else ``$EINSUM_WORKBENCH_NUMBA_KERNEL``, else ``"auto"``; validated."""
    mode = kernel if kernel is not None else (os.environ.get(KERNEL_ENV) or "auto")
    if mode not in MODES:
        source = "kernel" if kernel is not None else KERNEL_ENV
        raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
    return mode


def specialisable(hypers: ExpansionHypers) -> bool:
    """Whether a specialised kernel is ever compiled for ``hypers`` (lmax <= ``SPECIALISE_MAX_LMAX``)."""
    return hypers.lmax <= SPECIALISE_MAX_LMAX


def signature(kind: str, dtype, n_channels: int) -> tuple:
    """The one Numba signature a specialised kernel is compiled for (and called with).

    Writable, aligned, C-contiguous arrays: ``r, rot, ax`` of ``dtype``;
    for the density ``starts`` (int64) and read-only float64 ``w``; one flat
    output per channel.
    """
    from numba import types
    from numba.np import numpy_support

    ft = numpy_support.from_dtype(np.dtype(dtype))
    inputs = (types.Array(ft, 2, "C"), types.Array(ft, 3, "C"), types.Array(ft, 2, "C"))
    outputs = (types.Array(ft, 1, "C"),) * n_channels
    if kind == "pairs":
        return inputs + outputs
    return inputs + (types.Array(types.int64, 1, "C"), types.Array(types.float64, 1, "C", readonly=True)) + outputs


@dataclass
class _Entry:
    """A specialised kernel of this process: ``status`` new -> (queued -> building -> built) -> ready,
    or failed / generic (never specialised)."""

    kind: str
    hypers: ExpansionHypers
    dtype: np.dtype
    options: dict
    status: str = "new"
    name: str = ""
    path: Path | None = None
    lanes: int = 0
    module: object = None
    process: subprocess.Popen | None = None
    log: object = None
    started: float = 0.0

    @property
    def label(self) -> str:
        what = "pair" if self.kind == "pairs" else "centre-density"
        return f"specialised {what} kernel for {self.hypers!r} ({self.dtype}, {self.lanes} lanes)"

    @property
    def function(self):
        return getattr(self.module, _KINDS[self.kind][1])


_entries: dict[tuple, _Entry] = {}
_lock = threading.RLock()
_queue: list[_Entry] = []
_running: list[_Entry] = []  # zero or one entry


def _source(entry: _Entry) -> str:
    if entry.kind == "pairs":
        from einsum_workbench.kernels.numba.codegen.pairs import generate_source

        return generate_source(entry.hypers, entry.dtype, **entry.options)
    from einsum_workbench.kernels.numba.codegen.density import generate_density_source

    return generate_density_source(entry.hypers, entry.dtype, **entry.options)


def _prepare(entry: _Entry) -> None:
    """Resolve lanes and name, write the source and import the module (no compilation)."""
    from einsum_workbench.kernels.numba.codegen.keys import kernel_key
    from einsum_workbench.kernels.numba.lanes import checked_density_lanes, checked_lanes

    options = entry.options
    entry.lanes = (checked_lanes if entry.kind == "pairs" else checked_density_lanes)(
        entry.dtype, options.get("lanes"))
    key = kernel_key(entry.hypers, entry.dtype, kind=entry.kind, **options)
    entry.name = _KINDS[entry.kind][0] + key
    entry.path = cache_dir() / f"{entry.name}.py"
    write_once(entry.path, _source(entry))
    entry.module = import_generated(entry.name, entry.path)


def _sig(entry: _Entry) -> tuple:
    return signature(entry.kind, entry.dtype, entry.hypers.lmax + 1)


def _in_disk_cache(entry: _Entry) -> bool:
    """Whether Numba's disk cache holds the kernel for this machine (a private-API probe;
    False if the probe fails, which only means a background build that finds it at once)."""
    try:
        dispatcher = entry.function
        cache = dispatcher._cache
        key = cache._index_key(_sig(entry), dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - a probe: any failure means "not known to be cached"
        logger.debug("disk-cache probe failed for %s", entry.name, exc_info=True)
        return False


def _load(entry: _Entry, why: str) -> None:
    """Compile or load the kernel in this process (``why``: what the log says it was)."""
    dispatcher = entry.function
    hits = sum(dispatcher.stats.cache_hits.values())
    start = time.perf_counter()
    dispatcher.compile(_sig(entry))
    seconds = time.perf_counter() - start
    if sum(dispatcher.stats.cache_hits.values()) > hits:
        logger.debug("%s: loaded from the disk cache (%s) in %.2f s", entry.label, entry.path.parent, seconds)
    elif why == "background":
        logger.warning("%s: the background build was not usable from the disk cache; compiled in this "
                       "process in %.1f s", entry.label, seconds)
    else:
        logger.info("%s: compiled in %.1f s (cached on disk in %s)", entry.label, seconds, entry.path.parent)
    entry.status = "ready"


_CHILD = """
import json, os, sys
spec = json.loads(sys.argv[1])
sys.path[:] = spec["sys_path"]
try:
    os.nice(10)
except OSError:
    pass
from einsum_workbench.kernels.numba.dispatch import _compile_in_child
_compile_in_child(spec)
"""


def _compile_in_child(spec: dict) -> None:
    """Body of the background process: compile one generated module's kernel into the disk cache."""
    module = import_generated(spec["name"], Path(spec["path"]))
    function = getattr(module, _KINDS[spec["kind"]][1])
    function.compile(signature(spec["kind"], spec["dtype"], spec["n_channels"]))


def _start(entry: _Entry) -> None:
    spec = {"name": entry.name, "path": str(entry.path), "kind": entry.kind, "dtype": entry.dtype.name,
            "n_channels": entry.hypers.lmax + 1, "sys_path": [p for p in sys.path if isinstance(p, str)]}
    env = dict(os.environ, **{CACHE_ENV: str(cache_dir()), "NUMBA_NUM_THREADS": "1", KERNEL_ENV: "specialised"})
    entry.log = tempfile.TemporaryFile()
    entry.started = time.perf_counter()
    entry.process = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=entry.log)
    entry.status = "building"
    _running.append(entry)
    logger.info("%s: compiling in a background process (pid %d); the generic kernel serves calls meanwhile",
                entry.label, entry.process.pid)


def _finish(entry: _Entry) -> None:
    """Record the end of ``entry``'s background process."""
    seconds = time.perf_counter() - entry.started
    code = entry.process.returncode
    _running.remove(entry)
    if code == 0:
        entry.status = "built"
        logger.info("%s: compiled in the background in %.1f s (cached on disk in %s)",
                    entry.label, seconds, entry.path.parent)
    else:
        entry.log.seek(0)
        tail = entry.log.read()[-3000:].decode(errors="replace")
        entry.status = "failed"
        logger.warning("%s: background compilation failed (exit %s after %.1f s); the generic kernel "
                       "stays in use in this process:\n%s", entry.label, code, seconds, tail)
    entry.log.close()
    entry.process = None


def _service(start: bool = True) -> None:
    """Poll the running background build; start the most recently requested queued one."""
    for entry in list(_running):
        if entry.process.poll() is not None:
            _finish(entry)
    if start and not _running and _queue:
        _start(_queue.pop())


def start_pending() -> None:
    """Start a queued background build if none runs (the kernels call it after computing, so
    that a new build's start-up does not compete with the call that requested it)."""
    if _queue:
        with _lock:
            _service()


def specialised(kind: str, hypers: ExpansionHypers, dtype, options: dict, mode: str):
    """The ready specialised module for this call, or None when the generic kernel must serve it.

    ``options``: ``lanes`` (and ``split`` for pairs) of the generators.
    """
    if mode == "generic":
        return None
    lookup = (kind, hypers, dtype, tuple(sorted(options.items())), cache_variables(),
              os.environ.get(LANES_ENV))
    entry = _entries.get(lookup)
    if entry is not None and entry.status == "ready":
        return entry.module
    with _lock:
        entry = _entries.get(lookup)
        if entry is None:
            entry = _Entry(kind, hypers, np.dtype(dtype), dict(options))
            if not specialisable(hypers):
                entry.status = "generic"
                logger.info("lmax %d > SPECIALISE_MAX_LMAX = %d: the generic kernel serves %r (%s)",
                            hypers.lmax, SPECIALISE_MAX_LMAX, hypers, entry.dtype)
            else:
                try:
                    _prepare(entry)  # raises (recording nothing) on bad options
                except OSError as err:  # cache directory not writable: serve with the generic kernel
                    logger.warning("%s: cannot write the kernel's source to %s (%s); the generic kernel "
                                   "serves it (set %s to a writable directory)", entry.kind, cache_dir(), err,
                                   CACHE_ENV)
                    entry.status = "generic"
                    _entries[lookup] = entry
                    return None
                if _in_disk_cache(entry):
                    _load(entry, "cache")
                elif mode == "auto":
                    entry.status = "queued"  # started by start_pending() after this call computes
                    _queue.append(entry)
            _entries[lookup] = entry
        if entry.status in ("queued", "building", "failed") and mode == "specialised":
            if entry.status == "building":  # finish the build already under way
                entry.process.wait()
                _service()
            if entry.status == "queued":
                _queue.remove(entry)
            if entry.status in ("queued", "failed"):  # compile here (a compilation error then raises)
                entry.status = "new"
        _service(start=entry.status != "queued")
        if entry.status == "built":
            _load(entry, "background")
        elif entry.status == "new":  # mode "specialised", not cached: compile here
            _load(entry, "here")
        return entry.module if entry.status == "ready" else None


def status(kind: str, hypers: ExpansionHypers, dtype) -> list[str]:
    """Statuses of this process's specialised kernels for (kind, hypers, dtype), for tests and benches."""
    dtype = np.dtype(dtype)
    return [e.status for key, e in _entries.items() if key[:3] == (kind, hypers, dtype)]


def wait_for_background(timeout: float | None = None) -> bool:
    """Wait until no background build runs or is queued (True), or ``timeout`` seconds (False).

    The builds' kernels are loaded by the next call that needs them.
    """
    deadline = None if timeout is None else time.perf_counter() + timeout
    while True:
        with _lock:
            _service()
            if not _running and not _queue:
                return True
            process = _running[0].process
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            return False
        try:
            process.wait(timeout=left)
        except subprocess.TimeoutExpired:
            return False


def _after_fork_in_child() -> None:
    """A forked child neither polls nor stops its parent's background build: it serves those
    kernels with the generic one (a later process finds them in the disk cache); fresh locks."""
    global _lock, _parallel_lock
    _lock = threading.RLock()
    _parallel_lock = threading.Lock()
    for entry in _running + _queue:
        entry.status = "generic"
        entry.process = None
    _running.clear()
    _queue.clear()


@atexit.register
def _stop_background() -> None:
    """Terminate a background build still running at exit (and drop the queue)."""
    _queue.clear()
    for entry in list(_running):
        process = entry.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logger.debug("%s: background compilation stopped at exit", entry.label)


# ---------------------------------------------------------------------------
# Threads

_parallel_lock = threading.Lock()
_layer: list[str] = []  # the active threading layer, once Numba has launched its threads
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_guard():
    """Context for one call of a parallel kernel: a process-wide lock under Numba's
    ``workqueue`` threading layer (not thread-safe: concurrent parallel calls abort the
    process), also before the layer is known (the first parallel call of a process);
    nothing otherwise (OpenMP and TBB layers accept concurrent calls)."""
    if not _layer:
        import numba

        try:
            _layer.append(numba.threading_layer())
        except ValueError:  # no parallel region has run yet: the layer is not chosen yet
            return _parallel_lock
    return _parallel_lock if _layer[0] == "workqueue" else contextlib.nullcontext()


@contextlib.contextmanager
def num_threads(threads):
    """Run with ``numba.set_num_threads(threads)``; None keeps the current count (restored afterwards).

    Raises
    ------
    ValueError
        ``threads`` not a positive int, or more than the ``NUMBA_NUM_THREADS`` Numba launched.
    """
    if threads is None:
        yield
        return
    import numba

    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"threads={threads} exceeds the {numba.config.NUMBA_NUM_THREADS} threads Numba "
            "launched (NUMBA_NUM_THREADS); raise NUMBA_NUM_THREADS before importing numba"
        )
    previous = numba.get_num_threads()
    numba.set_num_threads(int(threads))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@contextlib.contextmanager
def dynamic_schedule(chunk: int = BLOCKS_PER_CHUNK):
    """prange hands out ``chunk`` iterations at a time (a thread slowed by another
    process takes fewer); which thread computes a pair never changes its result.
    The previous chunk size is restored afterwards."""
    import numba

    previous = numba.set_parallel_chunksize(chunk)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(previous)

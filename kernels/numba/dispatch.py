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
    one into the disk cache (one at a time per process, the most recently
    requested first, at lower CPU priority); the first call after it is done
    loads it and uses it from then on, and so does every later process. A
    call that would take longer with the generic kernel than the build still
    needs waits for the build (the wait rule below). Nothing is ever compiled
    in the user's process in this mode, only loaded from the disk cache.
    Above ``SPECIALISE_MAX_LMAX`` only the generic kernel is used. So the
    first calls may differ from later ones by rounding (both agree with the
    reference within the suite's tolerances; each kernel is deterministic).
    One call is always computed by one kernel: ``numba_fused`` and
    ``numba_density`` call ``specialised`` once per call, before computing,
    and run the whole call on its answer.
``specialised``
    Wait for the specialised kernel: compile it in this process on the first
    call if it is not cached (the behaviour before the generic kernel;
    the tests use it), under the kernel's build lock (a build running in
    another process is waited for, then loaded). Above
    ``SPECIALISE_MAX_LMAX`` the generic kernel.
``generic``
    Always the generic kernel.

Why a process and not a thread: Numba's compiler is mostly Python (it holds
the GIL) and holds Numba's global compiler lock for the whole compilation,
which would stall any other Numba function's first call in the user's
process for up to minutes; a compilation at lmax 30 needed 4 GB; and a
daemon thread stopped inside LLVM at interpreter exit is not safe.

Background builds are detached: the build process runs in its own session
(``start_new_session``), its output appended to ``<cache_dir>/<kernel
name>.log``, and it is not stopped when the process that asked for it
exits: a build that has started ends in the disk cache (a script shorter
than the compile leaves the kernel to its next run). The build process
holds ``filelock.FileLock(<cache_dir>/<kernel name>.lock)`` while it
compiles (and ``<kernel name>.build``, its launch time, exists meanwhile), so
no two processes build the same kernel: a process that finds the lock held
(and the ``.build`` file there: not another process's try of the lock) serves
its calls with the generic kernel (status ``elsewhere``), tries the lock at
most every ``PROBE_SECONDS`` and loads the kernel from the disk cache once
the lock is free and the cache holds it; a build process that gets the lock
after another one finds the kernel cached and compiles nothing. A build
that ended without the kernel in the cache (crashed or killed: the lock is
freed by the system) is retried once, then logged and given up for this
process (the generic kernel serves it). Every compilation appends one JSON
line to ``<cache_dir>/builds.jsonl`` (``build_records``: name, kind, lmax,
dtype, seconds since launch, compile seconds, pid, where) and is logged at
INFO with its duration. Exit: there is nothing to stop or wait for. Numba
writes each cache file under a temporary name and renames it (``os.replace``
in ``numba.core.caching``), so a build killed at any point leaves no
half-written file; it writes the index before the data file, so
``_in_disk_cache`` counts a kernel as cached only when the data file the
index names exists. ``wait_for_background`` waits for builds (tests,
benchmarks).

The wait rule (``auto``; a call of ``n`` pairs, ``n_pairs`` given, whose
kernel is being built by this process, by another one, or is queued here
while no other build of this process runs, which then starts it at once):

- ``G = n * g``: the generic kernel's estimated seconds for this call, ``g``
  its seconds per pair for this (kind, hyper-parameters, dtype, thread
  count) measured on this process's earlier generic calls of at least
  ``MIN_MEASURED_PAIRS`` pairs (pair-weighted mean; the first call of each
  is left out: it loads the kernel and builds its tables), else
  ``DEFAULT_GENERIC_US_PER_PAIR[lmax] / threads``;
- ``C``: the expected seconds from a build's launch to its kernel in the
  cache, for (kind, lmax): the longest of the last three such builds in
  ``builds.jsonl`` (the same dtype's if any), else ``COMPILE_SECONDS_FACTOR``
  times the compile time of the ``SPECIALISE_MAX_LMAX`` table's first row at
  or above lmax;
- ``R = max(C - e, 0) + LOAD_SECONDS``, ``e`` the seconds since the build's
  launch;
- if ``G > R`` the call waits for the build, at most ``R + max(WAIT_MARGIN_SECONDS,
  WAIT_MARGIN_FRACTION * C)`` seconds (logged at INFO), and runs on the
  specialised kernel if it is ready by then, else on the generic one (and no
  later call waits for that build again); if ``G <= R`` it runs on the
  generic kernel at once.

The estimates are the module functions ``generic_seconds`` and
``compile_seconds`` (replaceable, e.g. by tests); ``wait_bound`` is the rule.

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

#: The table's compile seconds by lmax (the wait rule's default expected build time, times
#: ``COMPILE_SECONDS_FACTOR``, from the first row at or above lmax, before ``builds.jsonl`` has a build).
TABLE_COMPILE_SECONDS = {8: 2.5, 12: 6.3, 14: 14.4, 16: 23.6}
#: Safety factor on ``TABLE_COMPILE_SECONDS``: a build's launch to its kernel in the cache also
#: imports Numba, runs at lower priority and may share the CPUs (lmax 6 here: ~4 s; lmax 10 ~11 s).
COMPILE_SECONDS_FACTOR = 2.0
#: One-thread generic-kernel microseconds per pair by lmax (float64, GTO, default radial counts;
#: the table above, ``numba_generic``'s docstring, lmax 2 and 4 measured as lmax 6 here): the wait
#: rule's ``g`` before this process has measured a call (first row at or above lmax, / threads).
DEFAULT_GENERIC_US_PER_PAIR = {2: 0.10, 4: 0.15, 6: 0.33, 8: 0.57, 10: 1.75, 12: 1.94, 14: 5.56, 16: 8.60}
#: Seconds to load a built kernel from the disk cache (the wait rule's ``R`` includes it).
LOAD_SECONDS = 0.3
#: The wait rule's bound: ``R + max(WAIT_MARGIN_SECONDS, WAIT_MARGIN_FRACTION * C)`` seconds.
WAIT_MARGIN_SECONDS = 1.0
WAIT_MARGIN_FRACTION = 0.25
#: Generic calls with fewer pairs are not measured (their fixed costs would dominate ``g``).
MIN_MEASURED_PAIRS = 256
#: A process whose kernel is built elsewhere tries the build lock at most this often (seconds; one
#: try ~0.2 ms); during a wait, every ``WAIT_POLL_SECONDS``.
PROBE_SECONDS = 0.25
WAIT_POLL_SECONDS = 0.02
#: Builds that end without the kernel in the disk cache are retried this many times per process.
BUILD_RETRIES = 1
#: Longest wait for another process's build lock (a build process, mode ``specialised``), seconds.
LOCK_WAIT_SECONDS = 3600.0
#: File of ``cache_dir`` where every compilation is recorded (``build_records``).
BUILD_RECORDS = "builds.jsonl"

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
    for the density ``neighbour`` and ``starts`` (int64) and read-only
    float64 ``w``; one flat output per channel.
    """
    from numba import types
    from numba.np import numpy_support

    ft = numpy_support.from_dtype(np.dtype(dtype))
    inputs = (types.Array(ft, 2, "C"), types.Array(ft, 3, "C"), types.Array(ft, 2, "C"))
    outputs = (types.Array(ft, 1, "C"),) * n_channels
    if kind == "pairs":
        return inputs + outputs
    index = types.Array(types.int64, 1, "C")
    return inputs + (index, index, types.Array(types.float64, 1, "C", readonly=True)) + outputs


@dataclass
class _Entry:
    """A specialised kernel of this process: ``status`` new -> (queued -> building -> built) -> ready,
    new / queued -> elsewhere (another process holds its build lock) -> ready, a failed build back
    to queued once, else failed; or generic (never specialised)."""

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
    started: float = 0.0  # perf_counter() at this process's build launch
    launched: float = 0.0  # time.time() at the same moment (shared with the build process)
    attempts: int = 0  # builds seen ending without the kernel in the disk cache
    next_probe: float = 0.0  # time.monotonic() of the next try of another process's build lock
    waited: bool = False  # a call waited for this build (the wait rule waits once per build)
    builder: int = 0  # pid of a build process of another process (a forked child's parent's), 0: unknown

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


def _lock_file(entry: _Entry) -> Path:
    """The build lock of ``entry``'s kernel: ``<cache_dir>/<kernel name>.lock``."""
    return entry.path.parent / f"{entry.name}.lock"


def _in_disk_cache(entry: _Entry) -> bool | None:
    """Whether Numba's disk cache holds the kernel for this machine: the index names it *and* the
    data file it names exists (Numba writes the index first, then the data file, each atomically).
    None if the probe (Numba's private API) fails: not known either way."""
    try:
        dispatcher = entry.function
        cache = dispatcher._cache
        key = cache._index_key(_sig(entry), dispatcher.targetctx.codegen())
        cache_file = cache._cache_file
        data_name = cache_file._load_index().get(key)
        return data_name is not None and os.path.exists(cache_file._data_path(data_name))
    except Exception:  # noqa: BLE001 - a probe: any failure means "not known to be cached"
        logger.debug("disk-cache probe failed for %s", entry.name, exc_info=True)
        return None


def _held_elsewhere(lock_file: Path) -> bool:
    """Whether another process holds the build lock ``lock_file`` (a try without waiting, released at
    once; False when the lock cannot be taken for another reason, e.g. an unwritable directory)."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError as err:
        logger.debug("cannot try the build lock %s: %s", lock_file, err)
        return False
    lock.release()
    return False


def _building_elsewhere(entry: _Entry) -> bool:
    """Whether a build process of another process builds ``entry``'s kernel: its ``.build`` file
    exists (written once it holds the lock) and the lock is held (not a mere try of another process)."""
    return (entry.path.parent / f"{entry.name}.build").exists() and _held_elsewhere(_lock_file(entry))


def _record_build(directory: Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``directory / BUILD_RECORDS`` (one ``O_APPEND`` write)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(directory / BUILD_RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as err:
        logger.warning("cannot record a kernel build in %s: %s", directory / BUILD_RECORDS, err)


_records_seen: dict = {}  # path -> ((mtime_ns, size), records)


def build_records(directory=None) -> list[dict]:
    """The compilations recorded in ``<directory>/builds.jsonl`` (default ``cache_dir()``), oldest first.

    Each a dict: ``name`` (generated module), ``kind`` ("pairs" or "density"), ``lmax`` (int),
    ``dtype`` (e.g. "float64"), ``seconds`` (float, from the build's launch to the kernel in the
    cache), ``compile_seconds`` (float, Numba's compilation alone), ``pid`` (int), ``where``
    ("background": a build process; "here": mode ``specialised`` in the calling process),
    ``finished`` (Unix time). An absent or unreadable file gives []; malformed lines are skipped.
    """
    path = Path(directory if directory is not None else cache_dir()) / BUILD_RECORDS
    try:
        info = path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        seen = _records_seen.get(path)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        text = path.read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    _records_seen[path] = (stamp, records)
    return records


def default_compile_seconds(lmax: int) -> float:
    """The wait rule's expected build seconds without a recorded build: ``COMPILE_SECONDS_FACTOR``
    times ``TABLE_COMPILE_SECONDS`` of the first row at or above ``lmax`` (the last row above it)."""
    rows = sorted(TABLE_COMPILE_SECONDS.items())
    seconds = next((s for top, s in rows if lmax <= top), rows[-1][1])
    return COMPILE_SECONDS_FACTOR * seconds


def compile_seconds(kind: str, hypers: ExpansionHypers, dtype) -> float:
    """Expected seconds from a build's launch to its kernel in the disk cache (the wait rule's ``C``).

    The longest of the last three builds recorded in ``cache_dir()``'s ``builds.jsonl`` for
    (``kind``, ``hypers.lmax``) of ``dtype``, else of any dtype, else ``default_compile_seconds``.
    Replace this module function to inject another estimate (tests do).
    """
    name = np.dtype(dtype).name
    same = [r for r in build_records() if r.get("kind") == kind and r.get("lmax") == hypers.lmax
            and isinstance(r.get("seconds"), (int, float))]
    same = [r for r in same if r.get("dtype") == name] or same
    if same:
        return max(float(r["seconds"]) for r in same[-3:])
    return default_compile_seconds(hypers.lmax)


_generic_rates: dict[tuple, list] = {}  # (kind, hypers, dtype, threads) -> [seconds, pairs] measured
_generic_seen: set = set()  # keys whose first generic call (not measured) has run
_timing = threading.local()  # .call: (key, n_pairs, perf_counter()) of the generic call under way


def generic_seconds(kind: str, hypers: ExpansionHypers, dtype, n_pairs: int, threads: int) -> float:
    """Estimated seconds of a generic-kernel call of ``n_pairs`` pairs on ``threads`` threads (the wait
    rule's ``G``): ``n_pairs`` times the seconds per pair measured on this process's earlier generic
    calls for (kind, hypers, dtype, threads) (see ``MIN_MEASURED_PAIRS``), else
    ``DEFAULT_GENERIC_US_PER_PAIR`` (first row at or above lmax) / ``threads``.
    Replace this module function to inject another estimate (tests do).
    """
    rate = _generic_rates.get((kind, hypers, np.dtype(dtype), threads))
    if rate is not None and rate[1] > 0:
        return n_pairs * rate[0] / rate[1]
    rows = sorted(DEFAULT_GENERIC_US_PER_PAIR.items())
    us = next((u for top, u in rows if hypers.lmax <= top), rows[-1][1])
    return n_pairs * us * 1e-6 / max(1, threads)


def _note_generic(key: tuple, n_pairs: int, began: float) -> None:
    """Record the generic call that began at ``began`` (``_timing``): seconds per pair for ``key``."""
    seconds = time.perf_counter() - began
    if key not in _generic_seen:  # the first one loads the kernel and builds the tables
        _generic_seen.add(key)
        return
    if n_pairs >= MIN_MEASURED_PAIRS:
        rate = _generic_rates.setdefault(key, [0.0, 0])
        rate[0] += seconds
        rate[1] += n_pairs


def wait_bound(generic_s: float, compile_s: float, elapsed_s: float) -> float | None:
    """The wait rule: seconds to wait at most for a build, or None for no wait.

    ``generic_s``: the generic kernel's estimated seconds for the call (``G``); ``compile_s``: the
    build's expected seconds from launch (``C``); ``elapsed_s``: seconds since its launch (``e``).
    With ``R = max(C - e, 0) + LOAD_SECONDS``: None if ``G <= R``, else
    ``R + max(WAIT_MARGIN_SECONDS, WAIT_MARGIN_FRACTION * C)``.
    """
    remaining = max(compile_s - elapsed_s, 0.0) + LOAD_SECONDS
    if generic_s <= remaining:
        return None
    return remaining + max(WAIT_MARGIN_SECONDS, WAIT_MARGIN_FRACTION * compile_s)


def _load(entry: _Entry, why: str) -> None:
    """Compile or load the kernel in this process (``why``: what the log says it was: "cache",
    "background" or "elsewhere" (built by a build process), "here" (mode ``specialised``))."""
    dispatcher = entry.function
    hits = sum(dispatcher.stats.cache_hits.values())
    start = time.perf_counter()
    dispatcher.compile(_sig(entry))
    seconds = time.perf_counter() - start
    if sum(dispatcher.stats.cache_hits.values()) > hits:
        logger.debug("%s: loaded from the disk cache (%s) in %.2f s", entry.label, entry.path.parent, seconds)
    else:
        if why in ("background", "elsewhere"):
            logger.warning("%s: the background build was not usable from the disk cache; compiled in this "
                           "process in %.1f s", entry.label, seconds)
        else:
            logger.info("%s: compiled in %.1f s (cached on disk in %s)", entry.label, seconds, entry.path.parent)
        _record_build(entry.path.parent, {
            "name": entry.name, "kind": entry.kind, "lmax": entry.hypers.lmax, "dtype": entry.dtype.name,
            "seconds": seconds, "compile_seconds": seconds, "pid": os.getpid(), "where": "here",
            "finished": time.time()})
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
    """Body of the (detached) build process: under the kernel's build lock, compile one generated
    module's kernel into the disk cache, or find it there (built meanwhile by another process);
    record a compilation in ``builds.jsonl``; log to stderr (the kernel's ``.log`` file)."""
    from filelock import FileLock, Timeout

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s")
    path = Path(spec["path"])
    directory, name = path.parent, spec["name"]
    lock = FileLock(directory / f"{name}.lock")
    try:
        lock.acquire(timeout=LOCK_WAIT_SECONDS)
    except Timeout:
        logger.warning("%s: its build lock stayed taken for %.0f s; not built", name, LOCK_WAIT_SECONDS)
        sys.exit(75)
    marker = directory / f"{name}.build"
    try:
        marker.write_text(json.dumps({"pid": os.getpid(), "launched": spec["launched"]}))
        function = getattr(import_generated(name, path), _KINDS[spec["kind"]][1])
        hits = sum(function.stats.cache_hits.values())
        start = time.perf_counter()
        function.compile(signature(spec["kind"], spec["dtype"], spec["n_channels"]))
        compile_s = time.perf_counter() - start
        if sum(function.stats.cache_hits.values()) > hits:
            logger.info("%s: already in the disk cache (built by another process): nothing compiled", name)
        else:
            seconds = time.time() - spec["launched"]
            _record_build(directory, {
                "name": name, "kind": spec["kind"], "lmax": spec["n_channels"] - 1, "dtype": spec["dtype"],
                "seconds": seconds, "compile_seconds": compile_s, "pid": os.getpid(), "where": "background",
                "finished": time.time()})
            logger.info("%s: compiled in %.1f s (%.1f s since launch), cached on disk in %s",
                        name, compile_s, seconds, directory)
    finally:
        try:
            marker.unlink()
        except OSError:
            pass
        lock.release()


def _start(entry: _Entry) -> None:
    """Launch the detached build process of ``entry`` (status building)."""
    entry.launched = time.time()
    spec = {"name": entry.name, "path": str(entry.path), "kind": entry.kind, "dtype": entry.dtype.name,
            "n_channels": entry.hypers.lmax + 1, "sys_path": [p for p in sys.path if isinstance(p, str)],
            "launched": entry.launched}
    env = dict(os.environ, **{CACHE_ENV: str(entry.path.parent), "NUMBA_NUM_THREADS": "1",
                              KERNEL_ENV: "specialised"})
    log_path = entry.path.parent / f"{entry.name}.log"
    try:
        with open(log_path, "ab") as log:
            log.write(f"--- build launched by pid {os.getpid()} at {time.ctime(entry.launched)}\n".encode())
            log.flush()
            entry.process = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
    except OSError as err:
        entry.attempts = BUILD_RETRIES
        _failed(entry, f"cannot launch its build process ({err})")
        return
    entry.started = time.perf_counter()
    entry.status = "building"
    _running.append(entry)
    logger.info("%s: compiling in a background process (pid %d, detached: it finishes even if this "
                "process exits; log %s); the generic kernel serves calls meanwhile",
                entry.label, entry.process.pid, log_path)


def _log_tail(entry: _Entry) -> str:
    try:
        with open(entry.path.parent / f"{entry.name}.log", "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 3000))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _failed(entry: _Entry, why: str) -> None:
    """A build of ``entry`` ended without its kernel in the disk cache: queue it again once, then give up."""
    entry.attempts += 1
    if entry.attempts <= BUILD_RETRIES:
        logger.warning("%s: %s; building it again (once)", entry.label, why)
        entry.status = "queued"
        entry.waited = False  # the wait rule may wait for the new build
        _queue.append(entry)
    else:
        entry.status = "failed"
        logger.warning("%s: %s; given up: the generic kernel stays in use in this process", entry.label, why)


def _finish(entry: _Entry) -> None:
    """Record the end of ``entry``'s background process."""
    seconds = time.perf_counter() - entry.started
    code = entry.process.returncode
    _running.remove(entry)
    entry.process = None
    if code == 0:
        entry.status = "built"
        logger.info("%s: compiled in the background in %.1f s (cached on disk in %s)",
                    entry.label, seconds, entry.path.parent)
    else:
        _failed(entry, f"background compilation failed (exit {code} after {seconds:.1f} s):\n{_log_tail(entry)}")


def _where(entry: _Entry) -> str | None:
    """"built" (the disk cache holds the kernel), "elsewhere" (another process holds its build lock),
    else None (nobody builds it)."""
    if _in_disk_cache(entry):
        return "built"
    if _building_elsewhere(entry):
        entry.next_probe = time.monotonic() + PROBE_SECONDS
        logger.info("%s: being built by another process (lock %s); the generic kernel serves calls "
                    "meanwhile", entry.label, _lock_file(entry))
        return "elsewhere"
    return None


def _service(start: bool = True) -> None:
    """Poll the running background build; start the most recently requested queued one (unless the
    disk cache has it or another process builds it)."""
    for entry in list(_running):
        if entry.process.poll() is not None:
            _finish(entry)
    while start and not _running and _queue:
        entry = _queue.pop()
        found = _where(entry)
        if found is None:
            _start(entry)
        else:
            entry.status = found


def _recorded_seconds(entry: _Entry) -> str:
    seconds = [r.get("seconds") for r in build_records(entry.path.parent) if r.get("name") == entry.name]
    return f" in {seconds[-1]:.1f} s" if seconds and isinstance(seconds[-1], (int, float)) else ""


def _advance(entry: _Entry, probe_now: bool = False) -> None:
    """Mode ``auto``, under ``_lock``: load a built kernel (from the disk cache); try the lock of a
    kernel built elsewhere (at most every ``PROBE_SECONDS`` unless ``probe_now``) and load it once
    free; a build that ended without the kernel in the cache counts as failed (``_failed``)."""
    if entry.status == "built":
        if _in_disk_cache(entry) is False:
            _failed(entry, "its build ended without the kernel in the disk cache")
        else:
            _load(entry, "background")
    elif entry.status == "elsewhere":
        now = time.monotonic()
        if not probe_now and now < entry.next_probe:
            return
        entry.next_probe = now + PROBE_SECONDS
        if _held_elsewhere(_lock_file(entry)) or (entry.builder and _alive(entry.builder)):
            return  # (a known build process may not have taken the lock yet)
        if _in_disk_cache(entry) is False:
            _failed(entry, "its build in another process ended without the kernel in the disk cache")
        else:
            logger.info("%s: built by another process%s; loading it from the disk cache",
                        entry.label, _recorded_seconds(entry))
            _load(entry, "elsewhere")


def _compile_here(entry: _Entry) -> None:
    """Mode ``specialised``: load the kernel from the disk cache or compile it in this process, under
    its build lock (a build of another process is waited for first, then loaded)."""
    from filelock import FileLock, Timeout

    lock = FileLock(_lock_file(entry))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("%s: waiting for its build in another process (lock %s)", entry.label, _lock_file(entry))
            lock.acquire(timeout=LOCK_WAIT_SECONDS)
    except (Timeout, OSError) as err:
        logger.warning("%s: cannot take its build lock (%s); compiling without it", entry.label, err)
        lock = None
    try:
        _load(entry, "here")
    finally:
        if lock is not None:
            lock.release()


def _new_entry(kind: str, hypers: ExpansionHypers, dtype, options: dict, mode: str) -> _Entry:
    """A new entry: generic above the limit or without a writable cache; loaded if cached; in mode
    ``auto`` queued, or ``elsewhere`` if another process builds it. Raises on bad options."""
    entry = _Entry(kind, hypers, np.dtype(dtype), dict(options))
    if not specialisable(hypers):
        entry.status = "generic"
        logger.info("lmax %d > SPECIALISE_MAX_LMAX = %d: the generic kernel serves %r (%s)",
                    hypers.lmax, SPECIALISE_MAX_LMAX, hypers, entry.dtype)
        return entry
    try:
        _prepare(entry)  # raises (recording nothing) on bad options
    except OSError as err:  # cache directory not writable: serve with the generic kernel
        logger.warning("%s: cannot write the kernel's source to %s (%s); the generic kernel "
                       "serves it (set %s to a writable directory)", entry.kind, cache_dir(), err, CACHE_ENV)
        entry.status = "generic"
        return entry
    if _in_disk_cache(entry):
        _load(entry, "cache")
    elif mode == "auto":
        if _building_elsewhere(entry):
            entry.status = "elsewhere"
            entry.next_probe = time.monotonic() + PROBE_SECONDS
            logger.info("%s: being built by another process (lock %s); the generic kernel serves calls "
                        "meanwhile", entry.label, _lock_file(entry))
        else:
            entry.status = "queued"  # started by start_pending() after this call computes
            _queue.append(entry)
    return entry


def _maybe_wait(entry: _Entry, n_pairs: int) -> None:
    """The wait rule (module docstring) for a call of ``n_pairs`` pairs; not under ``_lock``."""
    import numba

    threads = numba.get_num_threads()
    generic_s = generic_seconds(entry.kind, entry.hypers, entry.dtype, n_pairs, threads)
    with _lock:
        if entry.waited or entry.status not in ("queued", "building", "elsewhere"):
            return
        if entry.status == "queued" and (_running or entry not in _queue):
            return  # another build of this process runs first: no estimate of its end
        compile_s = compile_seconds(entry.kind, entry.hypers, entry.dtype)
        if wait_bound(generic_s, compile_s, _elapsed(entry)) is None:
            return
        if entry.status == "queued":  # start it now
            _queue.remove(entry)
            found = _where(entry)
            if found is None:
                _start(entry)
            else:
                entry.status = found
            _advance(entry)
            if entry.status not in ("building", "elsewhere"):
                return
        elapsed = _elapsed(entry)
        bound = wait_bound(generic_s, compile_s, elapsed)
        if bound is None:
            return
        entry.waited = True
    logger.info("%s: waiting up to %.1f s for its build (expected %.1f s from launch, %.1f s elapsed): the "
                "generic kernel would take ~%.2f s for this call's %d pairs",
                entry.label, bound, compile_s, elapsed, generic_s, n_pairs)
    start = time.perf_counter()
    while True:
        with _lock:
            _service(start=False)
            _advance(entry, probe_now=True)
            state = entry.status
        if state not in ("building", "built", "elsewhere") or time.perf_counter() - start >= bound:
            break
        time.sleep(WAIT_POLL_SECONDS)
    if state == "ready":
        logger.info("%s: ready after a wait of %.1f s; it serves this call", entry.label, time.perf_counter() - start)
    else:
        logger.info("%s: not ready after a wait of %.1f s (%s); the generic kernel serves this call",
                    entry.label, time.perf_counter() - start, state)


def _elapsed(entry: _Entry) -> float:
    """Seconds since ``entry``'s build was launched: this process's, or another's (its ``.build``
    file, written when it took the lock); 0 when not known (queued, or not yet locked)."""
    if entry.status == "building":
        return max(0.0, time.time() - entry.launched)
    if entry.status == "elsewhere":
        try:
            launched = json.loads((entry.path.parent / f"{entry.name}.build").read_text())["launched"]
            return max(0.0, time.time() - float(launched))
        except (OSError, ValueError, KeyError, TypeError):
            return max(0.0, time.time() - entry.launched) if entry.launched else 0.0
    return 0.0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def start_pending() -> None:
    """After a generic-kernel call: record its time (the wait rule's measured ``g``, for the call
    ``specialised`` was last asked about in this thread with ``n_pairs``) and start a queued
    background build if none runs (after computing, so that a new build's start-up does not
    compete with the call that requested it)."""
    call = getattr(_timing, "call", None)
    if call is not None:
        _timing.call = None
        _note_generic(*call)
    if _queue:
        with _lock:
            _service()


def specialised(kind: str, hypers: ExpansionHypers, dtype, options: dict, mode: str, n_pairs: int | None = None):
    """The ready specialised module for this call, or None when the generic kernel must serve it.

    Call it once per kernel call, before computing, and run the whole call on its answer (one call
    never mixes the kernels); after a generic computation call ``start_pending()``.

    Parameters
    ----------
    kind : "pairs" or "density"
    hypers : ExpansionHypers
    dtype : numpy dtype (float64 or float32)
    options : dict
        ``lanes`` (and ``split`` for pairs) of the generators.
    mode : "auto", "specialised" or "generic" (``resolve_mode``)
    n_pairs : int, optional
        The call's pair count: in mode ``auto`` the wait rule (module docstring) may wait for a
        build under way, and the generic call's time is measured; None: no wait, no measurement.

    Returns
    -------
    module or None
        The generated module (its kernel compiled or loaded), or None: use the generic kernel.

    Raises
    ------
    ValueError
        bad ``options`` (the generators'); mode ``specialised``: a compilation error.
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
            entry = _new_entry(kind, hypers, dtype, options, mode)
            _entries[lookup] = entry
        if mode == "specialised":
            if entry.status == "building":  # finish this process's build already under way
                entry.process.wait()
                _service(start=False)
            if entry.status == "queued" and entry in _queue:
                _queue.remove(entry)
            if entry.status not in ("ready", "generic"):
                _compile_here(entry)  # a compilation error then raises
        else:
            _service(start=entry.status != "queued")
            _advance(entry)
    if mode == "auto" and n_pairs and not entry.waited and entry.status in ("queued", "building", "elsewhere"):
        _maybe_wait(entry, int(n_pairs))
    if entry.status == "ready":
        return entry.module
    if n_pairs:
        import numba

        _timing.call = ((kind, hypers, np.dtype(dtype), numba.get_num_threads()), int(n_pairs), time.perf_counter())
    return None


def status(kind: str, hypers: ExpansionHypers, dtype) -> list[str]:
    """Statuses of this process's specialised kernels for (kind, hypers, dtype), for tests and benches:
    a list of str, one per entry (``new``, ``queued``, ``building``, ``built``, ``elsewhere``: built
    by another process, ``ready``, ``failed``, ``generic``: never specialised)."""
    dtype = np.dtype(dtype)
    return [e.status for key, e in _entries.items() if key[:3] == (kind, hypers, dtype)]


def wait_for_background(timeout: float | None = None) -> bool:
    """Wait until no build of this process's kernels is queued, runs in a build process of this one,
    or runs in another process (its lock held) (True), or ``timeout`` seconds (False).

    Starts queued builds one at a time meanwhile (a build retried after a failure is waited for
    too). Kernels built by this process's build processes are loaded by the next call that needs
    them; those built by another process are loaded here once its lock is free. Builds are
    detached and nothing needs it at exit: for tests and benchmarks.
    """
    deadline = None if timeout is None else time.perf_counter() + timeout
    while True:
        with _lock:
            _service()
            for entry in list(_entries.values()):
                if entry.status == "elsewhere":
                    _advance(entry, probe_now=True)
            _service()
            elsewhere = any(e.status == "elsewhere" for e in _entries.values())
            if not _running and not _queue and not elsewhere:
                return True
            process = _running[0].process if _running else None
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            return False
        step = PROBE_SECONDS if left is None else min(left, PROBE_SECONDS)
        if process is None:
            time.sleep(step)
            continue
        try:
            process.wait(timeout=step)
        except subprocess.TimeoutExpired:
            pass


def _after_fork_in_child() -> None:
    """A forked child does not poll its parent's build process: it treats that build as one of
    another process (``elsewhere``: its lock, then the disk cache) and serves the kernel with the
    generic one meanwhile; its queued builds stay queued (the build lock keeps the parent's and
    its own from compiling the same kernel twice); fresh locks."""
    global _lock, _parallel_lock
    _lock = threading.RLock()
    _parallel_lock = threading.Lock()
    for entry in _running:
        entry.status = "elsewhere"
        entry.builder = entry.process.pid
        entry.process = None
        entry.next_probe = 0.0
    _running.clear()


# ---------------------------------------------------------------------------
# Threads

_parallel_lock = threading.Lock()  # unused here now: parallel_guard's lock lives in einsum_workbench.threads
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# moved to einsum_workbench.threads (the reference neighbour list, below the kernels, needs it too)
from einsum_workbench.threads import parallel_guard  # noqa: E402,F401


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

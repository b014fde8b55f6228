"""Measuring one variant on one pair batch: first call, steady state, latency,
peak memory, and the context (versions, CPU model, pinning) stored with it.

Shared by the pytest-benchmark suites (``bench/test_*.py``) and the command
line runner (``einsum-workbench run``), so both report the same
quantities the same way. Import it only after the threads are pinned
(:mod:`.pinning`): it imports NumPy.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

#: distributions whose versions are stored with every result
VERSIONED_PACKAGES = (
    "einsum-workbench", "numpy", "scipy", "numba", "torch", "opt_einsum", "threadpoolctl",
    "pytest-benchmark", "ase", "vesin",
)


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    """Installed versions of ``VERSIONED_PACKAGES`` (None when absent) and Python's.

    Read from the distributions' metadata, so nothing is imported.
    """
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's brand string from py-cpuinfo (``/proc/cpuinfo`` if py-cpuinfo fails)."""
    try:
        import cpuinfo

        brand = cpuinfo.get_cpu_info().get("brand_raw")
        if brand:
            return brand
    except Exception:  # py-cpuinfo probes the CPU in a subprocess; any failure falls back
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# glibc returns large blocks (above a dynamic threshold of at most 32 MiB) to
# the OS on free and maps fresh, zero-filled pages on the next allocation: an
# output of 100k pairs at lmax 6 (67 MB) then costs ~0.07 us/pair of page
# zeroing on every call, more than a fast kernel itself. Benchmarks keep freed
# memory in the process instead, for every variant alike, so that time per pair
# measures the computation; MALLOC_MMAP_THRESHOLD_=1073741824
# MALLOC_TRIM_THRESHOLD_=2147483648 in the environment does the same for a script.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_SETTINGS = {"M_MMAP_THRESHOLD": 1 << 30, "M_TRIM_THRESHOLD": 1 << 31}


def keep_freed_memory() -> dict:
    """Raise glibc's mmap and trim thresholds (see above) for this process.

    Returns a record for the results: ``{"allocator": "glibc", **ALLOCATOR_SETTINGS}``
    when applied, ``{"allocator": "unchanged: <why>"}`` elsewhere (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        return {"allocator": f"unchanged: no glibc mallopt ({err})"}
    ok = mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_SETTINGS["M_MMAP_THRESHOLD"]) and mallopt(
        _M_TRIM_THRESHOLD, ALLOCATOR_SETTINGS["M_TRIM_THRESHOLD"])
    if not ok:
        return {"allocator": "unchanged: mallopt refused the thresholds"}
    return {"allocator": "glibc", **ALLOCATOR_SETTINGS}


def latency_stats(times_s) -> dict:
    """Summary of per-call wall times in seconds.

    Parameters
    ----------
    times_s : sequence of float, seconds, at least one value

    Returns
    -------
    dict with rounds, mean_s, stddev_s, min_s, max_s, median_s, p95_s, p99_s
    (percentiles by linear interpolation, ``numpy.percentile``'s default).

    Raises
    ------
    ValueError if ``times_s`` is empty or holds a negative or non-finite value.
    """
    t = np.asarray(times_s, dtype=float)
    if t.size == 0:
        raise ValueError("latency_stats needs at least one call time, got none")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"call times must be finite and >= 0, got {t.tolist()!r}")
    return {
        "rounds": int(t.size),
        "mean_s": float(t.mean()),
        "stddev_s": float(t.std(ddof=1)) if t.size > 1 else 0.0,
        "min_s": float(t.min()),
        "max_s": float(t.max()),
        "median_s": float(np.median(t)),
        "p95_s": float(np.percentile(t, 95)),
        "p99_s": float(np.percentile(t, 99)),
    }


def throughput(call_s: float, n_pairs: int) -> dict:
    """Time per pair [s] and pairs per second from one call's time [s].

    A batch of zero pairs has no per-pair time (None for both).
    """
    if n_pairs <= 0 or call_s <= 0:
        return {"time_per_pair_s": None, "pairs_per_second": None}
    return {"time_per_pair_s": call_s / n_pairs, "pairs_per_second": n_pairs / call_s}


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Peak RSS of a process, sampled in a thread while the ``with`` block runs.

    Parameters
    ----------
    pid : int or None
        The process (None: this one).
    interval : float
        Seconds between samples (default 1 ms).
    descendants : bool
        Sum the RSS of the process and all its descendants (a process tree:
        a Dask cluster's scheduler, nannies and workers) in each sample.

    Attributes
    ----------
    peak : int
        Largest sample so far, bytes; sampled also on entry and on exit.
        Sampling stops once the process's descendants cannot be listed (it
        has ended); the peak so far stays.
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.001, descendants: bool = False):
        import psutil

        self._process = psutil.Process(pid)
        self.interval, self.descendants = interval, descendants
        self.peak = self.sample() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int | None:
        """RSS now, bytes (summed over the descendants when asked); None once the process has ended."""
        import psutil

        try:
            tree = [self._process] + (self._process.children(recursive=True) if self.descendants else [])
        except psutil.Error:
            return None
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a child that ended meanwhile
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            total = self.sample()
            if total is None:
                return
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample() or 0)


def measure_peak_memory(call, *, device: str | None = None, traced: bool = True) -> dict:
    """Peak extra memory of one call of ``call()``.

    Host, two probes: the RSS high-water mark above the RSS before the call
    (kernel's VmHWM, reset through ``/proc/self/clear_refs``; psutil sampling
    every 1 ms where that is not possible), which sees every allocator (NumPy,
    Torch, Numba) but not memory reused from pages already resident; and, with
    ``traced=True`` (default), tracemalloc's peak, exact for Python and NumPy
    allocations (outputs included) but blind to Torch's allocator, and about
    3x slower on pure-Python loops. ``host_peak_bytes`` is the larger of the
    two. Device, when ``device`` starts with "cuda": Torch's CUDA peak
    allocation (when Torch has initialised CUDA) plus the growth of CuPy's
    default memory pool, emptied first (when CuPy is loaded).

    Returns
    -------
    dict with host_peak_bytes, rss_peak_bytes, rss_method, traced_peak_bytes
    (or None), device_peak_bytes (or None); bytes.
    """
    result = {"host_peak_bytes": None, "rss_peak_bytes": None, "rss_method": None,
              "traced_peak_bytes": None, "device_peak_bytes": None}
    torch, cupy_pool = _torch_cuda(device), _cupy_pool(device)
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        device_base = torch.cuda.memory_allocated()
    if cupy_pool is not None:
        sys.modules["cupy"].cuda.Device().synchronize()
        cupy_pool.free_all_blocks()
        cupy_base = cupy_pool.total_bytes()
    if traced:
        import tracemalloc

        tracemalloc.start()
    if _reset_rss_high_water_mark() and _read_status_kib("VmHWM") is not None:
        before = _read_status_kib("VmRSS")
        call()
        result["rss_peak_bytes"] = max(0, _read_status_kib("VmHWM") - before) * 1024
        result["rss_method"] = "VmHWM above VmRSS before the call"
    else:
        import psutil

        before = psutil.Process().memory_info().rss
        with RssSampler() as sampler:
            call()
        result["rss_peak_bytes"] = max(0, sampler.peak - before)
        result["rss_method"] = "psutil RSS sampled every 1 ms, above RSS before the call"
    if traced:
        result["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result["host_peak_bytes"] = max(result["rss_peak_bytes"], result["traced_peak_bytes"] or 0)
    if torch is not None:
        torch.cuda.synchronize()
        result["device_peak_bytes"] = int(torch.cuda.max_memory_allocated() - device_base)
    if cupy_pool is not None:
        sys.modules["cupy"].cuda.Device().synchronize()
        result["device_peak_bytes"] = (result["device_peak_bytes"] or 0) + int(cupy_pool.total_bytes() - cupy_base)
    return result


def _torch_cuda(device):
    """Torch, when ``device`` is a CUDA device and Torch has initialised CUDA; else None."""
    torch = sys.modules.get("torch")
    if device is None or not str(device).startswith("cuda") or torch is None:
        return None
    return torch if torch.cuda.is_initialized() else None


def _cupy_pool(device):
    """CuPy's default memory pool, when ``device`` is a CUDA device and CuPy is loaded; else None."""
    cupy = sys.modules.get("cupy")
    if device is None or not str(device).startswith("cuda") or cupy is None:
        return None
    return cupy.get_default_memory_pool()


def synchronizer(device: str | None):
    """A function that waits for a device's queued work (no-op on the CPU).

    A GPU clock must be read only after synchronising. For a CUDA device
    (``Variant.device == "cuda"``) it synchronises through the libraries that
    drive it, Torch (when it has initialised CUDA) and CuPy (when loaded),
    looked up at each call: the first call of a variant may load them.

    Parameters
    ----------
    device : str or None
        ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or None (the host).
    """
    if device is None or not str(device).startswith("cuda"):
        return lambda: None

    def sync():
        torch = _torch_cuda(device)
        if torch is not None:
            torch.cuda.synchronize()
        if "cupy" in sys.modules:
            sys.modules["cupy"].cuda.Device().synchronize()

    return sync


def timed_call(call, sync=lambda: None) -> tuple[float, object]:
    """(wall seconds, result) of one call, synchronising the device after it."""
    start = time.perf_counter()
    out = call()
    sync()
    return time.perf_counter() - start, out


def check_output_shapes(out, n_pairs: int, hypers, variant: str) -> None:
    """Raise AssertionError naming the variant if ``out`` breaks the contract's shapes.

    Expected: a list over l = 0..lmax of (P, 2l+1, num_radial[l]) arrays.
    """
    if len(out) != hypers.lmax + 1:
        raise AssertionError(f"{variant}: returned {len(out)} blocks, expected lmax + 1 = {hypers.lmax + 1}")
    for l, block in enumerate(out):
        expected = (n_pairs, 2 * l + 1, hypers.num_radial[l])
        if tuple(np.shape(block)) != expected:
            raise AssertionError(f"{variant}: block l={l} has shape {np.shape(block)}, expected {expected}")


@dataclass
class Measurement:
    """One variant measured on one pair batch (what every result carries)."""

    variant: str
    workload: dict
    n_pairs: int
    dtype: str
    first_call_s: float
    steady: dict | None  # latency_stats of the steady-state calls; None when not timed
    peak_memory: dict | None
    pinning: dict
    speedup_vs_reference: float | None = None  # reference's fastest call / this variant's, same run
    reference_best_s: float | None = None

    def as_dict(self) -> dict:
        """JSON-serialisable record (also the ``extra_info`` of a pytest-benchmark result).

        Time per pair, pairs per second and the speedup use the fastest
        steady-state call: on a shared machine it is the one least disturbed
        by other processes (Chen and Revels, "Robust benchmarking in noisy
        environments", 2016); ``latency`` keeps the whole distribution.
        """
        best = self.steady["min_s"] if self.steady else None
        rates = throughput(best, self.n_pairs) if best else {"time_per_pair_s": None, "pairs_per_second": None}
        return {
            "variant": self.variant,
            "workload": self.workload,
            "pairs": self.n_pairs,
            "dtype": self.dtype,
            **rates,
            "speedup_vs_reference": self.speedup_vs_reference,
            "reference_best_s": self.reference_best_s,
            "first_call_s": self.first_call_s,
            "latency": self.steady,
            "peak_memory": self.peak_memory,
            "threads": self.pinning["threads"],
            "pinning": self.pinning,
            "versions": package_versions(),
            "cpu_model": cpu_model(),
            "host": platform.node(),
            "pid": os.getpid(),
        }


def choose_rounds(estimate_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Steady-state rounds that fit ``budget_s`` given one call's time, clamped.

    Raises ValueError if the bounds are not ``1 <= min_rounds <= max_rounds``.
    """
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    if estimate_s <= 0:
        return max_rounds
    fit = int(budget_s / estimate_s + 1e-9)  # floor, robust to 3.0 / 0.1 = 29.999...
    return int(min(max_rounds, max(min_rounds, fit)))

"""The specialised kernel reaches every user: background builds outlive their process, are built
once across processes (the build lock), are waited for when the generic call would take longer
(the wait rule), and one call never mixes the two kernels (``numba_dispatch``'s module docstring).

Every test uses a fresh ``EINSUM_WORKBENCH_NUMBA_CACHE`` and lmax 2 (a build takes ~1-3 s
here). No time is asserted: the wait rule's estimates are injected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_fused needs numba; not installed, nothing here ran")
filelock = pytest.importorskip("filelock")

from einsum_workbench.kernels.numba import density as numba_density  # noqa: E402
from einsum_workbench.kernels.numba import dispatch as numba_dispatch  # noqa: E402
from einsum_workbench.kernels.numba import pairs as numba_fused  # noqa: E402
from einsum_workbench.kernels.numba.codegen.keys import kernel_key  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

#: Bound on any wait for a build here (a loaded machine: 4 processes on 2 cores).
BUILD_TIMEOUT = 240


def _env(cache) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS="1", **{numba_dispatch.CACHE_ENV: str(cache)})
    env.pop(numba_dispatch.KERNEL_ENV, None)
    return env


def _pairs_records(cache) -> list[dict]:
    return [r for r in numba_dispatch.build_records(cache) if r.get("kind") == "pairs"]


def _wait_for_records(cache, count: int, timeout: float = BUILD_TIMEOUT) -> list[dict]:
    """Wait (bounded) until ``count`` pair-kernel builds are recorded in ``cache`` and no build holds a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = _pairs_records(cache)
        if len(records) >= count and not list(cache.glob("*.build")):
            return records
        time.sleep(0.1)
    raise AssertionError(f"no {count} recorded builds in {cache} after {timeout} s: {_pairs_records(cache)}; "
                         f"logs: {[p.read_text()[-2000:] for p in cache.glob('*.log')]}")


class _BuildElsewhere:
    """Context: what a build process of another process holds while it builds (the kernel's lock and
    its ``.build`` file; here held by this test process, a distinct lock holder all the same)."""

    def __init__(self, cache, hypers, kind="pairs", dtype=np.float64):
        name = numba_dispatch._KINDS[kind][0] + kernel_key(hypers, dtype, kind=kind)
        cache.mkdir(parents=True, exist_ok=True)
        self.lock = filelock.FileLock(cache / f"{name}.lock")
        self.marker = cache / f"{name}.build"

    def __enter__(self):
        self.lock.acquire()
        self.marker.write_text(json.dumps({"pid": os.getpid(), "launched": time.time()}))
        return self

    def __exit__(self, *exc):
        self.marker.unlink()
        self.lock.release()


# One call in auto mode, then which kernel served it: the choice is made before the call computes
# (status "ready" after it: the specialised kernel ran; anything else: the generic one).
_ONE_CALL = """
    import json, sys
    import numpy as np
    from einsum_workbench.kernels.numba import dispatch as numba_dispatch
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=SIGMA)
    arrays = random_pair_batch(40, 2)
    numba_fused.expand(*arrays, hypers)
    state = numba_dispatch.status("pairs", hypers, np.float64)
    report = {"first": "specialised" if state == ["ready"] else "generic", "status": state,
              "pid": numba_dispatch._running[0].process.pid if numba_dispatch._running else None}
    if sys.argv[1] == "wait":  # wait for every build (this process's or another's), then call again
        report["waited"] = numba_dispatch.wait_for_background(timeout=240)
        numba_fused.expand(*arrays, hypers)
        report["second"] = "specialised" if numba_dispatch.status("pairs", hypers, np.float64) == ["ready"] else "generic"
    print(json.dumps(report))
"""


def _one_call(sigma: float) -> str:
    return textwrap.dedent(_ONE_CALL).replace("SIGMA", repr(sigma))


def _report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- (a) a build outlives its process

def test_a_build_outlives_the_short_process_that_started_it(tmp_path):
    """Empty cache: the first short process is served by the generic kernel and exits while its
    build runs on; the build ends in the cache and the second short process runs specialised."""
    cache = tmp_path / "cache"
    env = _env(cache)
    code = _one_call(1.40625)
    first = _report(subprocess.run([sys.executable, "-c", code, "exit"], env=env, capture_output=True,
                                   text=True, timeout=BUILD_TIMEOUT))
    assert first["first"] == "generic" and first["status"] == ["building"] and first["pid"], first
    records = _wait_for_records(cache, 1)
    assert len(records) == 1 and records[0]["where"] == "background" and records[0]["lmax"] == 2, records
    assert records[0]["seconds"] >= records[0]["compile_seconds"] > 0, records
    log = "".join(p.read_text() for p in cache.glob("*.log"))
    assert "compiled in" in log and "launched by pid" in log, log
    second = _report(subprocess.run([sys.executable, "-c", code, "exit"], env=env, capture_output=True,
                                    text=True, timeout=BUILD_TIMEOUT))
    assert second["first"] == "specialised" and second["status"] == ["ready"] and second["pid"] is None, second
    assert len(_pairs_records(cache)) == 1, "loading from the cache compiles nothing"


# ---------------------------------------------------------------- (b) one build across processes

def test_two_processes_started_at_once_build_the_kernel_once(tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache)
    code = _one_call(1.46875)
    procs = [subprocess.Popen([sys.executable, "-c", code, "wait"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=2 * BUILD_TIMEOUT)
        reports.append(_report(subprocess.CompletedProcess(proc.args, proc.returncode, out, err)))
    for report in reports:
        assert report["waited"] and report["second"] == "specialised", reports
    records = _wait_for_records(cache, 1)
    assert len(records) == 1, f"built {len(records)} times: {records}"


def test_a_process_that_finds_the_build_running_elsewhere_uses_it_when_done(monkeypatch, tmp_path, caplog):
    """The lock held (here by this test, as a build process would): no second build, the generic
    kernel meanwhile, the kernel loaded from the disk cache once built and the lock free."""
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.53125)
    with _BuildElsewhere(tmp_path, hypers):
        with caplog.at_level("INFO", logger="einsum_workbench.kernels.numba.dispatch"):
            assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10) is None
            numba_dispatch.start_pending()
        assert numba_dispatch.status("pairs", hypers, np.float64) == ["elsewhere"]
        assert "being built by another process" in caplog.text
        assert not numba_dispatch._running, "no build of its own while the lock is held"
        # "the other process" builds it: compile it into the cache in a subprocess that bypasses the lock
        build = textwrap.dedent("""
            import numpy as np
            from einsum_workbench.kernels.numba import dispatch as d
            from einsum_workbench.reference.hypers import ExpansionHypers
            entry = d._Entry("pairs", ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.53125), np.dtype(np.float64), {})
            d._prepare(entry)
            d._load(entry, "here")
        """)
        subprocess.run([sys.executable, "-c", build], env=_env(tmp_path), check=True, timeout=BUILD_TIMEOUT)
        assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto") is None, "still locked"
    assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)
    assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto") is not None
    assert numba_dispatch.status("pairs", hypers, np.float64) == ["ready"]
    assert len(_pairs_records(tmp_path)) == 1


def test_a_crashed_build_is_retried_once_then_given_up(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)  # other tests' builds first
    # a build elsewhere that ends with nothing cached (the lock freed): retried here, and succeeds
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.578125)
    with _BuildElsewhere(tmp_path, hypers):
        assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto") is None
        assert numba_dispatch.status("pairs", hypers, np.float64) == ["elsewhere"]
    with caplog.at_level("INFO", logger="einsum_workbench.kernels.numba.dispatch"):
        assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)
    assert "ended without the kernel in the disk cache; building it again (once)" in caplog.text
    assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto") is not None
    # build processes that crash: retried once, then given up (the generic kernel stays)
    caplog.clear()
    monkeypatch.setattr(numba_dispatch, "_CHILD", "import sys; sys.exit(3)")
    other = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.609375)
    with caplog.at_level("INFO", logger="einsum_workbench.kernels.numba.dispatch"):
        assert numba_dispatch.specialised("pairs", other, np.float64, {}, "auto") is None
        numba_dispatch.start_pending()
        assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)
        assert numba_dispatch.specialised("pairs", other, np.float64, {}, "auto") is None
    assert numba_dispatch.status("pairs", other, np.float64) == ["failed"]
    assert caplog.text.count("background compilation failed (exit 3") == 2, caplog.text
    assert "building it again (once)" in caplog.text and "given up" in caplog.text


# ---------------------------------------------------------------- (c) the wait rule

def test_the_wait_rule():
    margin = max(numba_dispatch.WAIT_MARGIN_SECONDS, numba_dispatch.WAIT_MARGIN_FRACTION * 10.0)
    load = numba_dispatch.LOAD_SECONDS
    assert numba_dispatch.wait_bound(1.0, 10.0, 2.0) is None  # G 1 s <= R 8.3 s
    assert numba_dispatch.wait_bound(9.0, 10.0, 2.0) == pytest.approx(8.0 + load + margin)
    assert numba_dispatch.wait_bound(0.5, 10.0, 9.9) == pytest.approx(0.1 + load + margin)  # nearly done
    assert numba_dispatch.wait_bound(0.5, 10.0, 30.0) == pytest.approx(load + margin)  # overdue: R = load
    assert numba_dispatch.wait_bound(0.2, 10.0, 30.0) is None
    # defaults: the table times the factor; the records of builds on this machine once there are some
    factor = numba_dispatch.COMPILE_SECONDS_FACTOR
    assert numba_dispatch.default_compile_seconds(6) == pytest.approx(factor * 2.5)
    assert numba_dispatch.default_compile_seconds(13) == pytest.approx(factor * 14.4)
    hypers = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
    assert numba_dispatch.generic_seconds("pairs", hypers, np.float64, 10**6, 2) == pytest.approx(
        10**6 * numba_dispatch.DEFAULT_GENERIC_US_PER_PAIR[6] * 1e-6 / 2)


def test_compile_seconds_come_from_the_recorded_builds(monkeypatch, tmp_path):
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    hypers = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)
    assert numba_dispatch.compile_seconds("pairs", hypers, np.float64) == numba_dispatch.default_compile_seconds(3)
    lines = [{"kind": "pairs", "lmax": 3, "dtype": "float64", "seconds": s} for s in (9.0, 2.0, 3.0, 4.0)]
    lines += [{"kind": "pairs", "lmax": 3, "dtype": "float32", "seconds": 50.0},
              {"kind": "density", "lmax": 3, "dtype": "float64", "seconds": 60.0}]
    (tmp_path / numba_dispatch.BUILD_RECORDS).write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + "not json\n")
    assert numba_dispatch.compile_seconds("pairs", hypers, np.float64) == 4.0  # longest of the last three
    assert numba_dispatch.compile_seconds("pairs", hypers, np.float32) == 50.0
    assert numba_dispatch.compile_seconds("density", hypers, np.float32) == 60.0  # another dtype's


def test_generic_calls_are_measured_for_the_estimate(monkeypatch):
    monkeypatch.setattr(numba_dispatch, "SPECIALISE_MAX_LMAX", 1)  # lmax 2: the generic kernel only
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.640625)
    threads = numba.get_num_threads()
    default = numba_dispatch.generic_seconds("pairs", hypers, np.float64, 2000, threads)
    for _ in range(3):  # the first call is not measured; each "call" lasts at least 10 ms for 1,000 pairs
        assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=1000) is None
        time.sleep(0.01)
        numba_dispatch.start_pending()
    measured = numba_dispatch.generic_seconds("pairs", hypers, np.float64, 2000, threads)
    assert measured >= 0.02 and measured != default


def _patch_estimates(monkeypatch, per_pair: float, compile_s: float):
    monkeypatch.setattr(numba_dispatch, "generic_seconds", lambda kind, hypers, dtype, n, threads: n * per_pair)
    monkeypatch.setattr(numba_dispatch, "compile_seconds", lambda kind, hypers, dtype: compile_s)


@pytest.mark.parametrize("started", [False, True], ids=["queued", "building"])
def test_a_long_call_waits_for_the_build_and_a_short_one_does_not(monkeypatch, tmp_path, caplog, started):
    """Injected estimates: 1 ms per pair generic, builds expected to take 100 s (bound ~125 s). Ten
    pairs (0.01 s) do not wait; 10^6 pairs (1000 s) wait and get the specialised kernel (the real
    build takes seconds). Queued: the long call starts the build; building: it waits for it."""
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)  # no other build of this process runs
    _patch_estimates(monkeypatch, 1e-3, 100.0)
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.65625 if started else 1.671875)
    with caplog.at_level("INFO", logger="einsum_workbench.kernels.numba.dispatch"):
        assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10) is None
        if started:
            numba_dispatch.start_pending()
            assert numba_dispatch.status("pairs", hypers, np.float64) == ["building"]
            assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10) is None
        else:
            assert numba_dispatch.status("pairs", hypers, np.float64) == ["queued"]
        assert "waiting up to" not in caplog.text
        module = numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10**6)
    assert module is not None and numba_dispatch.status("pairs", hypers, np.float64) == ["ready"]
    assert "waiting up to" in caplog.text and "ready after a wait of" in caplog.text, caplog.text
    arrays = random_pair_batch(30, 4)
    assert all(np.array_equal(a, b) for a, b in zip(numba_fused.expand(*arrays, hypers),
                                                    numba_fused.expand(*arrays, hypers, kernel="specialised")))


def test_a_wait_that_runs_out_serves_the_call_generic_and_is_not_repeated(monkeypatch, tmp_path, caplog):
    """A build that cannot end in time (its process never takes the lock, held here): the long call
    waits the bound (~1.3 s: injected estimates, build expected done), then runs generic; the next
    long call does not wait again."""
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    _patch_estimates(monkeypatch, 1e-3, 0.0)
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.6875)
    with _BuildElsewhere(tmp_path, hypers):
        with caplog.at_level("INFO", logger="einsum_workbench.kernels.numba.dispatch"):
            assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10**6) is None
            assert numba_dispatch.specialised("pairs", hypers, np.float64, {}, "auto", n_pairs=10**6) is None
        assert numba_dispatch.status("pairs", hypers, np.float64) == ["elsewhere"]
    assert caplog.text.count("waiting up to") == 1 and "not ready after a wait of" in caplog.text, caplog.text


# ---------------------------------------------------------------- (d) one call, one kernel

def test_one_call_never_mixes_the_kernels(monkeypatch, tmp_path):
    """``expand`` and ``centre_density`` ask once per call, before computing, and compute the whole
    call with the answer: a call while the build runs is the generic kernel's bit for bit, one after
    it the specialised kernel's bit for bit, whatever the call's size (several prange chunks)."""
    monkeypatch.setenv(numba_dispatch.CACHE_ENV, str(tmp_path))
    assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)
    asked = []
    original = numba_dispatch.specialised

    def spy(kind, hypers, dtype, options, mode, *args, **kwargs):
        module = original(kind, hypers, dtype, options, mode, *args, **kwargs)
        asked.append((kind, mode, module is not None))
        assert kwargs.get("n_pairs", n) == n and not args, (args, kwargs)  # the whole call's pairs, if passed
        return module

    monkeypatch.setattr(numba_dispatch, "specialised", spy)
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.703125)
    n = 3 * numba_dispatch.BLOCKS_PER_CHUNK * 8 + 5  # more than one chunk of blocks of lanes
    arrays = random_pair_batch(n, 6)
    segment = np.sort(np.random.default_rng(1).integers(0, 40, n))

    def calls(kernel):
        del asked[:]
        pairs = numba_fused.expand(*arrays, hypers, kernel=kernel)
        assert [a[:2] for a in asked] == [("pairs", kernel)], asked
        density = numba_density.centre_density(*arrays, hypers, segment, 40, kernel=kernel)
        assert [a[:2] for a in asked] == [("pairs", kernel), ("density", kernel)], asked
        return pairs, density, [a[2] for a in asked]

    def same(one, other):
        return all(np.array_equal(a, b) for a, b in zip(one, other))

    pairs, density, served = calls("auto")  # empty cache: both builds queued or running
    assert served == [False, False]
    generic_pairs, generic_density, _ = calls("generic")
    assert same(pairs, generic_pairs) and same(density, generic_density)
    assert numba_dispatch.wait_for_background(timeout=BUILD_TIMEOUT)
    pairs, density, served = calls("auto")
    assert served == [True, True]
    special_pairs, special_density, _ = calls("specialised")
    assert same(pairs, special_pairs) and same(density, special_density)
    assert not same(special_pairs, generic_pairs), "the two kernels round differently: the check can tell them apart"

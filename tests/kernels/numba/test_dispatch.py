"""Reliability of ``numba_fused`` and its centre density (issue 11, parts 1, 3, 4 and the screen hook).

- the generic kernels (``numba_generic``: compiled once per machine, table
  driven) against the reference, pairs and centre density, float64 and
  float32, and bit-identical across thread counts and batch positions;
- the modes of ``numba_dispatch`` (``auto``: generic kernel first, the
  specialised one compiled in a background process, then used; its
  logging; a forked child; the size limit above which only the generic
  kernel runs; detached builds that outlive their process, the build lock,
  the wait rule and one kernel per call: ``test_dispatch_builds.py``);
- Numba's workqueue threading layer with calls from two Python threads;
- the per-machine lane choice and its override (the screen's thresholds: ``test_screen.py``).

Times are printed, not asserted: ``test_first_call_seconds`` (run on request,
``EINSUM_WORKBENCH_FIRST_CALL_BENCH=1 pytest tests/kernels/numba/test_dispatch.py -k first_call -s``)
measures the first call for a new hyper-parameter set on an empty kernel cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_fused needs numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import lanes as numba_lanes  # noqa: E402
from einsum_workbench.kernels.numba import density as numba_density  # noqa: E402
from einsum_workbench.kernels.numba import dispatch as numba_dispatch  # noqa: E402
from einsum_workbench.kernels.numba import pairs as numba_fused  # noqa: E402
from einsum_workbench.kernels.numba import generic as numba_generic  # noqa: E402
from einsum_workbench.kernels.numba.codegen.keys import kernel_key  # noqa: E402
from einsum_workbench.reference.compare import TOLERANCES, assert_coefficients_close  # noqa: E402
from einsum_workbench.reference.density import centre_density as reference_density  # noqa: E402
from einsum_workbench.reference.expansion import pairwise_ellip_expansion  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

HYPERS = [
    ExpansionHypers(0, "gto", cutoff=7.0, sigma=1.5),
    ExpansionHypers(3, "monomial", cutoff=7.0),
    ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.2, max_radial=[3, 0, 2, 1]),
    ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5),
    ExpansionHypers(6, "monomial", cutoff=7.0, max_radial=2),
    ExpansionHypers(8, "gto", cutoff=7.0, sigma=1.5),
]
GTO4 = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)


def _run(code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def _density_close(actual, expected, hypers, dtype, label):
    tol = TOLERANCES[np.dtype(dtype)]
    for l, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == np.dtype(dtype) and a.shape == e.shape and a.flags.c_contiguous, f"{label} l={l}"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale,
                                   err_msg=f"{label} l={l}")


# ---------------------------------------------------------------- the generic kernels

@pytest.mark.parametrize("hypers", HYPERS, ids=lambda h: f"{h.radial_basis}-lmax{h.lmax}-{h.max_radial}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_generic_kernels_against_reference(hypers, dtype):
    arrays = random_pair_batch(41, 30 + hypers.lmax, self_pair_fraction=0.1)
    inputs = [a.astype(dtype) for a in arrays]
    actual = numba_fused.expand(*inputs, hypers, kernel="generic")
    expected = pairwise_ellip_expansion(*[a.astype(np.float64) for a in inputs], hypers)
    assert_coefficients_close(actual, expected, hypers, dtype, "generic pairs")
    segment = np.random.default_rng(hypers.lmax).choice([0, 1, 2, 4, 5, 6], size=41)  # unsorted, 3 and 7 empty
    for orthonormal in (False, True):
        rows = numba_density.centre_density(*inputs, hypers, segment, 8, orthonormal=orthonormal, kernel="generic")
        want = reference_density(*[a.astype(np.float64) for a in inputs], hypers, segment, 8,
                                 orthonormal=orthonormal)
        _density_close(rows, want, hypers, dtype, f"generic density orthonormal={orthonormal}")
        assert not any(block[[3, 7]].any() for block in rows), "a segment without pairs must be zero"


@pytest.mark.parametrize("shape", ["prolate", "oblate", "spherical"])
def test_generic_kernel_needles_plates_spheres(shape):
    hypers = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
    arrays = random_pair_batch(50, 11, shape=shape, self_pair_fraction=0.1)
    actual = numba_fused.expand(*arrays, hypers, kernel="generic")
    assert_coefficients_close(actual, pairwise_ellip_expansion(*arrays, hypers), hypers, np.float64, shape)


def test_generic_kernel_is_bit_identical_across_threads_and_positions():
    """Our own arithmetic: the same instructions for every pair, whatever its thread, block or lane."""
    arrays = random_pair_batch(4099, 5, self_pair_fraction=0.05)
    segment = np.sort(np.random.default_rng(3).integers(0, 301, 4099))
    for dtype in (np.float64, np.float32):
        inputs = [a.astype(dtype) for a in arrays]
        one = numba_fused.expand(*inputs, GTO4, threads=1, kernel="generic")
        if numba.config.NUMBA_NUM_THREADS >= 2:
            two = numba_fused.expand(*inputs, GTO4, threads=2, kernel="generic")
            assert all(np.array_equal(a, b) for a, b in zip(one, two)), f"{np.dtype(dtype)}: 1 and 2 threads differ"
            rows1 = numba_density.centre_density(*inputs, GTO4, segment, 301, threads=1, kernel="generic")
            rows2 = numba_density.centre_density(*inputs, GTO4, segment, 301, threads=2, kernel="generic")
            assert all(np.array_equal(a, b) for a, b in zip(rows1, rows2)), f"{np.dtype(dtype)}: density differs"
        for part in (slice(5, 6), slice(3, 40), slice(4000, 4099)):
            alone = numba_fused.expand(*(a[part] for a in inputs), GTO4, kernel="generic")
            for l, (a, b) in enumerate(zip(alone, one)):
                assert np.array_equal(a, b[part]), f"l={l}, pairs {part}: differs from the same pairs in the batch"


def test_read_only_inputs_are_accepted():
    arrays = random_pair_batch(20, 6)
    expected = numba_fused.expand(*arrays, GTO4, kernel="generic")
    for a in arrays:
        a.setflags(write=False)
    actual = numba_fused.expand(*arrays, GTO4, kernel="generic")
    assert all(np.array_equal(a, b) for a, b in zip(actual, expected))


# ---------------------------------------------------------------- modes

def test_kernel_mode_is_validated(monkeypatch):
    arrays = random_pair_batch(4, 1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        numba_fused.expand(*arrays, GTO4, kernel="fast")
    monkeypatch.setenv(numba_dispatch.KERNEL_ENV, "bogus")
    with pytest.raises(ValueError, match="EINSUM_WORKBENCH_NUMBA_KERNEL must be one of"):
        numba_density.centre_density(*arrays, GTO4, np.zeros(4, np.int64), 1)


def test_above_the_size_limit_only_the_generic_kernel_runs(monkeypatch, tmp_path):
    monkeypatch.setenv(numba_fused.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(numba_dispatch, "SPECIALISE_MAX_LMAX", 2)
    hypers = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.3125)
    arrays = random_pair_batch(9, 2)
    actual = numba_fused.expand(*arrays, hypers, kernel="specialised")
    assert numba_dispatch.status("pairs", hypers, np.float64) == ["generic"]
    assert not list(tmp_path.iterdir()), "nothing generated or compiled above the limit"
    assert all(np.array_equal(a, b) for a, b in zip(actual, numba_fused.expand(*arrays, hypers, kernel="generic")))


_AUTO_PROBE = """
    import json, logging, os, sys
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.name, record.getMessage()))
    logging.getLogger("einsum_workbench").addHandler(Keep())
    logging.getLogger("einsum_workbench").setLevel(logging.DEBUG)
    import numpy as np
    from einsum_workbench.kernels.numba import dispatch as numba_dispatch
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.4375)
    arrays = random_pair_batch(50, 1)
    first = numba_fused.expand(*arrays, hypers)
    generic = numba_fused.expand(*arrays, hypers, kernel="generic")
    statuses = [numba_dispatch.status("pairs", hypers, np.float64)]
    pid = numba_dispatch._running[0].process.pid if numba_dispatch._running else None
    if sys.argv[1] == "exit":
        print(json.dumps({"pid": pid, "statuses": statuses}))
        sys.exit(0)
    assert numba_dispatch.wait_for_background(timeout=240)
    later = numba_fused.expand(*arrays, hypers)
    statuses.append(numba_dispatch.status("pairs", hypers, np.float64))
    specialised = numba_fused.expand(*arrays, hypers, kernel="specialised")
    print(json.dumps({
        "first_is_generic": all(np.array_equal(a, b) for a, b in zip(first, generic)),
        "later_is_specialised": all(np.array_equal(a, b) for a, b in zip(later, specialised)),
        "statuses": statuses, "records": records, "pid": pid}))
"""


def test_auto_mode_serves_the_generic_kernel_until_the_background_build_is_done(tmp_path):
    env = dict(os.environ, **{numba_fused.CACHE_ENV: str(tmp_path)})
    env.pop(numba_dispatch.KERNEL_ENV, None)
    done = _run(_AUTO_PROBE.replace("sys.argv[1]", "'wait'"), env)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [["building"], ["ready"]], report["statuses"]
    assert report["first_is_generic"] and report["later_is_specialised"]
    messages = [(level, text) for level, _, text in report["records"]]
    assert any(level == "INFO" and "compiling in a background process" in text for level, text in messages), messages
    assert any(level == "INFO" and "compiled in the background in" in text for level, text in messages), messages
    assert any(level == "DEBUG" and "loaded from the disk cache" in text for level, text in messages), messages
    # a second process loads the kernel from disk: no generic phase, no background build
    again = _run(_AUTO_PROBE.replace("sys.argv[1]", "'exit'"), env)
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [["ready"]] and report["pid"] is None, report


_FORK_PROBE = """
    import os, sys
    import numpy as np
    from einsum_workbench.kernels.numba import dispatch as numba_dispatch
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.5625)
    arrays = random_pair_batch(20, 1)
    numba_fused.expand(*arrays, hypers)
    assert numba_dispatch.status("pairs", hypers, np.float64) == ["building"]
    pid = os.fork()
    if pid == 0:  # the child serves the kernel with the generic one (or the parent's build, once done)
        numba_fused.expand(*arrays, hypers)  # and starts no build of its own
        state = numba_dispatch.status("pairs", hypers, np.float64)
        assert numba_dispatch.wait_for_background(timeout=240)  # the parent's build, seen through its lock
        numba_fused.expand(*arrays, hypers)
        ok = state in (["elsewhere"], ["ready"]) and not numba_dispatch._running
        ok = ok and numba_dispatch.status("pairs", hypers, np.float64) == ["ready"]
        os._exit(0 if ok else 3)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0, code
    assert numba_dispatch.wait_for_background(timeout=240)
    numba_fused.expand(*arrays, hypers)
    assert numba_dispatch.status("pairs", hypers, np.float64) == ["ready"]
    builds = [r for r in numba_dispatch.build_records() if r["kind"] == "pairs"]
    assert len(builds) == 1, builds
    print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_forked_child_leaves_the_parents_background_build_alone(tmp_path):
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", **{numba_fused.CACHE_ENV: str(tmp_path)})
    env.pop(numba_dispatch.KERNEL_ENV, None)
    assert _run(_FORK_PROBE, env).stdout.strip().splitlines()[-1] == "ok"


def test_an_unwritable_cache_directory_falls_back_to_the_generic_kernel(monkeypatch, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv(numba_fused.CACHE_ENV, str(blocked / "cache"))
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.59375)
    arrays = random_pair_batch(9, 3)
    with caplog.at_level("WARNING", logger="einsum_workbench.kernels.numba.dispatch"):
        actual = numba_fused.expand(*arrays, hypers, kernel="specialised")
    assert numba_dispatch.status("pairs", hypers, np.float64) == ["generic"]
    assert "cannot write the kernel's source" in caplog.text
    assert_coefficients_close(actual, pairwise_ellip_expansion(*arrays, hypers), hypers, np.float64)


# ---------------------------------------------------------------- threads

_THREADS_PROBE = """
    import threading
    import numba
    import numpy as np
    from einsum_workbench.kernels.numba import density as numba_density
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.5)
    arrays = random_pair_batch(3000, 0)
    segment = np.sort(np.random.default_rng(0).integers(0, 100, 3000))
    errors = []
    def work(kernel):
        try:
            for _ in range(25):
                numba_fused.expand(*arrays, hypers, kernel=kernel)
                numba_density.centre_density(*arrays, hypers, segment, 100, kernel=kernel)
        except BaseException as err:
            errors.append(repr(err))
    threads = [threading.Thread(target=work, args=(k,)) for k in ("auto", "generic", "auto", "generic")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print(numba.threading_layer())
"""


def test_two_python_threads_under_the_workqueue_layer(tmp_path):
    """Numba's workqueue layer aborts the process on concurrent parallel calls: they must be serialised.
    Fresh kernel cache: background builds run meanwhile (auto mode)."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               **{numba_fused.CACHE_ENV: str(tmp_path)})
    env.pop(numba_dispatch.KERNEL_ENV, None)
    done = _run(_THREADS_PROBE, env)
    assert done.stdout.strip().splitlines()[-1] == "workqueue"


# ---------------------------------------------------------------- machine facts

def test_lane_choice_and_its_override(monkeypatch):
    monkeypatch.delenv(numba_lanes.LANES_ENV, raising=False)
    for kind in ("pairs", "density"):
        choice = numba_lanes.lane_choice(np.float64, kind)
        assert set(choice) == {"lanes", "source", "cpu", "vector_bits"}
        assert choice["lanes"] in (4, 8) and choice["vector_bits"] in (256, 512)
        assert numba_lanes.lane_choice(np.float32, kind)["lanes"] == 2 * choice["lanes"]
    if numba_lanes.host_cpu()[0] not in numba_lanes.WIDE_PAIR_KERNEL_CPUS:
        assert numba_lanes.default_lanes(np.float64, "pairs") == 4
    default_key = kernel_key(GTO4, np.float64)
    monkeypatch.setenv(numba_lanes.LANES_ENV, "2")
    assert numba_lanes.default_lanes(np.float64) == 2 and numba_lanes.default_lanes(np.float32) == 4
    assert numba_lanes.lane_choice(np.float64, "density")["source"] == numba_lanes.LANES_ENV
    assert kernel_key(GTO4, np.float64) != default_key, "the lane count is part of the cache key"
    monkeypatch.setenv(numba_lanes.LANES_ENV, "float32=4")
    assert numba_lanes.default_lanes(np.float32) == 4
    assert kernel_key(GTO4, np.float64) == default_key
    for bad in ("3", "float16=4", "eight"):
        monkeypatch.setenv(numba_lanes.LANES_ENV, bad)
        with pytest.raises(ValueError, match=numba_lanes.LANES_ENV):
            numba_lanes.default_lanes(np.float64)


# ---------------------------------------------------------------- the measurement of issue 11 part 3

_FIRST_CALL = """
    import json, os, sys, time
    import numpy as np
    start = time.perf_counter()
    from einsum_workbench.kernels.numba import density as numba_density
    from einsum_workbench.kernels.numba import dispatch as numba_dispatch
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    imported = time.perf_counter() - start
    lmax, dtype, problem = int(sys.argv[1]), np.dtype(sys.argv[2]), sys.argv[3]
    saved = np.load(sys.argv[4])  # the default workload's pairs, made by the parent (no Numba run here before)
    arrays = [np.ascontiguousarray(saved[k], dtype=dtype) for k in ("r_ij", "rotations", "semiaxes")]
    segment = saved["segment"]
    hypers = ExpansionHypers(lmax, "gto", cutoff=7.0, sigma=1.5)
    def call():
        if problem == "pairs":
            return numba_fused.expand(*arrays, hypers)
        return numba_density.centre_density(*arrays, hypers, segment, int(segment.max()) + 1, orthonormal=True)
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    start = time.perf_counter()
    call()
    second = time.perf_counter() - start
    start = time.perf_counter()
    numba_dispatch.wait_for_background()
    build = time.perf_counter() - start
    start = time.perf_counter()
    call()
    switch = time.perf_counter() - start
    print(json.dumps({"import_s": imported, "first_s": first, "second_s": second, "build_wait_s": build,
                      "first_specialised_s": switch, "pairs": len(arrays[0])}))
"""


@pytest.mark.skipif(not os.environ.get("EINSUM_WORKBENCH_FIRST_CALL_BENCH"),
                    reason="a measurement, run on request: EINSUM_WORKBENCH_FIRST_CALL_BENCH=1 "
                           "pytest tests/kernels/numba/test_dispatch.py -k first_call -s")
@pytest.mark.parametrize("problem", ["pairs", "density"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lmax", [6, 10])
def test_first_call_seconds(tmp_path, lmax, dtype, problem):
    """Prints the first call's time for a new hyper-parameter set, empty kernel cache (a fresh
    EINSUM_WORKBENCH_NUMBA_CACHE), generic kernels already compiled on this machine, default
    workload (27,484 pairs; segments = (frame, centre, neighbour species), orthonormal), in a
    fresh process where no Numba code ran before; then the second call, the wait for the
    background build and the first call served by the specialised kernel. Not asserted."""
    from einsum_workbench.reference.workloads import default_workload

    numba_generic._compile_all()  # once per machine: what a fresh machine pays on first use
    pairs = default_workload().pairs
    _, segment = np.unique(np.stack([pairs.frame, pairs.centre, pairs.neighbour_species], 1), axis=0,
                           return_inverse=True)
    saved = tmp_path / "pairs.npz"
    np.savez(saved, r_ij=pairs.r_ij, rotations=pairs.rotations, semiaxes=pairs.semiaxes,
             segment=segment.reshape(-1).astype(np.int64))
    env = dict(os.environ, **{numba_fused.CACHE_ENV: str(tmp_path / "cache")})
    env.pop(numba_dispatch.KERNEL_ENV, None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_FIRST_CALL), str(lmax), dtype, problem,
                           str(saved)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nfirst call, empty kernel cache, lmax {lmax} {dtype} {problem}: {report['first_s']:.3f} s "
          f"(second {report['second_s']:.3f} s, background build done {report['build_wait_s']:.1f} s later, "
          f"first specialised call {report['first_specialised_s']:.3f} s; import {report['import_s']:.2f} s; "
          f"{report['pairs']} pairs)")

"""Thread pinning (bench/lib/pinning.py, on einsum_workbench/threads.py): set, verified, and refused when it does not hold.

Each check that touches thread pools runs in a fresh interpreter, since a
pool is sized once, when its library loads.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from einsum_workbench import threads
from einsum_workbench.bench import pinning

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV_VARS}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def run_json(code: str) -> dict:
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, expected", [
    ([], 1), (["bench"], 1), (["bench", "--threads", "2"], 2), (["--threads=3", "bench"], 3),
    (["--threads", "1", "--threads", "2"], 2),
])
def test_threads_from_argv(argv, expected):
    assert pinning.threads_from_argv(argv) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_threads_from_argv_rejects_bad_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        pinning.threads_from_argv(["--threads", bad])


@pytest.mark.parametrize("bad", [0, -2, 1.0, True, "1"])
def test_check_thread_count_names_value(bad):
    with pytest.raises(ValueError, match="thread count"):
        threads.check_thread_count(bad)


def test_pinned_before_numpy_holds_everywhere():
    state = run_json("""
        import json, sys
        from einsum_workbench.bench import pinning
        early = pinning.set_thread_env(1)
        import numpy, scipy.linalg
        numpy.ones((64, 64)) @ numpy.ones((64, 64))   # load the BLAS for real
        state = pinning.pin_and_verify(1)
        state["early"] = early
        print(json.dumps(state))
    """)
    assert state["verified"] and state["problems"] == []
    assert state["early"] == [] and state["loaded_before_env"] == []
    assert all(state["env"][name] == "1" for name in threads.THREAD_ENV_VARS)
    assert len(state["affinity"]) == 1
    assert state["blas"], "threadpoolctl saw no BLAS/OpenMP library after a matrix product"
    assert all(lib["num_threads"] == 1 for lib in state["blas"])


def test_numpy_loaded_first_is_recorded():
    state = run_json("""
        import json
        import numpy
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1)
        print(json.dumps(pinning.pin(1)))
    """)
    assert "numpy" in state["loaded_before_env"]
    assert state["verified"], state["problems"]  # runtime limits still hold


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 CPUs to widen the affinity after pinning; this process may use 1")
def test_verify_names_a_broken_affinity():
    state = run_json("""
        import json, os
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1)
        import numpy
        allowed = os.sched_getaffinity(0)
        pinning.pin(1)
        os.sched_setaffinity(0, allowed)   # undo the pinning behind its back
        print(json.dumps(pinning.verify(1)))
    """)
    assert any(p.startswith("CPU affinity") for p in state), state


def test_verify_names_torch_threads():
    pytest.importorskip("torch", reason="torch is not installed: its thread check cannot run")
    problems = run_json("""
        import json
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1)
        import torch
        pinning.pin(1)
        assert pinning.verify(1) == [], pinning.verify(1)
        torch.set_num_threads(2)
        print(json.dumps(pinning.verify(1)))
    """)
    assert any("torch.get_num_threads() = 2" in p for p in problems), problems


def test_verify_names_changed_environment():
    problems = run_json("""
        import json, os
        from einsum_workbench.bench import pinning
        pinning.pin(1)
        os.environ["OMP_NUM_THREADS"] = "4"
        print(json.dumps(pinning.verify(1)))
    """)
    assert problems == ["environment: OMP_NUM_THREADS='4', expected 1"]


def test_numba_pool_cap_and_runtime_count():
    pytest.importorskip("numba", reason="numba is not installed: its pool check cannot run")
    result = run_json("""
        import json
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1, numba_pool=2)
        import numba
        one = pinning.pin_and_verify(1)
        two_possible = len(pinning.allowed_cpus()) >= 2
        two = pinning.pin_and_verify(2) if two_possible else None
        print(json.dumps({"one": one, "two": two, "pool": numba.config.NUMBA_NUM_THREADS}))
    """)
    assert result["pool"] == 2
    assert result["one"]["numba_threads"] == 1 and result["one"]["env"]["NUMBA_NUM_THREADS"] == "2"
    if result["two"] is not None:
        assert result["two"]["numba_threads"] == 2 and result["two"]["verified"]


def test_numba_pool_too_small_is_refused():
    pytest.importorskip("numba", reason="numba is not installed: its pool check cannot run")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs: with 1 the affinity check refuses 2 threads before Numba's pool is asked")
    proc = run_python("""
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1)
        import numba
        pinning.pin(1)
        try:
            pinning.pin(2)
        except pinning.PinningError as err:
            print("refused:", err)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "NUMBA_NUM_THREADS=1" in proc.stdout, proc.stdout


def test_repin_to_more_threads_after_pinning_to_one():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to re-pin from 1 thread to 2; this process may use 1")
    state = run_json("""
        import json
        from einsum_workbench.bench import pinning
        pinning.set_thread_env(1)
        import numpy
        pinning.pin_and_verify(1)
        print(json.dumps(pinning.pin_and_verify(2)))
    """)
    assert len(state["affinity"]) == 2 and all(lib["num_threads"] == 2 for lib in state["blas"])


def test_more_threads_than_cpus_is_refused():
    too_many = len(os.sched_getaffinity(0)) + 1
    with pytest.raises(pinning.PinningError, match=f"asked for {too_many} threads"):
        pinning.chosen_cpus(too_many)


def test_pytest_bench_stops_when_pinning_cannot_hold(tmp_path):
    too_many = len(os.sched_getaffinity(0)) + 1
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-k", "ranking", "--threads", str(too_many),
         "--frames", "1", "--lmax", "2", "--benchmark-disable", "-p", "no:warnings"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "thread pinning" in out and "CPU affinity" in out and f"asked for {too_many} threads" in out, out

"""pytest configuration of the bench: ``pytest bench`` from the repository root.

Pins the threads before NumPy loads (at import of this file, from ``--threads``
on the command line), verifies the pinning at session start (the session stops
naming what does not hold), turns on pytest-benchmark's autosave into the
repository's ``.benchmarks/`` (ignored by git) so that
``pytest bench --benchmark-compare`` compares with the previous run, and prints
the ranking (time per pair, pairs per second, speedup over the reference,
latency, first-call cost, peak memory, threads) at the end.

Options (``pytest bench --help``, section "ranking"): --workload, --frames,
--lmax, --threads, --variant (repeatable), --xyz with --semiaxes and
--xyz-frames, --bench-dtype, --budget, --max-rounds.
"""

import os
import sys

# Before anything imports NumPy: the thread-count variables are read once, when
# BLAS and OpenMP load. pytest has not parsed its options yet, so read argv.
from einsum_workbench.bench import pinning

_THREADS_AT_IMPORT = pinning.threads_from_argv(sys.argv)
# The thread-scaling suite also measures at 2 threads in this process: Numba's
# pool (a cap; the count used is pinned with numba.set_num_threads) must allow it.
_SCALING_SELECTED = any("scaling" in arg for arg in sys.argv[1:])
pinning.set_thread_env(_THREADS_AT_IMPORT, numba_pool=2 if _SCALING_SELECTED else None)

import pytest  # noqa: E402

from einsum_workbench.bench import report  # noqa: E402  (NumPy-free at import)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORAGE = os.path.join(REPO_ROOT, ".benchmarks")
_DEFAULT_STORAGE = "file://./.benchmarks"

session_key = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("ranking", "einsum-workbench ranking (pytest bench)")
    group.addoption("--workload", default="benzenes", help="generated workload name (default benzenes)")
    group.addoption("--frames", type=int, default=None,
                    help="frames of the workload (default: reference.workloads.DEFAULT_FRAMES; "
                         "with --xyz: frames read, default 20)")
    group.addoption("--lmax", type=int, default=6, help="lmax (default 6)")
    group.addoption("--threads", type=int, default=1, help="threads every variant is pinned to (default 1)")
    group.addoption("--variant", action="append", default=None,
                    help="rank only this variant (repeatable); the reference is always measured")
    group.addoption("--xyz", default=None, help="rank on this extxyz file of ellipsoid frames instead")
    group.addoption("--semiaxes", default=None,
                    help="constant semi-axes a,b,c in angstrom for --xyz (default: c_diameter[k]/2 from the file)")
    group.addoption("--xyz-frames", type=int, default=None, help="frames read from --xyz (default --frames or 20)")
    group.addoption("--bench-dtype", choices=("float64", "float32"), default="float64", help="dtype (default float64)")
    group.addoption("--budget", type=float, default=3.0,
                    help="seconds of steady-state calls per variant (rounds clamped to [3, --max-rounds])")
    group.addoption("--max-rounds", type=int, default=30, help="most steady-state rounds per variant (default 30)")
    group.addoption("--scaling-max-pairs", type=int, default=1_000_000,
                    help="scaling suites (-m scaling): largest pair count measured (default 1,000,000)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Autosave into the repository's .benchmarks and pin the threads (before pytest-benchmark starts)."""
    config.addinivalue_line("markers", "study: the NumPy-vs-Torch study, not run by default (select with -m study)")
    threads = config.getoption("threads")
    if config.getoption("benchmark_storage") == _DEFAULT_STORAGE:
        config.option.benchmark_storage = "file://" + STORAGE
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if not disabled and not config.getoption("benchmark_json") and not config.getoption("benchmark_save"):
        from pytest_benchmark.utils import get_tag

        config.option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: commit_time
    state = {"threads": threads, "pin_error": None, "results": [], "unavailable": {}, "reference": {}}
    try:
        pinning.check_thread_count(threads)
        pinning.set_thread_env(threads)  # no-op on pools already built; recorded as such
        import numpy  # noqa: F401  (loads the BLAS now, under the variables, so it is pinned and verified at start)

        state["pinning"] = pinning.pin(threads)
        from einsum_workbench.bench import measure

        state["allocator"] = measure.keep_freed_memory()
    except (ValueError, pinning.PinningError) as err:
        state["pin_error"] = str(err)
    config.stash[session_key] = state


def pytest_sessionstart(session):
    """Stop the session unless every part of the pinning holds."""
    state = session.config.stash[session_key]
    threads = state["threads"]
    if state["pin_error"] is None:
        problems = pinning.verify(threads)
        if threads != _THREADS_AT_IMPORT:
            problems.append(
                f"--threads {threads} was not visible on the command line when the environment was set "
                f"({_THREADS_AT_IMPORT}); pass it as --threads N to pytest"
            )
        if problems:
            state["pin_error"] = "; ".join(problems)
    if state["pin_error"] is not None:
        pytest.exit(f"thread pinning to {threads} thread(s) does not hold: {state['pin_error']}", returncode=3)
    state["pinning"] = pinning.pinning_state(threads)


def pytest_report_header(config):
    state = config.stash.get(session_key, None)
    if not state or "pinning" not in state:
        return None
    p = state["pinning"]
    blas = ", ".join(f"{b['internal_api']}={b['num_threads']}" for b in p["blas"])
    early = f"; loaded before the env was set: {p['loaded_before_env']}" if p["loaded_before_env"] else ""
    return (f"pinning: {p['threads']} thread(s), verified={p['verified']}, CPUs {p['affinity']}, "
            f"threadpoolctl [{blas}]{early}")


def _ranking_names(config, problem: str = "pairs") -> list[str]:
    from einsum_workbench.kernels.registry import get_variant, variant_names

    chosen = config.getoption("variant")
    if not chosen:
        return variant_names(problem)
    for name in chosen:
        try:
            get_variant(name)
        except KeyError as err:
            raise pytest.UsageError(str(err.args[0])) from None
    return ["reference"] + [n for n in dict.fromkeys(chosen) if n != "reference" and n in variant_names(problem)]


#: suites that run only when their marker is selected (``-m scaling``, ``-m study``)
OPT_IN_MARKERS = ("scaling", "study")


def pytest_collection_modifyitems(config, items):
    """Opt-in suites (scaling, the Torch study) run only when selected with ``-m``."""
    selected = config.getoption("markexpr") or ""
    opt_out = [m for m in OPT_IN_MARKERS if m not in selected]
    kept, dropped = [], []
    for item in items:
        (dropped if any(item.get_closest_marker(m) for m in opt_out) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_generate_tests(metafunc):
    if "ranked_variant" in metafunc.fixturenames:
        metafunc.parametrize("ranked_variant", _ranking_names(metafunc.config))
    if "density_variant" in metafunc.fixturenames:
        metafunc.parametrize("density_variant", _ranking_names(metafunc.config, "density"))


@pytest.fixture(scope="session")
def bench_state(pytestconfig) -> dict:
    """Session record: threads, pinning, results so far, unavailable variants, reference timing."""
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="session")
def bench_input(pytestconfig):
    """The pair batch of this session's ranking (generated workload or --xyz file)."""
    from einsum_workbench.bench import inputs

    lmax = pytestconfig.getoption("lmax")
    xyz = pytestconfig.getoption("xyz")
    if xyz:
        frames = pytestconfig.getoption("xyz_frames") or pytestconfig.getoption("frames") or inputs.DEFAULT_XYZ_FRAMES
        return inputs.xyz_input(xyz, pytestconfig.getoption("semiaxes"), frames=frames, lmax=lmax)
    return inputs.generated_input(pytestconfig.getoption("workload"), pytestconfig.getoption("frames"), lmax=lmax)


@pytest.fixture(scope="session")
def bench_dtype(pytestconfig):
    import numpy as np

    return np.dtype(pytestconfig.getoption("bench_dtype")).type


def pytest_benchmark_update_machine_info(config, machine_info):
    """Store versions, CPU model and the pinning with the saved run."""
    from einsum_workbench.bench import measure

    state = config.stash.get(session_key, {})
    # only what stays the same between comparable runs (pytest-benchmark warns on any
    # difference); the full pinning state is in every result's extra_info
    machine_info["einsum_workbench"] = {
        "versions": measure.package_versions(),
        "cpu_model": measure.cpu_model(),
        "threads": state.get("threads"),
        "thread_env": {name: os.environ.get(name) for name in pinning.THREAD_ENV_VARS},
        "allocator": state.get("allocator"),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The ranking table: one per workload group, fastest first."""
    state = config.stash.get(session_key, None)
    if not state:
        return
    tr = terminalreporter
    for table in state.get("study", []):
        tr.section("einsum-workbench NumPy vs Torch study")
        for line in table.splitlines():
            tr.write_line(line)
    if not state["results"] and not state["unavailable"]:
        return
    tr.section("einsum-workbench ranking")
    for line in report.ranking_text(state["results"], state["unavailable"]).splitlines():
        tr.write_line(line)
    for line in report.goal_lines(state["results"]):
        tr.write_line(line)


@pytest.fixture
def measure_variant(benchmark, bench_state):
    """``measure_variant(name, inp, **options) -> record``: ``runner.benchmark_variant`` in this
    session; skips an unavailable variant (its reason listed under the ranking) and stops the
    session when the pinning breaks."""
    from einsum_workbench.bench import runner
    from einsum_workbench.kernels.registry import get_variant

    def measure(name, inp, *, threads=None, problem="pairs", **options):
        reason = get_variant(name, problem).unavailable_reason()
        if reason is not None:
            bench_state["unavailable"][name if problem == "pairs" else f"{name} ({problem})"] = reason
            pytest.skip(f"variant {name} ({problem}) is unavailable here: {reason}")
        try:
            record = runner.benchmark_variant(benchmark, name, inp, threads or bench_state["threads"],
                                              problem=problem, **options)
        except pinning.PinningError as err:
            pytest.exit(f"thread pinning does not hold for variant {name}: {err}", returncode=3)
        bench_state["results"].append(record)
        return record

    return measure

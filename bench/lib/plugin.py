"""The bench's pytest plugin: options, thread pinning, fixtures and the ranking.

``bench/conftest.py`` registers it (``pytest_plugins``), so ``pytest bench``
(or any file under ``bench/``) uses it; a suite elsewhere can load it with
``pytest -p einsum_workbench.bench.plugin``. It

- adds the options (``pytest bench --help``, section "ranking"), defined once
  in :mod:`.options`: ``--workload --frames --lmax --xyz --semiaxes
  --xyz-frames --threads --variant (repeatable) --dtype (alias --bench-dtype)
  --budget --max-rounds --scaling-max-pairs``; a bad value is pytest's usage
  error (exit status 4) naming it, an unknown ``--variant`` too;
- pins the threads before NumPy loads, in ``pytest_configure`` (first of all
  plugins; in ``pytest_load_initial_conftests`` already when loaded with
  ``-p``), verifies the pinning at session start and stops the session
  (exit status 3) naming what does not hold;
- turns on pytest-benchmark's autosave, into ``--benchmark-storage``
  (pytest-benchmark's default: ``.benchmarks`` in the current directory), so
  that ``pytest bench --benchmark-compare`` compares with the previous run;
- provides the fixtures ``bench_state``, ``bench_input``, ``bench_dtype``,
  ``bench_storage`` and ``measure_variant`` and the parameters
  ``ranked_variant`` and ``density_variant``;
- prints the ranking (time per pair, pairs per second, speedup over the
  reference, latency, first-call cost, peak memory, threads) and the goals at
  the end.

Only the standard library, pytest and the NumPy-free :mod:`.pinning`,
:mod:`.options` and :mod:`.report` are imported at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from einsum_workbench.bench import options
from einsum_workbench.bench import pinning
from einsum_workbench.bench import report
from einsum_workbench.threads import THREAD_ENV_VARS

session_key = pytest.StashKey[dict]()

#: suites that run only when their marker is selected (``-m scaling``, ``-m study``)
OPT_IN_MARKERS = ("scaling", "study")
MARKERS = {
    "scaling": "scaling benchmarks, not run by default (select with -m scaling)",
    "study": "the NumPy-vs-Torch study, not run by default (select with -m study)",
}
#: the thread-scaling suite also measures at this many threads in the same process
SCALING_THREADS = 2


def pytest_addoption(parser):
    """The bench's options (group "ranking"), defined in :mod:`.options`."""
    group = parser.getgroup("ranking", "einsum-workbench ranking (pytest bench)")
    options.add_workload_options(group)
    options.add_threads_option(group)
    group.addoption("--variant", action="append", default=None, metavar="NAME",
                    help="rank only this variant (repeatable); the reference is always measured")
    options.add_measure_options(group, max_rounds_default=30)
    group.addoption("--scaling-max-pairs", type=options.positive_int, default=1_000_000,
                    help="scaling suites (-m scaling): largest pair count measured (default 1,000,000)")


def _numba_pool(markexpr) -> int | None:
    # Numba's pool is sized when it loads (a cap; the count used is pinned with
    # numba.set_num_threads): the thread-scaling suite needs room for 2 threads.
    return SCALING_THREADS if "scaling" in (markexpr or "") else None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """With ``-p einsum_workbench.bench.plugin``: set the thread environment before any conftest loads."""
    known = early_config.known_args_namespace
    threads = getattr(known, "threads", None)
    if isinstance(threads, int) and threads >= 1:
        pinning.set_thread_env(threads, numba_pool=_numba_pool(getattr(known, "markexpr", "")))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Check the variants, pin the threads and turn on autosave (before pytest-benchmark starts)."""
    registered = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for marker, text in MARKERS.items():
        if marker not in registered:
            config.addinivalue_line("markers", f"{marker}: {text}")
    _check_variants(config.getoption("variant"))
    threads = config.getoption("threads")
    # before anything imports NumPy: the thread-count variables are read once, when BLAS and OpenMP load
    pinning.set_thread_env(threads, numba_pool=_numba_pool(config.getoption("markexpr")))
    # measure the specialised Numba kernels (compiled on the first call, reported apart), never the
    # generic one that serves first calls while a background process compiles beside the measurement
    os.environ.setdefault("EINSUM_WORKBENCH_NUMBA_KERNEL", "specialised")
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if not disabled and not config.getoption("benchmark_json") and not config.getoption("benchmark_save"):
        from pytest_benchmark.utils import get_tag

        config.option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: commit_time
    state = {"threads": threads, "pin_error": None, "results": [], "unavailable": {}, "reference": {}}
    try:
        import numpy  # noqa: F401  (loads the BLAS now, under the variables, so it is pinned and verified at start)

        state["pinning"] = pinning.pin(threads)
        from einsum_workbench.bench import measure

        state["allocator"] = measure.keep_freed_memory()
    except (ValueError, pinning.PinningError) as err:
        state["pin_error"] = str(err)
    config.stash[session_key] = state


def _check_variants(chosen) -> None:
    """UsageError naming an unknown ``--variant`` (and listing the valid names)."""
    from einsum_workbench.kernels.registry import get_variant

    for name in chosen or ():
        try:
            get_variant(name)
        except KeyError as err:
            raise pytest.UsageError(f"--variant: {err.args[0]}") from None


def pytest_sessionstart(session):
    """Stop the session unless every part of the pinning holds."""
    state = session.config.stash[session_key]
    threads = state["threads"]
    if state["pin_error"] is None:
        problems = pinning.verify(threads)
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


def ranking_names(config, problem: str = "pairs") -> list[str]:
    """The variants ranked for ``problem`` in this session.

    Parameters
    ----------
    config : pytest.Config
    problem : {"pairs", "density"}

    Returns
    -------
    list of str
        The ``--variant`` ones registered for ``problem``, the reference
        first (always), or every registered one when none is chosen.
    """
    from einsum_workbench.kernels.registry import variant_names

    chosen = config.getoption("variant")
    if not chosen:
        return variant_names(problem)
    return ["reference"] + [n for n in dict.fromkeys(chosen) if n != "reference" and n in variant_names(problem)]


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
        metafunc.parametrize("ranked_variant", ranking_names(metafunc.config))
    if "density_variant" in metafunc.fixturenames:
        metafunc.parametrize("density_variant", ranking_names(metafunc.config, "density"))


@pytest.fixture(scope="session")
def bench_state(pytestconfig) -> dict:
    """Session record: threads, pinning, results so far, unavailable variants, reference timing."""
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="session")
def bench_input(pytestconfig):
    """The pair batch of this session's ranking (generated workload or ``--xyz`` file,
    :func:`.inputs.workload_from`); a workload that cannot be built stops the
    session once, as a usage error naming the option."""
    from einsum_workbench.bench import inputs

    try:
        return inputs.workload_from(pytestconfig.option)
    except options.OptionError as err:
        pytest.exit(f"usage error: {err}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def bench_dtype(pytestconfig):
    """The ``--dtype`` of this session as a NumPy scalar type."""
    import numpy as np

    return np.dtype(pytestconfig.getoption("dtype")).type


def storage_path(config) -> Path:
    """The folder where this session saves runs.

    Parameters
    ----------
    config : pytest.Config

    Returns
    -------
    Path
        pytest-benchmark's ``--benchmark-storage`` (a ``file://`` URL or a
        plain path, relative to the current directory), absolute;
        ``.benchmarks`` in the current directory for other storages.
    """
    storage = str(config.getoption("benchmark_storage", None) or report.STORAGE_DIR)
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    elif "://" in storage:
        return report.default_storage()
    return Path(os.path.expanduser(storage)).resolve()


@pytest.fixture(scope="session")
def bench_storage(pytestconfig) -> Path:
    """Where this session saves runs and other outputs (:func:`storage_path`)."""
    return storage_path(pytestconfig)


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
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
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
def measure_variant(benchmark, bench_state, pytestconfig):
    """``measure_variant(name, inp, *, threads=None, problem="pairs", **options) -> record``:
    :func:`.runner.benchmark_variant` in this session (``--budget`` and
    ``--max-rounds`` unless given); skips an unavailable variant (its reason
    listed under the ranking) and stops the session when the pinning breaks."""
    from einsum_workbench.kernels.registry import get_variant

    from einsum_workbench.bench import runner

    def measure(name, inp, *, threads=None, problem="pairs", **kwargs):
        reason = get_variant(name, problem).unavailable_reason()
        if reason is not None:
            bench_state["unavailable"][name if problem == "pairs" else f"{name} ({problem})"] = reason
            pytest.skip(f"variant {name} ({problem}) is unavailable here: {reason}")
        kwargs.setdefault("budget_s", pytestconfig.getoption("budget"))
        kwargs.setdefault("max_rounds", pytestconfig.getoption("max_rounds"))
        try:
            record = runner.benchmark_variant(benchmark, name, inp, threads or bench_state["threads"],
                                              problem=problem, **kwargs)
        except pinning.PinningError as err:
            pytest.exit(f"thread pinning does not hold for variant {name}: {err}", returncode=3)
        bench_state["results"].append(record)
        return record

    return measure

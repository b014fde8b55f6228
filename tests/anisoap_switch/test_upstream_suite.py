"""Upstream AniSOAP 0.1.1's own test suite, unpatched and under ``ANISOAP_BACKEND``.

AniSOAP's source distribution (fetched and sha256-checked by
``reference.upstream.fetch_anisoap_source``) ships its tests
(``unit-tests``, ``integration-tests``, ``cache-and-speed-tests``). They run
here with pytest in subprocesses of this interpreter, three times:

- ``ANISOAP_BACKEND`` unset: upstream's own code. Every test not listed in
  :data:`NOT_RUN` must pass;
- ``ANISOAP_BACKEND=numba_fused`` and ``ANISOAP_BACKEND=numpy_einsum``: the
  switch's ``.pth`` startup hook patches AniSOAP at import; the same tests must
  pass.

``PYTHONPATH`` holds the sdist root (the ``anisoap`` package) and a directory
with a stand-in for upstream's Rust extension ``anisoap_rust_lib`` (the
workbench's compiled ``reference.moments.compute_moments``, as upstream's is
compiled; ``reference.upstream.write_rust_lib_standin``) and a pytest plugin
(:data:`PLUGIN_SOURCE`, loaded with ``-p``) that

- applies the compatibility shims of :data:`SHIMS` (upstream's test code
  runs unchanged),
- records every test's outcome and the tail of its traceback,
- records the switch's state after importing AniSOAP and at the end of the
  session: ``active_backend()`` and the ``workbench_backend`` attribute of what
  the switch patches (module functions and ``EllipsoidalDensityProjection``
  methods), and counts the calls of the patched callables during the tests.
  A backend run passes only if the backend was active and its code ran: a
  switch that silently did nothing fails here.

The three runs go two at a time. Under ``numba_fused`` a new hyper-parameter
set (30 in ``test_convergence.py``) is served by the generic kernel while its
specialised kernel compiles in a background process (``kernels.numba.dispatch``),
so even on a cold cache the run takes about as long as the unpatched one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from einsum_workbench.anisoap_switch import switch
from einsum_workbench.reference.upstream import UpstreamUnavailable, write_rust_lib_standin

pytestmark = pytest.mark.upstream

#: Backends whose runs must pass the tests the unpatched run passes.
BACKENDS = ("numba_fused", "numpy_einsum")

#: Upstream tests NOT run, node id (a prefix: a whole test function or file)
#: relative to the sdist root -> why it fails unpatched, for reasons outside
#: the switch. Passed to pytest as ``--deselect``. Each entry must match at
#: least one collected test (a stale entry fails the unpatched test).
NOT_RUN = {
    "tests/cache-and-speed-tests/test_compute_moments.py::TestComputeMoments::test_speedup": (
        "timing race, not a check of AniSOAP's results: asserts that the compiled "
        "compute_moments (Rust upstream, the workbench's numba one here) beats upstream's "
        "pure-Python recurrence on each of 1,250 inputs, 3 calls each; at lmax 1-3 both "
        "take ~70 us and a few of the 1,250 fail at random in every run, unpatched too "
        "(e.g. [1-mat14-cen4]: 7.27e-05 s < 7.24e-05 s is False). The switch does not "
        "touch compute_moments."
    ),
}

#: Compatibility shims the plugin applies in the subprocess, name -> why.
#: They let upstream's test code run unchanged on today's libraries.
SHIMS = {
    "scipy.special.sph_harm": (
        "removed in SciPy 1.17; integration-tests/test_convergence.py imports it at module "
        "level (collection error, unpatched too). Supplied, only where missing, as "
        "sph_harm(m, n, theta, phi) = sph_harm_y(n, m, phi, theta) (SciPy's documented "
        "replacement: degree first, polar angle first). That file is the one upstream test "
        "that checks transform's values (reconstructing a Gaussian from its coefficients), "
        "so it is run rather than skipped."
    ),
}

#: Seconds one subprocess run may take (numba_fused on a cold cache: ~2 min).
RUN_TIMEOUT = 1200
PLUGIN_MODULE = "einsum_workbench_upstream_suite_plugin"
REPORT_ENV = "EINSUM_WORKBENCH_UPSTREAM_SUITE_REPORT"
TRACEBACK_TAIL_LINES = 15

# Loaded by the subprocess's pytest with -p; writes a JSON report at session end.
PLUGIN_SOURCE = textwrap.dedent(
    '''
    """pytest plugin for upstream AniSOAP's suite under the workbench (tests/anisoap_switch/test_upstream_suite.py)."""
    import functools
    import json
    import os
    import sys
    import traceback

    TARGET = "anisoap.representations.ellipsoidal_density_projection"
    MODULE_FUNCTIONS = ("pairwise_ellip_expansion", "contract_pairwise_feat")
    CLASS_METHODS = ("transform", "power_spectrum")
    TAIL = {tail}
    RANK = {{"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 2, "failed": 3, "error": 3}}
    _state = {{"outcomes": {{}}, "tracebacks": {{}}, "collect_errors": {{}}, "deselected": [],
               "shims": [], "calls": {{}}, "import_error": None, "start": None, "end": None}}


    def sph_harm_from_sph_harm_y(m, n, theta, phi):
        """SciPy < 1.17's sph_harm (theta azimuthal, phi polar) from sph_harm_y."""
        import scipy.special

        return scipy.special.sph_harm_y(n, m, phi, theta)


    def install_shims():
        import scipy.special

        if not hasattr(scipy.special, "sph_harm") and hasattr(scipy.special, "sph_harm_y"):
            scipy.special.sph_harm = sph_harm_from_sph_harm_y
            _state["shims"].append("scipy.special.sph_harm")


    def _tail(text):
        return "\\n".join(str(text).rstrip().splitlines()[-TAIL:])


    def _patched_callables():
        """(owner, attribute, key) of everything the switch may patch."""
        module = sys.modules.get(TARGET)
        if module is None:
            return []
        found = [(module, name, name) for name in MODULE_FUNCTIONS if hasattr(module, name)]
        cls = getattr(module, "EllipsoidalDensityProjection", None)
        if cls is not None:
            found += [(cls, name, "EllipsoidalDensityProjection." + name)
                      for name in CLASS_METHODS if name in vars(cls)]
        return found


    def switch_state():
        state = {{"active_backend": None, "markers": {{}}}}
        try:
            from einsum_workbench.anisoap_switch.switch import active_backend

            state["active_backend"] = active_backend()
        except Exception as err:  # noqa: BLE001 - reported to the parent
            state["active_backend"] = "<error: {{!r}}>".format(err)
        for owner, name, key in _patched_callables():
            state["markers"][key] = getattr(getattr(owner, name), "workbench_backend", None)
        return state


    def _count_calls(owner, name, key):
        original = vars(owner)[name]
        if not callable(original) or isinstance(original, (staticmethod, classmethod)):
            return
        _state["calls"][key] = 0

        @functools.wraps(original)  # keeps workbench_backend and the signature
        def counted(*args, **kwargs):
            _state["calls"][key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)


    def pytest_configure(config):
        install_shims()


    def pytest_sessionstart(session):
        try:
            import anisoap  # noqa: F401 - ANISOAP_BACKEND patches here
            __import__(TARGET)
        except BaseException:  # noqa: BLE001 - the tests' own imports fail the same way
            _state["import_error"] = _tail(traceback.format_exc())
        _state["start"] = switch_state()
        backend = _state["start"]["active_backend"]
        if backend is not None:
            for owner, name, key in _patched_callables():
                if getattr(getattr(owner, name), "workbench_backend", None) == backend:
                    _count_calls(owner, name, key)


    def pytest_deselected(items):
        _state["deselected"].extend(item.nodeid for item in items)


    def pytest_collectreport(report):
        if report.failed:
            _state["collect_errors"][report.nodeid] = _tail(report.longreprtext)


    def pytest_runtest_logreport(report):
        if report.when != "call" and report.passed:
            return
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome
        previous = _state["outcomes"].get(report.nodeid, "passed")
        if RANK[outcome] >= RANK[previous]:
            _state["outcomes"][report.nodeid] = outcome
        if report.failed or report.skipped:
            crash = getattr(report.longrepr, "reprcrash", None)
            headline = "" if crash is None else "{{}}:{{}}: {{}}\\n".format(
                crash.path, crash.lineno, "\\n".join(str(crash.message).splitlines()[:3]))
            text = _state["tracebacks"].get(report.nodeid, "")
            _state["tracebacks"][report.nodeid] = (text + "\\n" if text else "") + \\
                "[{{}}] ".format(report.when) + headline + _tail(report.longreprtext)


    def pytest_sessionfinish(session, exitstatus):
        _state["end"] = switch_state()
        _state["exitstatus"] = int(exitstatus)
        with open(os.environ["{report_env}"], "w") as f:
            json.dump(_state, f, indent=1, sort_keys=True)
    '''
).format(tail=TRACEBACK_TAIL_LINES, report_env=REPORT_ENV)


# ---------------------------------------------------------------- running the suite


@pytest.fixture(scope="module")
def upstream_source() -> Path:
    """The extracted sdist root; the module is skipped if it cannot be had."""
    from einsum_workbench.reference.upstream import _check_dependencies, fetch_anisoap_source

    try:
        source = fetch_anisoap_source()
        _check_dependencies()
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream AniSOAP 0.1.1 unavailable, its test suite not run: {err.reason}")
    assert (source / "tests").is_dir(), f"{source} holds no tests/ folder: not anisoap 0.1.1's sdist"
    return source


def _run_suite(source: Path, work: Path, backend: str | None) -> dict:
    """Run upstream's tests (a copy in ``work``) with ``ANISOAP_BACKEND=backend``."""
    report_path = work / f"report_{backend or 'unpatched'}.json"
    # the switch as users get it: Numba kernels in their default (auto) mode
    env = {k: v for k, v in os.environ.items()
           if k not in (switch.ENV_VAR, switch.LAYOUT_ENV_VAR, "PYTEST_ADDOPTS", "PYTHONPATH",
                        "EINSUM_WORKBENCH_NUMBA_KERNEL")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(source), str(work), os.environ.get("PYTHONPATH")])),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",  # only our plugin: no benchmark, no random order
        **{REPORT_ENV: str(report_path)},
        # two runs share the machine's cores
        OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
    )
    if backend is not None:
        env[switch.ENV_VAR] = backend
    argv = [sys.executable, "-m", "pytest", "tests", "-c", str(work / "pytest.ini"), "--rootdir", str(work),
            "-p", "no:cacheprovider", "-p", PLUGIN_MODULE, "-q", "--tb=short", "-W", "ignore::DeprecationWarning"]
    for node in NOT_RUN:
        argv += ["--deselect", node]
    start = time.perf_counter()
    try:
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired as err:
        returncode, stdout, stderr = "timeout", str(err.stdout or ""), str(err.stderr or "")
    seconds = time.perf_counter() - start
    run = {"backend": backend, "returncode": returncode, "seconds": seconds,
           "output_tail": "\n".join((stdout + "\n" + stderr).rstrip().splitlines()[-40:])}
    if report_path.is_file():
        run["report"] = json.loads(report_path.read_text())
    return run


@pytest.fixture(scope="module")
def suite_runs(upstream_source, tmp_path_factory) -> dict:
    """Upstream's suite run unpatched and under each backend, two at a time."""
    work = tmp_path_factory.mktemp("upstream_suite")
    shutil.copytree(upstream_source / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pytest.ini").write_text("[pytest]\n")  # pins rootdir; nothing inherited
    write_rust_lib_standin(work, moments="numba")
    (work / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    order = ["numba_fused", None, "numpy_einsum"]  # the slowest first: the two workers end together
    order += [b for b in BACKENDS if b not in order]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {run["backend"]: run for run in pool.map(lambda b: _run_suite(upstream_source, work, b), order)}
    for backend, run in runs.items():
        report = run.get("report", {})
        print(f"upstream suite, ANISOAP_BACKEND={backend or 'unset'}: {run['seconds']:.1f} s, "
              f"{sum(o == 'passed' for o in report.get('outcomes', {}).values())} passed, "
              f"exit {run['returncode']}")
    return runs


def _report(run) -> dict:
    """The plugin's report, or a failure that says why there is none."""
    assert "report" in run, (
        f"ANISOAP_BACKEND={run['backend'] or 'unset'}: pytest wrote no report "
        f"(exit {run['returncode']}, {run['seconds']:.0f} s); output tail:\n{run['output_tail']}"
    )
    return run["report"]


def _passed(report) -> set[str]:
    return {node for node, outcome in report["outcomes"].items() if outcome == "passed"}


def _describe(report, nodes, limit=25) -> str:
    lines = []
    for node in sorted(nodes)[:limit]:
        outcome = report["outcomes"].get(node, "not run")
        lines.append(f"--- {node}: {outcome}")
        if node in report["tracebacks"]:
            lines.append(textwrap.indent(report["tracebacks"][node], "    "))
    if len(nodes) > limit:
        lines.append(f"... and {len(nodes) - limit} more")
    return "\n".join(lines)


def _collect_errors(report) -> str:
    return "\n".join(f"--- {node}\n{textwrap.indent(text, '    ')}" for node, text in report["collect_errors"].items())


# ---------------------------------------------------------------- the tests


def test_upstream_suite_unpatched(suite_runs, upstream_source):
    """Upstream's own code passes its own tests (but those of NOT_RUN)."""
    run = suite_runs[None]
    report = _report(run)
    assert report["import_error"] is None, f"upstream AniSOAP does not import:\n{report['import_error']}"
    assert report["start"]["active_backend"] is None and report["end"]["active_backend"] is None, report["start"]
    assert not any(report["start"]["markers"].values()), f"patched with ANISOAP_BACKEND unset: {report['start']}"
    assert not report["calls"]
    assert not report["collect_errors"], f"collection errors:\n{_collect_errors(report)}"
    not_passed = {node for node, outcome in report["outcomes"].items() if outcome != "passed"}
    assert not not_passed, (
        f"{len(not_passed)} upstream test(s) do not pass unpatched: fix the environment or add them, "
        f"with the reason, to NOT_RUN:\n{_describe(report, not_passed)}"
    )
    assert run["returncode"] == 0, f"exit {run['returncode']}; output tail:\n{run['output_tail']}"
    stale = [node for node in NOT_RUN if not any(d.startswith(node) for d in report["deselected"])]
    assert not stale, f"NOT_RUN entries that match no upstream test: {stale}"
    assert set(report["shims"]) <= set(SHIMS), f"shims applied but not listed in SHIMS: {report['shims']}"
    # every upstream test file contributed passing tests: the suite did not shrink silently
    files = {p.relative_to(upstream_source).as_posix() for p in (upstream_source / "tests").rglob("test_*.py")}
    ran = {node.split("::")[0] for node in _passed(report)}
    assert files <= ran, f"upstream test files with no passing test: {sorted(files - ran)}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_upstream_suite_under_backend(suite_runs, backend):
    """With ``ANISOAP_BACKEND=backend`` the same upstream tests pass, the
    backend was active and its code ran."""
    unpatched = _report(suite_runs[None])
    run = suite_runs[backend]
    report = _report(run)
    assert report["import_error"] is None, (
        f"import anisoap fails with ANISOAP_BACKEND={backend}:\n{report['import_error']}"
    )
    for when in ("start", "end"):
        state = report[when]
        assert state["active_backend"] == backend, (
            f"ANISOAP_BACKEND={backend}, but at session {when} active_backend() is {state['active_backend']!r}"
        )
        marked = {key for key, name in state["markers"].items() if name == backend}
        others = {key: name for key, name in state["markers"].items() if name not in (None, backend)}
        assert marked and not others, (
            f"at session {when}, the switch's marks (workbench_backend) are {state['markers']}: "
            f"expected {backend!r} on what it patches"
        )
    calls = report["calls"]
    assert sum(calls.values()) > 0, f"the patched callables {sorted(calls)} were never called during the suite"
    assert not report["collect_errors"], f"collection errors under {backend}:\n{_collect_errors(report)}"
    expected, got = _passed(unpatched), _passed(report)
    lost, gained = expected - got, got - expected
    assert not lost, (
        f"ANISOAP_BACKEND={backend}: {len(lost)} upstream test(s) that pass unpatched do not pass "
        f"(calls of the patched code: {calls}):\n{_describe(report, lost)}"
    )
    assert not gained, f"tests that pass only under {backend} (not run unpatched?): {sorted(gained)[:20]}"
    assert run["returncode"] == 0, f"exit {run['returncode']}; output tail:\n{run['output_tail']}"


def test_upstream_suite_timings(suite_runs, record_property):
    """Not a benchmark: wall seconds of each run (two ran at a time), for the log."""
    seconds = {run["backend"] or "unpatched": round(run["seconds"], 1) for run in suite_runs.values()}
    print("upstream suite wall seconds per run:", seconds)
    record_property("upstream_suite_seconds", seconds)
    assert set(seconds) == {"unpatched", *BACKENDS}


# ---------------------------------------------------------------- the helpers themselves


def _plugin_module() -> types.ModuleType:
    module = types.ModuleType(PLUGIN_MODULE)
    exec(compile(PLUGIN_SOURCE, PLUGIN_MODULE, "exec"), module.__dict__)
    return module


def test_sph_harm_shim():
    """The shim is SciPy < 1.17's ``sph_harm(m, n, azimuth, polar)``: against
    closed forms, and against the real one where SciPy still has both."""
    import scipy.special

    if not hasattr(scipy.special, "sph_harm_y"):
        pytest.skip(f"SciPy {scipy.__version__} has no sph_harm_y: the shim is never installed")
    shim = _plugin_module().sph_harm_from_sph_harm_y
    azimuth, polar = np.meshgrid(np.linspace(0, 2 * np.pi, 7), np.linspace(0, np.pi, 5))
    c, s, e = np.cos(polar), np.sin(polar), np.exp(1j * azimuth)
    closed = {
        (0, 0): np.full_like(polar, 0.5 / np.sqrt(np.pi)),
        (0, 1): np.sqrt(3 / (4 * np.pi)) * c,
        (1, 1): -np.sqrt(3 / (8 * np.pi)) * s * e,
        (-1, 1): np.sqrt(3 / (8 * np.pi)) * s / e,
        (0, 2): np.sqrt(5 / (16 * np.pi)) * (3 * c**2 - 1),
        (2, 2): 0.25 * np.sqrt(15 / (2 * np.pi)) * s**2 * e**2,
    }
    for (m, n), expected in closed.items():
        np.testing.assert_allclose(shim(m, n, azimuth, polar), expected, atol=1e-14, err_msg=f"m={m} n={n}")
    if hasattr(scipy.special, "sph_harm"):
        for n in range(5):
            for m in range(-n, n + 1):
                np.testing.assert_allclose(shim(m, n, azimuth, polar), scipy.special.sph_harm(m, n, azimuth, polar),
                                           atol=1e-14)


def test_write_rust_lib_standin(tmp_path):
    """The written stand-in serves the workbench's moments; bad choices are refused."""
    import importlib.util

    from einsum_workbench.reference.moments import compute_moments_python
    from einsum_workbench.reference.upstream import MOMENTS

    path = write_rust_lib_standin(tmp_path / "numba", moments="numba")
    assert path == tmp_path / "numba" / "anisoap_rust_lib.py"
    spec = importlib.util.spec_from_file_location("standin_under_test", path)  # not the real name: no clash
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    precision = np.array([[2.0, 0.3, 0.1], [0.3, 1.5, 0.2], [0.1, 0.2, 1.0]])
    centre = np.array([0.3, -0.2, 1.0])
    expected = compute_moments_python(precision, centre, 5)
    np.testing.assert_allclose(module.compute_moments(precision, centre, 5), expected,
                               rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    assert module.__einsum_workbench_moments__ == "numba"
    python = write_rust_lib_standin(tmp_path / "python", moments="python").read_text()
    assert "compute_moments_inefficient_implementation" in python
    compile(python, "anisoap_rust_lib.py", "exec")
    with pytest.raises(ValueError, match="moments must be one of"):
        write_rust_lib_standin(tmp_path, moments="rust")
    assert set(MOMENTS) == {"python", "numba"}

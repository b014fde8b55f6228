"""The AniSOAP switch: ``ANISOAP_BACKEND`` and the explicit API (issue 6).

End to end, upstream AniSOAP 0.1.1's own Python code (fetched from the package
index; its Rust ``compute_moments`` replaced by upstream's Python
``compute_moments_inefficient_implementation``) runs
``EllipsoidalDensityProjection.transform`` and ``power_spectrum`` in
subprocesses: once with ``ANISOAP_BACKEND`` unset, once per available backend
with the variable set. The subprocess script never imports the workbench: the
``.pth`` startup hook installed with the package does the patching. Outputs
must agree at the suite's tolerances (rtol 1e-6, atol 1e-8 times the block's
largest magnitude, on the orthonormalised output ``transform`` returns).
"""

from __future__ import annotations

import os
import pickle
import site
import subprocess
import sys
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from einsum_workbench.anisoap_switch import switch
from einsum_workbench.anisoap_switch.neighbour_sum import contract_pairwise_feat
from einsum_workbench.anisoap_switch.expansion import make_pairwise_ellip_expansion
from einsum_workbench.kernels.registry import VARIANTS, available_variants, load_variant

REPO = Path(__file__).resolve().parents[2]
PTH_NAME = "einsum_workbench_anisoap_backend.pth"
RTOL, ATOL_SCALE = 1e-6, 1e-8
#: Calculators run on every frame set: (label, EllipsoidalDensityProjection kwargs, power spectrum?)
CALCULATORS = (
    ("gto_l4", dict(max_angular=4, radial_basis_name="gto", cutoff_radius=7.0,
                    radial_gaussian_width=1.5, rotation_key="c_q"), True),
    ("monomial_l3", dict(max_angular=3, radial_basis_name="monomial", cutoff_radius=7.0,
                         rotation_key="c_q"), False),
)

# Run in a fresh interpreter: imports only AniSOAP (from PYTHONPATH) and ASE.
SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import pickle, sys, time, warnings
    warnings.simplefilter("ignore")
    heavy_at_start = sorted(m for m in ("numpy", "metatensor") if m in sys.modules)
    from anisoap.representations import EllipsoidalDensityProjection
    import anisoap.representations.ellipsoidal_density_projection as edp

    def plain(tensor):
        return {
            "keys": (tuple(tensor.keys.names), tensor.keys.values.tolist()),
            "blocks": [
                {
                    "samples": (tuple(b.samples.names), b.samples.values.tolist()),
                    "components": [(tuple(c.names), c.values.tolist()) for c in b.components],
                    "properties": (tuple(b.properties.names), b.properties.values.tolist()),
                    "values": b.values.copy(),
                }
                for b in tensor.blocks()
            ],
        }

    with open(sys.argv[1], "rb") as f:
        frame_sets, calculators = pickle.load(f)
    results, start = {}, time.perf_counter()
    for set_name, frames in frame_sets.items():
        for label, kwargs, with_power in calculators:
            calc = EllipsoidalDensityProjection(**kwargs)
            results[set_name, label, "transform"] = plain(calc.transform(frames))
            if not with_power:
                continue
            if len({int(z) for frame in frames for z in frame.numbers}) == 1:
                # upstream's averaged spectrum needs a single centre species
                results[set_name, label, "power"] = calc.power_spectrum(frames)
            else:
                results[set_name, label, "power_tensor"] = plain(
                    calc.power_spectrum(frames, mean_over_samples=False))
    report = {
        "seconds": time.perf_counter() - start,
        "heavy_at_start": heavy_at_start,
        "backend": getattr(edp.pairwise_ellip_expansion, "workbench_backend", None),
        "neighbour_sum": getattr(edp.contract_pairwise_feat, "workbench_backend", None),
        "results": results,
    }
    with open(sys.argv[2], "wb") as f:
        pickle.dump(report, f)
    """
)

# Stand-in for upstream's Rust extension: upstream's own Python moments.
PYTHON_MOMENTS_STANDIN = textwrap.dedent(
    """
    def compute_moments(precision, center, maxdeg):
        from anisoap.utils.moment_generator import compute_moments_inefficient_implementation
        return compute_moments_inefficient_implementation(precision, center, maxdeg=maxdeg)
    """
)

# A stand-in AniSOAP with the patched module only: error paths without the real import cost.
FAKE_PROJECTION_MODULE = textwrap.dedent(
    """
    def pairwise_ellip_expansion(*args, **kwargs):
        return "upstream"

    def contract_pairwise_feat(*args, **kwargs):
        return "upstream"
    """
)


# ---------------------------------------------------------------- helpers


def _site_packages_with_hook() -> list[Path]:
    dirs = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    return [d for d in dirs if (d / PTH_NAME).is_file()]


@pytest.fixture(scope="module")
def hook_installed():
    """The startup hook is in this interpreter's site-packages (the workbench is
    installed with ``pip install -e .`` or from its wheel)."""
    found = _site_packages_with_hook()
    assert found, (
        f"{PTH_NAME} is not in site-packages {site.getsitepackages()}: reinstall the workbench "
        "(pip install -e .) so that ANISOAP_BACKEND can take effect"
    )
    return found[0]


def _env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (switch.ENV_VAR, switch.LAYOUT_ENV_VAR)}
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def _run(code_or_script, env, cwd, *args, timeout=300):
    argv = [sys.executable, *([str(code_or_script)] if isinstance(code_or_script, Path) else ["-c", code_or_script])]
    return subprocess.run(argv + [str(a) for a in args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake_anisoap(tmp_path_factory) -> Path:
    """A directory holding a minimal ``anisoap`` package (the patched module only)."""
    root = tmp_path_factory.mktemp("fake_anisoap")
    package = root / "anisoap" / "representations"
    package.mkdir(parents=True)
    (root / "anisoap" / "__init__.py").write_text("from . import representations\n")
    (package / "__init__.py").write_text("from . import ellipsoidal_density_projection\n")
    (package / "ellipsoidal_density_projection.py").write_text(FAKE_PROJECTION_MODULE)
    return root


def _assert_tensor_close(actual, expected, where):
    """Same metadata exactly; values at rtol 1e-6 and atol 1e-8 times the
    tensor's largest magnitude. The tensor's, not the block's: after the
    neighbour sum a block can cancel to round-off (odd l in a cell with one
    particle, whose neighbours come in +r/-r pairs), and its own maximum is
    then round-off too."""
    assert actual["keys"] == expected["keys"], f"{where}: keys differ"
    assert len(actual["blocks"]) == len(expected["blocks"]), f"{where}: block counts differ"
    scale = max((float(np.abs(e["values"]).max()) for e in expected["blocks"] if e["values"].size), default=0.0)
    for index, (a, e) in enumerate(zip(actual["blocks"], expected["blocks"])):
        block = f"{where}, block {expected['keys'][1][index]}"
        for part in ("samples", "components", "properties"):
            assert a[part] == e[part], f"{block}: {part} differ"
        assert a["values"].shape == e["values"].shape, f"{block}: value shapes differ"
        np.testing.assert_allclose(a["values"], e["values"], rtol=RTOL, atol=ATOL_SCALE * scale,
                                   err_msg=block)


# ---------------------------------------------------------------- startup hook


def test_wheel_ships_the_startup_hook(tmp_path):
    """``pip wheel .`` puts the .pth at the wheel's root (purelib = site-packages)."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("einsum_workbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert PTH_NAME in names, names
        line = archive.read(PTH_NAME).decode()
        record = archive.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert line.startswith("import ") and "ANISOAP_BACKEND" in line and "einsum_workbench._startup" in line
    assert PTH_NAME in record  # pip removes it on uninstall


@pytest.mark.slow
def test_wheel_install_gets_working_hook(tmp_path, fake_anisoap):
    """A wheel installed into a fresh venv patches AniSOAP from its own hook."""
    import venv

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheels"), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("einsum_workbench-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import sys, einsum_workbench._startup as s; print(s.__file__); "
            "print(any(type(f).__name__ == '_AnisoapImportHook' for f in sys.meta_path))")
    result = subprocess.run([python, "-c", code], env=_env(ANISOAP_BACKEND="reference"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    startup_file, hooked = result.stdout.split()
    assert env_dir in Path(startup_file).resolve().parents and hooked == "True", result.stdout


def test_editable_install_has_the_hook(hook_installed):
    assert (hook_installed / PTH_NAME).read_text().startswith("import ")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_startup_hook_does_nothing_when_unset(hook_installed, tmp_path, value):
    code = ("import sys; print(sorted(m for m in sys.modules if m == 'numpy' or m == 'metatensor' "
            "or m.startswith('einsum_workbench')))")
    result = _run(code, _env(ANISOAP_BACKEND=value), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"ANISOAP_BACKEND={value!r} imported {result.stdout}"


def test_startup_hook_is_light_when_set(hook_installed, tmp_path):
    code = ("import sys; print(sorted(m for m in ('numpy', 'metatensor', 'torch', 'numba') if m in sys.modules), "
            "any(type(f).__name__ == '_AnisoapImportHook' for f in sys.meta_path))")
    result = _run(code, _env(ANISOAP_BACKEND="numpy_einsum"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True", result.stdout


def test_env_variable_patches_on_import(hook_installed, fake_anisoap, tmp_path):
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
            "import anisoap.representations.ellipsoidal_density_projection as m;"
            "print(m.pairwise_ellip_expansion.workbench_backend, m.contract_pairwise_feat.workbench_backend)")
    result = _run(code, _env(ANISOAP_BACKEND="numpy_einsum", PYTHONPATH=str(fake_anisoap)), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "numpy_einsum numpy_einsum", result.stdout
    assert sum("einsum_workbench.anisoap" in line and "'numpy_einsum' active" in line for line in lines) == 1


def test_env_variable_unknown_name_fails_at_anisoap_import(hook_installed, fake_anisoap, tmp_path):
    result = _run("import anisoap", _env(ANISOAP_BACKEND="no_such_backend", PYTHONPATH=str(fake_anisoap)), tmp_path)
    assert result.returncode != 0
    assert "UnknownBackendError" in result.stderr and "'no_such_backend'" in result.stderr, result.stderr
    for name in ("reference", "numpy_einsum", "numba_fused"):
        assert name in result.stderr, result.stderr


def test_env_variable_unavailable_backend_fails_with_reason(hook_installed, fake_anisoap, tmp_path):
    unavailable = [(v.name, v.unavailable_reason()) for v in VARIANTS if not v.available]
    if not unavailable:
        pytest.skip("every registered variant can run on this machine: no unavailable one to request")
    name, reason = unavailable[0]
    result = _run("import anisoap", _env(ANISOAP_BACKEND=name, PYTHONPATH=str(fake_anisoap)), tmp_path)
    assert result.returncode != 0
    assert "BackendUnavailableError" in result.stderr and reason in result.stderr, result.stderr
    # a retried import fails again rather than running upstream silently
    retry = ("try:\n    import anisoap\nexcept Exception:\n    pass\n"
             "import anisoap.representations.ellipsoidal_density_projection")
    result = _run(retry, _env(ANISOAP_BACKEND=name, PYTHONPATH=str(fake_anisoap)), tmp_path)
    assert result.returncode != 0 and "BackendUnavailableError" in result.stderr, result.stderr


def test_env_layout_variable_is_checked(hook_installed, fake_anisoap, tmp_path):
    env = _env(ANISOAP_BACKEND="numpy_einsum", ANISOAP_BACKEND_LAYOUT="sideways", PYTHONPATH=str(fake_anisoap))
    result = _run("import anisoap", env, tmp_path)
    assert result.returncode != 0 and "'sideways'" in result.stderr and "labelled" in result.stderr, result.stderr


# ---------------------------------------------------------------- explicit API errors


def test_activate_unknown_name_lists_valid_names():
    with pytest.raises(switch.UnknownBackendError) as info:
        switch.activate("nope")
    message = str(info.value)
    assert "'nope'" in message and all(v.name in message for v in VARIANTS)
    assert switch.active_backend() is None
    with pytest.raises(switch.UnknownBackendError):
        switch.activate("")


@pytest.mark.parametrize("name", ["cupy_batched", "torch_cuda"])
def test_activate_unavailable_variant_says_why(name):
    reason = next(v for v in VARIANTS if v.name == name).unavailable_reason()
    if reason is None:
        pytest.skip(f"{name} can run on this machine (a GPU is present): no unavailability to report")
    with pytest.raises(switch.BackendUnavailableError) as info:
        switch.activate(name)
    assert name in str(info.value) and reason in str(info.value)
    assert switch.active_backend() is None


def test_layout_names_agree():
    """One list of layout names (``pipeline.layout``): the neighbour sum checks
    against it and the switch accepts each of its names."""
    from einsum_workbench.anisoap_switch import neighbour_sum
    from einsum_workbench.pipeline.layout import PROPERTY_LAYOUTS, check_property_layout

    assert neighbour_sum.check_property_layout is check_property_layout
    for layout in PROPERTY_LAYOUTS:
        with switch.use_backend("numpy_einsum", property_layout=layout):
            assert switch.active_backend() == "numpy_einsum"
    assert switch.active_backend() is None


def test_activate_bad_layout():
    with pytest.raises(ValueError, match="sideways"):
        switch.activate("numpy_einsum", property_layout="sideways")
    assert switch.active_backend() is None


# ---------------------------------------------------------------- in-process, upstream AniSOAP


@pytest.fixture(scope="module")
def upstream_edp():
    """Upstream's projection module imported in this process (numba stand-in)."""
    from einsum_workbench.reference.upstream import UpstreamUnavailable, import_upstream_anisoap

    switch.deactivate()  # a backend requested by ANISOAP_BACKEND in this process would patch the import
    try:
        import_upstream_anisoap(moments="numba")
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream AniSOAP not available, in-process switch tests not run: {err}")
    import anisoap.representations.ellipsoidal_density_projection as edp

    yield edp
    switch.deactivate()


def test_use_backend_patches_and_restores(upstream_edp, caplog):
    original = (upstream_edp.pairwise_ellip_expansion, upstream_edp.contract_pairwise_feat)
    assert switch.active_backend() is None
    with caplog.at_level("INFO", logger="einsum_workbench.anisoap"):
        with switch.use_backend("numpy_einsum"):
            assert switch.active_backend() == "numpy_einsum"
            assert upstream_edp.pairwise_ellip_expansion.workbench_backend == "numpy_einsum"
            with switch.use_backend("reference", property_layout="labelled"):
                assert upstream_edp.contract_pairwise_feat.workbench_backend == "reference"
            assert upstream_edp.pairwise_ellip_expansion.workbench_backend == "numpy_einsum"
    assert (upstream_edp.pairwise_ellip_expansion, upstream_edp.contract_pairwise_feat) == original
    assert switch.active_backend() is None
    activations = [r.getMessage() for r in caplog.records if r.name == "einsum_workbench.anisoap"]
    assert len(activations) == 3 and "'numpy_einsum' active" in activations[0]
    switch.activate("numpy_einsum")
    switch.deactivate()
    assert upstream_edp.pairwise_ellip_expansion is original[0]


def _pair_features(edp, frames, normalize=None):
    """Upstream's calculator and the arguments transform passes on, captured."""
    from anisoap.representations import EllipsoidalDensityProjection

    calc = EllipsoidalDensityProjection(max_angular=3, radial_basis_name="gto", cutoff_radius=6.0,
                                        radial_gaussian_width=1.5, rotation_key="c_q")
    captured = {}
    original = edp.pairwise_ellip_expansion

    def spy(*args, **kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    edp.pairwise_ellip_expansion = spy
    try:
        calc.transform(frames, normalize=False)
    finally:
        edp.pairwise_ellip_expansion = original
    return calc, captured["args"], captured["kwargs"]


def _labelled_reference(pair_tensor, types):
    """Neighbour sum by definition: for each centre, sum pair values per neighbour type."""
    out = {}
    for key, block in pair_tensor.items():
        c, e, l = int(key["types_center"]), int(key["types_neighbor"]), int(key["angular_channel"])
        samples = np.asarray(block.samples.values)
        for row, (system, centre) in enumerate(samples[:, :2]):
            slot = out.setdefault((c, l), {}).setdefault((int(system), int(centre)), {})
            slot[e] = slot.get(e, 0.0) + block.values[row]
    return out


def test_neighbour_sum_layouts(upstream_edp):
    import warnings

    from einsum_workbench.reference.workloads import benzenes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, args, _ = _pair_features(upstream_edp, benzenes(1, seed=3, n_species=3))
    pair_tensor, types = upstream_edp.pairwise_ellip_expansion(*args), args[2]
    expected = _labelled_reference(pair_tensor, types)
    labelled = contract_pairwise_feat(pair_tensor, types, property_layout="labelled")
    upstream_layout = contract_pairwise_feat(pair_tensor, types)
    n_checked = 0
    for key, block in labelled.items():
        c, l = int(key["types_center"]), int(key["angular_channel"])
        props = np.asarray(block.properties.values)
        assert [tuple(p) for p in props] == [tuple(p) for p in np.asarray(upstream_layout.block(key).properties.values)]
        neighbour_types = sorted({int(e) for e in props[:, 1]})
        n_radial = len(props) // len(neighbour_types)
        for row, (system, centre) in enumerate(np.asarray(block.samples.values)):
            sums = expected[(c, l)][(int(system), int(centre))]
            for column, (n, e) in enumerate(props):
                want = sums[int(e)][:, int(n)] if int(e) in sums else 0.0
                np.testing.assert_allclose(block.values[row, :, column], want, rtol=1e-12, atol=1e-14)
                # upstream lays the same numbers out n-major under species-major labels
                e_index, n_index = neighbour_types.index(int(e)), int(n)
                np.testing.assert_allclose(
                    upstream_layout.block(key).values[row, :, n_index * len(neighbour_types) + e_index],
                    want, rtol=1e-12, atol=1e-14)
                n_checked += 1
        assert n_radial >= 1
    assert n_checked > 100


def test_normalize_argument_is_honoured(upstream_edp):
    """The development head's ``normalize=True``: orthonormalised inside the
    expansion equals upstream's orthonormalisation after the neighbour sum."""
    import warnings

    from einsum_workbench.reference.workloads import benzenes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc, args, _ = _pair_features(upstream_edp, benzenes(1, seed=4, n_species=2))
    patched = make_pairwise_ellip_expansion(load_variant("numpy_einsum"), "numpy_einsum",
                                            upstream_edp.pairwise_ellip_expansion)
    inside = contract_pairwise_feat(patched(*args, normalize=True), args[2], property_layout="labelled")
    after = calc.radial_basis.orthonormalize_basis(
        contract_pairwise_feat(patched(*args), args[2], property_layout="labelled"))
    for key, block in after.items():
        scale = float(np.abs(block.values).max())
        np.testing.assert_allclose(inside.block(key).values, block.values, rtol=RTOL, atol=ATOL_SCALE * scale)

    def dev_head(*args, normalize=True):  # signature of the development head
        raise AssertionError("not called")

    defaulted = make_pairwise_ellip_expansion(load_variant("numpy_einsum"), "numpy_einsum", dev_head)
    np.testing.assert_allclose(defaulted(*args).block(0).values, patched(*args, normalize=True).block(0).values)


# ---------------------------------------------------------------- end to end, subprocesses


@pytest.fixture(scope="module")
def upstream_source():
    from einsum_workbench.reference.upstream import UpstreamUnavailable, _check_dependencies, fetch_anisoap_source

    try:
        source = fetch_anisoap_source()
        _check_dependencies()
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream AniSOAP unavailable, end-to-end switch tests not run: {err}")
    return source


@pytest.fixture(scope="module")
def frame_sets(shared_data_path):
    """Real frames (first 3 of ellipsoids.xyz) with AniSOAP's two example
    shapes, and a generated benzene frame (species C and H)."""
    from einsum_workbench.reference.readers import read_frames
    from einsum_workbench.reference.workloads import benzenes

    sets = {}
    for diameters in ((4.0, 4.0, 0.5), (3.0, 3.0, 1.0)):
        frames = read_frames(shared_data_path, index=":3")
        for frame in frames:
            for k, d in enumerate(diameters, start=1):
                frame.arrays[f"c_diameter[{k}]"] = np.full(len(frame), d)
        sets["ellipsoids_" + "_".join(f"{d:g}" for d in diameters)] = frames
    sets["benzenes"] = benzenes(1, seed=11, n_species=2)
    return sets


@pytest.fixture(scope="module")
def end_to_end(hook_installed, upstream_source, frame_sets, tmp_path_factory):
    """Run the script unpatched and under every available backend (two at a time)."""
    work = tmp_path_factory.mktemp("anisoap_switch")
    (work / "anisoap_rust_lib.py").write_text(PYTHON_MOMENTS_STANDIN)
    (work / "script.py").write_text(SUBPROCESS_SCRIPT)
    with open(work / "inputs.pkl", "wb") as f:
        pickle.dump((frame_sets, CALCULATORS), f)
    pythonpath = os.pathsep.join([str(upstream_source), str(work)])
    # JIT-heavy backends first: two workers then finish together
    slow_first = ("torch_compiled", "numba_fused")
    backends = [None] + sorted((v.name for v in available_variants()), key=lambda n: n not in slow_first)

    def run(backend):
        output = work / f"out_{backend or 'upstream'}.pkl"
        env = _env(ANISOAP_BACKEND=backend, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        start = time.perf_counter()
        result = _run(work / "script.py", env, work, work / "inputs.pkl", output, timeout=600)
        if result.returncode != 0:
            return backend, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
        with open(output, "rb") as f:
            report = pickle.load(f)
        report["wall_seconds"] = time.perf_counter() - start
        return backend, report

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, backends))


def test_end_to_end_unpatched_runs_upstream(end_to_end):
    report = end_to_end[None]
    assert isinstance(report, dict), report
    assert report["backend"] is None and report["neighbour_sum"] is None
    assert report["heavy_at_start"] == []


@pytest.mark.parametrize("backend", [v.name for v in VARIANTS])
def test_end_to_end_backend_matches_upstream(end_to_end, backend):
    if backend not in end_to_end:
        pytest.skip(f"{backend} unavailable here ({next(v for v in VARIANTS if v.name == backend).unavailable_reason()})")
    report, upstream = end_to_end[backend], end_to_end[None]
    assert isinstance(report, dict), f"ANISOAP_BACKEND={backend} failed: {report}"
    assert isinstance(upstream, dict), f"unpatched upstream failed: {upstream}"
    assert report["backend"] == backend and report["neighbour_sum"] == backend, "the hook did not patch AniSOAP"
    assert report["heavy_at_start"] == []
    assert report["results"].keys() == upstream["results"].keys()
    for where, expected in upstream["results"].items():
        actual = report["results"][where]
        if where[-1] == "power":
            scale = float(np.abs(expected).max())
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=str(where))
        else:
            _assert_tensor_close(actual, expected, f"{backend} {where}")


def test_end_to_end_timings(end_to_end, record_property):
    """Not a benchmark: the seconds each subprocess spent in AniSOAP, for the log."""
    seconds = {b or "upstream": (round(r["seconds"], 2), round(r["wall_seconds"], 2))
               for b, r in end_to_end.items() if isinstance(r, dict)}
    print("seconds per backend (in AniSOAP, whole subprocess):", seconds)
    record_property("seconds_per_backend", seconds)
    assert seconds


def test_hypers_of_a_radial_basis_built_once_per_set():
    """hypers_from_radial_basis reuses the ExpansionHypers of an equal basis and builds a new one otherwise."""
    from types import SimpleNamespace

    from einsum_workbench.anisoap_switch.expansion import hypers_from_radial_basis

    def basis(cutoff, counts=(4, 4, 3, 3)):
        return SimpleNamespace(radial_basis="gto", cutoff_radius=cutoff, radial_gaussian_width=1.5, rcond=1e-8,
                               tol=1e-8, get_num_radial_functions=lambda: list(counts))

    first = hypers_from_radial_basis(basis(7.0), 3)
    assert hypers_from_radial_basis(basis(7.0), 3) is first
    other = hypers_from_radial_basis(basis(6.0), 3)
    assert other is not first and other.cutoff == 6.0 and first.cutoff == 7.0
    assert list(first.num_radial) == [4, 4, 3, 3]
    assert hypers_from_radial_basis(basis(7.0), 2).lmax == 2
    with pytest.raises(ValueError, match="fewer than lmax"):
        hypers_from_radial_basis(basis(7.0), 5)

"""Both an editable install and a built wheel import under ``einsum_workbench``,
importing the workbench loads neither torch, cupy nor numba, the wheel ships
the bench's machinery but not its suites, and a wheel install run from an
empty directory writes every output under that directory, nothing under
site-packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

REPO = Path(__file__).resolve().parents[2]
# the wheel's top-level folders and the repository folders they come from (pyproject.toml's package-dir)
PACKAGE_DIRS = {package.replace(".", "/"): folder for package, folder in
                tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()}
IMPORT_CHECK = (
    "import sys, einsum_workbench.kernels as k, einsum_workbench.reference as r, einsum_workbench.bench;"
    "import einsum_workbench.anisoap_switch;"
    "import einsum_workbench.kernels.registry as reg;"
    "import einsum_workbench.bench.plugin, einsum_workbench.cli;"
    "import einsum_workbench as wb; assert wb.load_variant is reg.load_variant;"
    "names = k.variant_names(); assert 'reference' in names and 'numpy_einsum' in names, names;"
    "heavy = [m for m in ('torch', 'cupy', 'numba') if m in sys.modules];"
    "assert not heavy, heavy;"
    "print(k.__file__)"
)


def _run(python, code, cwd):
    return subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_editable_install_imports_without_heavy_modules(tmp_path):
    result = _run(sys.executable, IMPORT_CHECK, tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve().is_relative_to(REPO), result.stdout


def test_top_level_reexports_are_lazy():
    code = ("import sys, einsum_workbench as wb; assert 'einsum_workbench.kernels.registry' not in sys.modules;"
            "assert 'load_variant' in dir(wb) and 'load_variant' in wb.__all__;"
            "from einsum_workbench.kernels import registry;"
            "assert wb.get_variant is registry.get_variant and wb.VARIANTS is registry.VARIANTS;"
            "assert 'numpy' not in sys.modules;"
            "work = wb.default_workload(1); assert work.n_pairs > 0;"
            "import pytest\n"
            "with pytest.raises(AttributeError, match='no_such_name'): wb.no_such_name")
    result = _run(sys.executable, code, REPO)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------- the wheel


#: what a clean checkout does not hold (build outputs, environments, saved runs)
NOT_SOURCE = ("build", "dist", ".venv", ".git", "*.egg-info", "__pycache__", ".benchmarks", ".hypothesis",
              ".pytest_cache", "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built once for the module from a copy without
    build outputs (setuptools reuses a stale ``build/lib``)."""
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path_factory.mktemp("wheels")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (built,) = wheels.glob("einsum_workbench-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> dict:
    """A fresh virtual environment with the wheel installed.

    Its dependencies are this environment's packages, reached through a
    ``.pth`` path line (site does not run the ``.pth`` files of that folder, so
    this checkout's editable finder stays out). Returns its python, bin folder
    and site-packages.
    """
    env_dir = tmp_path_factory.mktemp("wheel-venv") / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    # kernprof beside the interpreter (the recipes look there first), running under the wheel's interpreter
    kernprof = env_dir / "bin" / "kernprof"
    kernprof.write_text(f"#!{python}\nimport sys\nfrom kernprof import main\nsys.exit(main())\n")
    kernprof.chmod(0o755)
    return {"python": str(python), "bin": env_dir / "bin", "site": site, "dir": env_dir}


@pytest.mark.slow
def test_built_wheel_installs_and_imports(wheel, wheel_env, tmp_path):
    # run outside the repo, with any editable finder out of the way
    code = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)];" + IMPORT_CHECK
    result = _run(wheel_env["python"], code, tmp_path)
    assert result.returncode == 0, result.stderr
    installed = Path(result.stdout.strip()).resolve()
    assert wheel_env["dir"] in installed.parents, f"imported from {installed}, not from the wheel in {wheel_env['dir']}"
    assert shipped_files(wheel) >= source_files(), f"missing from the wheel: {sorted(source_files() - shipped_files(wheel))}"


@pytest.mark.slow
def test_wheel_ships_the_plugin_not_the_suites(wheel):
    names = shipped_files(wheel)
    assert "einsum_workbench/bench/plugin.py" in names and "einsum_workbench/bench/options.py" in names
    suites = sorted(n for n in names if Path(n).name.startswith("test_") or Path(n).name == "conftest.py")
    assert not suites, f"test files shipped in the wheel: {suites}"
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert "einsum-workbench = einsum_workbench.cli:console_main" in entry_points, entry_points


def _site_files(site: Path) -> set[str]:
    """Files under site-packages, bytecode and Numba caches (``__pycache__``) left out."""
    return {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_install_writes_outputs_under_the_working_directory(wheel_env, tmp_path):
    """From an empty directory: the console script's run, report and profile, and
    ``pytest <checkout>/bench``, write there and nothing under site-packages."""
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PATH": f"{wheel_env['bin']}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    before = _site_files(wheel_env["site"])
    script = str(wheel_env["bin"] / "einsum-workbench")

    def run(*args, timeout=600):
        proc = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    where = run(wheel_env["python"], "-c", "import einsum_workbench.bench.plugin as p; print(p.__file__)")
    assert Path(where.stdout.strip()).resolve().is_relative_to(wheel_env["dir"].resolve()), where.stdout
    run(script, "run", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--repeat", "3")
    (saved,) = (work / ".benchmarks" / "cli").glob("run-*.json")
    assert {r["variant"] for r in json.loads(saved.read_text())["results"]} == {"reference", "numpy_einsum"}
    run(script, "report")
    assert (work / ".benchmarks" / "report" / "ranking.md").is_file()
    run(script, "profile", "lines", "--variant", "reference", "--lmax", "2")
    assert (work / "profiles" / "out" / "reference-f1-l2.lines.txt").is_file()
    assert (work / "profiles" / "out" / "reference-f1-l2.lprof").is_file()
    bench = run(wheel_env["python"], "-m", "pytest", str(REPO / "bench"), "-k", "ranking", "-p", "no:warnings",
                "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--budget", "0.1")
    assert "einsum-workbench ranking" in bench.stdout and "verified=True" in bench.stdout, bench.stdout
    assert list((work / ".benchmarks").glob("*/0001_*.json")), sorted(map(str, work.rglob("*")))
    added = _site_files(wheel_env["site"]) - before
    assert not added, f"written under site-packages: {sorted(added)}"


def source_files() -> set[str]:
    """Every module and CUDA source of the installed folders, as wheel paths."""
    out = set()
    for package, folder in PACKAGE_DIRS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".cu", ".cuh", ".cpp"} and "__pycache__" not in path.parts:
                out.add(f"{package}/{path.relative_to(REPO / folder).as_posix()}")
    return out


def shipped_files(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())

"""Both an editable install and a built wheel import under ``einsum_workbench``,
and importing the workbench loads neither torch, cupy nor numba."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the wheel's top-level folders and the repository folders they come from (pyproject.toml)
PACKAGE_DIRS = {
    "einsum_workbench": "einsum_workbench",
    "einsum_workbench/reference": "reference",
    "einsum_workbench/kernels": "kernels",
    "einsum_workbench/bench": "bench",
    "einsum_workbench/profiles": "profiles",
}
IMPORT_CHECK = (
    "import sys, einsum_workbench.kernels as k, einsum_workbench.reference as r, einsum_workbench.bench;"
    "import einsum_workbench.kernels.anisoap_adapter;"
    "import einsum_workbench.kernels.registry as reg;"
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


@pytest.mark.slow
def test_built_wheel_installs_and_imports(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("einsum_workbench-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    # run outside the repo, with the editable finder of the outer environment out of the way
    code = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)];" + IMPORT_CHECK
    result = _run(python, code, tmp_path)
    assert result.returncode == 0, result.stderr
    installed = Path(result.stdout.strip()).resolve()
    assert env_dir in installed.parents, f"imported from {installed}, not from the wheel in {env_dir}"
    assert shipped_files(wheel) >= source_files(), f"missing from the wheel: {sorted(source_files() - shipped_files(wheel))}"


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

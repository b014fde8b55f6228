"""One place for cache paths (``einsum_workbench.paths``), the variant contracts
stated once (``kernels.contract``) and the host build's command line
(``kernels.cupy.host_build``)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from einsum_workbench import paths


@pytest.fixture
def clean_env(monkeypatch):
    for name in (paths.CACHE_ENV, paths.NUMBA_CACHE_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cache_root_defaults_to_the_platform_user_cache(clean_env):
    import platformdirs

    assert paths.cache_dir() == Path(platformdirs.user_cache_dir("einsum_workbench", appauthor=False))


def test_every_cache_lives_under_the_overridden_root(clean_env, tmp_path):
    clean_env.setenv(paths.CACHE_ENV, str(tmp_path / "root"))
    assert paths.cache_dir() == tmp_path / "root"
    assert paths.upstream_cache_dir() == tmp_path / "root" / "upstream"
    assert paths.numba_cache_dir() == tmp_path / "root" / "numba"
    assert paths.cuda_host_cache_dir() == tmp_path / "root" / "cuda_host"
    assert not (tmp_path / "root").exists(), "nothing is created unless asked"
    assert paths.cuda_host_cache_dir(create=True).is_dir()

    from einsum_workbench.reference.upstream import default_cache_dir

    assert default_cache_dir() == paths.upstream_cache_dir()


def test_numba_cache_keeps_its_own_override(clean_env, tmp_path):
    clean_env.setenv(paths.CACHE_ENV, str(tmp_path / "root"))
    clean_env.setenv(paths.NUMBA_CACHE_ENV, str(tmp_path / "numba_here"))
    assert paths.numba_cache_dir() == tmp_path / "numba_here"
    clean_env.setenv(paths.NUMBA_CACHE_ENV, "")  # empty means unset
    assert paths.numba_cache_dir() == tmp_path / "root" / "numba"


def test_host_build_caches_under_the_root(clean_env, tmp_path):
    from einsum_workbench.kernels.cupy import host_build

    if host_build.host_compiler() is None:
        pytest.skip("no C++ compiler: the host build did not run")
    clean_env.setenv(paths.CACHE_ENV, str(tmp_path))
    source = 'extern "C" int wb_answer() { return 42; }\n'
    library = host_build.compile_host_library(source, "a test library")
    assert library.parent == tmp_path / "cuda_host" and library.is_file()
    assert host_build.compile_host_library(source, "a test library") == library  # cache hit


def test_write_sources_command_line(tmp_path):
    from einsum_workbench.kernels.cupy.compile_check import representative_hypers

    result = subprocess.run(
        [sys.executable, "-m", "einsum_workbench.kernels.cupy.compile_check", "write-sources", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = {Path(line).name for line in result.stdout.split()}
    prefixes = ("", "density_", "gradients_", "backward_")
    expected = {f"{prefix}{name}{suffix}" for prefix in prefixes for name in representative_hypers()
                for suffix in (".cu", "_host.cpp")}
    assert written == expected == {p.name for p in tmp_path.iterdir()}
    usage = subprocess.run([sys.executable, "-m", "einsum_workbench.kernels.cupy.compile_check"],
                           capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and "write-sources" in usage.stderr


def _registered_functions(problem):
    from einsum_workbench.kernels import registry

    variants = {"pairs": registry.VARIANTS, "density": registry.DENSITY_VARIANTS,
                "gradients": registry.GRADIENT_VARIANTS, "backward": registry.BACKWARD_VARIANTS}[problem]
    seen = {}
    for variant in variants:
        if any(importlib.util.find_spec(m) is None for m in variant.requires):
            continue
        module = importlib.import_module(f"einsum_workbench.{variant.module}")
        seen[f"{variant.module}.{variant.function}"] = getattr(module, variant.function)
    return seen


@pytest.mark.parametrize("problem", ["pairs", "density", "gradients", "backward"])
def test_registered_functions_have_the_contract_signature(problem):
    """Every registered function takes the contract's parameters (kernels.contract)."""
    from einsum_workbench.kernels import contract

    protocol = {"pairs": contract.PairExpansion, "density": contract.CentreDensity,
                "gradients": contract.PairExpansionGradients,
                "backward": contract.CentreDensityBackward}[problem]
    required = list(inspect.signature(protocol.__call__).parameters)[1:]
    positional = [p for p in required if inspect.signature(protocol.__call__).parameters[p].kind
                  is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = [p for p in required if p not in positional and p != "options"]
    functions = _registered_functions(problem)
    assert functions
    for name, function in functions.items():
        assert isinstance(function, protocol), name
        parameters = inspect.signature(function).parameters
        assert list(parameters)[: len(positional)] == positional, (name, list(parameters))
        for keyword in keywords:
            assert keyword in parameters and parameters[keyword].default is not inspect.Parameter.empty, \
                (name, keyword)

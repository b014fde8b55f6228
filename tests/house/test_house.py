"""One clear house: facts about a variant live on its registry entry, the options
are defined once, and a new variant is one module plus one line in the
registry.

The toy-variant test copies ``kernels/`` beside a package that otherwise
points at this checkout, adds one module and one line to ``registry.py``, and
shows that the toy then joins the equivalence suites, the bench (``pytest
bench`` and ``einsum-workbench list``) and the profiles, with nothing else
edited.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from einsum_workbench.bench import options
from einsum_workbench.kernels.registry import DENSITY_VARIANTS, DEVICES, VARIANTS, get_variant

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- facts on the entries


def test_every_entry_states_its_facts():
    for table, problem in ((VARIANTS, "pairs"), (DENSITY_VARIANTS, "density")):
        for v in table:
            assert v.problem == problem, v
            assert v.device in DEVICES, v
            if "device" in v.options:  # what the function is told agrees with the fact
                assert v.options["device"] == v.device, v
            if v.device != "cpu":
                assert v.gpu_probe is not None, f"{v.name} runs on {v.device} but has no probe saying when it can"


def test_facts_replace_the_scattered_lists():
    """The lists the tools used to keep (profiles' NATIVE_VARIANTS, the GPU
    validation's GPU_VARIANTS, the line targets) come out of the registry the same."""
    from einsum_workbench.bench import gpu_validate
    from einsum_workbench.profiles import recipes

    assert {v.name for v in VARIANTS if v.native} == {
        "numba_fused", "torch_einsum", "torch_compiled", "opt_einsum_torch", "torch_cuda"}
    assert set(gpu_validate.GPU_VARIANTS) == {"cupy_batched", "torch_cuda"}
    assert gpu_validate.DENSITY_GPU_VARIANTS == ("cupy_batched",)
    assert recipes.line_target("reference") == "einsum_workbench.reference.expansion.pairwise_ellip_expansion"
    assert recipes.line_target("numpy_einsum") == "einsum_workbench.kernels.numpy.pairs"
    for v in VARIANTS:
        assert recipes.native_default(v.name) is v.native
        if v.line_target:
            module = v.line_target if v.line_target == v.module else v.line_target.rpartition(".")[0]
            assert module == v.module, f"{v.name}: line target {v.line_target} is outside its module {v.module}"


def test_a_bad_fact_is_refused():
    from einsum_workbench.kernels.registry import Variant

    with pytest.raises(ValueError, match="device"):
        Variant("x", "kernels.x", device="tpu")
    with pytest.raises(ValueError, match="problem"):
        Variant("x", "kernels.x", problem="forces")


def test_measurement_synchronises_the_entry_device():
    from einsum_workbench.bench import measure

    assert measure.synchronizer(get_variant("numpy_einsum").device)() is None  # the host: nothing to wait for
    sync = measure.synchronizer(get_variant("torch_cuda").device)
    assert callable(sync)


# ----------------------------------------------------------------- options defined once


def test_workload_names_match_the_generators():
    from einsum_workbench.bench import inputs
    from einsum_workbench.reference import workloads

    assert set(options.WORKLOAD_NAMES) == set(workloads.WORKLOADS)
    assert inputs.DEFAULT_XYZ_FRAMES == options.DEFAULT_XYZ_FRAMES
    assert inputs.parse_semiaxes is options.parse_semiaxes


def _parse(*args, frames_default=None):
    parser = options.ArgumentParser(prog="t")
    options.add_workload_options(parser, frames_default=frames_default)
    options.add_threads_option(parser)
    options.add_measure_options(parser, max_rounds_default=30)
    return parser.parse_args(list(args))


def test_options_defaults_and_values():
    ns = _parse()
    assert (ns.workload, ns.frames, ns.lmax, ns.xyz, ns.semiaxes, ns.xyz_frames) == ("benzenes", None, 6, None, None, None)
    assert (ns.threads, ns.dtype, ns.budget, ns.max_rounds) == (1, "float64", 3.0, 30)
    assert _parse(frames_default=1).frames == 1
    ns = _parse("--frames", "2", "--lmax", "0", "--bench-dtype", "float32", "--budget", "0.5", "--threads", "1")
    assert (ns.frames, ns.lmax, ns.dtype, ns.budget) == (2, 0, "float32", 0.5)


@pytest.mark.parametrize("args, words", [
    (["--frames", "0"], ["--frames", "'0'"]),
    (["--frames", "two"], ["--frames", "'two'"]),
    (["--lmax", "-1"], ["--lmax", "'-1'"]),
    (["--threads", "0"], ["--threads", "'0'"]),
    (["--budget", "inf"], ["--budget", "'inf'"]),
    (["--budget", "nan"], ["--budget", "'nan'"]),
    (["--budget", "-1"], ["--budget", "'-1'"]),
    (["--xyz", "/nonexistent"], ["--xyz", "'/nonexistent'"]),
    (["--semiaxes", "4,4"], ["--semiaxes", "'4,4'"]),
    (["--workload", "water"], ["--workload", "'water'"]),
    (["--max-rounds", "0"], ["--max-rounds", "'0'"]),
])
def test_bad_option_values_are_one_line_usage_errors(args, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_workload_from_names_a_file_that_is_not_extxyz():
    from einsum_workbench.bench import inputs

    ns = _parse("--xyz", str(REPO / "README.md"), "--frames", "1")
    with pytest.raises(options.OptionError, match="--xyz .*README.md"):
        inputs.workload_from(ns)


def test_workload_from_builds_the_options_workload():
    from einsum_workbench.bench import inputs

    inp = inputs.workload_from(argparse.Namespace(workload="benzenes", frames=1, lmax=2, xyz=None, pairs=100))
    assert inp.n_pairs == 100 and inp.hypers.lmax == 2


# ----------------------------------------------------------------- a toy variant

TOY_MODULE = '''\
"""A toy variant (tests/house/test_house.py): numpy_einsum, five pairs at a time."""

import numpy as np

from einsum_workbench.kernels.numpy import pairs as numpy_einsum


def expand(r_ij, rotations, semiaxes, hypers, *, dtype=None):
    """The pair expansion (DESIGN.md section 4), five pairs per numpy_einsum call."""
    n = len(r_ij)
    parts = [numpy_einsum.expand(r_ij[s:s + 5], rotations[s:s + 5], semiaxes[s:s + 5], hypers, dtype=dtype)
             for s in range(0, n, 5)] or [numpy_einsum.expand(r_ij, rotations, semiaxes, hypers, dtype=dtype)]
    return [np.concatenate(blocks) for blocks in zip(*parts)]
'''
TOY_LINE = ('    Variant("toy_einsum", "kernels.numpy.toy", line_target="kernels.numpy.toy", '
            'description="toy: numpy_einsum five pairs at a time"),\n')


@pytest.fixture(scope="module")
def toy_checkout(tmp_path_factory):
    """``einsum_workbench`` with a toy variant: this checkout's folders, except a
    copy of ``kernels/`` with one new module and one new line in ``registry.py``.
    Returns (environment for subprocesses, package root)."""
    root = tmp_path_factory.mktemp("toy") / "src"
    package = root / "einsum_workbench"
    shutil.copytree(REPO / "einsum_workbench", package, ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in (("reference", "reference"), ("bench", "bench/lib"), ("profiles", "profiles"),
                         ("pipeline", "pipeline"), ("featurize", "featurize"),
                         ("anisoap_switch", "anisoap_switch")):
        (package / name).symlink_to(REPO / folder, target_is_directory=True)
    kernels = package / "kernels"
    shutil.copytree(REPO / "kernels", kernels, ignore=shutil.ignore_patterns("__pycache__"))
    # the whole change: one module ...
    (kernels / "numpy" / "toy.py").write_text(TOY_MODULE)
    # ... and one line in the registry
    registry = (kernels / "registry.py").read_text().splitlines(keepends=True)
    at = registry.index("VARIANTS: tuple[Variant, ...] = (\n") + 1
    (kernels / "registry.py").write_text("".join(registry[:at] + [TOY_LINE] + registry[at:]))
    env = {**os.environ, "PYTHONPATH": str(root)}
    return env, package


def _run(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_toy_variant_is_one_module_and_one_registry_line(toy_checkout):
    _, package = toy_checkout
    diff = [line for line in difflib.unified_diff((REPO / "kernels" / "registry.py").read_text().splitlines(),
                                                  (package / "kernels" / "registry.py").read_text().splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == ["+" + TOY_LINE.rstrip("\n")], diff

    def files(folder):
        return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(package / "kernels") - files(REPO / "kernels") == {Path("numpy/toy.py")}


def test_toy_variant_joins_the_equivalence_suites(toy_checkout, tmp_path):
    env, package = toy_checkout
    where = _run(["-c", "import einsum_workbench.kernels.registry as r; print(r.__file__, r.variant_names())"],
                 env, tmp_path)
    assert where.returncode == 0 and str(package) in where.stdout and "toy_einsum" in where.stdout, where
    proc = _run(["-m", "pytest", str(REPO / "tests" / "kernels" / "test_pairs_equivalence.py"),
                 str(REPO / "tests" / "kernels" / "test_density_equivalence.py"), "-k", "toy_einsum", "-q", "-p", "no:warnings"],
                env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and "failed" not in summary and "error" not in summary, summary
    # every case of the pair suite and the centre density through its expansion
    assert int(passed[1]) >= 40 and "deselected" in summary, summary


def test_toy_variant_joins_the_bench(toy_checkout, tmp_path):
    env, _ = toy_checkout
    listed = _run(["-m", "einsum_workbench.bench", "list"], env, tmp_path)
    assert listed.returncode == 0 and "toy_einsum" in listed.stdout and "line profile: kernels.numpy.toy" in listed.stdout
    proc = _run(["-m", "pytest", str(REPO / "bench" / "test_ranking.py"), "-p", "no:warnings",
                 "--variant", "toy_einsum", "--frames", "1", "--lmax", "2", "--budget", "0.1"], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| toy_einsum |" in proc.stdout and "verified=True" in proc.stdout, proc.stdout


def test_toy_variant_joins_the_profiles(toy_checkout, tmp_path):
    env, package = toy_checkout
    proc = _run(["-m", "einsum_workbench.profiles", "lines", "--variant", "toy_einsum", "--lmax", "2",
                 "--out", str(tmp_path / "out")], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "out" / "toy_einsum-f1-l2.lines.txt").read_text()
    assert "Function: expand" in report and "toy.py" in report, report
    code = textwrap.dedent("""
        from einsum_workbench.profiles import recipes
        cmd, _ = recipes.flamegraph_command("toy_einsum")
        print("--native" in cmd)
    """)
    native = _run(["-c", code], env, tmp_path)
    assert native.returncode == 0 and native.stdout.strip() == "False", native

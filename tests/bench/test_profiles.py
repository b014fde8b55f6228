"""The profiling recipes of profiles/README.md work as written: py-spy's
flamegraph of the reference names its hot functions, the collapsed stacks
break down into callees, and line_profiler's report names the einsum line.
Tiny workload: one frame of benzenes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from einsum_workbench.profiles import recipes

REPO = Path(__file__).resolve().parents[2]
README = REPO / "profiles" / "README.md"
PY_SPY = recipes.tool_path("py-spy")
KERNPROF = recipes.tool_path("kernprof")


def run_recipe(cmd, stdout_path=None):
    """Run a recipe; skip (saying exactly why) only when py-spy may not attach to a process."""
    try:
        return recipes.run(cmd, stdout_path=stdout_path, timeout=300)
    except FileNotFoundError as err:
        pytest.fail(f"{cmd[0]} is not installed: {err}")
    except subprocess.CalledProcessError as err:
        if "py-spy" in cmd[0] and re.search(r"ermission denied|ptrace|Operation not permitted|root", err.stderr or ""):
            pytest.skip(f"py-spy cannot attach to a process here (needs root or CAP_SYS_PTRACE): {err.stderr.strip()}")
        raise AssertionError(f"{' '.join(cmd)} failed ({err.returncode}):\n{err.stderr}") from None


def test_py_spy_flamegraph_names_the_reference_hot_functions(tmp_path):
    cmd, svg = recipes.flamegraph_command("reference", python=sys.executable, py_spy=PY_SPY, out_dir=tmp_path)
    run_recipe(cmd)
    text = Path(svg).read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "pairwise_ellip_expansion (" in text  # the reference loop
    assert "einsum (" in text and "gaussian_parameters (" in text  # its two hottest callees


def test_py_spy_collapsed_stacks_break_down_into_callees(tmp_path):
    cmd, collapsed = recipes.collapsed_command("reference", python=sys.executable, py_spy=PY_SPY, out_dir=tmp_path)
    run_recipe(cmd)
    result = recipes.breakdown(collapsed)
    shares = {name: pct for name, _, pct in result["parts"]}
    assert sum(shares.values()) == pytest.approx(100.0)
    assert shares.get("einsum", 0) > 5, shares  # one einsum per pair and l: a large share by construction
    assert "compute_moments" in shares and "gaussian_parameters" in shares, shares
    assert "| einsum |" in recipes.breakdown_text(result)


def _line_rows(report: str):
    """(hits, line text) of every line that ran, from line_profiler's report."""
    rows = []
    for line in report.splitlines():
        m = re.match(r"^\s*\d+\s+(\d+)\s+[\d.e+-]+\s+[\d.e+-]+\s+[\d.e+-]+\s+(.*)$", line)
        if m:
            rows.append((int(m[1]), m[2]))
    return rows


def test_line_profiler_names_the_reference_einsum_line(tmp_path):
    cmd, lprof = recipes.line_profile_command("reference", kernprof=KERNPROF, out_dir=tmp_path)
    report_path = tmp_path / "reference.lines.txt"
    run_recipe(cmd, stdout_path=report_path)
    assert Path(lprof).exists()
    report = report_path.read_text()
    assert "pairwise_ellip_expansion" in report
    einsum_rows = [(hits, text) for hits, text in _line_rows(report) if 'np.einsum("mnpqr,pqr->mn"' in text]
    assert einsum_rows and einsum_rows[0][0] > 0, report


def test_line_profiler_covers_the_numpy_variant(tmp_path):
    cmd, _ = recipes.line_profile_command("numpy_einsum", kernprof=KERNPROF, out_dir=tmp_path)
    report_path = tmp_path / "numpy_einsum.lines.txt"
    run_recipe(cmd, stdout_path=report_path)
    report = report_path.read_text()
    assert "Function: expand" in report
    ran = [text for hits, text in _line_rows(report) if hits > 0]
    # the contraction per l: an einsum or the BLAS product it is written as
    assert any("einsum(" in text or " @ " in text for text in ran), report


def test_line_profiler_refuses_other_variants():
    with pytest.raises(KeyError, match="torch_einsum"):
        recipes.line_profile_command("torch_einsum")


def test_native_is_chosen_for_compiled_variants():
    assert "--native" in recipes.flamegraph_command("numba_fused")[0]
    assert "--native" not in recipes.flamegraph_command("reference")[0]
    assert "--native" not in recipes.flamegraph_command("numba_fused", native=False)[0]


@pytest.mark.parametrize("build, variant, options", [
    (recipes.flamegraph_command, "reference", {}),
    (recipes.collapsed_command, "reference", {"frames": 16}),
    (recipes.flamegraph_command, "numba_fused", {}),
    (recipes.line_profile_command, "reference", {}),
    (recipes.line_profile_command, "numpy_einsum", {}),
])
def test_readme_gives_the_recipes_verbatim(build, variant, options):
    tools = ({"kernprof": ".venv/bin/kernprof"} if build is recipes.line_profile_command
             else {"python": ".venv/bin/python", "py_spy": ".venv/bin/py-spy"})
    cmd, out = build(variant, **tools, **options)
    line = " ".join(cmd)
    assert line in README.read_text(), f"profiles/README.md lacks the recipe:\n{line}"


# ----------------------------------------------------------------- command line: errors and outputs


def profiles_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "einsum_workbench.profiles", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_one_line_error(proc, *words):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_breakdown_of_a_missing_file_is_a_usage_error():
    assert_one_line_error(profiles_cli("breakdown", "/nonexistent/stacks.txt"), "/nonexistent/stacks.txt")


def test_breakdown_of_a_file_that_is_not_collapsed_stacks_is_a_usage_error():
    assert_one_line_error(profiles_cli("breakdown", str(README)), "README.md", "collapsed stack")


@pytest.mark.parametrize("command", ["flame", "lines"])
@pytest.mark.parametrize("args, words", [
    (["--frames", "0"], ["--frames", "'0'"]),
    (["--lmax", "-1"], ["--lmax", "'-1'"]),
    (["--repeat", "0"], ["--repeat", "'0'"]),
    (["--xyz", "/nonexistent/frames.xyz"], ["--xyz", "/nonexistent/frames.xyz"]),
])
def test_bad_driver_options_are_usage_errors(command, args, words, tmp_path):
    proc = profiles_cli(command, "--variant", "reference", *args, cwd=tmp_path)
    assert_one_line_error(proc, *words)
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


def test_unknown_variant_is_a_usage_error(tmp_path):
    assert_one_line_error(profiles_cli("flame", "--variant", "no_such_variant", cwd=tmp_path), "no_such_variant")


def test_driver_bad_values_are_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "einsum_workbench.profiles.run", "--variant", "reference",
                           "--warmup", "-1"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "--warmup", "'-1'")


def test_recipes_write_under_the_working_directory(tmp_path):
    """``lines`` from another directory writes its report there, not into the package's folder."""
    package_out = Path(recipes.__file__).resolve().parent / "out"
    stem = "reference-f1-l1"
    existed = {p for p in package_out.glob(f"{stem}.*")} if package_out.is_dir() else set()
    proc = profiles_cli("lines", "--variant", "reference", "--lmax", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "profiles" / "out" / f"{stem}.lines.txt").is_file()
    assert (tmp_path / "profiles" / "out" / f"{stem}.lprof").is_file()
    now = {p for p in package_out.glob(f"{stem}.*")} if package_out.is_dir() else set()
    assert now == existed, f"written into the package's folder: {sorted(now - existed)}"

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

REPO = Path(__file__).resolve().parent.parent
README = REPO / "profiles" / "README.md"
PY_SPY = recipes._tool("py-spy")
KERNPROF = recipes._tool("kernprof")


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

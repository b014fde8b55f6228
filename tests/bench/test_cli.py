"""The measuring side: the command-line runner (list, run, report), the
``pytest bench`` ranking with its saved runs and comparison, the --xyz path,
the helpers they share, and bad command lines (each a one-line usage error,
never a traceback; outputs under the current directory). Workloads are tiny
(one frame, low lmax)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from einsum_workbench.bench import inputs, measure, options, report
from einsum_workbench.kernels.registry import availability_table

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "ellipsoids.xyz"
RECORD_KEYS = {
    "variant", "pairs", "time_per_pair_s", "pairs_per_second", "speedup_vs_reference", "first_call_s",
    "latency", "peak_memory", "threads", "pinning", "versions", "cpu_model", "workload", "dtype",
}


def run(args, timeout=600, cwd=REPO, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kwargs)


def bench_cli(*args, **kwargs):
    return run(["-m", "einsum_workbench.bench", *args], **kwargs)


# ----------------------------------------------------------------- helpers


def test_latency_stats_percentiles():
    stats = measure.latency_stats(np.arange(1, 101) * 1e-3)
    assert stats["rounds"] == 100
    assert stats["median_s"] == pytest.approx(50.5e-3)
    assert stats["p95_s"] == pytest.approx(np.percentile(np.arange(1, 101), 95) * 1e-3)
    assert stats["p99_s"] == pytest.approx(99.01e-3)
    assert stats["min_s"] == pytest.approx(1e-3) and stats["max_s"] == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [np.nan]])
def test_latency_stats_rejects_bad_times(bad):
    with pytest.raises(ValueError):
        measure.latency_stats(bad)


def test_choose_rounds_clamps():
    assert measure.choose_rounds(0.1, 3.0, 3, 30) == 30
    assert measure.choose_rounds(2.0, 3.0, 3, 30) == 3
    assert measure.choose_rounds(0.5, 3.0, 3, 30) == 6
    with pytest.raises(ValueError, match="min_rounds"):
        measure.choose_rounds(0.1, 1.0, 5, 2)


@pytest.mark.parametrize("text", ["4,4", "4,4,0", "a,b,c", "4,4,-1", "4,4,nan"])
def test_parse_semiaxes_names_bad_text(text):
    with pytest.raises(ValueError, match=repr(text)):
        options.parse_semiaxes(text)


def test_tiled_input_repeats_pairs_exactly():
    base = inputs.generated_input("benzenes", 1, lmax=2)
    tiled = base.tiled(base.n_pairs * 2 + 5)
    assert tiled.n_pairs == base.n_pairs * 2 + 5
    np.testing.assert_array_equal(tiled.r_ij[base.n_pairs: 2 * base.n_pairs], base.r_ij)
    np.testing.assert_array_equal(tiled.r_ij[-5:], base.r_ij[:5])
    assert base.tiled(10).n_pairs == 10


def test_peak_memory_sees_a_large_allocation():
    peak = measure.measure_peak_memory(lambda: np.ones(8 * 2**20 // 8).sum())  # 8 MiB, freed at once
    assert peak["host_peak_bytes"] >= 8 * 2**20 * 0.9, peak


def test_ranked_groups_fill_speedup_from_reference():
    def rec(name, best):
        return {"variant": name, "group": "g", "suite": "ranking", "latency": {"min_s": best}}

    ranked = report.ranked_groups([rec("reference", 1.0), rec("slow", 0.5), rec("fast", 0.01)])
    assert [r["variant"] for r in ranked["g"]] == ["fast", "slow", "reference"]
    assert ranked["g"][0]["speedup_vs_reference"] == pytest.approx(100.0)
    assert any("100x" in line or "100" in line for line in report.ranking_table(ranked["g"]).splitlines())


# ----------------------------------------------------------------- command line


def test_list_shows_every_variant_and_reason():
    proc = bench_cli("list")
    assert proc.returncode == 0, proc.stderr
    for name, status, _ in availability_table():
        assert name in proc.stdout
        assert status in proc.stdout


def test_run_unknown_variant_lists_valid_names():
    proc = bench_cli("run", "--variant", "no_such_variant", "--frames", "1", "--lmax", "2")
    assert proc.returncode == 2
    assert "no_such_variant" in proc.stderr and "numpy_einsum" in proc.stderr


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny `run`: reference and numpy_einsum, 1 frame, lmax 2, 3 calls, 1 thread."""
    out = tmp_path_factory.mktemp("cli") / "run.json"
    proc = bench_cli("run", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--threads", "1",
                     "--repeat", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_run_records_everything_a_result_must_carry(cli_run):
    out, proc = cli_run
    data = json.loads(out.read_text())
    assert data["kind"] == report.RUN_KIND
    by_name = {r["variant"]: r for r in data["results"]}
    assert set(by_name) == {"reference", "numpy_einsum"}
    for r in by_name.values():
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["threads"] == 1 and r["pinning"]["verified"] and len(r["pinning"]["affinity"]) == 1
        assert r["pairs"] > 0 and r["time_per_pair_s"] > 0
        assert r["pairs_per_second"] == pytest.approx(1 / r["time_per_pair_s"])
        assert r["time_per_pair_s"] == pytest.approx(r["latency"]["min_s"] / r["pairs"])
        assert {"median_s", "p95_s", "p99_s"} <= set(r["latency"]) and r["first_call_s"] > 0
        assert r["peak_memory"]["host_peak_bytes"] > 0
        assert r["versions"]["numpy"] == np.__version__ and r["cpu_model"]
    assert by_name["reference"]["latency"]["rounds"] == 3
    speedup = by_name["reference"]["latency"]["min_s"] / by_name["numpy_einsum"]["latency"]["min_s"]
    assert by_name["numpy_einsum"]["speedup_vs_reference"] == pytest.approx(speedup)
    assert "| numpy_einsum |" in proc.stdout and "speedup vs reference" in proc.stdout


def test_report_writes_markdown_and_png(cli_run, tmp_path):
    out, _ = cli_run
    proc = bench_cli("report", str(out), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "ranking.md").read_text()
    assert "| numpy_einsum |" in markdown and "| reference |" in markdown
    png = (tmp_path / "ranking.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_without_runs_says_so(tmp_path):
    proc = bench_cli("report", "--storage", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no saved run" in proc.stderr


def test_report_plots_scaling_from_fixture(tmp_path):
    fixtures = sorted((REPO / "notebooks" / "fixtures").glob("*.json"))
    assert fixtures, "notebooks/fixtures holds no saved run"
    proc = bench_cli("report", *map(str, fixtures), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ranking.png").exists()


# ----------------------------------------------------------------- pytest bench


def pytest_bench(*args):
    return run(["-m", "pytest", "bench", "-p", "no:warnings", *args])


def test_pytest_bench_ranks_saves_and_compares(tmp_path):
    storage = f"file://{tmp_path}"
    common = ["-k", "ranking", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--budget", "0.3",
              "--benchmark-storage", storage]
    first = pytest_bench(*common)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "einsum-workbench ranking" in first.stdout and "| numpy_einsum |" in first.stdout
    assert "goal: numpy_einsum" in first.stdout
    saved = sorted(tmp_path.rglob("*.json"))
    assert len(saved) == 1, "autosave did not write one run"
    records = report.load_records(saved)
    assert {r["variant"] for r in records} == {"reference", "numpy_einsum"}
    assert "goal: numba_fused centre density" not in first.stdout  # numba_fused not selected
    for r in records:
        assert RECORD_KEYS <= set(r) and r["pinning"]["verified"]
    groups = {r["group"] for r in records}
    assert len(groups) == 2  # one workload: the pair ranking and the centre-density ranking
    assert {r["problem"] for r in records} == {"pairs", "density"}

    second = pytest_bench(*common, "--benchmark-compare")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(NOW)" in second.stdout and "(0001_" in second.stdout, second.stdout  # the previous run, by number
    assert len(sorted(tmp_path.rglob("*.json"))) == 2


def test_pytest_bench_on_an_xyz_file_benchmark_disabled():
    if not DATA.exists():
        pytest.skip(f"the real-frames check needs {DATA}, which is absent")
    proc = pytest_bench("-k", "ranking", "--variant", "numpy_einsum", "--xyz", str(DATA), "--frames", "2",
                        "--semiaxes", "4,4,0.5", "--benchmark-disable")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ellipsoids.xyz: 2 frames, semi-axes 4,4,0.5" in proc.stdout
    assert "benchmarking disabled" in proc.stdout and "4 passed" in proc.stdout  # pairs and centre density


def test_plain_pytest_does_not_collect_bench():
    proc = run(["-m", "pytest", "--collect-only", "-q", "-p", "no:warnings"])
    assert "bench/test_ranking.py" not in proc.stdout


# ----------------------------------------------------------------- bad command lines, outputs


def assert_one_line_error(proc, code, *words):
    """Exit status ``code``, no traceback, and stderr one line naming ``words``."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


#: bad values that ``einsum-workbench run`` and ``pytest bench`` refuse alike, and the words their error names
BAD_MEASURING_VALUES = [
    (["--frames", "0"], ["--frames", "'0'"]),
    (["--lmax", "-1"], ["--lmax", "'-1'"]),
    (["--threads", "0"], ["--threads", "'0'"]),
    (["--budget", "inf"], ["--budget", "'inf'"]),
]


@pytest.mark.parametrize("args, words", BAD_MEASURING_VALUES + [
    (["--budget", "nan"], ["--budget", "'nan'"]),
    (["--budget", "-1"], ["--budget", "'-1'"]),
    (["--xyz", "/nonexistent/frames.xyz"], ["--xyz", "/nonexistent/frames.xyz"]),
    (["--xyz", str(REPO / "README.md")], ["--xyz", "README.md", "XYZError"]),
])
def test_run_bad_values_are_one_line_usage_errors(args, words, tmp_path):
    out = tmp_path / "run.json"
    proc = bench_cli("run", "--variant", "numpy_einsum", "--lmax", "2", "--frames", "1", "--out", str(out), *args)
    assert_one_line_error(proc, 2, *words)
    assert not out.exists()


def test_run_out_folder_is_refused_before_measuring(tmp_path):
    proc = bench_cli("run", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, 2, "--out", str(tmp_path), "folder")
    assert proc.stdout == "" and not list(tmp_path.iterdir())


def test_run_out_in_a_missing_folder_is_refused_before_measuring(tmp_path):
    out = tmp_path / "missing" / "run.json"
    proc = bench_cli("run", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--out", str(out))
    assert_one_line_error(proc, 2, "--out", str(out.parent), "does not exist")
    assert proc.stdout == "" and not out.parent.exists()


def test_run_with_only_unavailable_variants_is_an_error(tmp_path):
    unavailable = [name for name, status, _ in availability_table() if status != "available"]
    if not unavailable:
        pytest.skip("every registered variant can run here: no unavailable one to choose")
    out = tmp_path / "run.json"
    proc = bench_cli("run", "--variant", unavailable[0], "--frames", "1", "--lmax", "2", "--out", str(out))
    assert_one_line_error(proc, 2, "--variant", unavailable[0])
    assert not out.exists()


def test_run_and_report_write_under_the_working_directory(tmp_path):
    proc = bench_cli("run", "--variant", "numpy_einsum", "--frames", "1", "--lmax", "2", "--repeat", "3",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (saved,) = (tmp_path / ".benchmarks" / "cli").glob("run-*.json")
    assert f"saved: {saved}" in proc.stdout
    proc = bench_cli("report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".benchmarks" / "report" / "ranking.md").is_file()
    assert report.default_storage() == Path.cwd() / ".benchmarks"


def test_console_script_runs_the_same_commands(tmp_path):
    script = Path(sys.executable).with_name("einsum-workbench")
    if not script.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable} (pip install -e . installs it)")
    proc = subprocess.run([str(script), "list"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "numpy_einsum" in proc.stdout, proc.stderr
    proc = subprocess.run([str(script), "profile", "breakdown", "/nonexistent.txt"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert_one_line_error(proc, 2, "einsum-workbench profile breakdown", "/nonexistent.txt")


@pytest.mark.parametrize("args, words", BAD_MEASURING_VALUES + [
    (["--xyz", "/nonexistent/frames.xyz"], ["--xyz", "'/nonexistent/frames.xyz'"]),
    (["--variant", "no_such_variant"], ["--variant", "no_such_variant", "numpy_einsum"]),
])
def test_pytest_bench_bad_values_are_usage_errors(args, words):
    proc = pytest_bench("-k", "ranking", "--benchmark-disable", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "passed" not in out and "failed" not in out, out
    assert [line for line in out.splitlines() if all(w in line for w in words)], out


def test_pytest_bench_on_a_file_that_is_not_extxyz_stops_once():
    proc = pytest_bench("-k", "ranking", "--benchmark-disable", "--variant", "numpy_einsum",
                        "--xyz", str(REPO / "README.md"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "passed" not in out and "failed" not in out, out
    assert out.count("usage error: cannot build the workload of --xyz") == 1, out


def test_pytest_bench_saves_under_the_working_directory(tmp_path):
    proc = run(["-m", "pytest", str(REPO / "bench" / "test_ranking.py"), "-p", "no:warnings", "--variant",
                "numpy_einsum", "--frames", "1", "--lmax", "2", "--budget", "0.1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / ".benchmarks").glob("*/0001_*.json"))) == 1, sorted(tmp_path.rglob("*"))

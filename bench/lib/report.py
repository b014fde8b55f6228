"""Rankings and plots from measurements, live or saved.

Reads both kinds of saved run:

- pytest-benchmark JSON (``.benchmarks/<machine>/NNNN_*.json``, written by
  ``pytest bench``): each benchmark's ``extra_info`` is one record of
  :meth:`measure.Measurement.as_dict` plus ``suite`` and ``group``;
- the command-line runner's JSON (``{"kind": "einsum-workbench-run",
  "results": [record, ...]}``).

A record is a dict: variant, group (the workload label), suite ("ranking" or
"scaling"), pairs, time_per_pair_s, pairs_per_second, speedup_vs_reference,
first_call_s, latency (median_s, p95_s, p99_s, rounds, ...), peak_memory,
threads, pinning, versions, cpu_model, workload (its description).

NumPy and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

RUN_KIND = "einsum-workbench-run"
MIB = 2**20


# ----------------------------------------------------------------- loading


def load_records(paths) -> list[dict]:
    """Every measurement record in the given JSON files (either kind).

    pytest-benchmark results without a ``variant`` in their ``extra_info``
    (other benchmarks living in bench/) are left out. Each record gains
    ``source`` (the file) and, from pytest-benchmark files, ``datetime``.

    Raises
    ------
    FileNotFoundError naming a missing path; ValueError naming a file that is
    neither kind of saved run.
    """
    records = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no saved run at {str(path)!r}")
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("kind") == RUN_KIND:
            records.extend({**r, "source": str(path)} for r in data["results"])
        elif isinstance(data, dict) and "benchmarks" in data:
            for bench in data["benchmarks"]:
                info = bench.get("extra_info") or {}
                if "variant" not in info:
                    continue
                records.append({
                    **info, "group": bench.get("group") or info.get("group"), "source": str(path),
                    "datetime": data.get("datetime"),
                })
        else:
            raise ValueError(f"{str(path)!r} is neither a pytest-benchmark JSON nor a {RUN_KIND} file")
    return records


#: folders under the storage that hold other JSON than saved runs
NOT_RUNS = frozenset({"report", "study"})


def saved_runs(storage) -> list[Path]:
    """Saved-run JSON files under ``storage`` (a folder, searched recursively), oldest first.

    Skips the ``report/`` and ``study/`` folders (their JSON is not a run).
    """
    storage = Path(storage)
    if not storage.is_dir():
        return []
    files = [p for p in storage.rglob("*.json") if not NOT_RUNS & set(p.relative_to(storage).parts[:-1])]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


# ----------------------------------------------------------------- ranking


def _best(record) -> float | None:
    """The fastest steady-state call [s] (what time per pair and speedups use)."""
    latency = record.get("latency") or {}
    return latency.get("min_s")


def ranked_groups(records) -> dict[str, list[dict]]:
    """Records of the ranking suite per group, fastest first.

    Where a group holds several records of one variant (several saved runs),
    the last one read wins. Speedups missing from a record are filled from the
    group's reference record when it has one.
    """
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r.get("suite", "ranking") != "ranking":
            continue
        groups[r.get("group") or "?"][r["variant"]] = r
    ranked = {}
    for group, by_variant in groups.items():
        rows = list(by_variant.values())
        ref = by_variant.get("reference")
        ref_best = _best(ref) if ref else None
        for r in rows:
            if r.get("speedup_vs_reference") is None and ref_best and _best(r):
                r["speedup_vs_reference"] = ref_best / _best(r)
        rows.sort(key=lambda r: (_best(r) is None, _best(r) or 0.0, r.get("first_call_s") or 0.0))
        ranked[group] = rows
    return ranked


def _fmt(value, scale=1.0, digits=3, suffix="") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    v = value * scale
    if abs(v) >= 100:
        return f"{v:,.0f}{suffix}"
    return f"{v:.{digits}g}{suffix}"


def _threads_cell(r) -> str:
    pinned = r.get("pinning") or {}
    return f"{r.get('threads', '?')} ({'pinned' if pinned.get('verified') else 'NOT verified'})"


HEADER = ("rank", "variant", "time/pair (us)", "pairs/s", "speedup vs reference", "best (ms)", "median (ms)",
          "p95 (ms)", "p99 (ms)", "rounds", "first call (ms)", "peak host mem (MiB)", "threads")


def ranking_table(rows) -> str:
    """One group's ranking as a markdown table (rows already ranked)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for i, r in enumerate(rows, 1):
        lat = r.get("latency") or {}
        mem = (r.get("peak_memory") or {}).get("host_peak_bytes")
        cells = (
            str(i) if lat else "-", r["variant"], _fmt(r.get("time_per_pair_s"), 1e6),
            _fmt(r.get("pairs_per_second")), _fmt(r.get("speedup_vs_reference"), suffix="x"),
            _fmt(lat.get("min_s"), 1e3), _fmt(lat.get("median_s"), 1e3), _fmt(lat.get("p95_s"), 1e3), _fmt(lat.get("p99_s"), 1e3),
            str(lat.get("rounds", "-")), _fmt(r.get("first_call_s"), 1e3), _fmt(mem, 1 / MIB),
            _threads_cell(r),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_text(records, unavailable=None) -> str:
    """Markdown: per group a heading, the ranking table, and the unavailable variants with reasons."""
    parts = []
    for group, rows in ranked_groups(records).items():
        first = rows[0]
        dtype = first.get("dtype", "?")
        cpu = first.get("cpu_model", "?")
        parts.append(f"### {group}\n\n{dtype}, CPU: {cpu}\n")
        parts.append(ranking_table(rows))
        if not any(r.get("latency") for r in rows):
            parts.append("\n(benchmarking disabled: each variant ran once; first call shown, no ranking)")
        parts.append("")
    if unavailable:
        parts.append("Unavailable variants (not measured):\n")
        parts.extend(f"- {name}: {reason}" for name, reason in unavailable.items())
        parts.append("")
    return "\n".join(parts)


#: issue 2's goal: numpy_einsum at least this many times faster than the reference, same run
GOAL = ("numpy_einsum", 20.0)
#: centre density (issue 10): numba_fused at most 0.03 microseconds per neighbour pair
DENSITY_GOAL = ("numba_fused", 0.03e-6)


def goal_lines(records) -> list[str]:
    """One line per ranking group saying whether its goal is met there: the
    pair expansion's speedup (issue 2), the centre density's time per pair."""
    name, target = GOAL
    density_name, density_target = DENSITY_GOAL
    lines = []
    for group, rows in ranked_groups(records).items():
        if any(r.get("problem") == "density" for r in rows):
            row = next((r for r in rows if r["variant"] == density_name), None)
            if row is not None and row.get("time_per_pair_s"):
                t = row["time_per_pair_s"]
                verdict = "met" if t <= density_target else "NOT met"
                lines.append(f"goal: {density_name} centre density <= {density_target * 1e6:g} us per pair on "
                             f"{group!r}, {row.get('threads')} thread(s): {t * 1e6:.4f} us, {verdict}")
            continue
        row = next((r for r in rows if r["variant"] == name), None)
        if row is None or not row.get("speedup_vs_reference"):
            continue
        s = row["speedup_vs_reference"]
        verdict = "met" if s >= target else "NOT met"
        lines.append(f"goal: {name} >= {target:g}x faster than the reference on {group!r}, "
                     f"{row.get('threads')} thread(s): {s:.1f}x, {verdict}")
    lines.extend(gradient_goal_lines(records))
    return lines


#: gradients (issue 14): numba_fused values + gradients at most this many times its values alone, per pair
GRADIENT_COST_GOAL = ("numba_fused", 4.0)
#: gradients (issue 14): Torch autograd at least this many times slower per pair than numba_fused's gradients
GRADIENT_TORCH_GOAL = ("torch_einsum", "numba_fused", 100.0)


def gradient_goal_lines(records) -> list[str]:
    """Issue 14's two ratios, per gradient group, from records of one run.

    A gradient group holds ranking records of problem ``"gradients"``; the
    values-only baseline is the ``numba_fused`` record of problem ``"pairs"``
    whose ``gradient_group`` label names that group (``bench/test_gradient_ranking.py``).
    Ratios are of times per pair (fastest calls), so a variant measured on a
    subset of the pairs compares per pair. Where several records share a key,
    the last one read wins.
    """
    cost_name, cost_target = GRADIENT_COST_GOAL
    torch_name, fast_name, torch_target = GRADIENT_TORCH_GOAL
    gradients, baselines, floors = defaultdict(dict), {}, {}
    for r in records:
        if r.get("suite") == "floor" and r.get("gradient_group") and r.get("time_per_pair_s"):
            floors[r["gradient_group"]] = r
            continue
        if r.get("suite", "ranking") != "ranking" or not r.get("time_per_pair_s"):
            continue
        if r.get("problem") == "gradients":
            gradients[r.get("group") or "?"][r["variant"]] = r
        elif r.get("problem", "pairs") == "pairs" and r.get("gradient_group") and r["variant"] == cost_name:
            baselines[r["gradient_group"]] = r
    lines = []
    for group, rows in gradients.items():
        fast, values = rows.get(cost_name), baselines.get(group)
        if fast is not None and values is not None:
            ratio = fast["time_per_pair_s"] / values["time_per_pair_s"]
            verdict = "met" if ratio <= cost_target else "NOT met"
            lines.append(f"goal: {cost_name} values + gradients <= {cost_target:g}x its values alone, per pair, on "
                         f"{group!r}, {fast.get('threads')} thread(s): {ratio:.2f}x "
                         f"({fast['time_per_pair_s'] * 1e6:.3g} vs {values['time_per_pair_s'] * 1e6:.3g} us), {verdict}")
            floor = floors.get(group)
            if floor is not None:
                lines.append(f"floor: writing the {floor['bytes_per_pair']:,} bytes per pair of values + gradients alone "
                             f"(numpy fill, mapped memory) takes {floor['time_per_pair_s'] * 1e6:.3g} us per pair, "
                             f"{floor['time_per_pair_s'] / values['time_per_pair_s']:.2f}x the values alone")
        slow, fast = rows.get(torch_name), rows.get(fast_name)
        if slow is not None and fast is not None:
            ratio = slow["time_per_pair_s"] / fast["time_per_pair_s"]
            verdict = "met" if ratio >= torch_target else "NOT met"
            lines.append(f"goal: {torch_name} autograd >= {torch_target:g}x the time per pair of {fast_name} "
                         f"gradients on {group!r}, {slow.get('threads')} thread(s): {ratio:.0f}x "
                         f"({slow['time_per_pair_s'] * 1e6:.3g} us on {slow.get('pairs')} pairs vs "
                         f"{fast['time_per_pair_s'] * 1e6:.3g} us on {fast.get('pairs')}), {verdict}")
    return lines


# ----------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")  # files only, unless a notebook already chose its backend
    import matplotlib.pyplot as plt

    return plt


def ranking_figure(records):
    """matplotlib Figure: speedup over the reference per variant, log scale, one panel per group.

    Raises ValueError if no ranking record has a speedup.
    """
    plt = _pyplot()
    groups = {g: [r for r in rows if r.get("speedup_vs_reference")] for g, rows in ranked_groups(records).items()}
    groups = {g: rows for g, rows in groups.items() if rows}
    if not groups:
        raise ValueError("no ranking record with a speedup over the reference: nothing to plot")
    height = 1.2 + 0.45 * sum(len(r) for r in groups.values()) + 0.8 * len(groups)
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, height), squeeze=False)
    for ax, (group, rows) in zip(axes[:, 0], groups.items()):
        rows = rows[::-1]  # fastest on top
        names = [r["variant"] for r in rows]
        speedups = [r["speedup_vs_reference"] for r in rows]
        colours = ["tab:grey" if n == "reference" else "tab:blue" for n in names]
        ax.barh(names, speedups, color=colours)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8)
        for y, (s, r) in enumerate(zip(speedups, rows)):
            per_pair = r.get("time_per_pair_s")
            label = (f"{s:,.0f}x" if s >= 100 else f"{s:.3g}x") + (f"  ({per_pair * 1e6:.3g} us/pair)" if per_pair else "")
            ax.text(s, y, " " + label, va="center", fontsize=8)
        ax.set_xlim(left=min(speedups) * 0.5, right=max(speedups) * 30)  # the reference bar (1x) stays visible
        ax.set_title(f"{group}\n{rows[0].get('threads')} thread(s), {rows[0].get('dtype', '')}", fontsize=9)
        ax.set_xlabel("speedup over the reference (log scale)")
    fig.tight_layout()
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_ranking(records, path) -> Path:
    """Save :func:`ranking_figure` as a PNG at ``path``; raises ValueError as it does."""
    return _save(ranking_figure(records), path)


def scaling_series(records) -> dict:
    """Scaling records as series, per sweep.

    Returns {"pairs": {(variant, lmax, threads): [(pairs, best call s), ...]},
    "lmax": {(variant, pairs, threads): [(lmax, best call s per pair), ...]}},
    each sorted. The pairs and threads sweeps (and records without a sweep,
    e.g. ``run --pairs``) feed "pairs"; the lmax sweep feeds "lmax".
    """
    series = {"pairs": defaultdict(dict), "lmax": defaultdict(dict)}
    for r in records:
        if r.get("suite") != "scaling" or not _best(r):
            continue
        lmax = (r.get("workload") or {}).get("lmax")
        if r.get("sweep") == "lmax":
            series["lmax"][(r["variant"], r["pairs"], r.get("threads"))][lmax] = _best(r) / r["pairs"]
        else:  # the last record read for a point wins
            series["pairs"][(r["variant"], lmax, r.get("threads"))][r["pairs"]] = _best(r)
    return {
        sweep: {k: sorted(v.items()) for k, v in sorted(d.items(), key=lambda kv: tuple(str(x) for x in kv[0]))}
        for sweep, d in series.items()
    }


def _finish_axes(ax, xlabel, ylabel, title):
    """Log y axis, labels, title, and a legend when anything is plotted."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=7)


def scaling_figure(records):
    """matplotlib Figure: log-log call time (fastest) against pairs, one line per
    (variant, lmax, threads), and time per pair against lmax; None when there
    is no scaling record."""
    series = scaling_series(records)
    if not series["pairs"] and not series["lmax"]:
        return None
    plt = _pyplot()
    fig, (ax_pairs, ax_lmax) = plt.subplots(1, 2, figsize=(12, 5))
    for (variant, lmax, threads), points in series["pairs"].items():
        pairs, times = zip(*points)
        ax_pairs.plot(pairs, times, "-o" if len(points) > 1 else "s", label=f"{variant}, lmax {lmax}, {threads} thr")
    ax_pairs.set_xscale("log")
    _finish_axes(ax_pairs, "pairs", "call time, fastest of the rounds (s)", "time against pairs (log-log)")
    for (variant, n, threads), points in series["lmax"].items():
        lmaxes, per_pair = zip(*points)
        ax_lmax.plot(lmaxes, [t * 1e6 for t in per_pair], "-o", label=f"{variant}, {n} pairs, {threads} thr")
    _finish_axes(ax_lmax, "lmax", "time per pair (us)", "time per pair against lmax")
    fig.tight_layout()
    return fig


def plot_scaling(records, path) -> Path | None:
    """Save :func:`scaling_figure` as a PNG at ``path``; None when there is no scaling record."""
    fig = scaling_figure(records)
    return None if fig is None else _save(fig, path)


def write_report(records, out_dir, unavailable=None) -> dict:
    """Write ``ranking.md``, ``ranking.png`` and (with scaling records) ``scaling.png``.

    Returns {"markdown": Path, "ranking_png": Path or None, "scaling_png": Path or None}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "ranking.md"
    markdown.write_text("# Ranking\n\n" + ranking_text(records, unavailable) + "\n")
    try:
        ranking_png = plot_ranking(records, out_dir / "ranking.png")
    except ValueError:
        ranking_png = None
    return {"markdown": markdown, "ranking_png": ranking_png, "scaling_png": plot_scaling(records, out_dir / "scaling.png")}


def save_run(records, path, unavailable=None) -> Path:
    """Write the command-line runner's JSON (``kind`` = RUN_KIND)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"kind": RUN_KIND, "results": list(records), "unavailable": dict(unavailable or {})}, f, indent=1)
    return path


#: where saved runs go, relative to the current directory (pytest-benchmark's default storage)
STORAGE_DIR = ".benchmarks"


def default_storage() -> Path:
    """``.benchmarks`` in the current directory.

    Where ``pytest bench`` autosaves (pytest-benchmark's default
    ``--benchmark-storage``), ``einsum-workbench run`` saves and
    ``einsum-workbench report`` reads, unless told otherwise; never the
    installed package's folder.
    """
    return Path.cwd() / STORAGE_DIR

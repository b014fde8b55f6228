"""The neighbour list (``reference.neighbours.neighbour_pairs``): its paths against each other.

A benchmark, not a timed test: every number comes from one run, the ratios are
between methods measured in that run, and nothing is asserted about speed
(only that every method gives the same pairs as vesin in upstream's order).

Methods, all giving identical output:

- ``auto``: the per-frame choice (brute force or cell list, module docstring
  of ``reference.neighbours``), with the path it took;
- ``cell_list`` / ``brute_force``: one compiled path forced on every frame;
- ``old_split``: the split before the cell list (``small_frame_candidates=
  65536``: brute force up to 65,536 candidates, vesin above);
- ``vesin``: one vesin call per frame then the sort into upstream's order;
  ``vesin_raw`` is the vesin calls alone (not in upstream's order).

Workloads (cutoff 7 A unless said): 10 and 50 small periodic cells
(``reference.workloads.small_cell_frames``: 20 atoms, cells 6-10 A), the
default 16 benzene frames, the first 1,000 frames of AniSOAP's
``ellipsoids.xyz`` (``../shared/data``; skipped when absent) and one periodic
box of 10,000 atoms at 0.1 atoms / A^3.

``test_fused_grouping`` times, on the same workloads, what the density
pipeline needs from the neighbour list: the pairs grouped by segment with the
neighbour's rotation and semi-axes gathered, as ``neighbour_pairs`` then
``pipeline.grouping.group_pairs`` (two steps, the list written and read back)
against ``pipeline.grouping.neighbour_groups`` (one fused compiled search), and
checks that both give the same arrays.

``pytest bench/test_neighbour_list.py -s``: one thread (the bench's pinning).
``pytest bench/test_neighbour_list.py -s -m scaling``: 2 threads over 1 on the
50 small cells and the large box, one run.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

CUTOFF = 7.0
BUDGET_S = 0.5
MAX_ROUNDS = 30
LARGE_BOX_ATOMS = 10_000
LARGE_BOX_DENSITY = 0.1  # atoms per A^3
DEFAULT_XYZ = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ellipsoids.xyz"
ELLIPSOID_FRAMES = 1000


def _geometry(frames):
    from einsum_workbench.reference.frames import frame_geometry

    n_atoms, positions, _, cells, pbc = frame_geometry(frames)
    return positions, n_atoms, cells, pbc


def _large_box(n_atoms=LARGE_BOX_ATOMS, seed=0):
    rng = np.random.default_rng(seed)
    side = (n_atoms / LARGE_BOX_DENSITY) ** (1.0 / 3.0)
    cell = np.diag([side, side, side])
    return rng.uniform(0.0, 1.0, size=(n_atoms, 3)) @ cell, np.array([n_atoms]), cell[None], np.ones((1, 3), bool)


def _workloads():
    from einsum_workbench.reference.workloads import benzenes, small_cell_frames

    out = {
        "small_cells_10": _geometry(small_cell_frames(10, seed=0)),
        "small_cells_50": _geometry(small_cell_frames(50, seed=0)),
        "benzenes_16": _geometry(benzenes(16, seed=0)),
    }
    if DEFAULT_XYZ.is_file():
        from einsum_workbench.reference.readers import read_frames

        out["ellipsoids_1000"] = _geometry(read_frames(DEFAULT_XYZ, index=f":{ELLIPSOID_FRAMES}"))
    else:
        print(f"\n  NOTE: {DEFAULT_XYZ} not found: ellipsoids not measured")
    out[f"box_{LARGE_BOX_ATOMS}"] = _large_box()
    return out


def _call(method, args):
    from einsum_workbench.reference.neighbours import neighbour_pairs

    if method == "old_split":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return lambda: neighbour_pairs(*args, CUTOFF, small_frame_candidates=65536)
    if method == "vesin_raw":
        return lambda: _vesin_raw(*args)
    return lambda: neighbour_pairs(*args, CUTOFF, method=method)


def _vesin_raw(positions, n_atoms, cells, pbc):
    import vesin

    calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    first = 0
    for f, n in enumerate(n_atoms):
        if n:
            calculator.compute(positions[first:first + n], cells[f], bool(pbc[f].all()), quantities="ijSD")
        first += n


def _best(call):
    """Fastest of up to MAX_ROUNDS calls within BUDGET_S (after one warm call), seconds."""
    call()
    times, spent = [], 0.0
    while len(times) < MAX_ROUNDS and (spent < BUDGET_S or len(times) < 3):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return min(times)


def _same(a, b, what):
    for x, y, name in zip(a[:4], b[:4], ("frame", "i", "j", "shift")):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: {name} differs")
    np.testing.assert_allclose(a[4], b[4], rtol=0, atol=1e-12, err_msg=f"{what}: r_ij differs")


def test_neighbour_list(bench_state):
    from einsum_workbench.reference.neighbours import neighbour_pairs, neighbour_paths

    print(f"\nneighbour list, cutoff {CUTOFF:g} A, {bench_state['threads']} thread(s); best of <= {MAX_ROUNDS} "
          f"calls in {BUDGET_S:g} s, ms:")
    for name, args in _workloads().items():
        large = name.startswith("box_")
        methods = ["auto", "cell_list"] + ([] if large else ["brute_force"]) + ["old_split", "vesin", "vesin_raw"]
        expected = neighbour_pairs(*args, CUTOFF, method="vesin")
        for method in ("auto", "cell_list") + (() if large else ("brute_force",)):
            _same(_call(method, args)(), expected, f"{name} {method}")
        ms = {method: _best(_call(method, args)) * 1e3 for method in methods}
        paths = neighbour_paths(*args, CUTOFF)
        cells = ", ".join(f"{m} {t:.3f}" for m, t in ms.items())
        print(f"  {name} ({len(args[1])} frames, {int(np.sum(args[1]))} atoms, {len(expected[0]):,} pairs, "
              f"auto took {paths}): {cells}")
        print(f"    auto over: cell_list {ms['cell_list'] / ms['auto']:.2f}x"
              + ("" if large else f", brute_force {ms['brute_force'] / ms['auto']:.2f}x")
              + f", old_split {ms['old_split'] / ms['auto']:.2f}x, vesin {ms['vesin'] / ms['auto']:.2f}x, "
              f"vesin_raw {ms['vesin_raw'] / ms['auto']:.2f}x (ratios > 1: auto faster)")


@pytest.mark.scaling
def test_neighbour_list_threads(bench_state):
    from einsum_workbench.bench import pinning
    from einsum_workbench.reference.neighbours import neighbour_pairs
    from einsum_workbench.reference.workloads import small_cell_frames

    cases = {"small_cells_50": _geometry(small_cell_frames(50, seed=0)), f"box_{LARGE_BOX_ATOMS}": _large_box()}
    ms, outputs = {}, {}
    try:
        for threads in (1, 2):
            try:
                pinning.pin_and_verify(threads)
            except pinning.PinningError as err:
                pytest.skip(f"cannot pin to {threads} threads in this process: {err}")
            for name, args in cases.items():
                ms[name, threads] = _best(_call("auto", args)) * 1e3
                outputs[name, threads] = neighbour_pairs(*args, CUTOFF)
    finally:
        pinning.pin_and_verify(bench_state["threads"])
    print(f"\nneighbour list (method auto), cutoff {CUTOFF:g} A, 1 and 2 threads in one run, ms:")
    for name in cases:
        for a, b in zip(outputs[name, 1], outputs[name, 2]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: output depends on the thread count")
        print(f"  {name}: 1 thread {ms[name, 1]:.3f}, 2 threads {ms[name, 2]:.3f}, "
              f"2 over 1 {ms[name, 1] / ms[name, 2]:.2f}x (identical output)")


def _table(name, args):
    """An AtomsTable of a workload's geometry: two species (every third atom another), unit
    semi-axes, identity rotations (the grouping gathers them whatever their values)."""
    from einsum_workbench.reference.frames import AtomsTable

    positions, n_atoms, cells, pbc = args
    n = len(positions)
    numbers = np.where(np.arange(n) % 3 == 0, 6, 1).astype(np.int32)
    return AtomsTable(n_atoms=n_atoms, positions=positions, numbers=numbers,
                      rotations=np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), semiaxes=np.ones((n, 3)),
                      cells=cells, pbc=pbc)


def test_fused_grouping(bench_state):
    from einsum_workbench.pipeline.grouping import group_pairs, neighbour_groups
    from einsum_workbench.reference.neighbours import neighbour_pairs

    def two_steps(table):
        frame, i, j, _, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, CUTOFF)
        return group_pairs(frame, i, j, r_ij, table)

    print(f"\npairs grouped by segment, cutoff {CUTOFF:g} A, {bench_state['threads']} thread(s); best of <= "
          f"{MAX_ROUNDS} calls in {BUDGET_S:g} s, ms:")
    for name, args in _workloads().items():
        table = _table(name, args)
        fused, expected = neighbour_groups(table, CUTOFF), two_steps(table)
        for field in ("segment", "r_ij", "rotations", "semiaxes", "neighbour"):
            np.testing.assert_array_equal(getattr(fused, field), getattr(expected, field), err_msg=f"{name} {field}")
        ms = {"two_steps": _best(lambda: two_steps(table)) * 1e3,
              "fused": _best(lambda: neighbour_groups(table, CUTOFF)) * 1e3}
        print(f"  {name} ({len(fused.segment):,} pairs): neighbour_pairs + group_pairs {ms['two_steps']:.3f}, "
              f"neighbour_groups {ms['fused']:.3f}: {ms['two_steps'] / ms['fused']:.2f}x (same arrays)")

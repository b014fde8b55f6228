"""The neighbour list (``reference.neighbours``): every path gives vesin's pairs in upstream's order.

Oracle: one vesin call per frame, self pairs added, sorted by (frame, i, j,
shift) with ``np.lexsort`` here (independent of the module's own sort key).
Compared: ``method="auto"``, ``"cell_list"``, ``"brute_force"`` (today's
compiled loop) and ``"vesin"``, as ordered arrays (hence also as sets).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from einsum_workbench.reference.frames import frame_geometry
from einsum_workbench.reference.neighbours import (
    METHODS,
    estimate_pairs,
    image_ranges,
    neighbour_pairs,
    neighbour_paths,
)
from einsum_workbench.reference.workloads import benzenes, ellipsoids, small_cell_frames

COMPILED = ("auto", "cell_list", "brute_force")


def _geometry(frames):
    n, positions, _, cells, pbc = frame_geometry(frames)
    return positions, n, cells, pbc


def _oracle(positions, n_atoms, cells, pbc, cutoff, self_pairs=True):
    """vesin per frame, then a lexsort into (frame, i, j, shift) order."""
    import vesin

    out, first = [], 0
    for f, n in enumerate(n_atoms):
        pos = positions[first:first + n]
        first += n
        if n == 0:
            continue
        periodic = bool(pbc[f][0]) if np.all(pbc[f] == pbc[f][0]) else list(map(bool, pbc[f]))
        box = cells[f] if np.any(pbc[f]) else np.zeros((3, 3))
        i, j, s, d = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(pos, box, periodic, quantities="ijSD")
        i, j, s, d = i.astype(np.int64), j.astype(np.int64), s.astype(np.int64).reshape(-1, 3), d.reshape(-1, 3)
        if self_pairs:
            atoms = np.arange(n)
            i, j = np.concatenate([i, atoms]), np.concatenate([j, atoms])
            s, d = np.concatenate([s, np.zeros((n, 3), np.int64)]), np.concatenate([d, np.zeros((n, 3))])
        out.append((np.full(len(i), f, np.int64), i, j, s, d))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), \
            np.zeros((0, 3))
    frame, i, j, s, d = (np.concatenate(c) for c in zip(*out))
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i, frame))
    return frame[order], i[order], j[order], s[order], d[order]


def _assert_same(actual, expected, what):
    names = ("frame", "i", "j", "shift", "r_ij")
    for a, e, name in zip(actual, expected, names):
        assert a.dtype == e.dtype if name != "r_ij" else a.dtype == np.float64, f"{what}: {name} dtype {a.dtype}"
        assert a.shape == e.shape, f"{what}: {name} shape {a.shape} != {e.shape}"
    for a, e, name in zip(actual[:4], expected[:4], names):
        np.testing.assert_array_equal(a, e, err_msg=f"{what}: {name} differs")
    np.testing.assert_allclose(actual[4], expected[4], rtol=0, atol=1e-10, err_msg=f"{what}: r_ij differs")


def _check_all(args, cutoff, self_pairs=True):
    expected = _oracle(*args, cutoff, self_pairs=self_pairs)
    for method in METHODS:
        got = neighbour_pairs(*args, cutoff, self_pairs=self_pairs, method=method)
        _assert_same(got, expected, f"method {method}")
        positions, _, cells, _ = args
        first = np.concatenate([[0], np.cumsum(args[1])[:-1]]).astype(np.int64)
        frame, i, j, shift, r = got
        recomputed = positions[first[frame] + j] + np.einsum("pk,pkl->pl", shift, cells[frame]) \
            - positions[first[frame] + i]
        np.testing.assert_allclose(r, recomputed, rtol=0, atol=1e-12)
        assert np.all(np.einsum("pk,pk->p", r, r) < cutoff ** 2)
    return expected


def _frames_of(pos_list, cells, pbc):
    n = np.array([len(p) for p in pos_list], np.int64)
    positions = np.concatenate([np.asarray(p, float).reshape(-1, 3) for p in pos_list]) if len(n) else np.zeros((0, 3))
    return positions, n, np.asarray(cells, float).reshape(-1, 3, 3), np.asarray(pbc, bool).reshape(-1, 3)


def _skewed_cell(scale=1.0):
    return scale * np.array([[6.0, 0.0, 0.0], [4.5, 3.0, 0.0], [-3.0, 2.5, 4.0]])


def _box(n, side, pbc=(True, True, True), seed=0, cell=None):
    rng = np.random.default_rng(seed)
    cell = np.diag([side] * 3) if cell is None else cell
    return rng.uniform(0, 1, (n, 3)) @ cell, cell, pbc


CASES = {
    "small-cells": lambda: (_geometry(small_cell_frames(4, seed=1)), 7.0),
    "benzenes": lambda: (_geometry(benzenes(3, seed=2)), 7.0),
    "ellipsoids": lambda: (_geometry(ellipsoids(20, seed=3)), 7.0),
    "tiny-cell-edge-1": lambda: (_frames_of([[[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]]], [np.eye(3)], [[True] * 3]), 5.0),
    "tiny-skewed": lambda: (_frames_of([[[0.1, 0.2, 0.3]]], [[[1.0, 0, 0], [0.9, 0.5, 0], [0.3, -0.4, 0.8]]],
                                       [[True] * 3]), 3.0),
    "skewed-box": lambda: (_frames_of(*[[x] for x in _box(150, 0, seed=4, cell=_skewed_cell(1.6))]), 4.0),
    "large-box": lambda: (_frames_of(*[[x] for x in _box(1500, 25.0, seed=5)]), 5.0),
    "open-cluster": lambda: (_frames_of([_box(300, 20.0, seed=6)[0] - 40.0], [np.zeros((3, 3))], [[False] * 3]), 4.5),
    "mixed-pbc-slab": lambda: (_frames_of([_box(400, 0, seed=7, cell=_skewed_cell(2.0))[0] * [1, 1, 2]],
                                          [_skewed_cell(2.0)], [[True, False, True]]), 4.0),
    "mixed-pbc-wire": lambda: (_frames_of([_box(60, 8.0, seed=8)[0]], [np.diag([3.0, 8.0, 8.0])],
                                          [[True, False, False]]), 5.0),
}


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_every_method_equals_vesin_in_upstream_order(name, self_pairs):
    args, cutoff = CASES[name]()
    expected = _check_all(args, cutoff, self_pairs)
    assert len(expected[0]) > 0
    self_pair = (expected[1] == expected[2]) & ~expected[3].any(axis=1)
    assert self_pair.any() == self_pairs


def test_paths_taken_cover_both_compiled_searches():
    """The rule sends tiny and small-cell frames to the brute force, large boxes to the cell list."""
    assert neighbour_paths(*_geometry(ellipsoids(10, seed=0)), 7.0) == {"brute_force": 10}
    assert neighbour_paths(*CASES["large-box"]()[0], 5.0) == {"cell_list": 1}
    assert neighbour_paths(*CASES["large-box"]()[0], 5.0, method="vesin") == {"vesin": 1}
    args = _frames_of([[[0, 0, 0]], []], np.eye(3)[None].repeat(2, 0), [[True] * 3] * 2)
    assert neighbour_paths(*args, 2.0) == {"brute_force": 1, "empty": 1}


def test_unwrapped_atoms_give_the_wrapped_pairs_shifted():
    positions, n, cells, pbc = _geometry(small_cell_frames(3, seed=9) + benzenes(2, seed=9))
    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(len(n)), n)
    moved = positions + np.einsum("nk,nkl->nl", rng.integers(-3, 4, (len(positions), 3)), cells[owner])
    _check_all((moved, n, cells, pbc), 6.0)
    big = _frames_of(*[[x] for x in _box(1200, 22.0, seed=10)])
    shifted = big[0] + rng.integers(-2, 3, (len(big[0]), 3)) * 22.0
    assert neighbour_paths(shifted, *big[1:], 5.0) == {"cell_list": 1}
    _check_all((shifted, *big[1:]), 5.0)


def test_empty_frames_and_no_frames():
    args = _frames_of([[], [[0, 0, 0], [1.0, 0, 0]], [], [[0, 0, 0]]], np.eye(3)[None].repeat(4, 0) * 10,
                      [[True] * 3] * 4)
    expected = _check_all(args, 1.5)
    assert expected[0].tolist() == [1, 1, 1, 1, 3]
    for method in METHODS:
        out = neighbour_pairs(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros((0, 3, 3)), np.zeros((0, 3), bool),
                              3.0, method=method)
        assert [a.shape for a in out] == [(0,), (0,), (0,), (0, 3), (0, 3)]
        assert [a.dtype for a in out] == [np.int64] * 4 + [np.float64]


def test_several_kinds_of_frames_in_one_call():
    parts = [CASES[name]()[0] for name in ("tiny-cell-edge-1", "large-box", "open-cluster", "mixed-pbc-wire",
                                           "skewed-box")]
    parts.insert(2, _frames_of([[]], [np.eye(3)], [[True] * 3]))
    parts.append(_geometry(ellipsoids(5, seed=11)))
    args = tuple(np.concatenate([p[k] for p in parts]) for k in range(4))
    paths = neighbour_paths(*args, 4.5)
    assert paths["cell_list"] >= 1 and paths["brute_force"] >= 1 and paths["empty"] == 1
    _check_all(args, 4.5)


def test_deprecated_small_frame_candidates_still_splits():
    args = (*_geometry([f for pair in zip(ellipsoids(3, seed=1), benzenes(3, seed=2)) for pair_f in [pair]
                        for f in pair_f]), 6.0)
    with pytest.warns(DeprecationWarning, match="small_frame_candidates"):
        old = neighbour_pairs(*args, small_frame_candidates=5000)
    _assert_same(old, neighbour_pairs(*args), "deprecated split")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(0, 40), pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       edge=st.floats(1.0, 12.0), skew=st.floats(-0.6, 0.6), cutoff=st.floats(0.5, 6.0), spread=st.floats(0.0, 3.0),
       self_pairs=st.booleans())
def test_property_random_frames(seed, n, pbc, edge, skew, cutoff, spread, self_pairs):
    rng = np.random.default_rng(seed)
    cell = edge * (np.eye(3) + skew * np.triu(rng.uniform(-1, 1, (3, 3)), 1))
    positions = rng.uniform(-spread, 1 + spread, (n, 3)) @ cell  # atoms inside and outside the cell
    args = _frames_of([positions], [cell], [pbc])
    if estimate_pairs(*args, cutoff).sum() > 2e5:
        return
    _check_all(args, cutoff, self_pairs)


def test_image_ranges_and_estimate_kept():
    args, cutoff = CASES["tiny-cell-edge-1"]()
    assert image_ranges(*args, cutoff).tolist() == [[6, 6, 6]]
    assert estimate_pairs(*args, cutoff)[0] == pytest.approx(2 * 2 * 4 / 3 * np.pi * 125 + 2)


@pytest.mark.parametrize("bad, match", [
    (dict(cutoff=-1.0), "cutoff must be a finite number > 0, got -1.0"),
    (dict(method="fast"), "method must be one of .* got 'fast'"),
    (dict(n_atoms=[3]), r"sum\(n_atoms\) = 3 but 2 positions"),
    (dict(n_atoms=[-1, 3]), "n_atoms must be >= 0, got -1"),
    (dict(positions=[[0, 0, np.nan], [1, 0, 0]]), r"positions must be finite, got \[0.0, 0.0, nan\]"),
    (dict(pbc=[[True] * 3] * 2), "1 frames in n_atoms but 1 cells and 2 pbc rows"),
    (dict(cells=np.diag([5.0, 0.0, 5.0])[None]), r"frame 0 is periodic along \[True, True, True\] but its cell"),
])
def test_bad_input_is_named(bad, match):
    kwargs = dict(positions=[[0, 0, 0], [1, 0, 0]], n_atoms=[2], cells=np.eye(3)[None] * 5, pbc=[[True] * 3],
                  cutoff=2.0)
    kwargs.update(bad)
    if len(np.atleast_1d(kwargs["n_atoms"])) == 2:
        kwargs.update(cells=np.eye(3)[None].repeat(2, 0) * 5, pbc=[[True] * 3] * 2)
    method = kwargs.pop("method", "auto")
    with pytest.raises(ValueError, match=match):
        neighbour_pairs(kwargs.pop("positions"), kwargs.pop("n_atoms"), kwargs.pop("cells"), kwargs.pop("pbc"),
                        kwargs.pop("cutoff"), method=method)


def test_same_output_with_one_and_two_threads():
    """Run in a child with two Numba threads: each thread count gives the same bytes."""
    code = (
        "import numpy as np, numba\n"
        "from einsum_workbench.reference.neighbours import neighbour_pairs\n"
        "from einsum_workbench.reference.frames import frame_geometry\n"
        "from einsum_workbench.reference.workloads import small_cell_frames, ellipsoids\n"
        "n, p, _, c, b = frame_geometry(small_cell_frames(7, seed=3) + ellipsoids(40, seed=3))\n"
        "rng = np.random.default_rng(1); box = rng.uniform(0, 20, (1000, 3))\n"
        "cases = [(p, n, c, b), (box, np.array([1000]), np.diag([20.0] * 3)[None], np.ones((1, 3), bool))]\n"
        "for method in ('auto', 'cell_list', 'brute_force'):\n"
        "    for args in cases:\n"
        "        outs = []\n"
        "        for t in (1, 2):\n"
        "            numba.set_num_threads(t)\n"
        "            outs.append(neighbour_pairs(*args, 5.0, method=method))\n"
        "        for a, b2 in zip(*outs):\n"
        "            assert a.tobytes() == b2.tobytes(), method\n"
        "print('ok', numba.config.NUMBA_NUM_THREADS)\n"
    )
    import os

    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "2"]


def test_parallel_guard_lives_below_the_kernels():
    from einsum_workbench import threads
    from einsum_workbench.kernels.numba import dispatch

    assert dispatch.parallel_guard is threads.parallel_guard
    code = "import sys, einsum_workbench.threads; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with threads.parallel_guard():
            pass


def test_planned_search_counts_per_species_and_pairs_in_order():
    """PlannedSearch's passes and centre_pairs_in_order give neighbour_pairs' pairs, centre by centre."""
    from einsum_workbench.reference.neighbours import centre_pairs_in_order, plan_search

    args, cutoff = CASES["large-box"]()  # one cell-list frame
    small, _ = CASES["small-cells"]()  # brute-force frames
    for positions, n_atoms, cells, pbc in (args, small):
        search = plan_search(positions, n_atoms, cells, pbc, cutoff)
        species = np.arange(len(positions), dtype=np.int64) % 3
        counts, by_species = search.count_pairs(species, 3)
        frame, i, j, shift, r_ij = neighbour_pairs(positions, n_atoms, cells, pbc, cutoff)
        np.testing.assert_array_equal(counts, search.count_pairs())
        np.testing.assert_array_equal(by_species.sum(axis=1), counts)
        centre = search.first_atom[frame] + i
        np.testing.assert_array_equal(counts, np.bincount(centre, minlength=len(positions)))
        for e in range(3):
            mine = species[search.first_atom[frame] + j] == e
            np.testing.assert_array_equal(by_species[:, e], np.bincount(centre[mine], minlength=len(positions)))
        size = int(counts.max())
        buffers = (np.empty(size, np.int64), np.empty((size, 3), np.int64), np.empty((size, 3)),
                   np.empty(size, np.int64), np.empty(size, np.int64))
        start = np.concatenate([[0], np.cumsum(counts)])
        for a in (0, len(positions) // 2, len(positions) - 1):
            m = centre_pairs_in_order(a, search.geometry, *buffers)
            order = buffers[4][:m]
            rows = slice(start[a], start[a + 1])
            np.testing.assert_array_equal(buffers[0][order], j[rows])
            np.testing.assert_array_equal(buffers[1][order], shift[rows])
            assert buffers[2][order].tobytes() == r_ij[rows].tobytes()
    with pytest.raises(ValueError, match="method must be one of .* got 'vesin'"):
        plan_search(*small, cutoff, method="vesin")


def test_planning_pass_estimate_and_refusal_match_estimate_pairs():
    """The compiled planning pass's estimate is estimate_pairs' (rounding aside), and the refusal
    at the limit is decided by estimate_pairs itself."""
    from einsum_workbench.reference.neighbours import _plan

    for name in ("small-cells", "ellipsoids", "open-cluster", "mixed-pbc-slab", "mixed-pbc-wire", "tiny-skewed"):
        args, cutoff = CASES[name]()
        expected = estimate_pairs(*args, cutoff)
        planned = _plan(*args, cutoff)["estimate"]
        np.testing.assert_allclose(planned, expected, rtol=1e-12, atol=0, err_msg=name)
        total = float(expected.sum())
        neighbour_pairs(*args, cutoff, max_pairs=total)  # at the limit: accepted, as check_pair_estimate does
        with pytest.raises(ValueError, match="above max_pairs"):
            neighbour_pairs(*args, cutoff, max_pairs=np.nextafter(total, 0))
    with pytest.raises(TypeError, match="max_pairs must be a number, got True"):
        neighbour_pairs(*args, cutoff, max_pairs=True)


def test_openmp_workers_wait_passively_unless_told_otherwise():
    """einsum_workbench.threads sets OMP_WAIT_POLICY=PASSIVE at import when unset, and keeps a value given."""
    import os

    code = "import os, einsum_workbench.threads; print(os.environ.get('OMP_WAIT_POLICY'))"
    unset = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for env, expected in ((unset, "PASSIVE"), ({**unset, "OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.stdout.strip() == expected, out.stderr


def test_prange_only_leaves_one_parallel_region_per_call():
    """The search's parallel functions take ``prange_only()`` (a fresh dict each time, which Numba
    empties): their allocations are not parallel regions of their own."""
    from einsum_workbench.threads import prange_only

    first, second = prange_only(), prange_only()
    assert first is not second and first == second and first["numpy"] is False and "prange" not in first
    from einsum_workbench.reference import neighbours

    from einsum_workbench.pipeline import grouping

    for function in (neighbours._count_pairs, neighbours._write_pairs, grouping._count_and_keep,
                     grouping._write_grouped, grouping._group):
        # a dict, not True (Numba pops its entries when it compiles, so only its type is stable)
        assert isinstance(function.targetoptions["parallel"], dict), function

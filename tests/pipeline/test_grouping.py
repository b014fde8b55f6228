"""pipeline/grouping.py: the compiled grouping equals segments + a stable sort + gathers."""

from __future__ import annotations

import ase
import numpy as np
import pytest

from einsum_workbench.pipeline.grouping import MAX_SPECIES, _numpy_group, group_pairs, neighbour_groups
from einsum_workbench.reference import workloads
from einsum_workbench.reference.frames import atoms_table
from einsum_workbench.reference.neighbours import neighbour_pairs

FIELDS = ("segment", "r_ij", "rotations", "semiaxes", "neighbour")


def assert_same_grouping(actual, expected):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=name)
    a, b = actual.layout, expected.layout
    np.testing.assert_array_equal(a.centre_types, b.centre_types)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.n_frames == b.n_frames
    for x, y in zip(a.samples, b.samples, strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    for x, y in zip(a.neighbour_types, b.neighbour_types, strict=True):
        np.testing.assert_array_equal(x, y)


def pairs_of(frames, cutoff=7.0, self_pairs=True):
    table = atoms_table(frames)
    frame, i, j, _, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, cutoff,
                                           self_pairs=self_pairs)
    return frame, i, j, r_ij, table


@pytest.mark.parametrize("frames", [
    workloads.benzenes(4, seed=0, n_species=2),
    workloads.benzenes(3, seed=1, n_species=3),
    workloads.ellipsoids(30, seed=2, n_species=2),
    [ase.Atoms(cell=np.eye(3) * 4, pbc=True), *workloads.benzenes(2, seed=3), ase.Atoms()],
], ids=["benzenes-2-species", "benzenes-3-species", "ellipsoids", "empty-frames"])
@pytest.mark.parametrize("self_pairs", [True, False])
def test_compiled_grouping_equals_numpy(frames, self_pairs):
    frame, i, j, r_ij, table = pairs_of(frames, self_pairs=self_pairs)
    grouped = group_pairs(frame, i, j, r_ij, table)
    assert_same_grouping(grouped, _numpy_group(frame, i, j, r_ij, table))
    assert np.all(np.diff(grouped.segment) >= 0)
    assert len(grouped.segment) == len(frame)
    # per pair on demand: the neighbour's rows of the table (not copied by the grouping)
    np.testing.assert_array_equal(grouped.rotations, table.rotations[grouped.neighbour])
    np.testing.assert_array_equal(grouped.semiaxes, table.semiaxes[grouped.neighbour])


def test_unsorted_pairs_take_the_numpy_path():
    frame, i, j, r_ij, table = pairs_of(workloads.benzenes(2, seed=4))
    order = np.random.default_rng(0).permutation(len(frame))
    shuffled = (frame[order], i[order], j[order], r_ij[order], table)
    assert_same_grouping(group_pairs(*shuffled), _numpy_group(*shuffled))


def test_species_beyond_the_table_take_the_numpy_path():
    frames = workloads.benzenes(1, seed=5)
    frames[0].numbers[0] = MAX_SPECIES + 1
    frame, i, j, r_ij, table = pairs_of(frames)
    assert_same_grouping(group_pairs(frame, i, j, r_ij, table), _numpy_group(frame, i, j, r_ij, table))
    assert MAX_SPECIES + 1 in group_pairs(frame, i, j, r_ij, table).layout.centre_types


def test_two_threads_give_the_same_grouping():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here: the two-thread grouping was not run")
    frame, i, j, r_ij, table = pairs_of(workloads.benzenes(6, seed=6, n_species=3))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = group_pairs(frame, i, j, r_ij, table)
        numba.set_num_threads(2)
        two = group_pairs(frame, i, j, r_ij, table)
    finally:
        numba.set_num_threads(before)
    assert_same_grouping(two, one)



# ---------------------------------------------------------------------------
# neighbour_groups: the search and the grouping fused


def _two_steps(table, cutoff, self_pairs=True):
    frame, i, j, _, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, cutoff,
                                           self_pairs=self_pairs)
    return group_pairs(frame, i, j, r_ij, table)


def assert_identical(actual, expected):
    """Bit for bit: every array's dtype, shape and bytes, and the layout."""
    for name in FIELDS:
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype and a.shape == e.shape, name
        assert a.tobytes() == e.tobytes(), f"{name} differs"
    assert_same_grouping(actual, expected)
    assert actual.layout.offsets.dtype == expected.layout.offsets.dtype
    assert actual.layout.centre_types.dtype == expected.layout.centre_types.dtype


def _box_table(n, side, pbc, species=(1, 6, 8), seed=0):
    """An AtomsTable of one random box (the cell-list path above 400 atoms), random rotations."""
    rng = np.random.default_rng(seed)
    atoms = ase.Atoms(numbers=rng.choice(species, n), positions=rng.uniform(0, side, (n, 3)),
                      cell=np.diag([side] * 3), pbc=pbc)
    atoms.arrays["c_q"] = rng.normal(size=(n, 4))
    return atoms


FUSED_CASES = {
    "benzenes-2-species": lambda: workloads.benzenes(4, seed=0, n_species=2),
    "benzenes-3-species": lambda: workloads.benzenes(3, seed=1, n_species=3),
    "ellipsoids": lambda: workloads.ellipsoids(30, seed=2, n_species=2),
    "small-cells": lambda: workloads.small_cell_frames(6, seed=3),
    "empty-frames": lambda: [ase.Atoms(cell=np.eye(3) * 4, pbc=True), *workloads.benzenes(2, seed=3), ase.Atoms()],
    "cell-list-box-and-cluster": lambda: [_box_table(900, 20.0, True), _box_table(500, 15.0, False, seed=1),
                                          *workloads.benzenes(1, seed=4)],
    "mixed-pbc": lambda: [_box_table(450, 18.0, [True, False, True], seed=2), _box_table(30, 6.0, [False, True, False])],
}


@pytest.mark.parametrize("name", list(FUSED_CASES))
@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("cutoff", [3.0, 7.0])
def test_fused_search_equals_search_then_grouping(name, self_pairs, cutoff):
    table = atoms_table(FUSED_CASES[name](), semiaxes=(1.5, 1.0, 0.5))
    fused = neighbour_groups(table, cutoff, self_pairs=self_pairs)
    assert_identical(fused, _two_steps(table, cutoff, self_pairs))
    if cutoff == 7.0:  # pairs beyond the self pairs in every case
        assert len(fused.segment) > len(table.numbers)


@pytest.mark.parametrize("margin", [0.0, 0.3], ids=["nothing-kept", "rooms-overflow"])
@pytest.mark.parametrize("name", ["benzenes-2-species", "small-cells", "ellipsoids", "mixed-pbc"])
def test_fused_search_without_room_for_the_kept_pairs_searches_again(monkeypatch, name, margin):
    """Pairs that do not fit the counting pass's room (none kept, or rooms overflowing part-way
    through a block) are found again by the second pass: the same arrays, bit for bit."""
    from einsum_workbench.pipeline import grouping

    table = atoms_table(FUSED_CASES[name](), semiaxes=(1.5, 1.0, 0.5))
    expected = _two_steps(table, 7.0)
    monkeypatch.setattr(grouping, "KEPT_MARGIN", margin)
    assert_identical(neighbour_groups(table, 7.0), expected)


def test_fused_search_with_species_beyond_the_table_takes_the_two_steps():
    frames = workloads.benzenes(1, seed=5)
    frames[0].numbers[0] = MAX_SPECIES + 1
    table = atoms_table(frames)
    fused = neighbour_groups(table, 7.0)
    assert_identical(fused, _two_steps(table, 7.0))
    assert MAX_SPECIES + 1 in fused.layout.centre_types


def test_fused_search_of_no_atoms_and_of_isolated_atoms():
    table = atoms_table([ase.Atoms()], semiaxes=(1.0, 1.0, 1.0))
    assert_identical(neighbour_groups(table, 5.0), _two_steps(table, 5.0))
    far = ase.Atoms("HC", positions=[[0, 0, 0], [50, 0, 0]])  # no pair but the self pairs
    table = atoms_table([far], semiaxes=(1.0, 1.0, 1.0), rotation_key=None)
    for self_pairs in (True, False):
        assert_identical(neighbour_groups(table, 5.0, self_pairs=self_pairs), _two_steps(table, 5.0, self_pairs))
    assert len(neighbour_groups(table, 5.0, self_pairs=False).layout.centre_types) == 0


def test_fused_search_records_both_stages_and_refuses_as_the_search():
    from einsum_workbench.pipeline.stages import record_stages

    table = atoms_table(workloads.benzenes(2, seed=6))
    with record_stages() as seconds:
        neighbour_groups(table, 7.0)
    assert set(seconds) == {"neighbour_list", "grouping"}
    with pytest.raises(ValueError, match="above max_pairs"):
        neighbour_groups(table, 7.0, max_pairs=10)
    with pytest.raises(ValueError, match="cutoff must be a finite number > 0, got -1.0"):
        neighbour_groups(table, -1.0)


def test_fused_search_gives_the_same_bytes_on_two_threads():
    """In a child with a pool of two Numba threads: 1 and 2 threads give the same bytes."""
    import os
    import subprocess
    import sys

    code = (
        "import numba, numpy as np\n"
        "from einsum_workbench.pipeline.grouping import neighbour_groups\n"
        "from einsum_workbench.reference.frames import atoms_table\n"
        "from einsum_workbench.reference import workloads\n"
        "table = atoms_table(workloads.benzenes(6, seed=6, n_species=3) + workloads.ellipsoids(40, seed=1))\n"
        "outs = []\n"
        "for t in (1, 2):\n"
        "    numba.set_num_threads(t)\n"
        "    g = neighbour_groups(table, 7.0)\n"
        "    outs.append([g.segment, g.r_ij, g.rotations, g.semiaxes, g.neighbour, g.layout.offsets])\n"
        "assert all(a.tobytes() == b.tobytes() for a, b in zip(*outs))\n"
        "print('ok', numba.config.NUMBA_NUM_THREADS)\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "2"]

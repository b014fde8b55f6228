"""pipeline/grouping.py: the compiled grouping equals segments + a stable sort + gathers."""

from __future__ import annotations

import ase
import numpy as np
import pytest

from einsum_workbench.pipeline.grouping import MAX_SPECIES, _numpy_group, group_pairs
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


"""Frames to pairs: the same set of neighbour pairs as featomic's NeighborList
(the list AniSOAP builds), rotations as scipy makes them, and bad input."""

from __future__ import annotations

import ase
import numpy as np
import pytest

from einsum_workbench.reference import workloads
from einsum_workbench.reference.frames import rotations_from_quaternions
from einsum_workbench.reference.readers import read_frames
from einsum_workbench.reference.pairs import PairBatch, frames_to_pairs

CUTOFF = 7.0


def featomic_pairs(frames, cutoff, self_pairs):
    """{(frame, centre, neighbour, sa, sb, sc): r_ij} from featomic's full list."""
    featomic = pytest.importorskip("featomic")
    nl = featomic.NeighborList(cutoff=cutoff, full_neighbor_list=True, self_pairs=self_pairs).compute(frames)
    out = {}
    for block in nl.blocks():
        names = ["system", "first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"]
        samples = np.stack([np.asarray(block.samples.column(n)) for n in names], axis=1)
        for key, r in zip(map(tuple, samples.tolist()), block.values[:, :, 0]):
            assert key not in out, f"featomic gave pair {key} twice"
            out[key] = r
    return out


def our_pairs(batch: PairBatch):
    keys = np.column_stack([batch.frame, batch.centre, batch.neighbour, batch.shift])
    out = {}
    for key, r in zip(map(tuple, keys.tolist()), batch.r_ij):
        assert key not in out, f"frames_to_pairs gave pair {key} twice"
        out[key] = r
    return out


def non_periodic_frame():
    rng = np.random.default_rng(5)
    frame = ase.Atoms("C4H4", positions=rng.uniform(0, 6, size=(8, 3)), pbc=False)
    frame.arrays["c_q"] = rng.normal(size=(8, 4))
    for k in range(1, 4):
        frame.arrays[f"c_diameter[{k}]"] = rng.uniform(0.5, 3.0, size=8)
    return frame


def assert_same_pairs(frames, self_pairs, semiaxes=None):
    batch = frames_to_pairs(frames, CUTOFF, self_pairs=self_pairs, semiaxes=semiaxes)
    ours, theirs = our_pairs(batch), featomic_pairs(frames, CUTOFF, self_pairs)
    missing, extra = set(theirs) - set(ours), set(ours) - set(theirs)
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for key, r in ours.items():
        np.testing.assert_allclose(r, theirs[key], rtol=0, atol=1e-10, err_msg=f"r_ij of pair {key}")
    assert len(batch) == len(theirs) > 0
    return batch


@pytest.mark.parametrize("self_pairs", [True, False])
def test_pairs_match_featomic_on_real_frames(real_frames, self_pairs):
    assert_same_pairs(real_frames, self_pairs, semiaxes=(2.0, 2.0, 0.25))


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(lambda: workloads.benzenes(3, seed=7, n_species=4), id="benzenes"),
        pytest.param(lambda: workloads.ellipsoids(10, seed=3, n_species=3), id="ellipsoids"),
        pytest.param(lambda: [non_periodic_frame()], id="non_periodic"),
    ],
)
def test_pairs_match_featomic_on_generated_frames(frames, self_pairs):
    frames = frames()
    batch = assert_same_pairs(frames, self_pairs)
    # rotations, semi-axes and species are the neighbour's
    for p in np.random.default_rng(0).integers(0, len(batch), size=20):
        atoms = frames[batch.frame[p]]
        j = batch.neighbour[p]
        q = atoms.arrays["c_q"][j]
        expected = rotations_from_quaternions(q)
        np.testing.assert_allclose(batch.rotations[p], expected, atol=1e-14)
        np.testing.assert_allclose(batch.semiaxes[p], [atoms.arrays[f"c_diameter[{k}]"][j] / 2 for k in (1, 2, 3)])
        assert batch.neighbour_species[p] == atoms.numbers[j]
        assert batch.centre_species[p] == atoms.numbers[batch.centre[p]]


def test_pairs_are_sorted_and_self_pairs_are_zero_vectors():
    frames = workloads.benzenes(2, seed=1)
    batch = frames_to_pairs(frames, CUTOFF, self_pairs=True)
    keys = np.column_stack([batch.frame, batch.centre, batch.neighbour, batch.shift])
    order = np.lexsort(keys.T[::-1])
    np.testing.assert_array_equal(order, np.arange(len(batch)))
    is_self = (batch.centre == batch.neighbour) & (batch.shift == 0).all(axis=1)
    assert is_self.sum() == 24
    np.testing.assert_array_equal(batch.r_ij[is_self], 0.0)
    without = frames_to_pairs(frames, CUTOFF, self_pairs=False)
    assert len(without) == len(batch) - 24


def test_rotations_from_quaternions_match_scipy():
    from scipy.spatial.transform import Rotation

    q = np.random.default_rng(1).normal(size=(200, 4)) * 3.0  # not normalised
    expected = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], axis=1)).as_matrix()
    np.testing.assert_allclose(rotations_from_quaternions(q), expected, atol=1e-14)


def test_quaternion_matrices_flag_the_first_bad_row():
    from einsum_workbench.reference.frames import quaternion_matrices

    q = np.random.default_rng(2).normal(size=(6, 4))
    assert quaternion_matrices(q)[1] == -1
    q[4] = 0.0
    q[5, 2] = np.nan
    assert quaternion_matrices(q)[1] == 4
    q[2, 0] = np.inf
    assert quaternion_matrices(q)[1] == 2


def test_matrix_rotations_and_constant_and_per_species_semiaxes():
    frame = workloads.benzenes(1, seed=2)[0]
    expected = frames_to_pairs(frame, CUTOFF)
    frame.arrays["rot"] = rotations_from_quaternions(frame.arrays["c_q"]).reshape(-1, 9)
    by_matrix = frames_to_pairs(frame, CUTOFF, rotation_key="rot", rotation_type="matrix")
    np.testing.assert_allclose(by_matrix.rotations, expected.rotations, atol=1e-14)
    constant = frames_to_pairs(frame, CUTOFF, semiaxes=(2.0, 1.0, 0.5))
    np.testing.assert_array_equal(constant.semiaxes, np.tile([2.0, 1.0, 0.5], (len(constant), 1)))
    per_species = frames_to_pairs(frame, CUTOFF, semiaxes={"C": (1.0, 1.0, 0.5), 1: (0.7, 0.7, 0.7)})
    expect = np.where((per_species.neighbour_species == 6)[:, None], [1.0, 1.0, 0.5], [0.7, 0.7, 0.7])
    np.testing.assert_array_equal(per_species.semiaxes, expect)


def test_renamed_diameter_arrays_are_read(tmp_path):
    frame = workloads.ellipsoids(1, seed=4)[0]
    for k in (1, 2, 3):
        frame.arrays[f"c_diameter{k}"] = frame.arrays.pop(f"c_diameter[{k}]")
    batch = frames_to_pairs(frame, CUTOFF)
    assert len(batch) and np.all(batch.semiaxes > 0)
    path = tmp_path / "frame.xyz"
    ase.io.write(path, workloads.ellipsoids(2, seed=4), format="extxyz")
    again = frames_to_pairs(read_frames(path), CUTOFF)
    np.testing.assert_allclose(again.semiaxes, frames_to_pairs(workloads.ellipsoids(2, seed=4), CUTOFF).semiaxes)


def test_empty_inputs_give_empty_batches():
    for frames in ([], [ase.Atoms(cell=[5, 5, 5], pbc=True)]):
        batch = frames_to_pairs(frames, CUTOFF)
        assert len(batch) == 0
        assert batch.r_ij.shape == (0, 3) and batch.rotations.shape == (0, 3, 3)
        assert batch.semiaxes.shape == (0, 3) and batch.shift.shape == (0, 3)
        assert batch.n_atoms.shape == (len(frames),)
    isolated = ase.Atoms("C2", positions=[[0, 0, 0], [50, 0, 0]], pbc=False)
    batch = frames_to_pairs(isolated, CUTOFF, semiaxes=(1, 1, 1), rotation_key=None, self_pairs=False)
    assert len(batch) == 0


def test_select_keeps_bookkeeping():
    batch = frames_to_pairs(workloads.benzenes(2, seed=3), CUTOFF)
    chosen = batch.select(batch.frame == 1)
    assert len(chosen) == int((batch.frame == 1).sum())
    assert np.all(chosen.frame == 1)
    np.testing.assert_array_equal(chosen.n_atoms, batch.n_atoms)
    np.testing.assert_array_equal(batch.select([0, 2]).r_ij, batch.r_ij[[0, 2]])


def test_non_finite_position_is_named():
    frame = workloads.benzenes(1)[0]
    frame.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"frame 0 atom 3 has a non-finite position: \[.*nan"):
        frames_to_pairs([frame], CUTOFF)


@pytest.mark.parametrize("bad", [0.0, -1.5])
def test_non_positive_semiaxis_is_named(bad):
    frame = workloads.benzenes(1)[0]
    frame.arrays["c_diameter[2]"][5] = 2 * bad
    with pytest.raises(ValueError, match=rf"frame 0 atom 5 .*{bad}"):
        frames_to_pairs([frame], CUTOFF)
    with pytest.raises(ValueError, match=rf"semi-axes must be finite and > 0.*{bad}"):
        frames_to_pairs([frame], CUTOFF, semiaxes=(1.0, bad, 1.0))


def test_zero_norm_quaternion_is_named():
    frame = workloads.benzenes(1)[0]
    frame.arrays["c_q"][4] = 0.0
    with pytest.raises(ValueError, match=r"quaternion of atom 4 has zero norm: \[0.0, 0.0, 0.0, 0.0\]"):
        frames_to_pairs([frame], CUTOFF)


def test_missing_diameters_and_bad_cutoff_are_named(real_frames):
    with pytest.raises(ValueError, match="frame 0 stores no diameters"):
        frames_to_pairs(real_frames[:1], CUTOFF)
    with pytest.raises(ValueError, match="cutoff must be a finite number > 0, got -1"):
        frames_to_pairs(real_frames[:1], -1.0, semiaxes=(1, 1, 1))


def test_mixed_periodicity_matches_ase():
    # featomic refuses mixed periodic boundaries; ASE's neighbour list is the check here
    from ase.neighborlist import neighbor_list

    frame = workloads.benzenes(1, seed=4)[0]
    frame.cell = [[6.0, 0.0, 0.0], [0.5, 6.0, 0.0], [0.0, 0.0, 0.0]]
    frame.pbc = [True, True, False]
    batch = frames_to_pairs(frame, CUTOFF, self_pairs=False)
    i, j, shift, r = neighbor_list("ijSD", frame, CUTOFF, self_interaction=False)
    theirs = {(0, a, b, *s): v for a, b, s, v in zip(i.tolist(), j.tolist(), shift.tolist(), r)}
    ours = our_pairs(batch)
    assert set(ours) == set(theirs) and len(ours) > 0
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key], rtol=0, atol=1e-10)
    assert np.all(batch.shift[:, 2] == 0)


def test_improper_rotation_matrix_is_named():
    frame = workloads.benzenes(1)[0]
    matrices = rotations_from_quaternions(frame.arrays["c_q"])
    matrices[2] = -matrices[2]  # a reflection
    frame.arrays["rot"] = matrices.reshape(-1, 9)
    with pytest.raises(ValueError, match=r"frame 0: rotation matrix of atom 2 is not a proper rotation"):
        frames_to_pairs(frame, CUTOFF, rotation_key="rot", rotation_type="matrix")

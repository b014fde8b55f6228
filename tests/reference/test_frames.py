"""reference/frames.py: frames read once into an AtomsTable, the flat-array
path giving the same table, and the errors on what is not a frame."""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import pytest

from einsum_workbench.reference import workloads
from einsum_workbench.reference.frames import (
    AtomsTable,
    as_atoms_table,
    as_frame_list,
    atoms_table,
    gather_frames,
    rotations_from_quaternions,
    table_from_arrays,
)

FIELDS = ("n_atoms", "positions", "numbers", "rotations", "semiaxes", "cells", "pbc")


def assert_same_table(actual: AtomsTable, expected: AtomsTable):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=name)
        assert getattr(actual, name).dtype == getattr(expected, name).dtype, name


def per_frame_table(frames, **options) -> AtomsTable:
    """One atoms_table call per frame, stacked: what one pass over all frames must equal."""
    tables = [atoms_table([f], **options) for f in frames]
    return AtomsTable(**{name: np.concatenate([getattr(t, name) for t in tables]) for name in FIELDS})


def mixed_frames():
    frames = workloads.benzenes(3, seed=1) + workloads.ellipsoids(2, seed=2, n_species=2)
    frames.insert(2, ase.Atoms(cell=np.eye(3) * 5, pbc=True))  # an empty frame
    return frames


def test_one_pass_equals_frame_by_frame():
    frames = mixed_frames()
    assert_same_table(atoms_table(frames), per_frame_table(frames))
    table = atoms_table(frames)
    assert table.numbers.dtype == np.int32 and table.n_atoms.tolist() == [len(f) for f in frames]
    np.testing.assert_array_equal(table.rotations[:12], rotations_from_quaternions(frames[0].arrays["c_q"]))


@pytest.mark.parametrize("semiaxes", [(1.0, 2.0, 3.0), {6: (1.0, 1.0, 0.5), "H": (0.3, 0.3, 0.3), 8: (2, 2, 1)}])
def test_semiaxes_options_agree_with_frame_by_frame(semiaxes):
    frames = workloads.benzenes(2, seed=3)
    assert_same_table(atoms_table(frames, semiaxes=semiaxes), per_frame_table(frames, semiaxes=semiaxes))
    table = atoms_table(frames, semiaxes=semiaxes)
    if isinstance(semiaxes, dict):
        np.testing.assert_array_equal(table.semiaxes[table.numbers == 1], np.tile([0.3, 0.3, 0.3], (12, 1)))


def test_table_from_arrays_equals_atoms_table():
    frames = mixed_frames()
    read = gather_frames(frames)
    arrays = {key: np.concatenate([f.arrays[key] for f in frames if len(f)])
              for key in ("c_q", "c_diameter[1]", "c_diameter[2]", "c_diameter[3]")}
    flat = table_from_arrays(read.n_atoms, read.positions, read.numbers, read.cells, read.pbc, arrays)
    assert_same_table(flat, atoms_table(frames))
    assert as_atoms_table(flat) is flat


def test_renamed_diameters_are_read():
    frame = workloads.benzenes(1)[0]
    for k in (1, 2, 3):
        frame.arrays[f"c_diameter{k}"] = frame.arrays.pop(f"c_diameter[{k}]")
    reference = workloads.benzenes(1)[0]
    np.testing.assert_array_equal(atoms_table([frame]).semiaxes, atoms_table([reference]).semiaxes)


def test_one_atoms_is_one_frame():
    frame = workloads.benzenes(1)[0]
    assert_same_table(atoms_table(frame), atoms_table([frame]))
    assert as_frame_list(frame) == [frame]


@pytest.mark.parametrize("bad, words", [
    ("frames.xyz", r"got the str 'frames.xyz'; read the file first"),
    (Path("frames.xyz"), r"got the PosixPath 'frames.xyz'; read the file first"),
    (3, "got int 3"),
    ([workloads.benzenes(1)[0], "x"], r"frames\[1\] is a str, not an ase.Atoms: 'x'"),
])
def test_what_is_not_frames_is_a_type_error(bad, words):
    with pytest.raises(TypeError, match=words):
        atoms_table(bad)


def test_errors_name_the_frame_after_an_empty_one():
    frames = [ase.Atoms(), *workloads.benzenes(2, seed=5)]
    frames[2].arrays["c_q"][3] = 0.0
    with pytest.raises(ValueError, match=r"frame 2: quaternion of atom 3 has zero norm"):
        atoms_table(frames)
    frames = [ase.Atoms(), *workloads.benzenes(2, seed=5)]
    frames[2].arrays["c_diameter[1]"][7] = np.inf
    with pytest.raises(ValueError, match=r"frame 2 atom 7 \(c_diameter / 2\) has \[inf"):
        atoms_table(frames)
    del frames[1].arrays["c_q"]
    with pytest.raises(ValueError, match=r"frame 1 has no 'c_q' array holding rotations; its arrays are"):
        atoms_table(frames)


def test_species_missing_from_the_dict_is_named():
    frames = workloads.benzenes(2, seed=6)
    with pytest.raises(ValueError, match=r"no entry for species H \(Z = 1\) of frame 0 atom \d+; keys: \[6\]"):
        atoms_table(frames, semiaxes={6: (1, 1, 1)})


def test_flat_arrays_missing_or_inconsistent_are_named():
    read = gather_frames(workloads.benzenes(1))
    with pytest.raises(ValueError, match=r"no 'c_q' array holding rotations; the arrays are \[\]"):
        table_from_arrays(read.n_atoms, read.positions, read.numbers, read.cells, read.pbc, {})
    with pytest.raises(ValueError, match=r"positions hold 12 atoms but n_atoms sums to 13"):
        table_from_arrays(read.n_atoms + 1, read.positions, read.numbers, read.cells, read.pbc, {})
    with pytest.raises(ValueError, match="semiaxes=.* was given with an AtomsTable"):
        as_atoms_table(atoms_table(workloads.benzenes(1)), semiaxes=(1, 1, 1))


@pytest.mark.parametrize("frames", [workloads.benzenes(3, seed=7), workloads.ellipsoids(5, seed=8, n_species=2)],
                         ids=["benzenes", "ellipsoids"])
def test_uniform_frames_path_equals_frame_by_frame_path(frames):
    from einsum_workbench.reference.frames import DIAMETER_KEYS

    fast = gather_frames(frames, rotation_key="c_q", diameter_keys=DIAMETER_KEYS)
    loop = gather_frames(frames, rotation_key="c_q", diameter_keys=DIAMETER_KEYS, progress=lambda it: it)
    for name in ("n_atoms", "positions", "numbers", "cells", "pbc", "rotations", "diameters"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(loop, name), err_msg=name)
        assert getattr(fast, name).dtype == getattr(loop, name).dtype, name
    assert fast.without_rotation == loop.without_rotation == []


def _odd_arrays(kind):
    """Benzene frames whose stored arrays take np.concatenate's path instead of the byte join."""
    frames = workloads.benzenes(3, seed=9)
    for k, frame in enumerate(frames):
        n = len(frame)
        if kind == "integer-diameters" and k == 1:  # same itemsize as float64: only the dtype check sees it
            frame.arrays["c_diameter[1]"] = np.full(n, 2, dtype=np.int64)
        if kind == "all-integer-diameters":  # joined as integers, then converted
            frame.arrays["c_diameter[2]"] = np.full(n, 3 + k, dtype=np.int64)
        if kind == "all-float32-positions":
            frame.arrays["positions"] = frame.arrays["positions"].astype(np.float32)
        if kind == "float32-quaternions" and k == 2:
            frame.arrays["c_q"] = frame.arrays["c_q"].astype(np.float32)
        if kind == "strided-quaternions" and k == 0:
            frame.arrays["c_q"] = np.asfortranarray(frame.arrays["c_q"])[:, :]
            frame.arrays["c_q"] = np.ascontiguousarray(frame.arrays["c_q"]).T.copy().T  # F-ordered, not C
        if kind == "matrices-two-shapes":
            matrices = rotations_from_quaternions(frame.arrays["c_q"])
            frame.arrays["c_q"] = matrices if k == 0 else matrices.reshape(n, 9)
    return frames


@pytest.mark.parametrize("kind", ["integer-diameters", "all-integer-diameters", "all-float32-positions",
                                  "float32-quaternions", "strided-quaternions", "matrices-two-shapes", "plain"])
def test_byte_join_gives_what_concatenate_gives(kind):
    """The uniform path joins the frames' bytes only where that is np.concatenate's result: the values and
    dtypes equal the frame-by-frame path's (which concatenates), and the arrays are writable."""
    from einsum_workbench.reference.frames import DIAMETER_KEYS

    frames = _odd_arrays(kind)
    fast = gather_frames(frames, rotation_key="c_q", diameter_keys=DIAMETER_KEYS)
    loop = gather_frames(frames, rotation_key="c_q", diameter_keys=DIAMETER_KEYS, progress=lambda it: it)
    for name in ("n_atoms", "positions", "numbers", "cells", "pbc", "rotations", "diameters"):
        a, b = getattr(fast, name), getattr(loop, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.flags.writeable, name
    if kind == "integer-diameters":
        assert fast.diameters[12:24, 0].tolist() == [2.0] * 12
    if kind == "all-integer-diameters":
        assert fast.diameters[:, 1].tolist() == [3.0] * 12 + [4.0] * 12 + [5.0] * 12

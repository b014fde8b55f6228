"""``reference.readers``: extxyz through libAtoms' C parser gives what ASE's reader gives.

On ``../shared/data/ellipsoids.xyz`` (skipped, naming the path, where it is
missing) and on a small file written here (per-atom diameters, several species
in upper and lower case, a triclinic cell, mixed pbc, a frame without a
lattice): the flat arrays and the ``ase.Atoms`` equal ASE's, value for value;
the fallback to ASE when the ``extxyz`` package is missing gives the same;
malformed input raises an error naming the frame.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from einsum_workbench.reference import readers
from einsum_workbench.reference.frames import DIAMETER_KEYS, atoms_table, gather_frames

PROPERTIES = "species:S:1:pos:R:3:c_q:R:4:c_diameter[1]:R:1:c_diameter[2]:R:1:c_diameter[3]:R:1"
SMALL = f"""3
Lattice="5.0 0.0 0.0 1.0 6.0 0.0 0.5 0.7 7.0" Properties={PROPERTIES} pbc="T F T" name=first step=1
C  0.1 0.2 0.3  1.0 0.0 0.0 0.0  2.0 2.0 1.0
H  1.1 1.2 1.3  0.7071067811865476 0.7071067811865476 0.0 0.0  1.5 1.5 0.5
X  2.1 2.2 2.3  0.5 0.5 0.5 0.5  3.0 3.0 1.0
2
Properties={PROPERTIES} step=2
O  0.0 0.0 0.0  1.0 0.0 0.0 0.0  2.0 2.0 1.0
C  1.0 0.0 0.25  0.0 1.0 0.0 0.0  2.0 2.5 1.0
1
Lattice="4 0 0 0 4 0 0 0 4" Properties={PROPERTIES}
si 0.5 0.5 0.5  0.9 0.1 0.3 0.2  1.0 2.0 3.0
2
Lattice="3.0 0.0 0.0 0.0 3.5 0.0 0.0 0.0 9.0" Properties={PROPERTIES} pbc="F F T"
Cl  0.25 0.5 1.0  0.1 0.2 0.3 0.4  1.0 1.0 1.0
C   1.0 -0.5 -1e-3  -0.5 0.5 -0.5 0.5  1.25 1.0 0.75
"""


QUOTED = SMALL.replace(f"Properties={PROPERTIES}", f'Properties="{PROPERTIES}"')


@pytest.fixture(scope="module", params=["unquoted", "quoted"])
def small_xyz(request, tmp_path_factory):
    """The small file with ``Properties=`` as ASE's writer leaves it (unquoted: ASE reads
    ``c_diameter1``, the C grammar rejects the brackets) and quoted (``c_diameter[1]``)."""
    path = tmp_path_factory.mktemp("readers") / f"small_{request.param}.xyz"
    path.write_text(SMALL if request.param == "unquoted" else QUOTED)
    return path


def _ase_frames(path, index=":"):
    import ase.io

    return ase.io.read(path, index=index, format="extxyz")


def assert_arrays_equal_ase(read, frames, *, diameters=True):
    """``read`` (ExtxyzArrays) holds exactly ASE's frames' arrays."""
    names = next((keys for keys in DIAMETER_KEYS if keys[0] in frames[0].arrays), None)
    ase_arrays = gather_frames(frames, rotation_key="c_q", diameter_keys=(names,) if diameters else ())
    np.testing.assert_array_equal(read.n_atoms, ase_arrays.n_atoms)
    np.testing.assert_array_equal(read.positions, ase_arrays.positions)
    np.testing.assert_array_equal(read.numbers, ase_arrays.numbers)
    np.testing.assert_array_equal(read.cells, ase_arrays.cells)
    np.testing.assert_array_equal(read.pbc, ase_arrays.pbc)
    np.testing.assert_array_equal(read.arrays["c_q"], ase_arrays.rotations)
    assert read.arrays["c_q"].shape == (len(read.positions), 4)
    if diameters:
        np.testing.assert_array_equal(np.stack([read.arrays[k] for k in names], axis=1), ase_arrays.diameters)
    assert sorted(read.arrays) == sorted(set(frames[0].arrays) - {"numbers", "positions"})


def assert_atoms_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert sorted(a.arrays) == sorted(b.arrays), k
        for name in b.arrays:
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=f"frame {k} {name}")
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.info.keys() == b.info.keys(), k
        for key in b.info:
            np.testing.assert_array_equal(a.info[key], b.info[key])


# ---------------------------------------------------------------- the real file


def test_ellipsoids_arrays_equal_ase(shared_data_path):
    frames = _ase_frames(shared_data_path)
    read = readers.read_arrays(shared_data_path)
    assert read.n_frames == len(frames) == 6826
    assert_arrays_equal_ase(read, frames, diameters=False)  # the file stores no diameters
    assert read.info[0] == frames[0].info


def test_ellipsoids_byte_range_equals_ase(shared_data_path):
    from einsum_workbench.featurize.trajectory import scan_xyz

    index = scan_xyz(shared_data_path)
    first, end = index.byte_range(3000, 3500)
    read = readers.read_arrays(shared_data_path, first_byte=first, end_byte=end, n_frames=500)
    assert_arrays_equal_ase(read, _ase_frames(shared_data_path, "3000:3500"), diameters=False)
    with pytest.raises(readers.Unsupported, match="end at byte"):
        readers.read_arrays(shared_data_path, first_byte=first, end_byte=end + 1, n_frames=500)


def test_ellipsoids_atoms_and_table_equal_ase(shared_data_path):
    frames = _ase_frames(shared_data_path, ":300")
    assert_atoms_equal(readers.read_frames_fast(shared_data_path, ":300"), frames)
    assert_atoms_equal(readers.read_frames_fast(shared_data_path, 7), [frames[7]])
    assert_atoms_equal(readers.read_frames_fast(shared_data_path, -1), _ase_frames(shared_data_path, "-1:"))
    table = readers.read_arrays(shared_data_path, n_frames=300).table(semiaxes=(4, 4, 0.5))
    reference = atoms_table(frames, semiaxes=(4, 4, 0.5))
    for name in ("n_atoms", "positions", "numbers", "rotations", "semiaxes", "cells", "pbc"):
        np.testing.assert_array_equal(getattr(table, name), getattr(reference, name), err_msg=name)


# ---------------------------------------------------------------- a small file with everything


def test_small_file_arrays_equal_ase(small_xyz):
    frames = _ase_frames(small_xyz)
    read = readers.read_arrays(small_xyz)
    assert_arrays_equal_ase(read, frames)
    # ASE's conventions, spelled out
    np.testing.assert_array_equal(read.numbers, [6, 1, 0, 8, 6, 14, 17, 6])  # X -> 0, "si" -> Si
    np.testing.assert_array_equal(read.pbc, [[True, False, True], [False] * 3, [True] * 3, [False, False, True]])
    np.testing.assert_array_equal(read.cells[0], [[5, 0, 0], [1, 6, 0], [0.5, 0.7, 7]])  # rows: lattice vectors
    np.testing.assert_array_equal(read.cells[1], np.zeros((3, 3)))  # no Lattice
    renamed = "unquoted" in small_xyz.name  # ASE drops the brackets of an unquoted Properties
    assert sorted(read.arrays) == sorted(["c_q", *(DIAMETER_KEYS[1] if renamed else DIAMETER_KEYS[0])])
    assert read.arrays[DIAMETER_KEYS[1 if renamed else 0][1]].shape == (8,)
    assert [info.get("step") for info in read.info] == [f.info.get("step") for f in frames]


def test_small_file_atoms_and_table_equal_ase(small_xyz):
    frames = _ase_frames(small_xyz)
    assert_atoms_equal(readers.read_frames_fast(small_xyz), frames)
    assert_atoms_equal(readers.read_frames_fast(small_xyz, "1:3"), frames[1:3])
    table, reference = readers.read_table(small_xyz), atoms_table(frames)
    for name in ("n_atoms", "positions", "numbers", "rotations", "semiaxes", "cells", "pbc"):
        np.testing.assert_array_equal(getattr(table, name), getattr(reference, name), err_msg=name)


def test_both_diameter_spellings_in_one_file(tmp_path):
    path = tmp_path / "mixed.xyz"
    path.write_text(SMALL + QUOTED)
    frames = _ase_frames(path)
    assert "c_diameter1" in frames[0].arrays and "c_diameter[1]" in frames[4].arrays
    table, reference = readers.read_arrays(path).table(), atoms_table(frames)
    np.testing.assert_array_equal(table.semiaxes, reference.semiaxes)
    np.testing.assert_array_equal(table.rotations, reference.rotations)


def test_frames_ase_hands_a_calculator_fall_back_equal(tmp_path):
    path = tmp_path / "forces.xyz"
    path.write_text("2\nProperties=species:S:1:pos:R:3:forces:R:3:c_q:R:4 energy=-1.5\n"
                    "H 0 0 0 0.1 0.2 0.3 1 0 0 0\nH 0 0 1 -0.1 -0.2 -0.3 1 0 0 0\n")
    frames = _ase_frames(path)
    ours = readers.read_frames_fast(path)
    assert_atoms_equal(ours, frames)
    np.testing.assert_array_equal(ours[0].get_forces(), frames[0].get_forces())
    read = readers.read_arrays(path)  # forces are not per-atom arrays, as in ASE
    assert sorted(read.arrays) == ["c_q"]


def test_frame_missing_an_array_is_named(tmp_path):
    path = tmp_path / "partial.xyz"
    path.write_text(f"1\nProperties={PROPERTIES}\nC 0 0 0 1 0 0 0 1 1 1\n"
                    "1\nProperties=species:S:1:pos:R:3\nC 0 0 1\n")
    read = readers.read_arrays(path)
    with pytest.raises(ValueError, match=r"frame 1 has no 'c_q' array .*\['numbers', 'positions'\]"):
        read.table()
    with pytest.raises(ValueError, match="frame 1 stores no diameters"):
        read.table(rotation_key=None)
    with pytest.raises(ValueError, match="frame 1 has no 'c_q' array"):
        atoms_table(_ase_frames(path))  # the same words as the ASE path


# ---------------------------------------------------------------- fallback and bad input


@pytest.fixture
def no_extxyz(monkeypatch):
    """The ``extxyz`` package cannot be imported."""
    monkeypatch.setitem(sys.modules, "extxyz", None)
    monkeypatch.setitem(sys.modules, "extxyz.cextxyz", None)


def test_package_missing_falls_back_to_ase_with_the_same_result(small_xyz, no_extxyz, caplog):
    frames = _ase_frames(small_xyz)
    with pytest.raises(readers.Unsupported, match="cannot be imported"):
        readers.read_arrays(small_xyz)
    with caplog.at_level(logging.DEBUG, logger=readers.__name__):
        ours = readers.read_frames_fast(small_xyz)
    assert "reading" in caplog.text and "cannot be imported" in caplog.text
    assert_atoms_equal(ours, frames)
    table, reference = readers.read_table(small_xyz), atoms_table(frames)
    np.testing.assert_array_equal(table.rotations, reference.rotations)
    np.testing.assert_array_equal(table.semiaxes, reference.semiaxes)


def test_other_formats_go_to_ase(tmp_path, small_xyz):
    import ase.io

    path = tmp_path / "frames.traj"
    ase.io.write(path, _ase_frames(small_xyz))
    ours = readers.read_frames_fast(path)
    np.testing.assert_array_equal(ours[3].positions, _ase_frames(small_xyz)[3].positions)


@pytest.mark.parametrize("bad", ["atom line", "atom count"])
def test_malformed_frame_is_named(tmp_path, bad):
    lines = QUOTED.splitlines(keepends=True)
    if bad == "atom line":
        lines[7] = "O  0.0 abc 0.0  1.0 0.0 0.0 0.0  2.0 2.0 1.0\n"  # frame 1, first atom
    else:
        lines[5] = "two\n"  # frame 1's atom count
    path = tmp_path / "bad.xyz"
    path.write_text("".join(lines))
    with pytest.raises(readers.Unsupported, match="frame 1 of the range"):
        readers.read_arrays(path)
    with pytest.raises(readers.FrameReadError, match="frame 1 of .*bad.xyz.* cannot be read") as info:
        readers.read_frames_fast(path)
    assert info.value.frame == 1
    with pytest.raises(readers.FrameReadError, match="frame 1 "):
        readers.read_table(path)


def test_frames_the_c_parser_must_not_see_go_to_ase(tmp_path):
    """A frame of 0 atoms (which crashes the C library), a frame cut short, a blank line
    between frames: ASE reads the file (or names the frame it cannot read)."""
    frame = "1\nProperties=species:S:1:pos:R:3:c_q:R:4\nC 0 0 0 1 0 0 0\n"
    empty = tmp_path / "empty.xyz"
    empty.write_text(frame + "0\nProperties=species:S:1:pos:R:3:c_q:R:4\n" + frame)
    with pytest.raises(readers.Unsupported, match="frame 1 of the range has 0 atoms"):
        readers.read_arrays(empty)
    assert_atoms_equal(readers.read_frames_fast(empty), _ase_frames(empty))
    cut = tmp_path / "cut.xyz"
    cut.write_text(frame + "2\nProperties=species:S:1:pos:R:3:c_q:R:4\nC 0 0 0 1 0 0 0\n")
    with pytest.raises(readers.Unsupported, match="frame 1 of the range is cut short"):
        readers.read_arrays(cut)
    with pytest.raises(readers.FrameReadError, match="frame 1 of .*cut.xyz.* cannot be read"):
        readers.read_frames_fast(cut)
    blank = tmp_path / "blank.xyz"
    blank.write_text(frame + "\n" + frame)
    with pytest.raises(readers.Unsupported, match="blank line before frame 1"):
        readers.read_arrays(blank)
    assert_atoms_equal(readers.read_frames_fast(blank), _ase_frames(blank))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.xyz"):
        readers.read_frames_fast(tmp_path / "nowhere.xyz")
    with pytest.raises(FileNotFoundError, match="nowhere.xyz"):
        readers.read_table(tmp_path / "nowhere.xyz")

"""The smooth cutoff in the pipeline: off by default (bit for bit), on through every entry point.

- ``smooth_cutoff=None`` gives exactly today's arrays (``centre_density``,
  with and without gradients);
- with a ``ShiftedCosine``, the pipeline's density of frames equals the
  reference expansion of every neighbour pair times ``f(|r_ij|)`` added
  into its (centre, neighbour species) row (float64: rtol 1e-6, atol 1e-8 x
  block max, ``reference.compare``), also where some neighbours have
  matrices that are not rotations (``any_matrix``, upstream's arithmetic);
- its gradient blocks equal central finite differences (step 1e-5
  angstrom / radian) of the smoothed density (relative 1e-6 of the largest
  derivative, as ``test_gradients.py``);
- a bad ``smooth_cutoff`` is named before the frames are read or neighbours searched.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.pipeline import ShiftedCosine
from einsum_workbench.pipeline.density import centre_density, density_of_frames, density_of_pairs, density_of_table
from einsum_workbench.pipeline.gradients import density_gradients_of_frames, density_gradients_of_table
from einsum_workbench.reference.compare import assert_coefficients_close
from einsum_workbench.reference.density import orthonormalize_density
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.workloads import two_species_cells

HYPERS = ExpansionHypers(lmax=3, radial_basis="gto", cutoff=4.0, sigma=1.2)
SMOOTH = ShiftedCosine(1.5)
STEP = 1e-5
RTOL = 1e-6


def frames():
    """Two small periodic frames, two species, needles and plates (several pairs in the shell (2.5, 4))."""
    return two_species_cells((5, 4), seed=3)


def shell_fraction(pairs):
    distance = np.linalg.norm(pairs.r_ij, axis=1)
    return np.mean((distance > HYPERS.cutoff - SMOOTH.width) & (distance < HYPERS.cutoff))


def explicit_density(r_ij, rotations, semiaxes, segment, n_segments, orthonormal, any_matrix=False):
    """The reference expansion of every pair times f(|r|), added into its row one pair at a time."""
    f = SMOOTH.values(np.linalg.norm(r_ij, axis=1), HYPERS.cutoff)
    rows = [np.zeros((n_segments, 2 * l + 1, n)) for l, n in enumerate(HYPERS.num_radial)]
    for rho, c in zip(rows, pairwise_ellip_expansion(r_ij, rotations, semiaxes, HYPERS, any_matrix=any_matrix)):
        np.add.at(rho, segment, c * f[:, None, None])
    return orthonormalize_density(rows, HYPERS) if orthonormal else rows


@pytest.mark.parametrize("gradients", [None, ["positions", "orientations"]], ids=["values", "gradients"])
def test_none_is_todays_result_bit_for_bit(gradients):
    today = centre_density(frames(), HYPERS, gradients=gradients, backend="numba_fused")
    off = centre_density(frames(), HYPERS, gradients=gradients, backend="numba_fused", smooth_cutoff=None)
    smooth = centre_density(frames(), HYPERS, gradients=gradients, backend="numba_fused", smooth_cutoff=SMOOTH)
    assert today.keys == off.keys
    differs = False
    for a, b, s in zip(today.blocks(), off.blocks(), smooth.blocks()):
        np.testing.assert_array_equal(a.values, b.values)
        differs |= s.values.shape != a.values.shape or not np.allclose(s.values, a.values)
        for parameter in gradients or ():
            np.testing.assert_array_equal(a.gradient(parameter).values, b.gradient(parameter).values)
            np.testing.assert_array_equal(a.gradient(parameter).samples.values, b.gradient(parameter).samples.values)
    assert differs, "the smooth cutoff changed nothing: the frames have no pair in the shell"


@pytest.mark.parametrize("backend", ["numba_fused", "numpy_einsum", "opt_einsum_planned"])
@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
def test_density_of_frames_is_the_smoothed_pair_sum(backend, orthonormal):
    from einsum_workbench.pipeline.layout import density_layout
    from einsum_workbench.reference.pairs import frames_to_pairs

    pairs = frames_to_pairs(frames(), HYPERS.cutoff)
    assert shell_fraction(pairs) > 0.2
    layout, segment = density_layout(pairs)
    expected = explicit_density(*pairs.arrays(), segment, layout.n_segments, orthonormal)
    by_pairs_layout, by_pairs = density_of_pairs(pairs, HYPERS, backend=backend, orthonormal=orthonormal,
                                                 smooth_cutoff=SMOOTH)
    by_frames_layout, by_frames = density_of_frames(frames(), HYPERS, backend=backend, orthonormal=orthonormal,
                                                    smooth_cutoff=SMOOTH)
    assert by_pairs_layout.n_segments == by_frames_layout.n_segments == layout.n_segments
    for actual, label in ((by_pairs, "density_of_pairs"), (by_frames, "density_of_frames")):
        assert_coefficients_close(actual, expected, HYPERS, np.float64, f"{backend} {label}", orthonormalised=False)


def test_matrices_that_are_not_rotations_are_smoothed_too():
    """``any_matrix``: the neighbours with a zero matrix go through upstream's arithmetic, times f as well."""
    from einsum_workbench.pipeline.grouping import group_pairs
    from einsum_workbench.reference.frames import as_atoms_table
    from einsum_workbench.reference.neighbours import neighbour_pairs

    table = as_atoms_table(frames())
    table.rotations[[1, 6]] = 0.0  # as upstream gets for frames stored without rotations
    _, density = density_of_table(table, HYPERS, any_matrix=True, smooth_cutoff=SMOOTH)
    frame, i, j, _, r_ij = neighbour_pairs(table.positions, table.n_atoms, table.cells, table.pbc, HYPERS.cutoff)
    grouped = group_pairs(frame, i, j, r_ij, table)
    expected = explicit_density(grouped.r_ij, grouped.rotations, grouped.semiaxes, grouped.segment,
                                grouped.layout.n_segments, True, any_matrix=True)
    assert_coefficients_close(density, expected, HYPERS, np.float64, "any_matrix", orthonormalised=False)


@pytest.mark.parametrize("backend", ["numba_fused", "torch_einsum"])
def test_gradient_blocks_equal_finite_differences_of_the_smoothed_density(backend):
    tensor = centre_density(frames(), HYPERS, backend=backend, gradients=["positions", "orientations"],
                            smooth_cutoff=SMOOTH)
    key_index = 1
    block = tensor.block(key_index)

    def values(fr):
        return centre_density(fr, HYPERS, smooth_cutoff=SMOOTH).block(key_index).values

    for parameter in ("positions", "orientations"):
        gradient = block.gradient(parameter)
        scale = np.abs(gradient.values).max()
        assert scale > 0
        for row, (sample, system, atom) in enumerate(gradient.samples.values):
            for axis in range(3):
                plus, minus = frames(), frames()
                for fr, h in ((plus, STEP), (minus, -STEP)):
                    if parameter == "positions":
                        fr[system].positions[atom, axis] += h
                    else:
                        w, x, y, z = fr[system].arrays["c_q"][atom]
                        turned = Rotation.from_rotvec(h * np.eye(3)[axis]) * Rotation.from_quat([x, y, z, w])
                        x, y, z, w = turned.as_quat()
                        fr[system].arrays["c_q"][atom] = [w, x, y, z]
                expected = (values(plus)[sample] - values(minus)[sample]) / (2 * STEP)
                np.testing.assert_allclose(gradient.values[row, axis], expected, rtol=RTOL, atol=RTOL * scale,
                                           err_msg=f"{backend} {parameter} sample {sample} atom {atom} axis {axis}")


CALLS = {
    "centre_density": lambda fr, table, **k: centre_density(fr, HYPERS, **k),
    "centre_density_gradients": lambda fr, table, **k: centre_density(fr, HYPERS, gradients=["positions"], **k),
    "density_of_frames": lambda fr, table, **k: density_of_frames(fr, HYPERS, **k),
    "density_of_table": lambda fr, table, **k: density_of_table(table, HYPERS, **k),
    "density_gradients_of_frames": lambda fr, table, **k: density_gradients_of_frames(fr, HYPERS, **k),
    "density_gradients_of_table": lambda fr, table, **k: density_gradients_of_table(table, HYPERS, **k),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("smooth_cutoff,error,words", [
    (1.5, TypeError, "smooth_cutoff must be None or a ShiftedCosine(width), got float: 1.5"),
    (ShiftedCosine(5.0), ValueError, "width = 5.0 angstrom is larger than the cutoff 4.0 angstrom"),
])
def test_bad_smooth_cutoff_is_named_before_any_work(call, smooth_cutoff, error, words, monkeypatch):
    import einsum_workbench.pipeline.density as pipeline_density
    import einsum_workbench.reference.frames as reference_frames
    import einsum_workbench.reference.neighbours as neighbours
    from einsum_workbench.reference.frames import as_atoms_table

    table = as_atoms_table(frames())

    def too_early(*args, **kwargs):
        raise AssertionError("frames were read or neighbours searched before the smooth cutoff was checked")

    for module, name in ((reference_frames, "as_atoms_table"), (pipeline_density, "neighbour_groups"),
                         (neighbours, "neighbour_pairs")):
        monkeypatch.setattr(module, name, too_early)
    with pytest.raises(error) as caught:
        CALLS[call](frames(), table, smooth_cutoff=smooth_cutoff)
    assert words in str(caught.value)

"""Forces, torques and stress (``pipeline.forces``) against finite differences of an energy.

The energy is a random linear functional of the centre density,
``E = sum_l <G_l, rho_l>`` with ``rho`` from
``pipeline.density.density_of_table`` (backend ``numpy_einsum``, the
orthonormalised density), on two small periodic benzene frames
(``reference.workloads.benzenes(2)``, cutoff 4, lmax 2, float64). Its
cotangent is ``G`` itself, so ``forces_of_table(table, hypers, G)`` must give

- forces: ``-dE/dx`` by moving each atom along each lab axis;
- torques: ``-dE/dtheta`` by turning each ellipsoid about each lab axis
  (exact rotations on the left of its matrix);
- the strain derivative: ``dE/deps`` by ``x -> x (I + eps)``,
  ``cell -> cell (I + eps)`` for each of the 9 components of eps, one frame
  at a time, orientations held; stress and virial from it.

Central differences with a step of 1e-5 (angstrom, radian, strain): their
error is about 1e-9 relative, the tolerance ``rtol = 1e-6`` with ``atol =
1e-6 x`` the largest |value| of the quantity. The hard cutoff makes E jump
when a pair crosses it, so the test first asserts that no pair sits within
1e-3 angstrom of the cutoff (the frames are seeded: this is a fact of the
data, checked, not assumed).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from einsum_workbench.kernels.registry import BACKWARD_VARIANTS
from einsum_workbench.pipeline.density import density_of_table
from einsum_workbench.pipeline.forces import (
    AtomForces,
    forces_of_table,
    pair_forces,
    strain_derivative,
    stress_and_virial,
)
from einsum_workbench.pipeline.layout import table_pairs
from einsum_workbench.reference.frames import as_atoms_table
from einsum_workbench.reference.gradients import small_rotations
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.workloads import benzenes

HYPERS = ExpansionHypers(2, "gto", cutoff=4.0, sigma=1.5)
STEP = 1e-5
RTOL = 1e-6
ATOL_SCALE = 1e-6


@functools.lru_cache(maxsize=1)
def _table():
    return as_atoms_table(benzenes(2))


@functools.lru_cache(maxsize=1)
def _cotangent():
    layout, density = density_of_table(_table(), HYPERS, backend="numpy_einsum", orthonormal=True)
    rng = np.random.default_rng(7)
    return [rng.normal(size=rho.shape) for rho in density]


def _energy(table) -> float:
    layout, density = density_of_table(table, HYPERS, backend="numpy_einsum", orthonormal=True)
    g = _cotangent()
    assert [rho.shape for rho in density] == [x.shape for x in g], "a pair crossed the cutoff under the step"
    return float(sum(np.vdot(a, b) for a, b in zip(g, density)))


def _moved(table, **arrays):
    return dataclasses.replace(table, **arrays)


def _close(actual, expected, label):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max(),
                               err_msg=label)


@pytest.fixture(scope="module", params=[v.name for v in BACKWARD_VARIANTS])
def result(request) -> AtomForces:
    variant = next(v for v in BACKWARD_VARIANTS if v.name == request.param)
    reason = variant.unavailable_reason()
    if reason is not None:
        pytest.skip(f"backward variant {variant.name} not run on this machine: {reason}")
    return forces_of_table(_table(), HYPERS, _cotangent(), backend=variant.name, orthonormal=True)


def test_no_pair_sits_at_the_cutoff():
    pairs = table_pairs(_table(), HYPERS.cutoff)
    distance = np.linalg.norm(pairs.r_ij, axis=1)
    assert len(distance) > 100 and np.unique(pairs.frame).tolist() == [0, 1]
    assert np.min(np.abs(distance - HYPERS.cutoff)) > 1e-3


def test_forces_are_minus_the_energy_gradient(result):
    table = _table()
    expected = np.empty_like(table.positions)
    for atom in range(len(table.positions)):
        for alpha in range(3):
            energies = []
            for sign in (1.0, -1.0):
                positions = table.positions.copy()
                positions[atom, alpha] += sign * STEP
                energies.append(_energy(_moved(table, positions=positions)))
            expected[atom, alpha] = -(energies[0] - energies[1]) / (2 * STEP)
    assert np.abs(expected).max() > 1e-3  # a real signal, not two zeros agreeing
    _close(result.forces, expected, "forces")
    # translation invariance per frame: the forces of each frame sum to zero
    for f, (start, n) in enumerate(zip(table.first_atom, table.n_atoms)):
        np.testing.assert_allclose(result.forces[start: start + n].sum(axis=0), 0.0,
                                   atol=1e-10 * np.abs(result.forces).max(), err_msg=f"frame {f}")


def test_torques_are_minus_the_energy_derivative_along_rotations(result):
    table = _table()
    turns = [small_rotations(sign * STEP) for sign in (1.0, -1.0)]
    expected = np.empty_like(table.positions)
    for atom in range(len(table.positions)):
        for alpha in range(3):
            energies = []
            for turn in turns:
                rotations = table.rotations.copy()
                rotations[atom] = turn[alpha] @ table.rotations[atom]
                energies.append(_energy(_moved(table, rotations=rotations)))
            expected[atom, alpha] = -(energies[0] - energies[1]) / (2 * STEP)
    assert np.abs(expected).max() > 1e-3
    _close(result.torques, expected, "torques")


def test_strain_derivative_stress_and_virial(result):
    table = _table()
    expected = np.empty((len(table.n_atoms), 3, 3))
    for f, (start, n) in enumerate(zip(table.first_atom, table.n_atoms)):
        for a in range(3):
            for b in range(3):
                energies = []
                for sign in (1.0, -1.0):
                    deformation = np.eye(3)
                    deformation[a, b] += sign * STEP
                    positions, cells = table.positions.copy(), table.cells.copy()
                    positions[start: start + n] = positions[start: start + n] @ deformation
                    cells[f] = cells[f] @ deformation
                    energies.append(_energy(_moved(table, positions=positions, cells=cells)))
                expected[f, a, b] = (energies[0] - energies[1]) / (2 * STEP)
    assert np.abs(expected).max() > 1e-3
    _close(result.strain_derivative, expected, "dE/deps")
    volume = np.abs(np.linalg.det(table.cells))
    _close(result.stress, expected / volume[:, None, None], "stress")
    _close(result.virial, -expected, "virial")


def test_self_pairs_add_nothing_to_forces_or_strain():
    # two pairs of atom 0 with itself (r = 0) and one real pair 1 -> 2
    g = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [0.25, 0.5, -0.75]])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    centre, neighbour = np.array([0, 0, 1]), np.array([0, 0, 2])
    forces, torques = pair_forces(g, t, centre, neighbour, 3)
    np.testing.assert_array_equal(forces, [[0, 0, 0], g[2], -g[2]])
    np.testing.assert_array_equal(torques, [-(t[0] + t[1]), [0, 0, 0], -t[2]])
    r = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    strain = strain_derivative(r, g, np.array([0, 0, 0]), 1)
    np.testing.assert_allclose(strain[0], np.outer(r[2], g[2]))


def test_stress_is_nan_without_a_volume():
    strain = np.ones((2, 3, 3))
    cells = np.stack([2.0 * np.eye(3), np.zeros((3, 3))])
    stress, virial = stress_and_virial(strain, cells, np.array([[True] * 3, [False] * 3]))
    np.testing.assert_allclose(stress[0], strain[0] / 8.0)
    assert np.isnan(stress[1]).all()
    np.testing.assert_array_equal(virial, -strain)
    with pytest.raises(ValueError, match="frame 1 is periodic"):
        stress_and_virial(strain, cells, np.ones((2, 3), dtype=bool))


def test_bad_input_is_named():
    g = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"neighbour of pair 1 is 5"):
        pair_forces(g, g, np.array([0, 1]), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match=r"dE_dtheta must have shape \(2, 3\)"):
        pair_forces(g, np.zeros((2, 2)), np.array([0, 1]), np.array([0, 1]), 3)
    bad = g.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="dE_dr of pair 1 is not finite"):
        strain_derivative(g, bad, np.array([0, 0]), 1)
    with pytest.raises(ValueError, match=r"frame of pair 0 is 3"):
        strain_derivative(g, g, np.array([3, 0]), 1)
    with pytest.raises(ValueError, match=r"cotangent for l = 1 must have shape"):
        wrong = [np.zeros_like(x) for x in _cotangent()]
        wrong[1] = wrong[1][:, :2]
        forces_of_table(_table(), HYPERS, wrong, backend="reference")


def test_voigt_stress_is_the_symmetric_part_in_ases_order():
    from einsum_workbench.pipeline.forces import voigt_stress

    stress = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(voigt_stress(stress), [0.0, 4.0, 8.0, 6.0, 4.0, 2.0])
    np.testing.assert_array_equal(voigt_stress(np.stack([stress, -stress])), [voigt_stress(stress), -voigt_stress(stress)])
    with pytest.raises(ValueError, match=r"shape \(3, 3\) or \(F, 3, 3\), got \(6,\)"):
        voigt_stress(np.zeros(6))


def test_each_pair_knows_its_centre_and_frame():
    from einsum_workbench.pipeline.forces import force_pairs

    table = _table()
    pairs = force_pairs(table, HYPERS.cutoff)
    reference = table_pairs(table, HYPERS.cutoff)
    # the neighbour list's pairs in segment order: the same (centre, neighbour, segment, frame, r) rows, sorted
    grouped = np.column_stack([pairs.centre, pairs.grouped.neighbour, pairs.grouped.segment, pairs.frame,
                               pairs.grouped.r_ij])
    listed = np.column_stack([reference.centre, reference.neighbour, reference.segment, reference.frame,
                              reference.r_ij])
    np.testing.assert_array_equal(grouped[np.lexsort(grouped.T[::-1])], listed[np.lexsort(listed.T[::-1])])
    assert np.all(np.diff(pairs.grouped.segment) >= 0)


def test_a_missing_backward_variant_is_named():
    with pytest.raises(KeyError, match=r"no backward variant 'numpy_einsum' is registered \(registered: reference"):
        forces_of_table(_table(), HYPERS, _cotangent(), backend="numpy_einsum")


def test_energy_tensormap_holds_the_results_in_featomic_convention():
    from einsum_workbench.pipeline.forces import AtomForces, energy_tensormap

    rng = np.random.default_rng(5)
    n_atoms = np.array([2, 3])
    forces, torques = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    strain = rng.normal(size=(2, 3, 3))
    result = AtomForces(forces=forces, torques=torques, strain_derivative=strain, virial=-strain,
                        stress=np.full((2, 3, 3), np.nan))
    tensor = energy_tensormap([1.5, -2.0], result, n_atoms)
    block = tensor.block(0)
    np.testing.assert_array_equal(block.values[:, 0], [1.5, -2.0])
    positions = block.gradient("positions")
    assert positions.samples.names == ["sample", "system", "atom"]
    np.testing.assert_array_equal(positions.samples.values, [[0, 0, 0], [0, 0, 1], [1, 1, 0], [1, 1, 1], [1, 1, 2]])
    np.testing.assert_array_equal(positions.values[..., 0], -forces)
    np.testing.assert_array_equal(block.gradient("orientations").values[..., 0], -torques)
    strain_block = block.gradient("strain")
    assert strain_block.samples.names == ["sample"]
    assert [c.names for c in strain_block.components] == [["xyz_1"], ["xyz_2"]]
    np.testing.assert_array_equal(strain_block.values[..., 0], strain)
    with pytest.raises(ValueError, match="n_atoms sums to 4 atoms but the forces have 5 rows"):
        energy_tensormap([1.5, -2.0], result, [2, 2])
    with pytest.raises(ValueError, match="energy of 3 frames"):
        energy_tensormap([1.5, -2.0, 0.0], result, n_atoms)

"""The power spectrum's backward pass (``pipeline.power_spectrum_backward``) against finite differences.

Frames: two periodic benzene frames (``reference.workloads.benzenes(2)``:
C and H, so each centre species has two neighbour species and the block
layout matters), cutoff 4, lmax 2, GTO, float64, orthonormalised. The energy
is a random linear functional ``E = <H, PowerSpectrum.values>`` of the
per-structure power spectrum.

- ``dE/drho`` on the density rows: its contraction with a random direction
  V against the central difference of E along ``rho + h V`` (E recomputed
  from the perturbed density with the pipeline's own
  ``species_power_spectrum`` and ``mean_over_centres``), step 1e-4 (E is
  quadratic in rho, so the central difference is exact up to rounding):
  ``rtol = 1e-8``;
- the per-centre features' ``dE/drho`` (:func:`centre_power_spectrum_backward`)
  the same way, with a random cotangent per centre species;
- forces and torques through ``forces_of_table`` with that cotangent,
  against moving atoms and turning ellipsoids in ``power_spectrum``
  itself (a few atoms), step 1e-5: ``rtol = 1e-6``, ``atol = 1e-6 x`` the
  largest |value|.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from einsum_workbench.pipeline.density import density_blocks, density_of_table
from einsum_workbench.pipeline.forces import forces_of_table
from einsum_workbench.pipeline.power_spectrum import mean_over_centres, power_spectrum, species_power_spectrum
from einsum_workbench.pipeline.power_spectrum_backward import (
    centre_power_spectrum_backward,
    density_cotangent_from_blocks,
    power_spectrum_block_backward,
    structure_power_spectrum_backward,
)
from einsum_workbench.reference.frames import as_atoms_table
from einsum_workbench.reference.gradients import small_rotations
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.workloads import benzenes

HYPERS = ExpansionHypers(2, "gto", cutoff=4.0, sigma=1.5)
ATOMS = (0, 5, 7, 13, 20)  # C and H atoms of both frames


@functools.lru_cache(maxsize=1)
def _table():
    return as_atoms_table(benzenes(2))


@functools.lru_cache(maxsize=1)
def _setup():
    table = _table()
    layout, density = density_of_table(table, HYPERS, backend="numpy_einsum", orthonormal=True)
    n_features = power_spectrum(table, HYPERS, backend="numpy_einsum").values.shape[1]
    h = np.random.default_rng(3).normal(size=(layout.n_frames, n_features))
    return layout, density, h


def _energy_of_density(layout, density, h) -> float:
    blocks = density_blocks(layout, density, property_layout="labelled")
    columns = []
    for c in range(len(layout.centre_types)):
        values, _ = species_power_spectrum(layout, blocks, c)
        columns.append(mean_over_centres(values, layout.samples[c][:, 0], layout.n_frames)[0])
    return float(np.vdot(h, np.hstack(columns)))


def _energy_of_table(table) -> float:
    return float(np.vdot(_setup()[2], power_spectrum(table, HYPERS, backend="numpy_einsum").values))


def test_density_cotangent_matches_a_directional_difference():
    layout, density, h = _setup()
    assert len(layout.centre_types) == 2 and all(len(t) == 2 for t in layout.neighbour_types)
    # the pipeline's own power spectrum is what the energy differentiates
    np.testing.assert_allclose(_energy_of_density(layout, density, h), _energy_of_table(_table()), rtol=1e-12)
    grad = structure_power_spectrum_backward(layout, density, h)
    assert [g.shape for g in grad] == [rho.shape for rho in density]
    rng = np.random.default_rng(4)
    direction = [rng.normal(size=rho.shape) for rho in density]
    step = 1e-4
    plus = _energy_of_density(layout, [r + step * v for r, v in zip(density, direction)], h)
    minus = _energy_of_density(layout, [r - step * v for r, v in zip(density, direction)], h)
    expected = (plus - minus) / (2 * step)
    actual = sum(np.vdot(g, v) for g, v in zip(grad, direction))
    assert abs(expected) > 1e-3
    assert actual == pytest.approx(expected, rel=1e-8)


def _per_centre_energy(layout, density, cotangents) -> float:
    blocks = density_blocks(layout, density, property_layout="labelled")
    return float(sum(np.vdot(g, species_power_spectrum(layout, blocks, c)[0]) for c, g in enumerate(cotangents)))


def test_per_centre_cotangent_matches_a_directional_difference():
    layout, density, _ = _setup()
    blocks = density_blocks(layout, density, property_layout="labelled")
    rng = np.random.default_rng(11)
    cotangents = [rng.normal(size=species_power_spectrum(layout, blocks, c)[0].shape)
                  for c in range(len(layout.centre_types))]
    grad = centre_power_spectrum_backward(layout, density, cotangents)
    direction = [rng.normal(size=rho.shape) for rho in density]
    step = 1e-4
    plus = _per_centre_energy(layout, [r + step * v for r, v in zip(density, direction)], cotangents)
    minus = _per_centre_energy(layout, [r - step * v for r, v in zip(density, direction)], cotangents)
    expected = (plus - minus) / (2 * step)
    actual = sum(float(np.vdot(g, v)) for g, v in zip(grad, direction))
    np.testing.assert_allclose(actual, expected, rtol=1e-8)
    with pytest.raises(ValueError, match=r"one per centre species \[1, 6\] \(2\), got 1"):
        centre_power_spectrum_backward(layout, density, cotangents[:1])
    with pytest.raises(ValueError, match=r"centre species 6: .*must have shape"):
        centre_power_spectrum_backward(layout, density, [cotangents[0], cotangents[1][:, :3]])


def test_block_layouts_are_undone_exactly():
    layout, density, _ = _setup()
    for property_layout in ("labelled", "upstream"):
        blocks = density_blocks(layout, density, property_layout=property_layout)
        back = density_cotangent_from_blocks(layout, blocks, property_layout)
        for rho, b in zip(density, back):
            np.testing.assert_array_equal(b, rho)


def test_forces_and_torques_of_the_power_spectrum_energy():
    table = _table()
    layout, density, h = _setup()
    result = forces_of_table(table, HYPERS, structure_power_spectrum_backward(layout, density, h),
                             backend="torch_einsum" if _torch() else "reference", orthonormal=True)
    step = 1e-5
    turns = [small_rotations(s * step) for s in (1.0, -1.0)]
    forces, torques = np.empty((len(ATOMS), 3)), np.empty((len(ATOMS), 3))
    for k, atom in enumerate(ATOMS):
        for alpha in range(3):
            e_move, e_turn = [], []
            for sign, turn in zip((1.0, -1.0), turns):
                positions = table.positions.copy()
                positions[atom, alpha] += sign * step
                e_move.append(_energy_of_table(dataclasses.replace(table, positions=positions)))
                rotations = table.rotations.copy()
                rotations[atom] = turn[alpha] @ table.rotations[atom]
                e_turn.append(_energy_of_table(dataclasses.replace(table, rotations=rotations)))
            forces[k, alpha] = -(e_move[0] - e_move[1]) / (2 * step)
            torques[k, alpha] = -(e_turn[0] - e_turn[1]) / (2 * step)
    for label, actual, expected in (("forces", result.forces[list(ATOMS)], forces),
                                    ("torques", result.torques[list(ATOMS)], torques)):
        assert np.abs(expected).max() > 1e-3, label
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max(), err_msg=label)


def _torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_bad_cotangent_shapes_are_named():
    layout, density, h = _setup()
    with pytest.raises(ValueError, match=r"power-spectrum cotangent must have shape \(2, \d+\).*got \(2, 3\)"):
        structure_power_spectrum_backward(layout, density, h[:, :3])
    block = np.zeros((4, 3, 2))
    with pytest.raises(ValueError, match=r"cotangent for l = 1 must have shape \(4, 4\) or \(4, 2, 2\)"):
        power_spectrum_block_backward(block, np.zeros((4, 5)), 1)

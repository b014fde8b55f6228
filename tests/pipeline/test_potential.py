"""A model on the power spectrum without Jacobians: ``power_spectrum(weights=...)``, Torch, and NVE.

Frames: two small periodic frames of two species (C and O; needles and
plates at random orientations; cells of about 6-7 A, so an atom sees periodic
images of itself), GTO, lmax 3, cutoff 4, sigma 1.2, float64,
orthonormalised. The Jacobian path is ``power_spectrum(..., gradients=[...])``
(the ``numba_fused`` gradient variant writes every pair's derivatives) with
the model's weights contracted afterwards; the backward path must give the
same forces and torques to ``rtol = 1e-9`` (both are exact derivatives: they
differ by rounding, and by about 1e-9 relative for the ``reference``
backward, whose derivatives are central differences; its tolerance is
``rtol = 1e-6``).

The molecular-dynamics test runs ASE's velocity Verlet on spherical
particles through :class:`~einsum_workbench.pipeline.calculator.AniSOAPCalculator`
(its docstring states the numbers).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.pipeline.power_spectrum import power_spectrum
from einsum_workbench.reference.cutoff import ShiftedCosine
from einsum_workbench.reference.frames import atoms_table
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.workloads import two_species_cells

HYPERS = ExpansionHypers(lmax=3, radial_basis="gto", cutoff=4.0, sigma=1.2)
#: The density variant everywhere (its values do not depend on the backward variant under test).
DENSITY = "numba_fused"


def _rtol(name: str) -> float:
    return 1e-6 if name == "reference" else 1e-9


def periodic_frames():
    """Two periodic frames (5 and 4 atoms), C and O, random cells, orientations and semi-axes."""
    return two_species_cells((5, 4), seed=3)


@functools.lru_cache(maxsize=1)
def jacobian_path():
    """(values, per-atom position and orientation Jacobians (N, 3, F) per frame, frame of each atom)."""
    frames = periodic_frames()
    result = power_spectrum(frames, HYPERS, backend=DENSITY, gradients=["positions", "orientations"])
    table = atoms_table(frames)
    n_atoms, n_features = len(table.numbers), result.values.shape[1]
    jacobians = {}
    for parameter, grad in result.gradients.items():
        full = np.zeros((len(table.n_atoms), n_atoms, 3, n_features))
        full[grad.samples[:, 0], table.first_atom[grad.samples[:, 0]] + grad.samples[:, 1]] = grad.values
        jacobians[parameter] = full  # (frame, atom, axis, feature): d values[frame] / d atom
    return result.values, jacobians


def _weights(n_features: int) -> np.ndarray:
    return np.random.default_rng(11).normal(size=n_features)


def test_weights_path_equals_the_jacobian_path(backward):
    values, jacobians = jacobian_path()
    w = _weights(values.shape[1])
    result = power_spectrum(periodic_frames(), HYPERS, backend=DENSITY, backward_backend=backward, weights=w)
    # the values are the plain path's, bit for bit (same pairs, same density call)
    np.testing.assert_array_equal(result.values, power_spectrum(periodic_frames(), HYPERS, backend=DENSITY).values)
    np.testing.assert_allclose(result.energy, result.values @ w, rtol=1e-14)
    expected_forces = -np.einsum("faxk,k->ax", jacobians["positions"], w)
    expected_torques = -np.einsum("faxk,k->ax", jacobians["orientations"], w)
    assert np.abs(expected_forces).max() > 1e-3 and np.abs(expected_torques).max() > 1e-3
    for got, expected, what in ((result.forces.forces, expected_forces, "forces"),
                                (result.forces.torques, expected_torques, "torques")):
        np.testing.assert_allclose(got, expected, rtol=_rtol(backward), atol=_rtol(backward) * np.abs(expected).max(),
                                   err_msg=what)
    assert np.isfinite(result.forces.stress).all() and result.forces.stress.shape == (2, 3, 3)


def test_cotangent_path_gives_each_frame_its_own_model(backward):
    values, jacobians = jacobian_path()
    h = np.random.default_rng(12).normal(size=values.shape)  # dE/dvalues, a different model per frame
    result = power_spectrum(periodic_frames(), HYPERS, backend=DENSITY, backward_backend=backward, cotangent=h)
    assert result.energy is None
    expected = -np.einsum("faxk,fk->ax", jacobians["positions"], h)
    np.testing.assert_allclose(result.forces.forces, expected, rtol=_rtol(backward),
                               atol=_rtol(backward) * np.abs(expected).max())


def test_model_inputs_are_checked():
    frames = periodic_frames()
    n_features = jacobian_path()[0].shape[1]
    with pytest.raises(ValueError, match=rf"weights must have shape \({n_features},\).*got \(3,\)"):
        power_spectrum(frames, HYPERS, backend=DENSITY, backward_backend="torch_einsum", weights=np.ones(3))
    with pytest.raises(ValueError, match=rf"cotangent must have shape \(2, {n_features}\)"):
        power_spectrum(frames, HYPERS, backend=DENSITY, backward_backend="torch_einsum",
                       cotangent=np.ones(n_features))
    with pytest.raises(ValueError, match="not both"):
        power_spectrum(frames, HYPERS, backend=DENSITY, backward_backend="torch_einsum",
                       weights=np.ones(n_features), cotangent=np.ones((2, n_features)))
    with pytest.raises(ValueError, match="Jacobian"):
        power_spectrum(frames, HYPERS, backend=DENSITY, weights=np.ones(n_features), gradients=["positions"])
    with pytest.raises(KeyError, match=r"no backward variant 'numpy_einsum'.*registered: reference"):
        power_spectrum(frames, HYPERS, backend="numpy_einsum", weights=np.ones(n_features))
    with pytest.raises(TypeError, match="ShiftedCosine"):
        power_spectrum(frames, HYPERS, backend=DENSITY, backward_backend="torch_einsum",
                       weights=np.ones(n_features), smooth_cutoff=1.0)


def test_torch_power_spectrum_backward_equals_the_jacobian_path(backward):
    torch = pytest.importorskip("torch")
    from einsum_workbench.pipeline.torch_features import TorchPowerSpectrum, torques_from_rotation_gradient

    values, jacobians = jacobian_path()
    table = atoms_table(periodic_frames())
    features = TorchPowerSpectrum(table, HYPERS, backend=DENSITY, backward_backend=backward)
    positions = torch.tensor(table.positions, requires_grad=True)
    rotations = torch.tensor(table.rotations, requires_grad=True)
    x = features(positions, rotations)
    np.testing.assert_allclose(x.detach().numpy(), values, rtol=1e-12, atol=1e-14)
    w = torch.from_numpy(_weights(values.shape[1]))
    energy = torch.tanh(x @ w / 10).sum()  # a non-linear model: dE/dx differs per frame
    energy.backward()
    outer = (1 - torch.tanh(x @ w / 10) ** 2).detach().numpy() / 10  # (frames,)
    dE_dx = outer[:, None] * w.numpy()[None]
    for parameter, got in (("positions", positions.grad.numpy()),
                           ("orientations", torques_from_rotation_gradient(rotations.detach(), rotations.grad).numpy())):
        expected = np.einsum("faxk,fk->ax", jacobians[parameter], dE_dx)
        assert np.abs(expected).max() > 1e-4
        np.testing.assert_allclose(got, expected, rtol=_rtol(backward), atol=_rtol(backward) * np.abs(expected).max(),
                                   err_msg=parameter)


def test_rotation_gradient_gives_back_the_derivative_along_rotations():
    torch = pytest.importorskip("torch")
    from einsum_workbench.pipeline.torch_features import GENERATORS, rotation_gradient, torques_from_rotation_gradient

    rng = np.random.default_rng(5)
    rotations = Rotation.random(7, random_state=rng).as_matrix()
    t = rng.normal(size=(7, 3))
    g = rotation_gradient(rotations, t)
    back = torques_from_rotation_gradient(torch.from_numpy(rotations), torch.from_numpy(g)).numpy()
    np.testing.assert_allclose(back, t, rtol=1e-14, atol=1e-14)
    # G is tangent: R^T G is antisymmetric, so it moves R along rotations only
    body = np.einsum("nba,nbc->nac", rotations, g)
    np.testing.assert_allclose(body, -np.swapaxes(body, 1, 2), atol=1e-14)
    assert GENERATORS.shape == (3, 3, 3)


def test_torch_density_function_holds_no_pair_jacobian():
    """The autograd graph of ``energy`` holds the pair arrays and the density, nothing per pair
    and coefficient: what the backward saves is ``r_ij`` (P, 3) and the rotations (P, 3, 3)."""
    torch = pytest.importorskip("torch")
    from einsum_workbench.pipeline.torch_features import TorchPowerSpectrum

    table = atoms_table(periodic_frames())
    features = TorchPowerSpectrum(table, HYPERS, backend=DENSITY, backward_backend="torch_einsum")
    positions = torch.tensor(table.positions, requires_grad=True)
    rotations = torch.tensor(table.rotations, requires_grad=True)
    density = features.density(positions, rotations)
    node = density[0].grad_fn
    r_ij, pair_rotations = node.pair_arrays
    n_pairs = len(features.pairs.segment)
    assert r_ij.shape == (n_pairs, 3) and pair_rotations.shape == (n_pairs, 3, 3)
    assert not node.saved_tensors  # nothing else saved: no coefficients, no Jacobian


def _nve_system(n_atoms: int = 32, box: float = 8.0, seed: int = 0):
    """Spherical particles (semi-axes 0.5 A), C and H alternating, on a jittered 4 x 4 x 4 grid
    (no two closer than ~1.4 A) of a cubic periodic box, masses drawn in [8, 16] amu."""
    import ase

    rng = np.random.default_rng(seed)
    k = 4
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    positions = (grid + 0.5 + rng.uniform(-0.15, 0.15, (n_atoms, 3))) * box / k
    atoms = ase.Atoms(["C", "H"] * (n_atoms // 2), positions=positions, cell=[box] * 3, pbc=True)
    atoms.set_masses(rng.uniform(8.0, 16.0, n_atoms))
    return atoms, rng


def _nve_drift(*, timestep_fs: float, smooth: bool, steps: int) -> float:
    """max_t |E_total(t) - E_total(0)| (eV) of a velocity-Verlet run from 300 K."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from einsum_workbench.pipeline.calculator import AniSOAPCalculator, species_properties

    hypers = ExpansionHypers(lmax=2, radial_basis="gto", cutoff=4.0, sigma=1.5)
    atoms, rng = _nve_system()
    weights = 0.1 * rng.normal(size=len(species_properties([1, 6], hypers)))
    atoms.calc = AniSOAPCalculator(hypers, weights, [1, 6], backend=DENSITY, semiaxes=(0.5, 0.5, 0.5),
                                   rotation_key=None, smooth_cutoff=ShiftedCosine(1.5) if smooth else None)
    thermalize_momenta(atoms, temperature_K=300, rng=rng)
    Stationary(atoms)
    totals = []
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dynamics.attach(lambda: totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy()), interval=1)
    dynamics.run(steps)
    assert len(totals) == steps + 1
    return float(np.max(np.abs(np.asarray(totals) - totals[0])))


def test_nve_energy_is_conserved_with_the_smooth_cutoff():
    """32 spherical particles (C and H, semi-axes 0.5 A, masses 8-16 amu) in a periodic 8 A box,
    ``E = w . x`` with w ~ 0.1 N(0, 1) on the power spectrum (lmax 2, GTO sigma 1.5, cutoff 4 A,
    ``ShiftedCosine(1.5)``), velocity Verlet from 300 K (kinetic energy ~1.5 eV, potential
    energy varying by ~0.02 eV), 200 steps of 1 fs.

    Measured (2-core AMD EPYC VM, float64; the same to 4 digits with the ``numba_fused`` and
    ``torch_einsum`` backward variants): max |E_total(t) - E_total(0)| = 1.1e-6 eV with the smooth
    cutoff; 2.8e-2 eV with the hard cutoff (pairs crossing 4 A are jumps the forces do not see);
    with the smooth cutoff and steps of 2, 4 and 8 fs: 5.2e-6, 1.7e-5 and 1.5e-4 eV (Verlet's
    error grows as dt^2). The bound, 1e-5 eV, is 9x the measured drift (room for rounding and
    other variants), 2,800x below the hard cutoff's and 15x below 8 fs steps': the test requires
    the hard-cutoff run above 10x the bound and the 8 fs run above 3x, so that a force that is
    not minus the energy's gradient (a wrong sign, a missing cutoff term) fails and the bound is
    seen to separate good from bad runs.
    """
    bound, steps = 1e-5, 200
    drift = _nve_drift(timestep_fs=1.0, smooth=True, steps=steps)
    assert drift < bound, f"energy drift {drift:.2e} eV over {steps} steps of 1 fs"
    hard = _nve_drift(timestep_fs=1.0, smooth=False, steps=steps)
    assert hard > 10 * bound, f"the hard cutoff drifted only {hard:.2e} eV: the test would not see jumps"
    long_steps = _nve_drift(timestep_fs=8.0, smooth=True, steps=steps)
    assert long_steps > 3 * bound, f"8 fs steps drifted only {long_steps:.2e} eV: the bound is not tight"

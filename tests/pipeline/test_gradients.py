"""Gradients in the outputs users get: density and power spectrum, Torch, a Gay-Berne model.

Every derivative here is checked against central finite differences of the
pipeline's own values (the density kernels, not the gradient kernels), so a
wrong chain rule, sign or bookkeeping fails: relative 1e-6 of the largest
derivative (steps 1e-5 angstrom and 1e-5 radian; the FD error is ~1e-9).

The two-particle Gay-Berne frames are the first 150 of AniSOAP's
``benchmarks/two_particle_gb/random_rotations.xyz`` (tests/data/two_particle_gb/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.kernels.registry import GRADIENT_VARIANTS
from einsum_workbench.pipeline.density import centre_density
from einsum_workbench.pipeline.power_spectrum import power_spectrum
from einsum_workbench.reference.hypers import ExpansionHypers

GB_FILE = Path(__file__).resolve().parents[1] / "data" / "two_particle_gb" / "random_rotations_150.xyz"
STEP = 1e-5
RTOL = 1e-6

BACKENDS = [v for v in GRADIENT_VARIANTS if v.name != "reference"]


@pytest.fixture(params=BACKENDS, ids=lambda v: v.name)
def backend(request):
    reason = request.param.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{request.param.name} not run on this machine: {reason}")
    return request.param.name


def gay_berne_frames(count=None):
    import ase.io

    return ase.io.read(GB_FILE, ":" if count is None else f":{count}")


def periodic_two_species_frames():
    """Two small periodic frames, two species, needles and plates: images of an atom as its own neighbour."""
    import ase

    rng = np.random.default_rng(3)
    frames = []
    for n in (5, 4):
        atoms = ase.Atoms(["C", "O", "C", "O", "C"][:n], positions=rng.uniform(0, 6, size=(n, 3)),
                          cell=np.diag([6.0, 6.5, 7.0]) + rng.uniform(-0.3, 0.3, (3, 3)), pbc=True)
        quaternions = Rotation.random(n, random_state=rng).as_quat()[:, [3, 0, 1, 2]]
        atoms.arrays["c_q"] = quaternions
        for k, d in enumerate(rng.uniform(0.6, 3.0, size=(3, n))):
            atoms.arrays[f"c_diameter[{k + 1}]"] = d
        frames.append(atoms)
    return frames


def rotate_atom(frames, key, system, atom, axis, angle):
    """Copies of ``frames`` with ``atom``'s body frame rotated by ``angle`` about lab ``axis`` (R -> Q R)."""
    frames = [f.copy() for f in frames]
    w, x, y, z = frames[system].arrays[key][atom]
    rotated = Rotation.from_rotvec(angle * np.eye(3)[axis]) * Rotation.from_quat([x, y, z, w])
    x, y, z, w = rotated.as_quat()
    frames[system].arrays[key][atom] = [w, x, y, z]
    return frames


def move_atom(frames, system, atom, axis, step):
    frames = [f.copy() for f in frames]
    frames[system].positions[atom, axis] += step
    return frames


def perturbation(parameter, key, system, atom, axis):
    """``perturb(frames, h)``: move ``atom`` by h along ``axis`` ("positions") or rotate its body frame
    by h radian about that lab axis ("orientations")."""
    if parameter == "positions":
        return lambda fr, h: move_atom(fr, system, atom, axis, h)
    return lambda fr, h: rotate_atom(fr, key, system, atom, axis, h)


def central_difference(function, frames, perturb):
    return (function(perturb(frames, STEP)) - function(perturb(frames, -STEP))) / (2 * STEP)


def assert_derivative_close(actual, expected, scale, what):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


CASES = {
    "gay_berne": (lambda: gay_berne_frames(3), "quaternions",
                  ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5)),
    "periodic_two_species": (periodic_two_species_frames, "c_q",
                             ExpansionHypers(lmax=3, radial_basis="gto", cutoff=4.0, sigma=1.2)),
    "monomial": (lambda: gay_berne_frames(2), "quaternions",
                 ExpansionHypers(lmax=3, radial_basis="monomial", cutoff=7.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_power_spectrum_gradients_equal_finite_differences(backend, case):
    make_frames, key, hypers = CASES[case]
    frames = make_frames()
    result = power_spectrum(frames, hypers, backend=backend, rotation_key=key, gradients=["positions", "orientations"])

    def values(fr):
        return power_spectrum(fr, hypers, rotation_key=key).values

    # the gradient path's values (pair sums) are the pipeline's (density kernel) up to summation order
    np.testing.assert_allclose(result.values, values(frames), rtol=1e-10, atol=1e-14)
    for parameter in ("positions", "orientations"):
        grad = result.gradients[parameter]
        scale = np.abs(grad.values).max()
        assert scale > 0
        atoms = {(int(s), int(a)) for s, a in grad.samples}
        assert atoms == {(s, a) for s, f in enumerate(frames) for a in range(len(f))}
        for row, (system, atom) in enumerate(grad.samples):
            for axis in range(3):
                perturb = perturbation(parameter, key, system, atom, axis)
                expected = central_difference(values, frames, perturb)
                others = np.delete(expected, system, axis=0)  # other structures do not move
                assert np.abs(others).max(initial=0.0) < RTOL * scale
                assert_derivative_close(grad.values[row, axis], expected[system], scale,
                                        f"{case} {parameter} system {system} atom {atom} axis {axis}")


@pytest.mark.parametrize("property_layout", ["labelled", "upstream"])
def test_density_gradient_blocks_follow_featomic_convention(backend, property_layout):
    frames, key, hypers = periodic_two_species_frames(), "c_q", ExpansionHypers(lmax=2, radial_basis="gto",
                                                                                 cutoff=4.0, sigma=1.2)
    tensor = centre_density(frames, hypers, backend=backend, rotation_key=key, property_layout=property_layout,
                            gradients=["positions", "orientations"])
    plain = centre_density(frames, hypers, rotation_key=key, property_layout=property_layout)
    assert tensor.keys == plain.keys
    for block, reference in zip(tensor.blocks(), plain.blocks()):
        np.testing.assert_allclose(block.values, reference.values, rtol=1e-12, atol=1e-14)
        for parameter in ("positions", "orientations"):
            gradient = block.gradient(parameter)
            assert gradient.samples.names == ["sample", "system", "atom"]
            assert [c.names for c in gradient.components] == [["xyz"], ["spherical_component_m"]]
            assert gradient.properties == block.properties
    # one block's entries against finite differences of the density
    key_index = 1
    block = tensor.block(key_index)
    for parameter in ("positions", "orientations"):
        gradient = block.gradient(parameter)
        scale = np.abs(gradient.values).max()
        for row, (sample, system, atom) in enumerate(gradient.samples.values[:6]):
            for axis in range(3):
                perturb = perturbation(parameter, key, system, atom, axis)

                def values(fr):
                    return centre_density(fr, hypers, rotation_key=key,
                                          property_layout=property_layout).block(key_index).values[sample]

                assert_derivative_close(gradient.values[row, axis], central_difference(values, frames, perturb),
                                        scale, f"{parameter} sample {sample} atom {atom} axis {axis}")


def test_power_spectrum_tensormap_has_gradient_blocks(backend):
    from einsum_workbench.pipeline.density import density_blocks
    from einsum_workbench.pipeline.gradients import density_gradients_of_frames
    from einsum_workbench.pipeline.power_spectrum import power_spectrum_tensormap, species_power_spectrum
    from einsum_workbench.pipeline.tensormaps import tensormap_gradients

    frames, hypers = gay_berne_frames(2), ExpansionHypers(lmax=2, radial_basis="gto", cutoff=7.0, sigma=1.5)
    result = density_gradients_of_frames(frames, hypers, backend=backend, rotation_key="quaternions")
    blocks = density_blocks(result.layout, result.density, property_layout="labelled")
    tensor = power_spectrum_tensormap(result.layout, blocks, tensormap_gradients(result, "labelled"))
    block = tensor.block(0)
    values, _ = species_power_spectrum(result.layout, blocks, 0)
    np.testing.assert_array_equal(block.values[:, 0], values)
    gradient = block.gradient("positions")
    assert gradient.values.shape[1:] == (3, 1, values.shape[1])
    # translating every atom of a structure together changes nothing: the position gradients sum to zero
    for sample in range(len(values)):
        rows = gradient.samples.values[:, 0] == sample
        total = gradient.values[rows].sum(axis=0)
        assert np.abs(total).max() < 1e-10 * np.abs(gradient.values).max()


def test_bad_gradient_requests_raise():
    frames, hypers = gay_berne_frames(1), ExpansionHypers(lmax=1, radial_basis="gto", cutoff=7.0, sigma=1.5)
    with pytest.raises(TypeError, match="'positions'"):
        power_spectrum(frames, hypers, rotation_key="quaternions", gradients="positions")
    with pytest.raises(ValueError, match="'cell'"):
        power_spectrum(frames, hypers, rotation_key="quaternions", gradients=["cell"])
    with pytest.raises(KeyError, match="'numpy_einsum'"):
        centre_density(frames, hypers, rotation_key="quaternions", backend="numpy_einsum", gradients=["positions"])


def test_torch_model_gets_forces_and_torques_by_backward(backend):
    torch = pytest.importorskip("torch")
    from einsum_workbench.pipeline.torch_features import TorchPowerSpectrum, torques_from_rotation_gradient
    from einsum_workbench.reference.frames import atoms_table

    frames, key = periodic_two_species_frames(), "c_q"
    hypers = ExpansionHypers(lmax=3, radial_basis="gto", cutoff=4.0, sigma=1.2)
    expected = power_spectrum(frames, hypers, backend=backend, rotation_key=key, gradients=["positions", "orientations"])
    table = atoms_table(frames, rotation_key=key)
    features = TorchPowerSpectrum(table, hypers, backend=backend)
    positions = torch.tensor(table.positions, requires_grad=True)
    rotations = torch.tensor(table.rotations, requires_grad=True)
    values = features(positions, rotations)
    np.testing.assert_allclose(values.detach().numpy(), expected.values, rtol=1e-12, atol=1e-14)
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=values.shape[1]))
    energy = torch.tanh(values @ weights / values.shape[1]).sum()     # a non-linear model on the features
    energy.backward()
    outer = 1 - torch.tanh(values @ weights / values.shape[1]).detach().numpy() ** 2
    for parameter, got in (("positions", positions.grad.numpy()),
                           ("orientations", torques_from_rotation_gradient(rotations.detach(), rotations.grad).numpy())):
        grad = expected.gradients[parameter]
        chain = outer[grad.samples[:, 0], None] * np.einsum("gxf,f->gx", grad.values, weights.numpy()) / values.shape[1]
        rows = table.first_atom[grad.samples[:, 0]] + grad.samples[:, 1]
        np.testing.assert_allclose(got[rows], chain, rtol=1e-9, atol=1e-12 * np.abs(chain).max(), err_msg=parameter)


def test_gay_berne_model_forces_and_torques_equal_finite_differences(backend):
    """A model of the Gay-Berne energy on the power spectrum, ``E = -exp(w . x + b)``
    (ridge fit of ``log(-E)``: the energies span three decades), whose forces and
    torques from the gradients equal central differences of its energy."""
    frames = gay_berne_frames()
    hypers = ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5)
    energies = np.array([f.get_potential_energy() for f in frames])  # ASE reads energy= into a calculator
    assert np.all(energies < 0)
    target = np.log(-energies)
    train, test = slice(0, 120), slice(120, None)
    features = power_spectrum(frames, hypers, rotation_key="quaternions").values
    mean, spread = features[train].mean(axis=0), features[train].std(axis=0) + 1e-12
    design = np.hstack([(features - mean) / spread, np.ones((len(features), 1))])
    ridge = 1e-3 * np.eye(design.shape[1])
    weights = np.linalg.solve(design[train].T @ design[train] + ridge, design[train].T @ target[train])
    baseline = np.abs(target[test] - target[train].mean()).mean()
    error = np.abs(design[test] @ weights - target[test]).mean()
    assert error < 0.85 * baseline  # the model learned the energy's variation (held-out frames)
    w = weights[:-1] / spread

    def energy(fr):
        return -np.exp(power_spectrum(fr, hypers, rotation_key="quaternions").values @ w + weights[-1] - mean @ w)

    check = gay_berne_frames(4)[1:]
    result = power_spectrum(check, hypers, backend=backend, rotation_key="quaternions",
                            gradients=["positions", "orientations"])
    e = energy(check)
    # F = -dE/dr = -E w . dx/dr, and the torque likewise along rotations
    forces = -e[result.gradients["positions"].samples[:, 0], None] * np.einsum(
        "gxf,f->gx", result.gradients["positions"].values, w)
    torques = -e[result.gradients["orientations"].samples[:, 0], None] * np.einsum(
        "gxf,f->gx", result.gradients["orientations"].values, w)
    for system in range(len(check)):  # two bodies: equal and opposite forces
        rows = result.gradients["positions"].samples[:, 0] == system
        np.testing.assert_allclose(forces[rows].sum(axis=0), 0.0, atol=1e-9 * np.abs(forces).max())
    for name, parameter, values in (("force", "positions", forces), ("torque", "orientations", torques)):
        scale = np.abs(values).max()
        assert scale > 0
        for row, (system, atom) in enumerate(result.gradients[parameter].samples):
            for axis in range(3):
                perturb = perturbation(parameter, "quaternions", system, atom, axis)
                expected = -central_difference(energy, check, perturb)[system]
                np.testing.assert_allclose(values[row, axis], expected, rtol=RTOL, atol=RTOL * scale,
                                           err_msg=f"{name} on atom {atom} of frame {system}, axis {axis}")

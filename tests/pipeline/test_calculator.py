"""The ASE calculator (``pipeline.calculator.AniSOAPCalculator``) against its own energy.

Frame: one periodic all-atom frame (``reference.workloads.small_cell_frames``:
6 atoms, C and H, ellipsoids at random orientations, a triclinic cell),
then strained (``cell -> cell (I + eps)`` with a random symmetric eps of
size ~0.03, atoms scaled) and its atoms moved by up to 0.2 A, so nothing
sits at a symmetric point. Hypers: GTO, lmax 2, cutoff 4 A, sigma 1.5,
``ShiftedCosine(1.0)`` (a smooth energy: central differences are valid
whatever pairs sit near the cutoff), float64; a random linear model.

- forces ``-dE/dx`` by moving each atom along each axis;
- torques ``-dE/dtheta`` by turning each ellipsoid's quaternion about each lab axis;
- stress by ASE's convention: ``atoms.set_cell(cell @ (I + eps), scale_atoms=True)``
  with ``eps[a, b] = eps[b, a] = d``, ``(E(d) - E(-d)) / (4 d V)`` (Voigt order
  xx, yy, zz, yz, xz, xy).

Central differences with step 1e-5 (angstrom, radian, strain) have an error
of about 1e-10 relative here; the tolerance is ``rtol = 1e-6`` with ``atol
= 1e-6 x`` the largest |value|.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.pipeline.calculator import AniSOAPCalculator, species_columns, species_properties
from einsum_workbench.pipeline.power_spectrum import power_spectrum
from einsum_workbench.reference.cutoff import ShiftedCosine
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.workloads import small_cell_frames

HYPERS = ExpansionHypers(lmax=2, radial_basis="gto", cutoff=4.0, sigma=1.5)
SMOOTH = ShiftedCosine(1.0)
SPECIES = [1, 6]
DENSITY = "numba_fused"
STEP = 1e-5
RTOL = 1e-6


def _weights() -> np.ndarray:
    return np.random.default_rng(1).normal(size=len(species_properties(SPECIES, HYPERS)))


@functools.lru_cache(maxsize=1)
def _frame():
    atoms = small_cell_frames(1, seed=4, n_atoms=6)[0]
    rng = np.random.default_rng(2)
    eps = rng.uniform(-0.03, 0.03, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.positions += rng.uniform(-0.2, 0.2, atoms.positions.shape)
    return atoms


def frame():
    return _frame().copy()


def _calculator(weights=None, **options):
    options = {"backend": DENSITY, "smooth_cutoff": SMOOTH, **options}
    return AniSOAPCalculator(HYPERS, _weights() if weights is None else weights, SPECIES, **options)


@functools.lru_cache(maxsize=1)
def _energy_calculator():
    return _calculator(backward_backend="torch_einsum")


def energy(atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = _energy_calculator()
    return atoms.get_potential_energy()


def _turned(atoms, atom, axis, angle):
    out = atoms.copy()
    w, x, y, z = out.arrays["c_q"][atom]
    turned = Rotation.from_rotvec(angle * np.eye(3)[axis]) * Rotation.from_quat([x, y, z, w])
    x, y, z, w = turned.as_quat()
    out.arrays["c_q"][atom] = [w, x, y, z]
    return out


def _moved(atoms, atom, axis, step):
    out = atoms.copy()
    out.positions[atom, axis] += step
    return out


def _strained(atoms, a, b, d):
    out = atoms.copy()
    eps = np.zeros((3, 3))
    eps[a, b] += d
    eps[b, a] += d
    out.set_cell(out.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return out


def _close(got, expected, what):
    assert np.abs(expected).max() > 1e-4, f"{what}: no signal to compare"
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(), err_msg=what)


def test_forces_torques_and_stress_are_derivatives_of_the_energy(backward):
    atoms = frame()
    atoms.calc = _calculator(backward_backend=backward)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    torques = atoms.calc.results["torques"]
    assert atoms.calc.get_property("torques", atoms) is not None
    n = len(atoms)
    fd_forces = np.array([[-(energy(_moved(atoms, i, a, STEP)) - energy(_moved(atoms, i, a, -STEP))) / (2 * STEP)
                           for a in range(3)] for i in range(n)])
    fd_torques = np.array([[-(energy(_turned(atoms, i, a, STEP)) - energy(_turned(atoms, i, a, -STEP))) / (2 * STEP)
                            for a in range(3)] for i in range(n)])
    volume = atoms.get_volume()
    fd_stress = np.array([(energy(_strained(atoms, a, b, STEP)) - energy(_strained(atoms, a, b, -STEP)))
                          / (4 * STEP * volume) for a, b in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))])
    _close(forces, fd_forces, "forces")
    _close(torques, fd_torques, "torques")
    _close(stress * volume, fd_stress * volume, "stress x volume (Voigt)")
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10 * np.abs(forces).max())


def test_energy_alone_runs_no_backward_and_forces_reuse_the_forward(monkeypatch):
    from einsum_workbench.pipeline.power_spectrum import PowerSpectrumPass

    calls = {"forward": 0, "backward": 0}
    backward, features = PowerSpectrumPass.backward, AniSOAPCalculator.features

    def counted_backward(self, cotangent):
        calls["backward"] += 1
        return backward(self, cotangent)

    def counted_features(self, atoms):
        calls["forward"] += 1
        return features(self, atoms)

    monkeypatch.setattr(PowerSpectrumPass, "backward", counted_backward)
    monkeypatch.setattr(AniSOAPCalculator, "features", counted_features)
    atoms = frame()
    atoms.calc = _calculator(backward_backend="torch_einsum")
    e = atoms.get_potential_energy()
    assert calls == {"forward": 1, "backward": 0}
    atoms.get_forces()
    assert calls == {"forward": 1, "backward": 1}  # same atoms: the forward pass is reused
    atoms.get_stress()
    assert calls == {"forward": 1, "backward": 1}  # stress came with the forces
    assert atoms.get_potential_energy() == e
    atoms.positions[0, 0] += 0.01
    atoms.get_potential_energy()
    assert calls == {"forward": 2, "backward": 1}


def test_turning_an_ellipsoid_is_a_change_of_state():
    atoms = frame()
    atoms.calc = _calculator(backward_backend="torch_einsum")
    before = atoms.get_potential_energy()
    turned = _turned(atoms, 2, 1, 0.3)
    atoms.arrays["c_q"][:] = turned.arrays["c_q"]
    after = atoms.get_potential_energy()
    assert after != before and after == pytest.approx(energy(turned), rel=1e-13)


def test_columns_follow_the_species():
    atoms = frame()
    calc = _calculator(backward_backend="torch_einsum")
    x, _, _ = calc.features(atoms)
    full = power_spectrum([atoms], HYPERS, backend=DENSITY, smooth_cutoff=SMOOTH)
    # this frame has every (centre, neighbour) species pair: the columns are power_spectrum's
    np.testing.assert_array_equal(full.properties, species_properties(SPECIES, HYPERS))
    np.testing.assert_array_equal(x, full.values[0])
    # hydrogen only: zeros wherever carbon is the centre or a neighbour, power_spectrum's values elsewhere
    hydrogen = atoms[[a.index for a in atoms if a.symbol == "H"]]
    x_h, _, _ = calc.features(hydrogen)
    alone = power_spectrum([hydrogen], HYPERS, backend=DENSITY, smooth_cutoff=SMOOTH)
    columns = species_columns(alone.properties, SPECIES, HYPERS)
    np.testing.assert_array_equal(x_h[columns], alone.values[0])
    rest = np.ones(len(x_h), dtype=bool)
    rest[columns] = False
    assert rest.sum() > 0 and np.all(x_h[rest] == 0)
    properties = species_properties(SPECIES, HYPERS)
    assert np.all((properties[columns][:, [0, 2, 5]] == 1))


def test_a_torch_module_is_a_model():
    torch = pytest.importorskip("torch")
    w = _weights()
    linear = torch.nn.Linear(len(w), 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w)[None])

    class Tanh(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return torch.tanh(self.linear(x))

    atoms = frame()
    atoms.calc = _calculator(backward_backend="torch_einsum")
    e_linear, f_linear = atoms.get_potential_energy(), atoms.get_forces()
    for module, outer in ((linear, lambda e: 1.0), (Tanh(), lambda e: 1 - np.tanh(e) ** 2)):
        other = frame()
        other.calc = _calculator(weights=module, backward_backend="torch_einsum")
        e = other.get_potential_energy()
        expected_e = e_linear if module is linear else np.tanh(e_linear)
        assert e == pytest.approx(expected_e, rel=1e-12)
        np.testing.assert_allclose(other.get_forces(), outer(e_linear) * f_linear, rtol=1e-10,
                                   atol=1e-12 * np.abs(f_linear).max())
    assert linear.weight.grad is None  # autograd on x only


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"weights has shape \(5,\) \(5 entries\).*species \[1, 6\].*has \d+ features"):
        AniSOAPCalculator(HYPERS, np.ones(5), SPECIES, backward_backend="torch_einsum")
    with pytest.raises(ValueError, match=r"strictly increasing.*\[6, 1\]"):
        AniSOAPCalculator(HYPERS, _weights(), [6, 1], backward_backend="torch_einsum")
    with pytest.raises(KeyError, match="no backward variant 'numpy_einsum'"):
        AniSOAPCalculator(HYPERS, _weights(), SPECIES, backend="numpy_einsum")
    calc = _calculator(backward_backend="torch_einsum")
    atoms = frame()
    atoms.numbers[0] = 8
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"species \[8\] that are not among the calculator's species \[1, 6\]"):
        atoms.get_potential_energy()
    from ase.calculators.calculator import PropertyNotImplementedError

    cluster = frame()
    cluster.pbc = False
    cluster.calc = _calculator(backward_backend="torch_einsum")
    assert np.isfinite(cluster.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match=r"periodic along all three axes.*\[False, False, False\]"):
        cluster.get_stress()

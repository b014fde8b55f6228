"""Workload generators: synthetic ellipsoid frames, deterministic by seed.

Two families, sized by frame count:

- :func:`ellipsoids`: coarse-grained, one flattened ellipsoid per molecule
  (diameters near (4, 4, 0.5)) in small periodic triclinic cells holding 1 to
  4 particles, like AniSOAP's example dataset ``../shared/data/ellipsoids.xyz``
  (about 10 pairs per particle at cutoff 7).
- :func:`benzenes`: all-atom-like benzene crystals: one C6H6 molecule per
  periodic cell (C-C 1.39 A, C-H 1.09 A), stacked in columns 3.45 to 3.7 A
  apart with a hexagonal in-plane lattice, about 115 A^3 per molecule (the
  density of crystalline benzene), the whole cell randomly oriented. Every
  atom is an ellipsoid: C oblate along the ring normal, H less anisotropic.
  About 1,800 pairs per frame at cutoff 7 (1,500 to 2,000). One molecule per
  cell rather than two: two molecules at this density would double the pair
  count per frame.

Frames carry the arrays AniSOAP reads: ``c_q`` (quaternion, w x y z) and
``c_diameter[1]``, ``c_diameter[2]``, ``c_diameter[3]``. One to four species
come from relabelling atoms (the ellipsoid shapes stay as generated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.pairs import PairBatch, frames_to_pairs

#: Frames of the default workload (benzenes, ~1,800 pairs each).
DEFAULT_FRAMES = 16

C_C_BOND = 1.39  # angstrom, aromatic C-C
C_H_BOND = 1.09  # angstrom
#: Semi-axes (radial, tangential, ring normal) in angstrom.
CARBON_SEMIAXES = (1.4, 1.4, 0.6)
HYDROGEN_SEMIAXES = (0.9, 0.8, 0.7)
#: Species used when relabelling: benzenes C, H, then N (a ring C), O (an H).
BENZENE_SPECIES = ("C", "H", "N", "O")
#: Coarse-grained particles: X (AniSOAP's dataset uses the dummy species) then C, N, O.
ELLIPSOID_SPECIES = ("X", "C", "N", "O")
#: Diameters of the coarse-grained ellipsoids of each relabelled species.
ELLIPSOID_DIAMETERS = ((4.0, 4.0, 0.5), (3.0, 3.0, 1.0), (3.6, 3.2, 0.8), (4.4, 3.6, 0.6))


def _check_count(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 3) rotations uniform over SO(3) (normalised Gaussian quaternions)."""
    from einsum_workbench.reference.frames import rotations_from_quaternions

    q = rng.normal(size=(n, 4))
    return rotations_from_quaternions(q)


def quaternions_from_rotations(rotations) -> np.ndarray:
    """(N, 4) quaternions stored (w, x, y, z), w >= 0, of (N, 3, 3) rotations."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(np.asarray(rotations)).as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    return wxyz * np.where(wxyz[:, :1] < 0, -1.0, 1.0)


def _make_atoms(symbols, positions, cell, rotations, semiaxes):
    import ase

    atoms = ase.Atoms(symbols=list(symbols), positions=positions, cell=cell, pbc=True)
    atoms.arrays["c_q"] = quaternions_from_rotations(rotations)
    for k in range(3):
        atoms.arrays[f"c_diameter[{k + 1}]"] = 2.0 * np.ascontiguousarray(semiaxes[:, k])
    return atoms


def _triclinic_cell(rng, volume):
    """Random triclinic cell (rows are lattice vectors) of the given volume:
    lengths within 0.75..1.35 of each other, angles 75..105 degrees."""
    while True:
        lengths = rng.uniform(0.75, 1.35, size=3)
        alpha, beta, gamma = np.radians(rng.uniform(75.0, 105.0, size=3))
        a = np.array([lengths[0], 0.0, 0.0])
        b = lengths[1] * np.array([np.cos(gamma), np.sin(gamma), 0.0])
        cx = np.cos(beta)
        cy = (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
        cz2 = 1.0 - cx * cx - cy * cy
        if cz2 > 0.2:
            break
    cell = np.array([a, b, lengths[2] * np.array([cx, cy, np.sqrt(cz2)])])
    return cell * (volume / abs(np.linalg.det(cell))) ** (1.0 / 3.0)


def ellipsoids(n_frames: int, seed: int = 0, n_species: int = 1):
    """Coarse-grained frames of flattened ellipsoids in periodic cells.

    Each frame: a random triclinic cell holding 1 to 4 particles at about
    190 A^3 per particle, particles on a jittered sub-lattice with random
    orientations; diameters near ``ELLIPSOID_DIAMETERS[species]`` (2 % jitter).

    Parameters
    ----------
    n_frames : int, >= 0
    seed : int
        Same seed, same frames.
    n_species : int, 1..4
        Particles are relabelled with ``ELLIPSOID_SPECIES[:n_species]`` (the
        first frames hold every species when they have room).

    Returns
    -------
    list of ase.Atoms with arrays ``c_q`` (w, x, y, z) and ``c_diameter[1..3]``.

    Raises
    ------
    ValueError
        n_frames < 0 or n_species outside 1..4 (the value named).
    """
    n_frames = _check_count("n_frames", n_frames, 0)
    n_species = _check_count("n_species", n_species, 1, 4)
    rng = np.random.default_rng([seed, 1])
    sublattice = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frames = []
    for _ in range(n_frames):
        n_particles = int(rng.integers(1, 5))
        cell = _triclinic_cell(rng, n_particles * rng.uniform(160.0, 230.0))
        fractional = sublattice[:n_particles] + rng.uniform(-0.06, 0.06, size=(n_particles, 3))
        positions = (fractional % 1.0) @ cell
        kinds = rng.integers(0, n_species, size=n_particles)
        kinds[: min(n_particles, n_species)] = rng.permutation(n_species)[: min(n_particles, n_species)]
        diameters = np.array(ELLIPSOID_DIAMETERS)[kinds] * rng.uniform(0.98, 1.02, size=(n_particles, 3))
        frames.append(
            _make_atoms(
                [ELLIPSOID_SPECIES[k] for k in kinds], positions, cell,
                random_rotations(rng, n_particles), diameters / 2.0,
            )
        )
    return frames


def two_species_cells(sizes=(5, 4), seed: int = 3) -> list:
    """Small periodic frames of C and O ellipsoids (alternating), for tests of forces and cutoffs.

    Frame k holds ``sizes[k]`` atoms uniform in [0, 6) angstrom, a cell
    ``diag(6, 6.5, 7)`` plus a uniform skew of up to 0.3 angstrom, random
    orientations (``c_q``, w first) and diameters uniform in [0.6, 3)
    angstrom (``c_diameter[1..3]``): needles and plates. The same frames
    for the same arguments.
    """
    import ase
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    frames = []
    for n in sizes:
        atoms = ase.Atoms((["C", "O"] * n)[:n], positions=rng.uniform(0, 6, size=(n, 3)),
                          cell=np.diag([6.0, 6.5, 7.0]) + rng.uniform(-0.3, 0.3, (3, 3)), pbc=True)
        atoms.arrays["c_q"] = Rotation.random(n, random_state=rng).as_quat()[:, [3, 0, 1, 2]]
        for k, d in enumerate(rng.uniform(0.6, 3.0, size=(3, n))):
            atoms.arrays[f"c_diameter[{k + 1}]"] = d
        frames.append(atoms)
    return frames


def _rotation_z(angles) -> np.ndarray:
    c, s = np.cos(angles), np.sin(angles)
    rot = np.zeros((len(angles), 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = c, -s, s, c
    rot[:, 2, 2] = 1.0
    return rot


def benzene_molecule():
    """One benzene in its body frame (ring in the xy plane, centred at 0).

    Returns
    -------
    symbols : list of str (6 C then 6 H); positions (12, 3) angstrom;
    body_rotations (12, 3, 3) (atom body x radial, body z the ring normal);
    semiaxes (12, 3) angstrom.
    """
    angles = np.radians(60.0 * np.arange(6))
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    positions = np.concatenate([C_C_BOND * ring, (C_C_BOND + C_H_BOND) * ring])
    body_rotations = np.concatenate([_rotation_z(angles), _rotation_z(angles)])
    semiaxes = np.array([CARBON_SEMIAXES] * 6 + [HYDROGEN_SEMIAXES] * 6, dtype=np.float64)
    return ["C"] * 6 + ["H"] * 6, positions, body_rotations, semiaxes


def _benzene_cell(rng):
    """Cell (rows) in the molecule's frame: hexagonal in-plane lattice turned
    ~18 degrees from the C-H bonds (the turn that keeps neighbouring H
    furthest apart, about 2 A), stacking vector 3.45..3.7 A along the normal
    with a random slip, 108..122 A^3."""
    volume = rng.uniform(108.0, 122.0)
    height = rng.uniform(3.45, 3.7)
    side = np.sqrt(volume / (height * np.sin(np.pi / 3)))
    turn = np.radians(18.0 + rng.uniform(-1.5, 1.5))
    a1 = side * rng.uniform(0.98, 1.02) * np.array([np.cos(turn), np.sin(turn), 0.0])
    gamma = turn + np.radians(60.0 + rng.uniform(-1.0, 1.0))
    a2 = side * rng.uniform(0.98, 1.02) * np.array([np.cos(gamma), np.sin(gamma), 0.0])
    phi = rng.uniform(0.0, 2.0 * np.pi)
    slip = rng.uniform(0.0, 1.2) * np.array([np.cos(phi), np.sin(phi), 0.0])
    a3 = slip + np.array([0.0, 0.0, height])
    return np.array([a1, a2, a3])


def _relabel_benzene(symbols, n_species, rng):
    """Relabel: 1 species -> all C; 2 -> C, H; 3 -> one ring C becomes N;
    4 -> also one H becomes O."""
    symbols = list(symbols)
    if n_species == 1:
        return ["C"] * len(symbols)
    if n_species >= 3:
        symbols[int(rng.integers(0, 6))] = "N"
    if n_species >= 4:
        symbols[6 + int(rng.integers(0, 6))] = "O"
    return symbols


def benzenes(n_frames: int, seed: int = 0, n_species: int = 2):
    """All-atom-like benzene crystal frames, one C6H6 per periodic cell.

    About 1,800 neighbour pairs per frame at cutoff 7 A (self pairs included).

    Parameters
    ----------
    n_frames : int, >= 0
    seed : int
        Same seed, same frames.
    n_species : int, 1..4
        1: every atom labelled C; 2: C and H; 3: one ring C per molecule
        relabelled N; 4: also one H relabelled O.

    Returns
    -------
    list of ase.Atoms (12 atoms each) with ``c_q`` (w, x, y, z) and
    ``c_diameter[1..3]`` arrays.

    Raises
    ------
    ValueError
        n_frames < 0 or n_species outside 1..4 (the value named).
    """
    n_frames = _check_count("n_frames", n_frames, 0)
    n_species = _check_count("n_species", n_species, 1, 4)
    rng = np.random.default_rng([seed, 2])
    symbols, body_positions, body_rotations, semiaxes = benzene_molecule()
    frames = []
    for _ in range(n_frames):
        cell = _benzene_cell(rng)
        lab = random_rotations(rng, 1)[0]
        origin = rng.uniform(0.0, 1.0, size=3) @ cell
        positions = (body_positions + origin) @ lab.T
        frames.append(
            _make_atoms(
                _relabel_benzene(symbols, n_species, rng), positions, cell @ lab.T,
                lab[None] @ body_rotations, semiaxes,
            )
        )
    return frames


def small_cell_frames(n_frames: int, seed: int = 0, n_atoms: int = 20):
    """All-atom frames in small periodic cells: the neighbour list's hard case.

    Each frame: a random triclinic cell (:func:`_triclinic_cell`) whose cube
    root of the volume is 6 to 10 A, holding ``n_atoms`` atoms at uniform
    random fractional positions in [0, 1) (wrapped), half C and half H
    (C first), random orientations, semi-axes ``CARBON_SEMIAXES`` /
    ``HYDROGEN_SEMIAXES``. At cutoff 7 A a cell edge is shorter than the
    cutoff sphere's diameter, so every atom sees many periodic images of the
    others (about 1,800 pairs per 20-atom frame, self pairs included).

    Parameters
    ----------
    n_frames : int, >= 0
    seed : int
        Same seed, same frames.
    n_atoms : int, >= 1
        Atoms per frame.

    Returns
    -------
    list of ase.Atoms (``n_atoms`` atoms each, pbc True) with ``c_q``
    (w, x, y, z) and ``c_diameter[1..3]`` arrays.

    Raises
    ------
    ValueError
        n_frames < 0 or n_atoms < 1 (the value named).
    """
    n_frames = _check_count("n_frames", n_frames, 0)
    n_atoms = _check_count("n_atoms", n_atoms, 1)
    rng = np.random.default_rng([seed, 3])
    n_carbon = (n_atoms + 1) // 2
    symbols = ["C"] * n_carbon + ["H"] * (n_atoms - n_carbon)
    semiaxes = np.array([CARBON_SEMIAXES] * n_carbon + [HYDROGEN_SEMIAXES] * (n_atoms - n_carbon), dtype=np.float64)
    frames = []
    for _ in range(n_frames):
        cell = _triclinic_cell(rng, rng.uniform(6.0, 10.0) ** 3)
        positions = rng.uniform(0.0, 1.0, size=(n_atoms, 3)) @ cell
        frames.append(_make_atoms(symbols, positions, cell, random_rotations(rng, n_atoms), semiaxes))
    return frames


WORKLOADS = {"benzenes": benzenes, "ellipsoids": ellipsoids}
_DEFAULT_SPECIES = {"benzenes": 2, "ellipsoids": 1}


@dataclass
class Workload:
    """Frames, hyper-parameters and the pair batch built from them."""

    name: str
    frames: list
    hypers: ExpansionHypers
    pairs: PairBatch

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def describe(self) -> dict:
        """Metadata for benchmark reports."""
        return {
            "workload": self.name,
            "n_frames": len(self.frames),
            "n_atoms": int(self.pairs.n_atoms.sum()),
            "n_pairs": self.n_pairs,
            "species": [int(z) for z in self.pairs.species],
            **self.hypers.as_dict(),
        }


def make_workload(
    name: str,
    n_frames: int,
    seed: int = 0,
    lmax: int = 6,
    radial_basis: str = "gto",
    sigma: float | None = 1.5,
    cutoff: float = 7.0,
    max_radial=None,
    n_species: int | None = None,
    self_pairs: bool = True,
) -> Workload:
    """Generate frames and their pair batch for a named workload.

    Parameters
    ----------
    name : {"benzenes", "ellipsoids"}
    n_frames, seed, n_species
        Passed to the generator (n_species None: its default).
    lmax, radial_basis, sigma, cutoff, max_radial
        :class:`ExpansionHypers`; sigma is ignored (set to None) for the
        monomial basis.
    self_pairs : bool
        Keep (i, i) pairs, as AniSOAP does by default.

    Raises
    ------
    KeyError
        unknown name (valid names listed).
    """
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; valid names: {sorted(WORKLOADS)}")
    if n_species is None:
        n_species = _DEFAULT_SPECIES[name]
    hypers = ExpansionHypers(
        lmax=lmax, radial_basis=radial_basis, cutoff=cutoff,
        sigma=sigma if radial_basis == "gto" else None, max_radial=max_radial,
    )
    frames = WORKLOADS[name](n_frames, seed=seed, n_species=n_species)
    pairs = frames_to_pairs(frames, hypers.cutoff, self_pairs=self_pairs)
    return Workload(name=name, frames=frames, hypers=hypers, pairs=pairs)


def default_workload(n_frames: int = DEFAULT_FRAMES, seed: int = 0) -> Workload:
    """The main job's workload: benzenes, lmax 6, GTO sigma 1.5, cutoff 7."""
    return make_workload("benzenes", n_frames, seed=seed, lmax=6, radial_basis="gto", sigma=1.5, cutoff=7.0)

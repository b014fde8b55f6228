"""From per-pair cotangents to atoms: forces, torques, the strain derivative, stress and virial.

A potential ``E(rho)`` of the centre density needs, per atom, ``-dE/dx`` and
``-dE/dtheta``, and per periodic frame the stress; none of them needs the
per-pair Jacobian. A backward variant (registry problem ``"backward"``,
:mod:`einsum_workbench.reference.backward`) turns the cotangent
``dE/drho`` into per-pair ``g_p = dE/dr_ij`` and ``t_p = dE/dtheta_j``; here
they are summed onto atoms (DESIGN.md section 3, "Backward pass"):

- forces: ``r_ij = x_j + shift . cell - x_i``, so ``F_i += g_p`` and
  ``F_j -= g_p`` (global atom indices of the pair's centre and neighbour). A
  self pair (i = j, no shift, ``r = 0``) adds ``g_p - g_p``: nothing, as it
  must, since its vector stays 0 whatever the atom does; a pair of an atom
  with its own periodic image likewise;
- torques on the neighbour j: ``tau_j -= t_p`` (self pairs included: turning
  an ellipsoid changes its own density at its centre);
- strain: under ``x -> x (I + eps)`` with the cell ``cell -> cell (I + eps)``
  (row vectors, ASE's convention: ``Atoms.set_cell(cell @ (I + eps),
  scale_atoms=True)``), every pair vector, images included, moves as
  ``r -> r (I + eps)`` and orientations are held, so
  ``dE/deps[a, b] = sum_p r_p[a] g_p[b]``, summed per frame;
- stress ``dE/deps / V`` with ``V = |det cell|`` (ASE's sign convention: the
  stress ``Atoms.get_stress`` reports, there in eV/angstrom^3 and symmetrised),
  and the virial ``-dE/deps``.

The full 3 x 3 strain derivative is returned, not symmetrised: orientations
held fixed, a rotation of the positions alone changes E, so the antisymmetric
part need not vanish. Its symmetric part is what ASE's symmetric-strain finite
differences measure (:func:`voigt_stress` gives ASE's six numbers).

The pairs are those the density pipeline uses (:func:`force_pairs`: the
fused search and grouping, ``pipeline.grouping.neighbour_groups``), each pair's centre
and frame read off its segment (:func:`segment_atoms`), so a cotangent on
``density_of_table``'s rows applies as it is; :func:`forces_of_pairs` runs a
backward variant on them and sums onto atoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers

from einsum_workbench.pipeline.grouping import GroupedPairs, neighbour_groups
from einsum_workbench.pipeline.stages import stage


@dataclass(frozen=True)
class AtomForces:
    """Forces, torques and the strain response of a scalar E of the centre density.

    Attributes
    ----------
    forces : (N, 3) float64
        ``-dE/dx`` per atom (E's unit per angstrom; eV/angstrom for E in eV).
    torques : (N, 3) float64
        ``-dE/dtheta`` per atom, about the lab axes (E's unit per radian).
    strain_derivative : (F, 3, 3) float64
        ``dE/deps`` per frame (module docstring), E's unit.
    virial : (F, 3, 3) float64
        ``-dE/deps``.
    stress : (F, 3, 3) float64
        ``dE/deps / V`` (E's unit per angstrom^3); NaN for a frame that is
        not periodic along all three axes (no volume).
    """

    forces: np.ndarray
    torques: np.ndarray
    strain_derivative: np.ndarray
    virial: np.ndarray
    stress: np.ndarray


def _check_pair_vectors(name, array, n_pairs):
    array = np.asarray(array, dtype=np.float64)
    if array.shape != (n_pairs, 3):
        raise ValueError(f"{name} must have shape ({n_pairs}, 3), one row per pair, got {array.shape}")
    if not np.all(np.isfinite(array)):
        p = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} of pair {p} is not finite: {array[p].tolist()}")
    return array


def _check_indices(name, array, n_pairs, bound):
    array = np.asarray(array)
    if array.shape != (n_pairs,) or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be ({n_pairs},) integers, got shape {array.shape}, dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= bound):
        p = int(np.argmax((array < 0) | (array >= bound)))
        raise ValueError(f"{name} of pair {p} is {int(array[p])}, outside [0, {bound})")
    return array


def pair_forces(dE_dr, dE_dtheta, centre, neighbour, n_atoms: int):
    """Per-atom forces and torques from per-pair derivatives.

    Parameters
    ----------
    dE_dr : (P, 3) float array
        ``dE/dr_ij`` of each pair (``PairCotangents.r``), E's unit per angstrom.
    dE_dtheta : (P, 3) float array
        ``dE/dtheta_j`` (``PairCotangents.theta``), E's unit per radian.
    centre, neighbour : (P,) int arrays
        Global atom indices of i and j (``pipeline.layout.TablePairs``).
    n_atoms : int
        Total number of atoms N.

    Returns
    -------
    forces (N, 3), torques (N, 3) float64: ``F_i += dE/dr``, ``F_j -= dE/dr``,
    ``tau_j -= dE/dtheta`` summed in pair order (one compiled pass).

    Raises
    ------
    ValueError
        wrong shapes, non-finite derivatives or an index outside ``[0, N)``
        (the pair and the value named).
    """
    dE_dr = np.asarray(dE_dr)
    n_pairs = dE_dr.shape[0] if dE_dr.ndim else -1
    dE_dr = _check_pair_vectors("dE_dr", dE_dr, n_pairs)
    dE_dtheta = _check_pair_vectors("dE_dtheta", dE_dtheta, n_pairs)
    centre = _check_indices("centre", centre, n_pairs, n_atoms)
    neighbour = _check_indices("neighbour", neighbour, n_pairs, n_atoms)
    return _pair_forces(dE_dr, dE_dtheta, centre, neighbour, n_atoms)


@numba.njit(cache=True)
def _pair_forces(dE_dr, dE_dtheta, centre, neighbour, n_atoms):
    """The sums of :func:`pair_forces`, one compiled pass over the pairs in their order."""
    forces = np.zeros((n_atoms, 3))
    torques = np.zeros((n_atoms, 3))
    for p in range(len(centre)):
        i, j = centre[p], neighbour[p]
        for a in range(3):
            forces[i, a] += dE_dr[p, a]
            forces[j, a] -= dE_dr[p, a]
            torques[j, a] -= dE_dtheta[p, a]
    return forces, torques


def strain_derivative(r_ij, dE_dr, frame, n_frames: int) -> np.ndarray:
    """``dE/deps[f, a, b] = sum over pairs p of frame f of r_p[a] dE/dr_p[b]``.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom (images included)
    dE_dr : (P, 3) float array
    frame : (P,) int array, each pair's frame
    n_frames : int

    Returns
    -------
    (F, 3, 3) float64, E's unit (module docstring: the strain ``x -> x (I + eps)``).

    Raises
    ------
    ValueError
        wrong shapes, non-finite values, a frame outside ``[0, n_frames)``.
    """
    r_ij = np.asarray(r_ij)
    n_pairs = r_ij.shape[0] if r_ij.ndim else -1
    r_ij = _check_pair_vectors("r_ij", r_ij, n_pairs)
    dE_dr = _check_pair_vectors("dE_dr", dE_dr, n_pairs)
    frame = _check_indices("frame", frame, n_pairs, n_frames)
    return _strain_derivative(r_ij, dE_dr, frame, n_frames)


@numba.njit(cache=True)
def _strain_derivative(r_ij, dE_dr, frame, n_frames):
    """The sums of :func:`strain_derivative`, one compiled pass (a (P, 3, 3) outer product and nine
    ``bincount`` took 1.7 ms on 14,632 pairs: 30x this)."""
    out = np.zeros((n_frames, 3, 3))
    for p in range(len(frame)):
        f = frame[p]
        for a in range(3):
            for b in range(3):
                out[f, a, b] += r_ij[p, a] * dE_dr[p, b]
    return out


def stress_and_virial(strain, cells, pbc):
    """Stress ``dE/deps / V`` and virial ``-dE/deps`` per frame.

    Parameters
    ----------
    strain : (F, 3, 3) float array, ``dE/deps``
    cells : (F, 3, 3) float array, angstrom, rows the lattice vectors
    pbc : (F, 3) bool

    Returns
    -------
    stress (F, 3, 3) (NaN where a frame is not periodic along all three
    axes), virial (F, 3, 3).

    Raises
    ------
    ValueError
        a fully periodic frame whose cell has zero volume (the frame named).
    """
    strain = np.asarray(strain, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.float64)
    periodic = np.all(np.asarray(pbc, dtype=bool), axis=1)
    volume = np.abs(np.linalg.det(cells)) if len(cells) else np.zeros(0)
    stress = np.full_like(strain, np.nan)
    if np.any(periodic & ~(volume > 0)):
        f = int(np.argmax(periodic & ~(volume > 0)))
        raise ValueError(f"frame {f} is periodic but its cell has volume {volume[f]!r}")
    stress[periodic] = strain[periodic] / volume[periodic, None, None]
    return stress, -strain


#: ASE's Voigt order of a symmetric 3 x 3 tensor: xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def voigt_stress(stress) -> np.ndarray:
    """ASE's stress (``Atoms.get_stress()``) from the full ``dE/deps / V``.

    Parameters
    ----------
    stress : (3, 3) or (F, 3, 3) float array, E's unit per angstrom^3
        :attr:`AtomForces.stress` (not symmetrised).

    Returns
    -------
    (6,) or (F, 6) float64: the symmetric part in Voigt order (:data:`VOIGT`).
    ASE's numerical stress moves both ``eps[a, b]`` and ``eps[b, a]``
    (``ase.calculators.calculator.Calculator.calculate_numerical_stress``),
    which measures exactly that symmetric part.

    Raises
    ------
    ValueError
        a shape other than (3, 3) or (F, 3, 3).
    """
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape[-2:] != (3, 3) or stress.ndim not in (2, 3):
        raise ValueError(f"stress must have shape (3, 3) or (F, 3, 3), got {stress.shape}")
    symmetric = 0.5 * (stress + np.swapaxes(stress, -1, -2))
    return np.stack([symmetric[..., a, b] for a, b in VOIGT], axis=-1)


def energy_tensormap(energy, result: AtomForces, n_atoms):
    """The energy with its gradients as a metatensor TensorMap, in featomic's gradient convention.

    One block (key ``_ = 0``): values ``(n_frames, 1)`` (samples ``system``,
    property ``energy``) and the gradients

    - ``"positions"``: samples ``(sample, system, atom)``, component ``xyz``,
      values ``dE/dx = -forces`` (one row per atom of each frame);
    - ``"strain"``: samples ``sample``, components ``xyz_1``, ``xyz_2``,
      values ``dE/deps[a, b]`` with the cell and atoms strained as
      ``r -> r (I + eps)`` (row vectors; :func:`strain_derivative`), so that
      ``-dE/deps`` is the virial and ``dE/deps / V`` the stress (featomic's
      ``strain`` gradient, defined for every frame);
    - ``"orientations"``: as ``"positions"``, values ``dE/dtheta = -torques``
      (about the lab axes, per radian; the workbench's parameter, as
      :mod:`einsum_workbench.pipeline.gradients` names it; featomic has none).

    Parameters
    ----------
    energy : (n_frames,) float array
        ``PowerSpectrum.energy`` (E's unit, eV for a potential in eV).
    result : AtomForces
        Of the same frames (``PowerSpectrum.forces`` or :func:`forces_of_table`).
    n_atoms : (n_frames,) int array
        Atoms per frame (``AtomsTable.n_atoms``), which order ``result.forces``.

    Returns
    -------
    metatensor.TensorMap (float64).

    Raises
    ------
    ValueError
        shapes that disagree (the energy's frames, the atoms' total; both numbers named).
    """
    from metatensor import Labels, TensorBlock, TensorMap

    energy = np.asarray(energy, dtype=np.float64).reshape(-1)
    n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    n_frames = len(energy)
    if len(n_atoms) != n_frames or result.strain_derivative.shape != (n_frames, 3, 3):
        raise ValueError(f"energy of {n_frames} frames, n_atoms of {len(n_atoms)} frames and a strain derivative "
                         f"of shape {result.strain_derivative.shape} must describe the same frames")
    if int(n_atoms.sum()) != len(result.forces):
        raise ValueError(f"n_atoms sums to {int(n_atoms.sum())} atoms but the forces have {len(result.forces)} rows")
    system = np.repeat(np.arange(n_frames, dtype=np.int32), n_atoms)
    atom = (np.arange(len(system)) - np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)).astype(np.int32)
    atom_samples = Labels(["sample", "system", "atom"], np.stack([system, system, atom], axis=1))
    xyz = Labels(["xyz"], np.arange(3, dtype=np.int32).reshape(-1, 1))
    properties = Labels(["energy"], np.zeros((1, 1), dtype=np.int32))
    block = TensorBlock(values=energy.reshape(-1, 1),
                        samples=Labels(["system"], np.arange(n_frames, dtype=np.int32).reshape(-1, 1)),
                        components=[], properties=properties)
    for parameter, per_atom in (("positions", result.forces), ("orientations", result.torques)):
        block.add_gradient(parameter, TensorBlock(values=-np.asarray(per_atom, dtype=np.float64)[:, :, None],
                                                  samples=atom_samples, components=[xyz], properties=properties))
    frames = np.arange(n_frames, dtype=np.int32).reshape(-1, 1)
    block.add_gradient("strain", TensorBlock(
        values=np.asarray(result.strain_derivative, dtype=np.float64)[:, :, :, None],
        samples=Labels(["sample"], frames),
        components=[Labels(["xyz_1"], xyz.values), Labels(["xyz_2"], xyz.values)], properties=properties))
    return TensorMap(Labels.single(), [block])


def load_backward(backend: str, smooth_cutoff=None):
    """The backward variant ``backend`` (registry problem ``"backward"``), smoothed when asked.

    Parameters
    ----------
    backend : str
        A name in ``kernels.registry.variant_names("backward")``.
    smooth_cutoff : None or ``reference.cutoff.ShiftedCosine``
        Passed to ``kernels.registry.load_variant`` (its derivative term joins ``dE/dr``).

    Raises
    ------
    KeyError
        ``backend`` has no backward variant: the message names it, lists the
        registered ones and says what needs one.
    RuntimeError
        the variant cannot run here (the registry's reason).
    TypeError
        ``smooth_cutoff`` is neither None nor a ShiftedCosine.
    """
    from einsum_workbench.kernels.registry import load_variant, variant_names

    if backend not in variant_names("backward"):
        raise KeyError(f"no backward variant {backend!r} is registered (registered: "
                       f"{', '.join(variant_names('backward'))}); forces, torques and stress without a Jacobian "
                       f"run one: pass one of those as the backward backend")
    return load_variant(backend, "backward", smooth_cutoff=smooth_cutoff)


def load_density(backend: str, smooth_cutoff=None):
    """``kernels.registry.density_function(backend, smooth_cutoff=smooth_cutoff)`` (errors as there)."""
    from einsum_workbench.kernels.registry import density_function

    return density_function(backend, smooth_cutoff=smooth_cutoff)


@dataclass(frozen=True)
class ForcePairs:
    """Every frame's neighbour pairs grouped by segment, with what the forces need.

    Attributes
    ----------
    grouped : GroupedPairs
        The density kernel's inputs (layout, segment, r_ij, rotations,
        semiaxes, neighbour), in segment order (``pipeline.grouping``).
    centre : (P,) int64, global index of each pair's centre atom
    frame : (P,) int64, each pair's frame
    """

    grouped: GroupedPairs
    centre: np.ndarray
    frame: np.ndarray

    @property
    def layout(self):
        return self.grouped.layout


def segment_atoms(layout, first_atom) -> tuple[np.ndarray, np.ndarray]:
    """(centre (n_segments,), frame (n_segments,)) int64: the global centre atom and frame of every
    density row (``DensityLayout``: row ``offsets[c] + u * E_c + e`` belongs to sample u of species c)."""
    centre = np.empty(layout.n_segments, dtype=np.int64)
    frame = np.empty(layout.n_segments, dtype=np.int64)
    for c, samples in enumerate(layout.samples):
        n_types = len(layout.neighbour_types[c])
        rows = slice(int(layout.offsets[c]), int(layout.offsets[c + 1]))
        system = np.repeat(samples[:, 0].astype(np.int64), n_types)
        frame[rows] = system
        centre[rows] = first_atom[system] + np.repeat(samples[:, 1].astype(np.int64), n_types)
    return centre, frame


def force_pairs(table: AtomsTable, cutoff: float, *, self_pairs: bool = True) -> ForcePairs:
    """The neighbour pairs of every frame as the density pipeline groups them
    (one fused search and grouping, ``pipeline.grouping.neighbour_groups``, as
    :func:`einsum_workbench.pipeline.density.density_of_table`), with each pair's centre and frame.

    Raises
    ------
    ValueError
        a bad cutoff or cell (``reference.neighbours.neighbour_pairs``).
    """
    grouped = neighbour_groups(table, cutoff, self_pairs=self_pairs)  # stages neighbour_list, grouping
    with stage("grouping"):
        centre, frame_of = segment_atoms(grouped.layout, table.first_atom)
    return ForcePairs(grouped=grouped, centre=centre[grouped.segment], frame=frame_of[grouped.segment])


def forces_of_pairs(backward, pairs: ForcePairs, table: AtomsTable, hypers: ExpansionHypers, cotangent, *,
                    orthonormal: bool = True) -> AtomForces:
    """One backward variant call on ``pairs``, then :func:`pair_forces`, :func:`strain_derivative`
    and :func:`stress_and_virial` (DESIGN.md section 3, "Backward pass").

    Parameters
    ----------
    backward : callable
        A backward variant (:func:`load_backward`).
    pairs : ForcePairs
        From :func:`force_pairs` of ``table``.
    table : AtomsTable
    hypers : ExpansionHypers
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dE/drho_l`` on the rows of ``pairs.layout``.
    orthonormal : bool
        The density ``cotangent`` differentiates was orthonormalised.

    Returns
    -------
    AtomForces

    Raises
    ------
    ValueError, TypeError
        the variant's: a cotangent of the wrong shape (the l and shape named).
    """
    g = pairs.grouped
    with stage("backward"):
        cot = backward(g.r_ij, g.rotations, g.semiaxes, hypers, g.segment, g.layout.n_segments, cotangent,
                       dtype=np.float64, orthonormal=orthonormal)
    with stage("forces"):
        forces, torques = pair_forces(cot.r, cot.theta, pairs.centre, g.neighbour, len(table.numbers))
        strain = strain_derivative(g.r_ij, cot.r, pairs.frame, len(table.n_atoms))
        stress, virial = stress_and_virial(strain, table.cells, table.pbc)
    return AtomForces(forces=forces, torques=torques, strain_derivative=strain, virial=virial, stress=stress)


def forces_of_table(table: AtomsTable, hypers: ExpansionHypers, cotangent, *, backend: str = "numba_fused",
                    orthonormal: bool = True, self_pairs: bool = True, smooth_cutoff=None) -> AtomForces:
    """Forces, torques and stress of a scalar E whose density cotangent is ``cotangent``.

    The neighbour list and segments of
    :func:`einsum_workbench.pipeline.density.density_of_table` (:func:`force_pairs`),
    one backward variant call, then :func:`pair_forces`,
    :func:`strain_derivative` and :func:`stress_and_virial`.

    Parameters
    ----------
    table : AtomsTable
    hypers : ExpansionHypers
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dE/drho_l`` on the rows of ``density_of_table(table, hypers,
        orthonormal=orthonormal, self_pairs=self_pairs, smooth_cutoff=smooth_cutoff)``.
    backend : str
        A registered backward variant (``kernels.registry.variant_names("backward")``).
    orthonormal, self_pairs : bool
        As :func:`~einsum_workbench.pipeline.density.density_of_table`.
    smooth_cutoff : None or ``reference.cutoff.ShiftedCosine``
        The density's smooth cutoff (DESIGN.md section 3, "Smooth cutoff"):
        its derivative term joins ``dE/dr``.

    Returns
    -------
    AtomForces

    Raises
    ------
    KeyError, RuntimeError
        unknown backend (:func:`load_backward`: the registered ones listed),
        or one that cannot run here.
    ValueError, TypeError
        a bad cutoff or cell, malformed pairs, a cotangent of the wrong shape
        (the l and shape named).
    """
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff

    check_hypers(hypers)
    check_smooth_cutoff(smooth_cutoff, hypers)
    backward = load_backward(backend, smooth_cutoff)
    pairs = force_pairs(table, hypers.cutoff, self_pairs=self_pairs)
    return forces_of_pairs(backward, pairs, table, hypers, cotangent, orthonormal=orthonormal)

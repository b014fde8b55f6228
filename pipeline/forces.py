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
differences measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers


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
    ``tau_j -= dE/dtheta`` summed with ``np.bincount``.

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
    atoms = np.concatenate([centre, neighbour])
    forces = np.stack([np.bincount(atoms, np.concatenate([dE_dr[:, a], -dE_dr[:, a]]), minlength=n_atoms)
                       for a in range(3)], axis=1)
    torques = np.stack([np.bincount(neighbour, -dE_dtheta[:, a], minlength=n_atoms) for a in range(3)], axis=1)
    return forces.reshape(n_atoms, 3), torques.reshape(n_atoms, 3)


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
    outer = (r_ij[:, :, None] * dE_dr[:, None, :]).reshape(n_pairs, 9)
    return np.stack([np.bincount(frame, outer[:, k], minlength=n_frames) for k in range(9)],
                    axis=1).reshape(n_frames, 3, 3)


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


def forces_of_table(table: AtomsTable, hypers: ExpansionHypers, cotangent, *, backend: str = "torch_einsum",
                    orthonormal: bool = True, self_pairs: bool = True) -> AtomForces:
    """Forces, torques and stress of a scalar E whose density cotangent is ``cotangent``.

    The neighbour list and segments of
    :func:`einsum_workbench.pipeline.layout.table_pairs` (the layout
    :func:`einsum_workbench.pipeline.density.density_of_table` uses), one
    backward variant call, then :func:`pair_forces`,
    :func:`strain_derivative` and :func:`stress_and_virial`.

    Parameters
    ----------
    table : AtomsTable
    hypers : ExpansionHypers
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dE/drho_l`` on the rows of ``density_of_table(table, hypers,
        orthonormal=orthonormal, self_pairs=self_pairs)``.
    backend : str
        A registered backward variant (``kernels.registry.variant_names("backward")``).
    orthonormal, self_pairs : bool
        As :func:`~einsum_workbench.pipeline.density.density_of_table`.

    Returns
    -------
    AtomForces

    Raises
    ------
    KeyError, RuntimeError
        unknown backend, or one that cannot run here.
    ValueError, TypeError
        a bad cutoff or cell, malformed pairs, a cotangent of the wrong shape
        (the l and shape named).
    """
    from einsum_workbench.kernels.registry import load_variant
    from einsum_workbench.pipeline.layout import table_pairs

    check_hypers(hypers)
    backward = load_variant(backend, "backward")
    pairs = table_pairs(table, hypers.cutoff, self_pairs=self_pairs)
    cot = backward(pairs.r_ij, table.rotations[pairs.neighbour], table.semiaxes[pairs.neighbour], hypers,
                   pairs.segment, pairs.layout.n_segments, cotangent, dtype=np.float64, orthonormal=orthonormal)
    n_atoms = len(table.numbers)
    forces, torques = pair_forces(cot.r, cot.theta, pairs.centre, pairs.neighbour, n_atoms)
    strain = strain_derivative(pairs.r_ij, cot.r, pairs.frame, len(table.n_atoms))
    stress, virial = stress_and_virial(strain, table.cells, table.pbc)
    return AtomForces(forces=forces, torques=torques, strain_derivative=strain, virial=virial, stress=stress)

"""Torch models on AniSOAP features: forces and torques by ``backward()``, without a Jacobian.

:class:`CentreDensityFunction` is a ``torch.autograd.Function`` of the atoms'
positions and rotation matrices whose forward is one density variant call
(the centre density of fixed neighbour pairs) and whose backward is one
backward variant call (registry problem ``"backward"``, DESIGN.md section 3,
"Backward pass"): the incoming density cotangent ``dL/drho`` goes in, per
pair only ``dL/dr_ij`` and ``dL/dtheta_j`` come out, and they are summed onto
atoms. No per-pair coefficient or Jacobian is held between the two passes
(the per-pair Jacobian path is ``power_spectrum(..., gradients=[...])``).

:class:`TorchPowerSpectrum` builds on it the per-structure power spectrum of
:func:`einsum_workbench.pipeline.power_spectrum.power_spectrum` as a Torch
function of positions and rotation matrices (neighbour list fixed at
construction, as in one molecular-dynamics step), so that for a Torch model
``energy = model(features)``, ``energy.sum().backward()`` leaves ``-forces``
in ``positions.grad``; torques come from the rotation matrices' gradient
(:func:`torques_from_rotation_gradient`).

Rotations: the density is defined on rotation matrices only, and a backward
variant gives ``t_a = dL/dtheta_a`` along ``R -> (I + theta_a [e_a]_x) R``.
The gradient passed back for ``rotations`` is the tangent one,

    G = 1/2 sum_a t_a [e_a]_x R,

the matrix whose Frobenius product with ``[e_a]_x R`` is ``t_a`` (since
``<[e_a]_x R, [e_b]_x R> = tr([e_a]_x^T [e_b]_x) = 2 delta_ab`` for a rotation
R): exact for any upstream computation that keeps R a rotation
(quaternions, rotation vectors), and :func:`torques_from_rotation_gradient`
gives ``t`` back, minus the torque.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.pipeline.forces import force_pairs, load_backward, load_density, pair_forces
from einsum_workbench.pipeline.power_spectrum import coupling_constant

#: ``[e_alpha]_x``: the generators of rotations about the lab axes.
GENERATORS = np.array([
    [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
    [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
    [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
], dtype=np.float64)


def rotation_gradient(rotations: np.ndarray, dE_dtheta: np.ndarray) -> np.ndarray:
    """The tangent gradient ``1/2 sum_a t_a [e_a]_x R`` (module docstring).

    Parameters
    ----------
    rotations : (N, 3, 3) float array, body-to-lab rotations R
    dE_dtheta : (N, 3) float array, ``t_a`` per radian about lab axis a

    Returns
    -------
    (N, 3, 3) float64, whose Frobenius product with ``[e_a]_x R`` is ``t_a``.
    """
    return 0.5 * np.einsum("na,abc,ncd->nbd", dE_dtheta, GENERATORS, rotations)


def torques_from_rotation_gradient(rotations, grad_rotations):
    """Derivatives along infinitesimal rotations from a rotation matrix gradient.

    Parameters
    ----------
    rotations : (N, 3, 3) tensor, body-to-lab rotation matrices R
    grad_rotations : (N, 3, 3) tensor, dE/dR (e.g. ``rotations.grad``)

    Returns
    -------
    (N, 3) tensor ``dE/dtheta_alpha = <dE/dR, [e_alpha]_x R>`` (Frobenius): the
    energy's change per radian of rotation about lab axis alpha; the torque
    is its negative. For the tangent gradient :class:`CentreDensityFunction`
    passes back it is exactly ``dE/dtheta`` (module docstring).
    """
    generators = torch.from_numpy(GENERATORS).to(rotations)
    return torch.einsum("nac,xab,nbc->nx", grad_rotations, generators, rotations)


@dataclass
class DensityPairs:
    """What :class:`CentreDensityFunction` needs besides the positions and rotations.

    Attributes
    ----------
    hypers : ExpansionHypers
    centre, neighbour : (P,) int64 global atom indices of each pair's i and j
    offset : (P, 3) float64, ``r_ij - (x_j - x_i)``: the periodic image's shift, angstrom
    semiaxes : (P, 3) float64, the neighbour's semi-axes
    segment : (P,) int64, each pair's density row; n_segments : int
    n_atoms : int
    orthonormal : bool
    density, backward : the density and backward variants (``pipeline.forces.load_density``, ``load_backward``)
    """

    hypers: ExpansionHypers
    centre: np.ndarray
    neighbour: np.ndarray
    offset: np.ndarray
    semiaxes: np.ndarray
    segment: np.ndarray
    n_segments: int
    n_atoms: int
    orthonormal: bool
    density: object
    backward: object

    def pair_arrays(self, positions: np.ndarray, rotations: np.ndarray):
        """(r_ij (P, 3), the neighbour's rotation (P, 3, 3)) at these positions and rotations."""
        r_ij = positions[self.neighbour] - positions[self.centre] + self.offset
        return r_ij, np.ascontiguousarray(rotations[self.neighbour])


class CentreDensityFunction(torch.autograd.Function):
    """``apply(positions (N, 3), rotations (N, 3, 3), pairs: DensityPairs)`` -> tuple over l of
    (n_segments, 2l+1, num_radial[l]) float64 tensors, the centre density (orthonormalised when
    ``pairs.orthonormal``), on the CPU.

    Backward: one backward variant call with the incoming cotangents (an l
    whose output is unused gets zeros), ``dL/dx = -(forces)`` by
    ``pipeline.forces.pair_forces`` (``dL/dx_j += dL/dr_ij``, ``dL/dx_i -=
    dL/dr_ij``) and the tangent rotation gradient of the module docstring.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, positions, rotations, pairs):
        x = positions.detach().cpu().numpy().astype(np.float64)
        rot = rotations.detach().cpu().numpy().astype(np.float64)
        r_ij, pair_rotations = pair_arrays = pairs.pair_arrays(x, rot)
        density = pairs.density(r_ij, pair_rotations, pairs.semiaxes, pairs.hypers, pairs.segment, pairs.n_segments,
                                dtype=np.float64, orthonormal=pairs.orthonormal)
        ctx.pairs, ctx.pair_arrays, ctx.rotations, ctx.device = pairs, pair_arrays, rot, positions.device
        return tuple(torch.from_numpy(np.ascontiguousarray(rho)).to(positions.device) for rho in density)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        pairs = ctx.pairs
        cotangent = [np.zeros((pairs.n_segments, 2 * l + 1, n)) if g is None else g.detach().cpu().numpy()
                     for l, (g, n) in enumerate(zip(grads, pairs.hypers.num_radial))]
        r_ij, pair_rotations = ctx.pair_arrays
        with torch.enable_grad():  # a backward variant may run autograd itself (torch_einsum's does)
            cot = pairs.backward(r_ij, pair_rotations, pairs.semiaxes, pairs.hypers, pairs.segment, pairs.n_segments,
                                 cotangent, dtype=np.float64, orthonormal=pairs.orthonormal)
        forces, torques = pair_forces(cot.r, cot.theta, pairs.centre, pairs.neighbour, pairs.n_atoms)
        grad_positions = torch.from_numpy(-forces).to(ctx.device)
        grad_rotations = torch.from_numpy(rotation_gradient(ctx.rotations, -torques)).to(ctx.device)
        return grad_positions, grad_rotations, None


class TorchPowerSpectrum:
    """The per-structure power spectrum as a Torch function of positions and rotations.

    Parameters
    ----------
    table : AtomsTable
        The frames (``reference.frames.atoms_table(frames, ...)``): species,
        semi-axes, cells and the neighbour list are taken from it once.
    hypers : ExpansionHypers
    backend : str
        The density variant (``kernels.registry.variant_names("density")``, or
        a pair variant, as ``power_spectrum``'s).
    backward_backend : str or None
        The backward variant (``variant_names("backward")``); None: ``backend``.
    orthonormal, self_pairs, smooth_cutoff : as :func:`einsum_workbench.pipeline.power_spectrum.power_spectrum`

    ``__call__(positions (N, 3), rotations (N, 3, 3))`` returns (n_frames,
    n_features) float64 equal to ``power_spectrum(frames, ...).values`` at the
    table's own positions and rotations (to rounding of ``r_ij``); features of
    species absent from a frame are zero, as there.

    Raises
    ------
    KeyError, RuntimeError
        no density or backward variant of that name (the registered ones
        listed), or one that cannot run here.
    """

    def __init__(self, table: AtomsTable, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                 backward_backend: str | None = None, orthonormal: bool = True, self_pairs: bool = True,
                 smooth_cutoff=None):
        backward = load_backward(backend if backward_backend is None else backward_backend, smooth_cutoff)
        density = load_density(backend, smooth_cutoff)
        found = force_pairs(table, hypers.cutoff, self_pairs=self_pairs)
        g = found.grouped
        offset = g.r_ij - (table.positions[g.neighbour] - table.positions[found.centre])
        self.hypers, self.layout, self.n_frames = hypers, g.layout, len(table.n_atoms)
        self.pairs = DensityPairs(hypers=hypers, centre=found.centre, neighbour=g.neighbour, offset=offset,
                                  semiaxes=g.semiaxes, segment=g.segment, n_segments=g.layout.n_segments,
                                  n_atoms=len(table.numbers), orthonormal=orthonormal, density=density,
                                  backward=backward)

    def density(self, positions, rotations) -> tuple:
        """Per l the (n_segments, 2l+1, num_radial[l]) density, orthonormalised when asked."""
        return CentreDensityFunction.apply(positions, rotations, self.pairs)

    def __call__(self, positions, rotations):
        density = self.density(positions, rotations)
        columns = []
        for c in range(len(self.layout.centre_types)):
            lo, hi = self.layout.offsets[c], self.layout.offsets[c + 1]
            n_centres, n_types = len(self.layout.samples[c]), len(self.layout.neighbour_types[c])
            per_l = []
            for l, rho in enumerate(density):
                # rows (centre, species) -> (centre, m, species-major columns), as the labelled layout
                block = rho[lo:hi].reshape(n_centres, n_types, 2 * l + 1, -1).permute(0, 2, 1, 3)
                block = block.reshape(n_centres, 2 * l + 1, -1)
                products = torch.einsum("sma,smb->sab", block, block)
                per_l.append(coupling_constant(l) * products.reshape(n_centres, -1))
            values = torch.cat(per_l, dim=1)
            systems = self.layout.samples[c][:, 0]
            counts = np.bincount(systems, minlength=self.n_frames)
            means = torch.zeros((self.n_frames, values.shape[1]), dtype=values.dtype)
            means = means.index_add(0, torch.from_numpy(systems.astype(np.int64)), values)
            scale = torch.from_numpy(np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0))
            columns.append(means * scale[:, None])
        if not columns:
            return torch.zeros((self.n_frames, 0), dtype=torch.float64)
        return torch.cat(columns, dim=1)


__all__ = ["CentreDensityFunction", "DensityPairs", "TorchPowerSpectrum", "rotation_gradient",
           "torques_from_rotation_gradient"]

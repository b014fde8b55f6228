"""Torch models on AniSOAP features: forces and torques by ``backward()``.

:class:`PairExpansionFunction` is a ``torch.autograd.Function`` around a
gradient variant (the fused Numba kernels by default): its forward computes every pair's
coefficients, its backward their derivatives in one pass
(:mod:`einsum_workbench.reference.gradients`) and contracts the incoming
gradient with them. Nothing of Torch's autograd runs through the
expansion itself, which is what makes it fast (``bench/test_gradient_ranking.py``).

:class:`TorchPowerSpectrum` builds on it the per-structure power spectrum of
:func:`einsum_workbench.pipeline.power_spectrum.power_spectrum` as a Torch
function of the atoms' positions and rotation matrices (neighbour list fixed
at construction, as in one molecular-dynamics step), so that for a Torch
model ``energy = model(features)``, ``energy.sum().backward()`` leaves
``-forces`` in ``positions.grad``; torques come from the rotation matrices'
gradient (:func:`torques_from_rotation_gradient`).

Rotations: the expansion is defined on rotation matrices only, so the
gradient passed back for ``rotations`` is the tangent one,
``G = 1/2 sum_alpha g_alpha [e_alpha]_x R`` with ``g_alpha`` the derivative
along an infinitesimal rotation about lab axis alpha: exact for any upstream
computation that keeps R a rotation (quaternions, rotation vectors).
"""

from __future__ import annotations

import numpy as np
import torch

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.radial import orthonormalization_matrix

from einsum_workbench.pipeline.layout import table_pairs
from einsum_workbench.pipeline.power_spectrum import coupling_constant

#: ``[e_alpha]_x``: the generators of rotations about the lab axes.
GENERATORS = np.array([
    [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
    [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
    [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
], dtype=np.float64)


def _flat(per_l, n_pairs: int, leading=()) -> np.ndarray:
    """Per-l arrays (P, *leading, 2l+1, n_l) side by side: (P, *leading, K)."""
    return np.concatenate([a.reshape(n_pairs, *leading, -1) for a in per_l], axis=-1)


class PairExpansionFunction(torch.autograd.Function):
    """``apply(r_ij, rotations, semiaxes, hypers, backend)`` -> (P, K) float64 tensor.

    Columns are the raw coefficients of l = 0..lmax side by side, each l's
    ``(2l+1, num_radial[l])`` flattened row-major. Differentiable with
    respect to ``r_ij`` (P, 3) and ``rotations`` (P, 3, 3) (tangent gradient,
    module docstring); ``semiaxes`` are constants here.

    The forward pass runs the pair variant ``backend`` (values only: an
    energy without forces costs no derivatives); the backward pass runs its
    gradient variant on the saved inputs and contracts the incoming gradient
    with the derivatives, so the 7x larger Jacobian is never held between
    the two passes.
    """

    @staticmethod
    def forward(ctx, r_ij, rotations, semiaxes, hypers, backend):
        from einsum_workbench.kernels.registry import load_variant

        arrays = [t.detach().cpu().numpy().astype(np.float64) for t in (r_ij, rotations, semiaxes)]
        values = load_variant(backend, "pairs")(*arrays, hypers, dtype=np.float64)
        ctx.arrays, ctx.hypers, ctx.backend = arrays, hypers, backend
        ctx.save_for_backward(rotations.detach())
        return torch.from_numpy(_flat(values, len(arrays[0]))).to(r_ij.device)

    @staticmethod
    def backward(ctx, grad_values):
        from einsum_workbench.kernels.registry import load_variant

        (rotations,) = ctx.saved_tensors
        result = load_variant(ctx.backend, "gradients")(*ctx.arrays, ctx.hypers, dtype=np.float64)
        n_pairs = len(ctx.arrays[0])
        d_r = torch.from_numpy(_flat(result.positions, n_pairs, (3,)))
        d_theta = torch.from_numpy(_flat(result.orientations, n_pairs, (3,)))
        grad_values = grad_values.to(d_r.dtype).cpu()
        grad_r = torch.einsum("pk,pxk->px", grad_values, d_r)
        grad_theta = torch.einsum("pk,pxk->px", grad_values, d_theta)
        generators = torch.from_numpy(GENERATORS)
        grad_rotations = 0.5 * torch.einsum("px,xab,pbc->pac", grad_theta, generators, rotations.cpu().to(d_r.dtype))
        device = rotations.device
        return grad_r.to(device), grad_rotations.to(device), None, None, None


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
    is its negative.
    """
    generators = torch.from_numpy(GENERATORS).to(rotations)
    return torch.einsum("nac,xab,nbc->nx", grad_rotations, generators, rotations)


class TorchPowerSpectrum:
    """The per-structure power spectrum as a Torch function of positions and rotations.

    Parameters
    ----------
    table : AtomsTable
        The frames (``reference.frames.atoms_table(frames, ...)``): species,
        semi-axes, cells and the neighbour list are taken from it once.
    hypers : ExpansionHypers
    backend : str
        A gradient variant (``kernels.registry.variant_names("gradients")``).
    orthonormal, self_pairs : as :func:`einsum_workbench.pipeline.power_spectrum.power_spectrum`

    ``__call__(positions (N, 3), rotations (N, 3, 3))`` returns (n_frames,
    n_features) float64 equal to ``power_spectrum(frames, ...).values`` at the
    table's own positions and rotations; features of species absent from a
    frame are zero, as there.
    """

    def __init__(self, table: AtomsTable, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                 orthonormal: bool = True, self_pairs: bool = True):
        self.hypers, self.backend = hypers, backend
        pairs = table_pairs(table, hypers.cutoff, self_pairs=self_pairs)
        self.gi, self.gj = torch.from_numpy(pairs.centre), torch.from_numpy(pairs.neighbour)
        self.offset = torch.from_numpy(np.einsum("pk,pkx->px", pairs.shift.astype(np.float64), table.cells[pairs.frame]))
        self.layout, self.segment = pairs.layout, torch.from_numpy(pairs.segment)
        self.semiaxes = torch.from_numpy(table.semiaxes[pairs.neighbour])
        self.weights = [torch.from_numpy(np.array(orthonormalization_matrix(l, hypers))) if orthonormal else None
                        for l in range(hypers.lmax + 1)]
        self.n_frames = len(table.n_atoms)

    def density(self, positions, rotations) -> list:
        """Per l the (n_segments, 2l+1, num_radial[l]) density, orthonormalised when asked."""
        r_ij = positions[self.gj] - positions[self.gi] + self.offset
        flat = PairExpansionFunction.apply(r_ij, rotations[self.gj], self.semiaxes, self.hypers, self.backend)
        out, start = [], 0
        for l, n_radial in enumerate(self.hypers.num_radial):
            width = (2 * l + 1) * n_radial
            pairs = flat[:, start:start + width].reshape(-1, 2 * l + 1, n_radial)
            start += width
            rho = torch.zeros((self.layout.n_segments, 2 * l + 1, n_radial), dtype=flat.dtype)
            rho = rho.index_add(0, self.segment, pairs)
            out.append(rho if self.weights[l] is None else rho @ self.weights[l])
        return out

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
        return torch.cat(columns, dim=1)


__all__ = ["PairExpansionFunction", "TorchPowerSpectrum", "torques_from_rotation_gradient"]

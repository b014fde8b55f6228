"""``torch_einsum`` backward: the centre density's vector-Jacobian product by Torch autograd.

Contract: registry problem ``"backward"``
(:mod:`einsum_workbench.reference.backward`, :class:`~einsum_workbench.reference.backward.PairCotangents`).

Nothing is differentiated by hand. Per chunk of pairs, the ``torch_einsum``
core (:func:`~einsum_workbench.kernels.torch.common.chunk_core`, functional
moment recurrence) gives the raw coefficients of the chunk's pairs with
``r_ij``, a rotation parameter ``theta`` and (when asked) the semi-axes as
autograd leaves, ``R(theta) = (I + [theta]_x) R`` at ``theta = 0`` (the
derivative along the contract's infinitesimal rotation about each lab axis).
The scalar ``sum_p <g_raw[segment[p]], c(p)>``, with the raw cotangent
``g_l W_l^T`` (:func:`~einsum_workbench.reference.backward.raw_cotangent`)
gathered per pair, is the chunk's part of ``L = sum_l <g_l, rho_l>`` (the
density is linear in the pair coefficients), and one reverse-mode
``torch.autograd.grad`` returns its gradient along the leaves: a VJP, 6 (9)
numbers per pair. The per-pair coefficients exist only inside the chunk.

Options: ``device`` ("cpu" or "cuda[:index]") and ``chunk`` (pairs per
chunk; the autograd tape holds the chunk's moment recurrence, so memory
grows with ``chunk * num_monomials(max_degree)``; default
:func:`~einsum_workbench.kernels.torch.gradients.default_chunk`). Computation
is in ``dtype`` (float64 when the inputs are float64).
"""

from __future__ import annotations

import numpy as np
import torch

from einsum_workbench.reference.backward import PairCotangents, check_backward_inputs, raw_cotangent
from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.torch.common import (
    TORCH_DTYPES,
    chunk_core,
    contraction_groups,
    layer_plan,
    resolve_device,
    to_tensor,
)
from einsum_workbench.kernels.torch.common import levi_civita
from einsum_workbench.kernels.torch.gradients import default_chunk


def _chunk_backward(r_ij, rotations, semiaxes, gathered, hypers: ExpansionHypers, semiaxes_gradients: bool):
    """dL/dr, dL/dtheta (and dL/dl) of one chunk.

    ``gathered``: list over l of (P, 2l+1, num_radial[l]) tensors, the raw
    cotangent of each pair's segment. Returns a tuple of (P, 3) tensors.
    """
    dtype, device = r_ij.dtype, str(r_ij.device)
    plan = layer_plan(hypers.max_degree, dtype, device)
    groups = contraction_groups(hypers, dtype, device)
    eps = levi_civita(dtype, device)
    r = r_ij.detach().clone().requires_grad_(True)
    theta = torch.zeros_like(r_ij, requires_grad=True)
    axes = semiaxes.detach().clone().requires_grad_(bool(semiaxes_gradients))
    rot = rotations + torch.einsum("ijk,pj,pkl->pil", eps, theta, rotations)
    blocks = chunk_core(r, rot, axes, hypers=hypers, plan=plan, groups=groups, functional=True)
    n = r_ij.shape[0]
    total = r.new_zeros(())
    for group, value in zip(groups, blocks):
        for l, first, last in group.columns:
            total = total + (value[:, first:last] * gathered[l].reshape(n, -1)).sum()
    leaves = (r, theta, axes) if semiaxes_gradients else (r, theta)
    return torch.autograd.grad(total, leaves, allow_unused=True)


def centre_density_backward(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, cotangent, *,
                            dtype=None, orthonormal: bool = False, semiaxes_gradients: bool = False, device="cpu",
                            chunk: int | None = None) -> PairCotangents:
    """Vector-Jacobian product of the centre density by reverse-mode Torch autograd.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, proper rotations (body to lab)
    semiaxes : (P, 3) float array, angstrom
    hypers : ExpansionHypers
    segment : (P,) int array, each pair's density row in ``[0, n_segments)``
    n_segments : int >= 0
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dL/drho_l``, on orthonormalised rows when ``orthonormal``.
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs').
    orthonormal : bool
        The density is Loewdin-orthonormalised along n.
    semiaxes_gradients : bool
        Also ``dL/dl_k``.
    device : "cpu" (default) or "cuda[:index]"
    chunk : int or None
        Most pairs per chunk (None: module docstring).

    Returns
    -------
    PairCotangents of NumPy arrays of ``dtype``: ``r`` [L per angstrom],
    ``theta`` [L per radian], ``semiaxes`` [L per angstrom] or None; each (P, 3).

    Raises
    ------
    ValueError, TypeError
        malformed pairs, segments or cotangent (the l and shape named), a
        non-positive ``chunk``, a bad ``device`` string.
    RuntimeError
        ``device="cuda"`` and no CUDA device is usable.
    """
    r_ij, rotations, semiaxes, dtype, segment, n_segments, cotangent = check_backward_inputs(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal, semiaxes_gradients)
    if chunk is None:
        chunk = default_chunk(hypers, bool(semiaxes_gradients))
    elif isinstance(chunk, bool) or int(chunk) <= 0:
        raise ValueError(f"chunk must be a positive number of pairs, got {chunk!r}")
    chunk = int(chunk)
    device = resolve_device(device)
    tdtype = TORCH_DTYPES[np.dtype(dtype)]
    n_pairs = r_ij.shape[0]
    n_q = 3 if semiaxes_gradients else 2
    out = [np.zeros((n_pairs, 3), dtype=dtype) for _ in range(n_q)]
    if n_pairs:
        raw = [torch.as_tensor(g, dtype=tdtype, device=device)
               for g in raw_cotangent(cotangent, hypers, bool(orthonormal))]
        inputs = [to_tensor(np.ascontiguousarray(a, dtype=dtype), device) for a in (r_ij, rotations, semiaxes)]
        index = torch.as_tensor(segment, device=device)
        chunk = -(-n_pairs // -(-n_pairs // chunk))  # equal chunks
        for start in range(0, n_pairs, chunk):
            stop = min(start + chunk, n_pairs)
            rows = index[start:stop]
            grads = _chunk_backward(*(a[start:stop] for a in inputs), [g[rows] for g in raw], hypers,
                                    bool(semiaxes_gradients))
            for q, g in enumerate(grads):
                if g is not None:  # None: L does not depend on that leaf in this chunk
                    out[q][start:stop] = g.detach().cpu().numpy()
    return PairCotangents(r=out[0], theta=out[1], semiaxes=out[2] if semiaxes_gradients else None)

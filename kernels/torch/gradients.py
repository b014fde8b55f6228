"""``torch_einsum`` gradients: the pair expansion and its derivatives by Torch autograd.

The gradient contract (registry problem ``"gradients"``,
:class:`einsum_workbench.reference.gradients.PairGradients`): per pair and
angular channel l, the raw coefficients ``c_l[m, n]`` and their derivatives
along the pair vector ``r_ij``, along infinitesimal rotations of the
neighbour about each lab axis and, when asked, along its semi-axes.

Nothing here is differentiated by hand: the coefficients are the
``torch_einsum`` variant's own arithmetic (its
:func:`~einsum_workbench.kernels.torch.pairs.body_frame_gaussians`, the
functional moment recurrence
:func:`~einsum_workbench.kernels.torch.pairs.normal_moments_functional` and
its contraction groups, all through its per-chunk core), and Torch's
forward-mode autograd (``torch.func.jvp`` under ``torch.func.vmap`` over the
tangent directions) carries the derivatives through it. That makes this the
oracle the equivalence suite checks the hand-written gradient kernels against
(itself checked against finite differences of the reference).

Parametrisation, so that each derivative is one tangent direction:

- positions: the pair vector itself, tangents ``e_alpha``;
- orientations: ``R(theta) = (I + sum_alpha theta_alpha [e_alpha]_x) R`` at
  ``theta = 0``, tangents ``e_alpha`` on ``theta``; this curve agrees with the
  exact rotation ``exp(theta_alpha [e_alpha]_x) R`` to first order, so the
  derivative is the contract's;
- semi-axes: tangents ``e_k`` on ``l``.

Forward mode suits the problem: each pair has only 6 (or 9) input directions
and hundreds of outputs. Under ``vmap`` the primal is computed once per chunk
and the tangents batched, so a chunk costs about the primal plus 6 (9)
tangent passes of the same arithmetic. Measured on the default workload
(lmax 6, one pinned thread, a shared 2-core Xeon): about 40 us per pair,
some 25x ``torch_einsum``'s values alone; replicating the pairs once per
direction under a single ``jvp`` instead was slower (47 us).

Options: ``device`` ("cpu" or "cuda[:index]", as ``torch_einsum``) and
``chunk`` (pairs per chunk; working memory grows with
``chunk * num_monomials(max_degree) * (1 + directions)`` values and the
layer copies of the functional recurrence). The default chunk is
``DEFAULT_CHUNK`` pairs, fewer when that would exceed ``CHUNK_VALUES``
moment values (high degrees). Computation is in ``dtype``
(float64 by default when the inputs are float64; float32 computes
everything, derivatives included, in float32).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from einsum_workbench.reference.gradients import PairGradients
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.tables import num_monomials
from einsum_workbench.kernels.torch.common import (
    TORCH_DTYPES,
    chunk_core,
    contraction_groups,
    layer_plan,
    levi_civita,
    resolve_device,
    to_tensor,
)

with warnings.catch_warnings():
    # torch.func.jvp loads this on first use, and it calls the deprecated torch.jit.script (Torch's, not ours)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # moved or gone in another Torch: then nothing to silence
        pass

#: largest pairs per chunk (the fastest measured at lmax 6 on one core: 38 us/pair at 4096,
#: 58 at 1024 where the per-operation cost of vmap and jvp dominates, 50 at 16384, out of cache)
DEFAULT_CHUNK = 4096
#: default chunks hold at most this many moment values (primal and tangents): 32 MiB in float64
CHUNK_VALUES = 1 << 22

def _tangents(n_pairs: int, semiaxes_gradients: bool, dtype: torch.dtype, device) -> tuple:
    """Tangent directions, stacked on a leading axis of length 6 (or 9).

    Returns (dr, dtheta, dl), each ``(directions, n_pairs, 3)``: rows 0-2 move
    r_ij along e_alpha, rows 3-5 theta along e_alpha, rows 6-8 the semi-axis k.
    """
    n_dir = 9 if semiaxes_gradients else 6
    eye = torch.eye(3, dtype=dtype, device=device)[:, None, :].expand(3, n_pairs, 3)
    zero = torch.zeros((3, n_pairs, 3), dtype=dtype, device=device)
    dr = torch.cat([eye, zero, zero][: n_dir // 3])
    dtheta = torch.cat([zero, eye, zero][: n_dir // 3])
    dl = torch.cat([zero, zero, eye][: n_dir // 3])
    return dr, dtheta, dl


def default_chunk(hypers: ExpansionHypers, semiaxes_gradients: bool = False) -> int:
    """Pairs per chunk when none is given: ``DEFAULT_CHUNK``, or fewer so that
    the moments of a chunk with their 6 (9) tangents stay within ``CHUNK_VALUES``
    values; at least 64."""
    directions = 9 if semiaxes_gradients else 6
    return max(64, min(DEFAULT_CHUNK, CHUNK_VALUES // (num_monomials(hypers.max_degree) * (1 + directions))))


def _chunk_with_tangents(r_ij, rotations, semiaxes, hypers: ExpansionHypers, semiaxes_gradients: bool):
    """Values and derivatives of one chunk.

    Parameters
    ----------
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3) : tensors of one float dtype

    Returns
    -------
    tuple over contraction groups of (values (P, Q), derivatives (directions, P, Q)).
    """
    dtype, device = r_ij.dtype, str(r_ij.device)
    plan = layer_plan(hypers.max_degree, dtype, device)
    groups = contraction_groups(hypers, dtype, device)
    eps = levi_civita(dtype, device)
    theta0 = torch.zeros_like(r_ij)

    def coefficients(r, theta, axes):
        # R(theta) = (I + [theta]_x) R: at theta = 0 the rotation itself, its tangent W R
        rot = rotations + torch.einsum("ijk,pj,pkl->pil", eps, theta, rotations)
        return chunk_core(r, rot, axes, hypers=hypers, plan=plan, groups=groups, functional=True)

    def one_direction(dr, dtheta, dl):
        return torch.func.jvp(coefficients, (r_ij, theta0, semiaxes), (dr, dtheta, dl))

    values, derivatives = torch.func.vmap(one_direction)(*_tangents(r_ij.shape[0], semiaxes_gradients, dtype,
                                                                    r_ij.device))
    return tuple((v[0], d) for v, d in zip(values, derivatives))


def expand_with_gradients(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                          semiaxes_gradients: bool = False, device="cpu", chunk: int | None = None) -> PairGradients:
    """Raw coefficients and their derivatives, by forward-mode Torch autograd.

    The gradient contract (:mod:`einsum_workbench.reference.gradients`,
    :class:`~einsum_workbench.reference.gradients.PairGradients`).

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, proper rotations (body to lab)
    semiaxes : (P, 3) float array, angstrom
    hypers : ExpansionHypers
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs').
    semiaxes_gradients : bool
        Also return the derivatives along each semi-axis.
    device : "cpu" (default) or "cuda[:index]"
    chunk : int or None
        Most pairs per chunk (the pairs are split into equal chunks); None:
        :func:`default_chunk` (module docstring: memory).

    Returns
    -------
    PairGradients of NumPy arrays of ``dtype``: ``values[l]`` (P, 2l+1,
    num_radial[l]); ``positions[l]`` [per angstrom], ``orientations[l]`` [per
    radian] and ``semiaxes[l]`` [per angstrom] (P, 3, 2l+1, num_radial[l]);
    ``semiaxes`` None unless asked for.

    Raises
    ------
    ValueError, TypeError
        malformed pairs (:func:`~einsum_workbench.reference.validation.check_pair_arrays`:
        non-finite values, a matrix that is not a proper rotation, ...),
        a non-positive ``chunk``, a bad ``device`` string, a
        ``semiaxes_gradients`` that is not a bool.
    RuntimeError
        ``device="cuda"`` and no CUDA device is usable.
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    if not isinstance(semiaxes_gradients, (bool, np.bool_)):
        raise TypeError(f"semiaxes_gradients must be a bool, got {semiaxes_gradients!r}")
    if chunk is None:
        chunk = default_chunk(hypers, semiaxes_gradients)
    elif isinstance(chunk, bool) or int(chunk) <= 0:
        raise ValueError(f"chunk must be a positive number of pairs, got {chunk!r}")
    chunk = int(chunk)
    device = resolve_device(device)
    tdtype = TORCH_DTYPES[np.dtype(dtype)]
    n_pairs = r_ij.shape[0]
    shapes = [(2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
    values = [np.empty((n_pairs, *s), dtype=dtype) for s in shapes]
    quantities = ("positions", "orientations", "semiaxes")[: 3 if semiaxes_gradients else 2]
    grads = {q: [np.empty((n_pairs, 3, *s), dtype=dtype) for s in shapes] for q in quantities}
    if n_pairs:
        inputs = [to_tensor(a, device) for a in (r_ij, rotations, semiaxes)]
        groups = contraction_groups(hypers, tdtype, str(device))
        chunk = -(-n_pairs // -(-n_pairs // chunk))  # equal chunks: no small last one paying the fixed costs
        with torch.no_grad():  # forward mode needs no tape
            for start in range(0, n_pairs, chunk):
                stop = min(start + chunk, n_pairs)
                blocks = _chunk_with_tangents(*(a[start:stop] for a in inputs), hypers, semiaxes_gradients)
                for group, (value, derivative) in zip(groups, blocks):
                    value, derivative = value.cpu().numpy(), derivative.cpu().numpy()
                    for l, first, last in group.columns:
                        values[l][start:stop] = value[:, first:last].reshape(stop - start, *shapes[l])
                        for qi, q in enumerate(quantities):
                            block = derivative[3 * qi: 3 * qi + 3, :, first:last]  # (3, P, Q_l)
                            grads[q][l][start:stop] = block.reshape(3, stop - start, *shapes[l]).transpose(1, 0, 2, 3)
    return PairGradients(values=values, positions=grads["positions"], orientations=grads["orientations"],
                         semiaxes=grads.get("semiaxes"))

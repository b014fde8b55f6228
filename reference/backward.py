"""The backward pass of the centre density: contract, reference and finite differences.

Registry problem ``"backward"`` (``kernels.registry.BACKWARD_VARIANTS``), the
vector-Jacobian product of the centre density (DESIGN.md section 3,
"Backward pass (vector-Jacobian product)")::

    centre_density_backward(r_ij, rotations, semiaxes, hypers, segment, n_segments,
                            cotangent, *, dtype=None, orthonormal=False,
                            semiaxes_gradients=False, **options) -> PairCotangents

Given a scalar ``L`` of the centre density ``rho`` (the contract of
:mod:`einsum_workbench.reference.density`) and its *cotangent*
``g_l = dL/drho_l``, a list over l of ``(n_segments, 2l+1, num_radial[l])``
arrays (on orthonormalised rows when ``orthonormal``), a backward variant
returns per neighbour pair p only

- ``r[p, alpha] = dL/d r_ij[p, alpha]`` (units of L per angstrom),
- ``theta[p, alpha] = dL/d theta_alpha`` along an infinitesimal rotation of
  the pair's neighbour about lab axis alpha, ``R -> (I + theta_alpha
  [e_alpha]_x) R`` (per radian), the convention of
  :mod:`einsum_workbench.reference.gradients`,
- optionally ``semiaxes[p, k] = dL/d l_k`` (per angstrom),

never a per-pair coefficient or Jacobian.

The chain rule: ``rho_l[s] = sum_{p: segment[p] = s} c_l(p)``, then
``rho_l @ W_l`` when orthonormalised, so the raw cotangent of segment s is
``g_l[s] @ W_l^T`` (:func:`raw_cotangent`) and
``dL/dx_p = sum_l sum_{m,n} (g_l W_l^T)[segment[p], m, n] dc_l(p)[m, n]/dx_p``.

:func:`centre_density_backward` is that sentence in code: the reference
gradients (:func:`~einsum_workbench.reference.gradients.finite_difference_gradients`,
central differences of the reference expansion) contracted with the
gathered raw cotangent. :func:`finite_difference_backward` checks it
independently, by central differences of ``L = sum_l <g_l, rho_l>`` computed
through a whole centre density (moving one pair at a time).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from einsum_workbench.reference.density import centre_density, check_segments
from einsum_workbench.reference.gradients import (
    ORIENTATION_STEP,
    POSITION_STEP,
    SEMIAXIS_STEP,
    finite_difference_gradients,
    small_rotations,
)
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays


class PairCotangents(NamedTuple):
    """Per-pair derivatives of a scalar of the centre density (module docstring).

    Attributes
    ----------
    r : (P, 3) array
        ``dL/dr_ij`` (per angstrom). The derivative along the neighbour's
        position is this, along the centre's its negative.
    theta : (P, 3) array
        ``dL/dtheta`` along infinitesimal rotations of the neighbour about
        each lab axis (per radian); minus it is the torque on the neighbour.
    semiaxes : (P, 3) array or None
        ``dL/dl_k`` along the neighbour's body semi-axes (per angstrom), None
        unless asked for.
    """

    r: np.ndarray
    theta: np.ndarray
    semiaxes: np.ndarray | None = None


def check_cotangent(cotangent, hypers: ExpansionHypers, n_segments: int) -> list:
    """Validate a centre-density cotangent.

    Parameters
    ----------
    cotangent : sequence over l = 0..lmax of array_like
        ``dL/drho_l``, each of shape ``(n_segments, 2l+1, num_radial[l])``.
    hypers : ExpansionHypers
    n_segments : int

    Returns
    -------
    list of C-contiguous float64 arrays.

    Raises
    ------
    TypeError
        ``cotangent`` is not a sequence of arrays, or an entry is not real-valued.
    ValueError
        wrong number of channels, an entry of the wrong shape (the message
        names l, the shape given and the shape expected), or a non-finite entry.
    """
    if isinstance(cotangent, np.ndarray) or not isinstance(cotangent, (list, tuple)):
        raise TypeError(f"cotangent must be a list over l of arrays, got {type(cotangent).__name__}")
    n_l = hypers.lmax + 1
    if len(cotangent) != n_l:
        raise ValueError(f"cotangent must have one array per l = 0..{hypers.lmax} ({n_l}), got {len(cotangent)}")
    out = []
    for l, (g, n_radial) in enumerate(zip(cotangent, hypers.num_radial)):
        g = np.asarray(g)
        expected = (n_segments, 2 * l + 1, n_radial)
        if g.shape != expected:
            raise ValueError(f"cotangent for l = {l} must have shape {expected} (n_segments, 2l+1, num_radial[l]), "
                             f"got {g.shape}")
        if g.dtype.kind not in "fiu":
            raise TypeError(f"cotangent for l = {l} must be real-valued, got dtype {g.dtype}")
        g = np.ascontiguousarray(g, dtype=np.float64)
        if not np.all(np.isfinite(g)):
            index = tuple(int(k) for k in np.argwhere(~np.isfinite(g))[0])
            raise ValueError(f"cotangent for l = {l} has a non-finite entry {float(g[index])!r} at {index}")
        out.append(g)
    return out


def raw_cotangent(cotangent, hypers: ExpansionHypers, orthonormal: bool) -> list:
    """The cotangent on raw (not orthonormalised) density rows.

    ``rho_orth_l = rho_l @ W_l`` (:func:`~einsum_workbench.reference.radial.orthonormalization_matrix`),
    so ``dL/drho_l = g_l @ W_l^T``; the cotangent itself when not ``orthonormal``.

    Parameters
    ----------
    cotangent : list over l of (S, 2l+1, num_radial[l]) float arrays (validated)
    hypers : ExpansionHypers
    orthonormal : bool

    Returns
    -------
    list over l of (S, 2l+1, num_radial[l]) arrays of the cotangent's dtype.
    """
    if not orthonormal:
        return list(cotangent)
    return [g @ orthonormalization_matrix(l, hypers).astype(g.dtype, copy=False).T
            for l, g in enumerate(cotangent)]


def check_backward_inputs(r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype,
                          orthonormal, semiaxes_gradients):
    """The checks every backward variant runs first.

    Returns
    -------
    (r_ij, rotations, semiaxes, out_dtype, segment, n_segments, cotangent):
    the pair arrays as :func:`~einsum_workbench.reference.validation.check_pair_arrays`
    returns them, segment as int64, the cotangent as float64 arrays
    (:func:`check_cotangent`, not yet turned raw).

    Raises
    ------
    TypeError, ValueError
        as ``check_pair_arrays``, :func:`~einsum_workbench.reference.density.check_segments`
        and :func:`check_cotangent`; ``orthonormal`` or ``semiaxes_gradients``
        not a bool (named).
    """
    check_hypers(hypers)
    for name, flag in (("orthonormal", orthonormal), ("semiaxes_gradients", semiaxes_gradients)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
    r_ij, rotations, semiaxes, out_dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    cotangent = check_cotangent(cotangent, hypers, n_segments)
    return r_ij, rotations, semiaxes, out_dtype, segment, n_segments, cotangent


def contract_pair_gradients(gradients, raw, segment, semiaxes_gradients: bool) -> PairCotangents:
    """Contract per-pair coefficient derivatives with the gathered raw cotangent.

    Parameters
    ----------
    gradients : PairGradients
        ``positions[l]``, ``orientations[l]`` (and ``semiaxes[l]``) of shape
        ``(P, 3, 2l+1, num_radial[l])``.
    raw : list over l of (S, 2l+1, num_radial[l]) float64
        Cotangent on raw rows (:func:`raw_cotangent`).
    segment : (P,) int64
    semiaxes_gradients : bool

    Returns
    -------
    PairCotangents of float64 arrays, ``dL/dx[p, a] = sum_{l,m,n} d c_l[p, a, m, n] raw_l[segment[p], m, n]``.
    """
    n_pairs = len(segment)
    quantities = ("positions", "orientations", "semiaxes")[: 3 if semiaxes_gradients else 2]
    out = {q: np.zeros((n_pairs, 3)) for q in quantities}
    for l, g in enumerate(raw):
        gathered = g[segment]  # (P, 2l+1, n)
        for q in quantities:
            out[q] += np.einsum("pamn,pmn->pa", np.asarray(getattr(gradients, q)[l], dtype=np.float64), gathered)
    return PairCotangents(r=out["positions"], theta=out["orientations"], semiaxes=out.get("semiaxes"))


def centre_density_backward(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, cotangent, *,
                            dtype=None, orthonormal: bool = False, semiaxes_gradients: bool = False) -> PairCotangents:
    """Reference vector-Jacobian product of the centre density (module docstring).

    The reference gradients of every pair
    (:func:`~einsum_workbench.reference.gradients.finite_difference_gradients`)
    contracted with its segment's raw cotangent ``g_l W_l^T``. Cost: 13 (19
    with semi-axes) reference expansions per pair, the per-pair Jacobian
    held in memory: a reference, not a kernel.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, body-to-lab rotation of neighbour j
    semiaxes : (P, 3) float array, angstrom, > 0
    hypers : ExpansionHypers
    segment : (P,) int array, each pair's density row in ``[0, n_segments)``
    n_segments : int >= 0
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dL/drho_l``, on orthonormalised rows when ``orthonormal``.
    dtype : None, float32 or float64
        Output dtype (None: the inputs'); computed in float64.
    orthonormal : bool
        The density is Loewdin-orthonormalised along n (AniSOAP's ``normalize=True``).
    semiaxes_gradients : bool
        Also ``dL/dl_k``.

    Returns
    -------
    PairCotangents: ``r``, ``theta`` (and ``semiaxes``) (P, 3) of ``dtype``.
    Their error is that of the finite differences, about 1e-9 relative.

    Raises
    ------
    ValueError, TypeError
        malformed pairs, segments or cotangent (:func:`check_backward_inputs`:
        the message names the pair, the value, or the l and shape).
    """
    r_ij, rotations, semiaxes, out_dtype, segment, n_segments, cotangent = check_backward_inputs(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal, semiaxes_gradients)
    raw = raw_cotangent(cotangent, hypers, orthonormal)
    if len(r_ij) == 0:
        empty = np.zeros((0, 3), dtype=out_dtype)
        return PairCotangents(r=empty, theta=empty.copy(), semiaxes=empty.copy() if semiaxes_gradients else None)
    r_ij, rotations, semiaxes = (np.asarray(a, dtype=np.float64) for a in (r_ij, rotations, semiaxes))
    gradients = finite_difference_gradients(r_ij, rotations, semiaxes, hypers, dtype=np.float64,
                                            semiaxes_gradients=bool(semiaxes_gradients))
    result = contract_pair_gradients(gradients, raw, segment, bool(semiaxes_gradients))
    return PairCotangents(*(None if a is None else a.astype(out_dtype) for a in result))


def density_functional(density, cotangent) -> float:
    """``L = sum_l sum_{s,m,n} g_l[s, m, n] rho_l[s, m, n]``: the scalar whose
    cotangent is ``g`` (both lists over l of equal shapes)."""
    return float(sum(np.vdot(np.asarray(g, dtype=np.float64), np.asarray(rho, dtype=np.float64))
                     for g, rho in zip(cotangent, density)))


def finite_difference_backward(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, cotangent, *,
                               orthonormal: bool = False, semiaxes_gradients: bool = False,
                               density: Callable = centre_density) -> PairCotangents:
    """Central finite differences of ``L = sum_l <g_l, rho_l>`` through a whole centre density.

    Each pair in turn is moved (``r_ij[p, alpha] +- h``; an exact rotation
    by ``+- ORIENTATION_STEP`` about lab axis alpha applied on the left of
    its ``R``; ``l_k (1 +- SEMIAXIS_STEP)``), the other pairs left as they
    are, and the density of the whole batch recomputed. All these copies of
    the batch go through ``density`` in one call, each copy with its own
    block of ``n_segments`` rows, so the cost is ``12 P`` (18 P) times the
    batch: for the suite's few dozen pairs, not for real workloads.

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, orthonormal, semiaxes_gradients
        As :func:`centre_density_backward`.
    density : callable
        A centre density with the ``"density"`` contract (default the reference,
        :func:`einsum_workbench.reference.density.centre_density`).

    Returns
    -------
    PairCotangents of float64 arrays. Steps as
    :mod:`einsum_workbench.reference.gradients` (``POSITION_STEP * max(1, sigma)``
    angstrom, ``ORIENTATION_STEP`` radian, relative ``SEMIAXIS_STEP``):
    error O(step^2), about 1e-9 relative, plus the rounding of L / step.

    Raises
    ------
    ValueError, TypeError
        as :func:`centre_density_backward`.
    """
    r_ij, rotations, semiaxes, _, segment, n_segments, cotangent = check_backward_inputs(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, np.float64, orthonormal,
        semiaxes_gradients)
    r_ij, rotations, semiaxes = (np.asarray(a, dtype=np.float64) for a in (r_ij, rotations, semiaxes))
    n_pairs = len(r_ij)
    n_q = 3 if semiaxes_gradients else 2
    if n_pairs == 0:
        empty = np.zeros((0, 3))
        return PairCotangents(r=empty, theta=empty.copy(), semiaxes=empty.copy() if semiaxes_gradients else None)
    h_r = POSITION_STEP * max(1.0, hypers.sigma if hypers.radial_basis == "gto" else 1.0)
    turns = [small_rotations(sign * ORIENTATION_STEP) for sign in (1.0, -1.0)]
    rs, rots, axes, steps = [], [], [], np.empty((n_q, 3, n_pairs))
    for q in range(n_q):
        for alpha in range(3):
            for p in range(n_pairs):
                for si, sign in enumerate((1.0, -1.0)):
                    r, rot, ax = r_ij.copy(), rotations.copy(), semiaxes.copy()
                    if q == 0:
                        r[p, alpha] += sign * h_r
                    elif q == 1:
                        rot[p] = turns[si][alpha] @ rotations[p]
                    else:
                        ax[p, alpha] *= 1.0 + sign * SEMIAXIS_STEP
                    rs.append(r)
                    rots.append(rot)
                    axes.append(ax)
                steps[q, alpha, p] = (h_r, ORIENTATION_STEP, SEMIAXIS_STEP * semiaxes[p, alpha])[q]
    n_copies = len(rs)
    copy_segment = (segment[None, :] + n_segments * np.arange(n_copies)[:, None]).reshape(-1)
    rho = density(np.concatenate(rs), np.concatenate(rots), np.concatenate(axes), hypers, copy_segment,
                  n_segments * n_copies, dtype=np.float64, orthonormal=orthonormal)
    values = np.zeros(n_copies)
    for g, block in zip(cotangent, rho):
        values += np.einsum("csmn,smn->c", np.asarray(block).reshape(n_copies, *g.shape), g)
    values = values.reshape(n_q, 3, n_pairs, 2)
    derivative = (values[..., 0] - values[..., 1]) / (2.0 * steps)  # (q, alpha, P)
    result = [np.ascontiguousarray(derivative[q].T) for q in range(n_q)]
    return PairCotangents(r=result[0], theta=result[1], semiaxes=result[2] if semiaxes_gradients else None)

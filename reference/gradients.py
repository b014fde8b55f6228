"""Gradients of the pair coefficients: the contract and the finite-difference reference.

What a gradient variant returns (registry problem ``"gradients"``), for each
neighbour pair (i, j) and angular channel l, beside the raw coefficients
``c_l[m, n]`` of DESIGN.md section 3:

- ``positions[l][p, alpha, m, n] = d c_l[m, n] / d r_alpha`` with
  ``r = r_ij`` the pair vector (angstrom^-1 times the coefficient's unit). The
  gradient with respect to the neighbour's position is this, with respect
  to the centre's position its negative.
- ``orientations[l][p, alpha, m, n] = d c_l[m, n] / d theta_alpha`` along an
  infinitesimal rotation of the neighbour's body frame about lab axis alpha,
  ``R -> (I + theta_alpha [e_alpha]_x) R`` (radian^-1). Minus the derivative of
  an energy along these three directions is the torque on the neighbour.
- optionally ``semiaxes[l][p, k, m, n] = d c_l[m, n] / d l_k`` for the body
  semi-axis k (angstrom^-1).

The formulas (DESIGN.md section 3, "Derivatives"). With ``D = diag(d_k)``,
``d_k = 1/l_k^2 + 1/sigma^2`` (GTO; ``1/l_k^2`` for the monomial basis),
the covariance of the product Gaussian is ``S = R D^-1 R^T``, its centre
``a = r - S r / sigma^2`` (monomial: ``a = r``) and the moments carry the
scale ``s = (l1 l2 l3)^-1 det(D)^(-1/2) exp(-k/2)`` (the ``(2 pi)^(3/2)`` factors cancel)
with ``k = (r.r - r^T S r / sigma^2) / sigma^2`` (since ``S A = I - S/sigma^2``;
monomial: ``k = 0``). Every coefficient is ``c = sum_t T'[t] M[t]`` with
``M[t] = s E[x^t]`` for the normal law N(a, S). Then

- ``dE[x^t]/da_k = t_k E[x^(t - e_k)]``,
  ``dE[x^t]/dS_kk = 1/2 t_k (t_k - 1) E[x^(t - 2 e_k)]``,
  ``dE[x^t]/dS_km = t_k t_m E[x^(t - e_k - e_m)]`` (k != m, both entries);
- so ``dc = (d log s) c + sum_k da_k G_k + sum_{k<=m} dS_km H_km`` with the
  lower-moment contractions ``G_k = sum_t T'[t] t_k M[t - e_k]`` and ``H_km``
  likewise (one moment table gives values and gradients);
- along r_alpha: ``dS = 0``, ``da = e_alpha - S e_alpha / sigma^2`` and
  ``d log s = -dk/2 = -a_alpha / sigma^2`` (monomial: ``da = e_alpha``,
  ``d log s = 0``);
- along theta_alpha: ``dR = W R`` with ``W = [e_alpha]_x`` antisymmetric,
  so ``dS = W S - S W``, ``da = -dS r / sigma^2`` and
  ``d log s = r^T dS r / (2 sigma^4)`` (monomial: ``da = 0``,
  ``d log s = 0``);
- along l_k: ``dd_k = -2 / l_k^3``, ``dS = -R (dd_k / d_k^2 e_k e_k^T) R^T``,
  ``da = -dS r / sigma^2``, ``d log s = -1/l_k - dd_k / (2 d_k) + r^T dS r
  / (2 sigma^4)``.

The reference here takes none of that on trust: it differentiates the
reference expansion (:func:`~einsum_workbench.reference.expansion.
pairwise_ellip_expansion`) by central finite differences, which is what the
equivalence suite checks Torch autograd against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

#: Central-difference steps. Truncation error is O(h^2 f'''), rounding
#: O(eps f / h): with f varying on the scale of an angstrom (sigma, the
#: semi-axes) a step near eps^(1/3) ~ 1e-5 of that scale balances them, for a
#: relative error near 1e-9 on smooth pairs.
POSITION_STEP = 1e-5  # angstrom, times max(1, sigma)
ORIENTATION_STEP = 1e-5  # radian
SEMIAXIS_STEP = 1e-5  # relative to each semi-axis

QUANTITIES = ("positions", "orientations", "semiaxes")


class PairGradients(NamedTuple):
    """Values and gradients of the raw pair coefficients (module docstring).

    Each field is a list over l = 0..lmax: ``values[l]`` has shape
    ``(P, 2l+1, num_radial[l])``, ``positions[l]``, ``orientations[l]`` and
    ``semiaxes[l]`` shape ``(P, 3, 2l+1, num_radial[l])``. ``semiaxes`` is
    None unless asked for.
    """

    values: list
    positions: list
    orientations: list
    semiaxes: list | None = None


def small_rotations(step: float) -> np.ndarray:
    """(3, 3, 3): the exact rotations by ``step`` radian about each lab axis.

    Exact rotations (not ``I + step W``) keep perturbed matrices orthogonal,
    which the expansion checks; the central difference of either has the same
    first derivative ``W R``.
    """
    return Rotation.from_rotvec(step * np.eye(3)).as_matrix()


def _perturbed_batch(r_ij, rotations, semiaxes, hypers: ExpansionHypers, quantities):
    """The 2 * 3 * len(quantities) perturbed copies of the pairs, stacked, and each step."""
    rs, rots, axes, steps = [], [], [], []
    h_r = POSITION_STEP * max(1.0, hypers.sigma if hypers.radial_basis == "gto" else 1.0)
    for quantity in quantities:
        for alpha in range(3):
            for sign in (1.0, -1.0):
                r, rot, ax = r_ij.copy(), rotations.copy(), semiaxes.copy()
                if quantity == "positions":
                    r[:, alpha] += sign * h_r
                elif quantity == "orientations":
                    rot = small_rotations(sign * ORIENTATION_STEP)[alpha] @ rotations
                else:
                    ax[:, alpha] *= 1.0 + sign * SEMIAXIS_STEP
                rs.append(r)
                rots.append(rot)
                axes.append(ax)
            if quantity == "positions":
                steps.append(np.full(len(r_ij), h_r))
            elif quantity == "orientations":
                steps.append(np.full(len(r_ij), ORIENTATION_STEP))
            else:
                steps.append(SEMIAXIS_STEP * semiaxes[:, alpha])
    return np.concatenate(rs), np.concatenate(rots), np.concatenate(axes), steps


def finite_difference_gradients(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                                semiaxes_gradients: bool = False) -> PairGradients:
    """Gradients of the reference expansion by central finite differences.

    Parameters
    ----------
    r_ij, rotations, semiaxes, hypers, dtype
        As :func:`~einsum_workbench.reference.expansion.pairwise_ellip_expansion`
        (float64 computation; ``dtype`` is the output's).
    semiaxes_gradients : bool
        Also differentiate along each semi-axis.

    Returns
    -------
    PairGradients
        Derivatives along r_ij (step ``POSITION_STEP * max(1, sigma)``
        angstrom), along exact rotations by ``ORIENTATION_STEP`` radian about
        each lab axis applied on the left of R, and along ``l_k (1 +- SEMIAXIS_STEP)``.
        Their error is O(step^2): about 1e-9 relative on pairs whose
        coefficients vary on the scale of sigma and the semi-axes.

    Raises
    ------
    ValueError
        malformed pairs (:func:`~einsum_workbench.reference.validation.check_pair_arrays`),
        also when a perturbed pair leaves the accepted ranges (then the
        message names that pair as the pair ``p + k * P`` of the perturbed batch).
    """
    r_ij, rotations, semiaxes, out_dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    r_ij, rotations, semiaxes = (np.asarray(a, dtype=np.float64) for a in (r_ij, rotations, semiaxes))
    n_pairs = len(r_ij)
    quantities = QUANTITIES if semiaxes_gradients else QUANTITIES[:2]
    values = pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers, dtype=np.float64)
    batch = _perturbed_batch(r_ij, rotations, semiaxes, hypers, quantities)
    shifted = pairwise_ellip_expansion(*batch[:3], hypers, dtype=np.float64)
    steps = batch[3]
    gradients = {q: [] for q in quantities}
    for l, block in enumerate(shifted):
        # (quantity, alpha, sign, P, 2l+1, n) -> central difference per (quantity, alpha)
        block = block.reshape(len(quantities), 3, 2, n_pairs, *block.shape[1:])
        for qi, quantity in enumerate(quantities):
            h = np.stack(steps[3 * qi: 3 * qi + 3])  # (3, P)
            diff = (block[qi, :, 0] - block[qi, :, 1]) / (2.0 * h[:, :, None, None])
            gradients[quantity].append(np.ascontiguousarray(diff.transpose(1, 0, 2, 3), dtype=out_dtype))
    return PairGradients(
        values=[v.astype(out_dtype) for v in values],
        positions=gradients["positions"],
        orientations=gradients["orientations"],
        semiaxes=gradients.get("semiaxes"),
    )

"""The reference: AniSOAP's ``pairwise_ellip_expansion`` as a per-pair loop.

Faithful to ``anisoap.representations.ellipsoidal_density_projection.
pairwise_ellip_expansion`` (anisoap 0.1.1): for every neighbour pair it builds
the Gaussian parameters with two lab-frame linear solves, computes the dense
moment cube up to upstream's degree ``max_l(l + 2 num_radial[l])`` (compiled,
as upstream's Rust routine is), scales it, and calls
``numpy.einsum("mnpqr,pqr->mn", T_l / sqrt(4 pi / (2l+1)), M)`` once per pair
and angular channel. It is the baseline every speedup is measured against;
only the metatensor packaging is left to the AniSOAP adapter.
"""

from __future__ import annotations

import numpy as np

from tqdm.auto import tqdm

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.moments import compute_moments
from einsum_workbench.reference.radial import gaussian_parameters
from einsum_workbench.reference.solid_harmonics import solid_harmonic_tensors
from einsum_workbench.reference.validation import check_pair_arrays


#: Batches of at least this many pairs show a progress bar when stderr is a terminal.
PROGRESS_PAIRS = 10_000


def scaled_solid_harmonic_tensors(hypers: ExpansionHypers) -> list[np.ndarray]:
    """``T_l / sqrt(4 pi / (2l+1))`` for each l (what upstream contracts with)."""
    tensors = solid_harmonic_tensors(hypers.lmax, hypers.num_radial)
    return [t / np.sqrt(4.0 * np.pi / (2 * l + 1)) for l, t in enumerate(tensors)]


def pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                             any_matrix: bool = False):
    """Expansion coefficients of every neighbour pair, one pair at a time.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
        Position of neighbour j (with its periodic shift) minus centre i.
    rotations : (P, 3, 3) float array
        Body-to-lab rotation of neighbour j's ellipsoid.
    semiaxes : (P, 3) float array, angstrom, > 0
        Semi-axes (l1, l2, l3) of neighbour j.
    hypers : ExpansionHypers
    dtype : None, numpy.float32 or numpy.float64
        Output dtype; None means the inputs' dtype. The reference always
        computes in float64 (as upstream does) and casts at the end.
    any_matrix : bool
        Accept any 3x3 matrices in place of rotations. Upstream AniSOAP
        accepts frames stored without rotations: it warns and uses zero
        matrices, so that ``A = R diag(1/l^2) R^T`` is zero and only the GTO's
        own Gaussian remains. The AniSOAP switch computes those pairs here,
        with upstream's lab-frame arithmetic, to give upstream's numbers
        (non-finite where upstream's are, e.g. zero matrices with the
        monomial basis). Every other check still applies.

    Returns
    -------
    list over l = 0..lmax of (P, 2l+1, num_radial[l]) arrays of ``dtype``:
    raw (not orthonormalised) coefficients ``c_l[m, n]`` as DESIGN.md
    section 3 defines them.

    Raises
    ------
    ValueError
        on malformed input (see ``validation.check_pair_arrays``).
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers,
                                                         check_rotations=not any_matrix)
    r_ij, rotations, semiaxes = (a.astype(np.float64) for a in (r_ij, rotations, semiaxes))
    scaled_t = scaled_solid_harmonic_tensors(hypers)
    n_pairs = r_ij.shape[0]
    max_degree = hypers.upstream_max_degree
    values = [[] for _ in range(hypers.lmax + 1)]
    # a progress bar on a terminal for long loops (~84 us per pair); none otherwise
    for p in tqdm(range(n_pairs), desc="reference expansion", unit="pair", leave=False,
                  disable=None if n_pairs >= PROGRESS_PAIRS else True):
        lengths = semiaxes[p]
        length_norm = (np.prod(lengths) * (2.0 * np.pi) ** 1.5) ** -1.0
        precision, centre, constant = gaussian_parameters(r_ij[p], rotations[p], lengths, hypers)
        moments = compute_moments(precision, centre, max_degree)
        moments *= np.exp(-0.5 * constant) * length_norm
        for l in range(hypers.lmax + 1):
            d = hypers.degree(l)
            values[l].append(np.einsum("mnpqr,pqr->mn", scaled_t[l], moments[: d + 1, : d + 1, : d + 1]))
    return [
        np.asarray(v, dtype=dtype).reshape(n_pairs, 2 * l + 1, hypers.num_radial[l])
        for l, v in enumerate(values)
    ]

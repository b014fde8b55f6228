"""What anchors the reference besides upstream: closed forms and invariances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.moments import compute_moments, compute_moments_python
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.random_pairs import random_pair_batch
from einsum_workbench.reference.solid_harmonics import solid_harmonic_tensors


def real_spherical_harmonic(l, m, polar, azimuth):
    """DESIGN.md's convention from scipy's complex Y_l^|m| (which has the
    Condon-Shortley phase): sqrt(2) (-1)^|m| Im (m < 0) or Re (m > 0)."""
    y = sph_harm_y(l, abs(m), polar, azimuth)
    if m == 0:
        return y.real
    part = y.imag if m < 0 else y.real
    return np.sqrt(2.0) * (-1.0) ** abs(m) * part


def evaluate_monomials(tensor, points):
    """sum_{n0 n1 n2} tensor[..., n0, n1, n2] x^n0 y^n1 z^n2 at each point."""
    d = tensor.shape[-1] - 1
    powers = [points[:, k, None] ** np.arange(d + 1) for k in range(3)]
    return np.einsum("...abc,pa,pb,pc->p...", tensor, *powers)


@pytest.mark.parametrize("lmax", [0, 1, 2, 5, 10])
def test_solid_harmonic_tensors_match_scipy(lmax):
    rng = np.random.default_rng(lmax)
    points = rng.normal(size=(50, 3)) * 1.3
    r = np.linalg.norm(points, axis=1)
    polar = np.arccos(points[:, 2] / r)
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    num_radial = [3] * (lmax + 1)
    for l, t in enumerate(solid_harmonic_tensors(lmax, num_radial)):
        values = evaluate_monomials(t, points)  # (P, 2l+1, n)
        for m in range(-l, l + 1):
            expected = np.sqrt(4 * np.pi / (2 * l + 1)) * r**l * real_spherical_harmonic(l, m, polar, azimuth)
            for n in range(3):
                np.testing.assert_allclose(values[:, m + l, n], r ** (2 * n) * expected, rtol=1e-9, atol=1e-9,
                                           err_msg=f"l={l} m={m} n={n}")


def test_solid_harmonic_tensors_only_have_degree_l_plus_2n():
    for l, t in enumerate(solid_harmonic_tensors(6, [4] * 7)):
        m_idx, n_idx, n0, n1, n2 = np.nonzero(t)
        np.testing.assert_array_equal(n0 + n1 + n2, l + 2 * n_idx)


def test_compiled_moments_match_plain_python_and_gaussian_integral():
    rng = np.random.default_rng(1)
    q = Rotation.random(random_state=2).as_matrix()
    precision = q @ np.diag([0.7, 2.0, 5.0]) @ q.T
    centre = rng.normal(size=3)
    m = compute_moments(precision, centre, 7)
    np.testing.assert_allclose(m, compute_moments_python(precision, centre, 7), rtol=1e-13, atol=1e-13)
    # degree 0: the Gaussian integral; degree 1: integral times the mean; degree 2: (S + a a^T)
    norm = (2 * np.pi) ** 1.5 / np.sqrt(np.linalg.det(precision))
    cov = np.linalg.inv(precision)
    np.testing.assert_allclose(m[0, 0, 0], norm, rtol=1e-13)
    np.testing.assert_allclose([m[1, 0, 0], m[0, 1, 0], m[0, 0, 1]], norm * centre, rtol=1e-12)
    np.testing.assert_allclose(m[1, 1, 0], norm * (cov[0, 1] + centre[0] * centre[1]), rtol=1e-12)
    np.testing.assert_allclose(m[0, 0, 2], norm * (cov[2, 2] + centre[2] ** 2), rtol=1e-12)
    assert m[4, 4, 0] == 0.0, "degrees above max_degree must stay zero"


@pytest.mark.parametrize("a,sigma", [(0.5, 1.5), (2.0, 1.0), (1.0, 3.0)])
def test_l0_coefficient_of_spherical_gaussian_gto(a, sigma):
    """c_00 = integral rho exp(-x^2/2 sigma^2) / sqrt(4 pi) for rho = N(r, a^2 I):
    (sigma^2 / (a^2 + sigma^2))^(3/2) exp(-|r|^2 / (2 (a^2 + sigma^2))) / sqrt(4 pi)."""
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=sigma)
    r_ij = np.array([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0], [3.0, 4.0, 1.0]])
    rotations = Rotation.random(3, random_state=5).as_matrix()
    out = pairwise_ellip_expansion(r_ij, rotations, np.full((3, 3), a), hypers)
    s2 = a**2 + sigma**2
    expected = (sigma**2 / s2) ** 1.5 * np.exp(-np.sum(r_ij**2, axis=1) / (2 * s2)) / np.sqrt(4 * np.pi)
    np.testing.assert_allclose(out[0][:, 0, 0], expected, rtol=1e-12)


def test_l0_l1_coefficients_monomial_are_mass_and_centre():
    """Monomial basis: c_00 = 1/sqrt(4 pi) (unit mass); R_1m = (y, z, x) so
    c_1m = (r_y, r_z, r_x) / sqrt(4 pi / 3), whatever the ellipsoid."""
    hypers = ExpansionHypers(1, "monomial", cutoff=7.0, max_radial=0)
    r_ij, rotations, semiaxes = random_pair_batch(20, 4)
    out = pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers)
    np.testing.assert_allclose(out[0][:, 0, 0], 1 / np.sqrt(4 * np.pi), rtol=1e-12)
    np.testing.assert_allclose(out[1][:, :, 0], r_ij[:, [1, 2, 0]] / np.sqrt(4 * np.pi / 3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hypers", [
    ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5),
    ExpansionHypers(4, "gto", cutoff=5.0, sigma=0.8, max_radial=4),
    ExpansionHypers(6, "monomial", cutoff=7.0),
    ExpansionHypers(3, "monomial", cutoff=4.0, max_radial=[3, 2, 2, 1]),
], ids=["gto-default", "gto-int", "monomial-default", "monomial-list"])
def test_orthonormalised_radial_functions_are_orthonormal_by_quadrature(hypers):
    upper = hypers.cutoff if hypers.radial_basis == "monomial" else 30 * hypers.sigma

    def radial(p, r):
        f = 1.0 if hypers.radial_basis == "monomial" else np.exp(-(r**2) / (2 * hypers.sigma**2))
        return r**p * f

    for l in range(hypers.lmax + 1):
        orders = l + 2 * np.arange(hypers.num_radial[l])
        w = orthonormalization_matrix(l, hypers)
        gram = np.empty((len(orders),) * 2)
        for i, p in enumerate(orders):
            for j, q in enumerate(orders):
                gram[i, j] = integrate.quad(lambda r: radial(p, r) * radial(q, r) * r**2, 0, upper,
                                            epsabs=0, epsrel=1e-12, limit=200)[0]
        np.testing.assert_allclose(w.T @ gram @ w, np.eye(len(orders)), atol=1e-7, err_msg=f"l={l}")


def power_spectrum(coefficients, centre_of_pair, n_centres):
    """p_l[i, n, n'] = sum_m c_lmn c_lmn' with c summed over each centre's neighbours."""
    spectra = []
    for c in coefficients:
        summed = np.zeros((n_centres,) + c.shape[1:])
        np.add.at(summed, centre_of_pair, c)
        spectra.append(np.einsum("imn,imk->ink", summed, summed))
    return spectra


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), basis=st.sampled_from(["gto", "monomial"]))
def test_rotating_a_whole_frame_leaves_the_power_spectrum_unchanged(seed, basis):
    hypers = ExpansionHypers(4, basis, cutoff=7.0, sigma=1.5 if basis == "gto" else None)
    r_ij, rotations, semiaxes = random_pair_batch(30, seed)
    centre = np.random.default_rng(seed).integers(3, size=30)
    q = Rotation.random(random_state=seed).as_matrix()
    before = power_spectrum(pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers), centre, 3)
    after = power_spectrum(pairwise_ellip_expansion(r_ij @ q.T, q @ rotations, semiaxes, hypers), centre, 3)
    for l, (b, a) in enumerate(zip(before, after)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12 * np.abs(b).max(), err_msg=f"l={l}")
    # the coefficients themselves do change (else the check above is empty)
    assert not np.allclose(pairwise_ellip_expansion(r_ij @ q.T, q @ rotations, semiaxes, hypers)[1],
                           pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers)[1])

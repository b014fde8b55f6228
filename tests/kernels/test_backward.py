"""Every registered backward variant against the reference (registry problem ``"backward"``).

A backward variant joins this suite by being in
``kernels.registry.BACKWARD_VARIANTS``; nothing here names one but the
reference (``reference.backward.centre_density_backward``: the reference
gradients, central finite differences, contracted with the cotangent; it is
itself checked against finite differences of a whole centre density in
``tests/reference/test_backward.py``), and every analytic variant also against
reverse-mode Torch autograd (``torch_einsum``) at float64 rounding. Variants that cannot run here are
skipped with the registry's reason.

Inputs: the pair suite's hyper-parameters (``reference.compare.equivalence_hypers``,
lmax 0..8, GTO and monomial, three radial-count forms) and fresh random
pairs (``reference.random_pairs``, mixed shapes, one self pair), grouped into
segments of several pairs each with empty segments between them, pairs not
sorted by segment; a random cotangent; orthonormal off and on, semi-axes
derivatives on.

Tolerance, float64: ``rtol = 1e-6`` and ``atol = 1e-6 x scale``, with
``scale`` the largest |value| of the quantity (r, theta or semiaxes) over
the batch, or ``FLOOR = 1e-1`` times the largest of all three when that is
larger: a derivative that vanishes identically (theta and the semi-axes at
l <= 1 on the monomial basis, theta on a sphere) is compared with the
reference's rounding noise, ``eps |c| / step``, which reaches some 4e-8 of
the genuine derivatives where monomial coefficients grow as
``|r|^(l + 2n)``. Otherwise: the reference's finite
differences carry about 1e-9 relative error of each pair's derivative, and
the contraction with the cotangent sums up to a few hundred such terms. Float32 (variants computing in float32, against the
float64 reference on the same float32-rounded inputs): ``rtol = 1e-3``,
``atol = 1e-4 x`` that scale, the pair suite's float32 tolerance.
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

from einsum_workbench.kernels import contract
from einsum_workbench.kernels.registry import BACKWARD_VARIANTS, PROBLEMS, get_variant, variant_names
from einsum_workbench.reference.backward import PairCotangents, centre_density_backward
from einsum_workbench.reference.compare import equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.random_pairs import random_pair_batch

CANDIDATES = [v for v in BACKWARD_VARIANTS if v.name != "reference"]
FLOOR = 1e-1
FLOAT64_TOL = {"rtol": 1e-6, "atol_scale": 1e-6}
FLOAT32_TOL = {"rtol": 1e-3, "atol_scale": 1e-4}
PAIRS = 14
#: segment of each pair: 7 segments, 0, 3 and 6 empty, the others 2..5 pairs, not in order
SEGMENT = np.array([1, 4, 2, 1, 5, 4, 2, 1, 5, 4, 2, 4, 5, 1])
N_SEGMENTS = 7


def _pairs(seed: int):
    r_ij, rotations, semiaxes = random_pair_batch(PAIRS, seed=seed, shape="mixed", max_distance=5.0)
    r_ij[5] = 0.0  # a self pair
    return r_ij, rotations, semiaxes


def _cotangent(hypers, seed: int, n_segments: int = N_SEGMENTS):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def _assert_cotangents_close(actual, expected, tol, label):
    assert isinstance(actual, PairCotangents), label
    largest = max(np.abs(x).max(initial=0.0) for x in expected if x is not None)
    for q in ("r", "theta", "semiaxes"):
        a, e = getattr(actual, q), getattr(expected, q)
        if e is None:
            assert a is None, (label, q)
            continue
        assert a.shape == e.shape, (label, q, a.shape, e.shape)
        scale = max(np.abs(e).max(initial=0.0), FLOOR * largest, 1e-300)
        np.testing.assert_allclose(a, e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale, err_msg=f"{label} {q}")


@pytest.fixture(params=CANDIDATES, ids=lambda v: v.name)
def candidate(request, load_or_skip):
    return request.param.name, load_or_skip(request.param, f"{request.param.name} (backward)")


_REFERENCE_CACHE = {}


def _reference(case, hypers, seed, orthonormal):
    key = (case, seed, orthonormal)
    if key not in _REFERENCE_CACHE:
        r, rot, ax = _pairs(seed)
        _REFERENCE_CACHE[key] = centre_density_backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS,
                                                        _cotangent(hypers, seed), orthonormal=orthonormal,
                                                        semiaxes_gradients=True)
    return _REFERENCE_CACHE[key]


@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("case,hypers", equivalence_hypers(), ids=[c for c, _ in equivalence_hypers()])
def test_variant_matches_reference_float64(candidate, case, hypers, orthonormal):
    name, backward = candidate
    seed = zlib.crc32(case.encode()) % 1000
    r, rot, ax = _pairs(seed)
    expected = _reference(case, hypers, seed, orthonormal)
    actual = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, _cotangent(hypers, seed), orthonormal=orthonormal,
                      semiaxes_gradients=True)
    assert actual.r.dtype == np.float64
    _assert_cotangents_close(actual, expected, FLOAT64_TOL, f"{name} {case} orthonormal={orthonormal}")
    # nothing per pair beyond r and theta unless asked
    plain = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, _cotangent(hypers, seed), orthonormal=orthonormal)
    assert plain.semiaxes is None
    _assert_cotangents_close(plain, expected._replace(semiaxes=None), FLOAT64_TOL, f"{name} {case} plain")


#: Torch autograd is exact up to rounding: variants that differentiate analytically agree with it far
#: more closely than with the reference's finite differences.
AUTOGRAD_TOL = {"rtol": 1e-9, "atol_scale": 1e-10}
ANALYTIC = [v for v in CANDIDATES if v.name != "torch_einsum"]


@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("case,hypers", equivalence_hypers(), ids=[c for c, _ in equivalence_hypers()])
@pytest.mark.parametrize("variant", ANALYTIC, ids=lambda v: v.name)
def test_variant_matches_torch_autograd_float64(variant, case, hypers, orthonormal, load_or_skip):
    """Every analytic variant against reverse-mode Torch autograd (``torch_einsum``) at float64 rounding."""
    name, backward = variant.name, load_or_skip(variant, f"{variant.name} (backward)")
    autograd = load_or_skip(get_variant("torch_einsum", "backward"), "torch_einsum (backward), the autograd oracle")
    seed = zlib.crc32(case.encode()) % 1000 + 1
    r, rot, ax = _pairs(seed)
    g = _cotangent(hypers, seed)
    expected = autograd(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal, semiaxes_gradients=True)
    actual = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal, semiaxes_gradients=True)
    _assert_cotangents_close(actual, expected, AUTOGRAD_TOL, f"{name} {case} orthonormal={orthonormal} vs autograd")


@pytest.mark.parametrize("case,hypers", float32_hypers(), ids=[c for c, _ in float32_hypers()])
def test_variant_matches_reference_float32(candidate, case, hypers):
    name, backward = candidate
    r, rot, ax = (a.astype(np.float32) for a in _pairs(3))
    g = _cotangent(hypers, 3)
    expected = centre_density_backward(*(a.astype(np.float64) for a in (r, rot, ax)), hypers, SEGMENT, N_SEGMENTS,
                                       g, orthonormal=True)
    actual = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True)
    assert actual.r.dtype == np.float32 and actual.theta.dtype == np.float32
    _assert_cotangents_close(actual, expected, FLOAT32_TOL, f"{name} float32 {case}")


def test_pairs_of_an_empty_segment_cotangent_get_zero(candidate):
    """A cotangent that is zero on a segment gives its pairs exactly zero (and only them)."""
    name, backward = candidate
    hypers = make_hypers(3, "gto")
    r, rot, ax = _pairs(11)
    g = _cotangent(hypers, 11)
    for block in g:
        block[4] = 0.0
    out = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True, semiaxes_gradients=True)
    mine = SEGMENT == 4
    for q in (out.r, out.theta, out.semiaxes):
        np.testing.assert_array_equal(q[mine], 0.0)
    for q in (out.r, out.semiaxes):  # (theta vanishes for a sphere: not checked)
        assert np.all(np.abs(q[~mine]).max(axis=1) > 0), name


def test_backward_is_linear_in_the_cotangent(candidate):
    name, backward = candidate
    hypers = make_hypers(2, "monomial")
    r, rot, ax = _pairs(12)
    g1, g2 = _cotangent(hypers, 1), _cotangent(hypers, 2)
    mixed = [2.0 * a - 0.5 * b for a, b in zip(g1, g2)]
    o1, o2, om = (backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True) for g in (g1, g2, mixed))
    for q in ("r", "theta"):
        expected = 2.0 * getattr(o1, q) - 0.5 * getattr(o2, q)
        np.testing.assert_allclose(getattr(om, q), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())


def test_empty_batch_and_no_segments(candidate):
    name, backward = candidate
    hypers = make_hypers(2, "gto")
    empty = (np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)))
    out = backward(*empty, hypers, np.zeros(0, dtype=np.int64), 3, _cotangent(hypers, 0, 3), semiaxes_gradients=True)
    assert out.r.shape == out.theta.shape == out.semiaxes.shape == (0, 3)
    out = backward(*empty, hypers, np.zeros(0, dtype=np.int64), 0, _cotangent(hypers, 0, 0))
    assert out.r.shape == (0, 3) and out.semiaxes is None


def test_inputs_are_left_untouched(candidate):
    name, backward = candidate
    hypers = make_hypers(2, "gto")
    arrays = _pairs(4)
    g = _cotangent(hypers, 4)
    copies = [a.copy() for a in arrays], [x.copy() for x in g], SEGMENT.copy()
    backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True)
    for a, c in zip(arrays, copies[0]):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(g, copies[1]):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(SEGMENT, copies[2])


@pytest.mark.parametrize("variant", BACKWARD_VARIANTS, ids=lambda v: v.name)
def test_bad_cotangent_names_the_l_and_the_shape(variant, load_or_skip):
    backward = load_or_skip(variant, f"{variant.name} (backward)")
    hypers = make_hypers(3, "gto")
    r, rot, ax = _pairs(5)
    g = _cotangent(hypers, 5)
    wrong = list(g)
    wrong[2] = wrong[2][:, :, :0] if hypers.num_radial[2] else wrong[2][:, :4]
    with pytest.raises(ValueError, match=r"cotangent for l = 2 must have shape \(7, 5, \d+\).*got \(7, 5, 0\)"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, wrong)
    wrong = list(g)
    wrong[1] = np.zeros((N_SEGMENTS + 1, 3, hypers.num_radial[1]))
    with pytest.raises(ValueError, match=r"cotangent for l = 1 must have shape \(7, 3, \d+\).*got \(8, 3, \d+\)"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, wrong)
    with pytest.raises(ValueError, match=r"one array per l = 0\.\.3 \(4\), got 3"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g[:3])
    with pytest.raises(TypeError, match="list over l"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, np.zeros(3))
    wrong = [x.copy() for x in g]
    wrong[3][2, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"cotangent for l = 3 has a non-finite entry inf at \(2, 1, 0\)"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, wrong)
    with pytest.raises(ValueError, match=r"segment of pair 0 is 9"):
        backward(r, rot, ax, hypers, np.r_[9, SEGMENT[1:]], N_SEGMENTS, g)
    with pytest.raises(TypeError, match="orthonormal must be a bool"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal="yes")


def test_torch_chunks_agree(load_or_skip):
    variant = get_variant("torch_einsum", "backward")
    backward = load_or_skip(variant, "torch_einsum (backward)")
    hypers = make_hypers(4, "gto", 2)
    r, rot, ax = _pairs(8)
    g = _cotangent(hypers, 8)
    whole = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True, semiaxes_gradients=True)
    pieces = backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True, semiaxes_gradients=True, chunk=3)
    _assert_cotangents_close(pieces, whole, {"rtol": 1e-12, "atol_scale": 1e-13}, "chunk=3")
    with pytest.raises(ValueError, match="chunk must be a positive number of pairs, got 0"):
        backward(r, rot, ax, hypers, SEGMENT, N_SEGMENTS, g, chunk=0)


def test_registry_lists_the_problem_and_its_functions_have_the_contract():
    assert "backward" in PROBLEMS and variant_names("backward")[0] == "reference"
    protocol = contract.CentreDensityBackward
    parameters = inspect.signature(protocol.__call__).parameters
    positional = [p for p in list(parameters)[1:] if parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = [p for p in parameters if parameters[p].kind is inspect.Parameter.KEYWORD_ONLY]
    assert positional[-1] == "cotangent" and "semiaxes_gradients" in keywords
    for variant in BACKWARD_VARIANTS:
        assert variant.problem == "backward"
        if variant.unavailable_reason() is not None:
            continue
        function = variant.load()
        assert isinstance(function, protocol), variant.name
        signature = inspect.signature(function).parameters
        assert list(signature)[: len(positional)] == positional, (variant.name, list(signature))
        for keyword in keywords:
            assert keyword in signature and signature[keyword].default is not inspect.Parameter.empty, \
                (variant.name, keyword)
    with pytest.raises(KeyError, match="unknown backward variant 'nope'"):
        get_variant("nope", "backward")

"""Robust on any input (issue 11, parts 2, 5 and 6), in every variant.

- Part 2, memory without bound: hyper-parameters beyond ``LMAX_LIMIT`` /
  ``DEGREE_LIMIT`` and neighbour lists estimated beyond ``max_pairs`` are
  refused before anything is allocated, the value and the limit named.
- Part 5, finite inputs that gave silent wrong numbers: semi-axes, distances,
  sigma and cutoffs outside the documented ranges
  (:mod:`einsum_workbench.reference.validation`) are refused with a
  ``ValueError`` naming the value; at the edges of the ranges every variant
  gives finite coefficients equal to the reference's.
- Part 6, one error per kind of mistake: a ``hypers`` that is not an
  ``ExpansionHypers``, complex, string, boolean or object arrays give a
  ``TypeError`` naming the argument, in every variant of both problems.

At the corners of the ranges some channels are tiny because of the physics
(a GTO much narrower than the ellipsoid sees a nearly flat density: its l >= 1
coefficients are ~(sigma/l)^(2l) of the l = 0 one) and every variant, the
reference included, computes them as the difference of much larger terms. The
corner comparisons therefore scale ``atol`` per pair and per l by the size of
the terms summed (:func:`term_scales`), not by the block's largest value;
the suite's ``rtol`` and ``atol`` factors are unchanged.

``torch_compiled`` is ``torch_einsum`` under ``torch.compile`` (one
compilation of several seconds per hyper-parameter set and bucket): it takes
the error tests, not the corner sweeps.
"""

from __future__ import annotations

import re
import resource
import time
import warnings
from contextlib import contextmanager

import ase
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.kernels.numpy.pairs import body_frame_gaussians, normal_moments
from einsum_workbench.kernels.registry import DENSITY_VARIANTS, VARIANTS
from einsum_workbench.kernels.tables import compact_solid_harmonics
from einsum_workbench.reference.compare import assert_coefficients_close
from einsum_workbench.reference.density import centre_density as reference_density
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.neighbours import MAX_PAIRS, estimate_pairs, neighbour_pairs
from einsum_workbench.reference.pairs import frames_to_pairs
from einsum_workbench.reference.random_pairs import random_pair_batch
from einsum_workbench.reference.limits import CUTOFF_RANGE, DEGREE_LIMIT, LMAX_LIMIT, PAIR_LIMITS, SIGMA_RANGE
from einsum_workbench.reference.validation import check_hypers, resolve_dtype

HYPERS = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5)   # the one tests/kernels/test_bad_input.py compiles
MONOMIAL = ExpansionHypers(3, "monomial", cutoff=CUTOFF_RANGE[0])   # also an edge case below (one compilation)
DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
NO_SWEEP = {"torch_compiled"}


def _load(variant):
    reason = variant.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{variant.name} not run on this machine: {reason}")
    return variant.load()


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
def pair_variant(request):
    return request.param


@pytest.fixture(params=DENSITY_VARIANTS, ids=lambda v: v.name)
def density_variant(request):
    return request.param


@pytest.fixture(params=VARIANTS + DENSITY_VARIANTS, ids=lambda v: f"{v.problem}-{v.name}")
def any_variant(request):
    """Every registered variant of both problems."""
    return request.param


def _batch(dtype=np.float64):
    return [a.astype(dtype) for a in random_pair_batch(6, 1)]


def _call(variant, r_ij, rotations, semiaxes, hypers, **kwargs):
    """Call a pair or density variant on a batch (density: one segment per pair)."""
    function = _load(variant)
    if variant.problem == "density":
        n = len(np.asarray(semiaxes)) if np.ndim(semiaxes) else 0
        return function(r_ij, rotations, semiaxes, hypers, np.arange(n), n, **kwargs)
    return function(r_ij, rotations, semiaxes, hypers, **kwargs)


# --------------------------------------------------------------- part 6: one error kind per mistake


@pytest.mark.parametrize("bad", [{"lmax": 3, "sigma": 1.5}, None, "gto"], ids=["dict", "None", "str"])
def test_hypers_of_the_wrong_type_is_a_type_error(any_variant, bad):
    with pytest.raises(TypeError, match=rf"hypers must be an ExpansionHypers, got {type(bad).__name__}"):
        _call(any_variant, *_batch(), bad)


def _complex(batch):
    r, rot, ax = batch
    return r + 1e-3j, rot, ax


def _strings(batch):
    r, rot, ax = batch
    return r, rot, ax.astype(str)       # numeric strings: no longer parsed


def _booleans(batch):
    r, rot, ax = batch
    return r, np.broadcast_to(np.eye(3, dtype=bool), rot.shape), ax


def _objects(batch):
    r, rot, ax = batch
    return np.array([None] * 6), rot, ax


@contextmanager
def _no_warning():
    """No ComplexWarning (or any other) on the way to the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


NON_REAL = {
    "complex r_ij": (_complex, r"r_ij must be an array of real numbers, got complex numbers"),
    "string semiaxes": (_strings, r"semiaxes must be an array of real numbers, got strings"),
    "bool rotations": (_booleans, r"rotations must be an array of real numbers, got booleans"),
    "object r_ij": (_objects, r"r_ij must be an array of real numbers, got Python objects"),
}


@pytest.mark.parametrize("case", list(NON_REAL))
def test_non_real_arrays_are_type_errors(any_variant, case):
    make, message = NON_REAL[case]
    with _no_warning():
        with pytest.raises(TypeError, match=message):
            _call(any_variant, *make(_batch()), HYPERS)


def test_integer_arrays_are_lengths():
    r, rot, ax = _batch()
    dtype = resolve_dtype(None, np.round(r).astype(np.int64), np.eye(3, dtype=np.int32)[None], np.ones((6, 3), int))
    assert dtype == np.float64


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lmax="3", sigma=1.0), TypeError, r"lmax must be an int, got '3'"),
    (dict(lmax=3, sigma="1.5"), TypeError, r"sigma must be a real number, got '1.5'"),
    (dict(lmax=3, sigma=1.5 + 0j), TypeError, r"sigma must be a real number, got \(1.5\+0j\)"),
    (dict(lmax=3, sigma=1.5, cutoff="7"), TypeError, r"cutoff must be a real number, got '7'"),
    (dict(lmax=3, sigma=1.5, tol="1e-8"), TypeError, r"tol must be a real number, got '1e-8'"),
    (dict(lmax=3, sigma=1.5, rcond=1j), TypeError, r"rcond must be a real number, got 1j"),
    (dict(lmax=3, sigma=True), TypeError, r"sigma must be a real number, got True"),
    (dict(lmax=3, sigma=1.5, radial_basis=["gto"]), TypeError, r"radial_basis must be a str, .* got \['gto'\]"),
])
def test_hyper_parameters_of_the_wrong_kind(kwargs, error, message):
    with pytest.raises(error, match=message):
        ExpansionHypers(**kwargs)


def test_frames_cutoff_of_the_wrong_kind():
    frame = ase.Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]])
    with pytest.raises(TypeError, match=r"cutoff must be a real number, got '7'"):
        frames_to_pairs(frame, "7", semiaxes=(1, 1, 1), rotation_key=None)
    with pytest.raises(TypeError, match=r"cutoff must be a real number, got \(7\+0j\)"):
        neighbour_pairs(frame.positions, [2], np.zeros((1, 3, 3)), np.zeros((1, 3), bool), 7 + 0j)


# --------------------------------------------------------------- part 2: limits before allocating


def test_lmax_and_degree_limits_refuse_before_allocating():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"lmax must be <= {LMAX_LIMIT}, got 1000000"):
        ExpansionHypers(10**6, "gto", sigma=1.0)
    with pytest.raises(ValueError, match=rf"lmax must be <= {LMAX_LIMIT}, got {LMAX_LIMIT + 1}"):
        ExpansionHypers(LMAX_LIMIT + 1, "gto", sigma=1.0)
    with pytest.raises(ValueError, match=rf"max_radial=1000000 with lmax=4 .* degree l \+ 2 max_radial = 2000004, "
                                         rf"above the limit {DEGREE_LIMIT}"):
        ExpansionHypers(4, "gto", sigma=1.0, max_radial=10**6)
    with pytest.raises(ValueError, match=r"max_radial=\[0, 12, 0\] .* channel l=1 .* = 25"):
        ExpansionHypers(2, "gto", sigma=1.0, max_radial=[0, 12, 0])
    assert time.perf_counter() - start < 1.0
    assert ExpansionHypers(LMAX_LIMIT, "gto", sigma=1.0).max_degree == LMAX_LIMIT
    assert ExpansionHypers(0, "gto", sigma=1.0, max_radial=DEGREE_LIMIT // 2).max_degree == DEGREE_LIMIT


def _two_atom_box(cutoff_cell=3.0):
    return ase.Atoms("H2", positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * cutoff_cell, pbc=True)


def test_huge_periodic_neighbour_list_is_refused_before_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"cutoff 10000 angstrom would give about 6.2\de\+11 neighbour pairs .*"
                                         r"above max_pairs = 20,000,000; the largest is frame 0: 2 atoms, "
                                         r"pbc \[True, True, True\], cell volume 27 .* pass a larger max_pairs"):
        frames_to_pairs(_two_atom_box(), 1e4, semiaxes=(1, 1, 1), rotation_key=None)
    assert time.perf_counter() - start < 2.0
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 200e6
    frame = _two_atom_box()
    with pytest.raises(ValueError, match=r"about 6.2\de\+11 neighbour pairs"):
        neighbour_pairs(frame.positions, [2], frame.cell.array[None], frame.pbc[None], 1e4)


def test_max_pairs_is_the_way_out():
    frame = _two_atom_box()
    pairs = frames_to_pairs(frame, 7.0, semiaxes=(1, 1, 1), rotation_key=None)   # ~106 pairs
    with pytest.raises(ValueError, match=r"above max_pairs = 50;"):
        frames_to_pairs(frame, 7.0, semiaxes=(1, 1, 1), rotation_key=None, max_pairs=50)
    assert len(frames_to_pairs(frame, 7.0, semiaxes=(1, 1, 1), rotation_key=None, max_pairs=1000)) == len(pairs)
    assert MAX_PAIRS == 20_000_000


def test_open_frames_are_bounded_by_atoms_squared():
    frame = ase.Atoms("H2", positions=[[0, 0, 0], [1, 1, 1]])   # not periodic: at most n^2 pairs
    pairs = frames_to_pairs(frame, 1e4, semiaxes=(1, 1, 1), rotation_key=None)
    assert len(pairs) == 4   # two neighbours, two self pairs
    estimate = estimate_pairs(frame.positions, [2], np.zeros((1, 3, 3)), np.zeros((1, 3), bool), 1e4)
    assert estimate.tolist() == [6.0]   # n^2 + n self pairs


def test_pair_estimate_is_close_for_a_periodic_box():
    rng = np.random.default_rng(0)
    box = ase.Atoms("H" * 300, positions=rng.uniform(0, 15, (300, 3)), cell=np.eye(3) * 15, pbc=True)
    estimate = estimate_pairs(box.positions, [300], box.cell.array[None], box.pbc[None], 5.0)[0]
    actual = len(frames_to_pairs(box, 5.0, semiaxes=(1, 1, 1), rotation_key=None))
    assert 0.9 < estimate / actual < 1.2


# --------------------------------------------------------------- part 5: ranges


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=1e-160), r"sigma must be in \[0.01, 100\] angstrom, got 1e-160"),
    (dict(sigma=1e-200), r"sigma must be in \[0.01, 100\] angstrom, got 1e-200"),
    (dict(sigma=1e200), r"sigma must be in \[0.01, 100\] angstrom, got 1e\+200"),
    (dict(sigma=np.nextafter(SIGMA_RANGE[0], 0)), r"sigma must be in \[0.01, 100\] angstrom, got 0.00999"),
    (dict(sigma=np.nextafter(SIGMA_RANGE[1], np.inf)), r"sigma must be in \[0.01, 100\] angstrom, got 100.0000"),
    (dict(sigma=1.0, cutoff=1e4), r"cutoff must be in \[0.01, 1000\] angstrom, got 10000.0"),
    (dict(sigma=1.0, cutoff=1e-3), r"cutoff must be in \[0.01, 1000\] angstrom, got 0.001"),
])
def test_hyper_parameters_outside_their_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpansionHypers(3, "gto", **kwargs)


def test_hyper_parameter_range_edges_are_accepted():
    for sigma in SIGMA_RANGE:
        assert ExpansionHypers(2, "gto", sigma=sigma).sigma == sigma
    for cutoff in CUTOFF_RANGE:
        assert ExpansionHypers(2, "monomial", cutoff=cutoff).cutoff == cutoff


def _semiaxes_cases(dtype):
    low, high = PAIR_LIMITS[dtype].semiaxis_min, PAIR_LIMITS[dtype].semiaxis_max
    kind = dtype.type
    cases = [np.nextafter(kind(low), kind(0)), np.nextafter(kind(high), kind(np.inf)), kind(1e-7), kind(1e3)]
    if dtype == np.float64:
        cases += [1e-100, 1e-160, 1e200]
    return cases


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_semiaxes_outside_the_range_are_named(any_variant, dtype):
    if any_variant.problem == "density" and any_variant.name == "reference" and dtype == np.float32:
        pytest.skip("the reference density takes float64 inputs")
    for value in _semiaxes_cases(dtype):
        r, rot, ax = _batch(dtype)
        ax[2, 1] = value
        with pytest.raises(ValueError, match=r"semiaxes must be in \[0.01, 100\] angstrom in "
                                             rf"{dtype} .* pair 2 has \[[^,]*, {re.escape(repr(ax[2, 1].item()))}"):
            _call(any_variant, r, rot, ax, MONOMIAL)   # no GTO: only the absolute range applies


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_semiaxes_much_wider_than_a_gto_are_named(any_variant, dtype):
    if any_variant.problem == "density" and any_variant.name == "reference" and dtype == np.float32:
        pytest.skip("the reference density takes float64 inputs")
    ratio = PAIR_LIMITS[dtype].semiaxis_per_sigma_max
    hypers = ExpansionHypers(3, "gto", cutoff=7.0, sigma=0.05)
    r, rot, ax = _batch(dtype)
    ax[:] = 0.5
    ax[4, 2] = np.nextafter(dtype.type(ratio * 0.05), dtype.type(np.inf))
    with pytest.raises(ValueError, match=rf"semiaxes must be <= {ratio:g} x sigma = {ratio * 0.05:g} angstrom with "
                                         rf"the GTO basis in {dtype} .* pair 4 has "):
        _call(any_variant, r, rot, ax, hypers)
    ax[4, 2] = dtype.type(ratio * 0.05)     # at the edge: accepted
    assert all(np.isfinite(c).all() for c in _call(any_variant, r, rot, ax, hypers))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distances_outside_the_range_are_named(pair_variant, dtype):
    limit = PAIR_LIMITS[dtype].distance_max
    values = [limit * 1.001, 1e30] + ([1e100, 1e300] if dtype == np.float64 else [])
    for value in values:
        r, rot, ax = _batch(dtype)
        r[3] = np.array([0.0, value, 0.0], dtype=dtype)
        with pytest.raises(ValueError, match=rf"\|r_ij\| must be <= {limit:g} angstrom in {dtype} .* pair 3 has "
                                             r"r_ij = \[0.0, "):
            _call(pair_variant, r, rot, ax, HYPERS)


def test_distances_outside_the_range_are_named_in_density(density_variant):
    r, rot, ax = _batch()
    r[3] = [1e100, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"\|r_ij\| must be <= 1000 angstrom in float64 .* pair 3 has "
                                         r"r_ij = \[1e\+100, 0.0, 0.0\]"):
        _call(density_variant, r, rot, ax, HYPERS)


def test_float32_limits_on_hyper_parameters(any_variant):
    variant = any_variant
    if variant.name == "reference" and variant.problem == "density":
        pytest.skip("the reference density takes float64 inputs")
    limits = PAIR_LIMITS[np.dtype(np.float32)]
    deep = ExpansionHypers(2, "gto", sigma=1.5, max_radial=[0, 0, limits.degree_max // 2])   # degree 14
    with pytest.raises(ValueError, match=r"float32 supports channels of degree .* up to 12; lmax=2, "
                                         r"max_radial=\(0, 0, 6\) reach degree 14 .* compute in float64"):
        _call(variant, *_batch(np.float32), deep)
    wide = ExpansionHypers(1, "monomial", cutoff=2 * limits.cutoff_max)
    with pytest.raises(ValueError, match=r"cutoff = 200.0 is above float32's limit 100.0 angstrom"):
        _call(variant, *_batch(np.float32), wide)
    check_hypers(ExpansionHypers(2, "gto", sigma=1.5, max_radial=[0, 0, 5]), np.float32)   # degree 12: fine


# --------------------------------------------------------------- part 5: the edges give the reference's numbers


def term_scales(r_ij, rotations, semiaxes, hypers: ExpansionHypers) -> list:
    """Per l, (P,) the size of the terms each pair's coefficients sum.

    ``scale * max_(m, n) sum_k |T_l[k, m, n]| |E|_k``, where ``|E|`` runs the
    moment recurrence on ``|a|`` and ``|S|`` (so bounds every moment's and
    partial sum's magnitude). A coefficient that cancels is only as accurate
    as these terms, in every variant.
    """
    r_ij, rotations, semiaxes = (np.asarray(a, dtype=np.float64) for a in (r_ij, rotations, semiaxes))
    covariance, centre, scale = body_frame_gaussians(r_ij, rotations, semiaxes, hypers)
    bounds = normal_moments(np.abs(covariance), np.abs(centre), hypers.max_degree)
    out = []
    for table in compact_solid_harmonics(hypers):
        k = table.shape[0]
        out.append(np.abs(scale) * (np.abs(table.reshape(k, -1)).T @ bounds[:k]).max(axis=0))
    return out


def _largest_semiaxis(dtype, hypers):
    limits = PAIR_LIMITS[dtype]
    if hypers.radial_basis == "gto":
        return float(dtype.type(min(limits.semiaxis_max, limits.semiaxis_per_sigma_max * hypers.sigma)))
    return limits.semiaxis_max


def _edge_batch(dtype, hypers):
    """20 pairs: five shapes at the semi-axis edges (for ``hypers``) times four
    distances up to the distance edge."""
    limits = PAIR_LIMITS[dtype]
    low, high = limits.semiaxis_min, _largest_semiaxis(dtype, hypers)
    shapes = [[low] * 3, [high] * 3, [low, low, high], [high, high, low], [min(1.0, high)] * 3]
    distances = [0.0, low, 1.0, limits.distance_max]
    rng = np.random.default_rng(11)
    direction = rng.normal(size=(len(shapes) * len(distances), 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r_ij = direction * np.tile(distances, len(shapes))[:, None]
    semiaxes = np.repeat(np.array(shapes), len(distances), axis=0)
    # at the distance edge, directions whose components times the edge are integers: |r| is exact
    r_ij[len(distances) - 1:: len(distances)] = limits.distance_max * np.array(
        [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.8, 0.0, 0.6], [0.36, 0.48, 0.8], [0.48, 0.8, 0.36]])
    rotations = Rotation.random(len(r_ij), random_state=rng).as_matrix()
    # the edge values exactly as the dtype holds them (the reference sees the same numbers)
    return tuple(a.astype(dtype).astype(np.float64) for a in (r_ij, rotations, semiaxes))


def _edge_hypers(dtype):
    limits = PAIR_LIMITS[dtype]
    return {
        "gto-sigma-min": ExpansionHypers(3, "gto", cutoff=7.0, sigma=SIGMA_RANGE[0]),
        "gto-sigma-max": ExpansionHypers(3, "gto", cutoff=7.0, sigma=SIGMA_RANGE[1]),
        "gto-sigma-1.5": HYPERS,
        "monomial-cutoff-min": MONOMIAL,
        "monomial-cutoff-max": ExpansionHypers(3, "monomial", cutoff=limits.cutoff_max),
        "degree-max": ExpansionHypers(0, "gto", cutoff=7.0, sigma=1.5, max_radial=limits.degree_max // 2),
    }


def _assert_close_per_pair(actual, expected, scales, hypers, dtype, label):
    for l, (a, e, s) in enumerate(zip(actual, expected, scales)):
        bad = np.flatnonzero(~np.isfinite(a).all(axis=(1, 2)))
        assert not bad.size, f"{label} l={l}: non-finite values at pairs {bad.tolist()}"
    for p in range(len(expected[0])):
        assert_coefficients_close([a[p: p + 1] for a in actual], [e[p: p + 1] for e in expected], hypers, dtype,
                                  label=f"{label} pair {p}", orthonormalised=False,
                                  scales=[float(s[p]) for s in scales])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("edge", list(_edge_hypers(np.dtype(np.float64))))
def test_range_edges_are_finite_and_match_the_reference(pair_variant, dtype, edge):
    if pair_variant.name in NO_SWEEP:
        pytest.skip(f"{pair_variant.name}: compiled per hyper-parameter set, too slow for the corner sweep")
    expand = _load(pair_variant)
    hypers = _edge_hypers(dtype)[edge]
    r_ij, rotations, semiaxes = _edge_batch(dtype, hypers)
    expected = pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers)
    assert all(np.isfinite(e).all() for e in expected)
    actual = expand(*(a.astype(dtype) for a in (r_ij, rotations, semiaxes)), hypers, dtype=dtype)
    _assert_close_per_pair(actual, expected, term_scales(r_ij, rotations, semiaxes, hypers), hypers, dtype,
                           f"{pair_variant.name} {edge}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_range_edges_in_every_density_variant(density_variant, dtype):
    function = _load(density_variant)
    hypers = HYPERS
    r_ij, rotations, semiaxes = _edge_batch(dtype, hypers)
    if density_variant.name == "reference" and dtype == np.float32:
        pytest.skip("the reference density takes float64 inputs (the expectation is computed from them)")
    segment = np.arange(len(r_ij)) % 7
    expected = reference_density(r_ij, rotations, semiaxes, hypers, segment, 7)
    actual = function(*(a.astype(dtype) for a in (r_ij, rotations, semiaxes)), hypers, segment, 7, dtype=dtype)
    terms = term_scales(r_ij, rotations, semiaxes, hypers)
    scales = [np.bincount(segment, weights=t, minlength=7) for t in terms]   # a sum is as accurate as its terms
    _assert_close_per_pair(actual, expected, scales, hypers, dtype, f"{density_variant.name} density")


def test_edges_with_ordinary_pairs_match_to_the_suite_tolerances(pair_variant):
    """Semi-axes at both edges among ordinary pairs: the suite's own comparison
    (block maxima, raw and orthonormalised), float64."""
    if pair_variant.name in NO_SWEEP:
        pytest.skip(f"{pair_variant.name}: compiled per hyper-parameter set, too slow for the corner sweep")
    expand = _load(pair_variant)
    limits = PAIR_LIMITS[np.dtype(np.float64)]
    r_ij, rotations, semiaxes = random_pair_batch(12, 5)
    semiaxes[:3] = [limits.semiaxis_min, 1.0, 1.0]
    semiaxes[3:6] = [limits.semiaxis_max, 1.0, 1.0]
    expected = pairwise_ellip_expansion(r_ij, rotations, semiaxes, HYPERS)
    assert_coefficients_close(expand(r_ij, rotations, semiaxes, HYPERS), expected, HYPERS, np.float64,
                              label=pair_variant.name)


def test_the_issue_cases_are_errors_not_numbers():
    """Issue 11's examples, each now a ValueError (before: zeros, NaN or 0, silently)."""
    for dtype, value in [(np.float64, 1e-100), (np.float64, 1e-160), (np.float32, 1e-7)]:
        r, rot, ax = _batch(dtype)
        ax[0] = value
        with pytest.raises(ValueError, match="semiaxes must be in"):
            pairwise_ellip_expansion(r, rot, ax, HYPERS)
    r, rot, ax = _batch()
    r[0] = [1e100, 0, 0]
    with pytest.raises(ValueError, match=r"\|r_ij\| must be <= 1000"):
        pairwise_ellip_expansion(r, rot, ax, HYPERS)

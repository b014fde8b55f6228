"""Every registered gradient variant against the oracle, and the oracle against finite differences.

A gradient variant joins this suite by being in
``kernels.registry.GRADIENT_VARIANTS``; nothing here names one except the
oracle, Torch forward-mode autograd through ``torch_einsum``
(``kernels.torch.gradients``). Variants that cannot run on this machine are
skipped with the registry's reason, never passed. The contract and the
finite-difference reference are in ``reference.gradients``.

Two steps:

(a) the oracle against central finite differences of the reference
    (``finite_difference_gradients``), on few pairs (the differences cost
    13, or 19 with semi-axes, reference expansions per pair): derivatives
    with ``rtol = 1e-6`` and ``atol = 1e-6 x scale``; values with the pair
    suite's tolerance (``reference.compare``: rtol 1e-6, atol 1e-8 x block
    max, raw and orthonormalised);
(b) every other gradient variant against the oracle, values and
    derivatives, float64: ``rtol = 1e-9``, ``atol = 1e-10 x scale``
    (both compute the same analytic derivative, so they agree to rounding);
    float32 (every variant but the finite-difference reference, against the
    oracle in float64 on the same float32-rounded inputs): ``rtol = 1e-3``,
    ``atol = 1e-4 x scale``, the pair suite's float32 tolerance.

``scale`` of a block (quantity q, channel l) is its largest |value| in the
expected result, or ``FLOOR = 1e-2`` times the largest |value| of channel l's
coefficients (per angstrom or radian) when that is larger: a derivative that
vanishes identically (a sphere turned about any axis) is compared with
rounding noise, which is about 1e-10 of the coefficients for the finite
differences and 1e-15 for the analytic variants. Genuine derivatives are of
the order of the coefficients per angstrom (0.5 to 1.5 here), far above the floor.

Also: the derivatives along the semi-axes (oracle vs finite differences on
needles, plates, spheres and mixed shapes; variants vs the oracle), the
covariance of values and derivatives under a rotation of the whole pair
(``r -> Q r``, ``R -> Q R``: coefficients turn with the Wigner matrix
``D_l(Q)``, derivatives as lab vectors too), the contract's shapes and dtypes,
empty batches, untouched inputs and bad input (a ValueError naming the value).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from einsum_workbench.kernels.registry import GRADIENT_VARIANTS, get_variant
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.gradients import PairGradients, finite_difference_gradients
from einsum_workbench.reference.random_pairs import random_pair_batch

ORACLE_NAME = "torch_einsum"
ORACLE = get_variant(ORACLE_NAME, "gradients")
#: compared with the oracle (the finite-difference reference is what the oracle is checked against)
CANDIDATES = [v for v in GRADIENT_VARIANTS if v.name not in ("reference", ORACLE_NAME)]
#: every variant that computes in float32 itself
FLOAT32_VARIANTS = [v for v in GRADIENT_VARIANTS if v.name != "reference"]

FLOOR = 1e-2
FD_TOL = {"rtol": 1e-6, "atol_scale": 1e-6}
FLOAT64_TOL = {"rtol": 1e-9, "atol_scale": 1e-10}
FLOAT32_TOL = {"rtol": 1e-3, "atol_scale": 1e-4}

#: the issue's names for the semi-axes families of ``reference.random_pairs``
SHAPES = {"needle": "prolate", "plate": "oblate", "sphere": "spherical"}
FD_PAIRS = 6
PAIRS = 16


# ----------------------------------------------------------------- helpers


def _named(v, load_or_skip):
    return v.name, load_or_skip(v, f"{v.name} (gradients)")


@pytest.fixture
def oracle(load_or_skip):
    return _named(ORACLE, load_or_skip)[1]


@pytest.fixture(params=CANDIDATES, ids=lambda v: v.name)
def variant(request, load_or_skip):
    return _named(request.param, load_or_skip)


@pytest.fixture(params=FLOAT32_VARIANTS, ids=lambda v: v.name)
def float32_variant(request, load_or_skip):
    return _named(request.param, load_or_skip)


@pytest.fixture(params=GRADIENT_VARIANTS, ids=lambda v: v.name)
def any_variant(request, load_or_skip):
    return _named(request.param, load_or_skip)


@functools.lru_cache(maxsize=None)
def _inputs(n_pairs, seed, shape, dtype):
    """A random batch whose first pair is a self pair (r = 0), cast to ``dtype``, read-only."""
    r_ij, rotations, semiaxes = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    r_ij[0] = 0.0
    arrays = tuple(np.ascontiguousarray(a, dtype=dtype) for a in (r_ij, rotations, semiaxes))
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def _oracle_result(hypers, key, semiaxes_gradients=False):
    """The oracle in float64 on the float64 copy of ``_inputs(*key)`` (key's dtype: the rounding)."""
    arrays = [a.astype(np.float64) for a in _inputs(*key)]
    return ORACLE.load()(*arrays, hypers, dtype=np.float64, semiaxes_gradients=semiaxes_gradients)


def _hyper_cases(sets=equivalence_hypers):
    return [pytest.param(case, h, id=case) for case, h in sets()]


def assert_gradients_close(actual, expected, hypers, dtype, tol, label, quantities=("positions", "orientations"),
                           values=True):
    """Every derivative block (and the values, when ``values``) of ``actual`` against ``expected``.

    Checks the type, each block's shape and dtype, then values with
    ``rtol = tol["rtol"]`` and ``atol = tol["atol_scale"] x scale`` (module
    docstring). Raises AssertionError naming the quantity and l.
    """
    if not isinstance(actual, PairGradients):
        raise AssertionError(f"{label}: returned {type(actual).__name__}, not PairGradients")
    dtype = np.dtype(dtype)
    n_pairs = expected.values[0].shape[0]
    value_scale = [float(np.max(np.abs(v), initial=0.0)) for v in expected.values]
    for quantity in (("values",) if values else ()) + tuple(quantities):
        got, want = getattr(actual, quantity), getattr(expected, quantity)
        if got is None or len(got) != hypers.lmax + 1:
            raise AssertionError(f"{label} {quantity}: expected {hypers.lmax + 1} blocks, got {got if got is None else len(got)}")
        for l, (a, e) in enumerate(zip(got, want)):
            lead = (n_pairs,) if quantity == "values" else (n_pairs, 3)
            shape = lead + (2 * l + 1, hypers.num_radial[l])
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
                raise AssertionError(f"{label} {quantity} l={l}: got {type(a).__name__} "
                                     f"{getattr(a, 'shape', '?')} {getattr(a, 'dtype', '?')}, expected {shape} {dtype}")
            scale = max(float(np.max(np.abs(e), initial=0.0)), FLOOR * value_scale[l] if quantity != "values" else 0.0)
            np.testing.assert_allclose(a.astype(np.float64), e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale,
                                       err_msg=f"{label} {quantity} l={l} ({dtype})")


# ------------------------------------------------- (a) oracle vs finite differences


def _check_oracle_against_fd(oracle, hypers, arrays, label, semiaxes_gradients=False):
    expected = finite_difference_gradients(*arrays, hypers, semiaxes_gradients=semiaxes_gradients)
    actual = oracle(*arrays, hypers, dtype=np.float64, semiaxes_gradients=semiaxes_gradients)
    assert_coefficients_close(actual.values, expected.values, hypers, np.float64, f"{label} values")
    quantities = ("positions", "orientations", "semiaxes")[: 3 if semiaxes_gradients else 2]
    assert_gradients_close(actual, expected, hypers, np.float64, FD_TOL, label, quantities, values=False)
    if not semiaxes_gradients:
        assert actual.semiaxes is None, f"{label}: semiaxes derivatives returned although not asked for"


@pytest.mark.parametrize("case,hypers", _hyper_cases())
def test_oracle_matches_finite_differences(oracle, case, hypers):
    arrays = _inputs(FD_PAIRS, 300 + hypers.lmax, "mixed", np.float64)
    _check_oracle_against_fd(oracle, hypers, arrays, f"oracle vs finite differences, {case}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_oracle_matches_finite_differences_shapes(oracle, shape, basis):
    hypers = make_hypers(6, basis, None)
    arrays = _inputs(FD_PAIRS, 17, SHAPES[shape], np.float64)
    _check_oracle_against_fd(oracle, hypers, arrays, f"oracle vs finite differences, {shape} {basis}",
                             semiaxes_gradients=True)


@pytest.mark.parametrize("lmax,basis,max_radial", [
    pytest.param(2, "gto", 2, id="l2-gto-int"),
    pytest.param(5, "monomial", [2, 1, 0, 1, 2, 0], id="l5-monomial-list"),
    pytest.param(8, "gto", None, id="l8-gto-default"),
])
def test_oracle_semiaxes_gradients_match_finite_differences(oracle, lmax, basis, max_radial):
    hypers = make_hypers(lmax, basis, max_radial)
    arrays = _inputs(FD_PAIRS, 400 + lmax, "mixed", np.float64)
    _check_oracle_against_fd(oracle, hypers, arrays, f"oracle semi-axes vs finite differences, l{lmax} {basis}",
                             semiaxes_gradients=True)


def test_oracle_chunks_agree(oracle):
    hypers = make_hypers(4, "gto", None)
    key = (PAIRS, 31, "mixed", np.float64)
    whole = _oracle_result(hypers, key, True)
    chunked = oracle(*_inputs(*key), hypers, semiaxes_gradients=True, chunk=5)  # 16 pairs: chunks of 4
    assert_gradients_close(chunked, whole, hypers, np.float64, FLOAT64_TOL, "oracle in chunks of 4",
                           ("positions", "orientations", "semiaxes"))


@pytest.mark.parametrize("option,match", [
    ({"chunk": 0}, r"chunk must be a positive number of pairs, got 0"),
    ({"device": "tpu"}, r"device must be 'cpu' or 'cuda\[:index\]', got 'tpu'"),
])
def test_oracle_bad_option_is_named(oracle, option, match):
    with pytest.raises(ValueError, match=match):
        oracle(*_inputs(4, 1, "mixed", np.float64), make_hypers(2, "gto", None), **option)


# ------------------------------------------------- (b) every variant vs the oracle


@pytest.mark.parametrize("case,hypers", _hyper_cases())
def test_variant_matches_oracle_float64(variant, case, hypers):
    name, gradients = variant
    key = (PAIRS, 100 + hypers.lmax, "mixed", np.float64)
    actual = gradients(*_inputs(*key), hypers, dtype=np.float64)
    assert_gradients_close(actual, _oracle_result(hypers, key), hypers, np.float64, FLOAT64_TOL, f"{name} {case}")
    assert actual.semiaxes is None, f"{name}: semiaxes derivatives returned although not asked for"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lmax,basis", [(6, "gto"), (6, "monomial"), (8, "gto")])
def test_variant_matches_oracle_shapes(variant, shape, lmax, basis):
    name, gradients = variant
    hypers = make_hypers(lmax, basis, None)
    key = (24, 7, SHAPES[shape], np.float64)
    try:
        actual = gradients(*_inputs(*key), hypers, dtype=np.float64, semiaxes_gradients=True)
    except NotImplementedError as err:
        pytest.skip(f"{name} does not compute semi-axes derivatives: {err}")
    assert_gradients_close(actual, _oracle_result(hypers, key, True), hypers, np.float64, FLOAT64_TOL,
                           f"{name} {shape} l{lmax} {basis}", ("positions", "orientations", "semiaxes"))


@pytest.mark.parametrize("case,hypers", _hyper_cases(float32_hypers))
def test_variant_matches_oracle_float32(float32_variant, case, hypers):
    name, gradients = float32_variant
    key = (PAIRS, 200 + hypers.lmax, "mixed", np.float32)
    actual = gradients(*_inputs(*key), hypers, dtype=np.float32)
    assert_gradients_close(actual, _oracle_result(hypers, key), hypers, np.float32, FLOAT32_TOL,
                           f"{name} float32 l{hypers.lmax} {hypers.radial_basis}")


# pairs from frames: several species, periodic images, self pairs
FRAME_CASES = [
    pytest.param("ellipsoids", 3, True, id="ellipsoids-3sp-periodic-self"),
    pytest.param("benzenes", 2, False, id="benzenes-2sp-periodic-noself"),
]


@functools.lru_cache(maxsize=None)
def _frame_pairs(workload, n_species, self_pairs):
    from einsum_workbench.reference.pairs import frames_to_pairs
    from einsum_workbench.reference.workloads import WORKLOADS

    pairs = frames_to_pairs(WORKLOADS[workload](2, seed=11, n_species=n_species), 5.0, self_pairs=self_pairs)
    keep = np.unique(np.concatenate([  # every (centre, neighbour) species combination, a few pairs each
        np.flatnonzero((pairs.centre_species == a) & (pairs.neighbour_species == b))[:8]
        for a in np.unique(pairs.centre_species) for b in np.unique(pairs.neighbour_species)
    ]))
    return pairs.select(keep)


@pytest.mark.parametrize("workload,n_species,self_pairs", FRAME_CASES)
def test_variant_matches_oracle_frame_pairs(variant, workload, n_species, self_pairs):
    name, gradients = variant
    pairs = _frame_pairs(workload, n_species, self_pairs)
    assert len(np.unique(pairs.neighbour_species)) == n_species
    assert np.any(np.all(pairs.r_ij == 0, axis=1)) == self_pairs
    hypers = make_hypers(5, "gto", None)
    arrays = (pairs.r_ij, pairs.rotations, pairs.semiaxes)
    expected = ORACLE.load()(*arrays, hypers, dtype=np.float64)
    actual = gradients(*arrays, hypers, dtype=np.float64)
    assert_gradients_close(actual, expected, hypers, np.float64, FLOAT64_TOL, f"{name} {workload}")


# ------------------------------------------------- physics: rotating the whole pair


@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_rotation_covariance(float32_variant, basis):
    """``c_l(Q r, Q R) = D_l(Q) c_l(r, R)``; derivatives along lab axes turn
    as vectors too: ``X'[a] = sum_b Q[a, b] D_l X[b]`` for positions and
    orientations (the rotation generator ``[e_a]_x`` conjugates to
    ``[Q^T e_a]_x``)."""
    from scipy.spatial.transform import Rotation

    from einsum_workbench.kernels.wigner import wigner_matrices

    name, gradients = float32_variant
    hypers = make_hypers(5, basis, None)
    r_ij, rotations, semiaxes = _inputs(PAIRS, 23, "mixed", np.float64)
    q = Rotation.random(random_state=np.random.default_rng(5)).as_matrix()
    turned = gradients(r_ij @ q.T, np.einsum("ij,pjk->pik", q, rotations), semiaxes, hypers, dtype=np.float64)
    base = gradients(r_ij, rotations, semiaxes, hypers, dtype=np.float64)
    wigner = [d[0] for d in wigner_matrices(q[None], hypers)]
    expected = PairGradients(
        values=[np.einsum("mq,pqn->pmn", d, v) for d, v in zip(wigner, base.values)],
        positions=[np.einsum("ab,mq,pbqn->pamn", q, d, x) for d, x in zip(wigner, base.positions)],
        orientations=[np.einsum("ab,mq,pbqn->pamn", q, d, x) for d, x in zip(wigner, base.orientations)],
    )
    assert_gradients_close(turned, expected, hypers, np.float64, FLOAT64_TOL, f"{name} rotated pair, {basis}")


# ------------------------------------------------- contract: shapes, empty batches, inputs, bad input


def test_empty_batch(any_variant):
    name, gradients = any_variant
    hypers = make_hypers(4, "gto", None)
    for dtype in (np.float64, np.float32):
        out = gradients(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype), hypers,
                        dtype=dtype, semiaxes_gradients=True)
        for quantity in ("values", "positions", "orientations", "semiaxes"):
            lead = (0,) if quantity == "values" else (0, 3)
            got = [(b.shape, b.dtype) for b in getattr(out, quantity)]
            want = [(lead + (2 * l + 1, n), np.dtype(dtype)) for l, n in enumerate(hypers.num_radial)]
            assert got == want, f"{name} empty batch {quantity} ({np.dtype(dtype)})"


def test_inputs_left_untouched(any_variant):
    name, gradients = any_variant
    hypers = make_hypers(4, "gto", None)
    arrays = random_pair_batch(10, 3)
    copies = [a.copy() for a in arrays]
    gradients(*arrays, hypers, semiaxes_gradients=True)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c, err_msg=f"{name} changed its input")


def _spoil(kind, r_ij, rotations, semiaxes):
    if kind == "nan-r_ij":
        r_ij[4, 1] = np.nan
    elif kind == "nan-semiaxes":
        semiaxes[2, 0] = np.nan
    elif kind == "inf-rotation":
        rotations[1, 0, 0] = np.inf
    elif kind == "not-orthonormal":
        rotations[3] *= 1.1
    else:  # reflection
        rotations[1] = -rotations[1]


BAD_INPUTS = {
    "nan-r_ij": r"r_ij has a non-finite value at pair 4",
    "nan-semiaxes": r"semiaxes has a non-finite value at pair 2",
    "inf-rotation": r"rotations has a non-finite value at pair 1",
    "not-orthonormal": r"rotation at pair 3 is not orthonormal",
    "reflection": r"rotation at pair 1 is a reflection",
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_named(any_variant, kind):
    name, gradients = any_variant
    arrays = [a.copy() for a in random_pair_batch(6, 1)]
    _spoil(kind, *arrays)
    with pytest.raises(ValueError, match=BAD_INPUTS[kind]):
        gradients(*arrays, make_hypers(3, "gto", None))

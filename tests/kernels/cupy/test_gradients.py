"""cupy_batched gradients (kernels/cupy/gradients.py): the CUDA device code, checked with and without a GPU.

What runs where
---------------
- Everywhere g++ is installed: the *exact* per-pair device body
  (``pair_expansion.cuh`` + generated ``wb::Spec`` + ``pair_gradients.cuh`` +
  generated ``wb::GradSpec``) compiled as plain C++ and driven by the same
  chunk loop and unpacking as the GPU path
  (:func:`kernels.cupy.gradients.expand_with_gradients_host_compiled`), against central
  finite differences of the reference expansion
  (:func:`einsum_workbench.reference.gradients.finite_difference_gradients`)
  over lmax 0..8, both radial bases, the three radial-count forms, needle /
  plate / sphere shapes, with semi-axis gradients; float32; chunking; errors.
- Where nvcc or CuPy's NVRTC is installed: the generated kernel compiled for
  sm_90 (tests/kernels/cupy/test_compile.py).
- Only with a CUDA device (skipped here, and the skip says so): the RawKernel
  launch through CuPy against the host-compiled body and the finite differences.

Tolerances against finite differences: float64 ``rtol = 1e-6``, ``atol = 1e-6 x``
the larger of the expected derivative block's largest |value| and the value
block's (the latter for derivatives that vanish, e.g. spheres under rotation,
where finite differences leave ~1e-11 of the values as noise); the finite
differences themselves err by ~1e-8 relative here. float32: ``rtol = 1e-3``,
``atol = 1e-3 x`` that scale.
"""

from __future__ import annotations

import functools
import re
import subprocess

import numpy as np
import pytest

from einsum_workbench.kernels.cupy import common, host_build
from einsum_workbench.kernels.cupy import pairs as cb
from einsum_workbench.kernels.cupy import gradients as cg
from einsum_workbench.kernels.registry import get_variant
from einsum_workbench.kernels.tables import compact_solid_harmonics, num_monomials
from einsum_workbench.reference.compare import make_hypers
from einsum_workbench.reference.gradients import PairGradients, finite_difference_gradients
from einsum_workbench.reference.random_pairs import random_pair_batch

needs_gxx = pytest.mark.skipif(
    host_build.host_compiler() is None,
    reason="no C++ compiler (g++ / $CXX): the host-compiled device gradient body did not run",
)

GPU_REASON = get_variant("cupy_batched", "gradients").unavailable_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None,
                               reason=f"the gradient kernel launch through CuPy did not run: {GPU_REASON}")

TOLERANCES = {np.dtype(np.float64): (1e-6, 1e-6), np.dtype(np.float32): (1e-3, 1e-3)}  # rtol, atol scale
SHAPES = ("prolate", "oblate", "spherical")  # needles, plates, spheres
QUANTITIES = ("values", "positions", "orientations", "semiaxes")


def _radial_form(lmax, i):
    """Cycle through the three radial-count forms (default, int, list)."""
    return [None, 2, [(lmax - l) % 3 + (1 if l == 0 else 0) for l in range(lmax + 1)]][i % 3]


@functools.lru_cache(maxsize=None)
def _pairs(n_per_shape, seed, dtype=np.float64):
    """A few pairs of each shape family, concatenated (C-contiguous, read-only)."""
    parts = [random_pair_batch(n_per_shape, seed + i, shape=shape) for i, shape in enumerate(SHAPES)]
    arrays = tuple(np.ascontiguousarray(np.concatenate([p[k] for p in parts]), dtype=dtype) for k in range(3))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def assert_gradients_close(actual: PairGradients, expected: PairGradients, hypers, dtype, label=""):
    """Every block of every quantity, shapes and dtype included (tolerances: module docstring)."""
    dtype = np.dtype(dtype)
    rtol, atol_scale = TOLERANCES[dtype]
    for quantity in QUANTITIES:
        blocks_a, blocks_e = getattr(actual, quantity), getattr(expected, quantity)
        if blocks_e is None:
            assert blocks_a is None, f"{label} {quantity}: expected None"
            continue
        assert len(blocks_a) == hypers.lmax + 1, f"{label} {quantity}: {len(blocks_a)} blocks"
        for l, (a, e) in enumerate(zip(blocks_a, blocks_e)):
            assert isinstance(a, np.ndarray) and a.shape == e.shape and a.dtype == dtype, \
                f"{label} {quantity} l={l}: got {type(a).__name__} {getattr(a, 'shape', None)} " \
                f"{getattr(a, 'dtype', None)}, expected {e.shape} {dtype}"
            scale = max(float(np.max(np.abs(e), initial=0.0)),
                        float(np.max(np.abs(expected.values[l]), initial=0.0)))
            np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                       atol=atol_scale * scale, err_msg=f"{label} {quantity} l={l} ({dtype})")


# ---------------------------------------------------------------- generated code

@pytest.mark.parametrize("lmax,basis,max_radial", [(0, "gto", 2), (6, "gto", None), (5, "monomial", [2, 0, 1, 3, 0, 1])])
def test_grad_spec_is_straight_line_degree_ordered(lmax, basis, max_radial):
    hypers = make_hypers(lmax, basis, max_radial)
    source = cg.generate_grad_spec_source(hypers)
    n_out = common.output_offsets(hypers)[-1]
    body = source.split("struct GradSpec")[1]
    assert "for (" not in body, "spec must be straight-line code"
    targets = [int(o) for o in re.findall(r"out\[(\d+)LL \* stride\]", body)]
    assert sorted(targets) == list(range(n_out)), "every output written exactly once"
    n_terms = len(re.findall(r"\) \* dE\d+", body))
    assert n_terms == sum(int(np.count_nonzero(t)) for t in compact_solid_harmonics(hypers)), \
        "one multiply-add per non-zero of T_l"
    defined = [int(i) for i in re.findall(r"const T dE(\d+) =", body)]
    assert defined == sorted(defined) and max(defined) < num_monomials(hypers.max_degree)
    for i in set(int(i) for i in re.findall(r"\* dE(\d+)", body)):  # each read after its definition
        assert body.index(f"const T dE{i} =") < re.search(rf"\* dE{i}\b", body).start()


def test_derivative_moment_terms_match_a_normal_law():
    """dE[t] of the generated formula against finite differences of the law's moments (mean, covariance)."""
    from einsum_workbench.kernels.tables import monomial_exponents

    rng = np.random.default_rng(3)
    a, root = rng.normal(size=3), rng.normal(size=(3, 3))
    cov = root @ root.T + np.eye(3)
    exps = monomial_exponents(4)

    def moments(a, cov):  # E[x^t] by the reference recurrence of cupy_batched (exact for a normal law)
        from einsum_workbench.kernels.tables import recurrence_table
        table, out = recurrence_table(4), np.ones(len(exps))
        for i in range(len(exps) - 1):
            k = table.axis[i]
            out[i + 1] = a[k] * out[table.parent[i]] + sum(cov[k, m] * table.coef[i, m] * out[table.lower[i, m]]
                                                           for m in range(3))
        return out

    da, dS_upper = rng.normal(size=3), np.triu(rng.normal(size=(3, 3)))
    dS = dS_upper + np.triu(dS_upper, 1).T
    h = 1e-6
    fd = (moments(a + h * da, cov + h * dS) - moments(a - h * da, cov - h * dS)) / (2 * h)
    E = moments(a, cov)
    factors = {"dlog_scale": 0.0, **{f"da[{k}]": da[k] for k in range(3)},
               **{f"dS[{k}][{m}]": dS_upper[k, m] for k in range(3) for m in range(k, 3)}}
    formula = [sum(c * factors[f] * E[j] for c, f, j in terms) for terms in cg.derivative_moment_terms(4)]
    np.testing.assert_allclose(formula, fd, rtol=1e-7, atol=1e-7 * np.max(np.abs(fd)))


# ---------------------------------------------------------------- device arithmetic, host-compiled

@needs_gxx
@pytest.mark.parametrize("lmax", range(9))
@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_host_compiled_matches_finite_differences(lmax, basis):
    hypers = make_hypers(lmax, basis, _radial_form(lmax, lmax + (basis == "gto")))
    arrays = _pairs(2, 10 * lmax + (basis == "gto"))
    actual = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=True)
    expected = finite_difference_gradients(*arrays, hypers, semiaxes_gradients=True)
    assert_gradients_close(actual, expected, hypers, np.float64, f"host-compiled {hypers!r}")


@needs_gxx
def test_comparison_can_fail():
    """A 1e-4 relative error in one direction, or a sign flip, is caught."""
    hypers = make_hypers(4, "gto")
    arrays = _pairs(2, 5)
    actual = cg.expand_with_gradients_host_compiled(*arrays, hypers)
    expected = finite_difference_gradients(*arrays, hypers)
    assert_gradients_close(actual, expected, hypers, np.float64)
    for quantity, change in (("orientations", lambda b: -b), ("positions", lambda b: b * (1 + 1e-4))):
        blocks = [b.copy() for b in getattr(actual, quantity)]
        blocks[3][:, 1] = change(blocks[3][:, 1])
        with pytest.raises(AssertionError, match=f"{quantity} l=3"):
            assert_gradients_close(actual._replace(**{quantity: blocks}), expected, hypers, np.float64)


@needs_gxx
def test_semiaxes_gradients_optional_and_consistent():
    hypers = make_hypers(3, "monomial", 1)
    arrays = _pairs(2, 7)
    without = cg.expand_with_gradients_host_compiled(*arrays, hypers)
    with_axes = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=True)
    assert without.semiaxes is None and len(with_axes.semiaxes) == 4
    for quantity in ("values", "positions", "orientations"):
        for a, b in zip(getattr(without, quantity), getattr(with_axes, quantity)):
            np.testing.assert_array_equal(a, b)
    values = cb.expand_host_compiled(*arrays, hypers)  # the pair kernel's body gives the same values
    for a, b in zip(without.values, values):
        np.testing.assert_array_equal(a, b)


@needs_gxx
@pytest.mark.parametrize("lmax,basis", [(2, "gto"), (6, "gto"), (6, "monomial")])
def test_host_compiled_float32(lmax, basis):
    hypers = make_hypers(lmax, basis)
    single = _pairs(2, 40 + lmax, np.float32)
    arrays = tuple(a.astype(np.float64) for a in single)  # the same pairs, exactly
    actual = cg.expand_with_gradients_host_compiled(*single, hypers, dtype=np.float32, semiaxes_gradients=True)
    expected = finite_difference_gradients(*arrays, hypers, semiaxes_gradients=True)
    assert_gradients_close(actual, expected, hypers, np.float32, "host-compiled float32")
    exact = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=True)
    assert any(np.any(a.astype(np.float64) != b) for a, b in zip(actual.positions, exact.positions)), \
        "float32 results identical to float64 ones: not computed in float32"


@needs_gxx
@pytest.mark.parametrize("semiaxes_gradients", [False, True])
def test_chunking_respects_memory_bound_and_matches_one_chunk(semiaxes_gradients):
    hypers = make_hypers(5, "gto")
    arrays = _pairs(10, 9)
    per_pair = cg.device_bytes_per_pair(hypers, np.float64, semiaxes_gradients)
    bound = 7 * per_pair
    backend = cg.HostGradientBackend(hypers)
    chunked = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=semiaxes_gradients,
                                                     max_gpu_memory=bound, backend=backend)
    whole = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=semiaxes_gradients)
    assert backend.launches == [7, 7, 7, 7, 2]
    assert backend.peak_bytes <= bound
    for quantity in QUANTITIES:
        for a, b in zip(getattr(chunked, quantity) or [], getattr(whole, quantity) or []):
            np.testing.assert_array_equal(a, b)


@needs_gxx
def test_host_compiled_empty_batch():
    hypers = make_hypers(2, "gto")
    out = cg.expand_with_gradients_host_compiled(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), hypers,
                                                 semiaxes_gradients=True)
    for l, n in enumerate(hypers.num_radial):
        assert out.values[l].shape == (0, 2 * l + 1, n)
        for blocks in (out.positions, out.orientations, out.semiaxes):
            assert blocks[l].shape == (0, 3, 2 * l + 1, n)


@needs_gxx
def test_bad_input_names_the_value():
    hypers = make_hypers(2, "gto")
    r, rot, axes = _pairs(1, 0)
    with pytest.raises(ValueError, match="semiaxes_gradients must be a bool, got 'yes'"):
        cg.expand_with_gradients_host_compiled(r, rot, axes, hypers, semiaxes_gradients="yes")
    with pytest.raises(ValueError, match="max_gpu_memory=10 bytes is less than one pair needs"):
        cg.expand_with_gradients_host_compiled(r, rot, axes, hypers, max_gpu_memory=10)
    with pytest.raises(ValueError, match="max_gpu_memory must be a positive number"):
        cg.plan_chunks(3, hypers, np.float64, -1)
    with pytest.raises(ValueError):
        cg.expand_with_gradients_host_compiled(r[:, :2], rot, axes, hypers)
    with pytest.raises(TypeError, match="ExpansionHypers"):
        cg.expand_with_gradients_host_compiled(r, rot, axes, {"lmax": 2})


# ---------------------------------------------------------------- availability, the host harness

def test_registry_reason_when_no_gpu():
    if GPU_REASON is None:
        pytest.skip("a CUDA device is present: the no-GPU message was not exercised")
    assert isinstance(GPU_REASON, str) and GPU_REASON
    with pytest.raises(RuntimeError, match="unavailable"):
        get_variant("cupy_batched", "gradients").load()
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        cg.expand_with_gradients(*_pairs(1, 0), make_hypers(1, "gto"))


@needs_gxx
def test_host_harness_compiles_warning_free(tmp_path):
    source = tmp_path / "host.cpp"
    source.write_text(cg.host_source(make_hypers(0, "gto", 2)))  # degrees 1 and 3 unused: no unused locals
    result = subprocess.run([host_build.host_compiler(), "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                             str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


# ---------------------------------------------------------------- on a CUDA device only

@needs_gpu
@pytest.mark.parametrize("lmax,basis", [(0, "gto"), (6, "gto"), (8, "monomial")])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_matches_finite_differences_and_host_body(lmax, basis, dtype):
    hypers = make_hypers(lmax, basis)
    arrays = _pairs(3, 60 + lmax, dtype)
    actual = cg.expand_with_gradients(*arrays, hypers, semiaxes_gradients=True)
    expected = finite_difference_gradients(*arrays, hypers, semiaxes_gradients=True)
    assert_gradients_close(actual, expected, hypers, dtype, "cupy_batched gradients")
    if host_build.host_compiler() is not None and np.dtype(dtype) == np.float64:  # same body, FMA contraction aside
        host = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=True)
        for quantity in QUANTITIES:
            for a, b in zip(getattr(actual, quantity), getattr(host, quantity)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(b), initial=0.0)))


@needs_gpu
def test_gpu_chunking():
    hypers = make_hypers(6, "gto")
    arrays = _pairs(300, 17)
    whole = cg.expand_with_gradients(*arrays, hypers)
    chunked = cg.expand_with_gradients(*arrays, hypers, max_gpu_memory=97 * cg.device_bytes_per_pair(hypers, np.float64))
    for quantity in ("values", "positions", "orientations"):
        for a, b in zip(getattr(whole, quantity), getattr(chunked, quantity)):
            np.testing.assert_array_equal(a, b)

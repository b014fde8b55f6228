"""cupy_batched backward (kernels/cupy/backward.py): the CUDA device code, checked with and without a GPU.

What runs where
---------------
- Everywhere: the generated ``wb::BackwardSpec`` (straight-line, each
  ``gM[t]`` read once), its integer factors against derivatives of a normal
  law's moments (mean, covariance, rotation), the per-segment contraction
  ``gM = T'^T g`` against ``T'`` itself; importing the module and generating
  its source imports no CuPy.
- Where g++ is installed: the *exact* per-pair device body
  (``pair_expansion.cuh`` + generated ``wb::Spec`` and ``wb::BackwardSpec`` +
  ``centre_density_backward.cuh``) compiled as plain C++ and driven by the
  same chunk loop as the GPU path
  (:func:`kernels.cupy.backward.centre_density_backward_host_compiled`),
  against the reference (:func:`einsum_workbench.reference.backward.centre_density_backward`,
  finite differences) on every hyper-parameter set of the equivalence suite,
  raw and orthonormal, and against Torch autograd (``torch_einsum``) at 1e-10;
  float32; chunking (bit for bit, within the memory bound); errors.
- Where nvcc or CuPy's NVRTC is installed: the RawModule source compiled for
  sm_90, every kernel in the report.
- Only with a CUDA device (skipped here, and the skip says so): the RawKernel
  launch through CuPy against the host-compiled body and the reference.

Tolerances against the reference: those of tests/kernels/test_backward.py
(float64 ``rtol = 1e-6``, ``atol = 1e-6 x`` the quantity's largest |value|,
or ``FLOOR = 0.1`` times the largest of all three when larger; float32
``rtol = 1e-3``, ``atol = 1e-4 x`` that scale).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from einsum_workbench.kernels.cupy import backward as cbw
from einsum_workbench.kernels.cupy import host_build
from einsum_workbench.kernels.cupy.common import nvrtc_options
from einsum_workbench.kernels.cupy.compile_check import representative_hypers
from einsum_workbench.kernels.registry import get_variant
from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents, num_monomials, recurrence_table
from einsum_workbench.reference.backward import PairCotangents, centre_density_backward
from einsum_workbench.reference.compare import equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.random_pairs import random_pair_batch

needs_gxx = pytest.mark.skipif(
    host_build.host_compiler() is None,
    reason="no C++ compiler (g++ / $CXX): the host-compiled device backward body did not run",
)
GPU_REASON = get_variant("cupy_batched", "backward").unavailable_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None,
                               reason=f"the backward kernel launch through CuPy did not run: {GPU_REASON}")

FLOOR = 1e-1
FLOAT64_TOL = (1e-6, 1e-6)  # rtol, atol scale
FLOAT32_TOL = (1e-3, 1e-4)
#: segment of each of 14 pairs: 7 segments, 0, 3 and 6 empty, not in order (as tests/kernels/test_backward.py)
SEGMENT = np.array([1, 4, 2, 1, 5, 4, 2, 1, 5, 4, 2, 4, 5, 1])
N_SEGMENTS = 7


@functools.lru_cache(maxsize=None)
def _pairs(seed: int, n_pairs: int = 14, dtype=np.float64):
    r_ij, rotations, semiaxes = random_pair_batch(n_pairs, seed=seed, shape="mixed", max_distance=5.0)
    r_ij[5] = 0.0  # a self pair
    arrays = tuple(np.ascontiguousarray(a, dtype=dtype) for a in (r_ij, rotations, semiaxes))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _cotangent(hypers, seed: int, n_segments: int = N_SEGMENTS):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def assert_cotangents_close(actual, expected, tol, label=""):
    """Each of r, theta, semiaxes (dtype and shape included), tolerances: module docstring."""
    assert isinstance(actual, PairCotangents), label
    rtol, atol_scale = tol
    largest = max(np.abs(x).max(initial=0.0) for x in expected if x is not None)
    for q in ("r", "theta", "semiaxes"):
        a, e = getattr(actual, q), getattr(expected, q)
        if e is None:
            assert a is None, (label, q)
            continue
        assert isinstance(a, np.ndarray) and a.shape == e.shape and a.flags.c_contiguous, (label, q)
        scale = max(np.abs(e).max(initial=0.0), FLOOR * largest, 1e-300)
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=rtol, atol=atol_scale * scale, err_msg=f"{label} {q}")


# ---------------------------------------------------------------- generated code and the host algebra

@pytest.mark.parametrize("lmax,basis,max_radial", [(0, "gto", 2), (6, "gto", None), (5, "monomial", [2, 0, 1, 3, 0, 1])])
def test_backward_spec_is_straight_line_and_reads_each_used_moment_once(lmax, basis, max_radial):
    hypers = make_hypers(lmax, basis, max_radial)
    body = cbw.generate_backward_spec_source(hypers).split("struct BackwardSpec")[1]
    assert "for (" not in body, "spec must be straight-line code"
    used = cbw.used_monomials(hypers)
    assert sorted(int(t) for t in re.findall(r"= gm\[(\d+)\];", body)) == sorted(used), "each used gM[t] read once"
    terms = cbw.projection_terms(hypers.max_degree)
    n_terms = len(re.findall(r"[-+]= (?:T\([^)]*\) \* )?g\d+ \* E\[\d+\];", body))
    assert n_terms == sum(len(terms[t]) for t in used), "one multiply-add per term of a used monomial"
    for match in re.finditer(r"g\d+ \* E\[(\d+)\]", body):  # every moment read after the recurrence wrote it
        k = int(match.group(1))
        assert k == 0 or body.index(f"E[{k}] = ") < match.start(), k


def _normal_moments(a, cov, max_degree):
    """E[x^t] of N(a, cov) by the recurrence of the kernels (exact for a normal law)."""
    table, exps = recurrence_table(max_degree), monomial_exponents(max_degree)
    out = np.ones(len(exps))
    for i in range(len(exps) - 1):
        k = table.axis[i]
        out[i + 1] = a[k] * out[table.parent[i]] + sum(cov[k, m] * table.coef[i, m] * out[table.lower[i, m]]
                                                       for m in range(3))
    return out


def test_projection_terms_are_the_derivatives_of_a_normal_laws_moments():
    """mean[k], covariance[q] and rotation[a] terms against central differences of E[x^t]
    along a_k, S_ij (symmetric, both entries) and a rotation of the whole law about lab axis a."""
    rng = np.random.default_rng(7)
    degree = 5
    a, root = rng.normal(size=3), rng.normal(size=(3, 3))
    cov = root @ root.T + np.eye(3)
    E = _normal_moments(a, cov, degree)
    h = 1e-6
    expected = {}
    for k in range(3):
        e = np.eye(3)[k]
        expected[f"mean[{k}]"] = (_normal_moments(a + h * e, cov, degree) - _normal_moments(a - h * e, cov, degree)) / (2 * h)
        turn = [Rotation.from_rotvec(s * h * e).as_matrix() for s in (1, -1)]
        moved = [_normal_moments(q @ a, q @ cov @ q.T, degree) for q in turn]
        expected[f"rotation[{k}]"] = (moved[0] - moved[1]) / (2 * h)
    for q, (i, j) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        step = np.zeros((3, 3))
        step[i, j] = step[j, i] = 1.0
        expected[f"covariance[{q}]"] = (_normal_moments(a, cov + h * step, degree)
                                        - _normal_moments(a, cov - h * step, degree)) / (2 * h)
    terms = cbw.projection_terms(degree)
    for accumulator, fd in expected.items():
        formula = np.array([sum(f * E[k] for acc, f, k in terms[t] if acc == accumulator) for t in range(len(E))])
        np.testing.assert_allclose(formula, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max(), err_msg=accumulator)
    assert all(terms[t][0] == ("value", 1, t) for t in range(len(E)))


@pytest.mark.parametrize("lmax,basis,max_radial", [(4, "gto", None), (3, "monomial", [1, 0, 2, 1])])
def test_moment_cotangent_is_the_transposed_contraction(lmax, basis, max_radial):
    """<gM, M> = sum_l <g_l, T'_l . M> for any moments M: gM = T'^T g, row by row."""
    hypers = make_hypers(lmax, basis, max_radial)
    g = _cotangent(hypers, 3, 5)
    gm = cbw.moment_cotangent(cbw.flat_cotangent(g, hypers), hypers)
    assert gm.shape == (5, num_monomials(hypers.max_degree)) and gm.flags.c_contiguous
    moments = np.random.default_rng(4).normal(size=(5, gm.shape[1]))
    direct = sum(np.einsum("smn,kmn,sk->s", g[l], table, moments[:, : table.shape[0]])
                 for l, table in enumerate(compact_solid_harmonics(hypers)))
    np.testing.assert_allclose(np.einsum("sk,sk->s", gm, moments), direct, rtol=1e-12)
    np.testing.assert_array_equal(cbw.moment_cotangent(cbw.flat_cotangent(g, hypers)[[3, 1]], hypers), gm[[3, 1]])
    unused = sorted(set(range(gm.shape[1])) - cbw.used_monomials(hypers))
    assert not gm[:, unused].any()


def test_chunk_rows_window_and_distinct_segments():
    rows, local = cbw.chunk_rows(np.array([4, 4, 5, 7, 5]), 5)
    assert rows == slice(4, 8) and local.tolist() == [0, 0, 1, 3, 1]
    rows, local = cbw.chunk_rows(np.array([90, 3, 3, 41]), 4)
    assert rows.tolist() == [3, 41, 90] and local.tolist() == [2, 0, 0, 1]


def test_module_import_does_not_import_cupy():
    code = ("import sys; import einsum_workbench.kernels.cupy.backward as m; "
            "from einsum_workbench.reference.hypers import ExpansionHypers; "
            "m.kernel_source(ExpansionHypers(6, 'gto', cutoff=7.0, sigma=1.5)); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- device arithmetic, host-compiled

_REFERENCE = {}


def _reference(case, hypers, seed, orthonormal):
    key = (case, orthonormal)
    if key not in _REFERENCE:
        _REFERENCE[key] = centre_density_backward(*_pairs(seed), hypers, SEGMENT, N_SEGMENTS, _cotangent(hypers, seed),
                                                  orthonormal=orthonormal, semiaxes_gradients=True)
    return _REFERENCE[key]


@needs_gxx
@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("case,hypers", equivalence_hypers(), ids=[c for c, _ in equivalence_hypers()])
def test_host_compiled_matches_reference(case, hypers, orthonormal):
    seed = zlib.crc32(case.encode()) % 1000
    g = _cotangent(hypers, seed)
    expected = _reference(case, hypers, seed, orthonormal)
    actual = cbw.centre_density_backward_host_compiled(*_pairs(seed), hypers, SEGMENT, N_SEGMENTS, g,
                                                       orthonormal=orthonormal, semiaxes_gradients=True)
    assert actual.r.dtype == np.float64
    assert_cotangents_close(actual, expected, FLOAT64_TOL, f"host-compiled {case} orthonormal={orthonormal}")
    plain = cbw.centre_density_backward_host_compiled(*_pairs(seed), hypers, SEGMENT, N_SEGMENTS, g,
                                                      orthonormal=orthonormal)
    assert plain.semiaxes is None  # and the six-number kernel agrees with the nine-number one bit for bit
    np.testing.assert_array_equal(plain.r, actual.r)
    np.testing.assert_array_equal(plain.theta, actual.theta)


@needs_gxx
@pytest.mark.parametrize("lmax,basis,max_radial", [(0, "gto", 2), (4, "monomial", None), (6, "gto", None),
                                                    (8, "gto", [3, 2, 2, 1, 1, 1, 0, 0, 0])])
def test_host_compiled_matches_torch_autograd(lmax, basis, max_radial, load_or_skip):
    """Against the analytic VJP of torch_einsum (reverse-mode autograd): agreement to rounding."""
    torch_backward = load_or_skip(get_variant("torch_einsum", "backward"), "torch_einsum (backward)")
    hypers = make_hypers(lmax, basis, max_radial)
    arrays, g = _pairs(20 + lmax), _cotangent(hypers, 20 + lmax)
    expected = torch_backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True, semiaxes_gradients=True)
    actual = cbw.centre_density_backward_host_compiled(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                                       semiaxes_gradients=True)
    assert_cotangents_close(actual, expected, (1e-10, 1e-11), f"host-compiled vs torch {hypers!r}")


@needs_gxx
def test_comparison_can_fail():
    """A 1e-4 relative error in one component, or a sign flip, is caught."""
    hypers = make_hypers(4, "gto")
    g = _cotangent(hypers, 5)
    actual = cbw.centre_density_backward_host_compiled(*_pairs(5), hypers, SEGMENT, N_SEGMENTS, g,
                                                       semiaxes_gradients=True)
    expected = centre_density_backward(*_pairs(5), hypers, SEGMENT, N_SEGMENTS, g, semiaxes_gradients=True)
    assert_cotangents_close(actual, expected, FLOAT64_TOL)
    for q, change in (("theta", lambda x: -x), ("r", lambda x: x * (1 + 1e-4)), ("semiaxes", lambda x: x * 1.001)):
        wrong = getattr(actual, q).copy()
        wrong[3, 1] = change(wrong[3, 1])
        with pytest.raises(AssertionError, match=f" {q}"):
            assert_cotangents_close(actual._replace(**{q: wrong}), expected, FLOAT64_TOL)


@needs_gxx
@pytest.mark.parametrize("case,hypers", float32_hypers(), ids=[c for c, _ in float32_hypers()])
def test_host_compiled_float32(case, hypers):
    single = _pairs(3, dtype=np.float32)
    arrays = tuple(a.astype(np.float64) for a in single)  # the same pairs, exactly
    g = _cotangent(hypers, 3)
    expected = centre_density_backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                       semiaxes_gradients=True)
    actual = cbw.centre_density_backward_host_compiled(*single, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                                       semiaxes_gradients=True)
    assert actual.r.dtype == actual.theta.dtype == actual.semiaxes.dtype == np.float32
    assert_cotangents_close(actual, expected, FLOAT32_TOL, f"host-compiled float32 {case}")
    exact = cbw.centre_density_backward_host_compiled(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True)
    assert np.any(actual.r.astype(np.float64) != exact.r), "float32 results equal float64 ones: not computed in float32"


@needs_gxx
@pytest.mark.parametrize("semiaxes_gradients", [False, True])
def test_chunking_respects_memory_bound_and_matches_one_chunk(semiaxes_gradients):
    """Chunks of 7 pairs (table rows by window or by distinct segments) give the same bits as one chunk,
    and shuffling the pairs only permutes the result."""
    hypers = make_hypers(5, "gto")
    arrays = _pairs(9, 40)
    n_segments = 23
    segment = np.random.default_rng(9).integers(0, n_segments, 40)
    segment[:12] = np.sort(segment[:12])  # a sorted stretch: window rows; the rest: distinct rows
    g = _cotangent(hypers, 9, n_segments)
    bound = 7 * cbw.device_bytes_per_pair(hypers, np.float64, semiaxes_gradients)
    backend = cbw.HostBackwardBackend(hypers)
    chunked = cbw.centre_density_backward_host_compiled(*arrays, hypers, segment, n_segments, g,
                                                        semiaxes_gradients=semiaxes_gradients,
                                                        max_gpu_memory=bound, backend=backend)
    whole = cbw.centre_density_backward_host_compiled(*arrays, hypers, segment, n_segments, g,
                                                      semiaxes_gradients=semiaxes_gradients)
    assert backend.launches == [7, 7, 7, 7, 7, 5]
    assert backend.peak_bytes <= bound
    order = np.random.default_rng(1).permutation(40)
    shuffled = cbw.centre_density_backward_host_compiled(*(a[order] for a in arrays), hypers, segment[order],
                                                         n_segments, g, semiaxes_gradients=semiaxes_gradients)
    for q in ("r", "theta", "semiaxes"):
        if not semiaxes_gradients and q == "semiaxes":
            assert chunked.semiaxes is None and whole.semiaxes is None
            continue
        np.testing.assert_array_equal(getattr(chunked, q), getattr(whole, q))
        np.testing.assert_array_equal(getattr(shuffled, q), getattr(whole, q)[order])


@needs_gxx
def test_zero_cotangent_segment_gives_its_pairs_exact_zeros():
    hypers = make_hypers(3, "gto")
    g = _cotangent(hypers, 11)
    for block in g:
        block[4] = 0.0
    out = cbw.centre_density_backward_host_compiled(*_pairs(11), hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                                    semiaxes_gradients=True)
    mine = SEGMENT == 4
    for q in out:
        np.testing.assert_array_equal(q[mine], 0.0)
    for q in (out.r, out.semiaxes):  # (theta vanishes for a sphere: not checked)
        assert np.all(np.abs(q[~mine]).max(axis=1) > 0)


@needs_gxx
def test_empty_batch_and_no_segments():
    hypers = make_hypers(2, "gto")
    empty = (np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)))
    for n_segments in (0, 3):
        out = cbw.centre_density_backward_host_compiled(*empty, hypers, np.zeros(0, np.int64), n_segments,
                                                        _cotangent(hypers, 0, n_segments), semiaxes_gradients=True)
        assert out.r.shape == out.theta.shape == out.semiaxes.shape == (0, 3)
    single = tuple(a.astype(np.float32) for a in empty)
    out = cbw.centre_density_backward_host_compiled(*single, hypers, np.zeros(0, np.int64), 0, _cotangent(hypers, 0, 0))
    assert out.r.dtype == np.float32 and out.semiaxes is None


@needs_gxx
def test_bad_input_names_the_value():
    hypers = make_hypers(3, "gto")
    arrays, g = _pairs(5), _cotangent(hypers, 5)
    run = functools.partial(cbw.centre_density_backward_host_compiled, *arrays, hypers)
    wrong = list(g)
    wrong[2] = wrong[2][:, :, :0]
    with pytest.raises(ValueError, match=r"cotangent for l = 2 must have shape \(7, 5, \d+\).*got \(7, 5, 0\)"):
        run(SEGMENT, N_SEGMENTS, wrong)
    with pytest.raises(ValueError, match=r"one array per l = 0\.\.3 \(4\), got 3"):
        run(SEGMENT, N_SEGMENTS, g[:3])
    with pytest.raises(ValueError, match=r"segment of pair 0 is 9"):
        run(np.r_[9, SEGMENT[1:]], N_SEGMENTS, g)
    with pytest.raises(TypeError, match="semiaxes_gradients must be a bool"):
        run(SEGMENT, N_SEGMENTS, g, semiaxes_gradients="yes")
    with pytest.raises(ValueError, match="max_gpu_memory=10 bytes is less than one pair needs"):
        run(SEGMENT, N_SEGMENTS, g, max_gpu_memory=10)
    with pytest.raises(ValueError, match="max_gpu_memory must be a positive number"):
        cbw.plan_chunks(3, hypers, np.float64, -1)
    with pytest.raises(TypeError, match="ExpansionHypers"):
        cbw.centre_density_backward_host_compiled(*arrays, {"lmax": 3}, SEGMENT, N_SEGMENTS, g)


# ---------------------------------------------------------------- compiled for sm_90 without a device

@needs_gxx
@pytest.mark.parametrize("name", ["lmax0_gto_int", "lmax6_gto_default"])
def test_host_harness_compiles_warning_free(tmp_path, name):
    source = tmp_path / "host.cpp"
    source.write_text(cbw.host_source(representative_hypers()[name]))
    result = subprocess.run([host_build.host_compiler(), "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                             str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the sm_90 compile check did not run")
@pytest.mark.parametrize("name", ["lmax6_gto_default", "lmax8_monomial_list"])
def test_kernel_compiles_with_nvcc_for_sm90(tmp_path, name):
    """The RawModule source, warnings as errors; lmax 6 float64 without spills (ptxas' report)."""
    source = tmp_path / "backward.cu"
    source.write_text(cbw.kernel_source(representative_hypers()[name]))
    result = subprocess.run(["nvcc", "-arch=sm_90", "--cubin", "-std=c++17", "-Xptxas", "-v", "-Werror",
                             "all-warnings", "-o", str(tmp_path / "backward.cubin"), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-4000:]}"
    for kernel in cbw.KERNEL_NAMES.values():
        assert f"'{kernel}'" in result.stderr, f"{kernel} missing from the ptxas report"
    if name == "lmax6_gto_default":
        report = result.stderr.split("Compiling entry function 'wb_backward_f64'")[1].split("Compiling entry")[0]
        assert "0 bytes spill stores" in report, report


def _cupy_nvrtc_program():
    """CuPy's NVRTC program class and NVRTC's version, or a skip naming what is missing."""
    try:
        from cupy.cuda import compiler

        return compiler._NVRTCProgram, compiler._get_nvrtc_version()
    except Exception as err:  # cupy absent, or no libnvrtc
        pytest.skip(f"CuPy's NVRTC is not usable here ({type(err).__name__}: {err}): "
                    "the NVRTC compile of the RawModule source did not run")


@pytest.mark.parametrize("name", ["lmax6_gto_default", "lmax0_gto_int"])
def test_rawmodule_source_compiles_with_nvrtc_for_sm90(name):
    """What ``cupy.RawModule`` does on an sm_90 device (as tests/kernels/cupy/test_compile.py), minus loading."""
    program_class, version = _cupy_nvrtc_program()
    program = program_class(cbw.kernel_source(representative_hypers()[name]), "wb_backward.cu", (), (),
                            name_expressions=None, method="cubin")
    cubin, _ = program.compile(nvrtc_options(None) + ("-arch=sm_90", "--device-as-default-execution-space"))
    for kernel in cbw.KERNEL_NAMES.values():
        assert kernel.encode() in cubin, f"{kernel} missing from the NVRTC {version} cubin"


# ---------------------------------------------------------------- availability

def test_registry_reason_when_no_gpu():
    if GPU_REASON is None:
        pytest.skip("a CUDA device is present: the no-GPU message was not exercised")
    assert "test_backward.py" in GPU_REASON, GPU_REASON
    with pytest.raises(RuntimeError, match="unavailable"):
        get_variant("cupy_batched", "backward").load()
    hypers = make_hypers(1, "gto")
    with pytest.raises(RuntimeError, match="backward needs a CUDA device"):
        cbw.centre_density_backward(*_pairs(0), hypers, SEGMENT, N_SEGMENTS, _cotangent(hypers, 0))


@needs_gxx
def test_gpu_validate_backward_checks_on_host_compiled_body(monkeypatch):
    """Host logic only: bench/lib/gpu_validate.py's backward checks, fed the host-compiled body,
    pass; fed a result 1% off, every equivalence case fails (so they can fail)."""
    from einsum_workbench.bench import gpu_validate

    host = cbw.centre_density_backward_host_compiled
    monkeypatch.setattr(cbw, "centre_density_backward", host)
    good = gpu_validate.Checks()
    gpu_validate.check_backward(good)
    assert good.failed == [] and len(good.passed) == 17

    def wrong(*args, **kwargs):
        return PairCotangents(*(None if a is None else 1.01 * a for a in host(*args, **kwargs)))

    monkeypatch.setattr(cbw, "centre_density_backward", wrong)
    bad = gpu_validate.Checks()
    gpu_validate.check_backward(bad)
    assert len(bad.failed) == 16 and bad.passed == ["cupy_batched backward chunked == unchunked, pair order"]


# ---------------------------------------------------------------- on a CUDA device only

@needs_gpu
@pytest.mark.parametrize("lmax,basis", [(0, "gto"), (6, "gto"), (8, "monomial")])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_matches_reference_and_host_body(lmax, basis, dtype):
    hypers = make_hypers(lmax, basis)
    arrays = _pairs(60 + lmax, dtype=dtype)
    g = _cotangent(hypers, 60 + lmax)
    actual = cbw.centre_density_backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                         semiaxes_gradients=True)
    expected = centre_density_backward(*(a.astype(np.float64) for a in arrays), hypers, SEGMENT, N_SEGMENTS, g,
                                       orthonormal=True, semiaxes_gradients=True)
    assert actual.r.dtype == np.dtype(dtype)
    assert_cotangents_close(actual, expected, FLOAT64_TOL if dtype == np.float64 else FLOAT32_TOL, "cupy_batched")
    if host_build.host_compiler() is not None and np.dtype(dtype) == np.float64:  # same body, FMA contraction aside
        host = cbw.centre_density_backward_host_compiled(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=True,
                                                         semiaxes_gradients=True)
        assert_cotangents_close(actual, host, (1e-10, 1e-12), "GPU vs host-compiled")


@needs_gpu
def test_gpu_chunking():
    hypers = make_hypers(6, "gto")
    arrays = _pairs(17, 3000)
    segment = np.sort(np.random.default_rng(17).integers(0, 400, 3000))
    g = _cotangent(hypers, 17, 400)
    whole = cbw.centre_density_backward(*arrays, hypers, segment, 400, g, semiaxes_gradients=True)
    chunked = cbw.centre_density_backward(*arrays, hypers, segment, 400, g, semiaxes_gradients=True,
                                          max_gpu_memory=97 * cbw.device_bytes_per_pair(hypers, np.float64, True))
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)

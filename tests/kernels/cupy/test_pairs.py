"""cupy_batched: the CUDA device code, checked with and without a GPU.

What runs where
---------------
- Everywhere g++ is installed: the *exact* per-pair device body
  (``kernels/cupy/cuda/pair_expansion.cuh`` + the generated ``wb::Spec``) compiled
  as plain C++ by g++ and called through ctypes, driven by the same chunk loop
  and output unpacking as the GPU path (``kernels.cupy.pairs.HostBackend``), against
  the reference over the configurations of ``tests/kernels/test_pairs_equivalence.py``
  (lmax 0..8 x radial-count forms x both bases, float32, spherical / prolate /
  oblate ellipsoids, empty batch). g++ does not contract multiply-adds into
  FMAs as nvcc does by default, so GPU results may differ in the last bits;
  the tolerances are orders of magnitude above that.
- Host logic only (no device involved): the chunk plan and its memory bound,
  chunked vs unchunked results, the keep_on_device output block, error
  messages; "device memory" there is NumPy buffers counted by HostBackend.
- Where nvcc or CuPy's NVRTC is installed: the generated kernel compiled for
  sm_90 (tests/kernels/cupy/test_compile.py).
- Only with a CUDA device (skipped here, and the skip says so): the RawKernel
  launch through CuPy, device memory chunking and keep_on_device CuPy arrays.

Tolerances as in tests/kernels/test_pairs_equivalence.py: float64 rtol 1e-6, atol 1e-8 x the
block's largest |value|, on raw and orthonormalised coefficients; float32
rtol 1e-3, atol 1e-4 x block max.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from einsum_workbench.kernels.cupy import common, host_build
from einsum_workbench.kernels.cupy import pairs as cb
from einsum_workbench.kernels.registry import get_variant
from einsum_workbench.kernels.tables import compact_solid_harmonics, num_monomials
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.random_pairs import random_pair_batch


needs_gxx = pytest.mark.skipif(
    host_build.host_compiler() is None,
    reason="no C++ compiler (g++ / $CXX): the host-compiled device body did not run",
)

GPU_REASON = get_variant("cupy_batched").unavailable_reason()
needs_gpu = pytest.mark.skipif(
    GPU_REASON is not None,
    reason=GPU_REASON if GPU_REASON and common.NO_DEVICE_PARTS in GPU_REASON
    else f"no CUDA device: {common.NO_DEVICE_PARTS} ({GPU_REASON})",
)


def _hyper_cases(sets=equivalence_hypers):
    """The equivalence suite's sets (reference.compare, as tests/kernels/test_pairs_equivalence.py)."""
    return [pytest.param(h.lmax, h.radial_basis, h.max_radial, id=case) for case, h in sets()]


@functools.lru_cache(maxsize=None)
def _inputs(n_pairs, seed, shape, dtype):
    arrays = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _reference(hypers, arrays):
    return pairwise_ellip_expansion(*(a.astype(np.float64) for a in arrays), hypers)


# ---------------------------------------------------------------- generated code

@pytest.mark.parametrize("lmax,basis,max_radial", [(0, "gto", None), (6, "gto", None), (5, "monomial", [2, 0, 1, 3, 0, 1])])
def test_spec_is_straight_line_and_writes_each_output_once(lmax, basis, max_radial):
    hypers = make_hypers(lmax, basis, max_radial)
    source = common.generate_spec_source(hypers)
    n_out = common.output_offsets(hypers)[-1]
    assert f"num_moments = {num_monomials(hypers.max_degree)};" in source
    assert f"num_outputs = {n_out};" in source
    moment_targets = [int(i) for i in re.findall(r"^\s*E\[(\d+)\] =", source, re.MULTILINE)]
    assert moment_targets == list(range(num_monomials(hypers.max_degree)))
    output_targets = [int(i) for i in re.findall(r"out\[(\d+)LL \* stride\]", source)]
    assert sorted(output_targets) == list(range(n_out)), "every output written exactly once"
    n_terms = len(re.findall(r"\) \* E\[", source.split("contract")[1]))
    n_nonzeros = sum(int(np.count_nonzero(t)) for t in compact_solid_harmonics(hypers))
    assert n_terms == n_nonzeros, "one multiply-add per non-zero of T_l"
    assert "for (" not in source.split("struct Spec")[1], "spec must be straight-line code"


def test_unpack_outputs_layout():
    """Row o = offsets[l] + m n_l + n of the component-major block is (p, m, n) of block l."""
    hypers = make_hypers(3, "gto", [1, 0, 2, 1])
    n_pairs, offsets = 5, common.output_offsets(hypers)
    block = np.arange(offsets[-1] * n_pairs, dtype=np.float64).reshape(offsets[-1], n_pairs)
    views = common.unpack_outputs(block, hypers, n_pairs)
    for l, n_l in enumerate(hypers.num_radial):
        assert views[l].shape == (n_pairs, 2 * l + 1, n_l)
        for p, m, n in [(0, 0, 0), (n_pairs - 1, 2 * l, n_l - 1), (2, l, 0)]:
            assert views[l][p, m, n] == block[offsets[l] + m * n_l + n, p]


# ---------------------------------------------------------------- device arithmetic, host-compiled

def _check_host_compiled(hypers, dtype, seed, label):
    """24 mixed pairs drawn with ``seed`` in ``dtype`` through the host-compiled body, against the reference."""
    arrays = _inputs(24, seed, "mixed", dtype)
    actual = cb.expand_host_compiled(*arrays, hypers, dtype=dtype)
    assert_coefficients_close(actual, _reference(hypers, arrays), hypers, dtype, label)


@needs_gxx
@pytest.mark.parametrize("lmax,basis,max_radial", _hyper_cases())
def test_host_compiled_body_float64(lmax, basis, max_radial):
    _check_host_compiled(make_hypers(lmax, basis, max_radial), np.float64, 100 + lmax, "host-compiled")


@needs_gxx
@pytest.mark.parametrize("lmax,basis,max_radial", _hyper_cases(float32_hypers))
def test_host_compiled_body_float32(lmax, basis, max_radial):
    _check_host_compiled(make_hypers(lmax, basis, max_radial), np.float32, 200 + lmax, "host-compiled f32")


@needs_gxx
def test_host_compiled_float32_computes_in_float32():
    """float32 is computed in single precision, not in double and cast at the end."""
    hypers = make_hypers(6, "gto", None)
    arrays32 = _inputs(16, 5, "general", np.float32)
    single = cb.expand_host_compiled(*arrays32, hypers)
    double = cb.expand_host_compiled(*(a.astype(np.float64) for a in arrays32), hypers)
    assert any(not np.array_equal(s, d.astype(np.float32)) for s, d in zip(single, double))


@needs_gxx
@pytest.mark.parametrize("shape", ["spherical", "prolate", "oblate"])
@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_host_compiled_body_extreme_shapes(shape, basis):
    hypers = make_hypers(6, basis, None)
    arrays = _inputs(32, 7, shape, np.float64)
    actual = cb.expand_host_compiled(*arrays, hypers)
    assert_coefficients_close(actual, _reference(hypers, arrays), hypers, np.float64, f"host-compiled {shape}")


@needs_gxx
@pytest.mark.parametrize("keep_on_device", [False, True])
def test_host_compiled_empty_batch(keep_on_device):
    hypers = make_hypers(4, "gto", None)
    for dtype in (np.float64, np.float32):
        out = cb.expand_host_compiled(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype),
                                      np.zeros((0, 3), dtype), hypers, keep_on_device=keep_on_device)
        assert [b.shape for b in out] == [(0, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert all(b.dtype == np.dtype(dtype) for b in out)


@needs_gxx
def test_host_compiled_rejects_bad_input():
    hypers = make_hypers(2, "gto", None)
    r_ij, rotations, semiaxes = _inputs(4, 1, "general", np.float64)
    bad = semiaxes.copy()
    bad[2, 1] = -1.0
    with pytest.raises(ValueError, match="pair 2"):
        cb.expand_host_compiled(r_ij, rotations, bad, hypers)


@needs_gxx
def test_host_compiled_every_frame_in_one_batch():
    """All frames' pairs in one batch (chunks crossing frame boundaries) give
    each frame's own coefficients, and a sample matches the reference."""
    from einsum_workbench.reference.pairs import frames_to_pairs
    from einsum_workbench.reference.workloads import benzenes

    pairs = frames_to_pairs(benzenes(3, seed=5, n_species=2), 5.0, self_pairs=True)
    assert pairs.n_frames == 3 and len(pairs) > 100
    hypers = make_hypers(6, "gto", None)
    bound = 37 * cb.device_bytes_per_pair(hypers, np.float64)  # 37 pairs per chunk
    batched = cb.expand_host_compiled(*pairs.arrays(), hypers, max_gpu_memory=bound)
    for f in range(pairs.n_frames):
        own = pairs.select(pairs.frame == f)
        alone = cb.expand_host_compiled(*own.arrays(), hypers)
        for a, b in zip(alone, batched):
            np.testing.assert_array_equal(a, b[pairs.frame == f], err_msg=f"frame {f}")
    sample = np.random.default_rng(0).choice(len(pairs), size=30, replace=False)
    subset = pairs.select(sample)
    assert_coefficients_close([b[sample] for b in batched], _reference(hypers, subset.arrays()),
                              hypers, np.float64, "host-compiled frames")


@needs_gxx
def test_host_compiled_real_dataset_sample(shared_data_path):
    """AniSOAP's example frames (../shared/data/ellipsoids.xyz) with diameters (4, 4, 0.5)."""
    from einsum_workbench.reference.readers import read_frames
    from einsum_workbench.reference.pairs import frames_to_pairs

    pairs = frames_to_pairs(read_frames(shared_data_path, ":2"), 7.0, semiaxes=(2.0, 2.0, 0.25))
    sample = pairs.select(np.random.default_rng(1).choice(len(pairs), size=min(40, len(pairs)), replace=False))
    for basis in ("gto", "monomial"):
        hypers = make_hypers(6, basis, None)
        actual = cb.expand_host_compiled(*sample.arrays(), hypers)
        assert_coefficients_close(actual, _reference(hypers, sample.arrays()), hypers, np.float64,
                                  f"host-compiled ellipsoids.xyz {basis}")


# ---------------------------------------------------------------- chunking (host logic only)

@needs_gxx
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunking_respects_memory_bound_and_matches_one_chunk(dtype):
    """Host logic only: NumPy buffers stand for device memory."""
    hypers = make_hypers(5, "gto", None)
    arrays = _inputs(50, 9, "mixed", dtype)
    whole = cb.expand_host_compiled(*arrays, hypers)
    bound = 7 * cb.device_bytes_per_pair(hypers, dtype) + 5  # 7 pairs per chunk
    backend = cb.HostBackend(hypers)
    chunked = cb.expand_host_compiled(*arrays, hypers, max_gpu_memory=bound, backend=backend)
    assert backend.launches == [7] * 7 + [1]
    assert backend.peak_bytes <= bound, f"device buffers {backend.peak_bytes} B > bound {bound} B"
    for a, b in zip(chunked, whole):
        np.testing.assert_array_equal(a, b)  # same arithmetic per pair: bit-identical


@needs_gxx
def test_keep_on_device_block_chunked():
    """Host logic only: every chunk writes its columns of one (num_outputs, P) block."""
    hypers = make_hypers(4, "monomial", 1)
    arrays = _inputs(30, 4, "mixed", np.float64)
    copied = cb.expand_host_compiled(*arrays, hypers)
    n_out = common.output_offsets(hypers)[-1]
    itemsize = 8
    bound = 30 * n_out * itemsize + 4 * common.INPUT_VALUES_PER_PAIR * itemsize  # inputs of 4 pairs
    backend = cb.HostBackend(hypers)
    kept = cb.expand_host_compiled(*arrays, hypers, max_gpu_memory=bound, keep_on_device=True,
                                   backend=backend)
    assert backend.launches == [4] * 7 + [2]
    assert backend.peak_bytes <= bound
    for a, b in zip(kept, copied):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_nvrtc_options_validate_register_cap():
    assert common.nvrtc_options() == common.NVRTC_OPTIONS
    assert common.nvrtc_options(168)[-1] == "--maxrregcount=168"
    for bad in (0, 8, 256, 1.5, True):
        with pytest.raises(ValueError, match="max_registers must be None or an int in 16..255"):
            common.nvrtc_options(bad)


def test_plan_chunks_errors_name_the_value():
    hypers = make_hypers(6, "gto", None)
    assert cb.bytes_per_pair(hypers, np.float64) == 8 * (15 + 84)
    per_pair = cb.device_bytes_per_pair(hypers, np.float64)
    assert per_pair == 8 * (15 + 2 * 84)
    assert cb.plan_chunks(1000, hypers, np.float64, 10 * per_pair, False) == 10
    assert cb.plan_chunks(3, hypers, np.float64, 10 * per_pair, False) == 3
    assert cb.plan_chunks(0, hypers, np.float64, 10 * per_pair, False) == 1
    for bad in (0, -5, 1.5, True, "1GiB"):
        with pytest.raises(ValueError, match="max_gpu_memory must be a positive"):
            cb.plan_chunks(10, hypers, np.float64, bad, False)
    with pytest.raises(ValueError, match=f"less than one pair needs \\({per_pair} bytes\\)"):
        cb.plan_chunks(10, hypers, np.float64, per_pair - 1, False)
    with pytest.raises(ValueError, match="keep_on_device=True needs"):
        cb.plan_chunks(1000, hypers, np.float64, 100 * per_pair, True)


# ---------------------------------------------------------------- availability and bench/gpu_validate.py

def test_registry_reason_when_no_gpu():
    reason = GPU_REASON
    if reason is None:
        pytest.skip("a CUDA device is present: the no-GPU message was not exercised")
    assert isinstance(reason, str) and reason
    assert ("CuPy" in reason) or ("cupy" in reason), reason
    with pytest.raises(RuntimeError, match="unavailable"):
        get_variant("cupy_batched").load()


def test_gpu_probe_reason_is_text_or_none():
    reason = cb.gpu_unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)


def test_gpu_validate_without_gpu_says_skipped(capsys):
    from einsum_workbench.bench import gpu_validate

    if any(get_variant(n).unavailable_reason() is None for n in gpu_validate.GPU_VARIANTS):
        pytest.skip("a GPU variant can run here: the no-GPU path of gpu_validate was not exercised")
    assert gpu_validate.main([]) == gpu_validate.EXIT_SKIPPED
    out = capsys.readouterr().out
    assert out.startswith("SKIPPED: no CUDA device")
    assert "cupy_batched:" in out and "torch_cuda:" in out


@needs_gxx
def test_gpu_validate_equivalence_logic_on_host_compiled_body(monkeypatch):
    """Host logic only: the script's equivalence checks, fed the host-compiled body,
    pass; fed a wrong expansion, they fail (so they can fail)."""
    from einsum_workbench.bench import gpu_validate

    cases = [c for c in gpu_validate.equivalence_cases() if c[0].startswith(("l3-", "l6-gto-prolate"))]
    monkeypatch.setattr(gpu_validate, "equivalence_cases", lambda: cases)
    good = gpu_validate.Checks()
    gpu_validate.check_equivalence("host-compiled", cb.expand_host_compiled, good)
    assert good.failed == [] and len(good.passed) == len(cases) + 1

    def wrong(*args, **kwargs):
        out = cb.expand_host_compiled(*args, **kwargs)
        return [1.01 * b for b in out]  # 1% off: beyond both tolerances

    bad = gpu_validate.Checks()
    gpu_validate.check_equivalence("wrong", wrong, bad)
    assert len(bad.failed) == len(cases)  # every non-empty case caught


def test_gpu_validate_table_format(capsys):
    """Host logic only: the report table from made-up rows (no device timed)."""
    from einsum_workbench.bench import gpu_validate

    card = {"name": "Test Card", "bandwidth_bytes_per_s": 3.35e12, "compute_capability": "9.0",
            "multiprocessors": 132}
    bound = 3.35e12 / cb.bytes_per_pair(make_hypers(6, "gto", None), np.float64)
    rows = [("cupy_batched", "kernel", np.float64, 2**21, 2**21 / 2e9, 1.7e9, bound, "block 128"),
            ("torch_cuda", "end-to-end", np.float32, 2**21, 0.5, 3e9, None, "")]
    gpu_validate.print_table(card, rows)
    out = capsys.readouterr().out
    assert "card: Test Card" in out and "3350 GB/s" in out
    assert "2.000e+09" in out and f"{100 * 2e9 / bound:.0f}%" in out
    assert "goal >= 1e+09 pairs/s at lmax 6 float64 (kernel): reached" in out


# ---------------------------------------------------------------- on a CUDA device only

@needs_gpu
@pytest.mark.parametrize("lmax,basis,max_radial", [(0, "gto", None), (6, "gto", None),
                                                    (8, "monomial", 2), (5, "gto", [2, 0, 1, 3, 0, 1])])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_matches_reference(lmax, basis, max_radial, dtype):
    hypers = make_hypers(lmax, basis, max_radial)
    arrays = _inputs(64, 300 + lmax, "mixed", dtype)
    actual = cb.expand(*arrays, hypers)
    assert_coefficients_close(actual, _reference(hypers, arrays), hypers, dtype, "cupy_batched")


@needs_gpu
def test_gpu_chunking_and_keep_on_device():
    import cupy

    hypers = make_hypers(6, "gto", None)
    arrays = _inputs(1000, 17, "mixed", np.float64)
    whole = cb.expand(*arrays, hypers)
    chunked = cb.expand(*arrays, hypers, max_gpu_memory=97 * cb.device_bytes_per_pair(hypers, np.float64))
    bound = 1000 * 8 * common.output_offsets(hypers)[-1] + 50 * 8 * common.INPUT_VALUES_PER_PAIR
    kept = cb.expand(*arrays, hypers, keep_on_device=True, max_gpu_memory=bound)
    for a, b, c in zip(whole, chunked, kept):
        np.testing.assert_array_equal(a, b)
        assert isinstance(c, cupy.ndarray) and c.shape == a.shape
        np.testing.assert_array_equal(cupy.asnumpy(c), a)
    if host_build.host_compiler() is not None:  # GPU vs the same body compiled for the CPU
        host = cb.expand_host_compiled(*arrays, hypers)
        for a, h in zip(whole, host):
            scale = float(np.max(np.abs(h)))
            np.testing.assert_allclose(a, h, rtol=1e-10, atol=1e-13 * scale)

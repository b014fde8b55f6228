"""cupy_batched centre density (kernels/cupy/density.py): checked with and without a GPU.

What runs where
---------------
- Everywhere g++ is installed: the *exact* device code of the density kernel
  (``pair_expansion.cuh`` + generated ``wb::Spec`` and ``wb::DensitySpec`` +
  ``centre_density.cuh``, both the per-run kernel body and the combine step)
  compiled as plain C++ by g++ and called through ctypes, driven by the same
  sorting, planning, chunk loop and row combination as the GPU path
  (``kernels.cupy.density.HostDensityBackend``), against
  ``reference.density.centre_density``: lmax 0, 3, 6; GTO and monomial;
  default, int and list radial counts; float64 and float32; raw and
  orthonormalised; unsorted segments with empty ones; an empty batch; chunks
  that split segments; runs cut short; bad inputs.
- Host logic only (no device involved): the run/chunk plan and its memory
  bound ("device memory" is NumPy buffers counted by HostDensityBackend).
- Where CuPy's NVRTC is installed: the RawModule source compiled for sm_90;
  where nvcc is installed: the same source compiled by nvcc for sm_90
  (tests/kernels/cupy/test_compile.py).
- Only with a CUDA device (skipped here, and the skip says so): the RawKernel
  launches, device chunking and device timings.

Tolerances (reference.compare, as tests/kernels/test_pairs_equivalence.py): float64 rtol
1e-6, atol 1e-8 x the block's largest |value|; float32 (looser) rtol 1e-3,
atol 1e-4 x block max; raw densities are also compared after
orthonormalisation.
"""

from __future__ import annotations

import functools
import re
import sys

import numpy as np
import pytest

from einsum_workbench.kernels.cupy import common, host_build
from einsum_workbench.kernels.cupy import pairs as cb
from einsum_workbench.kernels.cupy import density as cd
from einsum_workbench.kernels.cupy.compile_check import representative_hypers
from einsum_workbench.kernels.registry import get_variant
from einsum_workbench.kernels.tables import num_monomials
from einsum_workbench.reference.compare import assert_coefficients_close, make_hypers
from einsum_workbench.reference.density import centre_density as reference_density
from einsum_workbench.reference.random_pairs import random_pair_batch

needs_gxx = pytest.mark.skipif(
    host_build.host_compiler() is None,
    reason="no C++ compiler (g++ / $CXX): the host-compiled density kernel code did not run",
)

GPU_REASON = get_variant("cupy_batched", "density").unavailable_reason()
needs_gpu = pytest.mark.skipif(
    GPU_REASON is not None,
    reason=f"cupy_batched density not run on this machine: {str(GPU_REASON).split('; ' + common.NO_DEVICE_PARTS)[0]}; "
           f"{cd.NO_DEVICE_PARTS} (its code is tested host-compiled in this file)",
)


HYPER_SETS = [
    pytest.param(0, "gto", None, id="l0-gto-default"),
    pytest.param(3, "monomial", 2, id="l3-monomial-int"),
    pytest.param(3, "gto", [2, 0, 1, 1], id="l3-gto-list"),
    pytest.param(6, "gto", None, id="l6-gto-default"),
    pytest.param(6, "monomial", [1, 2, 0, 1, 1, 0, 0], id="l6-monomial-list"),
]


@functools.lru_cache(maxsize=None)
def _inputs(n_pairs, seed, dtype, shape="mixed"):
    arrays = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _segments(n_pairs, n_segments, seed, empty=(1,)):
    """Unsorted segments; those in ``empty`` and the last one get no pair."""
    used = np.setdiff1d(np.arange(n_segments), list(empty) + [n_segments - 1])
    return np.random.default_rng(seed).choice(used, size=n_pairs)


def _reference(hypers, arrays, segment, n_segments, orthonormal=False):
    return reference_density(*(a.astype(np.float64) for a in arrays), hypers, segment, n_segments,
                             orthonormal=orthonormal)


# ---------------------------------------------------------------- generated code

@pytest.mark.parametrize("lmax,basis,max_radial",
                         [(0, "gto", None), (6, "gto", None), (5, "monomial", [2, 0, 1, 3, 0, 1])])
def test_density_spec_reuses_the_recurrence_and_accumulates_each_moment_once(lmax, basis, max_radial):
    hypers = make_hypers(lmax, basis, max_radial)
    source = cd.generate_density_spec_source(hypers)
    n_moments = num_monomials(hypers.max_degree)
    assert f"num_moments = {n_moments};" in source
    assert "for (" not in source, "density spec must be straight-line code"
    accumulated = [int(i) for i in re.findall(r"acc\[(\d+)\] \+=", source)]
    assert accumulated == list(range(n_moments)), "every moment added once, in order"
    # the moment lines are the pair kernel's, word for word
    pair_moments = re.findall(r"^\s*(E\[[1-9]\d*\] = .*;)$", common.generate_spec_source(hypers), re.MULTILINE)
    density_moments = re.findall(r"^\s*(E\[[1-9]\d*\] = .*;)$", source, re.MULTILINE)
    assert density_moments == pair_moments and len(pair_moments) == n_moments - 1


def test_kernel_source_contains_the_pair_body_and_the_kernels():
    hypers = representative_hypers()["lmax6_gto_default"]
    source = cd.kernel_source(hypers)
    assert common.generate_spec_source(hypers) in source  # the pair kernel's generated wb::Spec
    assert (common.CUDA_DIR / "pair_expansion.cuh").read_text() in source
    assert cd.generate_density_spec_source(hypers) in source
    assert "#include" not in source.replace("#include <math.h>", ""), "every local include inlined"
    for name in (*cd.KERNEL_NAMES.values(), *cd.COMBINE_NAMES.values()):
        assert f'extern "C" __global__ void {name}(' in source
    assert not re.search(r"\batomic[A-Z]\w*\(", source), "deterministic design: no atomic operations"


# ---------------------------------------------------------------- device code, host-compiled

#: per dtype: input seed (+ lmax), segments, segment seed (+ lmax), empty segments besides the last, options
HOST_DENSITY_RUNS = {
    "float64": (10, 13, 0, (1, 5), {"max_run_pairs": 4}),
    "float32": (20, 11, 3, (1,), {}),
}


@needs_gxx
@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("lmax,basis,max_radial", HYPER_SETS)
@pytest.mark.parametrize("dtype", HOST_DENSITY_RUNS)
def test_host_compiled_density(dtype, lmax, basis, max_radial, orthonormal):
    """float32: rtol 1e-3, atol 1e-4 x block max (looser than float64's 1e-6 / 1e-8)."""
    seed, n_segments, segment_seed, empty, options = HOST_DENSITY_RUNS[dtype]
    hypers = make_hypers(lmax, basis, max_radial)
    arrays = _inputs(90, seed + lmax, np.dtype(dtype))
    segment = _segments(90, n_segments, segment_seed + lmax, empty=empty)
    actual = cd.centre_density_host_compiled(*arrays, hypers, segment, n_segments, orthonormal=orthonormal,
                                             **options)
    assert all(b.dtype == np.dtype(dtype) for b in actual)
    expected = _reference(hypers, arrays, segment, n_segments, orthonormal)
    assert_coefficients_close(actual, expected, hypers, dtype, f"host-compiled density {dtype}",
                              orthonormalised=not orthonormal)
    for block in actual:
        assert not np.any(block[[*empty, n_segments - 1]]), "a segment without pairs must be exactly zero"


@needs_gxx
def test_host_compiled_float32_computes_in_float32():
    hypers = make_hypers(6, "gto")
    arrays32 = _inputs(40, 5, np.float32)
    segment = _segments(40, 4, 0, empty=())
    single = cd.centre_density_host_compiled(*arrays32, hypers, segment, 4)
    double = cd.centre_density_host_compiled(*(a.astype(np.float64) for a in arrays32), hypers, segment, 4)
    assert any(not np.array_equal(s, d.astype(np.float32)) for s, d in zip(single, double))


@needs_gxx
@pytest.mark.parametrize("shape", ["prolate", "oblate"])
def test_host_compiled_density_extreme_shapes(shape):
    hypers = make_hypers(6, "gto")
    arrays = _inputs(48, 7, np.float64, shape)
    segment = _segments(48, 6, 7, empty=())
    actual = cd.centre_density_host_compiled(*arrays, hypers, segment, 6)
    assert_coefficients_close(actual, _reference(hypers, arrays, segment, 6), hypers, np.float64,
                              f"host-compiled density {shape}")


@needs_gxx
@pytest.mark.parametrize("orthonormal", [False, True])
def test_host_compiled_empty_batch(orthonormal):
    hypers = make_hypers(4, "gto")
    for dtype in (np.float64, np.float32):
        for n_segments in (0, 4):
            backend = cd.HostDensityBackend(hypers)
            out = cd.centre_density_host_compiled(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype),
                                                  np.zeros((0, 3), dtype), hypers, np.zeros(0, np.int64),
                                                  n_segments, orthonormal=orthonormal, backend=backend)
            assert [b.shape for b in out] == [(n_segments, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
            assert all(b.dtype == np.dtype(dtype) and not b.any() for b in out)
            assert backend.launches == [] and backend.peak_bytes == 0, "nothing to launch"


@needs_gxx
def test_unsorted_segments_are_sorted_stably():
    """Unsorted input == the same pairs presorted by a stable argsort (bit for bit)."""
    hypers = make_hypers(3, "gto", [2, 0, 1, 1])
    arrays = _inputs(70, 3, np.float64)
    segment = _segments(70, 9, 3)
    unsorted = cd.centre_density_host_compiled(*arrays, hypers, segment, 9)
    order = np.argsort(segment, kind="stable")
    presorted = cd.centre_density_host_compiled(*(a[order] for a in arrays), hypers, segment[order], 9)
    for a, b in zip(unsorted, presorted):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- runs, thread order, chunks

@needs_gxx
def test_cut_runs_and_thread_order():
    """Runs cut short and combined == whole segments (to rounding); thread order
    changes nothing (bit for bit); one segment holding every pair works."""
    hypers = make_hypers(6, "gto")
    arrays = _inputs(120, 8, np.float64)
    segment = _segments(120, 7, 8)
    whole = cd.centre_density_host_compiled(*arrays, hypers, segment, 7, max_run_pairs=1000)
    for run_pairs in (1, 3, 7):
        backend = cd.HostDensityBackend(hypers)
        cut = cd.centre_density_host_compiled(*arrays, hypers, segment, 7, max_run_pairs=run_pairs, backend=backend)
        assert backend.launches[0] >= 120 // run_pairs
        for a, b in zip(whole, cut):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14 * np.max(np.abs(a)))
        in_order = cd.centre_density_host_compiled(*arrays, hypers, segment, 7, max_run_pairs=run_pairs,
                                                   longest_first=False)
        for a, b in zip(cut, in_order):
            np.testing.assert_array_equal(a, b)
    one = cd.centre_density_host_compiled(*arrays, hypers, np.zeros(120, np.int64), 1, max_run_pairs=16)
    for a, e in zip(one, _reference(hypers, arrays, np.zeros(120, np.int64), 1)):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-8 * np.max(np.abs(e)))


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunking_respects_memory_bound_and_matches_one_chunk(dtype):
    """Host logic only: chunks at run boundaries give the one-chunk result bit for bit."""
    hypers = make_hypers(5, "gto")
    arrays = _inputs(150, 9, dtype)
    segment = _segments(150, 23, 9)
    whole = cd.centre_density_host_compiled(*arrays, hypers, segment, 23, max_run_pairs=5)
    one = cd.plan_density(np.sort(segment), hypers, dtype, max_run_pairs=5)
    assert len(one.chunks) == 1
    bound = one.device_bytes // 4
    backend = cd.HostDensityBackend(hypers)
    chunked = cd.centre_density_host_compiled(*arrays, hypers, segment, 23, max_run_pairs=5,
                                              max_gpu_memory=bound, backend=backend)
    assert len(backend.launches) >= 4
    assert backend.peak_bytes <= bound, f"device buffers {backend.peak_bytes} B > bound {bound} B"
    for a, b in zip(chunked, whole):
        np.testing.assert_array_equal(a, b)


@needs_gxx
def test_segment_larger_than_a_chunk_is_combined_across_chunks():
    hypers = make_hypers(3, "monomial", 2)
    arrays = _inputs(100, 11, np.float64)
    segment = np.where(np.arange(100) % 5 == 0, 2, 0)  # segment 0: 80 pairs, 2: 20 pairs, 1: none
    in_bytes = cd.input_bytes_per_pair(np.float64)
    bound = 30 * in_bytes + 2 * cd.device_bytes_per_run(hypers, np.float64) + cd.INDEX_BYTES_FIXED
    plan = cd.plan_density(np.sort(segment), hypers, np.float64, bound)
    assert len(plan.chunks) >= 4 and plan.pair_capacity <= 30
    assert sum(0 in c.rows for c in plan.chunks) >= 3, "segment 0 spread over several chunks"
    backend = cd.HostDensityBackend(hypers)
    actual = cd.centre_density_host_compiled(*arrays, hypers, segment, 3, max_gpu_memory=bound, backend=backend)
    assert backend.peak_bytes <= bound
    assert_coefficients_close(actual, _reference(hypers, arrays, segment, 3), hypers, np.float64,
                              "segment split across chunks")


def test_plan_covers_every_pair_once_within_the_bound():
    hypers = make_hypers(6, "gto")
    rng = np.random.default_rng(4)
    segment = np.sort(rng.integers(0, 40, 1000))
    segment[segment == 7] = 8  # an empty segment
    segment[:200] = 0          # a long one
    bound = 20000
    plan = cd.plan_density(segment, hypers, np.float64, bound, max_run_pairs=12)
    assert plan.device_bytes <= bound and plan.max_run_pairs == 12
    covered = np.zeros(1000, dtype=int)
    for chunk in plan.chunks:
        lengths = chunk.run_stop - chunk.run_start
        assert np.all(lengths >= 1) and np.all(lengths <= 12)
        assert np.all(np.diff(lengths) <= 0), "threads take runs longest first"
        assert np.all(np.diff(chunk.rows) > 0), "rows unique and increasing within a chunk"
        assert chunk.first[0] == 0 and chunk.first[-1] == chunk.n_runs and len(chunk.first) == chunk.n_rows + 1
        in_pair_order = np.argsort(chunk.column)  # thread of each run, runs in pair order
        begins = chunk.run_start[chunk.column]
        assert np.all(np.diff(begins) > 0) and set(in_pair_order) == set(range(chunk.n_runs))
        for i, row in enumerate(chunk.rows):  # every run of a row holds pairs of that segment
            for q in range(chunk.first[i], chunk.first[i + 1]):
                t = chunk.column[q]
                pairs = slice(chunk.pair_start + chunk.run_start[t], chunk.pair_start + chunk.run_stop[t])
                assert np.all(segment[pairs] == row)
                covered[pairs] += 1
    assert np.all(covered == 1), "every pair in exactly one run"
    assert plan.n_cut_segments >= 1
    split = [a.rows[-1] == b.rows[0] for a, b in zip(plan.chunks[:-1], plan.chunks[1:])]
    assert any(split), "segment 0 (200 pairs) needs several chunks"
    for a, is_split in zip(plan.chunks, split):
        if is_split:  # only a segment too big for a chunk is split: it fills the chunk alone
            assert a.n_rows == 1
    pieces = cd.plan_density(np.zeros(10, np.int64), hypers, np.float64, max_run_pairs=4).chunks[0]
    assert sorted(pieces.run_stop - pieces.run_start) == [3, 3, 4], "near-equal runs"


def test_plan_defaults_and_errors_name_the_value():
    hypers = make_hypers(6, "gto")
    assert cd.default_max_run_pairs(0) == cd.MIN_RUN_PAIRS
    assert cd.default_max_run_pairs(10**7) == -(-10**7 // cd.TARGET_RUNS)
    empty = cd.plan_density(np.zeros(0, np.int64), hypers, np.float64)
    assert empty.chunks == () and empty.device_bytes == 0
    assert cd.device_bytes_per_run(hypers, np.float64) == 32 + 2 * 8 * 84
    for bad in (0, -5, 1.5, True, "1GiB"):
        with pytest.raises(ValueError, match="max_gpu_memory must be a positive"):
            cd.plan_density(np.zeros(3, np.int64), hypers, np.float64, bad)
    for bad in (0, -1, 2.5, False):
        with pytest.raises(ValueError, match="max_run_pairs must be a positive"):
            cd.plan_density(np.zeros(3, np.int64), hypers, np.float64, max_run_pairs=bad)
    need = cd.input_bytes_per_pair(np.float64) + cd.device_bytes_per_run(hypers, np.float64) + cd.INDEX_BYTES_FIXED
    with pytest.raises(ValueError, match=f"one pair and one run need \\({need} bytes\\)"):
        cd.plan_density(np.zeros(3, np.int64), hypers, np.float64, need - 1)
    assert cd.plan_density(np.zeros(3, np.int64), hypers, np.float64, need).device_bytes <= need


# ---------------------------------------------------------------- bad input

@needs_gxx
def test_bad_input_names_the_value():
    hypers = make_hypers(2, "gto")
    arrays = _inputs(6, 1, np.float64)
    segment = np.array([0, 1, 2, 3, 1, 0])
    with pytest.raises(ValueError, match=r"segment of pair 3 is 3, outside \[0, n_segments = 3\)"):
        cd.centre_density_host_compiled(*arrays, hypers, segment, 3)
    with pytest.raises(ValueError, match=r"segment of pair 2 is -1"):
        cd.centre_density_host_compiled(*arrays, hypers, np.array([0, 1, -1, 0, 0, 0]), 3)
    with pytest.raises(ValueError, match=r"segment must have shape \(6,\)"):
        cd.centre_density_host_compiled(*arrays, hypers, segment[:5], 4)
    with pytest.raises(TypeError, match="segment must hold integers"):
        cd.centre_density_host_compiled(*arrays, hypers, segment.astype(float), 4)
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="n_segments must be an int"):
            cd.centre_density_host_compiled(*arrays, hypers, segment, bad)
    with pytest.raises(ValueError, match="n_segments must be >= 0"):
        cd.centre_density_host_compiled(*arrays, hypers, segment, -1)
    semiaxes = arrays[2].copy()
    semiaxes[4, 0] = 0.0
    with pytest.raises(ValueError, match="pair 4"):
        cd.centre_density_host_compiled(arrays[0], arrays[1], semiaxes, hypers, segment, 4)
    with pytest.raises(ValueError, match="float32/float64 mix-up"):
        cd.centre_density_host_compiled(*arrays, hypers, segment, 4, dtype=np.float32)


def test_gpu_entry_point_without_device_says_why():
    if GPU_REASON is None:
        pytest.skip("a CUDA device is present: the no-GPU error was not exercised")
    arrays = _inputs(4, 1, np.float64)
    with pytest.raises(RuntimeError, match="cupy_batched centre density needs a CUDA device"):
        cd.centre_density(*arrays, make_hypers(2, "gto"), np.zeros(4, np.int64), 1)
    with pytest.raises(RuntimeError, match="unavailable"):
        get_variant("cupy_batched", "density").load()
    assert cd.gpu_unavailable_reason is cb.gpu_unavailable_reason
    assert GPU_REASON == cb.gpu_unavailable_reason()


# ---------------------------------------------------------------- real frames

@needs_gxx
def test_host_compiled_frames_by_centre_and_species():
    """All-atom frames, one segment per (centre, neighbour species): the AniSOAP layout."""
    from einsum_workbench.reference.pairs import frames_to_pairs
    from einsum_workbench.reference.workloads import benzenes

    pairs = frames_to_pairs(benzenes(1, seed=5, n_species=2), 4.0, self_pairs=True)
    species, neighbour_species = np.unique(pairs.neighbour_species, return_inverse=True)
    centre = pairs.atom_offsets[pairs.frame] + pairs.centre
    n_centres = int(np.sum(pairs.n_atoms))
    segment = centre * len(species) + neighbour_species
    hypers = make_hypers(6, "gto")
    actual = cd.centre_density_host_compiled(*pairs.arrays(), hypers, segment, n_centres * len(species),
                                             orthonormal=True)
    expected = reference_density(*pairs.arrays(), hypers, segment, n_centres * len(species), orthonormal=True)
    assert_coefficients_close(actual, expected, hypers, np.float64, "benzene frames", orthonormalised=False)


@needs_gxx
def test_host_compiled_real_dataset(shared_data_path):
    """AniSOAP's example frames (../shared/data/ellipsoids.xyz), diameters (4, 4, 0.5), one segment per centre.

    These small periodic cells put a centre's neighbours in +-r pairs, so odd-l
    densities cancel: the l = 1 block's largest value is ~1e-8 where single
    pair coefficients reach ~5. Every summation order (the reference's, the
    pair kernel's plus a segment sum, this kernel's) then differs by ~1e-14
    absolute, so atol is scaled by the largest per-segment sum of |c| (the
    size of what cancels) instead of the density's largest value.
    """
    from einsum_workbench.reference.density import segment_sum
    from einsum_workbench.reference.expansion import pairwise_ellip_expansion
    from einsum_workbench.reference.readers import read_frames
    from einsum_workbench.reference.pairs import frames_to_pairs

    pairs = frames_to_pairs(read_frames(shared_data_path, ":4"), 7.0, semiaxes=(2.0, 2.0, 0.25))
    segment = pairs.atom_offsets[pairs.frame] + pairs.centre
    n_segments = int(np.sum(pairs.n_atoms))
    hypers = make_hypers(6, "gto")
    actual = cd.centre_density_host_compiled(*pairs.arrays(), hypers, segment, n_segments)
    for l, c in enumerate(pairwise_ellip_expansion(*pairs.arrays(), hypers)):
        expected = segment_sum(c, segment, n_segments)
        scale = float(np.max(segment_sum(np.abs(c), segment, n_segments)))
        np.testing.assert_allclose(actual[l], expected, rtol=1e-6, atol=1e-8 * scale, err_msg=f"l={l}")


# ---------------------------------------------------------------- bench/gpu_validate.py

@needs_gxx
def test_gpu_validate_density_checks_on_host_compiled_code(monkeypatch):
    """Host logic only: the script's density checks pass on the host-compiled
    code and fail on a wrong density (so they can fail)."""
    from einsum_workbench.bench import gpu_validate

    cases = [c for c in gpu_validate.density_equivalence_cases() if c[0].startswith("density l3-")]
    assert len(cases) == 8
    monkeypatch.setattr(gpu_validate, "density_equivalence_cases", lambda: cases)
    good = gpu_validate.Checks()
    gpu_validate.check_density_equivalence("host-compiled", cd.centre_density_host_compiled, good)
    assert good.failed == [] and len(good.passed) == len(cases) + 1

    def wrong(*args, **kwargs):
        return [1.01 * b for b in cd.centre_density_host_compiled(*args, **kwargs)]

    bad = gpu_validate.Checks()
    gpu_validate.check_density_equivalence("wrong", wrong, bad)
    assert len(bad.failed) == len(cases)


def test_gpu_validate_density_parts_without_a_device(capsys):
    from einsum_workbench.bench import gpu_validate

    for kind in ("poisson", "skewed"):
        segment, n_segments = gpu_validate.timing_segments(50_000, kind)
        sizes = np.bincount(segment, minlength=n_segments)
        assert len(segment) == 50_000 and np.all(np.diff(segment) >= 0) and sizes.min() >= 1
        assert 50 < sizes.mean() < 80
    assert gpu_validate._parse_sizes("1e5,1000000") == (100_000, 1_000_000)
    rows = [("cupy_batched", "kernel", np.float64, 10**6, 15625, 1e-3, 2**20, "poisson segments")]
    gpu_validate.print_density_table({"name": "Test Card"}, rows)
    out = capsys.readouterr().out
    assert "centre density" in out and "1.000e+09" in out and "15625" in out
    assert gpu_validate._density_rows_json(rows)[0]["pairs_per_second"] == 1e9
    if GPU_REASON is None:
        return
    assert gpu_validate.main(["--problem", "density"]) == gpu_validate.EXIT_SKIPPED
    assert "cupy_batched (centre density): " in capsys.readouterr().out


# ---------------------------------------------------------------- GPU code path, CuPy stand-in

class _FakeDeviceArray(np.ndarray):
    """NumPy array with CuPy's host-transfer methods."""

    def set(self, host):
        self[...] = host

    def get(self, out=None):
        if out is None:
            return np.array(self)
        out[...] = self
        return out


def _fake_cupy(monkeypatch):
    """A stand-in for CuPy: NumPy "device" arrays, kernels that call the
    host-compiled device code, a wall-clock "CUDA event". Nothing runs on a GPU."""
    import importlib.machinery
    import time
    import types

    def empty(size, dtype):
        return np.empty(size, dtype=dtype).view(_FakeDeviceArray)

    def asarray(a):
        return np.array(a).view(_FakeDeviceArray)

    class Module:
        def __init__(self, hypers):
            self.host = cd.HostDensityBackend(hypers)

        def get_function(self, name):
            dtype = np.float64 if name.endswith("f64") else np.float32
            step = self.host.launch if name.startswith("wb_density") else self.host.combine

            def kernel(grid, block, args):
                arrays = [np.asarray(a) for a in args[:-2]]
                step(*arrays, int(args[-2]), int(args[-1]), dtype)

            kernel.attributes = {"num_regs": 0, "local_size_bytes": 0}
            return kernel

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    class Device:
        id = 0

        def synchronize(self):
            pass

    class Pool:
        def free_all_blocks(self):
            pass

        def total_bytes(self):
            return 0

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"CuPy stand-in", "memoryClockRate": 0, "memoryBusWidth": 0,
                                       "major": 9, "minor": 0, "multiProcessorCount": 1})
    cuda = types.SimpleNamespace(runtime=runtime, Device=Device, Event=Event,
                                 get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t))
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    for name, value in dict(empty=empty, asarray=asarray, ndarray=_FakeDeviceArray, cuda=cuda,
                            get_default_memory_pool=Pool, asnumpy=np.asarray).items():
        setattr(fake, name, value)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cd, "compiled_module", lambda hypers, max_registers=None: Module(hypers))
    return fake


@needs_gxx
def test_gpu_code_path_with_a_cupy_stand_in(monkeypatch, tmp_path, capsys):
    """Host logic only: the GPU entry point, CupyDensityBackend and
    gpu_validate's density checks, timings and JSON, driven through a CuPy
    stand-in whose "kernels" are the host-compiled device code. Checks the
    Python plumbing of the GPU path; no device, launch or timing is real."""
    import json

    from einsum_workbench.bench import gpu_validate

    _fake_cupy(monkeypatch)
    assert get_variant("cupy_batched", "density").unavailable_reason() is None
    hypers = make_hypers(3, "gto", [2, 0, 1, 1])
    arrays = _inputs(80, 31, np.float64)
    segment = _segments(80, 9, 31)
    for kwargs in ({}, {"max_run_pairs": 3, "max_gpu_memory": 6000, "longest_first": False}):
        gpu = cd.centre_density(*arrays, hypers, segment, 9, orthonormal=True, **kwargs)
        host = cd.centre_density_host_compiled(*arrays, hypers, segment, 9, orthonormal=True, **kwargs)
        for a, b in zip(gpu, host):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="block_size must be an int in 1..1024"):
        cd.centre_density(*arrays, hypers, segment, 9, block_size=0)

    checks = gpu_validate.Checks()
    gpu_validate.check_density_extras(checks)
    assert checks.failed == [] and len(checks.passed) == 4
    out = tmp_path / "gpu.json"
    status = gpu_validate.main(["--problem", "density", "--skip-equivalence", "--density-pairs", "300",
                                "--repeats", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == gpu_validate.EXIT_OK, printed
    result = json.loads(out.read_text())
    rows = result["density_timings"]
    assert {(r["mode"], r["dtype"]) for r in rows} == {(m, d) for m in ("kernel", "end-to-end")
                                                      for d in ("float64", "float32")}
    assert all(r["pairs"] == 300 and r["pairs_per_second"] > 0 and r["segments"] >= 1 for r in rows)
    assert result["timings"] == [] and "centre density (cupy_batched" in printed


# ---------------------------------------------------------------- on a CUDA device only

@needs_gpu
@pytest.mark.parametrize("orthonormal", [False, True])
@pytest.mark.parametrize("lmax,basis,max_radial", HYPER_SETS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_density_matches_reference(lmax, basis, max_radial, dtype, orthonormal):
    hypers = make_hypers(lmax, basis, max_radial)
    arrays = _inputs(200, 300 + lmax, dtype)
    segment = _segments(200, 17, lmax)
    actual = cd.centre_density(*arrays, hypers, segment, 17, orthonormal=orthonormal)
    assert_coefficients_close(actual, _reference(hypers, arrays, segment, 17, orthonormal), hypers, dtype,
                              "cupy_batched density", orthonormalised=not orthonormal)


@needs_gpu
def test_gpu_density_chunking_runs_and_host_agreement():
    hypers = make_hypers(6, "gto")
    arrays = _inputs(3000, 17, np.float64)
    segment = _segments(3000, 61, 17)
    whole = cd.centre_density(*arrays, hypers, segment, 61, max_run_pairs=8)
    bound = cd.plan_density(np.sort(segment), hypers, np.float64, max_run_pairs=8).device_bytes // 5
    chunked = cd.centre_density(*arrays, hypers, segment, 61, max_run_pairs=8, max_gpu_memory=bound)
    in_order = cd.centre_density(*arrays, hypers, segment, 61, max_run_pairs=8, longest_first=False)
    for a, b, c in zip(whole, chunked, in_order):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    if host_build.host_compiler() is not None:  # GPU vs the same code compiled for the CPU
        host = cd.centre_density_host_compiled(*arrays, hypers, segment, 61, max_run_pairs=8)
        for a, h in zip(whole, host):
            np.testing.assert_allclose(a, h, rtol=1e-10, atol=1e-13 * float(np.max(np.abs(h))))

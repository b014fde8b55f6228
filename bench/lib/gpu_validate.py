"""One-command validation of the GPU variants, for a person with a CUDA GPU.

Run once on the GPU machine (it installs nothing)::

    python -m einsum_workbench.bench.gpu_validate          # or: python bench/lib/gpu_validate.py
    python -m einsum_workbench.bench.gpu_validate --pairs 4194304 --json gpu.json

It

1. checks every GPU variant that can run (``cupy_batched``; ``torch_cuda`` when
   Torch has CUDA) against the reference: lmax 0..8 x radial-count forms x both
   bases in float64, a float32 subset, spherical / prolate / oblate
   ellipsoids and an empty batch, with the tolerances of
   ``tests/kernels/test_pairs_equivalence.py`` (float64 rtol 1e-6, atol 1e-8 x block max, on
   raw and orthonormalised coefficients; float32 rtol 1e-3, atol 1e-4 x block
   max); for ``cupy_batched`` also chunked == unchunked (bit for bit),
   ``keep_on_device`` CuPy arrays, and the GPU against the same per-pair body
   compiled for the CPU by g++ (when g++ is present);
2. times them at lmax 6 (GTO, sigma 1.5, default radial counts) in float64 and
   float32 with warm-up excluded and the device synchronised around the timed
   region (CUDA events for kernel-only timings, ``synchronize`` + wall clock for
   end-to-end calls);
3. prints a table: the card's name, pairs per second, the fraction of the
   memory-bandwidth bound (inputs read + outputs written once per pair at the
   card's theoretical DRAM bandwidth), and peak GPU memory (CuPy memory pool
   bytes held from an emptied pool / ``torch.cuda.max_memory_allocated``).

4. for the ``cupy_batched`` centre density (``kernels.cupy.density``, the
   neighbour sum fused into the kernel): equivalence against
   ``reference.density.centre_density`` (lmax 0, 3, 6; GTO and monomial; int,
   list and default radial counts; float64 and float32; raw and
   orthonormalised; unsorted segments with empty ones; an empty batch; the same
   tolerances), chunked == unchunked (bit for bit), thread order and runs cut
   short against whole segments, the GPU against the same code compiled for
   the CPU by g++; then timings at 10^5, 10^6 and 10^7 pairs (``--density-pairs``)
   in float64 and float32, segments of ~64 pairs (Poisson sizes) and of skewed
   sizes (log-normal, same mean): ``kernel`` = the density and combine kernels
   on device-resident inputs, CUDA events, pairs per second; ``end-to-end`` =
   NumPy in, NumPy out (sorting, planning, validation and transfers included).
   ``--problem density`` runs only this part, ``--problem pairs`` only 1-3.

5. with the pair part, the ``cupy_batched`` gradients (``kernels.cupy.gradients``)
   and the ``cupy_batched`` backward pass of the centre density
   (``kernels.cupy.backward``, registry problem ``"backward"``): against the
   reference (``reference.backward.centre_density_backward``, finite
   differences; lmax 0, 3, 6, 8, both bases, float64 and float32, raw and
   orthonormalised, unsorted segments with empty ones; the tolerances of
   ``tests/kernels/test_backward.py``) and the same code compiled for the CPU
   by g++, chunked == unchunked and shuffled pairs == permuted result (bit
   for bit); then kernel-only timings at lmax 6 (CUDA events, sorted segments
   of ~64 pairs, device-resident inputs and moment-cotangent table) and one
   end-to-end call (the host's per-segment contraction and transfers included).

Modes: ``kernel`` = inputs and outputs already on the device, one kernel
launch (the device code's throughput; the goal of >= 1e9 pairs/s at lmax 6
float64 on an H100 refers to it); ``device-out`` = NumPy in, CuPy out
(``keep_on_device=True``); ``end-to-end`` = NumPy in, NumPy out (bound by the
host link, PCIe, not by the GPU).

Exit status: 0 every check passed; 1 a check failed (listed); 2 usage error;
3 SKIPPED: no CUDA device (printed as "SKIPPED: no CUDA device: ..." with each
variant's reason; nothing was validated or timed).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback

import numpy as np

from einsum_workbench.kernels.registry import DENSITY_VARIANTS, VARIANTS, get_variant
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, float32_hypers, make_hypers
from einsum_workbench.reference.random_pairs import random_pair_batch

#: the variants that compute on a CUDA device (their registry fact ``Variant.device``)
GPU_VARIANTS = tuple(v.name for v in VARIANTS if v.device == "cuda")
DENSITY_GPU_VARIANTS = tuple(v.name for v in DENSITY_VARIANTS if v.device == "cuda")  # registry problem "density"
DENSITY_PAIRS = (10**5, 10**6, 10**7)
DENSITY_MEAN_SEGMENT = 64  # pairs per segment in the timed batches (an all-atom centre and species)
EXIT_OK, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 3  # 2 is argparse's usage error
GOAL_PAIRS_PER_SECOND = 1e9


# ---------------------------------------------------------------- equivalence

def equivalence_cases():
    """(label, hypers, dtype, n_pairs, seed, shape) as in tests/kernels/test_pairs_equivalence.py
    (the hyper-parameter sets of ``reference.compare``)."""
    cases = [(f"{case} f64", hypers, np.float64, 24, 100 + hypers.lmax, "mixed") for case, hypers in equivalence_hypers()]
    cases += [(f"{case} f32", hypers, np.float32, 24, 200 + hypers.lmax, "mixed") for case, hypers in float32_hypers()]
    for shape in ("spherical", "prolate", "oblate"):
        for basis in ("gto", "monomial"):
            cases.append((f"l6-{basis}-{shape} f64", make_hypers(6, basis), np.float64, 32, 7, shape))
    return cases


def _inputs(n_pairs, seed, shape, dtype):
    arrays = random_pair_batch(n_pairs, seed, shape=shape, self_pair_fraction=0.1)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _first_line(text) -> str:
    """First non-blank line of an error message (NumPy's start with a blank one)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


class Checks:
    """Runs named checks, recording passes and failures (with the error)."""

    def __init__(self):
        self.passed: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def run(self, label, check):
        try:
            check()
        except Exception as err:  # any error is a failed check, reported with its message
            self.failed.append((label, f"{type(err).__name__}: {err}"[:2000]))
            print(f"  FAIL {label}: {type(err).__name__}: {_first_line(err)}")
            if not isinstance(err, AssertionError):
                traceback.print_exc(limit=3)
        else:
            self.passed.append(label)


def check_equivalence(name, expand, checks: Checks):
    print(f"[{name}] equivalence against the reference")
    for label, hypers, dtype, n_pairs, seed, shape in equivalence_cases():
        arrays = _inputs(n_pairs, seed, shape, dtype)

        def one(arrays=arrays, hypers=hypers, dtype=dtype, label=label):
            expected = pairwise_ellip_expansion(*(a.astype(np.float64) for a in arrays), hypers)
            assert_coefficients_close(expand(*arrays, hypers, dtype=dtype), expected, hypers, dtype, f"{name} {label}")

        checks.run(f"{name} {label}", one)

    def empty():
        hypers = make_hypers(4, "gto")
        for dtype in (np.float64, np.float32):
            out = expand(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype), hypers)
            shapes = [b.shape for b in out]
            want = [(0, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
            assert shapes == want, f"empty batch shapes {shapes} != {want}"

    checks.run(f"{name} empty batch", empty)


def _assert_matches_host(gpu, host, what):
    """``gpu(dtype)`` against ``host(dtype)`` (the same device code compiled for the CPU by g++),
    per l: float64 rtol 1e-10, float32 1e-4, atol ``rtol * 1e-3`` x the block's largest |value|."""
    from einsum_workbench.kernels.cupy.host_build import host_compiler

    if host_compiler() is None:
        print(f"  (g++ absent: GPU vs host-compiled {what} not compared)")
        return
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        for l, (g, h) in enumerate(zip(gpu(dtype), host(dtype))):
            scale = float(np.max(np.abs(h)))
            np.testing.assert_allclose(g, h, rtol=rtol, atol=rtol * 1e-3 * scale,
                                       err_msg=f"GPU vs host-compiled {what}, l={l}, {np.dtype(dtype)}")


def check_cupy_extras(checks: Checks):
    import cupy

    from einsum_workbench.kernels.cupy import pairs as cb
    from einsum_workbench.kernels.cupy.common import INPUT_VALUES_PER_PAIR, output_offsets

    hypers = make_hypers(6, "gto")
    arrays = _inputs(5000, 17, "mixed", np.float64)
    print("[cupy_batched] chunking, keep_on_device, GPU vs host-compiled body")

    def chunked():
        whole = cb.expand(*arrays, hypers)
        parts = cb.expand(*arrays, hypers, max_gpu_memory=977 * cb.device_bytes_per_pair(hypers, np.float64))
        for a, b in zip(whole, parts):
            np.testing.assert_array_equal(a, b, err_msg="chunked != unchunked")

    def kept():
        whole = cb.expand(*arrays, hypers)
        bound = 5000 * 8 * output_offsets(hypers)[-1] + 333 * 8 * INPUT_VALUES_PER_PAIR
        device = cb.expand(*arrays, hypers, keep_on_device=True, max_gpu_memory=bound)
        for a, d in zip(whole, device):
            assert isinstance(d, cupy.ndarray), f"keep_on_device returned {type(d).__name__}"
            np.testing.assert_array_equal(cupy.asnumpy(d), a, err_msg="keep_on_device != copied back")

    def versus_host():
        def cast(dtype):
            return tuple(a.astype(dtype) for a in arrays)

        _assert_matches_host(lambda dtype: cb.expand(*cast(dtype), hypers),
                             lambda dtype: cb.expand_host_compiled(*cast(dtype), hypers), "body")

    checks.run("cupy_batched chunked == unchunked", chunked)
    checks.run("cupy_batched keep_on_device", kept)
    checks.run("cupy_batched GPU == host-compiled body", versus_host)


def check_gradients(checks: Checks, n_pairs: int = 2**20, repeats: int = 10):
    """``cupy_batched`` gradients (kernels.cupy.gradients): GPU vs finite differences of the
    reference and vs the host-compiled body, chunked == unchunked; then kernel-only timings."""
    import cupy

    from einsum_workbench.kernels.cupy import gradients as cg
    from einsum_workbench.kernels.cupy.common import output_offsets
    from einsum_workbench.kernels.cupy.host_build import host_compiler
    from einsum_workbench.reference.gradients import finite_difference_gradients

    print("[cupy_batched gradients] GPU vs finite differences, vs host-compiled body, chunking")
    quantities = ("values", "positions", "orientations", "semiaxes")
    for lmax, basis in ((0, "gto"), (3, "monomial"), (6, "gto"), (8, "monomial")):
        for dtype, rtol in ((np.float64, 1e-6), (np.float32, 1e-3)):
            def one(lmax=lmax, basis=basis, dtype=dtype, rtol=rtol):
                hypers = make_hypers(lmax, basis)
                arrays = [np.concatenate(p) for p in zip(*(_inputs(3, 70 + i, s, dtype)
                                                           for i, s in enumerate(("prolate", "oblate", "spherical"))))]
                got = cg.expand_with_gradients(*arrays, hypers, semiaxes_gradients=True)
                fd = finite_difference_gradients(*(a.astype(np.float64) for a in arrays), hypers, semiaxes_gradients=True)
                for q in quantities:
                    for l, (a, e) in enumerate(zip(getattr(got, q), getattr(fd, q))):
                        scale = max(float(np.max(np.abs(e))), float(np.max(np.abs(fd.values[l]))))
                        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=f"{q} l={l}")
                if host_compiler() is not None and dtype == np.float64:
                    host = cg.expand_with_gradients_host_compiled(*arrays, hypers, semiaxes_gradients=True)
                    for q in quantities:
                        for l, (a, h) in enumerate(zip(getattr(got, q), getattr(host, q))):
                            np.testing.assert_allclose(a, h, rtol=1e-10, atol=1e-13 * float(np.max(np.abs(h))),
                                                       err_msg=f"GPU vs host-compiled {q} l={l}")
            checks.run(f"cupy_batched gradients l{lmax}-{basis} {np.dtype(dtype).name}", one)

    def chunked():
        hypers, arrays = make_hypers(6, "gto"), _inputs(5000, 17, "mixed", np.float64)
        whole = cg.expand_with_gradients(*arrays, hypers)
        parts = cg.expand_with_gradients(*arrays, hypers, max_gpu_memory=977 * cg.device_bytes_per_pair(hypers, np.float64))
        for q in ("values", "positions", "orientations"):
            for a, b in zip(getattr(whole, q), getattr(parts, q)):
                np.testing.assert_array_equal(a, b, err_msg=f"chunked != unchunked ({q})")

    checks.run("cupy_batched gradients chunked == unchunked", chunked)

    def timing():
        hypers = make_hypers(6, "gto")
        for dtype in (np.float64, np.float32):
            for semi in (False, True):
                n_dir = cg.direction_count(semi)
                backend = cg.CupyGradientBackend(hypers)
                d_in = [cupy.asarray(a.reshape(-1)) for a in _inputs(n_pairs, 1, "mixed", dtype)]
                d_out = cupy.empty((1 + n_dir) * output_offsets(hypers)[-1] * n_pairs, dtype=dtype)
                for _ in range(2):
                    backend.launch(*d_in, d_out, n_pairs, n_pairs, n_dir, dtype)
                start, stop = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                for _ in range(repeats):
                    backend.launch(*d_in, d_out, n_pairs, n_pairs, n_dir, dtype)
                stop.record()
                stop.synchronize()
                seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
                attributes = backend.module.get_function(cg.KERNEL_NAMES[np.dtype(dtype)]).attributes
                print(f"  gradients kernel lmax 6 {np.dtype(dtype).name} {n_dir} directions: {n_pairs / seconds:.3e} pairs/s "
                      f"({attributes['num_regs']} regs, {attributes['local_size_bytes']} B local)")
                del d_in, d_out

    checks.run("cupy_batched gradients kernel timing (lmax 6)", timing)


def _assert_cotangents_close(actual, expected, rtol, atol_scale, label):
    """PairCotangents per quantity, as tests/kernels/test_backward.py: ``atol = atol_scale x``
    the quantity's largest |value|, or 0.1 x the largest of all three when that is larger."""
    largest = max(float(np.max(np.abs(x), initial=0.0)) for x in expected if x is not None)
    for q in ("r", "theta", "semiaxes"):
        a, e = getattr(actual, q), getattr(expected, q)
        if e is None:
            assert a is None, f"{label} {q}: expected None"
            continue
        scale = max(float(np.max(np.abs(e), initial=0.0)), 0.1 * largest, 1e-300)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol_scale * scale, err_msg=f"{label} {q}")


def _backward_cotangent(hypers, n_segments, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def check_backward(checks: Checks):
    """``cupy_batched`` backward (kernels.cupy.backward): GPU vs the reference and vs the
    host-compiled body, chunked == unchunked, shuffled pairs == permuted result."""
    from einsum_workbench.kernels.cupy import backward as cbw
    from einsum_workbench.kernels.cupy.host_build import host_compiler
    from einsum_workbench.reference.backward import centre_density_backward as reference_backward

    print("[cupy_batched backward] GPU vs the reference, vs host-compiled body, chunking, pair order")
    for lmax, basis, max_radial in ((0, "gto", 2), (3, "monomial", None), (6, "gto", None), (8, "monomial", 1)):
        for dtype, rtol, atol_scale in ((np.float64, 1e-6, 1e-6), (np.float32, 1e-3, 1e-4)):
            for orthonormal in (False, True):
                def one(lmax=lmax, basis=basis, max_radial=max_radial, dtype=dtype, rtol=rtol,
                        atol_scale=atol_scale, orthonormal=orthonormal):
                    hypers = make_hypers(lmax, basis, max_radial)
                    arrays = _inputs(40, 80 + lmax, "mixed", dtype)
                    segment = density_segments(40, 9, 80 + lmax)
                    g = _backward_cotangent(hypers, 9, lmax)
                    got = cbw.centre_density_backward(*arrays, hypers, segment, 9, g, orthonormal=orthonormal,
                                                      semiaxes_gradients=True)
                    assert got.r.dtype == np.dtype(dtype), got.r.dtype
                    expected = reference_backward(*(a.astype(np.float64) for a in arrays), hypers, segment, 9, g,
                                                  orthonormal=orthonormal, semiaxes_gradients=True)
                    _assert_cotangents_close(got, expected, rtol, atol_scale, "vs reference")
                    if host_compiler() is not None and dtype == np.float64:
                        host = cbw.centre_density_backward_host_compiled(*arrays, hypers, segment, 9, g,
                                                                         orthonormal=orthonormal,
                                                                         semiaxes_gradients=True)
                        _assert_cotangents_close(got, host, 1e-10, 1e-12, "GPU vs host-compiled")
                label = f"l{lmax}-{basis}-{max_radial} {np.dtype(dtype).name} {'orthonormal' if orthonormal else 'raw'}"
                checks.run(f"cupy_batched backward {label}", one)

    def chunked_and_shuffled():
        hypers, arrays = make_hypers(6, "gto"), _inputs(5000, 17, "mixed", np.float64)
        segment = density_segments(5000, 301, 17)
        g = _backward_cotangent(hypers, 301, 17)
        whole = cbw.centre_density_backward(*arrays, hypers, segment, 301, g, semiaxes_gradients=True)
        bound = 977 * cbw.device_bytes_per_pair(hypers, np.float64, True)
        parts = cbw.centre_density_backward(*arrays, hypers, segment, 301, g, semiaxes_gradients=True,
                                            max_gpu_memory=bound)
        order = np.random.default_rng(3).permutation(5000)
        shuffled = cbw.centre_density_backward(*(a[order] for a in arrays), hypers, segment[order], 301, g,
                                               semiaxes_gradients=True)
        for q, a, b, c in zip(("r", "theta", "semiaxes"), whole, parts, shuffled):
            np.testing.assert_array_equal(a, b, err_msg=f"chunked != unchunked ({q})")
            np.testing.assert_array_equal(a[order], c, err_msg=f"shuffled pairs != permuted result ({q})")

    checks.run("cupy_batched backward chunked == unchunked, pair order", chunked_and_shuffled)


def time_backward(checks: Checks, n_pairs: int = 2**20, repeats: int = 10):
    """``cupy_batched`` backward at lmax 6: kernel only (CUDA events, device-resident inputs and
    moment-cotangent table, sorted segments of ~64 pairs) and one end-to-end call."""
    import cupy

    from einsum_workbench.kernels.cupy import backward as cbw
    from einsum_workbench.kernels.tables import num_monomials

    def timing():
        hypers = make_hypers(6, "gto")
        segment, n_segments = timing_segments(n_pairs, "poisson")
        g = _backward_cotangent(hypers, n_segments, 5)
        table = cbw.moment_cotangent(cbw.flat_cotangent(g, hypers), hypers)
        for dtype in (np.float64, np.float32):
            arrays = _inputs(n_pairs, 1, "mixed", dtype)
            for semi in (False, True):
                n_comp = cbw.component_count(semi)
                backend = cbw.CupyBackwardBackend(hypers)
                d_in = [cupy.asarray(a.reshape(-1)) for a in arrays]
                d_row = cupy.asarray(segment.astype(np.int64))
                d_table = cupy.asarray(table.astype(dtype).reshape(-1))
                d_out = cupy.empty(n_comp * n_pairs, dtype=dtype)
                for _ in range(2):
                    backend.launch(*d_in, d_row, d_table, d_out, n_pairs, n_pairs, semi, dtype)
                start, stop = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                for _ in range(repeats):
                    backend.launch(*d_in, d_row, d_table, d_out, n_pairs, n_pairs, semi, dtype)
                stop.record()
                stop.synchronize()
                seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
                attributes = backend.module.get_function(cbw.KERNEL_NAMES[(np.dtype(dtype), semi)]).attributes
                print(f"  backward kernel lmax 6 {np.dtype(dtype).name} {n_comp} numbers per pair, "
                      f"{n_segments} segments of ~{DENSITY_MEAN_SEGMENT} pairs ({num_monomials(hypers.max_degree)} "
                      f"moments each): {n_pairs / seconds:.3e} pairs/s ({attributes['num_regs']} regs, "
                      f"{attributes['local_size_bytes']} B local)")
                del d_in, d_row, d_table, d_out
            call = functools.partial(cbw.centre_density_backward, *arrays, hypers, segment, n_segments, g)
            seconds = time_call(call, cupy.cuda.Device().synchronize, max(1, repeats // 4))
            print(f"  backward end-to-end lmax 6 {np.dtype(dtype).name} (NumPy in and out, per-segment "
                  f"contraction on the host): {n_pairs / seconds:.3e} pairs/s")

    checks.run("cupy_batched backward timing (lmax 6)", timing)


# ---------------------------------------------------------------- timing

def card_properties() -> dict:
    """Name and theoretical DRAM bandwidth (None if unknown) of the current CUDA device."""
    try:
        import cupy
    except ImportError:
        import torch

        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "bandwidth_bytes_per_s": None,
                "compute_capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count}
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    clock_khz, bus_bits = props.get("memoryClockRate"), props.get("memoryBusWidth")
    # double data rate: two transfers per memory clock
    bandwidth = 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None
    return {"name": name, "bandwidth_bytes_per_s": bandwidth,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props["multiProcessorCount"]}


def _bound(bandwidth, hypers, dtype):
    """Pairs per second if each pair's inputs were read and outputs written once at full bandwidth."""
    from einsum_workbench.kernels.cupy import pairs as cb

    return None if not bandwidth else bandwidth / cb.bytes_per_pair(hypers, dtype)


def time_cupy_kernel(hypers, dtype, n_pairs, repeats, block_size, max_registers=None):
    """Kernel-only: device-resident inputs and outputs, CUDA events around ``repeats`` launches."""
    import cupy

    from einsum_workbench.kernels.cupy import pairs as cb
    from einsum_workbench.kernels.cupy.common import output_offsets

    arrays = _inputs(n_pairs, 1, "mixed", dtype)
    backend = cb.CupyBackend(hypers, block_size, max_registers)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    d_in = [cupy.asarray(a.reshape(-1)) for a in arrays]
    d_out = cupy.empty(output_offsets(hypers)[-1] * n_pairs, dtype=dtype)
    for _ in range(2):  # warm-up: module load, caches
        backend.launch(*d_in, d_out, n_pairs, n_pairs, dtype)
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        backend.launch(*d_in, d_out, n_pairs, n_pairs, dtype)
    stop.record()
    stop.synchronize()
    seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
    kernel = backend.module.get_function(cb.KERNEL_NAMES[np.dtype(dtype)])
    try:
        attributes = kernel.attributes
        note = f"block {block_size}, {attributes['num_regs']} regs, {attributes['local_size_bytes']} B local"
    except Exception:  # attribute names differ between CuPy versions: the note is optional
        note = f"block {block_size}"
    if max_registers is not None:
        note += f" (--maxrregcount={max_registers})"
    peak = pool.total_bytes()
    del d_in, d_out
    return seconds, peak, note


def time_call(call, sync, repeats):
    """Median wall time of ``call`` after one warm-up, synchronised before each clock read."""
    call()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_cupy_calls(hypers, dtype, n_pairs, repeats, keep_on_device):
    import cupy

    from einsum_workbench.kernels.cupy import pairs as cb

    arrays = _inputs(n_pairs, 1, "mixed", dtype)
    pool = cupy.get_default_memory_pool()
    cb.expand(*(a[:1000] for a in arrays), hypers)  # compile outside the timed region
    pool.free_all_blocks()

    def call():
        return cb.expand(*arrays, hypers, keep_on_device=keep_on_device)

    seconds = time_call(call, cupy.cuda.Device().synchronize, repeats)
    return seconds, pool.total_bytes()


def time_torch_cuda(hypers, dtype, n_pairs, repeats):
    import torch

    expand = get_variant("torch_cuda").load()
    arrays = _inputs(n_pairs, 1, "mixed", dtype)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    seconds = time_call(lambda: expand(*arrays, hypers), torch.cuda.synchronize, repeats)
    return seconds, torch.cuda.max_memory_allocated()


def run_timings(available, n_pairs, repeats, card):
    hypers = make_hypers(6, "gto")
    rows = []
    for dtype in (np.float64, np.float32):
        bound = _bound(card["bandwidth_bytes_per_s"], hypers, dtype)
        if "cupy_batched" in available:
            for block, max_registers in ((64, None), (128, None), (256, None), (128, 168), (128, 128)):
                seconds, peak, note = time_cupy_kernel(hypers, dtype, n_pairs, repeats, block, max_registers)
                rows.append(("cupy_batched", "kernel", dtype, n_pairs, seconds, peak, bound, note))
            for mode, keep in (("device-out", True), ("end-to-end", False)):
                seconds, peak = time_cupy_calls(hypers, dtype, n_pairs, max(1, repeats // 4), keep)
                rows.append(("cupy_batched", mode, dtype, n_pairs, seconds, peak, bound, ""))
        if "torch_cuda" in available:
            seconds, peak = time_torch_cuda(hypers, dtype, n_pairs, max(1, repeats // 4))
            rows.append(("torch_cuda", "end-to-end", dtype, n_pairs, seconds, peak, bound, ""))
    return rows


def _print_header(header: str) -> None:
    """The timed workload, then the column ``header`` and a rule under it."""
    print("workload: lmax 6, GTO sigma 1.5, default radial counts, random mixed ellipsoids")
    print(header)
    print("-" * len(header))


def print_table(card, rows):
    print()
    print(f"card: {card['name']} (compute capability {card['compute_capability']}, "
          f"{card['multiprocessors']} SMs, theoretical DRAM bandwidth "
          f"{card['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s)" if card["bandwidth_bytes_per_s"]
          else f"card: {card['name']}")
    _print_header(f"{'variant':<13} {'mode':<11} {'dtype':<8} {'pairs':>9} {'s/call':>10} {'pairs/s':>10} "
                  f"{'% bw bound':>10} {'peak GPU MiB':>12}  note")
    for name, mode, dtype, n, seconds, peak, bound, note in rows:
        rate = n / seconds
        share = f"{100 * rate / bound:.0f}%" if bound else "-"
        print(f"{name:<13} {mode:<11} {np.dtype(dtype).name:<8} {n:>9d} {seconds:>10.3e} {rate:>10.3e} "
              f"{share:>10} {peak / 2**20:>12.1f}  {note}")
    best = [n / s for name, mode, dtype, n, s, *_ in rows
            if name == "cupy_batched" and mode == "kernel" and np.dtype(dtype) == np.float64]
    if best:
        reached = max(best)
        verdict = "reached" if reached >= GOAL_PAIRS_PER_SECOND else "NOT reached"
        print(f"\ngoal >= {GOAL_PAIRS_PER_SECOND:.0e} pairs/s at lmax 6 float64 (kernel): {verdict} "
              f"({reached:.3e} pairs/s)")


# ---------------------------------------------------------------- centre density

def density_equivalence_cases():
    """(label, hypers, dtype, orthonormal, n_pairs, n_segments, seed) for the density checks."""
    cases = []
    sets = [(0, "gto", None), (3, "monomial", 2), (3, "gto", [2, 0, 1, 1]), (6, "gto", None),
            (6, "monomial", [1, 2, 0, 1, 1, 0, 0])]
    for i, (lmax, basis, max_radial) in enumerate(sets):
        for dtype in (np.float64, np.float32):
            for orthonormal in (False, True):
                label = f"density l{lmax}-{basis}-{max_radial} {np.dtype(dtype).name}" \
                        f"{' orthonormal' if orthonormal else ' raw'}"
                cases.append((label, make_hypers(lmax, basis, max_radial), dtype, orthonormal, 90, 13, 400 + i))
    return cases


def density_segments(n_pairs, n_segments, seed):
    """Unsorted segment of each pair, with segments 1 and ``n_segments - 1`` left empty."""
    rng = np.random.default_rng(seed)
    used = np.setdiff1d(np.arange(n_segments), [1, n_segments - 1])
    return rng.choice(used, size=n_pairs)


def check_density_equivalence(name, density, checks: Checks):
    """``density`` (the centre-density contract) against ``reference.density.centre_density``."""
    from einsum_workbench.reference.density import centre_density as reference_density

    print(f"[{name} density] equivalence against reference.density.centre_density")
    for label, hypers, dtype, orthonormal, n_pairs, n_segments, seed in density_equivalence_cases():
        arrays = _inputs(n_pairs, seed, "mixed", dtype)
        segment = density_segments(n_pairs, n_segments, seed)

        def one(arrays=arrays, hypers=hypers, dtype=dtype, orthonormal=orthonormal, segment=segment,
                n_segments=n_segments, label=label):
            expected = reference_density(*(a.astype(np.float64) for a in arrays), hypers, segment, n_segments,
                                         orthonormal=orthonormal)
            actual = density(*arrays, hypers, segment, n_segments, dtype=dtype, orthonormal=orthonormal)
            # raw densities are also compared after orthonormalisation (as the pair checks)
            assert_coefficients_close(actual, expected, hypers, dtype, f"{name} {label}",
                                      orthonormalised=not orthonormal)
            for l, block in enumerate(actual):
                assert not np.any(block[[1, n_segments - 1]]), f"{label}: empty segment not zero (l={l})"

        checks.run(f"{name} {label}", one)

    def empty():
        hypers = make_hypers(4, "gto")
        for dtype in (np.float64, np.float32):
            for n_segments in (0, 3):
                out = density(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype),
                              hypers, np.zeros(0, np.int64), n_segments)
                want = [(n_segments, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
                assert [b.shape for b in out] == want, f"empty batch shapes {[b.shape for b in out]} != {want}"
                assert all(b.dtype == np.dtype(dtype) and not b.any() for b in out)

    checks.run(f"{name} density empty batch", empty)


def check_density_extras(checks: Checks):
    """GPU only: chunking, thread order, cut runs, GPU vs the host-compiled code."""
    from einsum_workbench.kernels.cupy import density as cd

    hypers = make_hypers(6, "gto")
    arrays = _inputs(6000, 23, "mixed", np.float64)
    segment = density_segments(6000, 101, 23)
    print("[cupy_batched density] chunking, thread order, cut runs, GPU vs host-compiled code")

    def chunked():
        whole = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=16)
        plan = cd.plan_density(np.sort(segment), hypers, np.float64, 2**30, 16)
        bound = plan.device_bytes // 5
        assert len(cd.plan_density(np.sort(segment), hypers, np.float64, bound, 16).chunks) > 3
        parts = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=16, max_gpu_memory=bound)
        for l, (a, b) in enumerate(zip(whole, parts)):
            np.testing.assert_array_equal(a, b, err_msg=f"chunked != unchunked, l={l}")

    def thread_order():
        first = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=16)
        plain = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=16, longest_first=False)
        for l, (a, b) in enumerate(zip(first, plain)):
            np.testing.assert_array_equal(a, b, err_msg=f"longest_first changed the result, l={l}")

    def cut_runs():
        whole = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=10**6)
        cut = cd.centre_density(*arrays, hypers, segment, 101, max_run_pairs=3)
        for l, (a, b) in enumerate(zip(whole, cut)):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13 * float(np.max(np.abs(a))),
                                       err_msg=f"runs of 3 pairs vs whole segments, l={l}")

    def versus_host():
        def cast(dtype):
            return tuple(a.astype(dtype) for a in arrays)

        _assert_matches_host(lambda dtype: cd.centre_density(*cast(dtype), hypers, segment, 101),
                             lambda dtype: cd.centre_density_host_compiled(*cast(dtype), hypers, segment, 101),
                             "density")

    checks.run("cupy_batched density chunked == unchunked", chunked)
    checks.run("cupy_batched density longest_first == pair order", thread_order)
    checks.run("cupy_batched density cut runs == whole segments", cut_runs)
    checks.run("cupy_batched density GPU == host-compiled code", versus_host)


def timing_segments(n_pairs, kind, seed=0):
    """Sorted segment of each pair: ``poisson`` (pairs thrown uniformly into
    ``n_pairs // 64`` segments) or ``skewed`` (log-normal sizes, sigma 1.2, mean ~64).

    Returns (segment (P,) int64, n_segments).
    """
    rng = np.random.default_rng(seed)
    if kind == "poisson":
        n_segments = max(1, n_pairs // DENSITY_MEAN_SEGMENT)
        return np.sort(rng.integers(0, n_segments, n_pairs)), n_segments
    if kind == "skewed":
        sigma = 1.2
        sizes = np.zeros(0, dtype=np.int64)
        while sizes.sum() < n_pairs:
            more = rng.lognormal(np.log(DENSITY_MEAN_SEGMENT) - sigma**2 / 2, sigma,
                                 size=2 * n_pairs // DENSITY_MEAN_SEGMENT + 10)
            sizes = np.concatenate([sizes, np.maximum(1, more).astype(np.int64)])
        n_segments = int(np.searchsorted(np.cumsum(sizes), n_pairs)) + 1
        segment = np.repeat(np.arange(n_segments), sizes[:n_segments])[:n_pairs]
        return segment, n_segments
    raise ValueError(f"segment kind must be 'poisson' or 'skewed', got {kind!r}")


@functools.lru_cache(maxsize=2)
def _timing_pairs(n_pairs):
    return _inputs(n_pairs, 1, "mixed", np.float64)


def time_density_kernel(hypers, dtype, n_pairs, kind, repeats, block_size=128, max_registers=None,
                        max_run_pairs=None, longest_first=True):
    """Kernel only: device-resident inputs, one density + one combine launch per call, CUDA events.

    Returns (seconds per call, peak pool bytes, note, n_segments).
    """
    import cupy

    from einsum_workbench.kernels.cupy import density as cd
    from einsum_workbench.kernels.cupy.common import output_offsets

    arrays = tuple(a.astype(dtype, copy=False) for a in _timing_pairs(n_pairs))
    segment, n_segments = timing_segments(n_pairs, kind)
    plan = cd.plan_density(segment, hypers, dtype, 2**62, max_run_pairs, longest_first)
    assert len(plan.chunks) == 1, "timed plan must be one chunk"
    chunk = plan.chunks[0]
    backend = cd.CupyDensityBackend(hypers, block_size, max_registers)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    d_in = [cupy.asarray(a.reshape(-1)) for a in arrays]
    d_idx = [cupy.asarray(x) for x in (chunk.run_start, chunk.run_stop, chunk.column, chunk.first)]
    n_out = output_offsets(hypers)[-1]
    d_runs = cupy.empty(n_out * chunk.n_runs, dtype=dtype)
    d_rows = cupy.empty(n_out * chunk.n_rows, dtype=dtype)

    def call():
        backend.launch(*d_in, d_idx[0], d_idx[1], d_runs, chunk.n_runs, chunk.n_runs, dtype)
        backend.combine(d_runs, d_idx[2], d_idx[3], d_rows, chunk.n_rows, chunk.n_runs, chunk.n_rows, dtype)

    for _ in range(2):  # warm-up: module load, caches
        call()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        call()
    stop.record()
    stop.synchronize()
    seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
    note = f"{kind} segments, {chunk.n_runs} runs of <= {plan.max_run_pairs} pairs" \
           f"{', longest first' if longest_first else ', pair order'}, block {block_size}"
    try:
        attributes = backend.module.get_function(cd.KERNEL_NAMES[np.dtype(dtype)]).attributes
        note += f", {attributes['num_regs']} regs, {attributes['local_size_bytes']} B local"
    except Exception:  # attribute names differ between CuPy versions: the note is optional
        pass
    if max_registers is not None:
        note += f" (--maxrregcount={max_registers})"
    peak = pool.total_bytes()
    return seconds, peak, note, n_segments


def time_density_call(hypers, dtype, n_pairs, kind, repeats):
    """End to end: NumPy in (segments shuffled: the host sorts), NumPy out, synchronised wall clock."""
    import cupy

    from einsum_workbench.kernels.cupy import density as cd

    arrays = tuple(a.astype(dtype, copy=False) for a in _timing_pairs(n_pairs))
    segment, n_segments = timing_segments(n_pairs, kind)
    segment = np.random.default_rng(2).permutation(segment)
    pool = cupy.get_default_memory_pool()
    cd.centre_density(*(a[:1000] for a in arrays), hypers, segment[:1000], n_segments)  # compile
    pool.free_all_blocks()
    seconds = time_call(lambda: cd.centre_density(*arrays, hypers, segment, n_segments),
                        cupy.cuda.Device().synchronize, repeats)
    return seconds, pool.total_bytes(), f"{kind} segments, shuffled", n_segments


def run_density_timings(sizes, repeats):
    """Rows (variant, mode, dtype, pairs, segments, seconds, peak bytes, note) at lmax 6 GTO."""
    hypers = make_hypers(6, "gto")
    rows = []
    for n_pairs in sizes:
        for dtype in (np.float64, np.float32):
            configs = [dict(kind="poisson"), dict(kind="poisson", longest_first=False),
                       dict(kind="skewed"), dict(kind="skewed", longest_first=False),
                       dict(kind="poisson", max_run_pairs=10**9)]  # whole segments: no cut runs
            if n_pairs == sizes[len(sizes) // 2] and np.dtype(dtype) == np.float64:
                configs += [dict(kind="poisson", block_size=64), dict(kind="poisson", block_size=256),
                            dict(kind="poisson", max_registers=168), dict(kind="poisson", max_run_pairs=16)]
            for config in configs:
                seconds, peak, note, n_seg = time_density_kernel(hypers, dtype, n_pairs, repeats=repeats, **config)
                rows.append(("cupy_batched", "kernel", dtype, n_pairs, n_seg, seconds, peak, note))
            seconds, peak, note, n_seg = time_density_call(hypers, dtype, n_pairs, "poisson", max(1, repeats // 4))
            rows.append(("cupy_batched", "end-to-end", dtype, n_pairs, n_seg, seconds, peak, note))
    return rows


def print_density_table(card, rows):
    print()
    print(f"centre density (cupy_batched, kernels.cupy.density) on {card['name']}")
    _print_header(f"{'mode':<11} {'dtype':<8} {'pairs':>9} {'segments':>9} {'s/call':>10} {'pairs/s':>10} "
                  f"{'peak GPU MiB':>12}  note")
    for name, mode, dtype, n, n_seg, seconds, peak, note in rows:
        print(f"{mode:<11} {np.dtype(dtype).name:<8} {n:>9d} {n_seg:>9d} {seconds:>10.3e} {n / seconds:>10.3e} "
              f"{peak / 2**20:>12.1f}  {note}")


def _density_rows_json(rows):
    return [dict(variant=r[0], mode=r[1], dtype=np.dtype(r[2]).name, pairs=r[3], segments=r[4], seconds=r[5],
                 pairs_per_second=r[3] / r[5], peak_gpu_bytes=int(r[6]), note=r[7]) for r in rows]


def _parse_sizes(text):
    try:
        sizes = tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive pair counts, got {text!r}")
    return sizes


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2**21, help="pairs per timed batch (default 2**21)")
    parser.add_argument("--repeats", type=int, default=20, help="timed kernel launches (default 20)")
    parser.add_argument("--skip-equivalence", action="store_true", help="time only")
    parser.add_argument("--problem", choices=("all", "pairs", "density"), default="all",
                        help="pair expansion, centre density, or both (default)")
    parser.add_argument("--density-pairs", type=_parse_sizes, default=DENSITY_PAIRS,
                        help="comma-separated pair counts of the density timings (default 1e5,1e6,1e7)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.repeats < 1:
        parser.error(f"--pairs and --repeats must be >= 1, got {args.pairs} and {args.repeats}")

    reasons = {name: get_variant(name).unavailable_reason() for name in GPU_VARIANTS}
    density_reasons = {name: get_variant(name, "density").unavailable_reason() for name in DENSITY_GPU_VARIANTS}
    available = [name for name, reason in reasons.items() if reason is None and args.problem != "density"]
    density_available = [name for name, reason in density_reasons.items()
                         if reason is None and args.problem != "pairs"]
    if not available and not density_available:
        print("SKIPPED: no CUDA device: no GPU variant can run here, so nothing was validated or timed.")
        for name, reason in reasons.items():
            print(f"  {name}: {reason}")
        for name, reason in density_reasons.items():
            print(f"  {name} (centre density): {reason}")
        print(f"exit status {EXIT_SKIPPED} (skipped)")
        return EXIT_SKIPPED
    for name, reason in reasons.items():
        if reason is not None:
            print(f"not run: {name}: {reason}")
    for name, reason in density_reasons.items():
        if reason is not None:
            print(f"not run: {name} (centre density): {reason}")

    checks = Checks()
    if not args.skip_equivalence:
        for name in available:
            check_equivalence(name, get_variant(name).load(), checks)
        if "cupy_batched" in available:
            check_cupy_extras(checks)
        for name in density_available:
            check_density_equivalence(name, get_variant(name, "density").load(), checks)
        if "cupy_batched" in density_available:
            check_density_extras(checks)
        if "cupy_batched" in available and get_variant("cupy_batched", "gradients").unavailable_reason() is None:
            check_gradients(checks)
        if "cupy_batched" in available and get_variant("cupy_batched", "backward").unavailable_reason() is None:
            check_backward(checks)
            time_backward(checks)
        print(f"\nequivalence: {len(checks.passed)} passed, {len(checks.failed)} failed")

    card = card_properties()
    rows = []
    if available:
        try:
            rows = run_timings(available, args.pairs, args.repeats, card)
        except Exception as err:
            checks.failed.append(("timings", f"{type(err).__name__}: {err}"))
            traceback.print_exc()
        print_table(card, rows)
    density_rows = []
    if "cupy_batched" in density_available:
        try:
            density_rows = run_density_timings(args.density_pairs, max(1, args.repeats // 2))
        except Exception as err:
            checks.failed.append(("density timings", f"{type(err).__name__}: {err}"))
            traceback.print_exc()
        print_density_table(card, density_rows)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "card": card,
                "not_run": {**{k: v for k, v in reasons.items() if v},
                            **{f"{k} (centre density)": v for k, v in density_reasons.items() if v}},
                "passed": checks.passed, "failed": checks.failed,
                "timings": [dict(variant=r[0], mode=r[1], dtype=np.dtype(r[2]).name, pairs=r[3], seconds=r[4],
                                 pairs_per_second=r[3] / r[4], peak_gpu_bytes=int(r[5]),
                                 bandwidth_bound_pairs_per_second=r[6], note=r[7]) for r in rows],
                "density_timings": _density_rows_json(density_rows),
            }, f, indent=2)
    if checks.failed:
        print(f"\nFAILED checks ({len(checks.failed)}):")
        for label, message in checks.failed:
            print(f"  {label}: {_first_line(message)}")
        return EXIT_FAILED
    print("\nall GPU checks passed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``cupy_batched``: every frame's pairs in one GPU pass, one CUDA thread per pair.

Design
------
Host side (this module): the variant contract's flat arrays already hold every
frame's pairs together, so they form one pair batch. It is cut into chunks that
fit a stated device-memory bound (``max_gpu_memory``); each chunk's inputs go
to the GPU once, one fused kernel computes all its coefficients, and the
outputs come back as NumPy (or stay on the device with ``keep_on_device``).

Device side (``kernels/cupy/cuda/``): one thread per neighbour pair computes

1. the body-frame Gaussian parameters (``A' = R diag(d) R^T``,
   ``d_k = 1/l_k^2 + 1/sigma^2`` for GTO; covariance ``R diag(1/d) R^T``, centre,
   scale ``exp(-k/2) / (l1 l2 l3 sqrt(prod d))``), in ``pair_expansion.cuh``;
2. the normal law's moments ``E[x^n0 y^n1 z^n2]`` up to ``hypers.max_degree``
   by the lab-frame recurrence of DESIGN.md section 3 (``kernels.tables``
   flat order), into a thread-local array of ``num_monomials(max_degree)``
   values (84 at lmax 6). The separable body-frame form with a Wigner-D
   rotation per l was not chosen: it needs the (2l+1)^2 rotation matrices of
   every l per thread (455 values at lmax 6), more state than the moments;
3. the sparse contraction with the non-zeros of ``T_l / sqrt(4 pi / (2l+1))``
   (``kernels.tables.compact_solid_harmonics``, 362 at lmax 6), times the scale,
   each output written once.

Steps 2 and 3 are generated per hyper-parameter set as straight-line code
(struct ``wb::Spec``, :func:`einsum_workbench.kernels.cupy.common.generate_spec_source`,
shared with the density and gradient kernels): fixed indices let the
compiler keep the moments in registers, and no index tables are read. The
module is compiled by NVRTC through ``cupy.RawModule`` and cached per
hyper-parameter set (both dtypes are in one module: kernels ``wb_expand_f64``
and ``wb_expand_f32``, one C++ template).

Output layout on the device is component-major, ``(num_outputs, n_pairs)``
with outputs flat over (l, m, n): consecutive threads write consecutive
addresses (coalesced stores). Per l the contract's ``(P, 2l+1, n_l)`` array is
a transposed view of its rows; when copying back, a device-side copy makes
each l pair-major first, so the host receives contiguous slices of its
results (no host transposes). At lmax 6 float64, nvcc for sm_90 gives the
kernel 232 registers and no spills (``tools/check_cuda_compile.sh`` prints
this for each compiled set). What the three CuPy kernels share (availability,
output layout, source assembly, chunking, NVRTC, device and host buffers) is
in :mod:`einsum_workbench.kernels.cupy.common`.

Not measured here (no GPU on the machine that wrote it): throughput, the
best block size and register cap; ``bench/gpu_validate.py`` measures them.
Not done: overlapping transfers with compute (streams, pinned host memory);
the copy-back path is bound by the host link, not by the kernel.

The same per-pair body compiles as plain C++ (:func:`host_source`, built by
:mod:`einsum_workbench.kernels.cupy.host_build` with g++) so tests on a machine
without a GPU run the exact device arithmetic, driven by the same chunking
code through :class:`HostBackend`.

Contract: :class:`einsum_workbench.kernels.contract.PairExpansion`.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.cupy.common import (
    DEFAULT_BLOCK_SIZE, DEFAULT_MAX_GPU_MEMORY, INPUT_VALUES_PER_PAIR, HostBuffers, NvrtcBackend, assemble_source,
    check_max_gpu_memory, nvrtc_module, nvrtc_options, output_offsets, pairs_per_chunk,
    per_dtype, unpack_outputs,
)
from einsum_workbench.kernels.cupy.common import gpu_unavailable_reason  # noqa: F401  (the registry's gpu_probe)
from einsum_workbench.kernels.cupy.host_build import build_library

KERNEL_FILE = "pair_expansion_kernel.cu"
HOST_HARNESS = "host_harness.cpp"
KERNEL_NAMES = per_dtype("wb_expand")
HOST_FUNCTIONS = per_dtype("wb_host_expand")
#: the host harness's C entry points (name, pointers, long longs): (r_ij, rotations, semiaxes, out, n_pairs,
#: out_stride) as the CUDA kernels; ``wb_host_num_outputs()`` gives the output count
HOST_ENTRY_POINTS = tuple((name, 4, 2) for name in HOST_FUNCTIONS.values())


# ------------------------------------------------------------ sources

def kernel_source(hypers: ExpansionHypers) -> str:
    """Complete CUDA C++ source of the fused kernels for ``hypers`` (what ``cupy.RawModule`` compiles)."""
    return assemble_source(KERNEL_FILE, hypers)


def host_source(hypers: ExpansionHypers) -> str:
    """The same per-pair body as plain C++ with C entry points (``host_harness.cpp``, for g++)."""
    return assemble_source(HOST_HARNESS, hypers)


# ------------------------------------------------------------ chunking

def bytes_per_pair(hypers: ExpansionHypers, dtype) -> int:
    """Bytes one pair's inputs and outputs occupy once (what a kernel must move)."""
    itemsize = np.dtype(dtype).itemsize
    return itemsize * (INPUT_VALUES_PER_PAIR + output_offsets(hypers)[-1])


def device_bytes_per_pair(hypers: ExpansionHypers, dtype) -> int:
    """Device bytes per pair of a chunk copied back: inputs, the kernel's
    component-major outputs and their pair-major reordering."""
    itemsize = np.dtype(dtype).itemsize
    return itemsize * (INPUT_VALUES_PER_PAIR + 2 * output_offsets(hypers)[-1])


def plan_chunks(n_pairs: int, hypers: ExpansionHypers, dtype, max_gpu_memory: int,
                keep_on_device: bool) -> int:
    """Pairs per chunk so that the device buffers stay within ``max_gpu_memory`` bytes.

    Without ``keep_on_device`` one chunk's inputs and two output buffers
    (component-major and pair-major) are on the device at a time:
    ``chunk * device_bytes_per_pair <= max_gpu_memory``. With it, every
    output stays on the device, so ``n_pairs * output bytes`` plus one chunk's
    inputs must fit.

    Returns
    -------
    int >= 1 (1 when ``n_pairs`` is 0).

    Raises
    ------
    ValueError
        ``max_gpu_memory`` is not a positive int, or too small for one pair
        (or, with ``keep_on_device``, for the outputs); the message gives the
        bytes needed.
    """
    check_max_gpu_memory(max_gpu_memory)
    itemsize = np.dtype(dtype).itemsize
    input_bytes = itemsize * INPUT_VALUES_PER_PAIR
    if keep_on_device:
        output_total = n_pairs * itemsize * output_offsets(hypers)[-1]
        room = int(max_gpu_memory) - output_total
        if room < input_bytes:
            raise ValueError(
                f"keep_on_device=True needs {output_total + input_bytes} bytes of device memory "
                f"({n_pairs} pairs x {itemsize * output_offsets(hypers)[-1]} output bytes + one pair's inputs), "
                f"more than max_gpu_memory={max_gpu_memory}; raise max_gpu_memory or copy back "
                f"(keep_on_device=False)"
            )
        return int(max(1, min(room // input_bytes, max(n_pairs, 1))))
    return pairs_per_chunk(n_pairs, device_bytes_per_pair(hypers, dtype), max_gpu_memory)


# ------------------------------------------------------------ the chunk loop

def _expand_with(backend, r_ij, rotations, semiaxes, hypers: ExpansionHypers, dtype,
                 max_gpu_memory: int, keep_on_device: bool):
    """The chunk loop shared by the GPU (:class:`CupyBackend`) and the host-compiled path (:class:`HostBackend`).

    Allocates one set of flat device buffers sized for the largest chunk and
    reuses them for every chunk (so the device footprint is the planned one).
    Without ``keep_on_device`` each chunk's ``(num_outputs, n)`` block is
    reordered on the device into pair-major ``(n, 2l+1, n_l)`` blocks (a
    second buffer of the same size), which are copied straight into slices
    of the NumPy results: no transposes on the host. With it, every chunk
    writes its columns of one ``(num_outputs, P)`` device block (kernel output
    stride P), whose per-l views are returned.
    """
    n_pairs = r_ij.shape[0]
    n_out = output_offsets(hypers)[-1]
    chunk = plan_chunks(n_pairs, hypers, dtype, max_gpu_memory, keep_on_device)
    d_in = backend.pair_buffers(chunk, dtype)
    if keep_on_device:
        d_all = backend.empty(n_out * n_pairs, dtype)
    else:
        d_out = backend.empty(n_out * chunk, dtype)
        d_pair_major = backend.empty(n_out * chunk, dtype)
        host_out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        n = stop - start
        backend.copy_pairs_in(d_in, (r_ij, rotations, semiaxes), slice(start, stop))
        if keep_on_device:
            backend.launch(*d_in, d_all[start:], n, n_pairs, dtype)
            continue
        backend.launch(*d_in, d_out, n, n, dtype)
        offset = 0
        for l, view in enumerate(unpack_outputs(d_out[: n_out * n].reshape(n_out, n), hypers, n)):
            target = d_pair_major[offset: offset + view.size]
            backend.gather(view, target)
            backend.copy_out(target, host_out[l][start:stop].reshape(-1))
            offset += view.size
    if keep_on_device:
        return unpack_outputs(d_all.reshape(n_out, n_pairs), hypers, n_pairs)
    return host_out


# ------------------------------------------------------------ GPU backend

@functools.lru_cache(maxsize=32)
def compiled_module(hypers: ExpansionHypers, max_registers: int | None = None):
    """``cupy.RawModule`` with ``wb_expand_f64`` and ``wb_expand_f32`` for ``hypers`` (cached
    per (hypers, max_registers); NVRTC compiles on first use, CuPy also caches on disk)."""
    return nvrtc_module(kernel_source(hypers), nvrtc_options(max_registers), f"the pair kernels for {hypers!r}")


class CupyBackend(NvrtcBackend):
    """CuPy device buffers and the NVRTC-compiled fused kernel (RuntimeError without a CUDA device).

    ``launch(r_ij, rotations, semiaxes, out, n_pairs, out_stride, dtype)``:
    pair p of the chunk, output o -> ``out[o * out_stride + p]``.
    """

    def __init__(self, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        super().__init__(compiled_module, hypers, block_size, max_registers)

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, dtype):
        self.launch_threads(KERNEL_NAMES[np.dtype(dtype)], n_pairs,
                            (r_ij, rotations, semiaxes, out, np.int64(n_pairs), np.int64(out_stride)))


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
           max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY, keep_on_device: bool = False,
           block_size: int = DEFAULT_BLOCK_SIZE, max_registers: int | None = None):
    """Raw expansion coefficients of every pair, one CUDA thread per pair.

    The pair-expansion contract
    (:class:`einsum_workbench.kernels.contract.PairExpansion`); float32
    computes everything on the device in float32. Options:

    Parameters
    ----------
    max_gpu_memory : int, bytes
        Bound on the device memory this call allocates (default 1 GiB): one
        chunk's inputs and two copies of its outputs (kernel layout and
        pair-major), or with ``keep_on_device`` all outputs plus one chunk's
        inputs. CuPy's memory pool may hold the freed blocks for
        reuse afterwards.
    keep_on_device : bool
        Return CuPy arrays on the current device instead of NumPy arrays. They
        have the contract's shapes but are strided views of one component-major
        ``(num_outputs, P)`` device buffer (no copy; use
        ``cupy.ascontiguousarray`` if C order is needed).
    block_size : int
        CUDA threads per block (default 128).
    max_registers : None or int in 16..255
        NVRTC ``--maxrregcount`` cap per thread (None: the compiler's choice;
        at lmax 6 float64 it uses 232 registers on sm_90, no spills). A cap
        raises occupancy at the price of spills; ``bench/gpu_validate.py``
        times a few.

    Returns
    -------
    as the contract (NumPy arrays, or CuPy arrays with ``keep_on_device``).

    Raises
    ------
    as the contract: ValueError for a bad ``max_gpu_memory``, ``block_size``
    or ``max_registers``; RuntimeError when no CUDA device is usable.
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    backend = CupyBackend(hypers, block_size, max_registers)
    return _expand_with(backend, r_ij, rotations, semiaxes, hypers, dtype, max_gpu_memory, keep_on_device)


# ------------------------------------------------------------ host-compiled path (tests)

class HostBackend(HostBuffers):
    """The chunk loop on the host: NumPy buffers stand for device memory and
    the g++-compiled per-pair body (:func:`host_source`, entry points
    :data:`HOST_ENTRY_POINTS`) for the kernel.

    Tests only: it checks the device arithmetic and the host-side chunking
    logic on a machine without a GPU. ``peak_bytes`` records the largest total
    of live "device" buffers, ``launches`` the pair count of each launch.
    """

    def __init__(self, hypers: ExpansionHypers):
        self.library = build_library(host_source(hypers), f"the CUDA per-pair body for {hypers!r}", HOST_ENTRY_POINTS,
                                     "wb_host_num_outputs", output_offsets(hypers)[-1])
        self.launches: list[int] = []

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, dtype):
        self.launches.append(int(n_pairs))
        if n_pairs == 0:
            return
        self.check_launch_buffers((r_ij, rotations, semiaxes, out), (dtype,) * 4)
        n_out = self.library.wb_host_num_outputs()
        if out.size < (n_out - 1) * out_stride + n_pairs:
            raise ValueError(f"output buffer of {out.size} values too small for {n_pairs} pairs at stride {out_stride}")
        function = getattr(self.library, HOST_FUNCTIONS[np.dtype(dtype)])
        function(r_ij.ctypes.data, rotations.ctypes.data, semiaxes.ctypes.data, out.ctypes.data,
                 ctypes.c_longlong(n_pairs), ctypes.c_longlong(out_stride))


def expand_host_compiled(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                         max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY, keep_on_device: bool = False,
                         backend: HostBackend | None = None):
    """``expand`` with the device per-pair body compiled for the CPU by g++.

    Same validation, chunk plan, buffers and output layout as :func:`expand`;
    only the buffers are NumPy arrays and the "launch" is a C++ loop calling
    the same ``wb::expand_pair``. For tests and for checking a new
    hyper-parameter set without a GPU; not a fast path.

    Parameters
    ----------
    as :func:`expand`; ``backend`` may be a :class:`HostBackend` to inspect
    its launches and peak buffer bytes afterwards.

    Returns
    -------
    list over l of (P, 2l+1, num_radial[l]) NumPy arrays of ``dtype``.

    Raises
    ------
    ValueError on malformed input; RuntimeError when g++ is missing or the
    source does not compile (the compiler's output is included).
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    backend = backend if backend is not None else HostBackend(hypers)
    return _expand_with(backend, r_ij, rotations, semiaxes, hypers, dtype, max_gpu_memory, keep_on_device)

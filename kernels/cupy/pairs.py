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
(struct ``wb::Spec``, :func:`generate_spec_source`): fixed indices let the
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
this for each compiled set).

Not measured here (no GPU on the machine that wrote it): throughput, the
best block size and register cap; ``bench/gpu_validate.py`` measures them.
Not done: overlapping transfers with compute (streams, pinned host memory);
the copy-back path is bound by the host link, not by the kernel.

The same per-pair body compiles as plain C++
(:mod:`einsum_workbench.kernels.cupy.host_build`, g++) so tests on a machine
without a GPU run the exact device arithmetic, driven by the same chunking
code through :class:`HostBackend`.

Contract: :class:`einsum_workbench.kernels.contract.PairExpansion`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import time
from pathlib import Path

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.cupy.host_build import HOST_CXX_FLAGS, compile_host_library, host_compiler  # noqa: F401  (re-exported)
from einsum_workbench.kernels.cupy.host_build import build_pair_library as build_host_library
from einsum_workbench.kernels.tables import compact_solid_harmonics, num_monomials, recurrence_table

logger = logging.getLogger(__name__)

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
KERNEL_FILE = "pair_expansion_kernel.cu"
HOST_HARNESS = "host_harness.cpp"
SPEC_INCLUDE = "wb_spec.cuh"

DEFAULT_MAX_GPU_MEMORY = 2**30  # bytes of device memory one call may allocate
DEFAULT_BLOCK_SIZE = 128        # threads per block
INPUT_VALUES_PER_PAIR = 3 + 9 + 3  # r_ij, rotation, semi-axes
NVRTC_OPTIONS = ("--std=c++17",)  # CuPy adds -arch for the current device
KERNEL_NAMES = {np.dtype(np.float64): "wb_expand_f64", np.dtype(np.float32): "wb_expand_f32"}

NO_DEVICE_PARTS = "the RawKernel launch, device memory chunking and device timings did not run"
_HOST_TESTED = " (the device code's arithmetic is tested host-compiled in tests/kernels/cupy/test_pairs.py)"


# ---------------------------------------------------------------- availability

def gpu_unavailable_reason() -> str | None:
    """None when CuPy is importable and sees a CUDA device, else the reason (str).

    The reason says what did not run, and that the device arithmetic is
    still tested host-compiled (``tests/kernels/cupy/test_pairs.py``).
    """
    try:
        import cupy
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        return f"CuPy is not importable ({type(err).__name__}: {err}); {NO_DEVICE_PARTS}{_HOST_TESTED}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # cudaErrorNoDevice, cudaErrorInsufficientDriver (no driver), ...
        return f"no CUDA device: CuPy found none ({type(err).__name__}: {err}); {NO_DEVICE_PARTS}{_HOST_TESTED}"
    if count < 1:
        return f"no CUDA device: CuPy found none (getDeviceCount() = 0); {NO_DEVICE_PARTS}{_HOST_TESTED}"
    return None


# ------------------------------------------------------------ output layout

def output_offsets(hypers: ExpansionHypers) -> tuple[int, ...]:
    """Row offset of each l in the component-major output, plus the total.

    Returns tuple of length lmax + 2: ``offsets[l]`` is the first row of
    channel l (rows ordered l, then m = -l..l, then n); ``offsets[-1]`` is
    ``num_outputs`` = sum_l (2l+1) num_radial[l].
    """
    offsets = [0]
    for l, n in enumerate(hypers.num_radial):
        offsets.append(offsets[-1] + (2 * l + 1) * n)
    return tuple(offsets)


def unpack_outputs(block, hypers: ExpansionHypers, n_pairs: int) -> list:
    """Views ``(n_pairs, 2l+1, num_radial[l])`` per l of a ``(num_outputs, n_pairs)`` block.

    Works on NumPy and CuPy arrays alike (no copy: the views are strided).
    """
    offsets = output_offsets(hypers)
    return [
        block[offsets[l]: offsets[l + 1]].T.reshape(n_pairs, 2 * l + 1, n)
        for l, n in enumerate(hypers.num_radial)
    ]


# ------------------------------------------------------------ code generation

def _literal(value: float) -> str:
    """A C++ literal that reads back as exactly this float64."""
    text = repr(float(value))
    if not np.isfinite(value):
        raise ValueError(f"non-finite table value {value!r}")
    return text


def moment_recurrence(max_degree: int) -> list[tuple[int, str]]:
    """The moment recurrence as C++ expressions, in evaluation order.

    Entry ``(i, expr)`` means ``E[i] = expr`` for i = 1 .. num_monomials(max_degree) - 1
    (``E[0] = 1``), with ``expr`` over the centre ``a[3]``, the covariance
    ``S[3][3]`` and lower entries of ``E`` (template type ``T``), from
    ``kernels.tables.recurrence_table``: ``E[t] = a_k E[t - e_k] +
    sum_m S_km (t - e_k)_m E[t - e_k - e_m]``. Shared by the pair kernel's
    ``Spec::moments`` and the centre-density kernel's moment accumulation.
    """
    table = recurrence_table(max_degree)
    out = []
    for i in range(num_monomials(max_degree) - 1):
        k, parent = int(table.axis[i]), int(table.parent[i])
        terms = [f"a[{k}] * E[{parent}]"]
        for m in range(3):
            coef = float(table.coef[i, m])
            if coef == 0.0:
                continue
            factor = "" if coef == 1.0 else f"T({_literal(coef)}) * "
            terms.append(f"{factor}S[{k}][{m}] * E[{int(table.lower[i, m])}]")
        out.append((i + 1, " + ".join(terms)))
    return out


@functools.lru_cache(maxsize=64)
def generate_spec_source(hypers: ExpansionHypers) -> str:
    """C++ source of ``struct wb::Spec`` for one hyper-parameter set.

    ``moments<T>(centre, cov, E)`` fills ``E[0 .. num_monomials(max_degree))``
    by the recurrence ``E[t] = a_k E[t - e_k] + sum_m S_km (t - e_k)_m E[t - e_k - e_m]``
    (``kernels.tables.recurrence_table``); ``contract<T>(E, scale, out, stride)``
    writes ``out[o * stride] = scale * sum_j T[k_j, o] E[k_j]`` for every output
    o over the non-zeros of ``kernels.tables.compact_solid_harmonics``.
    Straight-line code: no loops, no index tables.

    Returns
    -------
    str, the content of ``wb_spec.cuh``.
    """
    start = time.perf_counter()
    max_degree = hypers.max_degree
    n_moments = num_monomials(max_degree)
    offsets = output_offsets(hypers)
    inv_sigma2 = 1.0 / hypers.sigma**2 if hypers.radial_basis == "gto" else 0.0
    lines = [
        "// Generated by einsum_workbench.kernels.cupy.pairs.generate_spec_source for",
        f"// {hypers!r}, num_radial={hypers.num_radial}",
        "#ifndef WB_SPEC_CUH",
        "#define WB_SPEC_CUH",
        "namespace wb {",
        "struct Spec {",
        f"    static constexpr int lmax = {hypers.lmax};",
        f"    static constexpr int max_degree = {max_degree};",
        f"    static constexpr int num_moments = {n_moments};",
        f"    static constexpr int num_outputs = {offsets[-1]};",
        f"    static constexpr double inv_sigma2 = {_literal(inv_sigma2)};",
        "",
        "    template <typename T>",
        "    __host__ __device__ static inline void moments(const T a[3], const T S[3][3], T* E) {",
        "        E[0] = T(1);",
    ]
    for target, expression in moment_recurrence(max_degree):
        lines.append(f"        E[{target}] = {expression};")
    lines += [
        "    }",
        "",
        "    template <typename T>",
        "    __host__ __device__ static inline void contract(const T* E, T scale, T* out, long long stride) {",
    ]
    for l, compact in enumerate(compact_solid_harmonics(hypers)):
        n_l = hypers.num_radial[l]
        for m in range(2 * l + 1):
            for n in range(n_l):
                o = offsets[l] + m * n_l + n
                column = compact[:, m, n]
                terms = [f"T({_literal(column[k])}) * E[{k}]" for k in np.flatnonzero(column)]
                total = " + ".join(terms) if terms else "T(0)"
                lines.append(f"        out[{o}LL * stride] = scale * ({total});")
    lines += ["    }", "};", "}  // namespace wb", "#endif  // WB_SPEC_CUH", ""]
    logger.info("generated wb::Spec for %r: %d lines in %.2f s", hypers, len(lines), time.perf_counter() - start)
    return "\n".join(lines)


_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def assemble_source(main_file: str, hypers: ExpansionHypers, generated: dict | None = None) -> str:
    """One translation unit: ``kernels/cupy/cuda/<main_file>`` with its local includes inlined.

    ``#include "pair_expansion.cuh"`` is replaced by that file and
    ``#include "wb_spec.cuh"`` by :func:`generate_spec_source`, so NVRTC, nvcc
    and g++ compile the same text without include paths. ``generated`` maps
    further include names to generated text (e.g. the centre-density kernel's
    ``wb_density_spec.cuh``); other names are read from ``kernels/cupy/cuda/``.

    Raises
    ------
    FileNotFoundError naming a missing source file.
    """
    spec = generate_spec_source(hypers)
    generated = dict(generated or {})

    def include(match):
        name = match.group(1)
        if name == SPEC_INCLUDE:
            return spec
        if name in generated:
            return generated[name]
        return _read_cuda_file(name)

    return _INCLUDE.sub(include, _read_cuda_file(main_file))


def _read_cuda_file(name: str) -> str:
    path = CUDA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {name!r} not found in {CUDA_DIR}")
    return path.read_text()


def kernel_source(hypers: ExpansionHypers) -> str:
    """Complete CUDA C++ source of the fused kernels for ``hypers``."""
    return assemble_source(KERNEL_FILE, hypers)


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


def check_max_gpu_memory(max_gpu_memory) -> None:
    """Raise ValueError unless ``max_gpu_memory`` is a positive int (bytes), naming it."""
    if isinstance(max_gpu_memory, bool) or not isinstance(max_gpu_memory, (int, np.integer)) \
            or max_gpu_memory <= 0:
        raise ValueError(f"max_gpu_memory must be a positive number of bytes (int), got {max_gpu_memory!r}")


def pairs_per_chunk(n_pairs: int, bytes_per_pair: int, max_gpu_memory: int) -> int:
    """The most pairs whose ``bytes_per_pair`` each fit ``max_gpu_memory`` (at least 1, at most
    ``max(n_pairs, 1)``).

    Raises
    ------
    ValueError
        a bad ``max_gpu_memory`` or one smaller than one pair needs (the bytes are named).
    """
    check_max_gpu_memory(max_gpu_memory)
    if int(max_gpu_memory) < bytes_per_pair:
        raise ValueError(f"max_gpu_memory={max_gpu_memory} bytes is less than one pair needs ({bytes_per_pair} bytes)")
    return int(max(1, min(int(max_gpu_memory) // bytes_per_pair, max(n_pairs, 1))))


class _Backend:
    """What the chunk loop needs from a device: buffers, copies, a kernel launch.

    Subclasses: :class:`CupyBackend` (the GPU) and :class:`HostBackend`
    (NumPy buffers and the g++-compiled per-pair body; tests only).
    """

    def empty(self, size: int, dtype):  # flat device buffer
        raise NotImplementedError

    def copy_in(self, host, device_flat):  # host C-contiguous -> device_flat[:host.size]
        raise NotImplementedError

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs: int, out_stride: int, dtype):
        # pair p of the chunk, output o -> out[o * out_stride + p]
        raise NotImplementedError

    def gather(self, view, device_flat):  # strided device view -> contiguous device_flat, C order
        raise NotImplementedError

    def copy_out(self, device_flat, host_flat):  # device_flat -> host_flat (same size)
        raise NotImplementedError


def _expand_with(backend: _Backend, r_ij, rotations, semiaxes, hypers: ExpansionHypers, dtype,
                 max_gpu_memory: int, keep_on_device: bool):
    """The chunk loop shared by the GPU and the host-compiled path.

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
    d_r = backend.empty(3 * chunk, dtype)
    d_rot = backend.empty(9 * chunk, dtype)
    d_axes = backend.empty(3 * chunk, dtype)
    if keep_on_device:
        d_all = backend.empty(n_out * n_pairs, dtype)
    else:
        d_out = backend.empty(n_out * chunk, dtype)
        d_pair_major = backend.empty(n_out * chunk, dtype)
        host_out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        n = stop - start
        backend.copy_in(r_ij[start:stop], d_r)
        backend.copy_in(rotations[start:stop], d_rot)
        backend.copy_in(semiaxes[start:stop], d_axes)
        if keep_on_device:
            backend.launch(d_r, d_rot, d_axes, d_all[start:], n, n_pairs, dtype)
            continue
        backend.launch(d_r, d_rot, d_axes, d_out, n, n, dtype)
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

def nvrtc_options(max_registers: int | None = None) -> tuple[str, ...]:
    """NVRTC options of the module (CuPy adds ``-arch`` for the current device).

    Raises ValueError for a register cap outside 16..255.
    """
    if max_registers is None:
        return NVRTC_OPTIONS
    if isinstance(max_registers, bool) or not isinstance(max_registers, (int, np.integer)) \
            or not 16 <= max_registers <= 255:
        raise ValueError(f"max_registers must be None or an int in 16..255, got {max_registers!r}")
    return NVRTC_OPTIONS + (f"--maxrregcount={int(max_registers)}",)


@functools.lru_cache(maxsize=32)
def compiled_module(hypers: ExpansionHypers, max_registers: int | None = None):
    """``cupy.RawModule`` with ``wb_expand_f64`` and ``wb_expand_f32`` for ``hypers`` (cached
    per (hypers, max_registers); NVRTC compiles on first use, CuPy also caches on disk)."""
    return nvrtc_module(kernel_source(hypers), nvrtc_options(max_registers), f"the pair kernels for {hypers!r}")


def nvrtc_module(source: str, options: tuple, what: str):
    """``cupy.RawModule`` of ``source``, compiled now (NVRTC, or CuPy's disk
    cache) so that the log gives the compile time."""
    import cupy

    start = time.perf_counter()
    module = cupy.RawModule(code=source, options=options)
    if hasattr(module, "compile"):  # CuPy >= 9; else it compiles at the first get_function
        module.compile()
    logger.info("NVRTC compiled %s (options %s) in %.2f s (CuPy's disk cache may have served it)",
                what, " ".join(options), time.perf_counter() - start)
    return module


def check_block_size(block_size) -> int:
    """``block_size`` as an int, or ValueError naming it unless it is 1..1024 threads."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or not 1 <= block_size <= 1024:
        raise ValueError(f"block_size must be an int in 1..1024 threads, got {block_size!r}")
    return int(block_size)


class CupyBackend(_Backend):
    """CuPy device buffers and the NVRTC-compiled fused kernel."""

    def __init__(self, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        import cupy

        check_block_size(block_size)
        nvrtc_options(max_registers)  # validates before compiling
        self.cupy = cupy
        self.module = compiled_module(hypers, max_registers)
        self.block_size = int(block_size)

    def empty(self, size, dtype):
        return self.cupy.empty(int(size), dtype=dtype)

    def copy_in(self, host, device_flat):
        device_flat[: host.size].set(np.ascontiguousarray(host).reshape(-1))

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, dtype):
        if n_pairs == 0:
            return
        kernel = self.module.get_function(KERNEL_NAMES[np.dtype(dtype)])
        grid = (n_pairs + self.block_size - 1) // self.block_size
        kernel((grid,), (self.block_size,),
               (r_ij, rotations, semiaxes, out, np.int64(n_pairs), np.int64(out_stride)))

    def gather(self, view, device_flat):
        device_flat.reshape(view.shape)[...] = view  # one elementwise copy kernel

    def copy_out(self, device_flat, host_flat):
        device_flat.get(out=host_flat)


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
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cupy_batched needs a CUDA device: {reason}")
    backend = CupyBackend(hypers, block_size, max_registers)
    return _expand_with(backend, r_ij, rotations, semiaxes, hypers, dtype, max_gpu_memory, keep_on_device)


# ------------------------------------------------------------ host-compiled path (tests)

class HostBuffers:
    """NumPy buffers standing for device memory in the host-compiled backends (tests only):
    ``peak_bytes`` records the largest total of live "device" buffers."""

    allocated_bytes = 0
    peak_bytes = 0

    def empty(self, size, dtype):
        buffer = np.empty(int(size), dtype=dtype)
        self.allocated_bytes += buffer.nbytes
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
        return buffer

    def copy_in(self, host, device_flat):
        device_flat[: host.size] = np.ascontiguousarray(host).reshape(-1)


class HostBackend(HostBuffers, _Backend):
    """The chunk loop on the host: NumPy buffers stand for device memory and
    the g++-compiled per-pair body
    (:func:`einsum_workbench.kernels.cupy.host_build.build_pair_library`) for the kernel.

    Tests only: it checks the device arithmetic and the host-side chunking
    logic on a machine without a GPU. ``peak_bytes`` records the largest total
    of live "device" buffers, ``launches`` the pair count of each launch.
    """

    def __init__(self, hypers: ExpansionHypers):
        self.library = build_host_library(hypers)
        self.launches: list[int] = []

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, dtype):
        self.launches.append(int(n_pairs))
        if n_pairs == 0:
            return
        function = self.library.wb_host_expand_f64 if np.dtype(dtype) == np.float64 \
            else self.library.wb_host_expand_f32
        for a in (r_ij, rotations, semiaxes, out):
            if a.dtype != np.dtype(dtype) or not a.flags.c_contiguous:
                raise ValueError(f"host launch needs C-contiguous {np.dtype(dtype)} buffers, got {a.dtype}")
        n_out = self.library.wb_host_num_outputs()
        if out.size < (n_out - 1) * out_stride + n_pairs:
            raise ValueError(f"output buffer of {out.size} values too small for {n_pairs} pairs at stride {out_stride}")
        function(r_ij.ctypes.data, rotations.ctypes.data, semiaxes.ctypes.data, out.ctypes.data,
                 ctypes.c_longlong(n_pairs), ctypes.c_longlong(out_stride))

    def gather(self, view, device_flat):
        device_flat.reshape(view.shape)[...] = view

    def copy_out(self, device_flat, host_flat):
        host_flat[...] = device_flat


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


# ------------------------------------------------------------ hyper-parameter sets of the compile check

def representative_hypers() -> dict[str, ExpansionHypers]:
    """Hyper-parameter sets whose kernels CI compiles for sm_90 (name -> hypers)."""
    return {
        "lmax6_gto_default": ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5),
        "lmax10_gto_default": ExpansionHypers(10, "gto", cutoff=7.0, sigma=1.5),
        "lmax8_monomial_list": ExpansionHypers(8, "monomial", cutoff=7.0,
                                               max_radial=[3, 2, 2, 1, 1, 1, 0, 0, 0]),
        "lmax0_gto_int": ExpansionHypers(0, "gto", cutoff=7.0, sigma=1.5, max_radial=2),
    }

"""What the three CuPy/CUDA kernels (pairs, centre density, gradients) share.

- availability: :func:`gpu_unavailable_reason` (the registry's ``gpu_probe``);
- the per-pair output layout: :func:`output_offsets`, :func:`unpack_outputs`
  (component-major rows flat over (l, m, n), one column per pair or run);
- source generation and assembly: :func:`generate_spec_source` (``wb::Spec``,
  the generated moment recurrence and sparse contraction every kernel
  includes), :func:`moment_recurrence`, :func:`float_literal` and
  :func:`assemble_source`, which inlines the local includes of a file of
  ``kernels/cupy/cuda/`` (:data:`CUDA_DIR`);
- chunking and option checks: :func:`pairs_per_chunk`,
  :func:`check_max_gpu_memory`, :func:`check_positive_int`,
  :func:`check_block_size`, :func:`nvrtc_options`;
- NVRTC compilation: :func:`nvrtc_module`;
- device and host buffers for the chunk loops (:class:`Buffers`):
  :class:`NvrtcBackend` (CuPy memory and one NVRTC module's kernels) and
  :class:`HostBuffers` (NumPy arrays standing for device memory in the
  host-compiled tests).

Importing this module imports no CuPy (the GPU parts import it when used).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.tables import compact_solid_harmonics, num_monomials, recurrence_table

logger = logging.getLogger(__name__)

CUDA_DIR = Path(__file__).resolve().parent / "cuda"  # the device sources, kernels/cupy/cuda/
SPEC_INCLUDE = "wb_spec.cuh"  # the include that generate_spec_source's text replaces

DEFAULT_MAX_GPU_MEMORY = 2**30  # bytes of device memory one call may allocate
DEFAULT_BLOCK_SIZE = 128        # threads per block
INPUT_VALUES_PER_PAIR = 3 + 9 + 3  # r_ij, rotation, semi-axes
NVRTC_OPTIONS = ("--std=c++17",)  # CuPy adds -arch for the current device

#: what no GPU means for the tests; :data:`HOST_TESTED` says what still ran
NO_DEVICE_PARTS = "the RawKernel launch, device memory chunking and device timings did not run"
HOST_TESTED = " (the device code's arithmetic is tested host-compiled in tests/kernels/cupy/test_pairs.py)"


def per_dtype(prefix: str) -> dict:
    """``{float64: prefix + "_f64", float32: prefix + "_f32"}``: the names of a kernel's two instantiations."""
    return {np.dtype(np.float64): f"{prefix}_f64", np.dtype(np.float32): f"{prefix}_f32"}


# ---------------------------------------------------------------- availability

def gpu_unavailable_reason(host_tested: str = HOST_TESTED) -> str | None:
    """None when CuPy is importable and sees a CUDA device, else the reason (str).

    The reason says what did not run (:data:`NO_DEVICE_PARTS`) and, in
    ``host_tested`` (default :data:`HOST_TESTED`), where the device arithmetic
    is still tested host-compiled.
    """
    try:
        import cupy
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        return f"CuPy is not importable ({type(err).__name__}: {err}); {NO_DEVICE_PARTS}{host_tested}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # cudaErrorNoDevice, cudaErrorInsufficientDriver (no driver), ...
        return f"no CUDA device: CuPy found none ({type(err).__name__}: {err}); {NO_DEVICE_PARTS}{host_tested}"
    if count < 1:
        return f"no CUDA device: CuPy found none (getDeviceCount() = 0); {NO_DEVICE_PARTS}{host_tested}"
    return None


# ---------------------------------------------------------------- output layout

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


# ---------------------------------------------------------------- code generation

def float_literal(value: float) -> str:
    """A C++ literal that reads back as exactly this float64 (``repr``); ValueError if not finite."""
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
            factor = "" if coef == 1.0 else f"T({float_literal(coef)}) * "
            terms.append(f"{factor}S[{k}][{m}] * E[{int(table.lower[i, m])}]")
        out.append((i + 1, " + ".join(terms)))
    return out


@functools.lru_cache(maxsize=64)
def generate_spec_source(hypers: ExpansionHypers) -> str:
    """C++ source of ``struct wb::Spec`` for one hyper-parameter set (every kernel includes it).

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
        "// Generated by einsum_workbench.kernels.cupy.common.generate_spec_source for",
        f"// {hypers!r}, num_radial={hypers.num_radial}",
        "#ifndef WB_SPEC_CUH",
        "#define WB_SPEC_CUH",
        "namespace wb {",
        "struct Spec {",
        f"    static constexpr int lmax = {hypers.lmax};",
        f"    static constexpr int max_degree = {max_degree};",
        f"    static constexpr int num_moments = {n_moments};",
        f"    static constexpr int num_outputs = {offsets[-1]};",
        f"    static constexpr double inv_sigma2 = {float_literal(inv_sigma2)};",
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
                terms = [f"T({float_literal(column[k])}) * E[{k}]" for k in np.flatnonzero(column)]
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
    ``wb_density_spec.cuh``); other names are read from :data:`CUDA_DIR`.

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


# ---------------------------------------------------------------- options and chunking

def _is_int_in(value, low, high) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and low <= value <= high


def check_positive_int(value, name: str, unit: str) -> int:
    """``value`` as an int, or ValueError "``name`` must be a positive number of ``unit`` (int), got ..."."""
    if not _is_int_in(value, 1, np.inf):
        raise ValueError(f"{name} must be a positive number of {unit} (int), got {value!r}")
    return int(value)


def check_max_gpu_memory(max_gpu_memory) -> int:
    """``max_gpu_memory`` as an int, or ValueError naming it unless it is a positive int (bytes)."""
    return check_positive_int(max_gpu_memory, "max_gpu_memory", "bytes")


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


def check_block_size(block_size) -> int:
    """``block_size`` as an int, or ValueError naming it unless it is 1..1024 threads."""
    if not _is_int_in(block_size, 1, 1024):
        raise ValueError(f"block_size must be an int in 1..1024 threads, got {block_size!r}")
    return int(block_size)


def nvrtc_options(max_registers: int | None = None) -> tuple[str, ...]:
    """NVRTC options of a module (CuPy adds ``-arch`` for the current device).

    Raises ValueError for a register cap outside 16..255.
    """
    if max_registers is None:
        return NVRTC_OPTIONS
    if not _is_int_in(max_registers, 16, 255):
        raise ValueError(f"max_registers must be None or an int in 16..255, got {max_registers!r}")
    return NVRTC_OPTIONS + (f"--maxrregcount={int(max_registers)}",)


# ---------------------------------------------------------------- NVRTC and device buffers

def nvrtc_module(source: str, options: tuple, what: str):
    """``cupy.RawModule`` of ``source``, compiled now (NVRTC, or CuPy's disk
    cache) so that the log gives the compile time; ``what`` names it in the log."""
    import cupy

    start = time.perf_counter()
    module = cupy.RawModule(code=source, options=options)
    if hasattr(module, "compile"):  # CuPy >= 9; else it compiles at the first get_function
        module.compile()
    logger.info("NVRTC compiled %s (options %s) in %.2f s (CuPy's disk cache may have served it)",
                what, " ".join(options), time.perf_counter() - start)
    return module


class Buffers:
    """What the chunk loops need from a device's memory: flat buffers (``empty(size, dtype)``),
    ``copy_in(host, device_flat)`` (host C order into the buffer's start),
    ``gather(view, device_flat)`` (a strided device view into a contiguous buffer, on the
    device) and ``copy_out(device_flat, host_flat)`` (device to host, same size); the pair
    inputs' buffers on top of them. Subclasses: :class:`NvrtcBackend` (CuPy),
    :class:`HostBuffers` (NumPy, tests)."""

    def pair_buffers(self, capacity: int, dtype) -> tuple:
        """Flat buffers for ``capacity`` pairs' inputs: r_ij (3 values), rotation (9), semi-axes (3)."""
        return tuple(self.empty(k * capacity, dtype) for k in (3, 9, 3))

    def copy_pairs_in(self, buffers: tuple, pairs: tuple, selection) -> tuple:
        """``selection`` (a slice or index array) of each of ``pairs`` = (r_ij, rotations, semiaxes)
        into the :meth:`pair_buffers` ``buffers``; returns ``buffers``."""
        for host, device in zip(pairs, buffers):
            self.copy_in(host[selection], device)
        return buffers


class NvrtcBackend(Buffers):
    """CuPy device memory and the kernels of one NVRTC module: the GPU side of every chunk loop.

    ``compile_module(hypers, max_registers)`` returns the ``cupy.RawModule``
    (each kernel module's cached ``compiled_module``); buffers are flat CuPy
    arrays (:class:`Buffers`).

    Raises RuntimeError "<:attr:`needs_device`>: <why>" when no CUDA device is usable
    (:func:`gpu_unavailable_reason` with the subclass's :attr:`host_tested` note),
    then ValueError for a bad ``block_size`` or ``max_registers`` (before compiling).
    """

    needs_device = "cupy_batched needs a CUDA device"  # the start of the no-device error
    host_tested = HOST_TESTED                          # where the device code is tested without a device

    def __init__(self, compile_module, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        reason = gpu_unavailable_reason(self.host_tested)
        if reason is not None:
            raise RuntimeError(f"{self.needs_device}: {reason}")
        import cupy

        check_block_size(block_size)
        nvrtc_options(max_registers)  # validates before compiling
        self.cupy = cupy
        self.module = compile_module(hypers, max_registers)
        self.block_size = int(block_size)

    def empty(self, size, dtype):
        return self.cupy.empty(int(size), dtype=dtype)

    def copy_in(self, host, device_flat):
        device_flat[: host.size].set(np.ascontiguousarray(host).reshape(-1))

    def gather(self, view, device_flat):
        device_flat.reshape(view.shape)[...] = view  # one elementwise copy kernel

    def copy_out(self, device_flat, host_flat):
        device_flat.get(out=host_flat)

    def launch_threads(self, kernel_name: str, n_threads: int, args: tuple, block_size: int | None = None):
        """Launch ``kernel_name`` with one thread per item (``n_threads`` of them; none when 0)."""
        if n_threads == 0:
            return
        block = self.block_size if block_size is None else block_size
        kernel = self.module.get_function(kernel_name)
        kernel(((n_threads + block - 1) // block,), (block,), args)


class HostBuffers(Buffers):
    """NumPy buffers standing for device memory in the host-compiled backends (tests only),
    with the operations of :class:`Buffers`: ``peak_bytes`` records the largest total of
    live "device" buffers."""

    allocated_bytes = 0
    peak_bytes = 0

    def empty(self, size, dtype):
        buffer = np.empty(int(size), dtype=dtype)
        self.allocated_bytes += buffer.nbytes
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
        return buffer

    def copy_in(self, host, device_flat):
        if host.size > device_flat.size:
            raise ValueError(f"copy of {host.size} values into a buffer of {device_flat.size}")
        device_flat[: host.size] = np.ascontiguousarray(host).reshape(-1)

    def gather(self, view, device_flat):
        device_flat.reshape(view.shape)[...] = view

    def copy_out(self, device_flat, host_flat):
        host_flat[...] = device_flat

    @staticmethod
    def check_launch_buffers(buffers, dtypes) -> None:
        """ValueError unless each buffer is C-contiguous with its dtype (what the C entry points read)."""
        for a, dt in zip(buffers, dtypes):
            if a.dtype != np.dtype(dt) or not a.flags.c_contiguous:
                raise ValueError(f"host launch needs C-contiguous {np.dtype(dt)} buffers, got {a.dtype}")

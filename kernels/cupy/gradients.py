"""``cupy_batched`` gradients: values and derivatives of the pair coefficients, one CUDA thread per pair.

Contract: :class:`einsum_workbench.reference.gradients.PairGradients` (registry
problem ``"gradients"``): per l the values ``(P, 2l+1, n_l)`` and the
derivatives ``(P, 3, 2l+1, n_l)`` along r_ij, along infinitesimal rotations of
the neighbour about each lab axis and, with ``semiaxes_gradients=True``, along
its body semi-axes.

Design
------
The per-pair body of :mod:`einsum_workbench.kernels.cupy.pairs` (``kernels/cupy/cuda/pair_expansion.cuh``
and its generated ``wb::Spec``: body-frame Gaussian, moment recurrence, sparse
contraction) computes the values; ``kernels/cupy/cuda/pair_gradients.cuh`` adds,
for each of the 6 (or 9) directions q, three scalars of the chain rule
(``dlog s``, ``da`` (3), ``dS`` (3x3 symmetric); formulas in
:mod:`einsum_workbench.reference.gradients`) and the derivative moments

``dE_q[t] = dlog s E[t] + sum_k da_k t_k E[t - e_k] + sum_{k<=m} dS_km c_km(t) E[t - e_k - e_m]``

(``c_kk = t_k (t_k - 1) / 2``, ``c_km = t_k t_m``), generated as straight-line
code contracted with the same non-zeros of ``T_l`` as the values
(``wb::GradSpec::derivative``, :func:`generate_grad_spec_source`): one moment
table, no second recurrence. The derivative code is ordered by degree (output
(l, m, n) reads only monomials of degree l + 2n), so only one degree's
derivative moments are live beside the moments: with the whole derivative
table computed first and then contracted by ``wb::Spec::contract`` (the first
version), nvcc for sm_90 at lmax 6 float64 used 255 registers and spilled 632
bytes; degree-ordered it uses 254 registers and spills 376 bytes (float32: 255
registers, no spills; lmax 8 monomial list float64: 255, 2,512 bytes; lmax 10
float64: 255, 8,704 bytes; nvcc 13.0, ``-Xptxas -v``). The rest is inherent to
one thread per pair: the 84 moments alone take 168 of the 255 registers in
float64. The loop over directions is not unrolled (``#pragma unroll 1``), so
the derivative code appears once in the kernel, not six or nine times.

Output on the device is component-major, ``(1 + n_directions) * num_outputs``
rows of ``n_pairs`` (block 0 the values, block 1 + q direction q; outputs flat
over (l, m, n) as in ``cupy_batched``): consecutive threads write consecutive
addresses. Per chunk and l the host receives each quantity as one contiguous
pair-major copy made on the device (``(n, 3, 2l+1, n_l)``), written straight
into the NumPy results. Chunks are sized so that the inputs, the kernel's
output and one reordered copy fit ``max_gpu_memory``.

Not measured here (no GPU on the machine that wrote it): throughput, block
size, register cap. Not done: ``keep_on_device``, streams.

The same body compiles as plain C++ (:func:`host_source`, g++ through
:mod:`einsum_workbench.kernels.cupy.host_build`):
:func:`expand_with_gradients_host_compiled` runs it with the same chunk loop,
for tests on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time

import numpy as np

from einsum_workbench.reference.gradients import PairGradients
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.cupy import common
from einsum_workbench.kernels.cupy.common import (
    DEFAULT_BLOCK_SIZE, DEFAULT_MAX_GPU_MEMORY, INPUT_VALUES_PER_PAIR, HostBuffers, NvrtcBackend, assemble_source,
    float_literal, nvrtc_module, nvrtc_options, output_offsets, pairs_per_chunk, per_dtype,
)
from einsum_workbench.kernels.cupy.host_build import build_library
from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents, num_monomials

logger = logging.getLogger(__name__)

KERNEL_FILE = "pair_gradients_kernel.cu"
HOST_HARNESS = "pair_gradients_host.cpp"
GRAD_SPEC_INCLUDE = "wb_grad_spec.cuh"
KERNEL_NAMES = per_dtype("wb_gradients")
HOST_FUNCTIONS = per_dtype("wb_host_gradients")
#: the host harness's C entry points (name, pointers, long longs): the arguments of the CUDA kernels,
#: ``n_directions`` as long long; ``wb_host_gradients_num_outputs()`` gives the output count
HOST_ENTRY_POINTS = tuple((name, 4, 3) for name in HOST_FUNCTIONS.values())

#: output blocks after the values, in kernel order (wb::gradient_direction)
QUANTITY_BLOCKS = ("positions", "orientations", "semiaxes")
DIRECTIONS = 6                # positions and orientations
DIRECTIONS_WITH_SEMIAXES = 9  # and semi-axes


HOST_TESTED = " (the gradient kernel's arithmetic is tested host-compiled in tests/kernels/cupy/test_gradients.py)"


def gpu_unavailable_reason() -> str | None:
    """None when CuPy sees a CUDA device, else why not (str): the registry's gpu_probe.

    :func:`einsum_workbench.kernels.cupy.common.gpu_unavailable_reason`, with
    the note on the host-compiled tests pointing at this kernel's tests.
    """
    return common.gpu_unavailable_reason(HOST_TESTED)


# ------------------------------------------------------------ code generation

def derivative_moment_terms(max_degree: int) -> list[list[tuple[float, str, int]]]:
    """The derivative-moment formula per monomial, as (coefficient, factor, lower index) terms.

    Entry i lists the terms of ``dE[i]`` in the flat monomial order of
    :mod:`einsum_workbench.kernels.tables`: ``(1, "dlog_scale", i)``, then
    ``(t_k, "da[k]", index(t - e_k))`` for t_k > 0, then ``(c_km(t),
    "dS[k][m]", index(t - e_k - e_m))`` for k <= m with ``c_kk = t_k (t_k -
    1) / 2``, ``c_km = t_k t_m`` when non-zero. Source: reference/gradients.py
    (moments of a normal law differentiated in its mean and covariance).
    """
    exponents = monomial_exponents(max_degree)
    index = {tuple(e): i for i, e in enumerate(exponents.tolist())}
    out = []
    for i, t in enumerate(exponents.tolist()):
        terms = [(1.0, "dlog_scale", i)]
        for k in range(3):
            if t[k] > 0:
                lower = list(t)
                lower[k] -= 1
                terms.append((float(t[k]), f"da[{k}]", index[tuple(lower)]))
        for k in range(3):
            for m in range(k, 3):
                coef = t[k] * (t[k] - 1) / 2 if k == m else t[k] * t[m]
                if coef == 0:
                    continue
                lower = list(t)
                lower[k] -= 1
                lower[m] -= 1
                terms.append((float(coef), f"dS[{k}][{m}]", index[tuple(lower)]))
        out.append(terms)
    return out


def _output_columns(hypers: ExpansionHypers) -> list[tuple[int, int, list[tuple[int, float]]]]:
    """Per output o (flat over l, m, n): (o, degree l + 2n, [(monomial k, T'[k, o]) non-zeros])."""
    offsets = output_offsets(hypers)
    exponents = monomial_exponents(hypers.max_degree)
    out = []
    for l, compact in enumerate(compact_solid_harmonics(hypers)):
        n_l = hypers.num_radial[l]
        for m in range(2 * l + 1):
            for n in range(n_l):
                nonzero = [(int(k), float(compact[k, m, n])) for k in np.flatnonzero(compact[:, m, n])]
                degree = l + 2 * n
                if any(int(exponents[k].sum()) != degree for k, _ in nonzero):
                    raise AssertionError(f"T_l column (l={l}, m={m}, n={n}) is not homogeneous of degree {degree}")
                out.append((offsets[l] + m * n_l + n, degree, nonzero))
    return out


@functools.lru_cache(maxsize=64)
def generate_grad_spec_source(hypers: ExpansionHypers) -> str:
    """C++ source of ``struct wb::GradSpec`` (``wb_grad_spec.cuh``) for one hyper-parameter set.

    ``derivative<T>(E, dlog_scale, da, dS, scale, out, stride)`` writes
    ``out[o * stride] = scale * sum_t T'[t, o] dE[t]`` for every output o, with
    ``dE`` by :func:`derivative_moment_terms` (``dS`` read on and above its
    diagonal only). Straight-line code, no loops, no index tables, ordered by
    degree: output (l, m, n) uses only monomials of degree l + 2n, so the
    derivative moments of one degree are computed, then the outputs of that
    degree are written, and at most one degree's derivative moments (28 at
    degree 6) are live at a time instead of the whole table (84 at lmax 6),
    which would not fit in registers beside the moments.

    Returns
    -------
    str
    """
    start = time.perf_counter()
    lines = [
        "// Generated by einsum_workbench.kernels.cupy.gradients.generate_grad_spec_source for",
        f"// {hypers!r}, num_radial={hypers.num_radial}",
        "#ifndef WB_GRAD_SPEC_CUH",
        "#define WB_GRAD_SPEC_CUH",
        "namespace wb {",
        "struct GradSpec {",
        f"    static constexpr int num_moments = {num_monomials(hypers.max_degree)};",
        "",
        "    template <typename T>",
        "    __host__ __device__ static inline void derivative(const T* E, T dlog_scale, const T da[3],",
        "                                                      const T dS[3][3], T scale, T* out,",
        "                                                      long long stride) {",
    ]
    terms = derivative_moment_terms(hypers.max_degree)
    columns = _output_columns(hypers)
    used = {k for _, _, nonzero in columns for k, _ in nonzero}  # no unused locals (-Werror)
    for degree in range(hypers.max_degree + 1):
        lines.append(f"        // degree {degree}")
        for i in range(num_monomials(degree - 1) if degree else 0, num_monomials(degree)):
            if i not in used:
                continue
            parts = [f"{factor} * E[{j}]" if coef == 1.0 else f"T({coef!r}) * {factor} * E[{j}]"
                     for coef, factor, j in terms[i]]
            lines.append(f"        const T dE{i} = {' + '.join(parts)};")
        for o, column_degree, nonzero in columns:
            if column_degree != degree:
                continue
            total = " + ".join(f"T({float_literal(c)}) * dE{k}" for k, c in nonzero) if nonzero else "T(0)"
            lines.append(f"        out[{o}LL * stride] = scale * ({total});")
    lines += ["    }", "};", "}  // namespace wb", "#endif  // WB_GRAD_SPEC_CUH", ""]
    logger.info("generated wb::GradSpec for %r: %d lines in %.2f s", hypers, len(lines), time.perf_counter() - start)
    return "\n".join(lines)


def kernel_source(hypers: ExpansionHypers) -> str:
    """Complete CUDA C++ source of ``wb_gradients_f64`` and ``wb_gradients_f32`` for ``hypers``."""
    return assemble_source(KERNEL_FILE, hypers, {GRAD_SPEC_INCLUDE: generate_grad_spec_source(hypers)})


def host_source(hypers: ExpansionHypers) -> str:
    """The same device body with the host harness (plain C++ for g++)."""
    return assemble_source(HOST_HARNESS, hypers, {GRAD_SPEC_INCLUDE: generate_grad_spec_source(hypers)})


# ------------------------------------------------------------ chunking

def direction_count(semiaxes_gradients) -> int:
    """Directions the kernel differentiates along: 6 (positions, orientations), 9 with
    ``semiaxes_gradients``; ValueError unless it is a bool."""
    if not isinstance(semiaxes_gradients, (bool, np.bool_)):
        raise ValueError(f"semiaxes_gradients must be a bool, got {semiaxes_gradients!r}")
    return DIRECTIONS_WITH_SEMIAXES if semiaxes_gradients else DIRECTIONS


def device_bytes_per_pair(hypers: ExpansionHypers, dtype, semiaxes_gradients: bool = False) -> int:
    """Device bytes per pair of a chunk: inputs, the kernel's output blocks
    (values and every direction) and one pair-major reordered copy of them."""
    n_blocks = 1 + direction_count(semiaxes_gradients)
    return np.dtype(dtype).itemsize * (INPUT_VALUES_PER_PAIR + 2 * n_blocks * output_offsets(hypers)[-1])


def plan_chunks(n_pairs: int, hypers: ExpansionHypers, dtype, max_gpu_memory: int,
                semiaxes_gradients: bool = False) -> int:
    """Pairs per chunk so that ``chunk * device_bytes_per_pair <= max_gpu_memory``
    (:func:`einsum_workbench.kernels.cupy.common.pairs_per_chunk`): an int >= 1, 1 when
    ``n_pairs`` is 0; ValueError for a ``max_gpu_memory`` that is not a positive int or is
    less than one pair needs (the message gives the bytes).
    """
    return pairs_per_chunk(n_pairs, device_bytes_per_pair(hypers, dtype, semiaxes_gradients), max_gpu_memory)


# ------------------------------------------------------------ backends and the chunk loop

def _empty_result(hypers: ExpansionHypers, n_pairs: int, dtype, n_directions: int) -> dict:
    shapes = [(2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
    result = {"values": [np.empty((n_pairs, *s), dtype=dtype) for s in shapes]}
    for quantity in QUANTITY_BLOCKS[: n_directions // 3]:
        result[quantity] = [np.empty((n_pairs, 3, *s), dtype=dtype) for s in shapes]
    return result


def _gradients_with(backend, r_ij, rotations, semiaxes, hypers: ExpansionHypers, dtype,
                    max_gpu_memory: int, n_directions: int) -> PairGradients:
    """The chunk loop shared by the GPU (:class:`CupyGradientBackend`) and the
    host-compiled path (:class:`HostGradientBackend`).

    One set of flat buffers sized for the largest chunk is reused for every
    chunk. Per chunk the kernel writes ``(1 + n_directions, num_outputs, n)``;
    per l and quantity the backend copies the pair-major view
    ``(n, [3,] 2l+1, n_l)`` into the NumPy result's slice.
    """
    n_pairs = r_ij.shape[0]
    offsets = output_offsets(hypers)
    n_out = offsets[-1]
    n_blocks = 1 + n_directions
    chunk = plan_chunks(n_pairs, hypers, dtype, max_gpu_memory, n_directions == DIRECTIONS_WITH_SEMIAXES)
    d_in = backend.pair_buffers(chunk, dtype)
    d_out = backend.empty(n_blocks * n_out * chunk, dtype)
    result = _empty_result(hypers, n_pairs, dtype, n_directions)
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        n = stop - start
        backend.copy_pairs_in(d_in, (r_ij, rotations, semiaxes), slice(start, stop))
        backend.launch(*d_in, d_out, n, n, n_directions, dtype)
        block = d_out[: n_blocks * n_out * n].reshape(n_blocks, n_out, n)
        for l, n_l in enumerate(hypers.num_radial):
            rows = block[:, offsets[l]: offsets[l + 1]].reshape(n_blocks, 2 * l + 1, n_l, n)
            backend.to_host(rows[0].transpose(2, 0, 1), result["values"][l][start:stop])
            for qi, quantity in enumerate(QUANTITY_BLOCKS[: n_directions // 3]):
                view = rows[1 + 3 * qi: 4 + 3 * qi].transpose(3, 0, 1, 2)  # (n, 3, 2l+1, n_l)
                backend.to_host(view, result[quantity][l][start:stop])
    return PairGradients(result["values"], result["positions"], result["orientations"], result.get("semiaxes"))


# ------------------------------------------------------------ GPU backend

@functools.lru_cache(maxsize=32)
def compiled_module(hypers: ExpansionHypers, max_registers: int | None = None):
    """``cupy.RawModule`` with ``wb_gradients_f64`` and ``wb_gradients_f32`` for ``hypers``
    (NVRTC, cached per (hypers, max_registers))."""
    return nvrtc_module(kernel_source(hypers), nvrtc_options(max_registers), f"the gradient kernels for {hypers!r}")


class CupyGradientBackend(NvrtcBackend):
    """CuPy device buffers and the NVRTC-compiled gradient kernel (RuntimeError without a CUDA device).

    ``launch(r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions, dtype)``:
    pair p, block b, output o -> ``out[(b * num_outputs + o) * out_stride + p]``;
    ``to_host(view, host)``: a strided device view into the C-contiguous host array of its shape.
    """

    needs_device = "cupy_batched gradients need a CUDA device"
    host_tested = HOST_TESTED

    def __init__(self, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        super().__init__(compiled_module, hypers, block_size, max_registers)

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions, dtype):
        self.launch_threads(KERNEL_NAMES[np.dtype(dtype)], n_pairs,
                            (r_ij, rotations, semiaxes, out, np.int64(n_pairs), np.int64(out_stride),
                             np.int32(n_directions)))

    def to_host(self, view, host):
        if view.size:
            self.cupy.ascontiguousarray(view).get(out=host)


def _check_options(hypers, semiaxes_gradients):
    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(f"hypers must be an ExpansionHypers, got {type(hypers).__name__}")
    return direction_count(semiaxes_gradients)


def expand_with_gradients(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                          semiaxes_gradients: bool = False, max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY,
                          block_size: int = DEFAULT_BLOCK_SIZE,
                          max_registers: int | None = None) -> PairGradients:
    """Raw pair coefficients and their derivatives, one CUDA thread per pair.

    The gradient contract (:mod:`einsum_workbench.reference.gradients`,
    formulas there); float32 computes everything on the device in float32.

    Parameters
    ----------
    r_ij : (P, 3) array, angstrom
    rotations : (P, 3, 3) array, body to lab
    semiaxes : (P, 3) array, angstrom
    hypers : ExpansionHypers
    dtype : None, float32 or float64 (None: the inputs' float type)
    semiaxes_gradients : bool, also the derivatives along the semi-axes
    max_gpu_memory : int, bytes
        Bound on the device memory one call allocates (default 1 GiB): one
        chunk's inputs, output blocks and one reordered copy of them
        (:func:`device_bytes_per_pair`).
    block_size : int, CUDA threads per block (default 128)
    max_registers : None or int in 16..255, NVRTC ``--maxrregcount``

    Returns
    -------
    PairGradients of NumPy arrays of ``dtype``: ``values[l]`` (P, 2l+1, n_l),
    ``positions[l]``, ``orientations[l]`` (and ``semiaxes[l]``) (P, 3, 2l+1, n_l).

    Raises
    ------
    ValueError on malformed pairs, a non-bool ``semiaxes_gradients`` or a bad
    ``max_gpu_memory`` / ``block_size`` / ``max_registers``; RuntimeError when
    no CUDA device is usable (the message says why).
    """
    n_directions = _check_options(hypers, semiaxes_gradients)
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    backend = CupyGradientBackend(hypers, block_size, max_registers)
    return _gradients_with(backend, r_ij, rotations, semiaxes, hypers, dtype, max_gpu_memory, n_directions)


# ------------------------------------------------------------ host-compiled path (tests)

class HostGradientBackend(HostBuffers):
    """The chunk loop on the host: NumPy buffers stand for device memory and the
    g++-compiled per-pair body for the kernel (tests only). ``peak_bytes``
    records the largest total of live "device" buffers, ``launches`` the pair
    count of each launch."""

    def __init__(self, hypers: ExpansionHypers):
        self.num_outputs = output_offsets(hypers)[-1]
        self.library = build_library(host_source(hypers), f"the CUDA gradient body for {hypers!r}", HOST_ENTRY_POINTS,
                                     "wb_host_gradients_num_outputs", self.num_outputs)
        self.launches: list[int] = []

    def launch(self, r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions, dtype):
        self.launches.append(int(n_pairs))
        if n_pairs == 0:
            return
        self.check_launch_buffers((r_ij, rotations, semiaxes, out), (dtype,) * 4)
        if out.size < ((1 + n_directions) * self.num_outputs - 1) * out_stride + n_pairs:
            raise ValueError(f"output buffer of {out.size} values too small for {n_pairs} pairs, "
                             f"{n_directions} directions at stride {out_stride}")
        function = getattr(self.library, HOST_FUNCTIONS[np.dtype(dtype)])
        function(r_ij.ctypes.data, rotations.ctypes.data, semiaxes.ctypes.data, out.ctypes.data,
                 ctypes.c_longlong(n_pairs), ctypes.c_longlong(out_stride), ctypes.c_longlong(n_directions))

    def to_host(self, view, host):
        host[...] = view


def expand_with_gradients_host_compiled(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None,
                                        semiaxes_gradients: bool = False,
                                        max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY,
                                        backend: HostGradientBackend | None = None) -> PairGradients:
    """:func:`expand_with_gradients` with the device body compiled for the CPU by g++.

    Same validation, chunk plan and output layout; the buffers are NumPy
    arrays and the "launch" is a C++ loop over pairs calling the same
    ``wb::expand_pair_gradients``. For tests without a GPU; not a fast path.

    Parameters
    ----------
    as :func:`expand_with_gradients` (no launch options); ``backend`` may be
    a :class:`HostGradientBackend` to inspect its launches and peak bytes.

    Returns
    -------
    PairGradients of NumPy arrays of ``dtype`` (shapes as the contract).

    Raises
    ------
    ValueError on malformed input; RuntimeError when g++ is missing or the
    source does not compile (the compiler's output is included).
    """
    n_directions = _check_options(hypers, semiaxes_gradients)
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    backend = backend if backend is not None else HostGradientBackend(hypers)
    return _gradients_with(backend, r_ij, rotations, semiaxes, hypers, dtype, max_gpu_memory, n_directions)

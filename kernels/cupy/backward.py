"""``cupy_batched`` backward: the centre density's vector-Jacobian product, one CUDA thread per pair.

Contract: registry problem ``"backward"``
(:class:`einsum_workbench.kernels.contract.CentreDensityBackward`,
:mod:`einsum_workbench.reference.backward`): given the cotangent ``g_l =
dL/drho_l`` of the centre density, per neighbour pair only ``dL/dr_ij``,
``dL/dtheta`` (and ``dL/dl_k``), 6 (9) numbers.

Design (DESIGN.md section 3, "Backward pass")
--------------------------------------------
A pair's coefficients are ``c = T' . M`` with ``M[t] = s E[x^t]`` (the pair
kernel's body-frame Gaussian and moments), so L depends on pair p only
through ``<gM_q, M_p>``, with the *moment cotangent* of its segment q

``gM_q[t] = sum_{l,m,n} (g_l W_l^T)[q, m, n] T'_l[t, m, n]``

(raw cotangent, :func:`~einsum_workbench.reference.backward.raw_cotangent`).
That is the one contraction with the solid-harmonic tables, done once per
*segment* on the host (:func:`moment_cotangent`: a scipy sparse product,
``T'`` has ~360 non-zeros at lmax 6) and sent to the device as a
``(rows, num_moments)`` table, 84 values per segment at lmax 6.

Per pair the kernel (``kernels/cupy/cuda/centre_density_backward.cuh``) runs
the body-frame Gaussian of ``pair_expansion.cuh`` and the moment recurrence
of ``wb::Spec::moments``, and projects the moments on its segment's row
(``wb::BackwardSpec::project``, generated straight-line code,
:func:`generate_backward_spec_source`): ``<gM, M>``, the three ``dL/da_k =
<gA_k, M>`` with ``gA_k[u] = (u_k + 1) gM[u + e_k]``, the three ``<gM, D_a M>``
with ``D_a`` the rotation generator ``(e_a x x) . grad`` on monomials and,
with semi-axes, the six ``dL/dS_ij`` (the lower moments of
:mod:`einsum_workbench.reference.gradients`). The derived vectors ``gA_k``,
``D_a^T gM`` and the second-order ones are never stored: their integer
factors are literals of the generated code, which reads each ``gM[t]`` once,
so a segment costs one row on the device, not 7 (13). The rotation term is
the monomial form of ``<L_a^T g, c>`` (``L_a`` the same generator on the
solid harmonics, ``T' D_a = L_a T'``): exact, no fitted table. The terms of
degree d are emitted right after the recurrence's degree d, so only the
moments of degrees d, d-1, d-2 are live. Then the chain rule in 3x3 algebra
(positions ``-a/sigma^2 <gM,M> + P^T dL/da``, ``P = I - S/sigma^2``;
orientations ``<gM, D M> - r x dL/dr``; semi-axes through ``dS = f u u^T``, as
``pair_gradients.cuh``), and 6 (9) numbers are written, component-major.
No per-pair coefficient or Jacobian reaches memory, no reduction, no atomics:
the result does not depend on the launch or the chunking.

Memory: chunks of pairs under ``max_gpu_memory`` (:func:`plan_chunks`), each
with its pairs' inputs, one int64 row index per pair, at most one table row
per pair (the chunk's segments: the window ``[min, max]`` of its segments
when that is no longer than the chunk, else only the distinct ones) and the
outputs. Pairs may come in any order; pairs of one segment that are adjacent
read the same row (on a GPU, one broadcast load per warp; not measured).

Supported as the ``cupy_batched`` centre density: both radial bases, every
radial-count form, float64 and float32 (computed on the device in float32;
``gM`` is formed in float64 on the host and rounded once), orthonormal or
raw rows; errors as every backward variant
(:func:`~einsum_workbench.reference.backward.check_backward_inputs`).

Registers (nvcc 13.0, sm_90, ``-Xptxas -v``; compiled, never launched):
lmax 6 float64 166 (with semi-axes 252), float32 96 (128), no spills; lmax 8
monomial list float64 252, no spills; lmax 10 float64 255 with 584 bytes of
spill stores (2,032 with semi-axes).

Not run on the machine that wrote it (no GPU there): the kernel on a device,
so neither its results there nor its throughput, best block size or register
cap; ``bench/lib/gpu_validate.py`` (:func:`~einsum_workbench.bench.gpu_validate.check_backward`,
``time_backward``) checks and times it where CuPy sees a GPU. Verified on
that machine: the device code compiled as plain C++ by g++ and driven by the
same chunk loop (:func:`centre_density_backward_host_compiled`, against the
reference and Torch autograd, ``tests/kernels/cupy/test_backward.py``), and
the RawModule source compiled for sm_90 by nvcc and NVRTC.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time

import numpy as np

from einsum_workbench.reference.backward import PairCotangents, check_backward_inputs, raw_cotangent
from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.cupy import common
from einsum_workbench.kernels.cupy.common import (
    DEFAULT_BLOCK_SIZE, DEFAULT_MAX_GPU_MEMORY, INPUT_VALUES_PER_PAIR, HostBuffers, NvrtcBackend, assemble_source,
    moment_recurrence, nvrtc_module, nvrtc_options, output_offsets, pairs_per_chunk,
)
from einsum_workbench.kernels.cupy.host_build import build_library
from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents, num_monomials

logger = logging.getLogger(__name__)

KERNEL_FILE = "centre_density_backward_kernel.cu"
HOST_HARNESS = "centre_density_backward_host.cpp"
BACKWARD_SPEC_INCLUDE = "wb_backward_spec.cuh"

_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
#: (dtype, semiaxes_gradients) -> CUDA kernel name
KERNEL_NAMES = {(dt, semi): f"wb_backward{'_semiaxes' if semi else ''}_{'f64' if dt.itemsize == 8 else 'f32'}"
                for dt in _DTYPES for semi in (False, True)}
#: (dtype, semiaxes_gradients) -> the host harness's C entry point (same arguments as the kernel)
HOST_FUNCTIONS = {key: name.replace("wb_", "wb_host_", 1) for key, name in KERNEL_NAMES.items()}
HOST_ENTRY_POINTS = tuple((name, 6, 2) for name in HOST_FUNCTIONS.values())

COMPONENTS = 6                # dL/dr (3), dL/dtheta (3)
COMPONENTS_WITH_SEMIAXES = 9  # and dL/dl (3)
ROW_INDEX_BYTES = 8           # int64 row of each pair in the moment-cotangent table

#: (e_a x x) . grad = sum of sign * x_gamma d/dx_beta over these (beta, gamma, sign), per lab axis a
_CROSS = (((1, 2, -1), (2, 1, 1)), ((0, 2, 1), (2, 0, -1)), ((0, 1, -1), (1, 0, 1)))
#: (i, j), i <= j, of the covariance projections, in their order
_COVARIANCE_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))

HOST_TESTED = (" (the backward kernel's arithmetic is tested host-compiled in "
               "tests/kernels/cupy/test_backward.py)")


def gpu_unavailable_reason() -> str | None:
    """None when CuPy sees a CUDA device, else why not (str): the registry's gpu_probe.

    :func:`einsum_workbench.kernels.cupy.common.gpu_unavailable_reason`, with
    the note on the host-compiled tests pointing at this kernel's tests.
    """
    return common.gpu_unavailable_reason(HOST_TESTED)


# ------------------------------------------------------------ the per-segment contraction (host)

@functools.lru_cache(maxsize=64)
def _projection_matrix(hypers: ExpansionHypers):
    """scipy CSR ``(num_moments, num_outputs)``: ``T'[t, o]`` with outputs o flat over (l, m, n)."""
    from scipy import sparse

    offsets = output_offsets(hypers)
    rows, columns, values = [], [], []
    for l, table in enumerate(compact_solid_harmonics(hypers)):
        t, m, n = np.nonzero(table)
        rows.append(t)
        columns.append(offsets[l] + m * hypers.num_radial[l] + n)
        values.append(table[t, m, n])
    shape = (num_monomials(hypers.max_degree), offsets[-1])
    return sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=shape)


def flat_cotangent(raw, hypers: ExpansionHypers) -> np.ndarray:
    """The raw cotangent as one ``(S, num_outputs)`` float64 array, outputs flat over (l, m, n).

    Parameters
    ----------
    raw : list over l of (S, 2l+1, num_radial[l]) float arrays (on raw rows)
    hypers : ExpansionHypers

    Returns
    -------
    (S, num_outputs) C-contiguous float64, column ``offsets[l] + m * num_radial[l] + n``
    (:func:`~einsum_workbench.kernels.cupy.common.output_offsets`) holding ``raw[l][:, m, n]``.
    """
    n_rows = raw[0].shape[0]
    blocks = [np.asarray(g, dtype=np.float64).reshape(n_rows, (2 * l + 1) * n)
              for l, (g, n) in enumerate(zip(raw, hypers.num_radial))]
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def moment_cotangent(flat, hypers: ExpansionHypers) -> np.ndarray:
    """``gM[q, t] = sum_o flat[q, o] T'[t, o]``: each row's cotangent on the scaled moments.

    DESIGN.md section 3, "Backward pass": ``dL/dM_p = gM_q`` for every pair p
    of segment q (``c_p = T' . M_p``, ``T'`` = :func:`~einsum_workbench.kernels.tables.compact_solid_harmonics`).

    Parameters
    ----------
    flat : (S, num_outputs) float64, a raw cotangent from :func:`flat_cotangent` (or rows of it)
    hypers : ExpansionHypers

    Returns
    -------
    (S, num_monomials(max_degree)) C-contiguous float64; monomials in the flat
    order of :mod:`einsum_workbench.kernels.tables`. Row q depends on row q of
    ``flat`` only (the same bits whichever other rows come with it).
    """
    product = _projection_matrix(hypers) @ np.asarray(flat, dtype=np.float64).T  # (K, S)
    return np.ascontiguousarray(np.asarray(product).T)


# ------------------------------------------------------------ code generation

def projection_terms(max_degree: int) -> list[list[tuple[str, int, int]]]:
    """What each moment cotangent entry ``gM[t]`` adds to the projections, per monomial t.

    Entry t lists ``(accumulator, integer factor, moment index)``: the
    projection gains ``factor * gM[t] * E[index]``, with

    - ``("value", 1, t)``: ``<gM, E>``;
    - ``("mean[k]", t_k, t - e_k)`` for t_k > 0: ``dE[x^t]/da_k = t_k E[x^(t - e_k)]``;
    - ``("rotation[a]", sign t_beta, t - e_beta + e_gamma)``: ``<gM, D_a E>``,
      ``D_a = (e_a x x) . grad = sum sign x_gamma d/dx_beta``, the change of
      the moments when the whole pair rotates about lab axis a (the
      integration by parts of ``x^t`` against the rotated density);
    - ``("covariance[q]", c_ij(t), t - e_i - e_j)`` for the q-th (i <= j):
      ``c_ii = t_i (t_i - 1) / 2``, ``c_ij = t_i t_j`` (``dE/dS_ij``, S
      symmetric, reference/gradients.py).

    Monomials (and indices) are in the flat order of
    :func:`~einsum_workbench.kernels.tables.monomial_exponents`.
    """
    exponents = monomial_exponents(max_degree)
    index = {tuple(e): i for i, e in enumerate(exponents.tolist())}

    def moved(t, down, up=None):
        e = list(t)
        for k in down:
            e[k] -= 1
        if up is not None:
            e[up] += 1
        return index[tuple(e)]

    out = []
    for i, t in enumerate(exponents.tolist()):
        terms = [("value", 1, i)]
        terms += [(f"mean[{k}]", t[k], moved(t, (k,))) for k in range(3) if t[k] > 0]
        for a, cross in enumerate(_CROSS):
            terms += [(f"rotation[{a}]", sign * t[beta], moved(t, (beta,), gamma))
                      for beta, gamma, sign in cross if t[beta] > 0]
        for q, (ci, cj) in enumerate(_COVARIANCE_PAIRS):
            factor = t[ci] * (t[ci] - 1) // 2 if ci == cj else t[ci] * t[cj]
            if factor:
                terms.append((f"covariance[{q}]", factor, moved(t, (ci, cj))))
        out.append(terms)
    return out


def used_monomials(hypers: ExpansionHypers) -> frozenset:
    """Monomials t with a non-zero ``T'[t, o]`` for some output: the only non-zero entries of ``gM``."""
    used = set()
    for table in compact_solid_harmonics(hypers):
        used.update(int(t) for t in np.flatnonzero(np.any(table.reshape(table.shape[0], -1) != 0.0, axis=1)))
    return frozenset(used)


def _term_line(accumulator: str, factor: int, g: str, moment: int) -> str:
    if factor == 1:
        return f"{accumulator} += {g} * E[{moment}];"
    if factor == -1:
        return f"{accumulator} -= {g} * E[{moment}];"
    return f"{accumulator} += T({float(factor)!r}) * {g} * E[{moment}];"


@functools.lru_cache(maxsize=64)
def generate_backward_spec_source(hypers: ExpansionHypers) -> str:
    """C++ source of ``struct wb::BackwardSpec`` (``wb_backward_spec.cuh``) for one hyper-parameter set.

    ``project<T, WithSemiaxes>(a, S, gm, value, mean, rotation, covariance)``
    computes the moments ``E`` of the normal law (centre ``a``, covariance
    ``S``) by the recurrence of ``wb::Spec::moments``
    (:func:`einsum_workbench.kernels.cupy.common.moment_recurrence`) and adds
    the terms of :func:`projection_terms` for every monomial of
    :func:`used_monomials` (the covariance ones only when ``WithSemiaxes``).
    Straight-line code, no loops, no index tables; the terms of degree d follow
    the recurrence's degree d, so at most three degrees of moments are live.
    The accumulators must start at zero.

    Returns
    -------
    str
    """
    start = time.perf_counter()
    max_degree = hypers.max_degree
    n_moments = num_monomials(max_degree)
    recurrence = dict(moment_recurrence(max_degree))
    terms = projection_terms(max_degree)
    used = used_monomials(hypers)
    lines = [
        "// Generated by einsum_workbench.kernels.cupy.backward.generate_backward_spec_source for",
        f"// {hypers!r}, num_radial={hypers.num_radial}",
        "#ifndef WB_BACKWARD_SPEC_CUH",
        "#define WB_BACKWARD_SPEC_CUH",
        "namespace wb {",
        "struct BackwardSpec {",
        f"    static constexpr int num_moments = {n_moments};",
        "",
        "    template <typename T, bool WithSemiaxes>",
        "    __host__ __device__ static inline void project(const T a[3], const T S[3][3], const T* gm, T& value,",
        "                                                   T mean[3], T rotation[3], T covariance[6]) {",
        "        (void)a; (void)S; (void)mean; (void)rotation; (void)covariance;  // unused at low degrees",
        f"        T E[{n_moments}];",
        "        E[0] = T(1);",
    ]
    for degree in range(max_degree + 1):
        first, stop = (num_monomials(degree - 1) if degree else 0), num_monomials(degree)
        lines.append(f"        // degree {degree}")
        lines += [f"        E[{t}] = {recurrence[t]};" for t in range(max(first, 1), stop)]
        for t in range(first, stop):
            if t not in used:
                continue
            g = f"g{t}"
            lines.append(f"        const T {g} = gm[{t}];")
            plain = [_term_line(acc, f, g, k) for acc, f, k in terms[t] if not acc.startswith("covariance")]
            lines += [f"        {line}" for line in plain]
            second = [_term_line(acc, f, g, k) for acc, f, k in terms[t] if acc.startswith("covariance")]
            if second:
                lines.append(f"        if constexpr (WithSemiaxes) {{ {' '.join(second)} }}")
    lines += ["    }", "};", "}  // namespace wb", "#endif  // WB_BACKWARD_SPEC_CUH", ""]
    logger.info("generated wb::BackwardSpec for %r: %d lines in %.2f s", hypers, len(lines),
                time.perf_counter() - start)
    return "\n".join(lines)


def kernel_source(hypers: ExpansionHypers) -> str:
    """Complete CUDA C++ source of the four ``wb_backward[_semiaxes]_f64/f32`` kernels for ``hypers``
    (what ``cupy.RawModule`` compiles; no include paths needed)."""
    return assemble_source(KERNEL_FILE, hypers, {BACKWARD_SPEC_INCLUDE: generate_backward_spec_source(hypers)})


def host_source(hypers: ExpansionHypers) -> str:
    """The same device body with the host harness (plain C++ for g++)."""
    return assemble_source(HOST_HARNESS, hypers, {BACKWARD_SPEC_INCLUDE: generate_backward_spec_source(hypers)})


# ------------------------------------------------------------ chunking

def component_count(semiaxes_gradients: bool) -> int:
    """Numbers written per pair: 6 (dL/dr, dL/dtheta), 9 with semi-axes."""
    return COMPONENTS_WITH_SEMIAXES if semiaxes_gradients else COMPONENTS


def device_bytes_per_pair(hypers: ExpansionHypers, dtype, semiaxes_gradients: bool = False) -> int:
    """Device bytes per pair of a chunk: inputs, row index, one moment-cotangent row
    (the most a chunk can need per pair) and the outputs."""
    values = INPUT_VALUES_PER_PAIR + num_monomials(hypers.max_degree) + component_count(semiaxes_gradients)
    return np.dtype(dtype).itemsize * values + ROW_INDEX_BYTES


def plan_chunks(n_pairs: int, hypers: ExpansionHypers, dtype, max_gpu_memory: int,
                semiaxes_gradients: bool = False) -> int:
    """Pairs per chunk so that ``chunk * device_bytes_per_pair <= max_gpu_memory``
    (:func:`einsum_workbench.kernels.cupy.common.pairs_per_chunk`): an int >= 1.

    Raises
    ------
    ValueError
        ``max_gpu_memory`` not a positive int, or less than one pair needs (the bytes are named).
    """
    return pairs_per_chunk(n_pairs, device_bytes_per_pair(hypers, dtype, semiaxes_gradients), max_gpu_memory)


def chunk_rows(segment: np.ndarray, capacity: int):
    """The table rows one chunk needs and each pair's row among them.

    Parameters
    ----------
    segment : (n,) int64, n >= 1, the chunk's pairs' segments
    capacity : int >= n, rows the device table holds

    Returns
    -------
    (rows, local): ``rows`` a slice ``[min, max + 1)`` when that window fits
    ``capacity`` (pairs grouped or sorted by segment), else the sorted distinct
    segments (at most n); ``local`` (n,) int64 with ``rows[local[p]] == segment[p]``.
    """
    low, high = int(segment.min()), int(segment.max())
    if high - low < capacity:
        return slice(low, high + 1), segment - low
    rows, local = np.unique(segment, return_inverse=True)
    return rows, local.astype(np.int64).reshape(-1)


# ------------------------------------------------------------ the chunk loop

def _backward_with(backend, r_ij, rotations, semiaxes, segment, flat, hypers: ExpansionHypers, dtype,
                   max_gpu_memory: int, semiaxes_gradients: bool) -> np.ndarray:
    """The chunk loop shared by :class:`CupyBackwardBackend` and :class:`HostBackwardBackend`.

    ``flat``: the raw cotangent (:func:`flat_cotangent`). One set of buffers,
    sized for the largest chunk, serves every chunk: per chunk the pairs, their
    row indices and the rows of the moment cotangent (:func:`moment_cotangent`
    of the chunk's rows, rounded to ``dtype``) go in, one launch, the
    ``(components, n)`` block comes back. Returns ``(components, P)`` of ``dtype``.
    """
    n_pairs = len(segment)
    n_comp = component_count(semiaxes_gradients)
    n_moments = num_monomials(hypers.max_degree)
    result = np.empty((n_comp, n_pairs), dtype=dtype)
    if n_pairs == 0:
        return result
    chunk = plan_chunks(n_pairs, hypers, dtype, max_gpu_memory, semiaxes_gradients)
    d_in = backend.pair_buffers(chunk, dtype)
    d_row = backend.empty(chunk, np.int64)
    d_table = backend.empty(chunk * n_moments, dtype)
    d_out = backend.empty(n_comp * chunk, dtype)
    staging = np.empty(n_comp * chunk, dtype=dtype)
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        n = stop - start
        rows, local = chunk_rows(segment[start:stop], chunk)
        backend.copy_pairs_in(d_in, (r_ij, rotations, semiaxes), slice(start, stop))
        backend.copy_in(np.ascontiguousarray(local, dtype=np.int64), d_row)
        backend.copy_in(moment_cotangent(flat[rows], hypers).astype(dtype), d_table)
        backend.launch(*d_in, d_row, d_table, d_out, n, n, semiaxes_gradients, dtype)
        backend.copy_out(d_out[: n_comp * n], staging[: n_comp * n])
        result[:, start:stop] = staging[: n_comp * n].reshape(n_comp, n)
    return result


def _as_cotangents(components: np.ndarray, semiaxes_gradients: bool) -> PairCotangents:
    """``(components, P)`` -> PairCotangents of C-contiguous (P, 3) arrays."""
    r, theta = (np.ascontiguousarray(components[k: k + 3].T) for k in (0, 3))
    return PairCotangents(r=r, theta=theta,
                          semiaxes=np.ascontiguousarray(components[6:9].T) if semiaxes_gradients else None)


def _prepare(r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal,
             semiaxes_gradients):
    """Validated pairs, dtype, segments and the flat raw cotangent (``check_backward_inputs``, then ``g W^T``)."""
    r_ij, rotations, semiaxes, dtype, segment, n_segments, cotangent = check_backward_inputs(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal, semiaxes_gradients)
    flat = flat_cotangent(raw_cotangent(cotangent, hypers, bool(orthonormal)), hypers)
    return r_ij, rotations, semiaxes, np.dtype(dtype), segment, flat, bool(semiaxes_gradients)


# ------------------------------------------------------------ GPU

@functools.lru_cache(maxsize=32)
def compiled_module(hypers: ExpansionHypers, max_registers: int | None = None):
    """``cupy.RawModule`` with the four backward kernels for ``hypers`` (NVRTC, cached per
    (hypers, max_registers))."""
    return nvrtc_module(kernel_source(hypers), nvrtc_options(max_registers),
                        f"the centre-density backward kernels for {hypers!r}")


class CupyBackwardBackend(NvrtcBackend):
    """CuPy device buffers and the NVRTC-compiled backward kernels (RuntimeError without a CUDA device).

    ``launch(r_ij, rotations, semiaxes, row, table, out, n_pairs, out_stride, semiaxes_gradients, dtype)``:
    pair p reads row ``row[p]`` of ``table`` (``num_moments`` values each) and
    writes component q to ``out[q * out_stride + p]``.
    """

    needs_device = "cupy_batched backward needs a CUDA device"
    host_tested = HOST_TESTED

    def __init__(self, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        super().__init__(compiled_module, hypers, block_size, max_registers)

    def launch(self, r_ij, rotations, semiaxes, row, table, out, n_pairs, out_stride, semiaxes_gradients, dtype):
        self.launch_threads(KERNEL_NAMES[(np.dtype(dtype), bool(semiaxes_gradients))], n_pairs,
                            (r_ij, rotations, semiaxes, row, table, out, np.int64(n_pairs), np.int64(out_stride)))


def centre_density_backward(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, cotangent, *,
                            dtype=None, orthonormal: bool = False, semiaxes_gradients: bool = False,
                            max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY, block_size: int = DEFAULT_BLOCK_SIZE,
                            max_registers: int | None = None) -> PairCotangents:
    """Vector-Jacobian product of the centre density on a CUDA device, one thread per pair.

    The backward contract (:class:`einsum_workbench.kernels.contract.CentreDensityBackward`;
    formulas: module docstring, DESIGN.md section 3, "Backward pass").
    Not run on a device where it was written (no GPU there): its arithmetic is
    tested through :func:`centre_density_backward_host_compiled`.

    Parameters
    ----------
    r_ij : (P, 3) float array, angstrom
    rotations : (P, 3, 3) float array, body-to-lab rotation of neighbour j
    semiaxes : (P, 3) float array, angstrom
    hypers : ExpansionHypers
    segment : (P,) int array, each pair's density row in ``[0, n_segments)``, any order
    n_segments : int >= 0
    cotangent : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        ``dL/drho_l``, on orthonormalised rows when ``orthonormal``.
    dtype : None, float32 or float64
        Compute and output dtype (None: the inputs'); float32 computes on the device in float32.
    orthonormal : bool
        The density is Loewdin-orthonormalised along n (``g W^T`` on the host).
    semiaxes_gradients : bool
        Also ``dL/dl_k``.
    max_gpu_memory : int, bytes
        Bound on the device buffers of one call (default 1 GiB; :func:`device_bytes_per_pair`).
    block_size : int, CUDA threads per block (default 128)
    max_registers : None or int in 16..255, NVRTC ``--maxrregcount``

    Returns
    -------
    PairCotangents of NumPy (P, 3) arrays of ``dtype``: ``r`` [L per angstrom],
    ``theta`` [L per radian], ``semiaxes`` [L per angstrom] or None.

    Raises
    ------
    ValueError, TypeError
        malformed pairs, segments or cotangent (as every backward variant:
        the pair, the value, or the l and shape are named), a bad
        ``max_gpu_memory`` / ``block_size`` / ``max_registers``.
    RuntimeError
        no CUDA device is usable (the message says why).
    """
    r_ij, rotations, semiaxes, dtype, segment, flat, semi = _prepare(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal, semiaxes_gradients)
    plan_chunks(len(segment), hypers, dtype, max_gpu_memory, semi)  # a bad bound fails before the device is asked
    backend = CupyBackwardBackend(hypers, block_size, max_registers)
    components = _backward_with(backend, r_ij, rotations, semiaxes, segment, flat, hypers, dtype, max_gpu_memory, semi)
    return _as_cotangents(components, semi)


# ------------------------------------------------------------ host-compiled path (tests)

class HostBackwardBackend(HostBuffers):
    """The chunk loop on the host: NumPy buffers stand for device memory and the
    g++-compiled per-pair body (:func:`host_source`, entry points
    :data:`HOST_ENTRY_POINTS`) for the kernels (tests only). ``peak_bytes``
    records the largest total of live "device" buffers, ``launches`` the pair
    count of each launch."""

    def __init__(self, hypers: ExpansionHypers):
        self.n_moments = num_monomials(hypers.max_degree)
        self.library = build_library(host_source(hypers), f"the CUDA backward body for {hypers!r}",
                                     HOST_ENTRY_POINTS, "wb_host_backward_num_outputs", output_offsets(hypers)[-1])
        self.launches: list[int] = []

    def launch(self, r_ij, rotations, semiaxes, row, table, out, n_pairs, out_stride, semiaxes_gradients, dtype):
        self.launches.append(int(n_pairs))
        if n_pairs == 0:
            return
        self.check_launch_buffers((r_ij, rotations, semiaxes, row, table, out),
                                  (dtype, dtype, dtype, np.int64, dtype, dtype))
        n_comp = component_count(semiaxes_gradients)
        if out.size < (n_comp - 1) * out_stride + n_pairs:
            raise ValueError(f"output buffer of {out.size} values too small for {n_pairs} pairs at stride {out_stride}")
        if int(row[:n_pairs].min()) < 0 or (int(row[:n_pairs].max()) + 1) * self.n_moments > table.size:
            raise ValueError("row indices beyond the moment-cotangent table")
        function = getattr(self.library, HOST_FUNCTIONS[(np.dtype(dtype), bool(semiaxes_gradients))])
        function(r_ij.ctypes.data, rotations.ctypes.data, semiaxes.ctypes.data, row.ctypes.data, table.ctypes.data,
                 out.ctypes.data, ctypes.c_longlong(n_pairs), ctypes.c_longlong(out_stride))


def centre_density_backward_host_compiled(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments,
                                          cotangent, *, dtype=None, orthonormal: bool = False,
                                          semiaxes_gradients: bool = False,
                                          max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY,
                                          backend: HostBackwardBackend | None = None) -> PairCotangents:
    """:func:`centre_density_backward` with the device code compiled for the CPU by g++.

    Same validation, per-segment contraction, chunk plan, buffers and output
    layout; only the buffers are NumPy arrays and the "launch" is a C++ loop
    over pairs calling the same ``wb::pair_backward``. For tests and for
    checking a hyper-parameter set without a GPU; not a fast path.

    Parameters
    ----------
    as :func:`centre_density_backward` (no ``block_size``/``max_registers``);
    ``backend`` may be a :class:`HostBackwardBackend` to inspect its launches
    and peak buffer bytes afterwards.

    Returns
    -------
    PairCotangents of NumPy (P, 3) arrays of ``dtype`` (``semiaxes`` None unless asked).

    Raises
    ------
    ValueError, TypeError on malformed input (as :func:`centre_density_backward`);
    RuntimeError when g++ is missing or the source does not compile.
    """
    r_ij, rotations, semiaxes, dtype, segment, flat, semi = _prepare(
        r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype, orthonormal, semiaxes_gradients)
    plan_chunks(len(segment), hypers, dtype, max_gpu_memory, semi)
    backend = backend if backend is not None else HostBackwardBackend(hypers)
    components = _backward_with(backend, r_ij, rotations, semiaxes, segment, flat, hypers, dtype, max_gpu_memory, semi)
    return _as_cotangents(components, semi)

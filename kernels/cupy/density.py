"""``cupy_batched`` centre density: the neighbour sum fused into the CUDA kernel.

Contract: :class:`einsum_workbench.kernels.contract.CentreDensity` (row s is
the sum of the raw pair coefficients, what :mod:`einsum_workbench.kernels.cupy.pairs`
computes per pair, over the pairs with ``segment[p] == s``).

Design
------
*Deterministic, one thread per run of pairs, no atomics.* Pairs are sorted by
segment on the host (stable argsort, only when ``segment`` is not already
sorted), so a segment is a contiguous run. One CUDA thread takes one run,
loops over its pairs and keeps the sum on chip; the row is written once
(``kernels/cupy/cuda/centre_density.cuh``). The pair coefficients never reach
device memory: the write floor is per segment, not per pair.

*Sum the moments, contract once.* A pair's coefficients are ``scale_p x T .
E_p`` (the generated sparse contraction ``wb::Spec::contract`` of the pair
kernel), linear in the scaled moments, so a run accumulates ``sum_p scale_p
E_p`` (``num_moments`` values, 84 at lmax 6) and contracts once at the end.
Per pair the thread does the body-frame Gaussian (``pair_expansion.cuh``,
shared with the pair kernel), the moment recurrence and 84 multiply-adds,
not the 362-term contraction and the 84 stores of the pair kernel. The
accumulation is generated straight-line code (:func:`generate_density_spec_source`,
from the same recurrence text as ``wb::Spec::moments``,
:func:`einsum_workbench.kernels.cupy.common.moment_recurrence`) that adds each
moment as soon as it is computed: only the last two degrees stay live. On
sm_90 at lmax 6 float64 nvcc then gives 252 registers and no spills; the
first version (all moments into an array, then an accumulation loop) used
255 registers and spilled 320 bytes. float32: 159 registers.

*Why not one thread per pair with atomicAdd into the rows*: float atomics
make the result depend on scheduling (not reproducible bit for bit), every
pair would still run the full contraction and write ``num_outputs`` atomics
(~84 per pair at lmax 6, contended among a centre's neighbours), and fp64
atomics are slow. *Why not a warp per segment*: each lane would still hold
the 84 accumulators, and the final warp reduction (84 x 5 shuffles) costs as
much as the work of a typical ~50-100-pair segment.

*Occupancy vs load imbalance.* Thread-per-segment exposes only as many threads
as segments: 10^5 pairs in ~64-pair segments are ~1,600 threads, where an
H100 holds ~34,000 resident threads at 252 registers each (8 warps per SM x
132 SMs). And a warp lasts as long as its longest segment. Two cheap host
measures address both, without giving up determinism:

1. runs, not segments: a segment longer than ``max_run_pairs`` is cut into
   near-equal runs (pieces); by default ``max_run_pairs = max(8, ceil(P /
   2**16))``, so small batches still give ~65,000 threads and large batches
   leave typical segments whole (only unusually long ones are cut). A second
   small kernel (``wb_combine_*``, one thread per (output, segment)) sums the
   runs of each segment in pair order: a fixed order, no atomics. The floor of
   8 pairs per run bounds the extra work of cutting: one contraction (362
   multiply-adds and 84 stores at lmax 6) per run, against ~380 multiply-adds
   per pair (Gaussian ~70, recurrence 223, accumulation 84), so at most ~15%;
2. ``longest_first``: threads take runs in order of decreasing length, so a
   warp's 32 runs are of similar length and the longest start first.

The result is deterministic for given inputs and options (the run partition
depends on P and ``max_run_pairs``, not on the device); it differs from a
summation over whole segments only by rounding.

*Memory.* The batch is processed in chunks under ``max_gpu_memory``
(:func:`plan_density`): per chunk its pairs' inputs, three int64 per run
(first and last pair, column) and one per segment (its first run), and two
``(num_outputs, runs)`` buffers: the kernel's rows per run, then the combined
rows per segment, which a device copy re-lays pair-major per l into the first
buffer for the copy back (as the pair kernel does).
Chunks end at segment boundaries, except where one segment needs more than a
chunk: its runs then fall in several chunks, each gives a partial row, and
the host adds them in order (the only case where chunking changes the
rounding; otherwise chunked and unchunked results agree bit for bit). One run
never exceeds what fits in a chunk. Rows are copied back per chunk and added
into the ``(n_segments, ...)`` results (``rows += chunk rows``, rows unique
per chunk).
Orthonormalisation (``orthonormal=True``): ``rho_l @ W_l`` on the host, per
segment (:func:`einsum_workbench.reference.density.orthonormalize_density`).

Not measured here (no GPU on the machine that wrote it): throughput, the
best block size, register cap and run length; ``bench/gpu_validate.py``
times them (kernel only with CUDA events at 10^5, 10^6, 10^7 pairs, and end
to end). Verified here: the device code compiled as plain C++ by g++
(:func:`host_source`) and
driven by the same chunk loop (:class:`HostDensityBackend`,
``tests/kernels/cupy/test_density.py``), and the exact RawModule source compiled for
sm_90 by NVRTC and nvcc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.density import check_segments, orthonormalize_density
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays

from einsum_workbench.kernels.cupy.common import (
    DEFAULT_BLOCK_SIZE, DEFAULT_MAX_GPU_MEMORY, INPUT_VALUES_PER_PAIR, HostBuffers, NvrtcBackend, assemble_source,
    check_max_gpu_memory, check_positive_int, moment_recurrence, nvrtc_module, nvrtc_options,
    output_offsets, per_dtype, unpack_outputs,
)
from einsum_workbench.kernels.cupy.common import gpu_unavailable_reason  # noqa: F401  (the registry's gpu_probe)
from einsum_workbench.kernels.cupy.host_build import build_library
from einsum_workbench.kernels.tables import num_monomials

logger = logging.getLogger(__name__)

KERNEL_FILE = "centre_density_kernel.cu"
HOST_HARNESS = "centre_density_host.cpp"
DENSITY_SPEC_INCLUDE = "wb_density_spec.cuh"

KERNEL_NAMES = per_dtype("wb_density")
COMBINE_NAMES = per_dtype("wb_combine")
HOST_DENSITY_FUNCTIONS = per_dtype("wb_host_density")
HOST_COMBINE_FUNCTIONS = per_dtype("wb_host_combine")
#: the host harness's C entry points (name, pointers, long longs), the arguments of the CUDA kernels
#: ``wb_density_*`` / ``wb_combine_*``; ``wb_host_density_num_outputs()`` gives the output count
HOST_ENTRY_POINTS = (tuple((name, 6, 2) for name in HOST_DENSITY_FUNCTIONS.values())
                     + tuple((name, 4, 3) for name in HOST_COMBINE_FUNCTIONS.values()))

COMBINE_BLOCK_SIZE = 256
TARGET_RUNS = 2**16    # automatic run length: aim for at least this many threads
MIN_RUN_PAIRS = 8      # ... but never cut runs shorter than this
INDEX_BYTES_PER_RUN = 8 * 4  # int64 run_start, run_stop, column, and (at most) one segment start
INDEX_BYTES_FIXED = 8        # the last segment start

NO_DEVICE_PARTS = ("the RawKernel launch of the density kernel, device chunking and device timings "
                   "did not run")


# ------------------------------------------------------------ code generation

@functools.lru_cache(maxsize=64)
def generate_density_spec_source(hypers: ExpansionHypers) -> str:
    """C++ source of ``struct wb::DensitySpec`` for one hyper-parameter set.

    ``accumulate_moments<T>(a, S, w, acc)`` computes the moments
    ``E[0 .. num_monomials(max_degree))`` of the normal law (centre ``a``,
    covariance ``S``) by the recurrence of ``wb::Spec::moments``
    (:func:`einsum_workbench.kernels.cupy.common.moment_recurrence`) and adds
    ``w * E[k]`` to ``acc[k]`` right after computing ``E[k]``. Straight-line
    code: no loops, no index tables.

    Returns
    -------
    str, the content of ``wb_density_spec.cuh``.
    """
    start = time.perf_counter()
    n_moments = num_monomials(hypers.max_degree)
    lines = [
        "// Generated by einsum_workbench.kernels.cupy.density.generate_density_spec_source for",
        f"// {hypers!r}, num_radial={hypers.num_radial}",
        "#ifndef WB_DENSITY_SPEC_CUH",
        "#define WB_DENSITY_SPEC_CUH",
        "namespace wb {",
        "struct DensitySpec {",
        f"    static constexpr int num_moments = {n_moments};",
        "",
        "    template <typename T>",
        "    __host__ __device__ static inline void accumulate_moments(const T a[3], const T S[3][3], T w, T* acc) {",
    ]
    if n_moments == 1:
        lines += ["        (void)a;", "        (void)S;", "        acc[0] += w;"]
    else:
        lines += [f"        T E[{n_moments}];", "        E[0] = T(1);", "        acc[0] += w;"]
        for target, expression in moment_recurrence(hypers.max_degree):
            lines.append(f"        E[{target}] = {expression};")
            lines.append(f"        acc[{target}] += w * E[{target}];")
    lines += ["    }", "};", "}  // namespace wb", "#endif  // WB_DENSITY_SPEC_CUH", ""]
    logger.info("generated wb::DensitySpec for %r: %d lines in %.2f s", hypers, len(lines),
                time.perf_counter() - start)
    return "\n".join(lines)


def kernel_source(hypers: ExpansionHypers) -> str:
    """Complete CUDA C++ source of the density and combine kernels for ``hypers``
    (what ``cupy.RawModule`` compiles; no include paths needed)."""
    return assemble_source(KERNEL_FILE, hypers, {DENSITY_SPEC_INCLUDE: generate_density_spec_source(hypers)})


def host_source(hypers: ExpansionHypers) -> str:
    """The same device code as plain C++ with C entry points (``centre_density_host.cpp``)."""
    return assemble_source(HOST_HARNESS, hypers, {DENSITY_SPEC_INCLUDE: generate_density_spec_source(hypers)})


# ------------------------------------------------------------ planning

def input_bytes_per_pair(dtype) -> int:
    """Device bytes of one pair's inputs (r_ij, rotation, semi-axes)."""
    return np.dtype(dtype).itemsize * INPUT_VALUES_PER_PAIR


def device_bytes_per_run(hypers: ExpansionHypers, dtype) -> int:
    """Device bytes per run of a chunk: its index entries and two rows of ``num_outputs``."""
    return INDEX_BYTES_PER_RUN + 2 * np.dtype(dtype).itemsize * output_offsets(hypers)[-1]


def default_max_run_pairs(n_pairs: int) -> int:
    """``max(MIN_RUN_PAIRS, ceil(n_pairs / TARGET_RUNS))``: the automatic run length."""
    return max(MIN_RUN_PAIRS, -(-int(n_pairs) // TARGET_RUNS))


@dataclass(frozen=True)
class DensityChunk:
    """One launch: pairs ``[pair_start, pair_stop)`` of the sorted batch.

    Attributes
    ----------
    run_start, run_stop : (n_runs,) int64
        Chunk-local pair range of the run thread t sums (thread order).
    column : (n_runs,) int64
        Thread that computed run q, for runs in pair order.
    first : (n_rows + 1,) int64
        Runs (pair order) ``[first[i], first[i + 1])`` make the chunk's i-th segment.
    rows : (n_rows,) int64
        Output row (segment) of the chunk's i-th segment; increasing, unique.
    """

    pair_start: int
    pair_stop: int
    run_start: np.ndarray
    run_stop: np.ndarray
    column: np.ndarray
    first: np.ndarray
    rows: np.ndarray

    @property
    def n_pairs(self) -> int:
        return self.pair_stop - self.pair_start

    @property
    def n_runs(self) -> int:
        return len(self.run_start)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class DensityPlan:
    """How a sorted batch is cut into runs and chunks (:func:`plan_density`).

    Attributes
    ----------
    chunks : tuple of DensityChunk
    pair_capacity, run_capacity : int
        Largest pair and run counts of a chunk (the device buffers' sizes).
    device_bytes : int
        Device bytes the chunk buffers take (<= ``max_gpu_memory``).
    max_run_pairs : int
        Longest run (pairs per thread) allowed.
    n_runs : int
        Threads over all chunks.
    n_cut_segments : int
        Segments cut into more than one run (combined by ``wb_combine_*`` or on the host).
    """

    chunks: tuple
    pair_capacity: int
    run_capacity: int
    device_bytes: int
    max_run_pairs: int
    n_runs: int
    n_cut_segments: int


def plan_density(sorted_segment, hypers: ExpansionHypers, dtype, max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY,
                 max_run_pairs: int | None = None, longest_first: bool = True) -> DensityPlan:
    """Cut a batch sorted by segment into runs (one thread each) and chunks.

    Parameters
    ----------
    sorted_segment : (P,) int64, non-decreasing
        Segment of each pair, pairs sorted by segment.
    hypers : ExpansionHypers
    dtype : float32 or float64
    max_gpu_memory : int, bytes
        Bound on the device buffers of one chunk (inputs, run indices, rows):
        ``pair_capacity * input_bytes_per_pair + run_capacity *
        device_bytes_per_run + 8 <= max_gpu_memory``.
    max_run_pairs : None or int >= 1
        Longest run; a longer segment is cut into near-equal runs. None:
        :func:`default_max_run_pairs`. Runs are also capped by what fits in one chunk.
    longest_first : bool
        Give threads the runs in order of decreasing length (stable), so that
        a warp's runs are of similar length; False: pair order.

    Returns
    -------
    DensityPlan (no chunks for an empty batch).

    Raises
    ------
    ValueError
        a bad ``max_gpu_memory`` or ``max_run_pairs``, or a bound too small
        for one pair and one run (the message gives the bytes needed).
    """
    max_gpu_memory = check_max_gpu_memory(max_gpu_memory)
    if max_run_pairs is not None:
        max_run_pairs = check_positive_int(max_run_pairs, "max_run_pairs", "pairs")
    segment = np.asarray(sorted_segment, dtype=np.int64)
    n_pairs = len(segment)
    in_bytes = input_bytes_per_pair(dtype)
    run_bytes = device_bytes_per_run(hypers, dtype)
    budget = max_gpu_memory - INDEX_BYTES_FIXED
    if budget < in_bytes + run_bytes:
        raise ValueError(
            f"max_gpu_memory={max_gpu_memory} bytes is less than one pair and one run need "
            f"({in_bytes + run_bytes + INDEX_BYTES_FIXED} bytes)"
        )
    run_pairs = default_max_run_pairs(n_pairs) if max_run_pairs is None else max_run_pairs
    if n_pairs == 0:
        return DensityPlan((), 0, 0, 0, run_pairs, 0, 0)

    starts = np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))
    stops = np.append(starts[1:], n_pairs)
    lengths = stops - starts
    n_segment_runs = len(starts)

    # split the bound between pair inputs and run rows as the batch needs them
    if n_pairs * in_bytes + n_segment_runs * run_bytes <= budget:
        pair_cap = n_pairs
    else:
        share = n_pairs * in_bytes / (n_pairs * in_bytes + n_segment_runs * run_bytes)
        pair_cap = max(1, int(share * budget) // in_bytes)
        pair_cap = min(pair_cap, (budget - run_bytes) // in_bytes)
    run_pairs = min(run_pairs, pair_cap)

    # cut long segments into near-equal runs of <= run_pairs pairs
    pieces = -(-lengths // run_pairs)
    cut = int(np.count_nonzero(pieces > 1))
    if cut:
        owner = np.repeat(np.arange(n_segment_runs), pieces)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        run_begin = starts[owner] + (index * lengths[owner]) // pieces[owner]
        run_end = starts[owner] + ((index + 1) * lengths[owner]) // pieces[owner]
        run_segment = segment[run_begin]
    else:
        run_begin, run_end, run_segment = starts, stops, segment[starts]
    n_runs = len(run_begin)
    run_cap = min(n_runs, max(1, (budget - pair_cap * in_bytes) // run_bytes))

    # first run of each run's segment: chunks end at segment boundaries where they can
    segment_start = np.concatenate([[True], run_segment[1:] != run_segment[:-1]])
    first_run_of = np.maximum.accumulate(np.where(segment_start, np.arange(n_runs), 0))
    chunks = []
    k0 = 0
    while k0 < n_runs:
        k1 = int(np.searchsorted(run_end, run_begin[k0] + pair_cap, side="right"))
        k1 = min(k1, k0 + run_cap)
        assert k1 > k0, "a run longer than a chunk"
        if k1 < n_runs and not segment_start[k1] and first_run_of[k1] > k0:
            k1 = int(first_run_of[k1])  # do not split a segment that fits in a chunk of its own
        pair_start, pair_stop = int(run_begin[k0]), int(run_end[k1 - 1])
        local_begin = run_begin[k0:k1] - pair_start
        local_end = run_end[k0:k1] - pair_start
        if longest_first:
            order = np.argsort(-(local_end - local_begin), kind="stable")  # thread t takes run order[t]
        else:
            order = np.arange(k1 - k0)
        column = np.empty(k1 - k0, dtype=np.int64)
        column[order] = np.arange(k1 - k0)
        segs = run_segment[k0:k1]
        new_row = np.concatenate([[True], segs[1:] != segs[:-1]])
        first = np.append(np.flatnonzero(new_row), k1 - k0).astype(np.int64)
        chunks.append(DensityChunk(
            pair_start, pair_stop,
            np.ascontiguousarray(local_begin[order], dtype=np.int64),
            np.ascontiguousarray(local_end[order], dtype=np.int64),
            column, first, np.ascontiguousarray(segs[new_row], dtype=np.int64),
        ))
        k0 = k1
    pair_capacity = max(c.n_pairs for c in chunks)
    run_capacity = max(c.n_runs for c in chunks)
    device_bytes = pair_capacity * in_bytes + run_capacity * run_bytes + INDEX_BYTES_FIXED
    return DensityPlan(tuple(chunks), pair_capacity, run_capacity, device_bytes, run_pairs, n_runs, cut)


# ------------------------------------------------------------ the chunk loop

def _density_with(backend, r_ij, rotations, semiaxes, order, plan: DensityPlan,
                  hypers: ExpansionHypers, dtype, n_segments: int):
    """Run ``plan`` on ``backend`` (:class:`CupyDensityBackend` or :class:`HostDensityBackend`):
    raw density rows, ``(n_segments, 2l+1, n_l)`` NumPy per l.

    ``order`` (None or (P,) int) maps the sorted position to the input pair.
    One set of buffers, sized for the largest chunk, is reused by every chunk.
    Per chunk: inputs in, the density kernel (rows per run, thread order, into
    ``d_runs``), the combine kernel (rows per segment, in segment order, into
    ``d_rows``), a device-side reordering of ``d_rows`` to pair-major per l
    into ``d_runs`` (whose run rows are no longer needed), copies back, and
    ``rows +=`` on the host (a segment split across chunks gets one partial
    row per chunk, added in chunk order).
    """
    n_out = output_offsets(hypers)[-1]
    out = [np.zeros((n_segments, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    if not plan.chunks:
        return out
    pc, rc = plan.pair_capacity, plan.run_capacity
    d_in = backend.pair_buffers(pc, dtype)
    d_start = backend.empty(rc, np.int64)
    d_stop = backend.empty(rc, np.int64)
    d_column = backend.empty(rc, np.int64)
    d_first = backend.empty(rc + 1, np.int64)
    d_runs = backend.empty(n_out * rc, dtype)
    d_rows = backend.empty(n_out * rc, dtype)
    staging = [np.empty((rc, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    for chunk in plan.chunks:
        sel = slice(chunk.pair_start, chunk.pair_stop) if order is None else order[chunk.pair_start:chunk.pair_stop]
        backend.copy_pairs_in(d_in, (r_ij, rotations, semiaxes), sel)
        backend.copy_in(chunk.run_start, d_start)
        backend.copy_in(chunk.run_stop, d_stop)
        backend.copy_in(chunk.column, d_column)
        backend.copy_in(chunk.first, d_first)
        n_runs, n_rows = chunk.n_runs, chunk.n_rows
        backend.launch(*d_in, d_start, d_stop, d_runs, n_runs, n_runs, dtype)
        backend.combine(d_runs, d_column, d_first, d_rows, n_rows, n_runs, n_rows, dtype)
        offset = 0
        for l, view in enumerate(unpack_outputs(d_rows[: n_out * n_rows].reshape(n_out, n_rows), hypers, n_rows)):
            target = d_runs[offset: offset + view.size]
            backend.gather(view, target)
            host = staging[l][:n_rows]
            backend.copy_out(target, host.reshape(-1))
            out[l][chunk.rows] += host
            offset += view.size
    return out


def _prepare(r_ij, rotations, semiaxes, segment, n_segments, dtype, hypers):
    """Validated arrays (``hypers`` checked first), dtype, the sorted segments and the sorting order (None if sorted)."""
    check_hypers(hypers)
    segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    order = None
    if len(segment) > 1 and np.any(segment[1:] < segment[:-1]):
        order = np.argsort(segment, kind="stable")  # stable: pair order kept inside a segment
        segment = segment[order]
    return r_ij, rotations, semiaxes, dtype, segment, n_segments, order


# ------------------------------------------------------------ GPU

@functools.lru_cache(maxsize=32)
def compiled_module(hypers: ExpansionHypers, max_registers: int | None = None):
    """``cupy.RawModule`` with the density and combine kernels for ``hypers`` (cached
    per (hypers, max_registers); NVRTC compiles on first use)."""
    return nvrtc_module(kernel_source(hypers), nvrtc_options(max_registers),
                        f"the centre-density kernels for {hypers!r}")


class CupyDensityBackend(NvrtcBackend):
    """CuPy device buffers and the NVRTC-compiled density and combine kernels (RuntimeError
    without a CUDA device).

    ``launch(r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride, dtype)``:
    thread t sums pairs ``[run_start[t], run_stop[t])`` into ``out[o * out_stride + t]``;
    ``combine(pieces, column, first, out, n_rows, piece_stride, out_stride, dtype)``:
    ``out[o * out_stride + i]`` = the sum over runs q in ``[first[i], first[i+1])`` of
    ``pieces[o * piece_stride + column[q]]``.
    """

    needs_device = "cupy_batched centre density needs a CUDA device"

    def __init__(self, hypers: ExpansionHypers, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_registers: int | None = None):
        super().__init__(compiled_module, hypers, block_size, max_registers)
        self.n_outputs = output_offsets(hypers)[-1]

    def launch(self, r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride, dtype):
        self.launch_threads(KERNEL_NAMES[np.dtype(dtype)], n_runs,
                            (r_ij, rotations, semiaxes, run_start, run_stop, out, np.int64(n_runs), np.int64(out_stride)))

    def combine(self, pieces, column, first, out, n_rows, piece_stride, out_stride, dtype):
        self.launch_threads(COMBINE_NAMES[np.dtype(dtype)], n_rows * self.n_outputs,
                            (pieces, column, first, out, np.int64(n_rows), np.int64(piece_stride), np.int64(out_stride)),
                            COMBINE_BLOCK_SIZE)


def centre_density(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, *, dtype=None,
                   orthonormal: bool = False, max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY,
                   max_run_pairs: int | None = None, longest_first: bool = True,
                   block_size: int = DEFAULT_BLOCK_SIZE, max_registers: int | None = None):
    """Centre density on a CUDA device: pair expansion and neighbour sum in one kernel.

    The centre-density contract
    (:class:`einsum_workbench.kernels.contract.CentreDensity`): ``segment``
    in any order (sorted on the host with a stable argsort); float32 computes
    and accumulates on the device in float32; ``orthonormal`` is applied on
    the host, per segment. Options:

    Parameters
    ----------
    max_gpu_memory : int, bytes
        Bound on the device buffers of one chunk (default 1 GiB,
        :func:`plan_density`). CuPy's memory pool may keep the blocks afterwards.
    max_run_pairs : None or int >= 1
        Longest run of pairs one thread sums; longer segments are cut into
        near-equal runs, combined deterministically. None:
        ``max(8, ceil(P / 65536))``.
    longest_first : bool
        Threads take runs by decreasing length (balanced warps); default True.
    block_size : int
        Threads per block of the density kernel (default 128).
    max_registers : None or int in 16..255
        NVRTC ``--maxrregcount`` (None: the compiler's choice, 252 registers
        at lmax 6 float64 on sm_90, no spills).

    Returns
    -------
    as the contract (NumPy arrays).

    Raises
    ------
    as the contract: ValueError for a bad ``max_gpu_memory``,
    ``max_run_pairs``, ``block_size`` or ``max_registers``; RuntimeError when
    no CUDA device is usable.
    """
    r_ij, rotations, semiaxes, dtype, segment, n_segments, order = _prepare(
        r_ij, rotations, semiaxes, segment, n_segments, dtype, hypers)
    plan = plan_density(segment, hypers, dtype, max_gpu_memory, max_run_pairs, longest_first)
    backend = CupyDensityBackend(hypers, block_size, max_registers)
    density = _density_with(backend, r_ij, rotations, semiaxes, order, plan, hypers, dtype, n_segments)
    return orthonormalize_density(density, hypers) if orthonormal else density


# ------------------------------------------------------------ host-compiled path (tests)

class HostDensityBackend(HostBuffers):
    """The chunk loop on the host: NumPy buffers stand for device memory and
    the g++-compiled device code (:func:`host_source`, entry points
    :data:`HOST_ENTRY_POINTS`) for the kernels.

    Tests only. ``peak_bytes`` records the largest total of live "device"
    buffers, ``launches`` the run count of each density launch, ``combines``
    the segment count of each combine launch.
    """

    def __init__(self, hypers: ExpansionHypers):
        self.n_outputs = output_offsets(hypers)[-1]
        self.library = build_library(host_source(hypers), f"the CUDA centre-density body for {hypers!r}",
                                     HOST_ENTRY_POINTS, "wb_host_density_num_outputs", self.n_outputs)
        self.launches: list[int] = []
        self.combines: list[int] = []

    def launch(self, r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride, dtype):
        self.launches.append(int(n_runs))
        if n_runs == 0:
            return
        self.check_launch_buffers((r_ij, rotations, semiaxes, run_start, run_stop, out),
                                  (dtype, dtype, dtype, np.int64, np.int64, dtype))
        if out.size < (self.n_outputs - 1) * out_stride + n_runs:
            raise ValueError(f"output buffer of {out.size} values too small for {n_runs} runs at stride {out_stride}")
        if n_runs > len(run_start) or int(run_stop[:n_runs].max()) * 3 > r_ij.size:
            raise ValueError("run indices beyond the input buffers")
        function = getattr(self.library, HOST_DENSITY_FUNCTIONS[np.dtype(dtype)])
        function(r_ij.ctypes.data, rotations.ctypes.data, semiaxes.ctypes.data, run_start.ctypes.data,
                 run_stop.ctypes.data, out.ctypes.data, ctypes.c_longlong(n_runs), ctypes.c_longlong(out_stride))

    def combine(self, pieces, column, first, out, n_rows, piece_stride, out_stride, dtype):
        self.combines.append(int(n_rows))
        if n_rows == 0:
            return
        self.check_launch_buffers((pieces, column, first, out), (dtype, np.int64, np.int64, dtype))
        if out.size < (self.n_outputs - 1) * out_stride + n_rows:
            raise ValueError(f"output buffer of {out.size} values too small for {n_rows} rows at stride {out_stride}")
        function = getattr(self.library, HOST_COMBINE_FUNCTIONS[np.dtype(dtype)])
        function(pieces.ctypes.data, column.ctypes.data, first.ctypes.data, out.ctypes.data,
                 ctypes.c_longlong(n_rows), ctypes.c_longlong(piece_stride), ctypes.c_longlong(out_stride))


def centre_density_host_compiled(r_ij, rotations, semiaxes, hypers: ExpansionHypers, segment, n_segments, *,
                                 dtype=None, orthonormal: bool = False,
                                 max_gpu_memory: int = DEFAULT_MAX_GPU_MEMORY, max_run_pairs: int | None = None,
                                 longest_first: bool = True, backend: HostDensityBackend | None = None):
    """:func:`centre_density` with the device code compiled for the CPU by g++.

    Same validation, sorting, plan, buffers and output layout as
    :func:`centre_density`; only the buffers are NumPy arrays and the
    "launches" are C++ loops calling the same ``wb::segment_density`` and
    ``wb::sum_pieces``. For tests and for checking a hyper-parameter set
    without a GPU; not a fast path.

    Parameters
    ----------
    as :func:`centre_density` (no ``block_size``/``max_registers``); ``backend``
    may be a :class:`HostDensityBackend` to inspect its launches and peak
    buffer bytes afterwards.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) NumPy arrays of ``dtype``.

    Raises
    ------
    ValueError, TypeError on malformed input (as :func:`centre_density`);
    RuntimeError when g++ is missing or the source does not compile.
    """
    r_ij, rotations, semiaxes, dtype, segment, n_segments, order = _prepare(
        r_ij, rotations, semiaxes, segment, n_segments, dtype, hypers)
    plan = plan_density(segment, hypers, dtype, max_gpu_memory, max_run_pairs, longest_first)
    backend = backend if backend is not None else HostDensityBackend(hypers)
    density = _density_with(backend, r_ij, rotations, semiaxes, order, plan, hypers, dtype, n_segments)
    return orthonormalize_density(density, hypers) if orthonormal else density

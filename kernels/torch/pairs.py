"""``torch_einsum`` / ``torch_compiled`` / ``torch_cuda``: the expansion batched in Torch.

The same algorithm as ``numpy_einsum`` (DESIGN.md section 7), written once in
Torch from geometry to coefficients, with no round trip to NumPy inside:

1. Gaussian parameters in the ellipsoid's body frame: ``A' = R diag(d) R^T``
   with ``d_k = 1/l_k^2 + 1/sigma^2`` (GTO), so the covariance ``A'^(-1)`` and
   ``det A'`` need no lab-frame inversion;
2. moments of every monomial up to the largest degree a channel uses, one
   degree layer at a time, vectorised across pairs. They are stored
   monomial-major, ``(K, P)``, so that the recurrence's parents are contiguous
   rows (see ``_layer_plan``);
3. the contraction with the solid-harmonic tables as one wide GEMM
   ``(P, K) @ (K, sum_l (2l+1) n_l)`` over the tables of every l stacked side
   by side (one GEMM per l instead when zero padding would more than double
   the work; ``tables.stacked_tables``). BLAS is far faster on one
   84-column product than on seven of 4 to 18 columns.

Pairs are processed in chunks that bound memory. ``compile=True`` runs the
per-chunk core under ``torch.compile``: every chunk is padded to a
power-of-two *bucket* of pairs (padding pairs are harmless: r = 0, R = I,
semi-axes 1), and each bucket is compiled once with static shapes, so varying
pair counts cost at most one compilation per bucket, never one per call
(``compile_count`` reads the counter). ``device="cuda"`` runs the same code on
a GPU. Compiled cores are cached per (hyper-parameters, dtype, device);
every compilation is logged (INFO, with its duration). Compile-time studies:
:func:`einsum_workbench.bench.torch_study.time_compile`.

Contract: :class:`einsum_workbench.kernels.contract.PairExpansion`.
"""

from __future__ import annotations

import functools
import logging
import time
import types
from dataclasses import dataclass

import numpy as np
import torch

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.tables import num_monomials, power_of_two_bucket, recurrence_table, stacked_tables

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 4096       # pairs per chunk; also the largest compile bucket
MIN_BUCKET = 64            # smallest compile bucket (pairs)

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

# incremented by the counting backend each time Dynamo hands a graph to Inductor
_COMPILE_STATS = {"compiles": 0, "backend_seconds": 0.0}


def cuda_unavailable_reason() -> str | None:
    """None when Torch sees a CUDA device, else why ``device="cuda"`` cannot run."""
    if not torch.backends.cuda.is_built():
        return f"this Torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False: no CUDA device or driver on this machine"
    return None


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Segment:
    """Targets of one degree layer that share the recurrence axis k.

    ``E[t] = a_k E[t - e_k] + sum_m S_km coef[m] E[t - e_k - e_m]``; inside a
    layer (degree-first, n0 then n1 descending order) the targets with the same
    k are contiguous and so are their parents ``t - e_k``: rows
    ``parent_start : parent_start + size`` of the moments.
    """

    axis: int
    target_start: int     # first target row in the flat monomial order
    parent_start: int
    size: int
    lower: torch.Tensor   # (3, size) int64 rows of E[t - e_k - e_m]
    coef: torch.Tensor    # (3, size, 1) exponent m of the parent (0: term absent)
    terms: tuple          # the m with any non-zero coef
    runs: tuple           # per m in terms: tuple of (offset, lower_start, length, coef (length, 1))


def _runs(lower: np.ndarray, coef: np.ndarray, dtype, device) -> tuple:
    """Rows with a non-zero coefficient as runs of consecutive lower rows.

    Returns tuple of (offset in the segment, first lower row, length,
    coefficients as a (length, 1) tensor): static slices, so that a compiled
    core needs no indirect loads.
    """
    runs, start = [], None
    rows = np.flatnonzero(coef != 0)
    for i, row in enumerate(rows):
        if start is None:
            start = row
        last = i + 1 == rows.size
        if last or rows[i + 1] != row + 1 or lower[rows[i + 1]] != lower[row] + 1:
            length = int(row - start + 1)
            runs.append((int(start), int(lower[start]), length,
                         torch.as_tensor(coef[start: row + 1, None].copy(), dtype=dtype, device=device)))
            start = None
    return tuple(runs)


@functools.lru_cache(maxsize=64)
def _layer_plan(max_degree: int, dtype: torch.dtype, device: str) -> tuple:
    """The recurrence as contiguous segments (see ``_Segment``), degree by degree."""
    table = recurrence_table(max_degree)
    segments = []
    for layer in table.layers:
        axis = table.axis[layer]
        for k in range(3):
            rows = np.flatnonzero(axis == k)
            if rows.size == 0:
                continue
            first = layer.start + int(rows[0])
            parents = table.parent[first: first + rows.size]
            # the claim that makes slices possible: targets and parents contiguous
            if not (np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size))
                    and np.array_equal(parents, np.arange(parents[0], parents[0] + rows.size))):
                raise AssertionError(f"monomial order changed: degree-{layer.stop} axis-{k} targets not contiguous")
            lower = table.lower[first: first + rows.size].T.copy()
            coef = table.coef[first: first + rows.size].T.copy()
            segments.append(_Segment(
                axis=k, target_start=first + 1, parent_start=int(parents[0]), size=int(rows.size),
                lower=torch.as_tensor(lower, device=device),
                coef=torch.as_tensor(coef[:, :, None], dtype=dtype, device=device),
                terms=tuple(m for m in range(3) if np.any(coef[m] != 0)),
                runs=tuple(_runs(lower[m], coef[m], dtype, device) for m in range(3) if np.any(coef[m] != 0)),
            ))
    return tuple(segments)


@dataclass(frozen=True)
class _Group:
    """Angular channels contracted together by one GEMM ``(P, K) @ (K, Q)``.

    ``table`` stacks their solid-harmonic tables side by side, zero-padded to
    the group's largest monomial count K; ``columns[i] = (l, start, stop)``.
    """

    n_monomials: int
    table: torch.Tensor
    columns: tuple


@functools.lru_cache(maxsize=64)
def _contraction_groups(hypers: ExpansionHypers, dtype: torch.dtype, device: str) -> tuple:
    """``tables.stacked_tables`` as tensors on ``device`` (see ``_Group``).

    One wide GEMM beats several thin ones (BLAS is poor at 4..18 columns)
    unless zero padding more than doubles the multiply-adds.
    """
    return tuple(_Group(table.shape[0], torch.as_tensor(table.copy(), dtype=dtype, device=device), columns)
                 for table, columns in stacked_tables(hypers))


# ---------------------------------------------------------------- the core


def body_frame_gaussians(r_ij, rotations, semiaxes, hypers: ExpansionHypers):
    """Covariance, centre and scale of the (basis x density) Gaussian per pair, in Torch.

    Same formulas as ``numpy_einsum.body_frame_gaussians``: ``A' = R diag(d) R^T``,
    ``d = 1/l^2 (+ 1/sigma^2 for GTO)``.

    Parameters
    ----------
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3): tensors of one float dtype.

    Returns
    -------
    covariance (P, 3, 3) = ``A'^(-1)`` [angstrom^2], centre (P, 3) [angstrom],
    scale (P,) = ``exp(-k/2) / (l1 l2 l3 sqrt(det A'))``.
    """
    inv_l2 = 1.0 / semiaxes**2
    gto = hypers.radial_basis == "gto"
    inv_s2 = 1.0 / hypers.sigma**2 if gto else 0.0
    d = inv_l2 + inv_s2
    body = torch.einsum("pji,pj->pi", rotations, r_ij)  # R^T r
    covariance = (rotations / d[:, None, :]) @ rotations.transpose(1, 2)
    if gto:
        centre = r_ij - inv_s2 * torch.einsum("pij,pj->pi", rotations, body / d)
        k = inv_s2 * torch.sum(body * body * inv_l2 / d, dim=1)
        scale = torch.exp(-0.5 * k) / (torch.prod(semiaxes, dim=1) * torch.sqrt(torch.prod(d, dim=1)))
    else:
        centre = r_ij
        scale = 1.0 / (torch.prod(semiaxes, dim=1) * torch.sqrt(torch.prod(d, dim=1)))
    return covariance, centre, scale


def normal_moments_t(covariance, centre, max_degree: int, plan=None):
    """Expectations ``E[x^n0 y^n1 z^n2]`` of N(centre, covariance), monomial-major.

    Parameters
    ----------
    covariance (P, 3, 3), centre (P, 3): tensors.
    max_degree : int
    plan : the ``_layer_plan`` for (max_degree, dtype, device), or None to look it up
        (a compiled caller passes it: Dynamo must not trace the cache).

    Returns
    -------
    (num_monomials(max_degree), P) tensor in the flat order of ``kernels.tables``.
    """
    n_pairs = centre.shape[0]
    if plan is None:
        plan = _layer_plan(max_degree, centre.dtype, str(centre.device))
    centre_t = centre.T.contiguous()                    # (3, P)
    cov_t = covariance.permute(1, 2, 0).contiguous()    # (3, 3, P)
    moments = centre.new_empty((num_monomials(max_degree), n_pairs))
    moments[0] = 1.0
    for seg in plan:  # degree by degree: a segment reads only lower degrees
        target = moments[seg.target_start: seg.target_start + seg.size]
        torch.mul(centre_t[seg.axis], moments[seg.parent_start: seg.parent_start + seg.size], out=target)
        for m in seg.terms:
            lower = torch.index_select(moments, 0, seg.lower[m]).mul_(seg.coef[m])
            target.addcmul_(lower, cov_t[seg.axis, m])
    return moments


def normal_moments_functional(covariance, centre, max_degree: int, plan):
    """``normal_moments_t`` without in-place writes, for ``torch.compile``.

    In-place writes into slices of one moments buffer become a full copy of
    the buffer per write once functionalised; here each degree layer is a new
    tensor and the layers are concatenated, which Inductor fuses.
    """
    centre_t = centre.T                    # (3, P)
    cov_t = covariance.permute(1, 2, 0)    # (3, 3, P)
    moments = torch.ones((1, centre.shape[0]), dtype=centre.dtype, device=centre.device)
    start = 1
    layer = []
    for seg in plan:  # degree by degree: a segment reads only lower degrees
        if seg.target_start != start + sum(v.shape[0] for v in layer):
            raise AssertionError("recurrence segments out of order")
        value = centre_t[seg.axis] * moments[seg.parent_start: seg.parent_start + seg.size]
        for m, runs in zip(seg.terms, seg.runs):
            pieces, row = [], 0
            for offset, lower, length, coef in runs:
                if offset > row:
                    pieces.append(moments.new_zeros((offset - row, moments.shape[1])))
                pieces.append(coef * moments[lower: lower + length])
                row = offset + length
            if row < seg.size:
                pieces.append(moments.new_zeros((seg.size - row, moments.shape[1])))
            value = value + cov_t[seg.axis, m] * torch.cat(pieces, dim=0)
        layer.append(value)
        if seg.axis == 2:  # z^d closes degree d
            moments = torch.cat([moments] + layer, dim=0)
            start, layer = moments.shape[0], []
    return moments


def _chunk_core(r_ij, rotations, semiaxes, *, hypers: ExpansionHypers, plan=None, groups=None,
                functional: bool = False):
    """Coefficients of one chunk: tuple over GEMM groups of (P, Q_group) tensors.

    ``plan`` and ``groups`` (``_layer_plan``, ``_contraction_groups``) are
    looked up when None; the compiled core receives them bound, with
    ``functional=True`` (no in-place writes, see ``normal_moments_functional``).
    """
    if plan is None:
        plan = _layer_plan(hypers.max_degree, r_ij.dtype, str(r_ij.device))
        groups = _contraction_groups(hypers, r_ij.dtype, str(r_ij.device))
    covariance, centre, scale = body_frame_gaussians(r_ij, rotations, semiaxes, hypers)
    if functional:
        moments = normal_moments_functional(covariance, centre, hypers.max_degree, plan)  # (K, P)
    else:
        moments = normal_moments_t(covariance, centre, hypers.max_degree, plan)

    # pair-major for the GEMM: BLAS is much faster on (P, K) @ (K, Q) than on a transposed view
    if functional:
        moments = (moments.T * scale[:, None]).contiguous()
    else:
        pair_major = moments.new_empty((moments.shape[1], moments.shape[0]))
        moments = torch.mul(moments.T, scale[:, None], out=pair_major)
    return tuple(moments[:, : g.n_monomials] @ g.table for g in groups)


# ---------------------------------------------------------------- compilation


def _counting_backend(graph_module, example_inputs):
    """Inductor, counting every graph it is handed (one per (re)compilation)."""
    from torch._inductor.compile_fx import compile_fx

    start = time.perf_counter()
    compiled = compile_fx(graph_module, example_inputs)
    seconds = time.perf_counter() - start
    _COMPILE_STATS["compiles"] += 1
    _COMPILE_STATS["backend_seconds"] += seconds
    shapes = [tuple(x.shape) for x in example_inputs if hasattr(x, "shape")][:3]
    logger.info("torch.compile: Inductor compiled a graph (inputs %s) in %.2f s", shapes, seconds)
    return compiled


def compile_count() -> int:
    """Graphs compiled by this module's ``torch.compile`` backend since import."""
    return _COMPILE_STATS["compiles"]


def compile_seconds() -> float:
    """Seconds spent inside Inductor by this module's backend since import."""
    return _COMPILE_STATS["backend_seconds"]


_CORE_KEYS: list = []   # (hypers, dtype, device) per compiled core, in creation order


@functools.lru_cache(maxsize=64)
def compiled_core(hypers: ExpansionHypers, dtype: torch.dtype, device: str):
    """``_chunk_core`` under ``torch.compile`` for one (hypers, dtype, device).

    Each key gets its own copy of the core's code object: Dynamo keeps its
    cache (and its recompilation limit) per code object, so many
    hyper-parameter sets do not evict one another. Shapes are static
    (``dynamic=False``); callers pad chunks to buckets (``bucket_size``).
    """
    code = _chunk_core.__code__.replace(co_name=f"_chunk_core_{len(_CORE_KEYS)}")
    _CORE_KEYS.append((hypers, dtype, device))
    core = types.FunctionType(code, _chunk_core.__globals__, code.co_name, None, None)
    core.__kwdefaults__ = {"hypers": hypers, "plan": _layer_plan(hypers.max_degree, dtype, device),
                           "groups": _contraction_groups(hypers, dtype, device), "functional": True}
    return torch.compile(core, backend=_counting_backend, dynamic=False, fullgraph=True)


# Dynamo keeps at most torch._dynamo.config.recompile_limit (8) graphs per code
# object, then silently runs eagerly: at most MAX_BUCKETS buckets per core.
MAX_BUCKETS = 7


def bucket_size(n_pairs: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Padded pair count of a chunk of ``n_pairs`` pairs for the compiled core.

    The next power of two, at least ``max(MIN_BUCKET, chunk / 2**(MAX_BUCKETS-1))``
    and at most ``chunk``: at most MAX_BUCKETS distinct sizes per chunk size,
    so at most that many compilations per (hypers, dtype, device), whatever
    the pair counts.
    """
    return power_of_two_bucket(n_pairs, max(MIN_BUCKET, chunk >> (MAX_BUCKETS - 1)), chunk)


def _pad(r_ij, rotations, semiaxes, size: int):
    """Pad a chunk to ``size`` pairs with harmless pairs (r = 0, R = I, semi-axes 1)."""
    n = r_ij.shape[0]
    if n == size:
        return r_ij, rotations, semiaxes
    extra = size - n
    eye = torch.eye(3, dtype=r_ij.dtype, device=r_ij.device).expand(extra, 3, 3)
    return (torch.cat([r_ij, r_ij.new_zeros((extra, 3))]),
            torch.cat([rotations, eye]),
            torch.cat([semiaxes, semiaxes.new_ones((extra, 3))]))


# ---------------------------------------------------------------- the variant


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Share a NumPy array's memory with Torch on CPU (copy only a read-only one)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device)


def _resolve_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}") from err
    if device.type == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"device={str(device)!r} requested but {reason}")
    elif device.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {str(device)!r}")
    return device


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None, device="cpu",
           compile: bool = False, chunk: int = DEFAULT_CHUNK):
    """Raw expansion coefficients of every pair, batched in Torch.

    The pair-expansion contract
    (:class:`einsum_workbench.kernels.contract.PairExpansion`); float32
    computes everything in float32. Options:

    Parameters
    ----------
    device : "cpu" (default) or "cuda[:index]"
        Where Torch computes; the inputs are copied there once and the results
        back once.
    compile : bool
        Run the per-chunk core under ``torch.compile`` (Inductor). Chunks are
        padded to power-of-two buckets, each compiled once per
        (hypers, dtype, device).
    chunk : int
        Pairs per chunk (bounds working memory to about
        ``chunk * num_monomials(max_degree) * 6`` values).

    Returns
    -------
    as the contract (NumPy arrays).

    Raises
    ------
    as the contract: ValueError for a bad device string or a non-positive
    chunk; RuntimeError if ``device="cuda"`` and no CUDA device is usable.
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    if int(chunk) <= 0:
        raise ValueError(f"chunk must be a positive number of pairs, got {chunk!r}")
    device = _resolve_device(device)
    tdtype = _TORCH_DTYPES[np.dtype(dtype)]
    n_pairs = r_ij.shape[0]
    out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    if n_pairs == 0:
        return out
    inputs = [_to_tensor(a, device) for a in (r_ij, rotations, semiaxes)]
    core = compiled_core(hypers, tdtype, str(device)) if compile else functools.partial(_chunk_core, hypers=hypers)
    groups = _contraction_groups(hypers, tdtype, str(device))
    targets = [torch.from_numpy(o.reshape(n_pairs, o.shape[1] * o.shape[2])) for o in out]
    with torch.no_grad():
        for start in range(0, n_pairs, chunk):
            stop = min(start + chunk, n_pairs)
            args = [a[start:stop] for a in inputs]
            if compile:
                args = _pad(*args, bucket_size(stop - start, chunk))
            for group, block in zip(groups, core(*args)):
                for l, first, last in group.columns:
                    targets[l][start:stop].copy_(block[: stop - start, first:last])
    return out

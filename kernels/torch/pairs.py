"""``torch_einsum`` / ``torch_compiled`` / ``torch_cuda``: the expansion batched in Torch.

The arithmetic shared with the family's density and gradients is in :mod:`.common`;
this module holds the variant: chunking, compilation buckets, devices.

The same algorithm as ``numpy_einsum`` (DESIGN.md section 7), written once in
Torch from geometry to coefficients, with no round trip to NumPy inside:

1. Gaussian parameters in the ellipsoid's body frame: ``A' = R diag(d) R^T``
   with ``d_k = 1/l_k^2 + 1/sigma^2`` (GTO), so the covariance ``A'^(-1)`` and
   ``det A'`` need no lab-frame inversion;
2. moments of every monomial up to the largest degree a channel uses, one
   degree layer at a time, vectorised across pairs. They are stored
   monomial-major, ``(K, P)``, so that the recurrence's parents are contiguous
   rows (see :func:`.common.layer_plan`);
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

import numpy as np
import torch

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.tables import power_of_two_bucket
from einsum_workbench.kernels.torch.common import (  # noqa: F401 (cuda_unavailable_reason: the registry's gpu_probe)
    TORCH_DTYPES,
    chunk_core,
    contraction_groups,
    cuda_unavailable_reason,
    layer_plan,
    resolve_device,
    to_tensor,
)

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 4096       # pairs per chunk; also the largest compile bucket
MIN_BUCKET = 64            # smallest compile bucket (pairs)


# incremented by the counting backend each time Dynamo hands a graph to Inductor
_COMPILE_STATS = {"compiles": 0, "backend_seconds": 0.0}


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
    """``chunk_core`` under ``torch.compile`` for one (hypers, dtype, device).

    Each key gets its own copy of the core's code object: Dynamo keeps its
    cache (and its recompilation limit) per code object, so many
    hyper-parameter sets do not evict one another. Shapes are static
    (``dynamic=False``); callers pad chunks to buckets (``bucket_size``).
    """
    code = chunk_core.__code__.replace(co_name=f"_chunk_core_{len(_CORE_KEYS)}")
    _CORE_KEYS.append((hypers, dtype, device))
    core = types.FunctionType(code, chunk_core.__globals__, code.co_name, None, None)
    core.__kwdefaults__ = {"hypers": hypers, "plan": layer_plan(hypers.max_degree, dtype, device),
                           "groups": contraction_groups(hypers, dtype, device), "functional": True}
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
    device = resolve_device(device)
    tdtype = TORCH_DTYPES[np.dtype(dtype)]
    n_pairs = r_ij.shape[0]
    out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    if n_pairs == 0:
        return out
    inputs = [to_tensor(a, device) for a in (r_ij, rotations, semiaxes)]
    core = compiled_core(hypers, tdtype, str(device)) if compile else functools.partial(chunk_core, hypers=hypers)
    groups = contraction_groups(hypers, tdtype, str(device))
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

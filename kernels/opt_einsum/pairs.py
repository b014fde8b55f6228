"""``opt_einsum_planned`` / ``opt_einsum_torch``: contractions planned once by opt_einsum.

Moments are computed batched over pairs (as in ``numpy_einsum``, or in Torch
for the torch backend; see "body" below for the third form); the contraction of the moments with the
solid-harmonic tables is an ``opt_einsum.contract_expression`` planned once
per (hyper-parameter set, form, shape bucket, dtype, backend) and reused
across calls. The tables are the expression's *constants*, converted to the
backend once.

Three forms of the contraction are offered (``form=``):

``"compact"`` (default)
    ``"kp,kq,p->pq"``: moments ``E (K, P)`` (monomial-major, as computed),
    the solid-harmonic tables of several channels stacked side by side
    ``(K, Q)`` (one wide GEMM; see
    ``stacked_tables``) and the per-pair scale ``s (P,)``. The planner's only
    choice is where the scale goes; its FLOP-optimal choice (GEMM first)
    measured 3x slower than scaling first, so ``COMPACT_PATH`` is used.
``"factored"``
    ``"kp,p,nak,ma->pmn"`` per channel l: the solid-harmonic tensor is not
    stored but factored as ``T_l[m, n, k] = sum_a Y_l[m, a] R_l[n, a, k]``,
    with ``Y_l`` the degree-l harmonics on the ``(l+1)(l+2)/2`` monomials of
    degree l and ``R_l[n, a, k]`` the coefficient of monomial k in
    ``|x|^(2n) x^a`` (multiplication by ``|x|^(2n)``). Four operands, two of
    them constant: path planning decides whether to build ``T_l`` once from
    the constants (the cheap path) or to push every pair's moments through
    ``R_l`` first (``radial_moments``, much more work). ``plan_report`` shows
    what the planner chose.
``"body"``
    ``"qnabc,pa,pb,pc,p,pmq->pmn"`` per channel l, the separable body-frame
    form (DESIGN.md section 7): in the ellipsoid's body frame the Gaussian's
    covariance is diagonal, so its moments are products of 1-D moments
    ``mx[p, a] my[p, b] mz[p, c]`` (no 3-D recurrence); the dense tensor
    ``T_l`` gives body-frame coefficients, and the Wigner matrix ``D_l(R)``
    of each pair rotates them to the lab frame (``R_lm(R x) = sum_q
    D_l[m, q] R_lq(x)``, with ``|x|^(2n)`` invariant). Six operands, one
    constant: the planner orders the three 1-D factors, the scale and the
    rotation. ``D_l`` is fitted per pair from the harmonics at rotated sample
    points (:func:`einsum_workbench.kernels.wigner.wigner_matrices`). More arithmetic than "compact" and no
    moment recurrence mixing axes: the form meant for GPUs.

The tables (``factored_tables``, ``dense_tables``) are in
:mod:`einsum_workbench.kernels.tables`, the Wigner fit in
:mod:`einsum_workbench.kernels.wigner`. opt_einsum is imported when a
contraction is planned; every planning is logged (INFO, with its duration).

Contract: :class:`einsum_workbench.kernels.contract.PairExpansion`.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_pair_arrays

from einsum_workbench.kernels.numpy.pairs import body_frame_gaussians, normal_moments
from einsum_workbench.kernels.tables import dense_tables, factored_tables, power_of_two_bucket, stacked_tables
from einsum_workbench.kernels.wigner import wigner_matrices

logger = logging.getLogger(__name__)

BACKENDS = ("numpy", "torch")
FORMS = ("compact", "factored", "body")
DEFAULT_CHUNK = 4096      # pairs per chunk (bounded memory); also the largest bucket
MIN_BUCKET = 64           # smallest planned pair count
# The FLOP-optimal path of "kp,kq,p->pq" (GEMM first, then the scale) ends in an
# einsum writing a transposed (P, Q) view, measured 3x slower here than scaling
# the moments first and letting the GEMM write (P, Q) row-major; FLOP counts
# ignore memory layout, so this one path is given explicitly (plan_report
# still shows what the planner alone picks).
COMPACT_PATH = [(0, 2), (0, 1)]


# ---------------------------------------------------------------- body-frame form


def body_frame_factors(r_ij, rotations, semiaxes, hypers: ExpansionHypers):
    """1-D moments along the ellipsoid's axes and the scale, per pair.

    In the body frame ``A' = diag(d)``, ``d = 1/l^2 (+ 1/sigma^2 for GTO)``:
    the normal law has mean ``R^T a = R^T r (1 - 1/(sigma^2 d))`` and
    independent axes of variance ``1/d``, so ``E[x'^a y'^b z'^c]`` is the
    product of three 1-D moments ``E[X^(j+1)] = mu E[X^j] + j v E[X^(j-1)]``.

    Returns
    -------
    moments (P, 3, max_degree + 1), scale (P,) as in ``numpy_einsum.body_frame_gaussians``.
    """
    inv_l2 = 1.0 / semiaxes**2
    inv_s2 = 1.0 / hypers.sigma**2 if hypers.radial_basis == "gto" else 0.0
    d = inv_l2 + inv_s2
    body = np.einsum("pji,pj->pi", rotations, r_ij)  # R^T r
    mean = body * (1.0 - inv_s2 / d)
    variance = 1.0 / d
    k = inv_s2 * np.sum(body * body * inv_l2 / d, axis=1)
    scale = np.exp(-0.5 * k) / (np.prod(semiaxes, axis=1) * np.sqrt(np.prod(d, axis=1)))
    degree = hypers.max_degree
    moments = np.empty(r_ij.shape[:1] + (3, degree + 1), dtype=r_ij.dtype)
    moments[..., 0] = 1.0
    if degree >= 1:
        moments[..., 1] = mean
    for j in range(1, degree):
        moments[..., j + 1] = mean * moments[..., j] + j * variance * moments[..., j - 1]
    return moments, scale


# ---------------------------------------------------------------- planning


def bucket_size(n_pairs: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Pair count a chunk of ``n_pairs`` is planned for: next power of two in [MIN_BUCKET, chunk]."""
    return power_of_two_bucket(n_pairs, MIN_BUCKET, chunk)


_PLAN_STATS = {"planned": 0}


@functools.lru_cache(maxsize=256)
def planned_expressions(hypers: ExpansionHypers, form: str, bucket: int, dtype_name: str) -> tuple:
    """The contraction expressions for one (hypers, form, bucket, dtype), planned once.

    The backend is chosen when an expression is called; opt_einsum converts
    and caches its constants per backend.

    Returns
    -------
    tuple of (ContractExpression, K, columns): K the monomial count of its
    moments operand, ``columns`` as in
    ``stacked_tables`` (for "factored": one expression per l, columns
    ``((l, 0, (2l+1) n_l),)``). Operands to pass: moments (P, K), scale (P,).
    """
    import opt_einsum

    _PLAN_STATS["planned"] += 1
    start = time.perf_counter()
    dtype = np.dtype(dtype_name)
    out = []
    if form == "compact":
        for table, columns in stacked_tables(hypers):
            expr = opt_einsum.contract_expression(
                "kp,kq,p->pq", (table.shape[0], bucket), table.astype(dtype), (bucket,),
                constants=[1], optimize=COMPACT_PATH)
            out.append((expr, table.shape[0], columns))
    elif form == "factored":
        for l, (harmonics, radial) in enumerate(factored_tables(hypers)):
            expr = opt_einsum.contract_expression(
                "kp,p,nak,ma->pmn", (radial.shape[2], bucket), (bucket,),
                radial.astype(dtype), harmonics.astype(dtype), constants=[2, 3], optimize="optimal")
            out.append((expr, radial.shape[2], ((l, 0, (2 * l + 1) * radial.shape[0]),)))
    elif form == "body":
        for l, dense in enumerate(dense_tables(hypers)):
            width = dense.shape[2]
            expr = opt_einsum.contract_expression(
                BODY_EQUATION, dense.astype(dtype), (bucket, width), (bucket, width), (bucket, width),
                (bucket,), (bucket, 2 * l + 1, 2 * l + 1), constants=[0], optimize="optimal")
            out.append((expr, width, ((l, 0, (2 * l + 1) * dense.shape[1]),)))
    else:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    logger.info("opt_einsum planned %d %r expression(s) for %r, %d pairs, %s in %.3f s",
                len(out), form, hypers, bucket, dtype_name, time.perf_counter() - start)
    return tuple(out)


BODY_EQUATION = "qnabc,pa,pb,pc,p,pmq->pmn"


def plan_count() -> int:
    """How many (hypers, form, bucket, dtype) keys have been planned since import."""
    return _PLAN_STATS["planned"]


def plan_report(hypers: ExpansionHypers, form: str = "compact", n_pairs: int = DEFAULT_CHUNK) -> list[dict]:
    """What the planner found, per expression: ``opt_einsum.contract_path`` output.

    Returns
    -------
    list of dict: ``equation``, ``path`` (the planner's choice, pairs of
    operand positions), ``path_used`` (what ``expand`` runs: the planner's
    path, except ``COMPACT_PATH`` for "compact"),
    ``flops`` (optimised), ``naive_flops``, ``speedup`` (naive / optimised),
    ``largest_intermediate`` (elements), ``text`` (opt_einsum's printed report).
    """
    import opt_einsum

    rows = []
    if form == "compact":
        operands = [("kp,kq,p->pq", (np.empty((t.shape[0], n_pairs)), t, np.empty(n_pairs)))
                    for t, _ in stacked_tables(hypers)]
    elif form == "factored":
        operands = [("kp,p,nak,ma->pmn", (np.empty((r.shape[2], n_pairs)), np.empty(n_pairs), r, y))
                    for y, r in factored_tables(hypers)]
    elif form == "body":
        operands = [(BODY_EQUATION, (t, *[np.empty((n_pairs, t.shape[2]))] * 3, np.empty(n_pairs),
                                     np.empty((n_pairs, 2 * l + 1, 2 * l + 1))))
                    for l, t in enumerate(dense_tables(hypers))]
    else:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    for equation, arrays in operands:
        path, info = opt_einsum.contract_path(equation, *arrays, optimize="optimal", shapes=False)
        used = COMPACT_PATH if form == "compact" else path
        rows.append({"equation": equation, "path": path, "path_used": [tuple(step) for step in used], "flops": int(info.opt_cost),
                     "naive_flops": int(info.naive_cost), "speedup": float(info.speedup),
                     "largest_intermediate": int(info.largest_intermediate), "text": str(info)})
    return rows


# ---------------------------------------------------------------- the variant


def _moments_numpy(r_ij, rotations, semiaxes, hypers):
    covariance, centre, scale = body_frame_gaussians(r_ij, rotations, semiaxes, hypers)
    return normal_moments(covariance, centre, hypers.max_degree), scale


def _moments_torch(r_ij, rotations, semiaxes, hypers):
    import torch

    from einsum_workbench.kernels.torch import common as torch_common

    with torch.no_grad():
        args = [torch.from_numpy(a) for a in (r_ij, rotations, semiaxes)]
        covariance, centre, scale = torch_common.body_frame_gaussians(*args, hypers)
        moments = torch_common.normal_moments_t(covariance, centre, hypers.max_degree)
        return moments, scale


def _as_torch(array):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def expand(r_ij, rotations, semiaxes, hypers: ExpansionHypers, *, dtype=None, backend: str = "numpy",
           form: str = "compact", chunk: int = DEFAULT_CHUNK):
    """Raw expansion coefficients of every pair; contraction planned by opt_einsum.

    The pair-expansion contract
    (:class:`einsum_workbench.kernels.contract.PairExpansion`), computed in
    ``dtype``. Options:

    Parameters
    ----------
    backend : {"numpy", "torch"}
        Library that computes the moments and executes the planned
        contraction (Torch on CPU; inputs shared, not copied).
    form : {"compact", "factored", "body"}, see the module docstring. With
        "body" the 1-D moments and Wigner matrices are computed in NumPy and
        only the planned contraction runs in the chosen backend.
    chunk : int, pairs per chunk (bounds working memory).

    Returns
    -------
    as the contract (NumPy arrays).

    Raises
    ------
    as the contract: ValueError for an unknown backend or form, or a
    non-positive chunk.
    """
    r_ij, rotations, semiaxes, dtype = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if int(chunk) <= 0:
        raise ValueError(f"chunk must be a positive number of pairs, got {chunk!r}")
    n_pairs = r_ij.shape[0]
    out = [np.empty((n_pairs, 2 * l + 1, n), dtype=dtype) for l, n in enumerate(hypers.num_radial)]
    flat = [o.reshape(n_pairs, o.shape[1] * o.shape[2]) for o in out]
    moments_of = _moments_torch if backend == "torch" else _moments_numpy
    if backend == "torch":
        r_ij, rotations, semiaxes = (a if a.flags.writeable else a.copy() for a in (r_ij, rotations, semiaxes))
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        chunk_arrays = (r_ij[start:stop], rotations[start:stop], semiaxes[start:stop])
        expressions = planned_expressions(hypers, form, bucket_size(stop - start, chunk), dtype.name)
        if form == "body":
            moments, scale = body_frame_factors(*chunk_arrays, hypers)
            wigner = wigner_matrices(chunk_arrays[1], hypers)
            convert = _as_torch if backend == "torch" else np.ascontiguousarray
            operands = [
                (convert(moments[:, 0, :k]), convert(moments[:, 1, :k]), convert(moments[:, 2, :k]),
                 convert(scale), convert(wigner[l]))
                for l, (_, k, _) in enumerate(expressions)
            ]
        else:
            moments, scale = moments_of(*chunk_arrays, hypers)
            operands = [(moments[:k], scale) for _, k, _ in expressions]
        for (expr, _, columns), args in zip(expressions, operands):
            block = expr(*args, backend=backend)
            block = block.numpy() if backend == "torch" else block
            block = block.reshape(stop - start, -1)
            for l, first, last in columns:
                flat[l][start:stop] = block[:, first:last]
    return out


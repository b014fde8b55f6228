"""What the Torch family's variants share: the expansion of a chunk of pairs in Torch.

Used by :mod:`.pairs` (``torch_einsum``, ``torch_compiled``, ``torch_cuda``),
:mod:`.density` (through it) and :mod:`.gradients` (autograd through the same
arithmetic), and by ``opt_einsum_torch``:

- the tables: the moment recurrence one degree layer at a time
  (:func:`layer_plan`) and the solid-harmonic tables grouped into GEMMs
  (:func:`contraction_groups`);
- the core: body-frame Gaussians (:func:`body_frame_gaussians`), moments
  (:func:`normal_moments_t`, :func:`normal_moments_functional`), one chunk's
  coefficients (:func:`chunk_core`);
- devices and tensors: :data:`TORCH_DTYPES`, :func:`cuda_unavailable_reason`,
  :func:`to_tensor`, :func:`resolve_device`.

The algorithm is stated in :mod:`.pairs` (DESIGN.md section 7). Imports Torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.tables import num_monomials, recurrence_table, stacked_tables

#: NumPy dtype -> Torch dtype of the two compute dtypes.
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


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
def layer_plan(max_degree: int, dtype: torch.dtype, device: str) -> tuple:
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
def contraction_groups(hypers: ExpansionHypers, dtype: torch.dtype, device: str) -> tuple:
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
    plan : the ``layer_plan`` for (max_degree, dtype, device), or None to look it up
        (a compiled caller passes it: Dynamo must not trace the cache).

    Returns
    -------
    (num_monomials(max_degree), P) tensor in the flat order of ``kernels.tables``.
    """
    n_pairs = centre.shape[0]
    if plan is None:
        plan = layer_plan(max_degree, centre.dtype, str(centre.device))
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


def chunk_core(r_ij, rotations, semiaxes, *, hypers: ExpansionHypers, plan=None, groups=None,
                functional: bool = False):
    """Coefficients of one chunk: tuple over GEMM groups of (P, Q_group) tensors.

    ``plan`` and ``groups`` (``layer_plan``, ``contraction_groups``) are
    looked up when None; the compiled core receives them bound, with
    ``functional=True`` (no in-place writes, see ``normal_moments_functional``).
    """
    if plan is None:
        plan = layer_plan(hypers.max_degree, r_ij.dtype, str(r_ij.device))
        groups = contraction_groups(hypers, r_ij.dtype, str(r_ij.device))
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


# ---------------------------------------------------------------- devices and tensors


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Share a NumPy array's memory with Torch on CPU (copy only a read-only one)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device)


def resolve_device(device) -> torch.device:
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


# Levi-Civita symbol: [v]_x u = v x u, so [v]_x[i, k] = eps[i, j, k] v[j]
_LEVI_CIVITA = np.zeros((3, 3, 3))
for _i, _j, _k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
    _LEVI_CIVITA[_i, _j, _k], _LEVI_CIVITA[_i, _k, _j] = 1.0, -1.0


@functools.lru_cache(maxsize=16)
def levi_civita(dtype: torch.dtype, device: str) -> torch.Tensor:
    """(3, 3, 3) Levi-Civita symbol ``eps[i, j, k]`` as a tensor (``[v]_x[i, k] = eps[i, j, k] v[j]``),
    one per dtype and device."""
    return torch.as_tensor(_LEVI_CIVITA, dtype=dtype, device=device)

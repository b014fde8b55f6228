"""The optional smooth cutoff, applied around any variant of any of the four problems.

featomic's shifted cosine (:class:`einsum_workbench.reference.cutoff.ShiftedCosine`;
DESIGN.md section 3, "Smooth cutoff (optional)") multiplies each neighbour
pair's coefficients by ``f_p = f(|r_ij|)``, with the cutoff ``rc`` the
hypers' (``hypers.cutoff``). :func:`with_smooth_cutoff` wraps a registered
variant's function and returns one with exactly the same contract
(:mod:`einsum_workbench.kernels.contract`), so that every variant gets it
without a line of its own:

- ``"pairs"``: ``c_p -> f_p c_p``;
- ``"density"``: ``rho_q = sum_{p in q} f_p c_p``. Pairs with ``f = 1`` go
  through the variant unchanged, pairs with ``f = 0`` are dropped, and only
  the shell pairs (``0 < f < 1``) need their own coefficients: from the
  same family's ``"pairs"`` variant when the registry has one of that
  name, else from the density variant with one segment per pair; scaled,
  summed into their rows and, when ``orthonormal``, orthonormalised before
  they are added (the density is linear: ``(A + B) W = A W + B W``, so the
  flag is honoured once for every pair);
- ``"gradients"``: values ``f c``; positions ``f dc/dr + c (x) f' r/|r|``;
  orientations and semi-axes ``f`` times the variant's;
- ``"backward"``: ``L = sum_p f_p <g_seg(p), c_p>`` (``g`` turned raw as
  :func:`einsum_workbench.reference.backward.raw_cotangent` does), so every
  per-pair output is ``f_p`` times the variant's and ``r`` gains
  ``<g_seg(p), c_p> f'_p r/|r|``, ``c_p`` computed for the shell pairs only.

Input checks stay the variant's: the pair, gradient and backward wrappers
run the variant first; the density wrapper runs the shared checks
(:func:`~einsum_workbench.reference.validation.check_pair_arrays`,
:func:`~einsum_workbench.reference.density.check_segments`) before it
partitions the pairs. No distance is computed on unchecked input.

Cost: a few NumPy passes over the pairs (the outputs of the variant are
scaled in place); the density's pair arrays are checked twice and its pairs
with ``f = 1`` copied once; each shell pair costs one pair expansion.
docs/variants.md ("Smooth cutoff (any variant)") gives the measured ratios.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from einsum_workbench.reference.backward import PairCotangents, check_cotangent, raw_cotangent
from einsum_workbench.reference.cutoff import ShiftedCosine
from einsum_workbench.reference.density import check_segments, orthonormalize_density
from einsum_workbench.reference.gradients import PairGradients
from einsum_workbench.reference.validation import check_hypers, check_pair_arrays

_PROBLEMS = ("pairs", "density", "gradients", "backward")  # as kernels.registry.PROBLEMS


def check_smooth_cutoff(smooth_cutoff, hypers=None):
    """``smooth_cutoff`` if it is None or a :class:`ShiftedCosine` that fits ``hypers.cutoff``.

    Parameters
    ----------
    smooth_cutoff : None or ShiftedCosine
    hypers : ExpansionHypers or None
        When given, the width is checked against its cutoff (the pipeline
        checks before it searches for neighbours).

    Raises
    ------
    TypeError
        ``smooth_cutoff`` is neither None nor a ShiftedCosine (named).
    ValueError
        its width is larger than ``hypers.cutoff`` (both named).
    """
    if smooth_cutoff is not None and not isinstance(smooth_cutoff, ShiftedCosine):
        raise TypeError(f"smooth_cutoff must be None or a ShiftedCosine(width), got "
                        f"{type(smooth_cutoff).__name__}: {smooth_cutoff!r}")
    if smooth_cutoff is not None and hypers is not None:
        smooth_cutoff.check_cutoff(check_hypers(hypers).cutoff)
    return smooth_cutoff


def _factors(r_ij, smooth_cutoff: ShiftedCosine, cutoff: float):
    """(f (P,), f' r/|r| (P, 3), indices of the pairs with f != 1, indices of the shell pairs) of checked pairs."""
    f, gradient = smooth_cutoff.pair_factors(np.asarray(r_ij, dtype=np.float64), cutoff)
    return f, gradient, np.flatnonzero(f != 1.0), np.flatnonzero((f > 0.0) & (f < 1.0))


def _scale_rows(block, rows: np.ndarray, factor: np.ndarray):
    """``block[p] *= factor[p]`` for the pairs ``rows`` only (the others have f = 1), in the
    block's dtype; in place on a fresh NumPy output, else on a copy (read-only arrays,
    the device arrays of an option such as ``keep_on_device``)."""
    if len(rows) == 0:
        return block
    if not isinstance(block, np.ndarray):
        module = importlib.import_module(type(block).__module__.partition(".")[0])
        full = np.ones(len(block))
        full[rows] = factor[rows]
        shape = (len(full),) + (1,) * (block.ndim - 1)
        return block * module.asarray(full.astype(np.dtype(block.dtype)).reshape(shape))
    if not block.flags.writeable:
        block = block.copy()
    if 4 * len(rows) > len(block):  # a contiguous pass beats a gather and scatter of many rows
        np.multiply(block, factor.astype(block.dtype).reshape((len(block),) + (1,) * (block.ndim - 1)), out=block)
    else:
        block[rows] *= factor[rows].astype(block.dtype).reshape((len(rows),) + (1,) * (block.ndim - 1))
    return block


def _weighted_segment_sums(blocks, weight, segment, n_segments: int) -> list:
    """``sum_{p: segment[p] = s} weight[p] blocks[l][p]`` per l: one sparse (n_segments, P)
    matrix, built once, times each block (no scaled copy of the blocks)."""
    from scipy.sparse import csr_matrix

    blocks = [np.asarray(b) for b in blocks]
    n = len(segment)
    rows = csr_matrix((weight.astype(blocks[0].dtype), (segment, np.arange(n))), shape=(n_segments, n))
    return [np.asarray(rows @ b.reshape(n, -1)).reshape((n_segments,) + b.shape[1:]) for b in blocks]


def _pair_coefficients(pair_variant, density: Callable | None) -> Callable:
    """``expand(r_ij, rotations, semiaxes, hypers, *, dtype)`` for the shell pairs.

    ``pair_variant`` (a registry ``Variant`` of the ``"pairs"`` problem) when
    given and it can run here, else ``density`` with one segment per pair,
    else the reference expansion. Loaded on first use, once.
    """
    cache = []

    def expand(r_ij, rotations, semiaxes, hypers, *, dtype=None):
        if not cache:
            cache.append(_load_pair_function(pair_variant, density))
        return cache[0](r_ij, rotations, semiaxes, hypers, dtype=dtype)

    return expand


def _load_pair_function(pair_variant, density):
    if pair_variant is not None and pair_variant.available:
        return pair_variant.load()
    if density is not None:
        def one_row_per_pair(r_ij, rotations, semiaxes, hypers, *, dtype=None):
            rows = np.arange(len(r_ij), dtype=np.int64)
            return density(r_ij, rotations, semiaxes, hypers, rows, len(r_ij), dtype=dtype, orthonormal=False)

        return one_row_per_pair
    from einsum_workbench.reference.expansion import pairwise_ellip_expansion

    return pairwise_ellip_expansion


def _pairs(function, smooth_cutoff: ShiftedCosine) -> Callable:
    def expand(r_ij, rotations, semiaxes, hypers, *, dtype=None, **options):
        coefficients = function(r_ij, rotations, semiaxes, hypers, dtype=dtype, **options)  # the variant checks
        f, _, scaled, _ = _factors(r_ij, smooth_cutoff, hypers.cutoff)
        return [_scale_rows(c, scaled, f) for c in coefficients]

    return expand


def _density(function, smooth_cutoff: ShiftedCosine, shell_coefficients: Callable) -> Callable:
    def centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *, dtype=None,
                       orthonormal: bool = False, **options):
        check_hypers(hypers)
        segment, n_segments = check_segments(segment, n_segments, np.shape(r_ij)[0] if np.ndim(r_ij) else -1)
        r_ij, rotations, semiaxes, _ = check_pair_arrays(r_ij, rotations, semiaxes, dtype, hypers=hypers)
        f, _, scaled, shell = _factors(r_ij, smooth_cutoff, hypers.cutoff)
        arrays = (r_ij, rotations, semiaxes, segment)
        if len(scaled):  # the variant sums the pairs with f = 1 only (np.take: 5x a boolean mask)
            inner = np.flatnonzero(f == 1.0)
            arrays = tuple(np.take(a, inner, axis=0) for a in arrays)
        density = function(*arrays[:3], hypers, arrays[3], n_segments, dtype=dtype, orthonormal=orthonormal,
                           **options)
        if len(shell) == 0:
            return density
        pairs = shell_coefficients(*(np.take(a, shell, axis=0) for a in (r_ij, rotations, semiaxes)), hypers,
                                   dtype=dtype)
        extra = _weighted_segment_sums(pairs, f[shell], segment[shell], n_segments)
        if orthonormal:  # the variant orthonormalised its rows; these, linear, get W_l once too
            orthonormalize_density(extra, hypers)
        for rho, add in zip(density, extra):
            rho += add.astype(rho.dtype, copy=False)
        return density

    return centre_density


def _gradients(function, smooth_cutoff: ShiftedCosine) -> Callable:
    def expand_with_gradients(r_ij, rotations, semiaxes, hypers, *, dtype=None, semiaxes_gradients: bool = False,
                              **options):
        out = function(r_ij, rotations, semiaxes, hypers, dtype=dtype, semiaxes_gradients=semiaxes_gradients,
                       **options)  # the variant checks
        f, df, scaled, shell = _factors(r_ij, smooth_cutoff, hypers.cutoff)
        if len(scaled) == 0:
            return out
        positions = []
        for c, dc in zip(out.values, out.positions):
            term = df[shell].astype(c.dtype)[:, :, None, None] * np.asarray(c)[shell][:, None]  # c (x) f' r/|r|
            dc = _scale_rows(dc, scaled, f)
            dc[shell] += term
            positions.append(dc)
        return PairGradients(
            values=[_scale_rows(c, scaled, f) for c in out.values],
            positions=positions,
            orientations=[_scale_rows(d, scaled, f) for d in out.orientations],
            semiaxes=None if out.semiaxes is None else [_scale_rows(d, scaled, f) for d in out.semiaxes],
        )

    return expand_with_gradients


def _backward(function, smooth_cutoff: ShiftedCosine, shell_coefficients: Callable) -> Callable:
    def centre_density_backward(r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, *, dtype=None,
                                orthonormal: bool = False, semiaxes_gradients: bool = False, **options):
        out = function(r_ij, rotations, semiaxes, hypers, segment, n_segments, cotangent, dtype=dtype,
                       orthonormal=orthonormal, semiaxes_gradients=semiaxes_gradients, **options)  # the variant checks
        f, df, scaled, shell = _factors(r_ij, smooth_cutoff, hypers.cutoff)
        r = _scale_rows(out.r, scaled, f)
        if len(shell):
            raw = raw_cotangent(check_cotangent(cotangent, hypers, int(n_segments)), hypers, bool(orthonormal))
            rows = np.asarray(segment, dtype=np.int64)[shell]
            # the shell's pairs in the variant's compute dtype (checked arrays: cheap, shell only)
            r_s, rot_s, ax_s, kind = check_pair_arrays(*(np.asarray(a)[shell] for a in (r_ij, rotations, semiaxes)),
                                                       dtype, hypers=hypers)
            c = shell_coefficients(r_s, rot_s, ax_s, hypers, dtype=kind)
            weight = sum(np.einsum("pmn,pmn->p", g[rows], np.asarray(block, dtype=np.float64))
                         for g, block in zip(raw, c))  # <g_seg(p), c_p>
            r[shell] += (weight[:, None] * df[shell]).astype(r.dtype)
        return PairCotangents(
            r=r,
            theta=_scale_rows(out.theta, scaled, f),
            semiaxes=None if out.semiaxes is None else _scale_rows(out.semiaxes, scaled, f),
        )

    return centre_density_backward


_WRAPPERS = {"pairs": _pairs, "density": _density, "gradients": _gradients, "backward": _backward}


def with_smooth_cutoff(function: Callable, problem: str, smooth_cutoff: ShiftedCosine | None, *,
                       name: str | None = None, pair_variant=None) -> Callable:
    """``function`` with the shifted-cosine smooth cutoff applied (module docstring).

    Parameters
    ----------
    function : callable
        A variant's function for ``problem`` (its registered options bound,
        as :meth:`~einsum_workbench.kernels.registry.Variant.load` returns it).
    problem : {"pairs", "density", "gradients", "backward"}
    smooth_cutoff : ShiftedCosine or None
        None returns ``function`` itself (upstream's hard cutoff, bit for bit).
    name : str or None
        The variant's registry name: names the returned function
        (``<name>_smooth_cutoff``).
    pair_variant : kernels.registry.Variant or None
        The same family's ``"pairs"`` entry (the registry passes the entry
        of the same name, where there is one): for the density and backward
        problems, the shell pairs' coefficients come from it when it can run
        here, loaded on first use; else from ``function`` with one segment
        per pair (density) or from the reference expansion (backward).

    Returns
    -------
    callable with the contract of ``problem`` (:mod:`einsum_workbench.kernels.contract`),
    the same arguments, options, dtypes and errors as ``function``, and, on
    every call, ``ValueError`` when ``smooth_cutoff.width > hypers.cutoff``.
    Its attributes ``smooth_cutoff`` and ``wrapped`` hold the cutoff and ``function``.

    Raises
    ------
    TypeError
        ``smooth_cutoff`` is neither None nor a ShiftedCosine (named).
    ValueError
        an unknown ``problem`` (named, the four listed).
    """
    if problem not in _WRAPPERS:
        raise ValueError(f"problem must be one of {_PROBLEMS}, got {problem!r}")
    if check_smooth_cutoff(smooth_cutoff) is None:
        return function
    if problem in ("density", "backward"):
        shell = _pair_coefficients(pair_variant, function if problem == "density" else None)
        smoothed = _WRAPPERS[problem](function, smooth_cutoff, shell)
    else:
        smoothed = _WRAPPERS[problem](function, smooth_cutoff)
    label = name or getattr(function, "__name__", problem)
    smoothed.__name__ = f"{label}_smooth_cutoff"
    smoothed.__doc__ = (f"{label} ({problem}) with the smooth cutoff {smooth_cutoff!r}: "
                        "kernels.smooth_cutoff states what changes.\n\n" + (function.__doc__ or ""))
    smoothed.smooth_cutoff = smooth_cutoff
    smoothed.wrapped = function
    return smoothed

"""The power spectrum's backward pass: ``dE/drho`` from ``dE/dp``, one batched product per l.

DESIGN.md section 3, "Power spectrum backward". Per centre and l the power
spectrum of :mod:`einsum_workbench.pipeline.power_spectrum` is

    p_l[(a, b)] = const_l sum_m rho_l[m, a] rho_l[m, b],   const_l = (-1)^l / sqrt(2l+1)

over the density block's property columns a, b (``(n, neighbour species)``
in the block's layout). With ``G = dE/dp_l`` as a (Q, Q) matrix per centre,

    dE/drho_l[m, k] = const_l sum_b (G + G^T)[k, b] rho_l[m, b],   i.e. const_l rho_l @ (G + G^T)

(:func:`power_spectrum_block_backward`). The per-structure mean divides by the
structure's number of centres of that species, so its cotangent reaches each
centre as ``G_structure / count`` (:func:`mean_over_centres_backward`). The
blocks are a rearrangement of the density rows
(:meth:`einsum_workbench.pipeline.layout.DensityLayout.block_values`), undone
by :func:`density_cotangent_from_blocks`, so the result is a cotangent on the
density rows: what a backward variant (registry problem ``"backward"``)
takes, and :func:`einsum_workbench.pipeline.forces.forces_of_table` with it.

:func:`einsum_workbench.pipeline.power_spectrum.power_spectrum` with
``weights=`` (or ``cotangent=``) runs this after its forward pass and one
backward variant call after it, writing no per-pair Jacobian.
"""

from __future__ import annotations

import numba
import numpy as np

from einsum_workbench.pipeline.density import density_blocks
from einsum_workbench.pipeline.layout import DensityLayout, check_property_layout


def coupling_constant(l: int) -> float:
    """Real Clebsch-Gordan coefficient <l m; l m | 0 0> of AniSOAP's real basis: (-1)^l / sqrt(2l+1).

    Defined here, below :mod:`einsum_workbench.pipeline.power_spectrum` (which
    re-exports it), because the power spectrum imports its backward."""
    return (-1.0) ** l / np.sqrt(2 * l + 1)


def power_spectrum_block_backward(block: np.ndarray, cotangent: np.ndarray, l: int) -> np.ndarray:
    """``dE/drho`` of one l's per-centre power spectrum.

    Parameters
    ----------
    block : (S, 2l+1, Q) float array
        Density block (columns in the order the power spectrum used).
    cotangent : (S, Q * Q) or (S, Q, Q) float array
        ``dE/dp_l`` per centre, columns (a, b) a-major as
        :func:`~einsum_workbench.pipeline.power_spectrum.species_power_spectrum`.
    l : int

    Returns
    -------
    (S, 2l+1, Q) float64: ``const_l rho @ (G + G^T)`` per centre.

    Raises
    ------
    ValueError
        a cotangent whose shape does not match the block (both named).
    """
    block = np.asarray(block, dtype=np.float64)
    n, q = block.shape[0], block.shape[2]
    g = np.asarray(cotangent, dtype=np.float64)
    if g.shape not in ((n, q * q), (n, q, q)):
        raise ValueError(f"power-spectrum cotangent for l = {l} must have shape ({n}, {q * q}) or ({n}, {q}, {q}) "
                         f"for a density block of shape {block.shape}, got {g.shape}")
    return _block_backward(np.ascontiguousarray(block), np.ascontiguousarray(g.reshape(n, q, q)), coupling_constant(l))


@numba.njit(cache=True)
def _block_backward(block, g, scale):
    """(S, M, Q): ``scale * sum_b block[s, m, b] * (g[s, a, b] + g[s, b, a])``, one compiled loop
    (NumPy's batched matmul costs ~0.5 us per centre on these 1x1 to 8x8 products: about 10x this)."""
    n_samples, n_m, n_q = block.shape
    out = np.zeros((n_samples, n_m, n_q))
    sym = np.empty((n_q, n_q))
    for s in range(n_samples):
        for a in range(n_q):
            for b in range(n_q):
                sym[a, b] = scale * (g[s, a, b] + g[s, b, a])
        for m in range(n_m):
            for a in range(n_q):
                total = 0.0
                for b in range(n_q):
                    total += block[s, m, b] * sym[a, b]
                out[s, m, a] = total
    return out


def species_power_spectrum_backward(blocks_c, cotangent_c) -> list:
    """``dE/d(block)`` of one centre species from ``dE/dp`` on its per-centre power spectrum.

    Parameters
    ----------
    blocks_c : list over l of (S, 2l+1, Q_l) density blocks of the species
    cotangent_c : (S, F_c) float array, F_c = sum_l Q_l^2, columns as
        :func:`~einsum_workbench.pipeline.power_spectrum.species_power_spectrum`

    Returns
    -------
    list over l of (S, 2l+1, Q_l) float64.

    Raises
    ------
    ValueError
        ``cotangent_c`` is not (S, F_c) (named with the expected shape).
    """
    cotangent_c = np.asarray(cotangent_c, dtype=np.float64)
    widths = [b.shape[2] ** 2 for b in blocks_c]
    n = blocks_c[0].shape[0] if blocks_c else 0
    if cotangent_c.shape != (n, sum(widths)):
        raise ValueError(f"per-centre power-spectrum cotangent must have shape ({n}, {sum(widths)}), "
                         f"got {cotangent_c.shape}")
    starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    return [power_spectrum_block_backward(block, cotangent_c[:, starts[l]:starts[l + 1]], l)
            for l, block in enumerate(blocks_c)]


def mean_over_centres_backward(cotangent: np.ndarray, systems: np.ndarray, n_frames: int) -> np.ndarray:
    """Cotangent of the per-centre rows from that of their per-system means.

    Parameters
    ----------
    cotangent : (n_frames, F) float array, ``dE/d(mean)`` per system
    systems : (S,) int, the system of each centre row
    n_frames : int

    Returns
    -------
    (S, F) float64: ``cotangent[systems[s]] / count[systems[s]]``, the
    backward of :func:`~einsum_workbench.pipeline.power_spectrum.mean_over_centres`.

    Raises
    ------
    ValueError
        a cotangent with the wrong number of rows.
    """
    cotangent = np.asarray(cotangent, dtype=np.float64)
    systems = np.asarray(systems, dtype=np.int64)
    if cotangent.ndim != 2 or cotangent.shape[0] != n_frames:
        raise ValueError(f"per-structure cotangent must have shape ({n_frames}, F), got {cotangent.shape}")
    counts = np.bincount(systems, minlength=n_frames)
    return cotangent[systems] / counts[systems][:, None]


def density_cotangent_from_blocks(layout: DensityLayout, block_cotangents, property_layout: str = "labelled") -> list:
    """The inverse rearrangement of :meth:`DensityLayout.block_values`, applied to cotangents.

    Parameters
    ----------
    layout : DensityLayout
    block_cotangents : list over centre species c of lists over l of (S_c, 2l+1, n_l * E_c)
    property_layout : {"labelled", "upstream"}
        The column order of the blocks.

    Returns
    -------
    list over l of (n_segments, 2l+1, n_l) float64: the cotangent on the
    density rows (the blocks are a permutation of the rows, so this is exact).
    """
    check_property_layout(property_layout)
    n_l = len(block_cotangents[0]) if block_cotangents else 0
    out = []
    for l in range(n_l):
        n_radial = block_cotangents[0][l].shape[2] // len(layout.neighbour_types[0])
        rows = np.zeros((layout.n_segments, 2 * l + 1, n_radial))
        for c, per_l in enumerate(block_cotangents):
            block = per_l[l]
            n_centres, n_types = len(layout.samples[c]), len(layout.neighbour_types[c])
            if property_layout == "upstream":  # columns n * E + e
                block = block.reshape(n_centres, 2 * l + 1, n_radial, n_types).transpose(0, 3, 1, 2)
            else:  # columns e * n_l + n
                block = block.reshape(n_centres, 2 * l + 1, n_types, n_radial).transpose(0, 2, 1, 3)
            rows[layout.offsets[c]:layout.offsets[c + 1]] = block.reshape(n_centres * n_types, 2 * l + 1, n_radial)
        out.append(rows)
    return out


def centre_power_spectrum_backward(layout: DensityLayout, density, cotangents) -> list:
    """``dE/drho`` on the density rows from ``dE/dp`` on the per-centre power spectrum.

    The backward of the per-centre features (no mean over centres):
    :func:`~einsum_workbench.pipeline.power_spectrum.species_power_spectrum`
    of every centre species on the labelled blocks, as
    :func:`~einsum_workbench.pipeline.power_spectrum.power_spectrum_tensormap`
    lays them out (DESIGN.md section 3, "Power spectrum backward": one batched
    product per l and species).

    Parameters
    ----------
    layout : DensityLayout
    density : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        The density the power spectrum was built from (``density_of_table``).
    cotangents : sequence over the centre species ``layout.centre_types`` of (S_c, F_c) float arrays
        ``dE/dp`` of each centre species' centres (rows ``layout.samples[c]``),
        columns as ``species_power_spectrum(layout, blocks, c)``.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) float64: a cotangent for
    a backward variant (with ``orthonormal`` as the density was computed).

    Raises
    ------
    ValueError
        not one cotangent per centre species (both counts named), or one of the
        wrong shape (the species and both shapes named).
    """
    if len(cotangents) != len(layout.centre_types):
        raise ValueError(f"per-centre power-spectrum cotangents: one per centre species "
                         f"{layout.centre_types.tolist()} ({len(layout.centre_types)}), got {len(cotangents)}")
    blocks = density_blocks(layout, density, property_layout="labelled")
    per_species = []
    for c, (blocks_c, g) in enumerate(zip(blocks, cotangents)):
        try:
            per_species.append(species_power_spectrum_backward(blocks_c, g))
        except ValueError as error:
            raise ValueError(f"centre species {int(layout.centre_types[c])}: {error}") from None
    return density_cotangent_from_blocks(layout, per_species, "labelled")


def structure_power_spectrum_backward(layout: DensityLayout, density, cotangent) -> list:
    """``dE/drho`` on the density rows from ``dE/dp`` on the per-structure power spectrum.

    The backward of :func:`einsum_workbench.pipeline.power_spectrum.power_spectrum`'s
    values (labelled blocks, per centre species the mean over its centres,
    species side by side).

    Parameters
    ----------
    layout : DensityLayout
    density : list over l of (n_segments, 2l+1, num_radial[l]) float arrays
        The density the power spectrum was built from (``density_of_table``).
    cotangent : (n_frames, n_features) float array
        ``dE/d(PowerSpectrum.values)``.

    Returns
    -------
    list over l of (n_segments, 2l+1, num_radial[l]) float64: a cotangent for
    a backward variant (with ``orthonormal`` as the density was computed).

    Raises
    ------
    ValueError
        ``cotangent`` is not (n_frames, n_features) (both named).
    """
    n_radial = [rho.shape[2] for rho in density]
    widths = [sum((n * len(types)) ** 2 for n in n_radial) for types in layout.neighbour_types]
    cotangent = np.ascontiguousarray(cotangent, dtype=np.float64)
    if cotangent.shape != (layout.n_frames, sum(widths)):
        raise ValueError(f"power-spectrum cotangent must have shape ({layout.n_frames}, {sum(widths)}) "
                         f"(frames, features), got {cotangent.shape}")
    out = [np.zeros(rho.shape) for rho in density]
    start = 0
    for c, types in enumerate(layout.neighbour_types):
        systems = layout.samples[c][:, 0].astype(np.int64)
        weight = 1.0 / np.bincount(systems, minlength=layout.n_frames)[systems]  # the mean's backward
        rows = slice(int(layout.offsets[c]), int(layout.offsets[c + 1]))
        for l, rho in enumerate(density):
            _rows_backward(np.ascontiguousarray(rho[rows], dtype=np.float64), cotangent, start, systems, weight,
                           len(types), coupling_constant(l), out[l][rows])
            start += (n_radial[l] * len(types)) ** 2
    return out


@numba.njit(cache=True)
def _rows_backward(rows, cotangent, start, systems, weight, n_types, scale, out):
    """:func:`power_spectrum_block_backward` and the mean's backward of one centre species and l,
    read from and written to the density rows themselves (no block copies, one compiled loop).

    ``rows``/``out``: (S * E, 2l+1, n) rows (centre u, neighbour species e) at ``u * E + e``;
    block column ``a = e * n + n_a`` (labelled); the centre's cotangent columns are
    ``cotangent[systems[u], start + a * Q + b]`` times ``weight[u]`` (1 / its structure's centres).
    """
    n_m, n_r = rows.shape[1], rows.shape[2]
    q = n_types * n_r
    sym = np.empty((q, q))
    for u in range(len(systems)):
        f = systems[u]
        w = weight[u] * scale
        for a in range(q):
            for b in range(q):
                sym[a, b] = w * (cotangent[f, start + a * q + b] + cotangent[f, start + b * q + a])
        base = u * n_types
        for ea in range(n_types):
            for na in range(n_r):
                a = ea * n_r + na
                for m in range(n_m):
                    total = 0.0
                    for eb in range(n_types):
                        for nb in range(n_r):
                            total += rows[base + eb, m, nb] * sym[a, eb * n_r + nb]
                    out[base + ea, m, na] = total

"""AniSOAP's power spectrum from the centre density: one contraction per l.

Upstream's ``power_spectrum`` couples the density with itself to total
angular momentum 0 (``cg_combine`` with ``lcut=0``, centre species matched)
in a Python loop over blocks and Clebsch-Gordan entries. For lambda = 0 the
real Clebsch-Gordan coefficient of two l channels is ``(-1)^l / sqrt(2l+1)``
on the diagonal m1 = m2 and zero elsewhere (read off upstream's
``ClebschGordanReal``; a test checks it, sign included), so per centre and l:

    p_l[(q_a, q_b)] = (-1)^l / sqrt(2l+1) * sum_m rho_l[m, q_a] rho_l[m, q_b]

with q the density block's property columns: one batched matrix product per
l and centre species (DESIGN.md section 3, "Power spectrum"). Properties
follow upstream's order: l ascending, then (q_a, q_b) with q_a major,
labelled ``(n_1_a, neighbor_types_1_a, k_2, n_1_b, neighbor_types_1_b, l_2)``.

Per structure, upstream's ``mean_over_samples`` averages over the centres.
:func:`power_spectrum` returns that for any number of centre species: the
per-species means side by side (zeros where a structure has no centre of a
species), with labels that describe the values.

Gradients (``gradients=["positions", "orientations"]``) follow from the
density's (:mod:`einsum_workbench.pipeline.gradients`) by the chain rule,

    dp_l[(q_a, q_b)] = const_l sum_m (drho[m, q_a] rho[m, q_b] + rho[m, q_a] drho[m, q_b])

(:func:`power_spectrum_gradient`), and per structure as the mean over its
centres (:func:`structure_gradients`): the per-pair Jacobian path.

A model on the features needs no Jacobian: ``power_spectrum(...,
weights=w)`` (or ``cotangent=dE/dvalues``) runs the forward pass
(:func:`power_spectrum_pass`: neighbour pairs grouped by segment, one
density variant call, the power spectrum), then ``dE/drho``
(:mod:`einsum_workbench.pipeline.power_spectrum_backward`), one backward
variant call and the sums onto atoms (:mod:`einsum_workbench.pipeline.forces`):
energy, forces, torques, strain derivative and stress (DESIGN.md section 3,
"Power spectrum backward" and "Backward pass").
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numba
import numpy as np

from einsum_workbench.reference.frames import AtomsTable
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers

from einsum_workbench.pipeline.density import density_blocks, density_of_frames
from einsum_workbench.pipeline.forces import AtomForces, ForcePairs, force_pairs, forces_of_pairs, load_backward, load_density
from einsum_workbench.pipeline.gradients import GradientRows, check_gradients, density_gradients_of_frames
from einsum_workbench.pipeline.layout import DensityLayout, property_rows
from einsum_workbench.pipeline.power_spectrum_backward import coupling_constant, structure_power_spectrum_backward
from einsum_workbench.pipeline.stages import stage
from einsum_workbench.pipeline.tensormaps import (
    POWER_SPECTRUM_PROPERTIES,
    power_spectrum_block,
    power_spectrum_map,
    tensormap_gradients,
)


def species_power_spectrum(layout: DensityLayout, blocks, c: int):
    """Power spectrum of every centre of species index ``c``.

    Parameters
    ----------
    layout : DensityLayout
    blocks : ``density_blocks(layout, density, ...)``; the products are taken
        over the columns of ``blocks[c][l]`` in their order.
    c : int
        Index into ``layout.centre_types``.

    Returns
    -------
    values : (S_c, F_c) float64, F_c = sum_l (num_radial[l] * E_c)^2
    properties : (F_c, 6) int32 rows ``(n_a, e_a, l, n_b, e_b, l)`` built
        from the density's labels (species-major), as upstream builds them
        (names: ``tensormaps.POWER_SPECTRUM_PROPERTIES``).
    """
    return _species_values(blocks[c]), species_power_spectrum_properties(layout, blocks, c)


def _species_values(blocks_c) -> np.ndarray:
    """(S, F) values of :func:`species_power_spectrum` from one species' blocks (list over l)."""
    species_blocks = tuple(np.ascontiguousarray(block, dtype=np.float64) for block in blocks_c)
    widths = [block.shape[2] ** 2 for block in species_blocks]
    values = np.empty((len(species_blocks[0]) if species_blocks else 0, sum(widths)))
    # every l in one compiled call, into its columns (14 calls and a stack cost ~40 us on small frames)
    first_column = np.fromiter(itertools.accumulate(widths[:-1], initial=0), np.int64, len(widths))
    _products_over_m_per_l(species_blocks, _coupling_constants(len(species_blocks)), first_column, values)
    return values


@functools.lru_cache(maxsize=64)
def _coupling_constants(n_l: int) -> np.ndarray:
    """(n_l,) :func:`coupling_constant` of l = 0 .. n_l - 1."""
    return np.array([coupling_constant(l) for l in range(n_l)], dtype=np.float64)


@numba.njit(cache=True)
def _products_over_m_per_l(blocks, scales, first_column, out):
    """``scales[l] * sum_m blocks[l][s, m, a] * blocks[l][s, m, b]`` for every l (a tuple of
    (S, 2l+1, Q_l) arrays), written flat (a, b) into ``out[:, first_column[l]:]`` (S, F). One
    compiled loop: NumPy's batched matmul costs ~0.5 us per centre on these 1x1 to 8x8 products."""
    for l in range(len(blocks)):
        block = blocks[l]
        n_samples, n_m, n_q = block.shape
        column = first_column[l]
        scale = scales[l]
        for s in range(n_samples):
            for a in range(n_q):
                for b in range(n_q):
                    total = 0.0
                    for m in range(n_m):
                        total += block[s, m, a] * block[s, m, b]
                    out[s, column + a * n_q + b] = scale * total


def species_power_spectrum_properties(layout: DensityLayout, blocks, c: int) -> np.ndarray:
    """The (F_c, 6) int32 property rows of :func:`species_power_spectrum` (without its values)."""
    return _species_properties(*_property_key(layout, blocks, c))


def species_power_spectrum_property_labels(layout: DensityLayout, blocks, c: int):
    """:func:`species_power_spectrum_properties` as metatensor Labels (one object per labels, built once)."""
    return _species_property_labels(*_property_key(layout, blocks, c))


def _property_key(layout: DensityLayout, blocks, c: int) -> tuple:
    """(neighbour types, radial counts per l) of centre species ``c``: what its property rows depend on."""
    types = tuple(layout.neighbour_types[c].tolist())
    return types, tuple(block.shape[2] // len(types) for block in blocks[c])


@functools.lru_cache(maxsize=256)
def _species_property_labels(types: tuple, num_radial: tuple):
    from metatensor import Labels

    # unique by construction: (n_a, e_a, l) and (n_b, e_b, l) range over distinct columns
    return Labels(list(POWER_SPECTRUM_PROPERTIES), _species_properties(types, num_radial), assume_unique=True)


@functools.lru_cache(maxsize=256)
def _species_properties(types: tuple, num_radial: tuple) -> np.ndarray:
    """:func:`species_power_spectrum_properties` of neighbour ``types`` and radial counts per l (built once)."""
    rows = np.vstack([_power_spectrum_properties(types, n, l) for l, n in enumerate(num_radial)])
    rows.flags.writeable = False  # shared between calls
    return rows


def species_power_spectrum_means(layout: DensityLayout, blocks, c: int, n_frames: int):
    """Per-structure mean over the centres of species index ``c`` of their power spectrum, in one pass.

    The values of ``mean_over_centres(species_power_spectrum(layout, blocks, c)[0],
    layout.samples[c][:, 0], n_frames)`` (the same sums in the same order), without the
    (S_c, F_c) per-centre matrix: each centre's products are added into its structure's row
    as they are formed (``_structure_products``; on 1,000 ellipsoid frames 0.30 ms against
    1.07 for the two steps, Intel Xeon, one thread).

    Parameters
    ----------
    layout : DensityLayout
    blocks : ``density_blocks(layout, density, ...)``
    c : int, index into ``layout.centre_types``
    n_frames : int, rows of the result; ``layout.samples[c][:, 0]`` must lie in ``[0, n_frames)``

    Returns
    -------
    (means (n_frames, F_c) float64, zeros for structures without a centre of the species;
    present (n_frames,) bool)
    """
    per_l = tuple(np.ascontiguousarray(block, dtype=np.float64) for block in blocks[c])
    scales = np.array([coupling_constant(l) for l in range(len(per_l))], dtype=np.float64)
    systems = np.ascontiguousarray(layout.samples[c][:, 0], dtype=np.int64)
    width = sum(block.shape[2] ** 2 for block in per_l)
    if not per_l or not len(systems):
        return np.zeros((n_frames, width)), np.zeros(n_frames, dtype=bool)
    return _structure_products(per_l, scales, systems, n_frames, width)


@numba.njit(cache=True)
def _structure_products(blocks, scales, systems, n_frames, width):
    """(means (n_frames, width), present): per centre s and l, ``scale_l sum_m b[s, m, a] b[s, m, b]``
    added into row ``systems[s]`` (columns l-major, then (a, b) a-major), then each row divided by
    its count of centres (``systems`` in any order; the layout gives them non-decreasing)."""
    sums = np.zeros((n_frames, width))
    counts = np.zeros(n_frames, np.int64)
    n_samples = len(systems)
    for s in range(n_samples):
        counts[systems[s]] += 1
    offset = 0
    for l in range(len(blocks)):  # one pass per l over every centre: the l's block stays in cache
        block = blocks[l]
        n_m, n_q = block.shape[1], block.shape[2]
        scale = scales[l]
        for s in range(n_samples):
            f = systems[s]
            for a in range(n_q):
                for b in range(n_q):
                    total = 0.0
                    for m in range(n_m):
                        total += block[s, m, a] * block[s, m, b]
                    sums[f, offset + a * n_q + b] += total * scale
        offset += n_q * n_q
    present = counts > 0
    for f in range(n_frames):
        if counts[f]:
            sums[f] /= counts[f]
    return sums, present


@functools.lru_cache(maxsize=1024)
def _power_spectrum_properties(types: tuple, n_radial: int, l: int) -> np.ndarray:
    """(Q * Q, 6) int32 rows ``(n_a, e_a, l, n_b, e_b, l)`` of one l (the same in every call: built once)."""
    labels = property_rows(types, n_radial)      # (Q, 2) species-major
    q = len(labels)
    a, b = np.repeat(labels, q, axis=0), np.tile(labels, (q, 1))
    lcol = np.full((q * q, 1), l, dtype=np.int32)
    rows = np.hstack([a, lcol, b, lcol]).astype(np.int32)
    rows.flags.writeable = False  # shared between calls
    return rows


def power_spectrum_gradient(block: np.ndarray, gradient: np.ndarray, sample_rows: np.ndarray, l: int):
    """Chain rule of one l's power spectrum.

    Parameters
    ----------
    block : (S, 2l+1, Q) the density block (labelled or upstream columns)
    gradient : (G, 3, 2l+1, Q) its gradient rows, in the same column order
    sample_rows : (G,) int, the values row of each gradient row
    l : int

    Returns
    -------
    (G, 3, Q * Q) float64: ``const_l sum_m (drho[m, a] rho[m, b] + rho[m, a] drho[m, b])``,
    columns (a, b) a-major as :func:`species_power_spectrum`.
    """
    rho = block[sample_rows]                                       # (G, 2l+1, Q)
    half = np.swapaxes(gradient, 2, 3) @ rho[:, None]               # (G, 3, Q, Q): sum over m
    both = half + half.transpose(0, 1, 3, 2)
    return coupling_constant(l) * both.reshape(len(gradient), 3, -1)


def species_power_spectrum_gradients(blocks_c, gradients_c) -> dict:
    """Power-spectrum gradients of one centre species.

    Parameters
    ----------
    blocks_c : list over l of (S, 2l+1, Q_l) density blocks of the species
    gradients_c : dict parameter -> (samples (G, 3), list over l of (G, 3, 2l+1, Q_l))

    Returns
    -------
    dict parameter -> (samples (G, 3) int32, values (G, 3, F)) with F the
    columns of :func:`species_power_spectrum`.
    """
    out = {}
    for parameter, (samples, per_l) in gradients_c.items():
        rows = samples[:, 0]
        values = [power_spectrum_gradient(block, g, rows, l) for l, (block, g) in enumerate(zip(blocks_c, per_l))]
        out[parameter] = (samples, np.concatenate(values, axis=2))
    return out


def power_spectrum_tensormap(layout: DensityLayout, blocks, gradients=None):
    """Upstream's ``mvg_nu2`` (``power_spectrum(..., mean_over_samples=False)``).

    Parameters
    ----------
    layout : DensityLayout
    blocks : ``density_blocks(layout, density, ...)``
    gradients : None or the density's gradient rows in the same column order
        (``pipeline.tensormaps.tensormap_gradients``): adds gradient blocks by
        the chain rule (samples ``sample, system, atom``, components ``xyz``
        then ``spherical_harmonics_m``).

    Returns
    -------
    metatensor.TensorMap, keys ``(order_nu, angular_channel, types_center)`` =
    (2, 0, c); per centre species one block, samples ("type", "center"),
    components ``spherical_harmonics_m`` = [0], values (S_c, 1, F_c).
    """
    tensor_blocks = []
    for c in range(len(layout.centre_types)):
        with stage("power_spectrum"):
            values = _species_values(blocks[c])
            derivatives = species_power_spectrum_gradients(
                blocks[c], {p: rows[c] for p, rows in (gradients or {}).items()})
        with stage("tensormap"):
            properties = species_power_spectrum_property_labels(layout, blocks, c)
            tensor_blocks.append(power_spectrum_block(layout.samples[c], values, properties, derivatives))
    with stage("tensormap"):
        return power_spectrum_map(layout.centre_types, tensor_blocks)


def mean_over_centres(values: np.ndarray, systems: np.ndarray, n_frames: int):
    """Mean of ``values`` rows per system.

    Parameters
    ----------
    values : (S, F) float
    systems : (S,) int, non-decreasing system index of each row
    n_frames : int

    Returns
    -------
    (means (n_frames, F) with zeros for systems without rows, present (n_frames,) bool)
    """
    means = np.zeros((n_frames, values.shape[1]), dtype=values.dtype)
    present = np.zeros(n_frames, dtype=bool)
    if len(values):
        starts = np.flatnonzero(np.concatenate([[True], systems[1:] != systems[:-1]]))
        counts = np.diff(np.append(starts, len(systems)))
        means[systems[starts]] = np.add.reduceat(values, starts, axis=0) / counts[:, None]
        present[systems[starts]] = True
    return means, present


@dataclass
class StructureGradients(GradientRows):
    """Gradients of per-structure features with respect to one parameter.

    :class:`~einsum_workbench.pipeline.gradients.GradientRows` whose rows are
    structures: ``samples`` (G, 2) int32 ``(system, atom)``, the structure and
    the atom (index within it) that moves; ``values`` (G, 3, n_features)
    float64, the derivative of the structure's features along each lab axis
    (positions: angstrom^-1; orientations: per radian of rotation of the
    atom's body frame about that axis).
    """


def structure_gradients(per_species, n_centres_per_system, column_offsets, n_features: int) -> StructureGradients:
    """Per-structure (mean over centres) gradients from per-centre ones.

    Parameters
    ----------
    per_species : list over centre species c of (samples (G_c, 3) ``(sample, system, atom)``, values (G_c, 3, F_c))
    n_centres_per_system : list over c of (n_frames,) int, the centres of species c per frame
    column_offsets : list over c of the first column of species c's features
    n_features : int

    Returns
    -------
    StructureGradients, rows sorted by (system, atom).
    """
    keys, columns, values = [], [], []
    n_atoms_key = 1 + max((int(s[:, 2].max()) for s, _ in per_species if len(s)), default=0)
    for c, (samples, grad) in enumerate(per_species):
        system, atom = samples[:, 1].astype(np.int64), samples[:, 2].astype(np.int64)
        keys.append(system * n_atoms_key + atom)
        values.append(grad / n_centres_per_system[c][system][:, None, None])
        columns.append(np.full(len(samples), c))
    if not keys:
        return StructureGradients(np.zeros((0, 2), np.int32), np.zeros((0, 3, n_features)))
    keys = np.concatenate(keys)
    unique, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    out = np.zeros((len(unique), 3, n_features))
    start = 0
    for c, grad in enumerate(values):
        rows = inverse[start:start + len(grad)]
        start += len(grad)
        block = np.zeros((len(unique), 3, grad.shape[2]))
        np.add.at(block, rows, grad)
        out[:, :, column_offsets[c]:column_offsets[c] + grad.shape[2]] += block
    samples = np.stack([unique // n_atoms_key, unique % n_atoms_key], axis=1).astype(np.int32)
    return StructureGradients(samples=samples, values=out)


@dataclass
class PowerSpectrum:
    """Per-structure power spectrum features.

    Attributes
    ----------
    values : (n_frames, n_features) float64
        Per frame, for each centre species, the mean over its centres of that
        species (zeros for a frame with none), species side by side.
    properties : (n_features, 7) int32
        ``names`` of each column; values match them for any number of species.
    names : tuple of str
        ``("types_center",) + POWER_SPECTRUM_PROPERTIES``.
    gradients : dict parameter -> :class:`StructureGradients`
        Present when asked (``gradients=["positions", "orientations"]``): the
        derivatives of each structure's ``values`` row with respect to each
        atom's position and orientation (the per-pair Jacobian path).
    energy : (n_frames,) float64 or None
        ``values @ weights`` when ``weights`` was given, else None.
    forces : AtomForces or None
        When ``weights`` or ``cotangent`` was given
        (:class:`einsum_workbench.pipeline.forces.AtomForces`): ``forces``
        (N, 3) and ``torques`` (N, 3) over every atom of every frame, frame
        after frame; ``strain_derivative``, ``virial`` and ``stress`` (n_frames,
        3, 3), stress NaN for a frame not periodic along all three axes.
    """

    values: np.ndarray
    properties: np.ndarray
    names: tuple = ("types_center",) + POWER_SPECTRUM_PROPERTIES
    gradients: dict = field(default_factory=dict)
    energy: np.ndarray | None = None
    forces: AtomForces | None = None


def structure_power_spectrum(layout: DensityLayout, density, n_frames: int):
    """Per-structure power spectrum of a density: what :func:`power_spectrum` returns as values.

    Parameters
    ----------
    layout : DensityLayout
    density : list over l of (n_segments, 2l+1, num_radial[l]) float64
    n_frames : int, the frames (rows) of the result

    Returns
    -------
    (values (n_frames, n_features) float64, properties (n_features, 7) int32,
    blocks: ``density_blocks(layout, density, property_layout="labelled")``).
    """
    blocks = density_blocks(layout, density, property_layout="labelled")
    columns, labels = [], []
    for c, centre_type in enumerate(layout.centre_types):
        columns.append(species_power_spectrum_means(layout, blocks, c, n_frames)[0])
        properties = species_power_spectrum_properties(layout, blocks, c)
        labels.append(np.hstack([np.full((len(properties), 1), centre_type, dtype=np.int32), properties]))
    values = np.hstack(columns) if columns else np.zeros((n_frames, 0))
    properties = np.vstack(labels) if labels else np.zeros((0, 7), dtype=np.int32)
    return values, properties, blocks


@dataclass
class PowerSpectrumPass:
    """A power spectrum's forward pass, kept for backward passes with any cotangent.

    Built by :func:`power_spectrum_pass`; what a potential on the features
    needs (:class:`einsum_workbench.pipeline.calculator.AniSOAPCalculator`):
    ``values`` first, then ``backward(dE/dvalues)`` for the forces, with no
    second density call and no per-pair Jacobian.

    Attributes
    ----------
    table : AtomsTable
    hypers : ExpansionHypers
    pairs : ForcePairs
        The neighbour pairs, grouped by segment (``pipeline.forces.force_pairs``).
    density : list over l of (n_segments, 2l+1, num_radial[l]) float64
    values : (n_frames, n_features) float64
    properties : (n_features, 7) int32
        As :class:`PowerSpectrum`.
    orthonormal : bool
    backward_variant : callable
        The backward variant the pass calls (``pipeline.forces.load_backward``).
    """

    table: AtomsTable
    hypers: ExpansionHypers
    pairs: ForcePairs
    density: list
    values: np.ndarray
    properties: np.ndarray
    orthonormal: bool
    backward_variant: object

    def density_cotangent(self, cotangent) -> list:
        """``dE/drho`` on the density rows from ``dE/dvalues`` (n_frames, n_features)
        (``pipeline.power_spectrum_backward.structure_power_spectrum_backward``; its errors)."""
        with stage("power_spectrum_backward"):
            return structure_power_spectrum_backward(self.pairs.layout, self.density, cotangent)

    def backward(self, cotangent) -> AtomForces:
        """Forces, torques, strain derivative and stress of any E with ``dE/dvalues = cotangent``.

        Parameters
        ----------
        cotangent : (n_frames, n_features) float array, ``dE/d(values)``

        Returns
        -------
        AtomForces (DESIGN.md section 3, "Power spectrum backward" then
        "Backward pass"): dE/drho by one batched product per l, one backward
        variant call, per-pair derivatives summed onto atoms.

        Raises
        ------
        ValueError
            ``cotangent`` is not (n_frames, n_features) (both named), or not finite.
        """
        cotangent = np.asarray(cotangent, dtype=np.float64)
        if cotangent.shape != self.values.shape:
            raise ValueError(f"cotangent must have shape {self.values.shape} (frames, features), got {cotangent.shape}")
        if not np.all(np.isfinite(cotangent)):
            raise ValueError(f"cotangent has a non-finite entry at {tuple(np.argwhere(~np.isfinite(cotangent))[0])}")
        return forces_of_pairs(self.backward_variant, self.pairs, self.table, self.hypers,
                               self.density_cotangent(cotangent), orthonormal=self.orthonormal)


def power_spectrum_pass(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused",
                        backward_backend: str | None = None, orthonormal: bool = True, self_pairs: bool = True,
                        semiaxes=None, rotation_key: str | None = "c_q", rotation_type: str = "quaternion",
                        smooth_cutoff=None) -> PowerSpectrumPass:
    """The forward pass of :func:`power_spectrum`, kept for backward passes.

    One neighbour list, the pairs grouped by segment
    (:func:`einsum_workbench.pipeline.forces.force_pairs`, the grouping of
    ``density_of_table``), one density variant call, the power spectrum; the
    backward variant is loaded now, so a missing one fails here.

    Parameters
    ----------
    frames, hypers, backend, orthonormal, self_pairs, semiaxes, rotation_key, rotation_type
        As :func:`power_spectrum`; ``backend`` names the density variant.
    backward_backend : str or None
        The backward variant (``kernels.registry.variant_names("backward")``);
        None: the one named ``backend``.
    smooth_cutoff : None or ``reference.cutoff.ShiftedCosine``
        Applied to the density and to its backward (DESIGN.md section 3, "Smooth cutoff").

    Returns
    -------
    PowerSpectrumPass, ``values`` equal to ``power_spectrum(frames, ...).values``.

    Raises
    ------
    KeyError
        no density or backward variant of that name (the registered ones listed).
    RuntimeError
        one that cannot run here.
    TypeError, ValueError
        as :func:`einsum_workbench.pipeline.density.centre_density`.
    """
    from einsum_workbench.kernels.smooth_cutoff import check_smooth_cutoff
    from einsum_workbench.reference.frames import as_atoms_table

    check_hypers(hypers)
    check_smooth_cutoff(smooth_cutoff, hypers)
    backward_variant = load_backward(backend if backward_backend is None else backward_backend, smooth_cutoff)
    density_variant = load_density(backend, smooth_cutoff)
    with stage("frames"):
        table = as_atoms_table(frames, semiaxes=semiaxes, rotation_key=rotation_key, rotation_type=rotation_type)
    pairs = force_pairs(table, hypers.cutoff, self_pairs=self_pairs)
    g = pairs.grouped
    with stage("kernel"):
        density = density_variant(g.r_ij, g.rotations, g.semiaxes, hypers, g.segment, g.layout.n_segments,
                                  dtype=np.float64, orthonormal=orthonormal)
    with stage("power_spectrum"):
        values, properties, _ = structure_power_spectrum(g.layout, density, len(table.n_atoms))
    return PowerSpectrumPass(table=table, hypers=hypers, pairs=pairs, density=density, values=values,
                             properties=properties, orthonormal=orthonormal, backward_variant=backward_variant)


def _model_cotangent(weights, cotangent, n_frames: int, n_features: int):
    """(cotangent (n_frames, n_features), weights (n_features,) or None) from what the caller gave."""
    if weights is not None and cotangent is not None:
        raise ValueError("give weights (a linear model: energy = values @ weights) or cotangent (dE/dvalues), "
                         "not both")
    given, name = (weights, "weights") if weights is not None else (cotangent, "cotangent")
    array = np.asarray(given)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    expected = (n_features,) if name == "weights" else (n_frames, n_features)
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {expected} (the power spectrum has {n_features} features "
                         f"and {n_frames} frames), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has a non-finite entry at {tuple(int(k) for k in np.argwhere(~np.isfinite(array))[0])}")
    if name == "weights":
        return np.broadcast_to(array, (n_frames, n_features)), array
    return array, None


def power_spectrum(frames, hypers: ExpansionHypers, *, backend: str = "numba_fused", orthonormal: bool = True,
                   self_pairs: bool = True, semiaxes=None, rotation_key: str | None = "c_q",
                   rotation_type: str = "quaternion", gradients=None, weights=None, cotangent=None,
                   backward_backend: str | None = None, smooth_cutoff=None) -> PowerSpectrum:
    """AniSOAP's power spectrum averaged per structure, for any number of species.

    Three paths:

    - neither ``gradients`` nor ``weights``/``cotangent``: the values only;
    - ``gradients=["positions", "orientations"]``: a gradient variant writes
      every pair's Jacobian (``(P, 3, 2l+1, n)`` per l), the density's and
      the power spectrum's derivatives follow by the chain rule; for fitting
      on forces, where the per-feature derivatives themselves are needed;
    - ``weights`` or ``cotangent``: the forces of a model on the features
      without any Jacobian (DESIGN.md section 3, "Power spectrum backward"
      and "Backward pass"): density -> power spectrum -> ``dE/dvalues`` ->
      ``dE/drho`` (one batched product per l) -> one backward variant call
      (6 numbers per pair) -> forces, torques, strain derivative and stress.

    Parameters
    ----------
    frames, hypers, backend, orthonormal, self_pairs, semiaxes, rotation_key, rotation_type
        As :func:`einsum_workbench.pipeline.density.centre_density`
        (``gradients`` included: ``backend`` must then be a gradient variant).
    gradients : None or list of {"positions", "orientations"}
    weights : None or (n_features,) float array
        A linear model: per frame ``energy = values @ weights`` (E in the
        weights' unit, e.g. eV), returned with its forces.
    cotangent : None or (n_frames, n_features) float array
        ``dE/dvalues`` of any model E (e.g. by autograd on the features):
        its forces are returned, ``energy`` is None.
    backward_backend : str or None
        The backward variant for ``weights``/``cotangent``
        (``kernels.registry.variant_names("backward")``); None: ``backend``.
    smooth_cutoff : None or ``reference.cutoff.ShiftedCosine``
        featomic's shifted-cosine cutoff on every pair (DESIGN.md section 3,
        "Smooth cutoff"); None: upstream's hard cutoff.

    Returns
    -------
    PowerSpectrum: values (n_frames, n_features) float64 with their labels,
    the gradients asked for, and with ``weights``/``cotangent`` ``energy``
    and ``forces`` (:class:`PowerSpectrum`). For one centre species the
    values equal upstream's ``power_spectrum(frames)`` (its columns
    relabelled to match, since upstream lays values out n-major under
    species-major labels).

    Raises
    ------
    As :func:`einsum_workbench.pipeline.density.centre_density`, and
    ValueError for ``weights`` or ``cotangent`` of the wrong shape (the
    expected shape and the features named), both given, or either given
    with ``gradients``; KeyError when ``backward_backend`` (or ``backend``)
    has no backward variant (the registered ones listed).
    """
    wanted = check_gradients(gradients)
    options = dict(backend=backend, orthonormal=orthonormal, self_pairs=self_pairs, semiaxes=semiaxes,
                   rotation_key=rotation_key, rotation_type=rotation_type)
    if weights is not None or cotangent is not None:
        if wanted:
            raise ValueError(f"gradients={list(wanted)} writes every pair's Jacobian; weights/cotangent give the "
                             "forces without it: ask for one or the other")
        return _model_power_spectrum(frames, hypers, options, weights, cotangent, backward_backend, smooth_cutoff)
    if wanted:
        result = density_gradients_of_frames(frames, hypers, gradients=wanted, **options,
                                             smooth_cutoff=smooth_cutoff)
        layout, density = result.layout, result.density
        density_gradients = tensormap_gradients(result, "labelled")
    else:
        layout, density = density_of_frames(frames, hypers, **options, smooth_cutoff=smooth_cutoff)
    n_frames = layout.n_frames if layout.n_frames else (len(frames) if hasattr(frames, "__len__") else 0)
    with stage("power_spectrum"):
        values, properties, blocks = structure_power_spectrum(layout, density, n_frames)
    if not wanted:
        return PowerSpectrum(values=values, properties=properties)
    per_centre = {p: [] for p in wanted}
    with stage("power_spectrum"):
        for c in range(len(layout.centre_types)):
            derivatives = species_power_spectrum_gradients(
                blocks[c], {p: rows[c] for p, rows in density_gradients.items()})
            for parameter, derivative in derivatives.items():
                per_centre[parameter].append(derivative)
    counts = [np.bincount(s[:, 0], minlength=n_frames) for s in layout.samples]
    widths = [sum(b.shape[2] ** 2 for b in per_l) for per_l in blocks]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    structure = {parameter: structure_gradients(per_species, counts, offsets, values.shape[1])
                 for parameter, per_species in per_centre.items()}
    return PowerSpectrum(values=values, properties=properties, gradients=structure)


def _model_power_spectrum(frames, hypers, options, weights, cotangent, backward_backend, smooth_cutoff):
    """:func:`power_spectrum`'s ``weights``/``cotangent`` path: a pass, then its backward."""
    run = power_spectrum_pass(frames, hypers, backward_backend=backward_backend, smooth_cutoff=smooth_cutoff,
                              **options)
    dE_dvalues, linear = _model_cotangent(weights, cotangent, *run.values.shape)
    energy = None if linear is None else run.values @ linear
    return PowerSpectrum(values=run.values, properties=run.properties, energy=energy,
                         forces=run.backward(dE_dvalues))

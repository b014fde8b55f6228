"""Arrays to metatensor TensorMaps: AniSOAP's density and power-spectrum outputs.

Plain assembly, no arithmetic: the values come from :mod:`.density`,
:mod:`.gradients` and :mod:`.power_spectrum`, in the column order of their
labels. metatensor is imported inside the functions, so importing this module
needs NumPy only.

Gradient blocks follow featomic's convention: samples
:data:`GRADIENT_SAMPLE_NAMES` (the values row, its system, the atom that
moves), components ``xyz`` then the values block's, properties the values'.
"""

from __future__ import annotations

import functools

import numpy as np

from einsum_workbench.pipeline.gradients import DensityGradients
from einsum_workbench.pipeline.layout import DensityLayout, check_property_layout, property_rows
from einsum_workbench.pipeline.stages import stage

#: Samples of a gradient block (featomic's convention): the values row, its system, the atom that moves.
GRADIENT_SAMPLE_NAMES = ("sample", "system", "atom")
#: Property names of upstream's power-spectrum blocks (after ``standardize_keys``).
POWER_SPECTRUM_PROPERTIES = ("n_1_a", "neighbor_types_1_a", "k_2", "n_1_b", "neighbor_types_1_b", "l_2")


@functools.lru_cache(maxsize=64)
def components_labels(l: int):
    """``spherical_component_m`` = -l..l (one object per l and process: metatensor copies labels
    into each block)."""
    from metatensor import Labels

    return Labels(["spherical_component_m"], np.arange(-l, l + 1, dtype=np.int32).reshape(-1, 1))


@functools.lru_cache(maxsize=256)
def _properties_labels(types: tuple, n_radial: int):
    """``(n, neighbor_types)`` of neighbour ``types`` (species-major, ``layout.property_rows``),
    one object per labels and process."""
    from metatensor import Labels

    return Labels(["n", "neighbor_types"], property_rows(types, n_radial).reshape(-1, 2))


def gradient_block(block, samples, values):
    """The TensorBlock of one gradient of ``block`` (featomic's convention).

    ``samples`` (G, 3) int32 ``(sample, system, atom)``, ``values`` (G, 3,
    *block components, properties): components ``xyz`` then the block's.
    """
    from metatensor import Labels, TensorBlock

    return TensorBlock(
        values=values,
        samples=Labels(list(GRADIENT_SAMPLE_NAMES), samples),
        components=[Labels(["xyz"], np.arange(3, dtype=np.int32).reshape(-1, 1))] + list(block.components),
        properties=block.properties,
    )


def density_tensormap(layout: DensityLayout, blocks, gradients=None):
    """Wrap density block values in AniSOAP's TensorMap (see :mod:`einsum_workbench.pipeline.density`).

    Parameters
    ----------
    layout : DensityLayout
    blocks : ``density_blocks(layout, density, ...)``
    gradients : None or dict parameter -> list over centre species of
        (samples (G, 3) int32, list over l of (G, 3, 2l+1, Q) values), added
        as gradient blocks (:func:`tensormap_gradients`).

    Returns
    -------
    metatensor.TensorMap, keys (types_center, angular_channel); one block
    per centre species and l, values (S_c, 2l+1, num_radial[l] * E_c).
    """
    from metatensor import Labels, TensorBlock, TensorMap

    with stage("tensormap"):
        tensor_blocks = []
        gradients = list((gradients or {}).items())
        for c in range(len(layout.centre_types)):
            # unique by construction (DensityLayout.samples): no hashing of every row
            samples = Labels(["type", "center"], layout.samples[c], assume_unique=True)
            types = tuple(layout.neighbour_types[c].tolist())
            for l, values in enumerate(blocks[c]):
                block = TensorBlock(values, samples, [components_labels(l)],
                                    _properties_labels(types, values.shape[2] // len(types)))
                for parameter, per_species in gradients:
                    gradient_samples, gradient_values = per_species[c]
                    block.add_gradient(parameter, gradient_block(block, gradient_samples, gradient_values[l]))
                tensor_blocks.append(block)
        # (centre type, l) pairs in block order: unique, as a layout's centre types are (DensityLayout)
        key_values = np.array([(t, l) for t, b in zip(layout.centre_types.tolist(), blocks) for l in range(len(b))],
                              dtype=np.int32).reshape(-1, 2)
        return TensorMap(Labels(["types_center", "angular_channel"], key_values, assume_unique=True), tensor_blocks)


def gradient_block_values(values: np.ndarray, property_layout: str) -> np.ndarray:
    """(G, 3, 2l+1, E_c, n) -> (G, 3, 2l+1, n * E_c): the values block's column order.

    ``"labelled"``: species-major (``e * n_l + n``), ``"upstream"``: n-major
    (``n * E_c + e``), as :meth:`DensityLayout.block_values`.

    Raises
    ------
    ValueError for an unknown ``property_layout``.
    """
    check_property_layout(property_layout)
    if property_layout == "upstream":
        values = values.transpose(0, 1, 2, 4, 3)
    g, _, n_m = values.shape[:3]
    return np.ascontiguousarray(values).reshape(g, 3, n_m, -1)


def tensormap_gradients(result: DensityGradients, property_layout: str) -> dict:
    """Gradient rows in the values blocks' column order: what
    :func:`density_tensormap` and the power spectrum's chain rule take.

    Returns dict parameter -> list over centre species of (samples (G, 3)
    int32, list over l of (G, 3, 2l+1, num_radial[l] * E_c) float64).
    """
    return {
        parameter: [(rows.samples, [gradient_block_values(v, property_layout) for v in rows.values])
                    for rows in per_species]
        for parameter, per_species in result.gradients.items()
    }


def power_spectrum_block(samples, values, properties, derivatives):
    """One centre species' block of upstream's ``mvg_nu2``.

    Parameters
    ----------
    samples : (S, 2) int32 ``("type", "center")``: (system, centre atom), unique rows (not
        checked: ``DensityLayout.samples`` are by construction)
    values : (S, F) float64
    properties : metatensor Labels :data:`POWER_SPECTRUM_PROPERTIES` of the F columns
        (``power_spectrum.species_power_spectrum_property_labels``)
    derivatives : dict parameter -> (samples (G, 3) int32, values (G, 3, F))

    Returns
    -------
    metatensor.TensorBlock, components ``spherical_harmonics_m`` = [0], values
    (S, 1, F), with a gradient block per parameter (components ``xyz`` then
    ``spherical_harmonics_m``).
    """
    from metatensor import Labels, TensorBlock

    block = TensorBlock(
        values=values.reshape(len(values), 1, -1),
        samples=Labels(["type", "center"], samples, assume_unique=True),  # (system, atom): unique
        components=[_spherical_harmonics_m()],
        properties=properties,
    )
    for parameter, (gradient_samples, grad) in derivatives.items():
        block.add_gradient(parameter, gradient_block(block, gradient_samples, grad.reshape(len(grad), 3, 1, -1)))
    return block


@functools.lru_cache(maxsize=1)
def _spherical_harmonics_m():
    from metatensor import Labels

    return Labels(["spherical_harmonics_m"], np.zeros((1, 1), dtype=np.int32))


def power_spectrum_map(centre_types, blocks):
    """The TensorMap of :func:`power_spectrum_block` blocks, one per centre species.

    Keys ``(order_nu, angular_channel, types_center)`` = (2, 0, c) for each of
    ``centre_types`` ((C,) int atomic numbers, in the blocks' order).
    """
    from metatensor import Labels, TensorMap

    keys = np.array([(2, 0, int(t)) for t in centre_types], dtype=np.int32).reshape(-1, 3)
    # unique when the centre types are (a TensorMap's keys are checked by metatensor otherwise)
    unique = len(set(keys[:, 2].tolist())) == len(keys)
    return TensorMap(Labels(["order_nu", "angular_channel", "types_center"], keys, assume_unique=unique), blocks)

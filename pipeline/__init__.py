"""Frames to AniSOAP's outputs with per-frame Python work only where it cannot
be avoided: one pass over the frames, one neighbour-list pass for all of them,
one density kernel call, TensorMaps built from arrays.

- :func:`centre_density`: the centre density as a metatensor TensorMap
  (what ``EllipsoidalDensityProjection.transform`` returns);
- :func:`power_spectrum`: per-structure power-spectrum features for any number
  of species, with labels that match the values;
- :func:`record_stages`: where the time of the calls inside a block goes.

Both take ``gradients=["positions", "orientations"]`` (:mod:`.gradients`);
:mod:`.torch_features` (imports Torch) gives the power spectrum as a Torch
function with forces by ``backward()``.

Modules, each importing only those above it: :mod:`.stages` (timing),
:mod:`.layout` (segments: each pair's output row), :mod:`.gradients` (the
density's), :mod:`.tensormaps` (arrays to TensorMaps), :mod:`.density`,
:mod:`.power_spectrum` (with its chain rule), :mod:`.torch_features`.

Usable without upstream AniSOAP installed (metatensor is needed for TensorMaps
only). Importing this package imports NumPy only.
"""

from einsum_workbench.pipeline.density import (
    centre_density,
    density_blocks,
    density_of_frames,
    density_of_pairs,
    density_of_table,
)
from einsum_workbench.pipeline.gradients import DensityGradients, density_gradients_of_frames
from einsum_workbench.pipeline.layout import density_layout
from einsum_workbench.pipeline.power_spectrum import PowerSpectrum, StructureGradients, power_spectrum, power_spectrum_tensormap
from einsum_workbench.pipeline.stages import record_stages
from einsum_workbench.pipeline.tensormaps import density_tensormap

__all__ = [
    "DensityGradients",
    "PowerSpectrum",
    "StructureGradients",
    "density_gradients_of_frames",
    "centre_density",
    "density_blocks",
    "density_layout",
    "density_of_frames",
    "density_of_pairs",
    "density_of_table",
    "density_tensormap",
    "power_spectrum",
    "power_spectrum_tensormap",
    "record_stages",
]

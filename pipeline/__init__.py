"""Frames to AniSOAP's outputs with per-frame Python work only where it cannot
be avoided: one pass over the frames, one neighbour-list pass for all of them,
one density kernel call, TensorMaps built from arrays.

- :func:`centre_density`: the centre density as a metatensor TensorMap
  (what ``EllipsoidalDensityProjection.transform`` returns);
- :func:`power_spectrum`: per-structure power-spectrum features for any number
  of species, with labels that match the values;
- :func:`record_stages`: where the time of the calls inside a block goes.

Both take ``gradients=["positions", "orientations"]`` (:mod:`.gradients`:
every pair's Jacobian); ``power_spectrum(..., weights=...)`` gives the
energy, forces, torques and stress of a model on the features without one
(:mod:`.power_spectrum_backward`, :mod:`.forces`);
:class:`AniSOAPCalculator` (:mod:`.calculator`, imports ASE when first
used) is that model as an ASE calculator; :mod:`.torch_features` (imports
Torch) gives the power spectrum as a Torch function with forces by
``backward()``.

Modules, each importing only those above it: :mod:`.stages` (timing),
:mod:`.layout` (segments: each pair's output row), :mod:`.gradients` (the
density's), :mod:`.tensormaps` (arrays to TensorMaps), :mod:`.density`,
:mod:`.grouping`, :mod:`.forces` (pair cotangents to atoms),
:mod:`.power_spectrum_backward`, :mod:`.power_spectrum` (with its chain
rule and its backward pass), :mod:`.calculator`, :mod:`.torch_features`.

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
from einsum_workbench.pipeline.forces import AtomForces, energy_tensormap, forces_of_table
from einsum_workbench.pipeline.gradients import DensityGradients, density_gradients_of_frames
from einsum_workbench.pipeline.layout import density_layout
from einsum_workbench.pipeline.power_spectrum import PowerSpectrum, StructureGradients, power_spectrum, power_spectrum_tensormap
from einsum_workbench.pipeline.power_spectrum import PowerSpectrumPass, power_spectrum_pass
from einsum_workbench.pipeline.stages import record_stages
from einsum_workbench.pipeline.tensormaps import density_tensormap
from einsum_workbench.reference.cutoff import ShiftedCosine

__all__ = [
    "AniSOAPCalculator",
    "AtomForces",
    "DensityGradients",
    "PowerSpectrum",
    "PowerSpectrumPass",
    "ShiftedCosine",
    "StructureGradients",
    "density_gradients_of_frames",
    "centre_density",
    "density_blocks",
    "density_layout",
    "density_of_frames",
    "density_of_pairs",
    "density_of_table",
    "density_tensormap",
    "energy_tensormap",
    "forces_of_table",
    "power_spectrum",
    "power_spectrum_pass",
    "power_spectrum_tensormap",
    "record_stages",
]


def __getattr__(name):
    # the calculator imports ASE's calculator module: only when it is asked for
    if name == "AniSOAPCalculator":
        from einsum_workbench.pipeline.calculator import AniSOAPCalculator

        return AniSOAPCalculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Drop-in replacements for AniSOAP's module-level functions.

AniSOAP's ``EllipsoidalDensityProjection.transform`` calls two module-level
functions of ``anisoap.representations.ellipsoidal_density_projection``:

- ``pairwise_ellip_expansion`` (a Python loop over neighbour pairs, one
  ``numpy.einsum`` per pair and angular channel), replaced by
  :func:`.expansion.make_pairwise_ellip_expansion`: the neighbour list's blocks
  flattened into one pair batch, one call of a registered variant, the result
  cut back into upstream's TensorMap;
- ``contract_pairwise_feat`` (the neighbour sum, Python loops over samples),
  replaced by :func:`.neighbour_sum.contract_pairwise_feat`: sorted segment
  sums in NumPy.

Both return the TensorMaps upstream returns (keys, samples, components,
properties, values). The switch (:mod:`einsum_workbench.kernels.anisoap_switch`)
installs them. metatensor is imported inside the functions that need it, so
importing this package imports NumPy only.
"""

from .expansion import (
    hypers_from_radial_basis,
    make_pairwise_ellip_expansion,
    neighbour_list_to_pairs,
)
from .neighbour_sum import PROPERTY_LAYOUTS, contract_pairwise_feat

__all__ = [
    "PROPERTY_LAYOUTS",
    "contract_pairwise_feat",
    "hypers_from_radial_basis",
    "make_pairwise_ellip_expansion",
    "neighbour_list_to_pairs",
]

"""einsum_workbench: a kernel-optimisation workbench for AniSOAP's pairwise
ellipsoidal expansion.

Subpackages (installed from the repository's top-level folders):

- ``einsum_workbench.reference``: what the problem is (hyper-parameters, radial
  bases, solid-harmonic tensors, Gaussian moments, frames to neighbour pairs,
  workloads, the per-pair reference loop).
- ``einsum_workbench.kernels``: the variant registry, the contracts, and one
  subpackage per library family (numpy, opt_einsum, torch, numba, cupy).
- ``einsum_workbench.pipeline``: frames to AniSOAP's features with any variant.
- ``einsum_workbench.anisoap_switch``: ``ANISOAP_BACKEND`` and its Python API.
- ``einsum_workbench.featurize``: trajectories into a resumable store, on Dask.
- ``einsum_workbench.bench``: the bench's pytest plugin, thread pinning, the
  measuring path and the report.
- ``einsum_workbench.profiles``: profiling recipes.
- :mod:`einsum_workbench.cli`: the ``einsum-workbench`` command line;
  :mod:`einsum_workbench.threads`: thread variables and limits;
  :mod:`einsum_workbench.paths`: cache paths.

The most used names are re-exported here, lazily (each is imported on first
use)::

    import einsum_workbench as wb
    expand = wb.load_variant("numba_fused")
    work = wb.default_workload()

Importing this package imports neither NumPy, torch, cupy nor numba.
"""

import importlib

__version__ = "0.1.0"

#: name -> module it is re-exported from (imported on first access)
_LAZY = {
    "load_variant": "einsum_workbench.kernels.registry",
    "get_variant": "einsum_workbench.kernels.registry",
    "variant_names": "einsum_workbench.kernels.registry",
    "available_variants": "einsum_workbench.kernels.registry",
    "availability_table": "einsum_workbench.kernels.registry",
    "density_function": "einsum_workbench.kernels.registry",
    "VARIANTS": "einsum_workbench.kernels.registry",
    "DENSITY_VARIANTS": "einsum_workbench.kernels.registry",
    "GRADIENT_VARIANTS": "einsum_workbench.kernels.registry",
    "BACKWARD_VARIANTS": "einsum_workbench.kernels.registry",
    "Variant": "einsum_workbench.kernels.registry",
    "ExpansionHypers": "einsum_workbench.reference.hypers",
    "default_workload": "einsum_workbench.reference.workloads",
    "make_workload": "einsum_workbench.reference.workloads",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    """Import a re-exported name on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

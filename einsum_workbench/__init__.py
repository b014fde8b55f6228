"""einsum_workbench: a kernel-optimisation workbench for AniSOAP's pairwise
ellipsoidal expansion.

Subpackages (installed from the repository's top-level folders):

- ``einsum_workbench.reference``: what the problem is (hyper-parameters, radial
  bases, solid-harmonic tensors, Gaussian moments, frames to neighbour pairs,
  workloads, the per-pair reference loop).
- ``einsum_workbench.kernels``: the variant registry and one module per variant.
- ``einsum_workbench.bench``: thread pinning, benchmark helpers and the runner.
- ``einsum_workbench.profiles``: profiling recipes.

Importing this package imports neither torch, cupy nor numba.
"""

__version__ = "0.1.0"

"""Featurize trajectories chunk by chunk into an on-disk Zarr store, in one process or on Dask.

- :func:`featurize`: any trajectory ASE reads -> a resumable feature store
  (power spectrum or centre density), embedded, on a local Dask cluster
  (``workers=N``) or on an existing one (``scheduler=``, ``client=``);
- :func:`open_store`: the finished chunks' features with their labels;
- ``einsum-workbench featurize TRAJ --out DIR``: the same from the command line.

Needs the ``distributed`` extra (dask[distributed], zarr). Importing this
package imports NumPy only.
"""

from einsum_workbench.featurize.chunk import ChunkError
from einsum_workbench.featurize.run import FeaturizeError, FeaturizeReport, featurize
from einsum_workbench.featurize.store import (
    StoredFeatures,
    StoreLockedError,
    StoreMismatchError,
    iter_chunks,
    open_store,
)
from einsum_workbench.featurize.trajectory import FrameError

__all__ = [
    "ChunkError",
    "FeaturizeError",
    "FeaturizeReport",
    "FrameError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoredFeatures",
    "featurize",
    "iter_chunks",
    "open_store",
]

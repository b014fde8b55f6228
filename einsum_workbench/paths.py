"""Where the workbench keeps files on disk: the one place for cache paths.

Everything the workbench writes outside the working tree is a cache (safe to
delete; rebuilt or fetched again on the next use), under one root:

- :func:`cache_dir`: ``$EINSUM_WORKBENCH_CACHE``, else the platform's user
  cache folder (``platformdirs.user_cache_dir("einsum_workbench")``: on Linux
  ``$XDG_CACHE_HOME/einsum_workbench``, default ``~/.cache/einsum_workbench``);
- :func:`upstream_cache_dir`: upstream AniSOAP's source distributions,
  extracted (``<root>/upstream/anisoap-<version>``);
- :func:`numba_cache_dir`: generated Numba kernels and Numba's cache files
  (``$EINSUM_WORKBENCH_NUMBA_CACHE``, else ``<root>/numba``);
- :func:`cuda_host_cache_dir`: shared libraries of the CUDA device code
  compiled for the CPU by g++ (``<root>/cuda_host``).

The functions read the environment on every call (a test may change it) and
create nothing unless asked (``create=True``). docs/limits.md lists every
environment variable the workbench reads.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "einsum_workbench"
#: Root of every cache (overrides the platform's user cache folder).
CACHE_ENV = "EINSUM_WORKBENCH_CACHE"
#: Folder of the Numba kernels (overrides ``<cache root>/numba``).
NUMBA_CACHE_ENV = "EINSUM_WORKBENCH_NUMBA_CACHE"


def _ensure(path: Path, create: bool) -> Path:
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(create: bool = False) -> Path:
    """Root of the workbench's caches.

    ``$EINSUM_WORKBENCH_CACHE`` when set and non-empty, else
    ``platformdirs.user_cache_dir("einsum_workbench")``.

    Parameters
    ----------
    create : bool
        Create the folder (and its parents) if missing.

    Returns
    -------
    Path (absolute unless the variable holds a relative path).
    """
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir(APP_NAME, appauthor=False)
    return _ensure(Path(root), create)


def upstream_cache_dir(create: bool = False) -> Path:
    """Where upstream AniSOAP's source distributions are extracted
    (``<cache root>/upstream``; ``anisoap-<version>`` folders inside)."""
    return _ensure(cache_dir() / "upstream", create)


def numba_cache_dir(create: bool = False) -> Path:
    """Generated Numba kernel sources and Numba's cache files.

    ``$EINSUM_WORKBENCH_NUMBA_CACHE`` when set and non-empty, else
    ``<cache root>/numba``.
    """
    override = os.environ.get(NUMBA_CACHE_ENV)
    return _ensure(Path(override) if override else cache_dir() / "numba", create)


def cuda_host_cache_dir(create: bool = False) -> Path:
    """Shared libraries of the CUDA device code built for the CPU (``<cache root>/cuda_host``)."""
    return _ensure(cache_dir() / "cuda_host", create)

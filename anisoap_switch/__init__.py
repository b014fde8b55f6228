"""The AniSOAP switch: an unmodified AniSOAP script runs the workbench's pipeline.

``ANISOAP_BACKEND=<variant> python script.py`` (the ``.pth`` startup hook calls
:func:`activate_on_import`), or in code::

    from einsum_workbench.anisoap_switch import use_backend
    with use_backend("numba_fused"):
        ...

This package is the switch's Python API. Its modules (the switch imports the
hook, and the adapters when it patches; none of them imports the switch):

- :mod:`.hook`: the import hook that hands AniSOAP's module to the switch as
  soon as it is imported (standard library only);
- :mod:`.switch`: :func:`activate`, :func:`deactivate`, :func:`active_backend`,
  :func:`use_backend`, :func:`activate_on_import`, the errors, and the
  patching of AniSOAP's module;
- the adapters of upstream's functions: :mod:`.projection`
  (``EllipsoidalDensityProjection.transform`` and ``power_spectrum`` through
  the pipeline), :mod:`.expansion` (``pairwise_ellip_expansion`` by a
  variant), :mod:`.neighbour_sum` (``contract_pairwise_feat``).

Importing this package imports only the standard library and the registry.
"""

from einsum_workbench.anisoap_switch.switch import (
    ENV_VAR,
    LAYOUT_ENV_VAR,
    BackendUnavailableError,
    UnknownBackendError,
    activate,
    activate_on_import,
    active_backend,
    deactivate,
    use_backend,
)

__all__ = [
    "ENV_VAR",
    "LAYOUT_ENV_VAR",
    "BackendUnavailableError",
    "UnknownBackendError",
    "activate",
    "activate_on_import",
    "active_backend",
    "deactivate",
    "use_backend",
]

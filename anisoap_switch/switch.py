"""Make an unmodified AniSOAP use a workbench variant.

The Python API is :mod:`einsum_workbench.anisoap_switch` (this module's
functions and errors, re-exported there). Two ways in, one mechanism:

- **Environment variable.** With the workbench installed, ``ANISOAP_BACKEND=<name>``
  (any registered variant, ``reference`` included) makes AniSOAP use that variant.
  The interpreter-startup hook installed with the package (the
  ``einsum_workbench_anisoap_backend.pth`` file in site-packages, which imports
  :mod:`einsum_workbench._startup` only when the variable is set) calls
  :func:`activate_on_import`: it puts an import hook on ``sys.meta_path``
  (:mod:`.hook`) and AniSOAP is patched right after its module
  ``anisoap.representations.ellipsoidal_density_projection`` is executed.
  Unset, empty or blank, nothing is imported and AniSOAP runs untouched.
- **Explicit API.** :func:`activate`, :func:`deactivate`, :func:`active_backend`
  and the context manager :func:`use_backend`.

What is patched: ``EllipsoidalDensityProjection.transform`` and
``power_spectrum``, replaced wholesale by the workbench's pipeline
(:mod:`.projection`: one neighbour-list pass over all frames,
one density-kernel call, TensorMaps built in bulk), and, for users who call
them directly, the module-level functions ``pairwise_ellip_expansion`` (by the
variant, through :mod:`.expansion`) and
``contract_pairwise_feat`` (the vectorised neighbour sum of
:mod:`.neighbour_sum`). Outputs are upstream's TensorMaps. ``ANISOAP_BACKEND_LAYOUT=labelled`` (or
``property_layout="labelled"``) makes the neighbour sum's values match their
property labels instead of reproducing upstream's n-major layout.

Errors, never a silent fallback: an unknown name raises
:class:`UnknownBackendError` listing the registered names; a variant that cannot
run here raises :class:`BackendUnavailableError` with the registry's reason.
For the environment variable the error is raised **when AniSOAP is imported**
(the ``import anisoap`` statement fails with it): an exception inside a ``.pth``
file would only be printed by ``site`` and then ignored, while the import is
where the user's script meets it.

Activation logs one line at INFO level on the logger ``einsum_workbench.anisoap``.
Importing this module imports only the standard library and the registry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from einsum_workbench.anisoap_switch.hook import TARGET_MODULE, install_import_hook, remove_import_hook
from einsum_workbench.kernels.registry import get_variant, variant_names

ENV_VAR = "ANISOAP_BACKEND"
LAYOUT_ENV_VAR = "ANISOAP_BACKEND_LAYOUT"
PATCHED_FUNCTIONS = ("pairwise_ellip_expansion", "contract_pairwise_feat")
PROJECTION_CLASS = "EllipsoidalDensityProjection"
PATCHED_METHODS = ("transform", "power_spectrum")
_ORIGINALS_ATTRIBUTE = "_einsum_workbench_originals"

logger = logging.getLogger("einsum_workbench.anisoap")


class UnknownBackendError(ValueError):
    """The requested backend is not a registered variant name."""


class BackendUnavailableError(RuntimeError):
    """The requested backend is registered but cannot run on this machine."""


# The one piece of state: which backend is active (None: upstream) and how.
_active = {"name": None, "layout": "upstream", "expand": None}


def _normalise_name(name) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"a backend name must be a string, got {name!r}")
    return name.strip() or None


def _check_layout(property_layout) -> str:
    # the pipeline's check, imported here: importing the switch must not import NumPy
    from einsum_workbench.pipeline.layout import check_property_layout

    return check_property_layout(property_layout, what=f"property_layout (or {LAYOUT_ENV_VAR})")


def resolve_backend(name: str):
    """Load the variant registered as ``name``.

    Returns
    -------
    (Variant, callable): the registry entry and its ``expand`` function.

    Raises
    ------
    UnknownBackendError
        ``name`` is not registered (the valid names are listed).
    BackendUnavailableError
        the variant cannot run here (missing package, no GPU: the reason given).
    """
    try:
        variant = get_variant(name)
    except KeyError:
        raise UnknownBackendError(
            f"unknown AniSOAP backend {name!r}; registered variants: {', '.join(variant_names())}"
        ) from None
    reason = variant.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"AniSOAP backend {name!r} cannot run here: {reason}")
    return variant, variant.load()


def _patch_module(module) -> None:
    """Replace the module's functions by the active backend's, keeping upstream's."""
    from einsum_workbench.anisoap_switch.neighbour_sum import contract_pairwise_feat
    from einsum_workbench.anisoap_switch.expansion import make_pairwise_ellip_expansion

    originals = module.__dict__.get(_ORIGINALS_ATTRIBUTE)
    if originals is None:
        missing = [f for f in PATCHED_FUNCTIONS if not callable(getattr(module, f, None))]
        if missing:
            raise AttributeError(
                f"{module.__name__} has no function(s) {missing}: not an AniSOAP this switch "
                "supports (anisoap 0.1.1 or its development head)"
            )
        originals = {f: getattr(module, f) for f in PATCHED_FUNCTIONS}
        projection = getattr(module, PROJECTION_CLASS, None)
        for method in PATCHED_METHODS if projection is not None else ():
            originals[f"{PROJECTION_CLASS}.{method}"] = projection.__dict__[method]
        setattr(module, _ORIGINALS_ATTRIBUTE, originals)
    name, layout = _active["name"], _active["layout"]
    module.pairwise_ellip_expansion = make_pairwise_ellip_expansion(
        _active["expand"], name, originals["pairwise_ellip_expansion"],
    )

    def neighbour_sum(pair_ellip_feat, types, show_progress=False):
        return contract_pairwise_feat(pair_ellip_feat, types, show_progress, property_layout=layout)

    neighbour_sum.__name__ = neighbour_sum.__qualname__ = "contract_pairwise_feat"
    neighbour_sum.__doc__ = contract_pairwise_feat.__doc__
    neighbour_sum.workbench_backend = name
    module.contract_pairwise_feat = neighbour_sum

    projection = getattr(module, PROJECTION_CLASS, None)
    if projection is not None:
        from einsum_workbench.anisoap_switch.projection import make_power_spectrum, make_transform, upstream_flavour

        flavour = upstream_flavour(module)
        projection.transform = make_transform(
            originals[f"{PROJECTION_CLASS}.transform"], name, flavour, layout)
        projection.power_spectrum = make_power_spectrum(name, flavour, layout)


def _unpatch_module(module) -> None:
    originals = module.__dict__.pop(_ORIGINALS_ATTRIBUTE, None)
    for function, original in (originals or {}).items():
        owner, _, attribute = function.rpartition(".")
        setattr(getattr(module, owner) if owner else module, attribute, original)


def _on_target_imported(module) -> None:
    """The import hook's callback: AniSOAP's module was just executed."""
    pending = _active.get("pending")
    if pending is not None:
        # environment-variable path: resolve now, loudly. On failure "pending"
        # stays, so a retried import fails again instead of running upstream.
        try:
            activate(pending[0], property_layout=pending[1])
        except (UnknownBackendError, BackendUnavailableError, ValueError) as err:
            raise type(err)(
                f"{err} [requested by {ENV_VAR}={os.environ.get(ENV_VAR, pending[0])!r}, "
                f"{LAYOUT_ENV_VAR}={pending[1]!r}; unset {ENV_VAR} to run AniSOAP's own code]"
            ) from None
    elif _active["name"] is not None:
        _patch_module(module)


def activate(name: str, *, property_layout: str = "upstream") -> None:
    """Make AniSOAP use the variant ``name`` from now on.

    Patches AniSOAP now if it is imported, else as soon as it is.

    Parameters
    ----------
    name : str
        A registered variant name (``einsum_workbench.kernels.variant_names()``).
    property_layout : {"upstream", "labelled"}
        Neighbour-sum value layout (see :mod:`.neighbour_sum`).

    Raises
    ------
    UnknownBackendError, BackendUnavailableError
        see :func:`resolve_backend`; nothing is changed then.
    ValueError
        unknown ``property_layout``.
    """
    normalised = _normalise_name(name)
    if normalised is None:
        raise UnknownBackendError(
            f"empty AniSOAP backend name {name!r}; registered variants: {', '.join(variant_names())} "
            "(use deactivate() for upstream)"
        )
    _check_layout(property_layout)
    variant, expand = resolve_backend(normalised)
    _active.pop("pending", None)
    _active.update(name=variant.name, layout=property_layout, expand=expand)
    install_import_hook(_on_target_imported)
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        _patch_module(module)
    logger.info(
        "AniSOAP backend %r active (%s); neighbour sum vectorised, property layout %r",
        variant.name, variant.description, property_layout,
    )


def deactivate() -> None:
    """Give AniSOAP its own functions back and stop patching future imports."""
    _active.update(name=None, layout="upstream", expand=None)
    _active.pop("pending", None)
    remove_import_hook()
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        _unpatch_module(module)


def active_backend() -> str | None:
    """Name of the active backend, or None when AniSOAP runs its own code.

    A backend requested through ``ANISOAP_BACKEND`` counts once AniSOAP has
    been imported (that is when it is resolved).
    """
    return _active["name"]


@contextlib.contextmanager
def use_backend(name: str, *, property_layout: str = "upstream"):
    """Context manager: ``name`` active inside, the previous state restored on
    exit (upstream AniSOAP when no backend was active before).

    Raises as :func:`activate` does, before entering the block.
    """
    previous = (_active["name"], _active["layout"])
    activate(name, property_layout=property_layout)
    try:
        yield name
    finally:
        if previous[0] is None:
            deactivate()
        else:
            activate(previous[0], property_layout=previous[1])


def activate_on_import(name: str | None = None, property_layout: str | None = None) -> None:
    """The environment-variable path (called by the startup hook).

    Records the backend named by ``name`` (default: ``$ANISOAP_BACKEND``) and
    the layout (default: ``$ANISOAP_BACKEND_LAYOUT`` or "upstream") and
    activates it when AniSOAP is imported; if AniSOAP is already imported,
    activates now. A missing, empty or blank name does nothing.

    Raises (at AniSOAP import time, or now if it is already imported)
    UnknownBackendError, BackendUnavailableError, ValueError as :func:`activate`.
    """
    name = _normalise_name(os.environ.get(ENV_VAR) if name is None else name)
    if name is None:
        return
    if property_layout is None:
        property_layout = os.environ.get(LAYOUT_ENV_VAR, "").strip() or "upstream"
    if TARGET_MODULE in sys.modules:
        activate(name, property_layout=property_layout)
        return
    _active["pending"] = (name, property_layout)
    install_import_hook(_on_target_imported)

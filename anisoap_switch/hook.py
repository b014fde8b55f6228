"""The import hook: a callback runs on AniSOAP's projection module as soon as it is executed.

The AniSOAP switch (:mod:`einsum_workbench.anisoap_switch`, the Python API)
installs it, with :func:`install_import_hook`, when a backend is activated
before AniSOAP is imported, or by the ``ANISOAP_BACKEND`` environment variable
through the ``.pth`` startup hook. A finder first on ``sys.meta_path`` wraps
the loader of :data:`TARGET_MODULE`: the real loader executes the module, then
the callback gets it (the switch patches it there). Every other import passes
through untouched.

This module knows nothing of the switch (the switch hands it its callback) and
imports only the standard library.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys

#: The AniSOAP module whose functions the switch replaces.
TARGET_MODULE = "anisoap.representations.ellipsoidal_density_projection"

_finder = None  # the installed _AnisoapImportHook, or None


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then hands the freshly executed module to the callback."""

    def __init__(self, loader, on_imported):
        self._loader = loader
        self._on_imported = on_imported

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._on_imported(module)

    def __getattr__(self, attribute):  # get_source, get_filename, is_package, ...
        if attribute in ("_loader", "_on_imported"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(attribute)
        return getattr(self._loader, attribute)


class _AnisoapImportHook(importlib.abc.MetaPathFinder):
    """Wraps the loader of AniSOAP's projection module when it is imported."""

    def __init__(self, on_imported):
        self.on_imported = on_imported

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, self.on_imported)
        return spec


def install_import_hook(on_imported) -> None:
    """Call ``on_imported(module)`` each time :data:`TARGET_MODULE` is executed from now on.

    Puts the finder first on ``sys.meta_path`` (once; a second call only
    replaces the callback). Exceptions of the callback propagate out of the
    ``import`` statement.
    """
    global _finder
    if _finder is None:
        _finder = _AnisoapImportHook(on_imported)
        sys.meta_path.insert(0, _finder)
    else:
        _finder.on_imported = on_imported


def remove_import_hook() -> None:
    """Take the finder off ``sys.meta_path`` (nothing happens when it is not there)."""
    global _finder
    if _finder is not None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(_finder)
        _finder = None

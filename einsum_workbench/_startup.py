"""Interpreter-startup hook for ``ANISOAP_BACKEND`` (see
:mod:`einsum_workbench.anisoap_switch`).

The ``einsum_workbench_anisoap_backend.pth`` file installed in site-packages
with the package imports this module only when ``ANISOAP_BACKEND`` is set to a
non-blank value; this module checks again (so that importing it by hand is
harmless) and hands over to the switch, which installs an import hook and
patches AniSOAP when AniSOAP is imported. Nothing heavy is imported here: no
NumPy, no metatensor, no variant (the switch imports the standard library and
the registry only).
"""

import os

ENV_VAR = "ANISOAP_BACKEND"


def _install_from_environment() -> None:
    if os.environ.get(ENV_VAR, "").strip():
        from einsum_workbench.anisoap_switch.switch import activate_on_import

        activate_on_import()


_install_from_environment()

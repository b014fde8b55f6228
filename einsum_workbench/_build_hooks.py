"""Build step that installs the ``ANISOAP_BACKEND`` startup hook.

``einsum_workbench_anisoap_backend.pth`` (next to this file) must land in
site-packages itself, not inside the package, for ``site`` to run it at
interpreter startup. setuptools ships only packages, so ``build_py`` is
extended (pyproject.toml, ``[tool.setuptools.cmdclass]``):

- regular builds (``pip wheel .``, ``pip install .``): the file is copied to
  the root of ``build_lib``, which becomes the wheel's purelib root;
- editable installs (``pip install -e .``, PEP 660, lenient or strict mode):
  setuptools builds the editable wheel from an unpacked directory that the
  ``install`` command targets; the file is copied there, so the editable
  wheel carries it too (``build_lib`` is not shipped in lenient mode).

The file's name sorts after setuptools' ``__editable__.*.pth``, so in an
editable install the package's import finder is in place when it runs.
"""

from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

PTH_SOURCE = Path(__file__).with_name("einsum_workbench_anisoap_backend.pth")


class build_py(_build_py):
    """``build_py`` that also ships the startup-hook ``.pth`` file."""

    def _pth_target(self) -> Path:
        if getattr(self, "editable_mode", False):
            return Path(self.get_finalized_command("install").install_lib, PTH_SOURCE.name)
        return Path(self.build_lib, PTH_SOURCE.name)

    def run(self):
        super().run()
        target = self._pth_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(PTH_SOURCE), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(self._pth_target()))
        return outputs

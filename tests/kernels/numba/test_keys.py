"""The cache keys of the generated Numba kernels (``kernels.numba.codegen.keys``).

Numba keys its disk cache on the generated file only, so the key (the file's
name) must change with the source of every module the generated code comes
from: an edit to any of them, made here in a copy of the family's sources,
gives a new key, and an unchanged copy the same key. Reads files only: no
kernel is generated or compiled.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest

from einsum_workbench.kernels.numba.codegen import keys
from einsum_workbench.reference.hypers import ExpansionHypers

GTO4 = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)

#: The module defining each kind's intrinsic (what its generated file imports).
ENTRY = {"pairs": "codegen/pairs.py", "density": "codegen/density.py", "gradients": "codegen/gradients.py"}

CASES = [(kind, name) for kind, names in keys.KERNEL_SOURCES.items() for name in names]


def copy_sources(root: Path) -> Path:
    """Every file of ``KERNEL_SOURCES`` copied under ``root`` (same relative paths); returns ``root``."""
    for name in {name for names in keys.KERNEL_SOURCES.values() for name in names}:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(keys.SOURCE_ROOT / name, target)
    return root


def key_of(kind: str, root: Path) -> str:
    """``kind``'s cache key for GTO4, float64, 4 lanes, with the sources under ``root``."""
    if kind == "gradients":
        return keys.gradient_kernel_key(GTO4, np.float64, 4, root=root)
    return keys.kernel_key(GTO4, np.float64, 4, kind=kind, root=root)


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_an_edit_to_any_source_module_gives_a_new_key(tmp_path, kind, name):
    unchanged = copy_sources(tmp_path / "unchanged")
    edited = copy_sources(tmp_path / "edited")
    path = edited / name
    path.write_text(path.read_text().replace('"""', '"""An edit. ', 1))
    here = keys.source_digest(keys.kernel_sources(kind))
    assert keys.source_digest(keys.kernel_sources(kind, unchanged)) == here, "a copy must hash as the original"
    assert keys.source_digest(keys.kernel_sources(kind, edited)) != here, f"an edit to {name} left the digest"
    assert key_of(kind, unchanged) == key_of(kind, keys.SOURCE_ROOT)
    assert key_of(kind, edited) != key_of(kind, keys.SOURCE_ROOT), f"an edit to {name} left {kind}'s cache key"


def numba_imports(name: str) -> set[str]:
    """Modules of the Numba family (paths relative to ``SOURCE_ROOT``) that module ``name`` imports,
    at the top or inside functions, read with ``ast``."""
    prefix = "einsum_workbench.kernels.numba."
    found = set()
    for node in ast.walk(ast.parse((keys.SOURCE_ROOT / name).read_text())):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            if module.startswith(prefix):
                relative = module[len(prefix):].replace(".", "/")
                if (keys.SOURCE_ROOT / f"{relative}.py").is_file():
                    found.add(f"{relative}.py")
    return found


@pytest.mark.parametrize("kind", sorted(ENTRY))
def test_the_key_covers_every_module_the_generated_code_comes_from(kind):
    """The modules the intrinsic's module imports, transitively, are all hashed (``keys.py`` names
    the kernels and shapes no code: what it reads is hashed as values)."""
    reached, todo = set(), [ENTRY[kind]]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(numba_imports(name))
    missing = reached - {"codegen/keys.py"} - set(keys.KERNEL_SOURCES[kind])
    assert not missing, f"{kind}'s cache key does not hash {sorted(missing)}"

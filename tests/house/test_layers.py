"""The import structure of the package, read from the sources with ``ast``.

Nothing of the product is imported here: every module's imports (function-local
ones included, since a lazy import is a dependency all the same) are read from
its file. Two rules:

- no import circle between modules;
- the layers import downward only: ``reference`` <- ``kernels`` <- ``pipeline``
  <- ``anisoap_switch``, ``featurize``; ``bench`` and ``profiles`` may import any
  of them (``profiles`` the bench too), nothing of the product imports ``bench``
  or ``profiles``. ``einsum_workbench.paths`` and ``einsum_workbench.threads``
  sit below everything; the entry points (``einsum_workbench.cli``, the
  ``.pth`` startup hook, ``python -m einsum_workbench.bench``) above everything.

Each check is also run on a small made-up tree that breaks it, so that the
checks are seen to fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

REPO = Path(__file__).resolve().parents[2]
ROOT_PACKAGE = "einsum_workbench"

#: Layer of each top-level subpackage or module (a module may import a lower layer, or its own subpackage).
LAYERS = {
    "einsum_workbench": 0,  # the top package's __init__: lazy re-exports through importlib only
    "einsum_workbench.paths": 0,
    "einsum_workbench.threads": 0,
    "einsum_workbench._build_hooks": 0,
    "einsum_workbench.reference": 1,
    "einsum_workbench.kernels": 2,
    "einsum_workbench.pipeline": 3,
    "einsum_workbench.anisoap_switch": 4,
    "einsum_workbench.featurize": 4,
    "einsum_workbench.bench": 5,
    "einsum_workbench.profiles": 5,
    "einsum_workbench.cli": 6,
    "einsum_workbench._startup": 6,
    "einsum_workbench.bench.__main__": 6,
}
#: Imports between two groups of one layer that are allowed (importer group, imported group).
SIDEWAYS = {
    ("einsum_workbench.profiles", "einsum_workbench.bench"),
    ("einsum_workbench.bench.__main__", "einsum_workbench.cli"),  # python -m einsum_workbench.bench is the command line
}


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """package name -> its folder, from ``[tool.setuptools.package-dir]``."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: pyproject.parent / folder for package, folder in mapping.items()}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """module name -> file, for every ``.py`` file under the mapped folders (sub-folders with an ``__init__.py``)."""
    modules = {}
    for package, folder in packages.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if not all((folder / Path(*rel.parts[:k]) / "__init__.py").is_file() for k in range(len(rel.parts))):
                continue  # not inside the package (a stray script, a test suite folder)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules ``name`` imports anywhere in its file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(_deepest_known(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else _deepest_known(base, known))
    found.discard(None)
    found.discard(name)
    return found


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module
    parts = name.split(".") if is_package else name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _deepest_known(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            return candidate
    return None


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    modules = module_files(packages)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def group_of(module: str, layers: dict[str, int]) -> str:
    """The most specific entry of ``layers`` that ``module`` is or lies in."""
    best = None
    for group in layers:
        if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best)):
            best = group
    if best is None:
        raise KeyError(f"module {module!r} is in no layer: add its package to LAYERS")
    return best


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int] = LAYERS,
                     sideways: set = SIDEWAYS) -> list[str]:
    """Each import that goes up the layers or sideways between two groups of one layer."""
    wrong = []
    for importer, imported in sorted((a, b) for a, bs in graph.items() for b in bs):
        source, target = group_of(importer, layers), group_of(imported, layers)
        if source == target or layers[target] < layers[source] or (source, target) in sideways:
            continue
        wrong.append(f"{importer} (layer {layers[source]}, {source}) imports {imported} "
                     f"(layer {layers[target]}, {target})")
    return wrong


@pytest.fixture(scope="module")
def graph():
    packages = package_dirs(REPO / "pyproject.toml")
    result = import_graph(packages)
    assert len(result) > 50 and "einsum_workbench.kernels.registry" in result, sorted(result)
    return result


def test_no_import_circle_between_modules(graph):
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layers_import_downward_only(graph):
    wrong = layer_violations(graph)
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_every_module_is_in_a_layer(graph):
    for module in graph:
        group_of(module, LAYERS)


def test_the_product_imports_neither_bench_nor_profiles(graph):
    product = [m for m in graph if LAYERS[group_of(m, LAYERS)] < LAYERS["einsum_workbench.bench"]]
    offending = sorted(f"{m} imports {i}" for m in product for i in graph[m]
                       if i.startswith(("einsum_workbench.bench", "einsum_workbench.profiles")))
    assert product and not offending, offending


# --- the checks themselves, on a made-up tree -------------------------------------------------

def _made_up_tree(tmp_path: Path) -> dict[str, Path]:
    files = {
        "top/__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from top.low import b\n",
        "low/b.py": "def f():\n    from . import a  # a lazy import is a dependency too\n",
        "low/c.py": "import top.high.d\n",
        "high/__init__.py": "",
        "high/d.py": "from ..low.c import something\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {"top": tmp_path / "top", "top.low": tmp_path / "low", "top.high": tmp_path / "high"}


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path):
    graph = import_graph(_made_up_tree(tmp_path))
    assert graph["top.low.a"] == {"top.low.b"} and graph["top.low.b"] == {"top.low.a"}
    assert graph["top.high.d"] == {"top.low.c"}
    assert circles(graph) == [["top.high.d", "top.low.c"], ["top.low.a", "top.low.b"]]
    layers = {"top": 0, "top.low": 1, "top.high": 2}
    assert layer_violations(graph, layers, set()) == [
        "top.low.c (layer 1, top.low) imports top.high.d (layer 2, top.high)"]
    with pytest.raises(KeyError, match="other.x"):
        group_of("other.x", layers)

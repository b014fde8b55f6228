"""The README's layout tree names the folders that exist, and every package folder.

The tree is the fenced block under the README's "Layout" heading: each line
whose first word ends with ``/`` names a folder, indented two spaces per level
below its parent; other lines continue the description above them. Each check
also runs on a made-up README and tree that break it, so that it is seen to fail.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Folders that are not part of the source tree (environments, builds, caches, outputs).
IGNORED = re.compile(r"^(\..*|build|dist|__pycache__|.*\.egg-info|node_modules|out|profiles/out)$")


def layout_block(readme: str) -> list[str]:
    """The lines of the first fenced block after a ``## Layout`` heading."""
    after = readme.split("\n## Layout", 1)
    assert len(after) == 2, "the README has no '## Layout' heading"
    fence = re.search(r"^```[^\n]*\n(.*?)^```", after[1], flags=re.S | re.M)
    assert fence, "no fenced block under the README's Layout heading"
    return fence.group(1).splitlines()


def tree_folders(lines: list[str]) -> list[str]:
    """Folder paths named by the tree, relative to the repository root, in order."""
    stack: list[str] = []
    folders = []
    for line in lines:
        words = line.split()
        if not words or not words[0].endswith("/"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent // 2 <= len(stack), f"badly indented tree line: {line!r}"
        del stack[indent // 2:]
        stack.append(words[0].rstrip("/"))
        folders.append("/".join(stack))
    return folders


def package_folders(root: Path) -> set[str]:
    """Every folder holding an ``__init__.py`` or a test file, relative to ``root``, outside ignored folders."""
    found = set()
    for path in root.rglob("*.py"):
        rel = path.parent.relative_to(root)
        if rel == Path(".") or any(IGNORED.match(part) for part in rel.parts):
            continue
        if path.name == "__init__.py" or path.name.startswith("test_"):
            found.add(rel.as_posix())
    return found


def check_tree(readme: str, root: Path) -> list[str]:
    """What is wrong between the README's tree and the folders under ``root``."""
    named = tree_folders(layout_block(readme))
    problems = [f"the README's tree names {f}/, which does not exist" for f in named if not (root / f).is_dir()]
    problems += [f"package folder {f}/ is not in the README's tree" for f in sorted(package_folders(root) - set(named))]
    return problems


def test_the_readme_tree_matches_the_folders():
    readme = (REPO / "README.md").read_text()
    assert len(tree_folders(layout_block(readme))) >= 10
    problems = check_tree(readme, REPO)
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_missing_and_an_unlisted_folder(tmp_path):
    for folder in ("kernels/numba", "kernels/cupy/cuda", "tests/kernels", "gone_from_tree"):
        (tmp_path / folder).mkdir(parents=True)
    for init in ("kernels/__init__.py", "kernels/numba/__init__.py", "kernels/cupy/__init__.py",
                 "gone_from_tree/__init__.py", "tests/kernels/test_x.py"):
        (tmp_path / init).write_text("")
    readme = ("# x\n\n## Layout\n\n```\nkernels/     registry\n  numba/     pairs\n             more words\n"
              "  cupy/\n    cuda/    sources\n  torch/     not there\ntests/\n  kernels/\n```\n")
    assert tree_folders(layout_block(readme)) == ["kernels", "kernels/numba", "kernels/cupy", "kernels/cupy/cuda",
                                                  "kernels/torch", "tests", "tests/kernels"]
    assert check_tree(readme, tmp_path) == ["the README's tree names kernels/torch/, which does not exist",
                                            "package folder gone_from_tree/ is not in the README's tree"]

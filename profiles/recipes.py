"""The profiling recipes as commands, and the breakdown of a py-spy profile.

Each recipe is one command writing into ``profiles/out/`` (ignored by git);
``profiles/README.md`` gives them verbatim (a test checks they match) and says
how to read their output:

- :func:`flamegraph_command`: py-spy flamegraph (SVG) of any variant on any
  workload, ``--native`` for compiled variants (Numba, Torch);
- :func:`collapsed_command`: the same samples as collapsed stacks (text), read
  by :func:`breakdown` to say where the time goes, in percent;
- :func:`line_profile_command`: line_profiler (kernprof) of the reference or
  of the NumPy variant, the per-line report as text.

``python -m einsum_workbench.profiles {flame,lines,breakdown}`` runs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path("profiles") / "out"

#: variants whose hot code is compiled (Numba, Torch's C++): py-spy needs --native to see into it
NATIVE_VARIANTS = frozenset({"numba_fused", "torch_einsum", "torch_compiled", "opt_einsum_torch", "torch_cuda"})

#: what kernprof profiles line by line, per variant
LINE_TARGETS = {
    "reference": "einsum_workbench.reference.expansion.pairwise_ellip_expansion",
    "numpy_einsum": "einsum_workbench.kernels.numpy_einsum",
}

#: sampling rate of py-spy (samples per second)
RATE = 250


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the venv's), else the one on PATH, else the bare name."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def driver_args(variant: str, frames: int = 1, lmax: int = 6, workload: str = "benzenes", repeat: int = 3,
                threads: int = 1, xyz: str | None = None, semiaxes: str | None = None) -> list[str]:
    """Arguments of ``python -m einsum_workbench.profiles.run`` (defaults left out)."""
    args = ["-m", "einsum_workbench.profiles.run", "--variant", variant]
    if xyz:
        args += ["--xyz", str(xyz)] + (["--semiaxes", semiaxes] if semiaxes else [])
    elif workload != "benzenes":
        args += ["--workload", workload]
    if frames != 1:
        args += ["--frames", str(frames)]
    if lmax != 6:
        args += ["--lmax", str(lmax)]
    if repeat != 3:
        args += ["--repeat", str(repeat)]
    if threads != 1:
        args += ["--threads", str(threads)]
    return args


def _stem(variant: str, frames: int, lmax: int) -> str:
    return f"{variant}-f{frames}-l{lmax}"


def flamegraph_command(variant: str, *, native: bool | None = None, python: str = "python",
                       py_spy: str = "py-spy", out_dir=OUT_DIR, **driver) -> tuple[list[str], Path]:
    """(command, SVG path): py-spy flamegraph of ``variant``; ``native`` None picks it per variant."""
    native = variant in NATIVE_VARIANTS if native is None else native
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.svg"
    cmd = [py_spy, "record", "--rate", str(RATE), "-o", str(out)] + (["--native"] if native else [])
    return cmd + ["--", python] + driver_args(variant, **driver), out


def collapsed_command(variant: str, *, native: bool | None = None, python: str = "python",
                      py_spy: str = "py-spy", out_dir=OUT_DIR, **driver) -> tuple[list[str], Path]:
    """(command, text path): the same py-spy samples as collapsed stacks (``--format raw``)."""
    native = variant in NATIVE_VARIANTS if native is None else native
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.collapsed.txt"
    cmd = [py_spy, "record", "--rate", str(RATE), "--format", "raw", "-o", str(out)] + (["--native"] if native else [])
    return cmd + ["--", python] + driver_args(variant, **driver), out


def line_profile_command(variant: str, *, kernprof: str = "kernprof", out_dir=OUT_DIR,
                         **driver) -> tuple[list[str], Path]:
    """(command, .lprof path): kernprof of the reference or the NumPy variant.

    ``kernprof -l -v`` prints the per-line report after the run; the recipe
    redirects it into ``<stem>.lines.txt`` beside the ``.lprof`` file.

    Raises KeyError for a variant without a line-profiling target (the known ones listed).
    """
    if variant not in LINE_TARGETS:
        raise KeyError(f"no line_profiler target for variant {variant!r}; known: {sorted(LINE_TARGETS)}")
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.lprof"
    cmd = [kernprof, "-l", "-v", "-o", str(out), "-p", LINE_TARGETS[variant]] + driver_args(variant, **driver)
    return cmd, out


def shell_line(cmd, stdout=None) -> str:
    """The command as the README writes it (``mkdir -p profiles/out && ...``)."""
    text = " ".join(cmd)
    return f"mkdir -p {OUT_DIR} && {text}" + (f" > {stdout}" if stdout else "")


def run(cmd, stdout_path=None, cwd=REPO_ROOT, timeout=600) -> subprocess.CompletedProcess:
    """Run a recipe from the repository root, creating ``profiles/out``; raise on failure.

    Raises
    ------
    subprocess.CalledProcessError with the tool's stderr when it fails.
    """
    (Path(cwd) / OUT_DIR).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stdout = open(Path(cwd) / stdout_path, "w") if stdout_path else subprocess.PIPE
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)
    finally:
        if stdout_path:
            stdout.close()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_frame(frame: str) -> tuple[str, str, int | None]:
    """"einsum (numpy/_core/einsumfunc.py:1610)" -> ("einsum", "numpy/_core/einsumfunc.py", 1610)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "", None
    return m["func"], m["file"], int(m["line"]) if m["line"] else None


def read_collapsed(path) -> Counter:
    """Collapsed stacks (``frame;frame;... count`` per line) as a Counter of stack tuples."""
    stacks = Counter()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            frames = tuple(s for s in stack.split(";") if s.strip())
            stacks[frames] += int(count)
    return stacks


def breakdown(path, function: str = "pairwise_ellip_expansion") -> dict:
    """Where the samples inside ``function`` go, in percent.

    Each sample whose stack passes through ``function`` is charged to the
    function it called directly (by name: ``einsum``, ``compute_moments``,
    ...), or, when ``function`` itself was running, to ``self, line N``.

    Returns
    -------
    dict with total_samples (whole profile), inside (samples through
    ``function``), share_of_profile (percent), parts: list of (name, samples,
    percent of ``inside``) largest first.

    Raises
    ------
    ValueError if no sample passes through ``function`` (naming it).
    """
    stacks = read_collapsed(path)
    total = sum(stacks.values())
    parts = Counter()
    for frames, count in stacks.items():
        names = [parse_frame(f) for f in frames]
        depth = next((i for i, (func, _, _) in enumerate(names) if func == function), None)
        if depth is None:
            continue
        if depth + 1 < len(names):
            parts[names[depth + 1][0]] += count
        else:
            parts[f"self, line {names[depth][2]}"] += count
    inside = sum(parts.values())
    if inside == 0:
        raise ValueError(f"no sample in {str(path)!r} passes through {function!r}")
    return {
        "total_samples": total,
        "inside": inside,
        "share_of_profile": 100.0 * inside / total,
        "parts": [(name, n, 100.0 * n / inside) for name, n in parts.most_common()],
    }


def breakdown_text(result: dict, function: str = "pairwise_ellip_expansion") -> str:
    """Markdown table of :func:`breakdown`."""
    lines = [
        f"{result['inside']} of {result['total_samples']} samples ({result['share_of_profile']:.1f}%) "
        f"are inside {function}; of those:",
        "",
        "| callee (or own line) | samples | % of the function |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {n} | {pct:.1f} |" for name, n, pct in result["parts"]]
    return "\n".join(lines)

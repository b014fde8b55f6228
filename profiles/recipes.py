"""The profiling recipes as commands, and the breakdown of a py-spy profile.

Each recipe is one command writing into ``profiles/out/`` under the current
directory (or ``out_dir``; ignored by git in a checkout);
``profiles/README.md`` gives them verbatim (a test checks they match) and says
how to read their output:

- :func:`flamegraph_command`: py-spy flamegraph (SVG) of any variant on any
  workload, ``--native`` for compiled variants (the registry's
  ``Variant.native``: Numba, Torch);
- :func:`collapsed_command`: the same samples as collapsed stacks (text), read
  by :func:`breakdown` to say where the time goes, in percent;
- :func:`line_profile_command`: line_profiler (kernprof) of a variant with a
  line-profiling target (the registry's ``Variant.line_target``: the
  reference, the NumPy variant), the per-line report as text.

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

#: where the recipes write, relative to the current directory
OUT_DIR = Path("profiles") / "out"

#: sampling rate of py-spy (samples per second)
RATE = 250


def tool_path(name: str) -> str:
    """The tool installed beside this interpreter (the venv's), else the one on PATH, else the bare name."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def native_default(variant: str) -> bool:
    """Whether py-spy should sample native frames of ``variant`` (its registry fact
    ``Variant.native``). Raises KeyError for an unknown variant (valid names listed)."""
    from einsum_workbench.kernels.registry import get_variant

    return get_variant(variant).native


def line_target(variant: str) -> str:
    """What kernprof profiles line by line for ``variant`` (its registry fact
    ``Variant.line_target``, as a full dotted path).

    Raises
    ------
    KeyError
        for an unknown variant, or one without a line-profiling target (the
        variants that have one are listed).
    """
    from einsum_workbench.kernels.registry import VARIANTS, get_variant

    target = get_variant(variant).line_profile_target
    if target is None:
        known = sorted(v.name for v in VARIANTS if v.line_target is not None)
        raise KeyError(f"no line_profiler target for variant {variant!r}; known: {known}")
    return target


def driver_args(variant: str, frames: int = 1, lmax: int = 6, workload: str = "benzenes", repeat: int = 3,
                threads: int = 1, xyz: str | None = None, semiaxes: str | None = None, warmup: int = 1,
                xyz_frames: int | None = None) -> list[str]:
    """Arguments of ``python -m einsum_workbench.profiles.run`` (defaults left out)."""
    args = ["-m", "einsum_workbench.profiles.run", "--variant", variant]
    if xyz:
        args += ["--xyz", str(xyz)] + (["--semiaxes", semiaxes] if semiaxes else [])
        if xyz_frames:
            args += ["--xyz-frames", str(xyz_frames)]
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
    if warmup != 1:
        args += ["--warmup", str(warmup)]
    return args


def _stem(variant: str, frames: int, lmax: int) -> str:
    return f"{variant}-f{frames}-l{lmax}"


def flamegraph_command(variant: str, *, native: bool | None = None, python: str = "python",
                       py_spy: str = "py-spy", out_dir=OUT_DIR, **driver) -> tuple[list[str], Path]:
    """(command, SVG path): py-spy flamegraph of ``variant``.

    ``native`` None takes the variant's registry fact (:func:`native_default`);
    raises KeyError for an unknown variant.
    """
    native = native_default(variant) if native is None else native
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.svg"
    cmd = [py_spy, "record", "--rate", str(RATE), "-o", str(out)] + (["--native"] if native else [])
    return cmd + ["--", python] + driver_args(variant, **driver), out


def collapsed_command(variant: str, *, native: bool | None = None, python: str = "python",
                      py_spy: str = "py-spy", out_dir=OUT_DIR, **driver) -> tuple[list[str], Path]:
    """(command, text path): the same py-spy samples as collapsed stacks (``--format raw``)."""
    native = native_default(variant) if native is None else native
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.collapsed.txt"
    cmd = [py_spy, "record", "--rate", str(RATE), "--format", "raw", "-o", str(out)] + (["--native"] if native else [])
    return cmd + ["--", python] + driver_args(variant, **driver), out


def line_profile_command(variant: str, *, kernprof: str = "kernprof", out_dir=OUT_DIR,
                         **driver) -> tuple[list[str], Path]:
    """(command, .lprof path): kernprof of a variant's line-profiling target (:func:`line_target`).

    ``kernprof -l -v`` prints the per-line report after the run; the recipe
    redirects it into ``<stem>.lines.txt`` beside the ``.lprof`` file.

    Raises KeyError for a variant without a line-profiling target (the known ones listed).
    """
    target = line_target(variant)
    out = Path(out_dir) / f"{_stem(variant, driver.get('frames', 1), driver.get('lmax', 6))}.lprof"
    cmd = [kernprof, "-l", "-v", "-o", str(out), "-p", target] + driver_args(variant, **driver)
    return cmd, out


def shell_line(cmd, stdout=None, out_dir=OUT_DIR) -> str:
    """The command as the README writes it (``mkdir -p profiles/out && ...``)."""
    text = " ".join(str(c) for c in cmd)
    return f"mkdir -p {out_dir} && {text}" + (f" > {stdout}" if stdout else "")


def run(cmd, stdout_path=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a recipe in ``cwd`` (default: the current directory); raise on failure.

    Parameters
    ----------
    cmd : list of str
        From :func:`flamegraph_command`, :func:`collapsed_command` or
        :func:`line_profile_command`; the folder its outputs go into must exist.
    stdout_path : path or None
        File that receives the command's standard output (relative to ``cwd``).
    cwd : path or None
    timeout : float
        Seconds.

    Raises
    ------
    subprocess.CalledProcessError with the tool's stderr when it fails.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stdout = open(Path(cwd or ".") / stdout_path, "w") if stdout_path else subprocess.PIPE
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
    """Collapsed stacks (``frame;frame;... count`` per line) as a Counter of stack tuples.

    Raises
    ------
    FileNotFoundError for a missing file; ValueError naming the file and line
    when a line is not a collapsed stack.
    """
    stacks = Counter()
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                raise ValueError(f"{str(path)!r} line {number} is not a collapsed stack ('frame;frame;... count'): "
                                 f"{line[:80]!r}")
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

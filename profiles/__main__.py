"""``python -m einsum_workbench.profiles {flame,lines,breakdown}`` (also
``einsum-workbench profile ...``): run a recipe.

- ``flame --variant V [--frames N --lmax L --workload W --xyz PATH --semiaxes a,b,c --native/--no-native --out DIR]``:
  py-spy flamegraph SVG and collapsed stacks in ``profiles/out/`` (under the
  current directory, or ``--out``), then the breakdown of the reference's
  function when the variant is the reference;
- ``lines --variant V [...]``: kernprof per-line report of the variant's
  line-profiling target (the registry's ``Variant.line_target``: the
  reference, numpy_einsum);
- ``breakdown FILE [--function NAME]``: percent per callee from collapsed stacks.

Every command runs in the current directory and is printed before it runs.
Exit status: 0 done, 1 the profiler failed, 2 usage error (one line).
"""

import argparse
import sys
from pathlib import Path

from einsum_workbench.bench import options

from einsum_workbench.profiles import recipes
from einsum_workbench.profiles.run import add_driver_options


def add_commands(sub) -> None:
    """Add the ``flame``, ``lines`` and ``breakdown`` subcommands.

    Parameters
    ----------
    sub : argparse subparsers object
        From ``parser.add_subparsers(dest="command")`` (the command's name
        goes into ``command``; :func:`run_command` reads it).
    """
    flame = sub.add_parser("flame", help="py-spy flamegraph (and collapsed stacks)")
    add_driver_options(flame)
    flame.add_argument("--native", action=argparse.BooleanOptionalAction, default=None,
                       help="sample native frames (default: the variant's registry fact, on for compiled variants)")
    flame.add_argument("--out", default=str(recipes.OUT_DIR), metavar="DIR",
                       help=f"output folder (default {recipes.OUT_DIR} in the current directory)")
    lines = sub.add_parser("lines", help="line_profiler report of a variant with a line-profiling target")
    add_driver_options(lines)
    lines.add_argument("--out", default=str(recipes.OUT_DIR), metavar="DIR",
                       help=f"output folder (default {recipes.OUT_DIR} in the current directory)")
    brk = sub.add_parser("breakdown", help="percent per callee from py-spy collapsed stacks")
    brk.add_argument("path", type=options.existing_file, help="collapsed stacks written by `flame` (*.collapsed.txt)")
    brk.add_argument("--function", default="pairwise_ellip_expansion")


def build_parser(prog: str = "python -m einsum_workbench.profiles") -> argparse.ArgumentParser:
    """The parser of ``python -m einsum_workbench.profiles``."""
    parser = options.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _driver(args) -> dict:
    return dict(frames=args.frames, lmax=args.lmax, workload=args.workload, repeat=args.repeat,
                threads=args.threads, xyz=args.xyz, semiaxes=args.semiaxes, warmup=args.warmup,
                xyz_frames=args.xyz_frames)


def _out_dir(args) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_command(args) -> int:
    """Run a parsed ``flame``, ``lines`` or ``breakdown`` command.

    Parameters
    ----------
    args : argparse.Namespace
        From a parser that :func:`add_commands` filled.

    Returns
    -------
    int
        0 done, 1 the profiler failed (its stderr printed), 2 usage error
        (one line: unknown variant, no line-profiling target, missing or
        unreadable file, ``--out`` not a folder).
    """
    py, spy, kp = sys.executable, recipes.tool_path("py-spy"), recipes.tool_path("kernprof")
    try:
        if args.command == "breakdown":
            print(recipes.breakdown_text(recipes.breakdown(args.path, args.function), args.function))
            return 0
        if args.command == "flame":
            builds = [(build, recipes.native_default(args.variant) if args.native is None else args.native)
                      for build in (recipes.flamegraph_command, recipes.collapsed_command)]
            out_dir = _out_dir(args)
            outputs = []
            for build, native in builds:
                cmd, out = build(args.variant, native=native, python=py, py_spy=spy, out_dir=out_dir,
                                 **_driver(args))
                print("$ " + recipes.shell_line(cmd, out_dir=out_dir), file=sys.stderr)
                recipes.run(cmd)
                outputs.append(out)
            print("wrote: " + ", ".join(map(str, outputs)))
            if args.variant == "reference":
                print(recipes.breakdown_text(recipes.breakdown(outputs[1])))
            return 0
        recipes.line_target(args.variant)  # a variant without a target fails before anything is written
        out_dir = _out_dir(args)
        cmd, out = recipes.line_profile_command(args.variant, kernprof=kp, out_dir=out_dir, **_driver(args))
        report = Path(str(out).replace(".lprof", ".lines.txt"))
        print("$ " + recipes.shell_line(cmd, report, out_dir=out_dir), file=sys.stderr)
        recipes.run(cmd, stdout_path=report)
        print(f"wrote: {out}, {report}")
        print(report.read_text())
        return 0
    except (KeyError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except recipes.subprocess.CalledProcessError as err:
        print(f"error: {err.cmd[0]} failed with status {err.returncode}:\n{err.stderr}", file=sys.stderr)
        return 1


def main(argv=None, prog: str = "python -m einsum_workbench.profiles") -> int:
    """Entry point; returns the exit status (2: usage error)."""
    return run_command(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

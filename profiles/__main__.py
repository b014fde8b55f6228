"""``python -m einsum_workbench.profiles {flame,lines,breakdown}``: run a recipe.

- ``flame --variant V [--frames N --lmax L --workload W --xyz PATH --semiaxes a,b,c --native/--no-native]``:
  py-spy flamegraph SVG and collapsed stacks in ``profiles/out/``, then the breakdown
  of the reference's function when the variant is the reference;
- ``lines --variant {reference,numpy_einsum} [...]``: kernprof per-line report;
- ``breakdown FILE [--function NAME]``: percent per callee from collapsed stacks.

Every command is run from the repository root and printed before it runs.
"""

import argparse
import sys
from pathlib import Path

from . import recipes


def _driver_options(p):
    p.add_argument("--variant", required=True)
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--lmax", type=int, default=6)
    p.add_argument("--workload", default="benzenes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--xyz", default=None)
    p.add_argument("--semiaxes", default=None)


def _driver(args) -> dict:
    return dict(frames=args.frames, lmax=args.lmax, workload=args.workload, repeat=args.repeat,
                threads=args.threads, xyz=args.xyz, semiaxes=args.semiaxes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m einsum_workbench.profiles", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    flame = sub.add_parser("flame", help="py-spy flamegraph (and collapsed stacks)")
    _driver_options(flame)
    flame.add_argument("--native", action=argparse.BooleanOptionalAction, default=None,
                       help="sample native frames (default: on for compiled variants)")
    lines = sub.add_parser("lines", help="line_profiler report of the reference or numpy_einsum")
    _driver_options(lines)
    brk = sub.add_parser("breakdown", help="percent per callee from py-spy collapsed stacks")
    brk.add_argument("path")
    brk.add_argument("--function", default="pairwise_ellip_expansion")
    args = parser.parse_args(argv)
    py, spy, kp = sys.executable, recipes._tool("py-spy"), recipes._tool("kernprof")
    try:
        if args.command == "breakdown":
            print(recipes.breakdown_text(recipes.breakdown(args.path, args.function), args.function))
            return 0
        if args.command == "flame":
            outputs = []
            for build in (recipes.flamegraph_command, recipes.collapsed_command):
                cmd, out = build(args.variant, native=args.native, python=py, py_spy=spy, **_driver(args))
                print("$ " + recipes.shell_line(cmd), file=sys.stderr)
                recipes.run(cmd)
                outputs.append(out)
            print("wrote: " + ", ".join(map(str, outputs)))
            if args.variant == "reference":
                print(recipes.breakdown_text(recipes.breakdown(recipes.REPO_ROOT / outputs[1])))
            return 0
        cmd, out = recipes.line_profile_command(args.variant, kernprof=kp, **_driver(args))
        report = Path(str(out).replace(".lprof", ".lines.txt"))
        print("$ " + recipes.shell_line(cmd, report), file=sys.stderr)
        recipes.run(cmd, stdout_path=report)
        print(f"wrote: {out}, {report}")
        print((recipes.REPO_ROOT / report).read_text())
        return 0
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except recipes.subprocess.CalledProcessError as err:
        print(f"error: {err.cmd[0]} failed with status {err.returncode}:\n{err.stderr}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

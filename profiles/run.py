"""Profiling driver: run one variant on one workload, pinned, a few times.

``python -m einsum_workbench.profiles.run --variant V [--workload W --frames N
--lmax L --threads T --repeat K --warmup W --xyz PATH --semiaxes a,b,c]``

Meant to run under a profiler (py-spy, kernprof; see ``profiles/README.md``):
it pins the threads before NumPy loads, builds the pair batch, makes
``--warmup`` calls (JIT compilation, ``torch.compile``) and then ``--repeat``
calls, which are what a profile should show. Prints one line of timings.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m einsum_workbench.profiles.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, help="registered variant name")
    p.add_argument("--workload", default="benzenes", help="generated workload (default benzenes)")
    p.add_argument("--frames", type=int, default=1, help="frames (default 1)")
    p.add_argument("--lmax", type=int, default=6, help="lmax (default 6)")
    p.add_argument("--threads", type=int, default=1, help="threads, pinned (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="profiled calls (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="calls before the profiled ones (default 1)")
    p.add_argument("--xyz", default=None, help="extxyz file of ellipsoid frames instead of a generated workload")
    p.add_argument("--semiaxes", default=None, help="constant semi-axes a,b,c (angstrom) for --xyz")
    return p


def main(argv=None) -> int:
    """Entry point; exit status 2 on bad input, 3 when the pinning does not hold."""
    args = build_parser().parse_args(argv)
    from einsum_workbench.bench import pinning

    try:
        pinning.set_thread_env(args.threads)  # before NumPy loads
        pinning.pin_and_verify(args.threads)
    except (ValueError, pinning.PinningError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if args.repeat < 1 or args.warmup < 0:
        print(f"error: --repeat must be >= 1 and --warmup >= 0, got {args.repeat} and {args.warmup}", file=sys.stderr)
        return 2
    from einsum_workbench.bench import inputs, runner

    try:
        if args.xyz:
            inp = inputs.xyz_input(args.xyz, args.semiaxes, frames=args.frames, lmax=args.lmax)
        else:
            inp = inputs.generated_input(args.workload, args.frames, lmax=args.lmax)
        variant, function = runner.load_pinned(args.variant, args.threads)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    call_args = (*inp.arrays(), inp.hypers)
    start = time.perf_counter()
    for _ in range(args.warmup):
        function(*call_args)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.repeat):
        function(*call_args)
    steady = (time.perf_counter() - start) / args.repeat
    print(f"{args.variant} on {inp.label}: warm-up {warm:.3f} s ({args.warmup} calls), "
          f"{steady * 1e3:.2f} ms per call, {steady / max(inp.n_pairs, 1) * 1e6:.3f} us/pair "
          f"({args.threads} thread(s) pinned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

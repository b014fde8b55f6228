"""Profiling driver: run one variant on one workload, pinned, a few times.

``python -m einsum_workbench.profiles.run --variant V [--workload W --frames N
--lmax L --threads T --repeat K --warmup W --xyz PATH --semiaxes a,b,c
--xyz-frames N]``

Meant to run under a profiler (py-spy, kernprof; see ``profiles/README.md``):
it pins the threads before NumPy loads, builds the pair batch, makes
``--warmup`` calls (JIT compilation, ``torch.compile``) and then ``--repeat``
calls, which are what a profile should show. Prints one line of timings.
The workload options are the bench's (:mod:`einsum_workbench.bench.options`),
with one frame by default.
"""

from __future__ import annotations

import sys
import time

from einsum_workbench.bench import options

#: frames profiled by default (about 1,700 pairs of benzenes)
DEFAULT_FRAMES = 1


def add_driver_options(parser) -> None:
    """Add the driver's options to an argparse parser.

    ``--variant`` (required), the workload options of
    :func:`einsum_workbench.bench.options.add_workload_options` (one frame by
    default), ``--threads``, ``--repeat`` (>= 1) and ``--warmup`` (>= 0).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument("--variant", required=True, help="registered variant name")
    options.add_workload_options(parser, frames_default=DEFAULT_FRAMES)
    options.add_threads_option(parser)
    parser.add_argument("--repeat", type=options.positive_int, default=3, help="profiled calls (default 3)")
    parser.add_argument("--warmup", type=options.non_negative_int, default=1,
                        help="calls before the profiled ones (default 1)")


def build_parser() -> options.ArgumentParser:
    """The driver's argument parser."""
    p = options.ArgumentParser(prog="python -m einsum_workbench.profiles.run", description=__doc__.split("\n\n")[0])
    add_driver_options(p)
    return p


def main(argv=None) -> int:
    """Entry point; exit status 2 on bad input, 3 when the pinning does not hold."""
    args = build_parser().parse_args(argv)
    from einsum_workbench.bench import pinning

    try:
        pinning.set_thread_env(args.threads)  # before NumPy loads
        pinning.pin_and_verify(args.threads)
    except pinning.PinningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    from einsum_workbench.bench import inputs, runner

    try:
        inp = inputs.workload_from(args)
        variant, function = runner.load_pinned(args.variant, args.threads)
    except (KeyError, options.OptionError, RuntimeError) as err:
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

"""Command line: ``einsum-workbench {run,list,report,profile,featurize,featurize-bench}``, also
``python -m einsum_workbench.bench ...``.

- ``run``: measure variants on a workload, pinned (threads are pinned before
  NumPy is imported), print the ranking and save it as JSON in
  ``.benchmarks/cli/`` under the current directory (or ``--out FILE``);
- ``list``: every registered variant, available or why not, and its facts
  (device, native code, line-profiling target);
- ``report``: the ranking table in markdown and a PNG plot (speedup over the
  reference, log scale; scaling curves when the runs hold any) from saved
  runs, pytest-benchmark's and this runner's (``.benchmarks`` under the
  current directory, or ``--storage``), into ``<storage>/report`` (or ``--out``);
- ``profile {flame,lines,breakdown}``: the profiling recipes
  (:mod:`einsum_workbench.profiles`);
- ``featurize TRAJ --out DIR``: a trajectory's power spectrum or centre
  density into a resumable Zarr store, in one process, on a local Dask
  cluster (``--workers N``) or an existing one (``--scheduler ADDRESS``)
  (:mod:`einsum_workbench.featurize`);
- ``featurize-bench``: frames per second of ``featurize`` against workers and
  its peak memory against trajectory length (:mod:`einsum_workbench.bench.featurize_bench`).

Exit status: 0 done, 1 a profiler failed or chunks failed to featurize, 2 usage error (one line naming the
option and the value), 3 the thread pinning does not hold. Only the standard
library is imported before the threads are pinned.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from einsum_workbench.bench import options

PROG = "einsum-workbench"
MODULE_PROG = "python -m einsum_workbench.bench"
PROFILE_COMMANDS = ("flame", "lines", "breakdown")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of ``einsum-workbench`` (and ``python -m einsum_workbench.bench``).

    Parameters
    ----------
    prog : str
        Program name shown in usage and error messages.

    Returns
    -------
    argparse.ArgumentParser
        Usage errors are one line (:class:`einsum_workbench.bench.options.ArgumentParser`).
    """
    from einsum_workbench.profiles.__main__ import add_commands as add_profile_commands

    parser = options.ArgumentParser(prog=prog, description="Measure, list, report and profile the variants.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure variants on a workload (pinned threads)")
    run.add_argument("--variant", action="append", default=None, metavar="NAME",
                     help="variant to measure (repeatable; default: every available one)")
    options.add_workload_options(run)
    options.add_threads_option(run)
    options.add_measure_options(run, max_rounds_default=50)
    run.add_argument("--repeat", type=options.positive_int, default=None,
                     help="steady-state calls per variant (default: as many as fit --budget; reference at most 3)")
    run.add_argument("--pairs", type=options.positive_int, default=None,
                     help="tile the workload's pairs to exactly this many")
    run.add_argument("--no-reference", action="store_true", help="do not measure the reference (no speedups)")
    run.add_argument("--no-check", action="store_true", help="skip the spot check against the reference")
    run.add_argument("--out", default=None, metavar="FILE",
                     help="JSON file to save (default .benchmarks/cli/run-<time>.json in the current directory)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: when stderr is a terminal)")

    lst = sub.add_parser("list", help="registered variants, their availability and facts")
    lst.add_argument("--problem", choices=("pairs", "density", "gradients", "backward"), default="pairs",
                     help="the pair expansion (default), the centre density, the pair gradients or the "
                          "centre density's backward pass")

    rep = sub.add_parser("report", help="markdown ranking and PNG plots from saved runs")
    rep.add_argument("runs", nargs="*", help="saved-run JSON files (default: the latest ranking and scaling runs)")
    rep.add_argument("--storage", default=None, metavar="DIR",
                     help="folder of saved runs (default .benchmarks in the current directory)")
    rep.add_argument("--all", action="store_true", help="every saved run in --storage (latest record per variant wins)")
    rep.add_argument("--out", default=None, metavar="DIR", help="output folder (default <storage>/report)")

    add_featurize_command(sub)
    from einsum_workbench.bench.featurize_bench import add_command as add_featurize_bench

    add_featurize_bench(sub)

    prof = sub.add_parser("profile", help="profiling recipes: py-spy flamegraphs, line_profiler, breakdowns")
    add_profile_commands(prof.add_subparsers(dest="command", required=True, metavar="{flame,lines,breakdown}"))
    return parser


def add_featurize_command(sub) -> None:
    """The ``featurize`` subcommand's options (defaults: those of ``featurize()``, lmax 6, GTO sigma 1.5, cutoff 7)."""
    fz = sub.add_parser("featurize", help="featurize a trajectory into a resumable Zarr store (Dask optional)")
    fz.add_argument("trajectory", metavar="TRAJ", help="any trajectory ASE reads (e.g. extxyz with c_q quaternions)")
    fz.add_argument("--out", required=True, metavar="DIR", help="the store's folder (resumed if it exists)")
    fz.add_argument("--descriptor", choices=("power_spectrum", "density"), default="power_spectrum")
    fz.add_argument("--lmax", type=options.non_negative_int, default=6)
    fz.add_argument("--radial-basis", choices=("gto", "monomial"), default="gto")
    fz.add_argument("--sigma", type=float, default=None, help="GTO width, angstrom (default 1.5 for gto)")
    fz.add_argument("--cutoff", type=float, default=7.0, help="neighbour cutoff, angstrom (default 7)")
    fz.add_argument("--max-radial", type=options.non_negative_int, default=None)
    fz.add_argument("--semiaxes", type=options.semiaxes_text, default=None, metavar="A,B,C",
                    help="semi-axes of every ellipsoid (default: c_diameter / 2 from the frames)")
    fz.add_argument("--rotation-key", default="c_q", help="per-atom array holding the orientations (default c_q)")
    fz.add_argument("--backend", default="numba_fused", help="registered variant (default numba_fused)")
    fz.add_argument("--chunk-frames", type=options.positive_int, default=500, metavar="N")
    where = fz.add_mutually_exclusive_group()
    where.add_argument("--workers", type=options.positive_int, default=None, metavar="N",
                       help="a local Dask cluster of N worker processes (default: one process, no cluster)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing Dask scheduler, tcp://host:port")
    fz.add_argument("--threads", type=options.positive_int, default=1, help="Numba/BLAS threads per worker (default 1)")
    fz.add_argument("--retries", type=options.non_negative_int, default=1, help="extra attempts of a failed chunk")
    fz.add_argument("--format", default=None, help="ASE format name (default: guessed)")
    fz.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")
    fz.add_argument("--summary", default=None, metavar="FILE", help="write the run's report as JSON")
    fz.add_argument("--wait", type=options.positive_seconds, default=0.0, metavar="SECONDS",
                    help="wait up to SECONDS for another run holding the store's lock (default: refuse at once)")


def _cmd_featurize(args) -> int:
    import json

    from einsum_workbench.featurize import FeaturizeError, featurize
    from einsum_workbench.reference.hypers import ExpansionHypers

    sigma = args.sigma if args.sigma is not None or args.radial_basis != "gto" else 1.5
    hypers = ExpansionHypers(lmax=args.lmax, radial_basis=args.radial_basis, cutoff=args.cutoff, sigma=sigma,
                             max_radial=args.max_radial)
    semiaxes = options.parse_semiaxes(args.semiaxes) if args.semiaxes else None
    try:
        report = featurize(args.trajectory, hypers, descriptor=args.descriptor, backend=args.backend,
                           chunk_frames=args.chunk_frames, out=args.out, workers=args.workers,
                           scheduler=args.scheduler, threads=args.threads, semiaxes=semiaxes,
                           rotation_key=args.rotation_key or None, format=args.format, retries=args.retries,
                           progress=args.progress, wait=args.wait)
        status = 0
    except FeaturizeError as err:
        print(f"error: {err}", file=sys.stderr)
        report, status = err.report, 1
    if args.summary:
        Path(args.summary).write_text(json.dumps(report.as_dict(), indent=2))
    where = f"{report.workers} worker(s)" if args.workers or args.scheduler else "one process"
    print(f"featurize: {report.n_frames} frames, {report.chunks_planned} chunks ({report.chunks_skipped} already "
          f"stored, {report.chunks_computed} computed, {report.chunks_failed} failed) in {report.seconds:.2f} s: "
          f"{report.frames_per_second:.0f} frames/s on {where} (kernel warm-up {report.warmup_seconds:.2f} s, "
          f"cluster start {report.startup_seconds:.2f} s); store: {report.out}")
    return status


def _cmd_list(args) -> int:
    from einsum_workbench.kernels.registry import availability_table, get_variant

    rows = availability_table(args.problem)
    width = max(len(name) for name, _, _ in rows)
    for name, status, description in rows:
        v = get_variant(name, args.problem)
        facts = [v.device] + (["native code"] if v.native else [])
        if v.line_target:
            facts.append(f"line profile: {v.line_target}")
        print(f"{name:<{width}}  {status}\n{'':<{width}}  {description}\n{'':<{width}}  [{'; '.join(facts)}]")
    return 0


def check_out_file(text) -> Path:
    """The ``--out`` file of ``run``, checked before anything is measured.

    Raises
    ------
    options.OptionError
        naming the value when it is a folder, its folder does not exist or
        cannot be written.
    """
    out = Path(text)
    if out.is_dir():
        raise options.OptionError(f"--out {text!r} is a folder; give a file name, e.g. {out / 'run.json'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise options.OptionError(f"--out {text!r}: the folder {str(folder)!r} {what}")
    if not os.access(folder, os.W_OK):
        raise options.OptionError(f"--out {text!r}: the folder {str(folder)!r} is not writable")
    return out


def _cmd_run(args) -> int:
    from einsum_workbench.bench import pinning

    out = check_out_file(args.out) if args.out else None
    from einsum_workbench.kernels.registry import get_variant, variant_names

    names = list(dict.fromkeys(args.variant or variant_names()))
    for name in names:
        get_variant(name)  # unknown names fail before any measuring, listing the valid ones
    if not args.no_reference:
        names = ["reference"] + [n for n in names if n != "reference"]
    pinning.set_thread_env(args.threads)  # before NumPy loads
    try:
        pinning.pin_and_verify(args.threads)
    except pinning.PinningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    unavailable = {n: r for n in names if (r := get_variant(n).unavailable_reason()) is not None}
    chosen = list(dict.fromkeys(args.variant)) if args.variant else names
    if not [n for n in chosen if n not in unavailable]:
        reasons = "; ".join(f"{n}: {unavailable[n]}" for n in chosen)
        raise options.OptionError(f"--variant: none of the chosen variants can run here ({reasons})")
    import numpy as np
    from tqdm import tqdm

    from einsum_workbench.bench import inputs
    from einsum_workbench.bench import measure
    from einsum_workbench.bench import report
    from einsum_workbench.bench import runner

    inp = inputs.workload_from(args)
    allocator = measure.keep_freed_memory()
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(f"{inp.label}; {args.threads} thread(s) pinned; {args.dtype}", file=sys.stderr)
    results, reference_best = [], None
    for name in tqdm([n for n in names if n not in unavailable], desc="variants", unit="variant",
                     disable=not progress):
        repeat = min(args.repeat, 3) if (args.repeat and name == "reference") else args.repeat
        m = runner.run_variant(
            name, inp, args.threads, dtype=np.dtype(args.dtype).type, repeat=repeat, budget_s=args.budget,
            max_rounds=args.max_rounds, reference_best_s=reference_best, progress=progress, check=not args.no_check,
        )
        if name == "reference":
            reference_best = m.reference_best_s
        record = m.as_dict()
        record.update(suite="ranking" if not args.pairs else "scaling", group=inp.label, allocator=allocator)
        results.append(record)
    out = out or report.default_storage() / "cli" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.save_run(results, out, unavailable)
    # shown as a ranking whatever the suite the saved records are filed under
    print(report.ranking_text([{**r, "suite": "ranking"} for r in results], unavailable))
    print(f"saved: {out}")
    return 0


def _latest_with(files, suite):
    from einsum_workbench.bench import report

    for path in reversed(files):
        try:
            if any(r.get("suite", "ranking") == suite for r in report.load_records([path])):
                return path
        except (ValueError, KeyError):
            continue
    return None


def _cmd_report(args) -> int:
    from einsum_workbench.bench import report

    storage = Path(args.storage) if args.storage else report.default_storage()
    if args.runs:
        files = [Path(p) for p in args.runs]
    else:
        saved = report.saved_runs(storage)
        if args.all:
            files = saved
        else:
            files = [p for p in (_latest_with(saved, "ranking"), _latest_with(saved, "scaling")) if p]
    if not files:
        print(f"error: no saved run in {storage}; run `pytest bench` or `einsum-workbench run` first",
              file=sys.stderr)
        return 2
    records = report.load_records(files)
    out = Path(args.out) if args.out else storage / "report"
    written = report.write_report(records, out)
    print(written["markdown"].read_text())
    print("read: " + ", ".join(str(f) for f in files))
    for key in ("markdown", "ranking_png", "scaling_png"):
        if written[key] is not None:
            print(f"wrote: {written[key]}")
    return 0


def main(argv=None, prog: str = MODULE_PROG) -> int:
    """Entry point of ``python -m einsum_workbench.bench``; returns the exit status.

    Parameters
    ----------
    argv : list of str or None
        Arguments (default ``sys.argv[1:]``).
    prog : str
        Program name shown in usage messages.

    Returns
    -------
    int
        0 done, 1 a profiler failed or chunks failed to featurize, 2 usage error (one line on stderr), 3 the
        thread pinning does not hold.
    """
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "featurize":
            return _cmd_featurize(args)
        if args.command == "featurize-bench":
            from einsum_workbench.bench.featurize_bench import run_bench

            return run_bench(args)
        if args.command in PROFILE_COMMANDS:
            from einsum_workbench.profiles.__main__ import run_command

            return run_command(args)
        return _cmd_report(args)
    except (KeyError, ValueError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


def console_main() -> int:
    """Entry point of the ``einsum-workbench`` console script."""
    return main(prog=PROG)

"""Command-line runner: ``python -m einsum_workbench.bench {run,list,report}``.

- ``run``: measure variants on a workload, pinned (threads are pinned before
  NumPy is imported), print the ranking and save it as JSON in
  ``.benchmarks/cli/`` (or ``--out``);
- ``list``: every registered variant, available or why not;
- ``report``: the ranking table in markdown and a PNG plot (speedup over the
  reference, log scale; scaling curves when the runs hold any) from saved
  runs, pytest-benchmark's and this runner's.

Only the standard library is imported before the threads are pinned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m einsum_workbench.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure variants on a workload (pinned threads)")
    run.add_argument("--variant", action="append", default=None,
                     help="variant to measure (repeatable; default: every available one)")
    run.add_argument("--workload", default="benzenes", help="generated workload (default benzenes)")
    run.add_argument("--frames", type=_positive_int, default=None, help="frames (default: the workload default)")
    run.add_argument("--lmax", type=int, default=6, help="lmax (default 6)")
    run.add_argument("--threads", type=_positive_int, default=1, help="threads, pinned (default 1)")
    run.add_argument("--repeat", type=_positive_int, default=None,
                     help="steady-state calls per variant (default: as many as fit --budget; reference at most 3)")
    run.add_argument("--budget", type=float, default=3.0, help="seconds of steady-state calls per variant")
    run.add_argument("--pairs", type=_positive_int, default=None, help="tile the workload's pairs to exactly this many")
    run.add_argument("--xyz", default=None, help="extxyz file of ellipsoid frames instead of a generated workload")
    run.add_argument("--semiaxes", default=None, help="constant semi-axes a,b,c (angstrom) for --xyz")
    run.add_argument("--xyz-frames", type=_positive_int, default=None, help="frames read from --xyz (default 20)")
    run.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    run.add_argument("--no-reference", action="store_true", help="do not measure the reference (no speedups)")
    run.add_argument("--no-check", action="store_true", help="skip the spot check against the reference")
    run.add_argument("--out", default=None, help="JSON file to save (default .benchmarks/cli/run-<time>.json)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: when stderr is a terminal)")

    sub.add_parser("list", help="registered variants and their availability")

    rep = sub.add_parser("report", help="markdown ranking and PNG plots from saved runs")
    rep.add_argument("runs", nargs="*", help="saved-run JSON files (default: the latest ranking and scaling runs)")
    rep.add_argument("--storage", default=None, help="folder of saved runs (default: the repository's .benchmarks)")
    rep.add_argument("--all", action="store_true", help="every saved run in --storage (latest record per variant wins)")
    rep.add_argument("--out", default=None, help="output folder (default .benchmarks/report)")
    return parser


def _cmd_list() -> int:
    from einsum_workbench.kernels.registry import availability_table

    rows = availability_table()
    width = max(len(name) for name, _, _ in rows)
    for name, status, description in rows:
        print(f"{name:<{width}}  {status}\n{'':<{width}}  {description}")
    return 0


def _bench_input(args):
    from . import inputs

    if args.xyz:
        inp = inputs.xyz_input(args.xyz, args.semiaxes, frames=args.xyz_frames or args.frames or inputs.DEFAULT_XYZ_FRAMES,
                               lmax=args.lmax)
    else:
        inp = inputs.generated_input(args.workload, args.frames, lmax=args.lmax)
    return inp.tiled(args.pairs) if args.pairs else inp


def _cmd_run(args) -> int:
    from . import pinning

    pinning.set_thread_env(args.threads)  # before NumPy loads
    try:
        pinning.pin_and_verify(args.threads)
    except pinning.PinningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    import numpy as np
    from tqdm import tqdm

    from einsum_workbench.kernels.registry import get_variant, variant_names

    from . import measure, report, runner

    allocator = measure.keep_freed_memory()

    names = args.variant or variant_names()
    for name in names:
        get_variant(name)  # unknown names fail before any measuring, listing the valid ones
    if not args.no_reference:
        names = ["reference"] + [n for n in dict.fromkeys(names) if n != "reference"]
    inp = _bench_input(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(f"{inp.label}; {args.threads} thread(s) pinned; {args.dtype}", file=sys.stderr)
    results, unavailable, reference_best = [], {}, None
    for name in tqdm(names, desc="variants", unit="variant", disable=not progress):
        reason = get_variant(name).unavailable_reason()
        if reason is not None:
            unavailable[name] = reason
            continue
        repeat = min(args.repeat, 3) if (args.repeat and name == "reference") else args.repeat
        m = runner.run_variant(
            name, inp, args.threads, dtype=np.dtype(args.dtype).type, repeat=repeat, budget_s=args.budget,
            reference_best_s=reference_best, progress=progress, check=not args.no_check,
        )
        if name == "reference":
            reference_best = m.steady["min_s"]
            m.speedup_vs_reference, m.reference_best_s = 1.0, reference_best
        record = m.as_dict()
        record.update(suite="ranking" if not args.pairs else "scaling", group=inp.label, allocator=allocator)
        results.append(record)
    out = Path(args.out) if args.out else report.default_storage() / "cli" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.save_run(results, out, unavailable)
    # shown as a ranking whatever the suite the saved records are filed under
    print(report.ranking_text([{**r, "suite": "ranking"} for r in results], unavailable))
    print(f"saved: {out}")
    return 0


def _latest_with(files, suite):
    from . import report

    for path in reversed(files):
        try:
            if any(r.get("suite", "ranking") == suite for r in report.load_records([path])):
                return path
        except (ValueError, KeyError):
            continue
    return None


def _cmd_report(args) -> int:
    from . import report

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
        print(f"error: no saved run in {storage}; run `pytest bench` or `python -m einsum_workbench.bench run` first",
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


def main(argv=None) -> int:
    """Entry point; returns the exit status (2: usage, 3: pinning does not hold)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_report(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2

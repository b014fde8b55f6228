"""The command-line options every tool shares, defined once.

``pytest bench`` (:mod:`.plugin`), ``einsum-workbench run``
(:mod:`einsum_workbench.cli`) and the profiling driver and recipes
(:mod:`einsum_workbench.profiles`) add their workload, thread and measuring
options with the helpers below, so that the names, checks and help texts
agree; :func:`.inputs.workload_from` turns the parsed options into the pair
batch measured (one function for every tool).

Every value is checked when it is parsed: a bad one is a usage error naming
the option and the value (argparse: exit status 2; pytest: its usage error,
exit status 4), never a traceback. Only the standard library is imported
here, and nothing of the bench (a leaf): the options are parsed before the
threads are pinned, that is before NumPy loads.
"""

from __future__ import annotations

import argparse
import math
import os

#: generated workloads (``reference.workloads.WORKLOADS``; a test checks they agree)
WORKLOAD_NAMES = ("benzenes", "ellipsoids")
#: frames read from an ``--xyz`` file when neither ``--xyz-frames`` nor ``--frames`` is given
DEFAULT_XYZ_FRAMES = 20
DTYPES = ("float64", "float32")


class OptionError(ValueError):
    """A bad option value found after parsing (e.g. an ``--xyz`` file that is not
    extxyz); its message is one line naming the option and the value."""


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (exit status 2):
    ``<prog>: error: <message> (see <prog> --help)``; its subparsers are the same."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------- value types


def _int_at_least(text, low: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}")
    return value


def positive_int(text) -> int:
    """``text`` as an int >= 1, else :class:`argparse.ArgumentTypeError` naming it."""
    return _int_at_least(text, 1)


def non_negative_int(text) -> int:
    """``text`` as an int >= 0, else :class:`argparse.ArgumentTypeError` naming it."""
    return _int_at_least(text, 0)


def positive_seconds(text) -> float:
    """``text`` as a finite float > 0 (seconds), else :class:`argparse.ArgumentTypeError`."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def existing_file(text) -> str:
    """``text`` if it names an existing file, else :class:`argparse.ArgumentTypeError`."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"not a file: {text!r}")
    return str(text)


def parse_semiaxes(text) -> tuple[float, float, float]:
    """``"4,4,0.5"`` -> ``(4.0, 4.0, 0.5)``, semi-axes in angstrom.

    Raises
    ------
    ValueError
        naming the text unless it is three finite numbers > 0.
    """
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"semi-axes must be three comma-separated numbers like 4,4,0.5, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"semi-axes must be three finite numbers > 0 like 4,4,0.5, got {text!r}")
    return values


def semiaxes_text(text) -> str:
    """``text`` if :func:`parse_semiaxes` accepts it, else :class:`argparse.ArgumentTypeError`."""
    try:
        parse_semiaxes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return str(text)


# ----------------------------------------------------------------- adding options


def _adder(parser):
    """``add_argument`` of an argparse parser or group, ``addoption`` of a pytest one."""
    return getattr(parser, "addoption", None) or parser.add_argument


def add_workload_options(parser, *, frames_default: int | None = None) -> None:
    """Add ``--workload --frames --lmax --xyz --semiaxes --xyz-frames``.

    Parameters
    ----------
    parser : argparse parser or group, or pytest's parser or option group
    frames_default : int or None
        Default of ``--frames``; None takes the workload's default
        (``reference.workloads.DEFAULT_FRAMES``; with ``--xyz``,
        ``DEFAULT_XYZ_FRAMES``).
    """
    add = _adder(parser)
    frames_help = ("frames of the workload (default: the workload's, 16; with --xyz: frames read, "
                   f"default {DEFAULT_XYZ_FRAMES})" if frames_default is None
                   else f"frames of the workload, or read from --xyz (default {frames_default})")
    add("--workload", default="benzenes", choices=WORKLOAD_NAMES, help="generated workload (default benzenes)")
    add("--frames", type=positive_int, default=frames_default, help=frames_help)
    add("--lmax", type=non_negative_int, default=6, help="lmax (default 6)")
    add("--xyz", type=existing_file, default=None, metavar="FILE",
        help="extxyz file of ellipsoid frames (quaternions in c_q) instead of a generated workload")
    add("--semiaxes", type=semiaxes_text, default=None, metavar="A,B,C",
        help="constant semi-axes in angstrom for --xyz, e.g. 4,4,0.5 (default: c_diameter[k]/2 from the file)")
    add("--xyz-frames", type=positive_int, default=None, metavar="N",
        help="frames read from --xyz (default --frames, else 20)")


def add_threads_option(parser) -> None:
    """Add ``--threads`` (an int >= 1, default 1): the count every variant is pinned to."""
    _adder(parser)("--threads", type=positive_int, default=1, help="threads, pinned (default 1)")


def add_measure_options(parser, *, max_rounds_default: int) -> None:
    """Add ``--dtype`` (alias ``--bench-dtype``), ``--budget`` and ``--max-rounds``.

    Parameters
    ----------
    max_rounds_default : int
        Most steady-state rounds per variant when they are sized by ``--budget``.
    """
    add = _adder(parser)
    add("--dtype", "--bench-dtype", dest="dtype", choices=DTYPES, default="float64",
        help="floating-point type of the inputs (default float64)")
    add("--budget", type=positive_seconds, default=3.0, metavar="SECONDS",
        help="seconds of steady-state calls per variant (rounds clamped to [3, --max-rounds]; default 3)")
    add("--max-rounds", type=positive_int, default=max_rounds_default,
        help=f"most steady-state rounds per variant (default {max_rounds_default})")

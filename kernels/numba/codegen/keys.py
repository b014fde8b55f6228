"""The cache keys of the generated Numba kernels, in one place.

Numba keys its disk cache on the generated file (and the CPU) only, so the
file's name must change whenever anything that shapes the machine code does:
the hyper-parameters that enter, dtype, lanes, the inlined tables, the
screen's thresholds, the code versions, and the source of every module the
generated code comes from (``KERNEL_SOURCES``: an edit to any of them gives
new keys, so a stale kernel is never loaded).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.numba.lanes import checked_density_lanes, checked_gradient_lanes, checked_lanes
from einsum_workbench.kernels.numba.screening import screen_limits
from einsum_workbench.kernels.tables import compact_solid_harmonics

#: Bump when the generated code changes: part of the cache key.
CODE_VERSION = 11

#: Bump when the generated gradient code changes: part of the gradient kernels' cache key.
GRADIENT_CODE_VERSION = 1

#: Bump when the generated backward code changes: part of the backward kernels' cache key.
BACKWARD_CODE_VERSION = 1

#: The folder of the Numba family (``kernels/numba``), against which ``KERNEL_SOURCES`` are read.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

_PAIR_SOURCES = ("codegen/vector.py", "codegen/pairs.py", "lanes.py", "screening.py")

#: Per kind of kernel, the modules (relative to ``SOURCE_ROOT``) its generated code comes from: the
#: emitters it runs, the vector builder, and the lane and screen facts it inlines (their values are
#: in the key too; their source as well, as when they shared the pair emitters' file).
KERNEL_SOURCES = {
    "pairs": _PAIR_SOURCES,
    "density": _PAIR_SOURCES + ("codegen/density.py",),
    "gradients": _PAIR_SOURCES + ("codegen/gradients.py",),
    "backward": _PAIR_SOURCES + ("codegen/density.py", "codegen/backward.py"),
}


def kernel_sources(kind: str, root: Path = SOURCE_ROOT) -> tuple[Path, ...]:
    """The source files of ``kind``'s kernels (``KERNEL_SOURCES[kind]``) under ``root``.

    Raises
    ------
    ValueError
        ``kind`` not one of ``KERNEL_SOURCES``.
    """
    if kind not in KERNEL_SOURCES:
        raise ValueError(f"kind must be one of {sorted(KERNEL_SOURCES)}, got {kind!r}")
    return tuple(Path(root) / name for name in KERNEL_SOURCES[kind])


def source_digest(paths) -> str:
    """SHA-256 (hex) of the bytes of the files ``paths``, in order (each length-prefixed, so
    that no two lists of contents hash alike); their names and folder do not enter.

    Raises
    ------
    OSError
        a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _kind_digest(kind: str, root: str) -> str:
    """``source_digest`` of ``kind``'s sources under ``root``, read once per process."""
    return source_digest(kernel_sources(kind, Path(root)))


def kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None, split: bool | None = None,
               kind: str = "pairs", *, root: Path = SOURCE_ROOT) -> str:
    """Hash (20 hex characters) naming a generated pair, density or backward module, so that a
    stale disk cache is never used.

    Covers what shapes the machine code: the hyper-parameters that enter
    (rcond/tol do not: the density kernel reads the orthonormalisation
    matrices at run time), dtype, lanes (``lanes.checked_lanes`` /
    ``checked_density_lanes``, the latter also for the backward kernel), split,
    the kind of kernel (``"pairs"``, ``"density"`` or ``"backward"``, which adds
    ``BACKWARD_CODE_VERSION``), ``CODE_VERSION``, the source of the modules the kernel's
    code comes from (``KERNEL_SOURCES[kind]`` under ``root``: a copy of the
    family, for tests), the bytes of the solid-harmonic tables (the constants
    inlined) and the screen's thresholds (``screening.screen_limits``).

    Raises
    ------
    ValueError
        an unknown ``kind``, a bad dtype or lane count.
    """
    dtype = np.dtype(dtype)
    if kind not in ("pairs", "density", "backward"):
        raise ValueError(f"kind must be 'pairs', 'density' or 'backward', got {kind!r}")
    lanes = checked_lanes(dtype, lanes) if kind == "pairs" else checked_density_lanes(dtype, lanes)
    tables = hashlib.sha256()
    for table in compact_solid_harmonics(hypers):
        tables.update(np.ascontiguousarray(table).tobytes())
    fields = {
        "lmax": hypers.lmax, "basis": hypers.radial_basis, "sigma": hypers.sigma,
        "num_radial": list(hypers.num_radial), "dtype": dtype.name, "lanes": lanes, "split": split,
        "version": CODE_VERSION, "emitter": _kind_digest(kind, str(root)), "tables": tables.hexdigest(),
        "screen": list(screen_limits(dtype, hypers)),
    }
    if kind != "pairs":  # the pair kernel's fields as they were
        fields["kind"] = kind
    if kind == "backward":
        fields["backward_version"] = BACKWARD_CODE_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def gradient_kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None, semiaxes: bool = False, *,
                        root: Path = SOURCE_ROOT) -> str:
    """Hash (20 hex characters) naming a generated gradient module: the pair kernel's
    ``kernel_key`` (hyper-parameters, dtype, lanes, tables, screen, the pair emitters' source)
    plus the source of ``KERNEL_SOURCES["gradients"]``, ``GRADIENT_CODE_VERSION`` and whether
    semi-axis derivatives are emitted. ``lanes`` None: ``lanes.gradient_lane_choice``.

    Raises
    ------
    ValueError
        a bad dtype or lane count.
    """
    lanes = checked_gradient_lanes(dtype, lanes)
    base = kernel_key(hypers, dtype, lanes, root=root)
    fields = {"base": base, "version": GRADIENT_CODE_VERSION, "emitter": _kind_digest("gradients", str(root)),
              "semiaxes": bool(semiaxes)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def backward_kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None, *, root: Path = SOURCE_ROOT) -> str:
    """Hash (20 hex characters) naming a generated backward module (``codegen.backward``):
    ``kernel_key(hypers, dtype, lanes, kind="backward")`` (lanes None: the density kernel's
    choice, ``lanes.checked_density_lanes``).

    Raises
    ------
    ValueError
        a bad dtype or lane count.
    """
    return kernel_key(hypers, dtype, lanes, kind="backward", root=root)

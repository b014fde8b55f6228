"""The pair batches the bench measures: a generated workload, any extxyz file
of ellipsoid frames, or a workload tiled to an exact pair count (scaling);
:func:`workload_from` builds the one a tool's parsed options
(:mod:`.options`) name.

Import only after the threads are pinned (imports NumPy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.bench.options import DEFAULT_XYZ_FRAMES, OptionError, parse_semiaxes

#: hyper-parameters of the default workload (issue 2): GTO, sigma 1.5, cutoff 7
DEFAULT_LMAX = 6
DEFAULT_SIGMA = 1.5
DEFAULT_CUTOFF = 7.0


@dataclass
class BenchInput:
    """What a variant is measured on.

    Attributes
    ----------
    label : str
        Names the workload in a ranking (the pytest-benchmark group).
    hypers : ExpansionHypers
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3) : float64 arrays
    description : dict
        JSON-serialisable metadata (workload, frames, pairs, hyper-parameters).
    segment : (P,) int64 or None
        Each pair's centre-density row (centre, neighbour species), as the
        pipeline assigns it (``pipeline.layout.density_layout``); None for
        batches that are not frames (tiled).
    n_segments : int
    """

    label: str
    hypers: ExpansionHypers
    r_ij: np.ndarray
    rotations: np.ndarray
    semiaxes: np.ndarray
    description: dict
    segment: np.ndarray | None = None
    n_segments: int = 0

    @property
    def n_pairs(self) -> int:
        return int(self.r_ij.shape[0])

    def arrays(self, dtype=np.float64):
        """(r_ij, rotations, semiaxes) cast to ``dtype``."""
        return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (self.r_ij, self.rotations, self.semiaxes))

    @property
    def density_label(self) -> str:
        """The centre-density ranking group of this batch."""
        return f"{self.label}, centre density ({self.n_segments} centre x species rows)"

    def density_args(self, dtype=np.float64):
        """(r_ij, rotations, semiaxes, segment, n_segments) sorted by segment, as
        the pipeline hands them to a density variant.

        Raises ValueError when the batch has no segments.
        """
        if self.segment is None:
            raise ValueError(f"{self.label!r} has no centre segments (not built from frames)")
        order = np.argsort(self.segment, kind="stable")
        arrays = (np.ascontiguousarray(a[order], dtype=dtype) for a in (self.r_ij, self.rotations, self.semiaxes))
        return (*arrays, self.segment[order], self.n_segments)

    def subset(self, n: int) -> "BenchInput":
        """The first ``n`` pairs (for spot checks against the reference)."""
        n = min(n, self.n_pairs)
        return BenchInput(
            f"{self.label}[:{n}]", self.hypers, self.r_ij[:n], self.rotations[:n], self.semiaxes[:n],
            {**self.description, "pairs": n},
            None if self.segment is None else self.segment[:n], self.n_segments,
        )

    def tiled(self, n_pairs: int) -> "BenchInput":
        """Exactly ``n_pairs`` pairs, repeating this batch's pairs in order.

        Scaling runs use it to reach a million pairs without generating
        thousands of frames; the per-pair work does not depend on repetition.

        Raises ValueError for n_pairs < 1 or an empty batch.
        """
        if n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1, got {n_pairs!r}")
        if self.n_pairs == 0:
            raise ValueError(f"cannot tile the empty pair batch of {self.label!r}")
        index = np.arange(n_pairs) % self.n_pairs
        label = f"{self.description['workload']} lmax {self.hypers.lmax}, {n_pairs} pairs (tiled)"
        return BenchInput(
            label, self.hypers, self.r_ij[index], self.rotations[index], self.semiaxes[index],
            {**self.description, "pairs": n_pairs, "tiled_from": self.n_pairs},
        )


def _from_pairs(label: str, hypers: ExpansionHypers, pairs, description: dict) -> BenchInput:
    from einsum_workbench.pipeline.layout import density_layout

    layout, segment = density_layout(pairs)
    return BenchInput(label, hypers, pairs.r_ij, pairs.rotations, pairs.semiaxes,
                      {**description, "centre_rows": layout.n_segments}, segment, layout.n_segments)


def _describe(workload: str, n_frames: int, hypers: ExpansionHypers, n_pairs: int, **extra) -> dict:
    return {"workload": workload, "frames": n_frames, "pairs": n_pairs, **hypers.as_dict(), **extra}


def generated_input(name: str = "benzenes", frames: int | None = None, lmax: int = DEFAULT_LMAX,
                    seed: int = 0) -> BenchInput:
    """A generated workload (``reference.workloads.make_workload``), GTO sigma 1.5, cutoff 7.

    ``frames=None`` takes ``reference.workloads.DEFAULT_FRAMES``; with the
    defaults this is ``reference.workloads.default_workload()``.

    Raises KeyError for an unknown workload name (valid names listed).
    """
    from einsum_workbench.reference import workloads

    n_frames = workloads.DEFAULT_FRAMES if frames is None else int(frames)
    w = workloads.make_workload(name, n_frames, seed=seed, lmax=lmax, radial_basis="gto",
                                sigma=DEFAULT_SIGMA, cutoff=DEFAULT_CUTOFF)
    label = f"{name}: {n_frames} frames, lmax {lmax}, {w.n_pairs} pairs"
    return _from_pairs(label, w.hypers, w.pairs, _describe(name, n_frames, w.hypers, w.n_pairs, seed=seed))


def xyz_input(path, semiaxes=None, frames: int | None = DEFAULT_XYZ_FRAMES, lmax: int = DEFAULT_LMAX) -> BenchInput:
    """The first ``frames`` frames of an extxyz file of ellipsoids (all when None).

    Parameters
    ----------
    path : str or Path
        extxyz with orientations as quaternions (w, x, y, z) in ``c_q``.
    semiaxes : None, str "a,b,c" or (3,) floats
        Constant semi-axes in angstrom; None reads ``c_diameter[k] / 2``.
    frames : int or None
    lmax : int

    Raises
    ------
    FileNotFoundError naming the path; ValueError for bad semi-axes or frames.
    """
    from einsum_workbench.reference.readers import read_frames
    from einsum_workbench.reference.pairs import frames_to_pairs

    if isinstance(semiaxes, str):
        semiaxes = parse_semiaxes(semiaxes)
    if frames is not None and (isinstance(frames, bool) or int(frames) < 1):
        raise ValueError(f"frames must be >= 1 or None, got {frames!r}")
    atoms = read_frames(path, index=":" if frames is None else f":{int(frames)}")
    hypers = ExpansionHypers(lmax=lmax, radial_basis="gto", cutoff=DEFAULT_CUTOFF, sigma=DEFAULT_SIGMA)
    pairs = frames_to_pairs(atoms, hypers.cutoff, semiaxes=None if semiaxes is None else np.asarray(semiaxes))
    name = str(path).rsplit("/", 1)[-1]
    axes = "from file" if semiaxes is None else ",".join(f"{v:g}" for v in semiaxes)
    label = f"{name}: {len(atoms)} frames, semi-axes {axes}, lmax {lmax}, {len(pairs)} pairs"
    return _from_pairs(label, hypers, pairs, _describe(name, len(atoms), hypers, len(pairs), path=str(path),
                                                       semiaxes=None if semiaxes is None else list(semiaxes)))


# ----------------------------------------------------------------- options to a workload


def _one_line(err) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def workload_from(options) -> BenchInput:
    """The pair batch the options name.

    ``options`` is the parsed namespace of any tool that added
    :func:`.options.add_workload_options` (``config.option`` under pytest):
    ``--xyz`` reads ``--xyz-frames`` (else ``--frames``, else
    ``DEFAULT_XYZ_FRAMES``) frames of the file; otherwise ``--workload`` is
    generated with ``--frames`` frames (None: the workload's default). A
    ``pairs`` attribute that is set tiles the batch to exactly that many
    pairs. Call it after the threads are pinned (this module imports NumPy).

    Raises
    ------
    options.OptionError
        one line naming the option and why, when the workload cannot be built
        (a file that is not extxyz, frames without orientations, ...).
    """
    xyz = getattr(options, "xyz", None)
    lmax = getattr(options, "lmax", 6)
    try:
        if xyz:
            frames = getattr(options, "xyz_frames", None) or getattr(options, "frames", None) or DEFAULT_XYZ_FRAMES
            inp = xyz_input(xyz, getattr(options, "semiaxes", None), frames=frames, lmax=lmax)
        else:
            inp = generated_input(getattr(options, "workload", "benzenes"), getattr(options, "frames", None), lmax=lmax)
    except (KeyError, ValueError, IndexError, OSError) as err:  # ase's XYZError is an OSError
        source = f"--xyz {xyz}" if xyz else f"--workload {getattr(options, 'workload', 'benzenes')}"
        raise OptionError(f"cannot build the workload of {source}: {type(err).__name__}: {_one_line(err)}") from None
    if inp.n_pairs == 0:
        raise OptionError(f"the workload {inp.label!r} has no neighbour pair: nothing to measure")
    pairs = getattr(options, "pairs", None)
    return inp.tiled(pairs) if pairs else inp

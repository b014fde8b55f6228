"""The one place that lists every variant.

Four problems, one entry per (name, problem):

- ``"pairs"``, the pair expansion (DESIGN.md section 4), in ``VARIANTS``::

    expand(r_ij, rotations, semiaxes, hypers, *, dtype=None, **options)
        -> list over l of (P, 2l+1, num_radial[l]) arrays

- ``"density"``, the centre density (DESIGN.md section 3, "Centre density"),
  in ``DENSITY_VARIANTS``, same names as the pair variants they build on::

    centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *,
                   dtype=None, orthonormal=False, **options)
        -> list over l of (n_segments, 2l+1, num_radial[l]) arrays

  row s holds the sum of the coefficients of the pairs p with
  ``segment[p] == s`` (zeros for a segment without pairs), then, when
  ``orthonormal``, the radial orthonormalisation along n
  (:mod:`einsum_workbench.reference.density` states it in full). A density
  variant marked ``per_atom`` also takes ``neighbour=`` (P,) with rotations
  (N, 3, 3) and semi-axes (N, 3) per atom, pair p reading row
  ``neighbour[p]``; :func:`density_function` gives every variant that form.

- ``"gradients"``, the pair expansion with its derivatives, in
  ``GRADIENT_VARIANTS``::

    expand_with_gradients(r_ij, rotations, semiaxes, hypers, *, dtype=None,
                          semiaxes_gradients=False, **options) -> PairGradients

  values as ``"pairs"`` and, per l, ``(P, 3, 2l+1, num_radial[l])``
  derivatives along r_ij and along infinitesimal rotations of the
  neighbour about each lab axis (and, when asked, along its semi-axes);
  :mod:`einsum_workbench.reference.gradients` states the contract and the
  formulas.

- ``"backward"``, the vector-Jacobian product of the centre density
  (DESIGN.md section 3, "Backward pass"), in ``BACKWARD_VARIANTS``::

    centre_density_backward(r_ij, rotations, semiaxes, hypers, segment,
                            n_segments, cotangent, *, dtype=None,
                            orthonormal=False, semiaxes_gradients=False,
                            **options) -> PairCotangents

  ``cotangent`` is a list over l of ``(n_segments, 2l+1, num_radial[l])``
  arrays, dL/d(density row) (on orthonormalised rows when ``orthonormal``);
  the result holds per pair only ``r`` (P, 3) = dL/dr_ij, ``theta`` (P, 3) =
  dL/dtheta along infinitesimal rotations of the neighbour about each lab
  axis (and ``semiaxes`` (P, 3) when asked);
  :mod:`einsum_workbench.reference.backward` states the contract.

Each entry says what it needs (importable modules, a GPU) and, when
unavailable, why, and carries every fact the tools need about it: the device
it runs on (``device``: timings synchronise it, the GPU validation runs the
``"cuda"`` ones), whether its hot code is compiled (``native``: py-spy samples
native frames), what a line profile of it targets (``line_target``), and its
problem. Modules are imported only when their variant is loaded, so listing
variants imports neither torch, cupy nor numba.

Adding a variant is one module plus one line here: the module defines the
contract's function, the line in ``VARIANTS`` (or ``DENSITY_VARIANTS``) names
it and its facts. It then joins the equivalence suites, the bench (``pytest
bench``, ``einsum-workbench run``), the profiles and ``ANISOAP_BACKEND``. A
pair backend without a density entry still has a centre density:
:func:`density_function` sums its pair coefficients. A ``BACKWARD_VARIANTS``
line joins the backward equivalence suite (``tests/kernels/test_backward.py``,
against the reference and Torch autograd), the smooth-cutoff suite, the bench
(``bench/test_backward_ranking.py``) and ``einsum-workbench list --problem
backward``; the GPU validation checks the ``cupy_batched`` one; the profiles
do not take that problem yet (docs/gradients.md, "Backward pass and forces").
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

_PACKAGE = "einsum_workbench"
#: The problems a variant solves: the pair expansion, the centre density,
#: the pair expansion's gradients and the centre density's backward pass.
PROBLEMS = ("pairs", "density", "gradients", "backward")
#: Where a variant computes.
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Variant:
    """A registered variant.

    Attributes
    ----------
    name : str
        Registry name (also the value of ``ANISOAP_BACKEND``).
    module : str
        Module path relative to the ``einsum_workbench`` package.
    function : str
        Name of the function in that module implementing the contract.
    requires : tuple of str
        Top-level modules that must be importable.
    gpu_probe : str or None
        Name of a function in the module returning None when a usable GPU is
        present, else a reason; None when no GPU is needed.
    description : str
    options : dict
        Keyword options passed on every call (e.g. ``{"compile": True}``).
    problem : {"pairs", "density", "gradients", "backward"}
        The contract the function implements (module docstring).
    device : str
        Where it computes: ``"cpu"`` or ``"cuda"``. Timings synchronise a
        CUDA device before reading the clock; the GPU validation
        (``python -m einsum_workbench.bench.gpu_validate``) runs the
        ``"cuda"`` variants.
    native : bool
        Its hot code is compiled (Numba, Torch's C++): profiles sample native
        frames (``py-spy --native``), or its time shows as one opaque frame.
    line_target : str or None
        What ``kernprof -p`` profiles line by line (a function or a whole
        module, relative to the ``einsum_workbench`` package); None when a
        line profile would show nothing useful (compiled code).
    per_atom : bool
        A density variant whose function takes ``neighbour=`` and per-atom
        rotations and semi-axes itself (module docstring).
    """

    name: str
    module: str
    function: str = "expand"
    requires: tuple = ()
    gpu_probe: str | None = None
    description: str = ""
    options: dict = field(default_factory=dict)
    problem: str = "pairs"
    device: str = "cpu"
    native: bool = False
    line_target: str | None = None
    per_atom: bool = False

    def __post_init__(self):
        if self.problem not in PROBLEMS:
            raise ValueError(f"variant {self.name!r}: problem must be one of {PROBLEMS}, got {self.problem!r}")
        if self.device not in DEVICES:
            raise ValueError(f"variant {self.name!r}: device must be one of {DEVICES}, got {self.device!r}")

    @property
    def line_profile_target(self) -> str | None:
        """The full dotted path of :attr:`line_target` (what ``kernprof -p`` takes), or None."""
        return None if self.line_target is None else f"{_PACKAGE}.{self.line_target}"

    def unavailable_reason(self) -> str | None:
        """None if the variant can run here, else why not (missing module, no GPU)."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs the Python module(s) {', '.join(missing)}, not installed"
        if self.gpu_probe is not None:
            try:
                probe = getattr(importlib.import_module(f"{_PACKAGE}.{self.module}"), self.gpu_probe)
                return probe()
            except Exception as err:  # a broken driver or library is a reason, not a crash
                return f"GPU probe failed: {type(err).__name__}: {err}"
        return None

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None

    def load(self) -> Callable:
        """The variant's function, with its registered options bound.

        Raises
        ------
        RuntimeError if the variant cannot run here (the reason is given).
        """
        reason = self.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"variant {self.name!r} is unavailable: {reason}")
        function = getattr(importlib.import_module(f"{_PACKAGE}.{self.module}"), self.function)
        if not self.options:
            return function
        options = dict(self.options)

        def bound(*args, **kwargs):
            return function(*args, **{**options, **kwargs})

        bound.__name__ = f"{self.name}"
        bound.__doc__ = function.__doc__
        return bound


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "reference", "reference.expansion", "pairwise_ellip_expansion",
        line_target="reference.expansion.pairwise_ellip_expansion",
        description="per-pair loop, one numpy.einsum per pair and l (AniSOAP's structure)",
    ),
    Variant(
        "numpy_einsum", "kernels.numpy.pairs", line_target="kernels.numpy.pairs",
        description="NumPy, batched over pairs: vectorised moments, one contraction per l, chunked",
    ),
    Variant(
        "opt_einsum_planned", "kernels.opt_einsum.pairs", requires=("opt_einsum",),
        options={"backend": "numpy"},
        description="contraction planned once by opt_einsum (cached per hyper-parameters), NumPy backend",
    ),
    Variant(
        "opt_einsum_torch", "kernels.opt_einsum.pairs", requires=("opt_einsum", "torch"),
        options={"backend": "torch"}, native=True,
        description="contraction planned once by opt_einsum, executed by Torch",
    ),
    Variant(
        "torch_einsum", "kernels.torch.pairs", requires=("torch",), native=True,
        description="Torch, batched over pairs from geometry to coefficients, eager, CPU",
    ),
    Variant(
        "torch_compiled", "kernels.torch.pairs", requires=("torch",),
        options={"compile": True}, native=True,
        description="torch_einsum under torch.compile (pair counts bucketed: no recompilation per call)",
    ),
    Variant(
        "torch_cuda", "kernels.torch.pairs", requires=("torch",),
        gpu_probe="cuda_unavailable_reason", options={"device": "cuda"}, device="cuda", native=True,
        description="torch_einsum on a CUDA device",
    ),
    Variant(
        "numba_fused", "kernels.numba.pairs", requires=("numba",), native=True,
        description="Numba, one fused per-pair kernel (geometry, moments, sparse contraction), prange",
    ),
    Variant(
        "cupy_batched", "kernels.cupy.pairs", requires=("cupy",),
        gpu_probe="gpu_unavailable_reason", device="cuda",
        description="CuPy/CUDA: every frame's pairs in one GPU pass, one thread per pair",
    ),
)


DENSITY_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "reference", "reference.density", "centre_density", problem="density",
        description="reference expansion, then sums over each centre's neighbours in pair order (upstream's)",
    ),
    Variant(
        "numpy_einsum", "kernels.numpy.density", "numpy_einsum_density", problem="density",
        description="numpy_einsum expansion plus a NumPy segment sum",
    ),
    Variant(
        "torch_einsum", "kernels.torch.density", "centre_density", requires=("torch",), problem="density",
        native=True,
        description="torch_einsum expansion plus index_add_, CPU",
    ),
    Variant(
        "numba_fused", "kernels.numba.density", "centre_density", requires=("numba",), problem="density",
        native=True, per_atom=True,
        description="Numba, fused per centre: each centre's sum accumulated in registers/stack, written once",
    ),
    Variant(
        "cupy_batched", "kernels.cupy.density", "centre_density", requires=("cupy",), problem="density",
        gpu_probe="gpu_unavailable_reason", device="cuda",
        description="CuPy/CUDA: one thread per centre segment, the sum kept on chip, written once",
    ),
)


GRADIENT_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "reference", "reference.gradients", "finite_difference_gradients", problem="gradients",
        description="central finite differences of the reference expansion (steps in reference.gradients)",
    ),
    Variant(
        "torch_einsum", "kernels.torch.gradients", "expand_with_gradients", requires=("torch",),
        problem="gradients", native=True,
        description="Torch autograd through torch_einsum (forward mode, one tangent per direction), CPU",
    ),
    Variant(
        "numba_fused", "kernels.numba.gradients", "expand_with_gradients", requires=("numba",),
        problem="gradients", native=True,
        description="Numba, fused: values and derivatives in one pass from one moment table",
    ),
    Variant(
        "cupy_batched", "kernels.cupy.gradients", "expand_with_gradients", requires=("cupy",),
        gpu_probe="gpu_unavailable_reason", device="cuda", problem="gradients",
        description="CuPy/CUDA: values and derivatives, one thread per pair",
    ),
)


BACKWARD_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "reference", "reference.backward", "centre_density_backward", problem="backward",
        description="reference gradients (finite differences) contracted with each pair's segment cotangent",
    ),
    Variant(
        "torch_einsum", "kernels.torch.backward", "centre_density_backward", requires=("torch",),
        problem="backward", native=True,
        description="Torch reverse-mode autograd through torch_einsum's core, per chunk (a VJP), CPU",
    ),
    Variant(
        "numba_fused", "kernels.numba.backward", "centre_density_backward", requires=("numba",),
        problem="backward", native=True,
        description="Numba, fused: per segment the cotangent contracted once with T', per pair ten dot products "
                    "of its moments and the chain rule",
    ),
    Variant(
        "cupy_batched", "kernels.cupy.backward", "centre_density_backward", requires=("cupy",),
        gpu_probe="gpu_unavailable_reason", device="cuda", problem="backward",
        description="CuPy/CUDA: one thread per pair, its moments projected on its segment's moment cotangent "
                    "(T'^T g, once per segment on the host), 6 (9) numbers out",
    ),
)


def _table(problem: str) -> tuple[Variant, ...]:
    if problem == "pairs":
        return VARIANTS
    if problem == "density":
        return DENSITY_VARIANTS
    if problem == "gradients":
        return GRADIENT_VARIANTS
    if problem == "backward":
        return BACKWARD_VARIANTS
    raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")


def variant_names(problem: str = "pairs") -> list[str]:
    """Every registered name for ``problem``, in registry order."""
    return [v.name for v in _table(problem)]


def get_variant(name: str, problem: str = "pairs") -> Variant:
    """The variant called ``name`` registered for ``problem``.

    Raises
    ------
    KeyError naming the unknown value and listing the valid names.
    ValueError for an unknown ``problem``.
    """
    for v in _table(problem):
        if v.name == name:
            return v
    kind = {"pairs": "variant", "density": "centre-density variant", "gradients": "gradient variant",
            "backward": "backward variant"}[problem]
    raise KeyError(f"unknown {kind} {name!r}; registered variants: {', '.join(variant_names(problem))}")


def load_variant(name: str, problem: str = "pairs", *, smooth_cutoff=None) -> Callable:
    """``get_variant(name, problem).load()``, with the optional smooth cutoff applied.

    Parameters
    ----------
    name, problem : as :func:`get_variant`
    smooth_cutoff : None or einsum_workbench.reference.cutoff.ShiftedCosine
        None: the variant's function itself (upstream's hard cutoff). A
        ShiftedCosine: the function wrapped by
        :func:`einsum_workbench.kernels.smooth_cutoff.with_smooth_cutoff`
        (same contract; DESIGN.md section 3, "Smooth cutoff (optional)").

    Raises
    ------
    KeyError, ValueError, RuntimeError as :func:`get_variant` and :meth:`Variant.load`;
    TypeError for a ``smooth_cutoff`` that is neither None nor a ShiftedCosine.
    """
    function = get_variant(name, problem).load()
    if smooth_cutoff is None:
        return function
    from einsum_workbench.kernels.smooth_cutoff import with_smooth_cutoff

    pair_variant = get_variant(name) if name in variant_names("pairs") else None  # the shell pairs' expansion
    return with_smooth_cutoff(function, problem, smooth_cutoff, name=name, pair_variant=pair_variant)


def available_variants(problem: str = "pairs") -> list[Variant]:
    """The variants of ``problem`` that can run on this machine."""
    return [v for v in _table(problem) if v.available]


def availability_table(problem: str = "pairs") -> list[tuple[str, str, str]]:
    """(name, "available" or the reason it is not, description) for every variant."""
    return [(v.name, v.unavailable_reason() or "available", v.description) for v in _table(problem)]


def density_function(name: str, *, smooth_cutoff=None, per_atom: bool = False) -> Callable:
    """The centre density computed with the pair backend ``name``.

    Its own ``DENSITY_VARIANTS`` entry when it has one, else its pair
    expansion followed by a NumPy segment sum
    (:func:`einsum_workbench.kernels.numpy.density.density_from_expansion`).
    With ``smooth_cutoff`` (a ``reference.cutoff.ShiftedCosine``), wrapped by
    :func:`einsum_workbench.kernels.smooth_cutoff.with_smooth_cutoff`: the
    shell pairs' coefficients come from the pair backend ``name``. With
    ``per_atom``, a function that takes ``neighbour=`` (P,) and per-atom
    rotations (N, 3, 3) and semi-axes (N, 3): the variant's own where it is
    marked ``per_atom`` (and no smooth cutoff wraps it), else the rows
    gathered per pair first (``np.take``), then the function.

    Raises
    ------
    KeyError (unknown name) or RuntimeError (cannot run here), as :meth:`Variant.load`;
    TypeError for a ``smooth_cutoff`` that is neither None nor a ShiftedCosine.
    """
    pair_variant = get_variant(name)
    own = get_variant(name, "density") if name in variant_names("density") else None
    if own is not None:
        function = own.load()
    else:
        from einsum_workbench.kernels.numpy.density import density_from_expansion

        function = density_from_expansion(pair_variant.load(), name)
    if smooth_cutoff is not None:
        from einsum_workbench.kernels.smooth_cutoff import with_smooth_cutoff

        function = with_smooth_cutoff(function, "density", smooth_cutoff, name=name, pair_variant=pair_variant)
    if per_atom and not (own is not None and own.per_atom and smooth_cutoff is None):
        return _rows_gathered(function)
    return function


def _rows_gathered(function: Callable) -> Callable:
    """``function`` (the density contract) taking ``neighbour=`` and per-atom rotations and semi-axes."""
    import numpy as np

    def centre_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *, neighbour, **options):
        return function(r_ij, np.take(rotations, neighbour, axis=0), np.take(semiaxes, neighbour, axis=0), hypers,
                        segment, n_segments, **options)

    centre_density.__doc__ = function.__doc__
    return centre_density

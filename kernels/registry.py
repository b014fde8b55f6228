"""The one place that lists every variant.

Each entry names the module and function implementing the contract of a
variant (DESIGN.md section 4)::

    expand(r_ij, rotations, semiaxes, hypers, *, dtype=None, **options)
        -> list over l of (P, 2l+1, num_radial[l]) arrays

what it needs (importable modules, a GPU) and, when unavailable, why. Modules
are imported only when their variant is loaded, so listing variants imports
neither torch, cupy nor numba. A new variant joins the equivalence suite and
the bench by adding one line to ``VARIANTS``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

_PACKAGE = "einsum_workbench"


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
    """

    name: str
    module: str
    function: str = "expand"
    requires: tuple = ()
    gpu_probe: str | None = None
    description: str = ""
    options: dict = field(default_factory=dict)

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
        description="per-pair loop, one numpy.einsum per pair and l (AniSOAP's structure)",
    ),
    Variant(
        "numpy_einsum", "kernels.numpy_einsum",
        description="NumPy, batched over pairs: vectorised moments, one contraction per l, chunked",
    ),
    Variant(
        "opt_einsum_planned", "kernels.opt_einsum_planned", requires=("opt_einsum",),
        options={"backend": "numpy"},
        description="contraction planned once by opt_einsum (cached per hyper-parameters), NumPy backend",
    ),
    Variant(
        "opt_einsum_torch", "kernels.opt_einsum_planned", requires=("opt_einsum", "torch"),
        options={"backend": "torch"},
        description="contraction planned once by opt_einsum, executed by Torch",
    ),
    Variant(
        "torch_einsum", "kernels.torch_einsum", requires=("torch",),
        description="Torch, batched over pairs from geometry to coefficients, eager, CPU",
    ),
    Variant(
        "torch_compiled", "kernels.torch_einsum", requires=("torch",),
        options={"compile": True},
        description="torch_einsum under torch.compile (pair counts bucketed: no recompilation per call)",
    ),
    Variant(
        "torch_cuda", "kernels.torch_einsum", requires=("torch",),
        gpu_probe="cuda_unavailable_reason", options={"device": "cuda"},
        description="torch_einsum on a CUDA device",
    ),
    Variant(
        "numba_fused", "kernels.numba_fused", requires=("numba",),
        description="Numba, one fused per-pair kernel (geometry, moments, sparse contraction), prange",
    ),
    Variant(
        "cupy_batched", "kernels.cupy_batched", requires=("cupy",),
        gpu_probe="gpu_unavailable_reason",
        description="CuPy/CUDA: every frame's pairs in one GPU pass, one thread per pair",
    ),
)


def variant_names() -> list[str]:
    """Every registered name, in registry order."""
    return [v.name for v in VARIANTS]


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``.

    Raises
    ------
    KeyError naming the unknown value and listing the valid names.
    """
    for v in VARIANTS:
        if v.name == name:
            return v
    raise KeyError(f"unknown variant {name!r}; registered variants: {', '.join(variant_names())}")


def load_variant(name: str) -> Callable:
    """Shortcut for ``get_variant(name).load()``."""
    return get_variant(name).load()


def available_variants() -> list[Variant]:
    """The variants that can run on this machine."""
    return [v for v in VARIANTS if v.available]


def availability_table() -> list[tuple[str, str, str]]:
    """(name, "available" or the reason it is not, description) for every variant."""
    return [(v.name, v.unavailable_reason() or "available", v.description) for v in VARIANTS]

"""How to compute the expansion fast: the variant registry and one module per
variant. ``registry`` is the one place that lists them; nothing heavy (torch,
cupy, numba) is imported until a variant is loaded."""

from einsum_workbench.kernels.registry import VARIANTS, available_variants, get_variant, load_variant, variant_names

__all__ = ["VARIANTS", "available_variants", "get_variant", "load_variant", "variant_names"]

"""Lane facts of the Numba kernels: pairs per SIMD block, chosen per machine, in one place.

Every specialised kernel runs one pair per SIMD lane (``codegen``). How many
lanes a block has is a machine fact: ``lane_choice`` reads Numba's target CPU
and applies the rule measured for each kernel, unless ``EINSUM_WORKBENCH_LANES``
(``LANES_ENV``) sets the counts. The lane count is part of every kernel's cache
key (``codegen.keys``); benches record ``lane_choice``'s dict with their results.
Importing this module imports no Numba (the CPU is read on the first call).
"""

from __future__ import annotations

import os

import numpy as np

#: Pairs per block (SIMD lanes) with 256-bit vectors; see ``default_lanes`` for the per-machine choice.
BASE_LANES = {np.dtype(np.float64): 4, np.dtype(np.float32): 8}

#: Environment variable overriding the lane counts: ``8`` (float64 8, float32 16 lanes) or
#: ``float64=8,float32=8`` (either entry may be left out).
LANES_ENV = "EINSUM_WORKBENCH_LANES"

#: CPUs (LLVM names) on which the pair kernel measured faster with 512-bit vectors (8 float64
#: lanes) than with 256-bit ones: AMD Zen 5 (0.035 against 0.037 us per pair, issue 11). Not on
#: the Intel Xeon Emerald Rapids where this was written (0.080 against 0.086 us per pair) nor
#: on Zen 4 (double-pumped AVX-512).
WIDE_PAIR_KERNEL_CPUS = frozenset({"znver5"})


def host_cpu() -> tuple[str, str]:
    """(CPU name, comma-separated features) of Numba's code-generation target here.

    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set (as Numba's code
    generator reads them), else the host's, from llvmlite.
    """
    from numba.core import config

    name, features = config.CPU_NAME, config.CPU_FEATURES
    if name is None or features is None:
        import llvmlite.binding as llvm

        name = name if name is not None else llvm.get_host_cpu_name()
        features = features if features is not None else llvm.get_host_cpu_features().flatten()
    return str(name), str(features)


def host_vector_bits() -> int:
    """Width in bits of the float vectors Numba's target has here: 512 with AVX-512F, else 256.

    Reads ``NUMBA_CPU_FEATURES`` when set (as Numba's code generator does),
    else the host's features from llvmlite.
    """
    return 512 if "+avx512f" in host_cpu()[1].split(",") else 256


def _lanes_override(dtype) -> int | None:
    """The lane count ``EINSUM_WORKBENCH_LANES`` sets for ``dtype``, or None."""
    text = os.environ.get(LANES_ENV, "").strip()
    if not text:
        return None
    dtype = np.dtype(dtype)
    try:
        if "=" not in text:
            lanes = int(text) * (2 if dtype == np.dtype(np.float32) else 1)
        else:
            entries = dict(item.split("=", 1) for item in text.replace(" ", "").split(",") if item)
            unknown = set(entries) - {"float64", "float32"}
            if unknown:
                raise ValueError(f"unknown dtype {sorted(unknown)}")
            if dtype.name not in entries:
                return None
            lanes = int(entries[dtype.name])
    except ValueError as err:
        raise ValueError(f"{LANES_ENV}={text!r}: expected e.g. '8' or 'float64=8,float32=16' ({err})") from None
    if lanes < 2 or lanes & (lanes - 1):
        raise ValueError(f"{LANES_ENV}={text!r}: lane counts must be powers of two >= 2, got {lanes}")
    return lanes


def lane_choice(dtype, kind: str = "pairs") -> dict:
    """The lane count of ``kind``'s kernel (``"pairs"`` or ``"density"``) for ``dtype`` here, and why.

    Returns ``{"lanes", "source", "cpu", "vector_bits"}``; ``source`` is
    ``EINSUM_WORKBENCH_LANES`` when that variable sets it, else the rule
    applied to the CPU's features:

    - density kernel: one vector register of the widest kind the target has
      (512 bits with AVX-512F: 8 float64 / 16 float32 lanes; else 4 / 8);
    - pair kernel: 512-bit only on the CPUs of ``WIDE_PAIR_KERNEL_CPUS``
      (where it measured faster), else 256-bit (4 / 8 lanes), AVX-512 or not.

    The lane count is part of every kernel's cache key (``codegen.keys.kernel_key``);
    benches record this dict with their results.

    Raises
    ------
    ValueError
        ``dtype`` not float32/float64, an unknown ``kind``, or a malformed ``EINSUM_WORKBENCH_LANES``.
    """
    dtype = np.dtype(dtype)
    if dtype not in BASE_LANES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if kind not in ("pairs", "density"):
        raise ValueError(f"kind must be 'pairs' or 'density', got {kind!r}")
    name, features = host_cpu()
    bits = host_vector_bits()
    override = _lanes_override(dtype)
    if override is not None:
        return {"lanes": override, "source": LANES_ENV, "cpu": name, "vector_bits": bits}
    if kind == "density":
        rule = f"density kernel: one {bits}-bit register"
        lanes = bits // (8 * dtype.itemsize)
    elif bits == 512 and name in WIDE_PAIR_KERNEL_CPUS:
        rule, lanes = f"pair kernel: 512-bit on {name}", 512 // (8 * dtype.itemsize)
    else:
        rule = f"pair kernel: 256-bit ({'AVX-512 measured slower here' if bits == 512 else 'no AVX-512'})"
        lanes = BASE_LANES[dtype]
    return {"lanes": lanes, "source": rule, "cpu": name, "vector_bits": bits}


def default_lanes(dtype, kind: str = "pairs") -> int:
    """``lane_choice(dtype, kind)["lanes"]``."""
    return lane_choice(dtype, kind)["lanes"]


def default_density_lanes(dtype) -> int:
    """Pairs per block (and segments per group) of the density kernel on this machine.

    ``lane_choice(dtype, "density")``: one vector register of the widest kind
    the target has, 8 float64 / 16 float32 lanes with AVX-512F, else 4 / 8
    (or ``EINSUM_WORKBENCH_LANES``). A machine fact, measured on one CPU only
    (not "the best" elsewhere): on the Intel Xeon (Emerald Rapids, AVX-512, 2
    shared cores) where this kernel was written, one thread, default
    workload, the kernel alone took 0.022 us per pair in float64 with 8
    lanes against 0.039 with 4 and 0.027 with 16; the whole float32 call
    0.016 with 16 lanes against 0.025 with 8. Compiled for an AVX2-only
    target (Haswell features) on the same CPU, 4 and 8 float64 lanes tied
    (0.033). Not measured on Zen 4, whose AVX-512 is double-pumped (the pair
    kernel measured 256-bit best there): pass ``lanes`` to
    ``kernels.numba.density.centre_density`` to measure a machine.
    """
    return default_lanes(dtype, "density")


def gradient_lane_choice(dtype) -> dict:
    """Pairs per block of the gradient kernel for ``dtype`` here, and why (recorded with results):
    the pair kernel's choice, ``lane_choice(dtype, "pairs")`` (``EINSUM_WORKBENCH_LANES``
    overrides it).

    Measured on the Intel Xeon (Emerald Rapids, AVX-512) where this was written, default
    workload, one thread, kernel alone: 4 and 8 float64 lanes tie on 1,024 pairs
    (0.42 us per pair), 4 lanes ahead on 4,096 (0.68 against 0.83); 8 lanes were
    ahead (0.43 against 0.52) before the per-group functions cut the spills. With
    semi-axes 8 lanes led on 1,024 pairs (0.67 against 0.80) and trailed on 4,096.
    Values are the same bit for bit with any lane count.
    """
    return lane_choice(dtype, "pairs")


def checked_lanes(dtype, lanes) -> int:
    """The pair kernel's lane count: ``default_lanes(dtype)`` when ``lanes`` is None, else ``lanes``
    checked to be a power of two >= 2 (the in-register transpose of ``VectorBuilder.store_rows``
    halves groups recursively).

    Raises
    ------
    ValueError
        ``dtype`` not float32/float64, or ``lanes`` not a power of two >= 2.
    """
    if np.dtype(dtype) not in BASE_LANES:
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if lanes is None:
        return default_lanes(dtype, "pairs")
    if isinstance(lanes, bool) or int(lanes) != lanes or lanes < 2 or int(lanes) & (int(lanes) - 1):
        raise ValueError(f"lanes must be a power of two >= 2, got {lanes!r}")
    return int(lanes)


def checked_density_lanes(dtype, lanes) -> int:
    """The density kernel's lane count: ``default_density_lanes(dtype)`` when ``lanes`` is None,
    else ``lanes`` checked as ``checked_lanes`` does (same errors)."""
    if lanes is None:
        if np.dtype(dtype) not in BASE_LANES:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        return default_density_lanes(dtype)
    return checked_lanes(dtype, lanes)


def checked_gradient_lanes(dtype, lanes) -> int:
    """The gradient kernel's lane count: ``gradient_lane_choice(dtype)["lanes"]`` when ``lanes`` is
    None, else ``lanes`` checked as ``checked_lanes`` does (same errors)."""
    return checked_lanes(dtype, gradient_lane_choice(dtype)["lanes"] if lanes is None else lanes)

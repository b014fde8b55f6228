"""The generated sources that ``tools/check_cuda_compile.sh`` compiles for sm_90.

- :func:`representative_hypers`: the hyper-parameter sets whose kernels CI compiles;
- :func:`write_sources` and the command line
  ``python -m einsum_workbench.kernels.cupy.compile_check write-sources DIR``:
  the translation units of the pair, centre-density, gradient and backward kernels and
  of their host harnesses, which the script compiles with nvcc (kernels) and
  g++ (host harnesses).

It imports the four kernel modules (none imports it back) and no CuPy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.cupy import backward, density, gradients, pairs

logger = logging.getLogger(__name__)

#: file-name prefix -> (kernel source, host source) of one kernel module, each a function of the hypers
SOURCES = {
    "": (pairs.kernel_source, pairs.host_source),
    "density_": (density.kernel_source, density.host_source),
    "gradients_": (gradients.kernel_source, gradients.host_source),
    "backward_": (backward.kernel_source, backward.host_source),
}


def representative_hypers() -> dict[str, ExpansionHypers]:
    """Hyper-parameter sets whose kernels CI compiles for sm_90 (name -> hypers)."""
    return {
        "lmax6_gto_default": ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5),
        "lmax10_gto_default": ExpansionHypers(10, "gto", cutoff=7.0, sigma=1.5),
        "lmax8_monomial_list": ExpansionHypers(8, "monomial", cutoff=7.0,
                                               max_radial=[3, 2, 2, 1, 1, 1, 0, 0, 0]),
        "lmax0_gto_int": ExpansionHypers(0, "gto", cutoff=7.0, sigma=1.5, max_radial=2),
    }


def write_sources(directory) -> list[Path]:
    """Write the generated translation units of every representative set.

    For each of :func:`representative_hypers`: ``<name>.cu`` and
    ``<name>_host.cpp`` (pair kernel and its host harness),
    ``density_<name>.cu`` and ``density_<name>_host.cpp`` (centre density),
    ``gradients_<name>.cu`` and ``gradients_<name>_host.cpp`` (values and gradients),
    ``backward_<name>.cu`` and ``backward_<name>_host.cpp`` (the centre density's backward pass).

    Returns the written paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    start = time.perf_counter()
    for prefix, (kernel, host) in SOURCES.items():
        for name, hypers in representative_hypers().items():
            for suffix, generate in ((".cu", kernel), ("_host.cpp", host)):
                path = directory / f"{prefix}{name}{suffix}"
                path.write_text(generate(hypers))
                written.append(path)
    logger.info("wrote %d generated sources into %s in %.2f s", len(written), directory,
                time.perf_counter() - start)
    return written


def main(argv=None) -> int:
    """``python -m einsum_workbench.kernels.cupy.compile_check write-sources DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m einsum_workbench.kernels.cupy.compile_check",
        description="Generated CUDA sources for the compile check (tools/check_cuda_compile.sh).")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-sources", help="write the kernels and host harnesses of the "
                                                      "representative hyper-parameter sets; print their paths")
    write.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    for path in write_sources(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

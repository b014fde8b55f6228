"""The CUDA device code built for the CPU, and the sources of the compile check.

The per-pair body (``pair_expansion.cuh``) and the centre-density code
(``centre_density.cuh``) are ``__host__ __device__``: with the host harnesses
(``host_harness.cpp``, ``centre_density_host.cpp``) they compile as plain C++,
so that tests on a machine without a GPU run the exact device arithmetic
(:class:`einsum_workbench.kernels.cupy.pairs.HostBackend`,
:class:`einsum_workbench.kernels.cupy.density.HostDensityBackend`).

- :func:`host_compiler`, :func:`compile_host_library`: g++ (``$CXX``) into a
  shared library, cached on disk by a hash of source, compiler and flags
  (:func:`einsum_workbench.paths.cuda_host_cache_dir`);
- :func:`build_pair_library`, :func:`build_density_library`: one
  hyper-parameter set's library, loaded with ctypes (cached per process);
- :func:`write_sources` and the command line
  ``python -m einsum_workbench.kernels.cupy.host_build write-sources DIR``:
  the generated translation units that ``tools/check_cuda_compile.sh``
  compiles with nvcc for sm_90 (kernels) and g++ (host harnesses).

Importing this module imports neither cupy nor the kernel modules (they are
imported when a library is built or sources are written).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from einsum_workbench.paths import cuda_host_cache_dir

logger = logging.getLogger(__name__)

HOST_CXX_FLAGS = ("-O1", "-std=c++17", "-fPIC", "-shared", "-Wall")


def host_compiler() -> str | None:
    """Path of the C++ compiler used for the host build ($CXX, else g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def compile_host_library(source: str, what: str) -> Path:
    """Compile one C++ translation unit into a shared library with g++ (cached on disk).

    The library is cached by a hash of the source, compiler and flags in
    :func:`einsum_workbench.paths.cuda_host_cache_dir` (``<cache root>/cuda_host``).

    Parameters
    ----------
    source : str, the complete C++ source (e.g. from
        :func:`einsum_workbench.kernels.cupy.pairs.assemble_source`)
    what : str, named in the error message and the log

    Returns
    -------
    Path of the shared library.

    Raises
    ------
    RuntimeError when no compiler is found or compilation fails (its output
    is in the message).
    """
    compiler = host_compiler()
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {os.environ.get('CXX', 'g++')!r})")
    digest = hashlib.sha256("\0".join((source, compiler, *HOST_CXX_FLAGS)).encode()).hexdigest()[:20]
    cache = cuda_host_cache_dir(create=True)
    library = cache / f"wb_host_{digest}.so"
    if library.exists():
        logger.debug("host build of %s: cache hit %s", what, library)
        return library
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache) as work:
        cpp = Path(work) / "wb_host.cpp"
        cpp.write_text(source)
        built = Path(work) / "wb_host.so"
        result = subprocess.run([compiler, *HOST_CXX_FLAGS, str(cpp), "-o", str(built)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"host build of {what} failed:\n{result.stderr[-4000:]}")
        os.replace(built, library)  # atomic: parallel builds of one source agree
    logger.info("host build of %s: %s compiled %s in %.1f s", what, Path(compiler).name, library.name,
                time.perf_counter() - start)
    return library


def _load(library: Path, signatures: dict, count_function: str, expected_outputs: int) -> ctypes.CDLL:
    """Load a host library, declare its functions (name -> number of pointer
    and long long arguments) and check its output count against ``expected_outputs``."""
    lib = ctypes.CDLL(str(library))
    for name, (pointers, integers) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_longlong] * integers
        function.restype = None
    count = getattr(lib, count_function)
    count.restype = ctypes.c_int
    if count() != expected_outputs:
        raise RuntimeError("host library's output count disagrees with output_offsets (stale build?)")
    return lib


@functools.lru_cache(maxsize=32)
def build_pair_library(hypers) -> ctypes.CDLL:
    """Compile ``host_harness.cpp`` (+ header + generated spec) with g++ and load it.

    Parameters
    ----------
    hypers : ExpansionHypers

    Returns
    -------
    ctypes.CDLL exporting ``wb_host_expand_f64``, ``wb_host_expand_f32`` and
    ``wb_host_num_outputs()``; arguments (r_ij, rotations, semiaxes, out
    pointers, long long n_pairs, long long out_stride) as the CUDA kernels.

    Raises
    ------
    RuntimeError when no compiler is found or compilation fails (its output
    is in the message).
    """
    from einsum_workbench.kernels.cupy import pairs as cb

    library = compile_host_library(cb.assemble_source(cb.HOST_HARNESS, hypers),
                                   f"the CUDA per-pair body for {hypers!r}")
    return _load(library, {"wb_host_expand_f64": (4, 2), "wb_host_expand_f32": (4, 2)},
                 "wb_host_num_outputs", cb.output_offsets(hypers)[-1])


@functools.lru_cache(maxsize=32)
def build_density_library(hypers) -> ctypes.CDLL:
    """Compile ``centre_density_host.cpp`` (+ headers + generated specs) with g++ and load it.

    Parameters
    ----------
    hypers : ExpansionHypers

    Returns
    -------
    ctypes.CDLL exporting ``wb_host_density_f64/f32`` and
    ``wb_host_combine_f64/f32`` (the arguments of the CUDA kernels
    ``wb_density_*`` / ``wb_combine_*``) and ``wb_host_density_num_outputs()``.

    Raises
    ------
    RuntimeError when no compiler is found or compilation fails (its output
    is in the message).
    """
    from einsum_workbench.kernels.cupy import pairs as cb
    from einsum_workbench.kernels.cupy import density as cd

    library = compile_host_library(cd.host_source(hypers), f"the CUDA centre-density body for {hypers!r}")
    return _load(library, {"wb_host_density_f64": (6, 2), "wb_host_density_f32": (6, 2),
                           "wb_host_combine_f64": (4, 3), "wb_host_combine_f32": (4, 3)},
                 "wb_host_density_num_outputs", cb.output_offsets(hypers)[-1])


# ------------------------------------------------------------ sources for the compile check

def write_sources(directory) -> list[Path]:
    """Write the generated translation units of every representative set.

    For each of :func:`einsum_workbench.kernels.cupy.pairs.representative_hypers`:
    ``<name>.cu`` and ``<name>_host.cpp`` (pair kernel and its host harness),
    ``density_<name>.cu`` and ``density_<name>_host.cpp`` (centre density),
    ``gradients_<name>.cu`` and ``gradients_<name>_host.cpp`` (values and gradients).

    Returns the written paths.
    """
    from einsum_workbench.kernels.cupy import pairs as cb
    from einsum_workbench.kernels.cupy import density as cd
    from einsum_workbench.kernels.cupy import gradients as cg

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sources = {
        "": (lambda hypers: cb.kernel_source(hypers), lambda hypers: cb.assemble_source(cb.HOST_HARNESS, hypers)),
        "density_": (cd.kernel_source, cd.host_source),
        "gradients_": (cg.kernel_source, cg.host_source),
    }
    written = []
    start = time.perf_counter()
    for prefix, (kernel, host) in sources.items():
        for name, hypers in cb.representative_hypers().items():
            for suffix, generate in ((".cu", kernel), ("_host.cpp", host)):
                path = directory / f"{prefix}{name}{suffix}"
                path.write_text(generate(hypers))
                written.append(path)
    logger.info("wrote %d generated sources into %s in %.2f s", len(written), directory,
                time.perf_counter() - start)
    return written


def main(argv=None) -> int:
    """``python -m einsum_workbench.kernels.cupy.host_build write-sources DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m einsum_workbench.kernels.cupy.host_build",
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

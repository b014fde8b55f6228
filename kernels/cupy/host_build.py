"""The CUDA device code built for the CPU: g++ compiles a kernel module's host source into a shared library.

The device code (``kernels/cupy/cuda/*.cuh``) is ``__host__ __device__``: with a
host harness (``host_harness.cpp``, ``centre_density_host.cpp``,
``pair_gradients_host.cpp``) it compiles as plain C++, so that tests on a
machine without a GPU run the exact device arithmetic
(:class:`einsum_workbench.kernels.cupy.pairs.HostBackend` and its siblings in
``density.py`` and ``gradients.py``, each of which assembles its own source).

- :func:`host_compiler`, :func:`compile_host_library`: g++ (``$CXX``) into a
  shared library, cached on disk by a hash of source, compiler and flags
  (:func:`einsum_workbench.paths.cuda_host_cache_dir`);
- :func:`build_library`: compile and load with ctypes (cached per process),
  declaring the C entry points and checking the library's output count.

Imports nothing of the kernel modules (they call it with their source) and no CuPy.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
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
        :func:`einsum_workbench.kernels.cupy.common.assemble_source`)
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


@functools.lru_cache(maxsize=64)
def build_library(source: str, what: str, functions: tuple, count_function: str,
                  expected_outputs: int) -> ctypes.CDLL:
    """Compile ``source`` (:func:`compile_host_library`) and load it with ctypes (cached per process).

    Parameters
    ----------
    source : str, the complete C++ translation unit (a host harness with the device code inlined)
    what : str, named in errors and the log
    functions : tuple of (C entry point name, number of pointer arguments, number of long long arguments)
        (declared in that order; they return nothing)
    count_function : str, name of the entry point returning the library's output count (int)
    expected_outputs : int, what it must return (``common.output_offsets(hypers)[-1]``)

    Returns
    -------
    ctypes.CDLL with ``functions`` declared.

    Raises
    ------
    RuntimeError when no compiler is found, compilation fails (its output is in
    the message) or the output count disagrees (a stale build).
    """
    library = ctypes.CDLL(str(compile_host_library(source, what)))
    for name, pointers, integers in functions:
        function = getattr(library, name)
        function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_longlong] * integers
        function.restype = None
    count = getattr(library, count_function)
    count.restype = ctypes.c_int
    if count() != expected_outputs:
        raise RuntimeError(f"host library of {what}: its output count disagrees with output_offsets (stale build?)")
    return library

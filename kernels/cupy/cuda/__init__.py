"""The CUDA device code of ``cupy_batched`` (``*.cuh``, ``*.cu``, ``*.cpp`` data
files, assembled by :func:`einsum_workbench.kernels.cupy.common.assemble_source`):
compiled by NVRTC on a GPU, by g++ for the CPU (:mod:`einsum_workbench.kernels.cupy.host_build`),
and by nvcc in the compile check (:mod:`einsum_workbench.kernels.cupy.compile_check`)."""

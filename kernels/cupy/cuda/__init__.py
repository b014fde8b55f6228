"""The CUDA device code of ``cupy_batched`` (``*.cuh``, ``*.cu``, ``*.cpp`` data
files, assembled by :func:`einsum_workbench.kernels.cupy.pairs.assemble_source`)
and its host build (:mod:`.host_build`: the same code compiled for the CPU by
g++, and the sources the CUDA compile check compiles)."""

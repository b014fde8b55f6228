"""The CuPy/CUDA family: pair expansion, centre density and gradients on a GPU, their device
sources (``cuda/``) and the host build that tests the same code on the CPU. Importing this package
imports no CuPy."""

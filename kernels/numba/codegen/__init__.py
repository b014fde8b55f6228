"""Source generation for the Numba kernels: Python source text, one function per kernel."""

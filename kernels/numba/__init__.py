"""The Numba family: fused kernels generated as straight-line code for each hyper-parameter set
(pairs, centre density, gradients), the generic table-driven kernels that serve first calls, and
the dispatch between them. Importing this package imports no Numba."""

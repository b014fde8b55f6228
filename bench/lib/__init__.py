"""The measuring side: the bench's pytest plugin (:mod:`.plugin`, registered by
``bench/conftest.py`` for the suites ``pytest bench`` runs), the options every
tool shares (:mod:`.options`), thread pinning (:mod:`.pinning`), measurement
(:mod:`.measure`, :mod:`.runner`: one measuring path), the pair batches
measured (:mod:`.inputs`), rankings and plots (:mod:`.report`), the Torch
study (:mod:`.torch_study`), the featurize bench (:mod:`.featurize_bench`)
and the GPU validation (:mod:`.gpu_validate`). The command line
(``einsum-workbench`` or ``python -m einsum_workbench.bench``) is the
product's, :mod:`einsum_workbench.cli` (``__main__`` only calls it); no
other module here imports it or :mod:`einsum_workbench.profiles`.

Every output goes under the current directory (``.benchmarks/``) or where an
option says, never into the installed package. Importing this package
imports nothing heavy: the thread-count environment must be set before NumPy
loads.
"""

"""The measuring side: the bench's pytest plugin (:mod:`.plugin`, registered by
``bench/conftest.py`` for the suites ``pytest bench`` runs), the options every
tool shares (:mod:`.options`), thread pinning (:mod:`.pinning`), measurement
(:mod:`.measure`, :mod:`.runner`: one measuring path), the pair batches
measured (:mod:`.inputs`), rankings and plots (:mod:`.report`), the command
line (``einsum-workbench`` or ``python -m einsum_workbench.bench``,
:mod:`.cli`) and the GPU validation (:mod:`.gpu_validate`).

Every output goes under the current directory (``.benchmarks/``) or where an
option says, never into the installed package. Importing this package
imports nothing heavy: the thread-count environment must be set before NumPy
loads.
"""

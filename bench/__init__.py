"""The measuring side: thread pinning (:mod:`.pinning`), measurement helpers
(:mod:`.measure`, :mod:`.runner`), the pair batches measured (:mod:`.inputs`),
rankings and plots (:mod:`.report`), the pytest-benchmark suites
(``pytest bench``, configured in ``bench/conftest.py``) and the command-line
runner (``python -m einsum_workbench.bench``, :mod:`.cli`).

Importing this package imports nothing heavy: the thread-count environment
must be set before NumPy loads.
"""

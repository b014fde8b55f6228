"""``pytest bench``: the suites in this folder run under the bench's pytest plugin,
:mod:`einsum_workbench.bench.plugin` (options, thread pinning before NumPy
loads, autosave into ``.benchmarks`` in the current directory, the ranking).

This folder is not installed: its test files are plain pytest files, run
from a checkout (``pytest bench``, ``pytest <checkout>/bench``).
"""

pytest_plugins = ("einsum_workbench.bench.plugin",)

"""``python -m einsum_workbench.bench``: see :mod:`einsum_workbench.bench.cli`."""

import sys

from .cli import main

sys.exit(main())

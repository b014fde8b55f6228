"""``python -m einsum_workbench.bench``: see :mod:`einsum_workbench.cli`."""

import sys

from einsum_workbench.cli import main

sys.exit(main())

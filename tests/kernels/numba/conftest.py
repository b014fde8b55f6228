"""Fixtures of the Numba family's tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def specialised_kernels():
    """Wait for (compile) the specialised kernels: ``EINSUM_WORKBENCH_NUMBA_KERNEL=specialised`` for
    the module's tests (compile in this process on a cold cache instead of serving the first calls
    with the generic kernel), the previous value restored afterwards."""
    from einsum_workbench.kernels.numba.dispatch import KERNEL_ENV

    previous = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = "specialised"
    yield
    if previous is None:
        os.environ.pop(KERNEL_ENV, None)
    else:
        os.environ[KERNEL_ENV] = previous

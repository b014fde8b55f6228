"""Fixtures shared by the pipeline's tests."""

from __future__ import annotations

import pytest

from einsum_workbench.kernels.registry import BACKWARD_VARIANTS


@pytest.fixture(params=[v.name for v in BACKWARD_VARIANTS])
def backward(request):
    """The name of each registered backward variant; skipped, with the registry's reason, where it cannot run."""
    variant = next(v for v in BACKWARD_VARIANTS if v.name == request.param)
    reason = variant.unavailable_reason()
    if reason is not None:
        pytest.skip(f"backward variant {variant.name} not run on this machine: {reason}")
    return variant.name

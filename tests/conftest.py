"""Shared fixtures: the real dataset in ../shared/data and small pair helpers."""

from __future__ import annotations

import os
from pathlib import Path

# The equivalence suites test the specialised Numba kernels: compile and wait on
# first use, instead of serving first calls with the generic kernel while a
# background process compiles (the default for users, tested on its own in
# tests/kernels/numba/test_dispatch.py).
os.environ.setdefault("EINSUM_WORKBENCH_NUMBA_KERNEL", "specialised")

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ELLIPSOIDS_XYZ = SHARED_DATA / "ellipsoids.xyz"


@pytest.fixture(scope="session")
def shared_data_path() -> Path:
    """Path of AniSOAP's example dataset ``../shared/data/ellipsoids.xyz``
    (relative to the repository root); the test is skipped, naming the
    missing path, when it is absent (e.g. a clone without ../shared)."""
    if not ELLIPSOIDS_XYZ.is_file():
        pytest.skip(f"real-data file not found: {ELLIPSOIDS_XYZ} (expected at ../shared/data/ellipsoids.xyz)")
    return ELLIPSOIDS_XYZ


@pytest.fixture(scope="session")
def real_frames(shared_data_path):
    """First 20 frames of the real dataset (coarse-grained benzene, species X,
    quaternions ``c_q``, no diameters stored)."""
    from einsum_workbench.reference.readers import read_frames

    return read_frames(shared_data_path, index=":20")


@pytest.fixture(scope="session")
def load_or_skip():
    """``load(variant, label=None)``: the registry variant's function with its options
    bound (``Variant.load()``), or a skip "<label> not run on this machine: <the
    registry's reason>" when it cannot run here (``label`` defaults to its name)."""

    def load(variant, label=None):
        reason = variant.unavailable_reason()
        if reason is not None:
            pytest.skip(f"{label or variant.name} not run on this machine: {reason}")
        return variant.load()

    return load

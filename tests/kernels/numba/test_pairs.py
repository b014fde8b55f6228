"""Properties of the ``numba_fused`` variant beyond the shared equivalence suite.

Determinism across thread counts and batch positions, the disk cache shared
between processes, float32, the empty batch, lmax 10 against the reference,
the ``threads`` option (the compiled input screen's errors: ``test_screen.py``).
Compile time is measured and reported, not asserted here (machine-dependent).

These tests are about the specialised kernels: they run with
``EINSUM_WORKBENCH_NUMBA_KERNEL=specialised`` (compile in this process on a
cold cache instead of serving the first calls with the generic kernel);
the generic kernel and the modes: ``tests/kernels/numba/test_dispatch.py``.
Bit-identity is asserted only between calls of one compiled kernel (our own
arithmetic), never against BLAS-backed results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba_fused needs numba; not installed, nothing here ran")

from einsum_workbench.kernels.numba import dispatch as numba_dispatch  # noqa: E402
from einsum_workbench.kernels.numba import pairs as numba_fused  # noqa: E402
from einsum_workbench.reference.expansion import pairwise_ellip_expansion  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.compare import assert_coefficients_close  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402

GTO4 = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)

pytestmark = pytest.mark.usefixtures("specialised_kernels")  # the subject of these tests (conftest.py)


def test_bit_identical_across_thread_counts():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"Numba launched {numba.config.NUMBA_NUM_THREADS} thread (NUMBA_NUM_THREADS); "
                    "the 1-vs-2-thread comparison did not run")
    arrays = random_pair_batch(4099, 5, self_pair_fraction=0.05)  # not a multiple of any lane count
    for dtype in (np.float64, np.float32):
        inputs = [a.astype(dtype) for a in arrays]
        one = numba_fused.expand(*inputs, GTO4, threads=1)
        two = numba_fused.expand(*inputs, GTO4, threads=2)
        for l, (a, b) in enumerate(zip(one, two)):
            assert np.array_equal(a, b), f"{np.dtype(dtype)} l={l}: 1 and 2 threads differ"


def test_bit_identical_whatever_the_position_in_the_batch():
    """A pair's result does not depend on its block or SIMD lane."""
    r_ij, rotations, semiaxes = random_pair_batch(37, 6)
    whole = numba_fused.expand(r_ij, rotations, semiaxes, GTO4)
    for part in (slice(5, 6), slice(3, 14), slice(30, 37)):
        alone = numba_fused.expand(r_ij[part], rotations[part], semiaxes[part], GTO4)
        for l, (a, b) in enumerate(zip(alone, whole)):
            assert np.array_equal(a, b[part]), f"l={l}, pairs {part}: differs from the same pairs in a larger batch"


def test_outputs_are_c_contiguous_and_writable():
    out = numba_fused.expand(*random_pair_batch(10, 1), GTO4)
    for l, block in enumerate(out):
        assert block.shape == (10, 2 * l + 1, GTO4.num_radial[l])
        assert block.flags.c_contiguous and block.flags.writeable


def test_float32_against_reference():
    hypers = ExpansionHypers(6, "monomial", cutoff=7.0, max_radial=2)
    r_ij, rotations, semiaxes = (a.astype(np.float32) for a in random_pair_batch(20, 8))
    actual = numba_fused.expand(r_ij, rotations, semiaxes, hypers)
    assert all(block.dtype == np.float32 for block in actual)
    expected = pairwise_ellip_expansion(*(a.astype(np.float64) for a in (r_ij, rotations, semiaxes)), hypers)
    assert_coefficients_close(actual, expected, hypers, np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_empty_batch(dtype):
    out = numba_fused.expand(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype), GTO4)
    assert [b.shape for b in out] == [(0, 2 * l + 1, n) for l, n in enumerate(GTO4.num_radial)]
    assert all(b.dtype == np.dtype(dtype) for b in out)


@pytest.mark.parametrize("basis", ["gto", "monomial"])
def test_lmax10_against_reference(basis):
    sigma = 1.5 if basis == "gto" else None
    hypers = ExpansionHypers(10, basis, cutoff=7.0, sigma=sigma)
    arrays = random_pair_batch(6, 10, self_pair_fraction=0.2)
    actual = numba_fused.expand(*arrays, hypers)
    assert_coefficients_close(actual, pairwise_ellip_expansion(*arrays, hypers), hypers, np.float64)


def test_threads_option_restores_the_previous_count():
    before = numba.get_num_threads()
    numba_fused.expand(*random_pair_batch(9, 2), GTO4, threads=1)
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        numba_fused.expand(*random_pair_batch(9, 2), GTO4, threads=0)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        numba_fused.expand(*random_pair_batch(9, 2), GTO4, threads=numba.config.NUMBA_NUM_THREADS + 1)
    assert numba.get_num_threads() == before


def test_dtype_mix_up_is_refused():
    r_ij, rotations, semiaxes = random_pair_batch(4, 4)
    with pytest.raises(ValueError, match="mix-up"):
        numba_fused.expand(r_ij, rotations, semiaxes, GTO4, dtype=np.float32)


_CACHE_PROBE = textwrap.dedent("""
    import json
    import numpy as np
    from einsum_workbench.kernels.numba import pairs as numba_fused
    from einsum_workbench.reference.hypers import ExpansionHypers
    from einsum_workbench.reference.random_pairs import random_pair_batch
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.25)
    numba_fused.expand(*random_pair_batch(5, 0), hypers)
    stats = numba_fused.kernel_module(hypers, np.float64).expand_pairs.stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                      "path": stats.cache_path}))
""")


def test_second_process_loads_the_kernel_from_the_disk_cache(tmp_path):
    env = dict(os.environ, **{numba_fused.CACHE_ENV: str(tmp_path), numba_dispatch.KERNEL_ENV: "specialised"})

    def probe():
        done = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = probe(), probe()
    assert first["path"].startswith(str(tmp_path)), first
    assert (first["hits"], first["misses"]) == (0, 1), f"first process should compile: {first}"
    assert (second["hits"], second["misses"]) == (1, 0), f"second process recompiled instead of loading: {second}"

"""numpy_einsum specifics: bounded working memory, chunking invariance."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from einsum_workbench.kernels.numpy import pairs as numpy_einsum
from einsum_workbench.reference.compare import assert_coefficients_close
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.random_pairs import random_pair_batch

HYPERS = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)


def _peak_extra_bytes(n_pairs, max_memory):
    """Peak traced allocation during expand, minus the outputs it must return."""
    arrays = random_pair_batch(n_pairs, 0)
    numpy_einsum.expand(*(a[:10] for a in arrays), HYPERS)  # tables and caches built outside the window
    tracemalloc.start()
    try:
        out = numpy_einsum.expand(*arrays, HYPERS, max_memory=max_memory)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - sum(b.nbytes for b in out)


@pytest.mark.parametrize("n_pairs", [20_000, 80_000])
def test_working_memory_stays_under_the_bound_at_any_pair_count(n_pairs):
    bound = 2 * 2**20
    extra = _peak_extra_bytes(n_pairs, bound)
    assert extra < bound, f"{extra / 2**20:.2f} MiB extra for {n_pairs} pairs > bound 2 MiB"


def test_default_chunk_respects_the_default_bound():
    per_pair = numpy_einsum._bytes_per_pair(HYPERS, 8)
    assert numpy_einsum.chunk_size(HYPERS, np.float64) * per_pair <= numpy_einsum.DEFAULT_MAX_MEMORY


def test_chunking_does_not_change_the_result():
    """Same values within the suite's tolerance, not bit for bit: the contraction is a BLAS
    product whose rounding depends on the matrix shape and the CPU's kernels (on an AMD Zen 5
    with AVX-512, 6 of 4,500 elements came out 1 ulp apart between the two chunkings)."""
    arrays = random_pair_batch(500, 2)
    whole = numpy_einsum.expand(*arrays, HYPERS)
    tiny_chunks = numpy_einsum.expand(*arrays, HYPERS, max_memory=50 * numpy_einsum._bytes_per_pair(HYPERS, 8))
    assert numpy_einsum.chunk_size(HYPERS, np.float64, 50 * numpy_einsum._bytes_per_pair(HYPERS, 8)) == 50
    assert [b.shape for b in tiny_chunks] == [b.shape for b in whole]
    assert_coefficients_close(tiny_chunks, whole, HYPERS, np.float64, "chunks of 50 pairs against one chunk")


def test_bad_memory_bound_is_named():
    with pytest.raises(ValueError, match="max_memory must be a positive number of bytes, got 0"):
        numpy_einsum.expand(*random_pair_batch(3, 0), HYPERS, max_memory=0)

"""torch_einsum / torch_compiled / torch_cuda: agreement with the reference,
compilation counting, float32, empty batches, device handling.

Tolerances as in test_equivalence.py: float64 rtol 1e-6 (atol 1e-8 x block
max), float32 rtol 1e-3 (atol 1e-4 x block max). Compiled cases use small
hyper-parameter sets (lmax 2) because each compilation takes seconds here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Torch variants did not run")

from einsum_workbench.kernels.torch import common as torch_common  # noqa: E402
from einsum_workbench.kernels.torch import pairs as torch_einsum  # noqa: E402
from einsum_workbench.kernels.registry import load_variant  # noqa: E402
from einsum_workbench.reference.expansion import pairwise_ellip_expansion  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402
from einsum_workbench.reference.compare import assert_coefficients_close  # noqa: E402
from einsum_workbench.reference.random_pairs import random_pair_batch  # noqa: E402



def assert_matches_reference(actual, arrays, hypers, dtype):
    expected = pairwise_ellip_expansion(*(a.astype(np.float64) for a in arrays), hypers)
    assert_coefficients_close(actual, expected, hypers, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lmax,basis,max_radial", [
    (0, "gto", None), (3, "monomial", 2), (6, "gto", None), (8, "monomial", [3, 2, 2, 1, 1, 1, 0, 0, 0]),
    (3, "gto", [6, 0, 0, 0]),  # padding would triple the work: one GEMM per l
])
def test_eager_matches_reference(lmax, basis, max_radial, dtype):
    hypers = ExpansionHypers(lmax, basis, cutoff=7.0, sigma=1.5 if basis == "gto" else None, max_radial=max_radial)
    arrays = [a.astype(dtype) for a in random_pair_batch(40, lmax, self_pair_fraction=0.1)]
    assert_matches_reference(torch_einsum.expand(*arrays, hypers, dtype=dtype), arrays, hypers, dtype)


def test_gemm_grouping():
    wide = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
    assert len(torch_common.contraction_groups(wide, torch.float64, "cpu")) == 1
    lopsided = ExpansionHypers(3, "gto", cutoff=7.0, sigma=1.5, max_radial=[6, 0, 0, 0])
    groups = torch_common.contraction_groups(lopsided, torch.float64, "cpu")
    assert [[l for l, _, _ in g.columns] for g in groups] == [[0], [1], [2], [3]]


def test_chunks_agree_with_one_batch():
    hypers = ExpansionHypers(4, "gto", cutoff=7.0, sigma=1.5)
    arrays = random_pair_batch(53, 1)
    whole = torch_einsum.expand(*arrays, hypers)
    chunked = torch_einsum.expand(*arrays, hypers, chunk=7)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(a).max())


@pytest.mark.parametrize("compile", [False, True])
def test_empty_batch(compile):
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.5)
    for dtype in (np.float64, np.float32):
        out = torch_einsum.expand(np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype),
                                  hypers, compile=compile)
        assert [b.shape for b in out] == [(0, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
        assert all(b.dtype == np.dtype(dtype) for b in out)


def test_bucket_sizes_are_bounded():
    sizes = {torch_einsum.bucket_size(n, 4096) for n in range(1, 10_000)}
    assert sizes == {64, 128, 256, 512, 1024, 2048, 4096}
    assert len({torch_einsum.bucket_size(n, 2**16) for n in range(1, 2**17, 13)}) <= torch_einsum.MAX_BUCKETS
    assert torch_einsum.bucket_size(100, 4096) == 128 and torch_einsum.bucket_size(128, 4096) == 128


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_no_recompilation_inside_a_bucket(dtype):
    """Three pair counts in one bucket (65..128 pairs): one compilation, then none."""
    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.5, max_radial=1)
    arrays = [a.astype(dtype) for a in random_pair_batch(128, 5, self_pair_fraction=0.1)]
    counts = []
    for n_pairs in (70, 100, 127):
        part = [a[:n_pairs] for a in arrays]
        before = torch_einsum.compile_count()
        out = torch_einsum.expand(*part, hypers, dtype=dtype, compile=True)
        counts.append(torch_einsum.compile_count() - before)
        assert_matches_reference(out, part, hypers, dtype)
    assert counts[0] <= 1, f"first call compiled {counts[0]} graphs (expected at most one)"
    assert counts[1:] == [0, 0], f"recompiled inside one bucket: compilations per call {counts}"
    # a pair count in another bucket compiles once more, and only once
    before = torch_einsum.compile_count()
    torch_einsum.expand(*[a[:20] for a in arrays], hypers, dtype=dtype, compile=True)
    torch_einsum.expand(*[a[:30] for a in arrays], hypers, dtype=dtype, compile=True)
    assert torch_einsum.compile_count() - before == 1


def test_compiled_variant_matches_reference():
    hypers = ExpansionHypers(2, "monomial", cutoff=7.0, max_radial=[2, 1, 0])
    arrays = random_pair_batch(33, 9, self_pair_fraction=0.1)
    assert_matches_reference(load_variant("torch_compiled")(*arrays, hypers), arrays, hypers, np.float64)


def test_time_compile_reports_compile_apart_from_steady_state():
    from einsum_workbench.bench.torch_study import time_compile

    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.5)
    report = time_compile(hypers, n_pairs=40, repeats=2)
    assert report["compiles"] == 1  # a fresh key: exactly one graph
    assert report["first_call_s"] > report["steady_s"] > 0
    assert report["compile_s"] == pytest.approx(report["first_call_s"] - report["steady_s"])
    again = time_compile(hypers, n_pairs=40, repeats=1)
    assert again["compiles"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the no-GPU errors were not tested")
def test_cuda_unavailable_is_an_error_with_the_reason():
    reason = torch_einsum.cuda_unavailable_reason()
    assert reason
    with pytest.raises(RuntimeError, match="torch_cuda") as err:
        load_variant("torch_cuda")
    assert reason in str(err.value)
    with pytest.raises(RuntimeError, match="cuda"):
        torch_einsum.expand(*random_pair_batch(2, 0), ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.5),
                            device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch_cuda's GPU run did not run")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_reference(dtype):
    hypers = ExpansionHypers(6, "gto", cutoff=7.0, sigma=1.5)
    arrays = [a.astype(dtype) for a in random_pair_batch(64, 2, self_pair_fraction=0.1)]
    assert_matches_reference(load_variant("torch_cuda")(*arrays, hypers, dtype=dtype), arrays, hypers, dtype)


def test_bad_options_are_named():
    hypers = ExpansionHypers(1, "gto", cutoff=7.0, sigma=1.5)
    arrays = random_pair_batch(2, 0)
    with pytest.raises(ValueError, match="'tpu'"):
        torch_einsum.expand(*arrays, hypers, device="tpu")
    with pytest.raises(ValueError, match="chunk"):
        torch_einsum.expand(*arrays, hypers, chunk=0)
    with pytest.raises(ValueError, match="semiaxes"):
        torch_einsum.expand(arrays[0], arrays[1], -arrays[2], hypers)


def test_torch_study_rows():
    from einsum_workbench.bench.torch_study import study_markdown, torch_study

    hypers = ExpansionHypers(2, "gto", cutoff=7.0, sigma=1.5)
    rows = torch_study(random_pair_batch(50, 2), hypers, repeats=1, reference_pairs=5,
                       include_compiled=False, include_opt_einsum=False)
    keys = {(r["variant"], r["dtype"], r["mode"]) for r in rows}
    for dtype in ("float64", "float32"):
        assert {("numpy_einsum", dtype, "eager"), ("torch_einsum", dtype, "eager"),
                ("torch_einsum", dtype, "core only"), ("numpy->torch", dtype, "zero-copy")} <= keys
    assert all(r["seconds"] > 0 and r["threads"]["torch"] == 1 for r in rows)
    assert next(r for r in rows if r["variant"] == "reference")["n_pairs"] == 5
    table = study_markdown(rows)
    assert table.count("\n| ") == len(rows) + 1 and "numpy->torch" in table

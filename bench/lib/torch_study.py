"""The original profiling study's questions, answered for one workload in one run.

Does a Torch backend beat NumPy? Does the NumPy -> Torch conversion matter?
Does float32 help? Does ``torch.compile`` pay for its compilation?
:func:`torch_study` times, on the same pairs, one thread, in one process:

- ``numpy_einsum`` in float64 and float32;
- ``torch_einsum`` eager, end to end (NumPy arrays in, NumPy arrays out) and
  its core alone on tensors already in Torch (the difference is the
  conversion and validation overhead); the conversion itself is timed
  separately, both as done (zero-copy ``torch.from_numpy``) and as a copying
  ``torch.tensor(array)`` / ``tensor.numpy().copy()`` round trip;
- ``torch_einsum(compile=True)``: compile time (first call minus steady
  state) apart from the steady state;
- ``opt_einsum_planned`` with the numpy and torch backends;
- optionally the reference loop on a sample of the pairs (for speedups).

Steady-state times are the best of ``repeats`` calls after one warm-up call.
:func:`study_markdown` formats the rows. :func:`time_compile` times one
``torch.compile`` apart from the steady state; :func:`cold_compile` turns
Inductor's on-disk caches off for it. Torch and opt_einsum are imported
inside the functions: importing this module imports neither.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers


def cold_compile():
    """Context manager: Inductor's on-disk caches off, so a compilation is timed cold.

    Without it a graph compiled by an earlier process is loaded from
    ``/tmp/torchinductor_$USER`` in a fraction of the compile time.
    """
    import torch._inductor.config as inductor_config

    return inductor_config.patch(force_disable_caches=True)


_caches_off = cold_compile  # torch_study's parameter ``cold_compile`` hides the name there


def time_compile(hypers: ExpansionHypers, n_pairs: int | None = None, *, dtype=np.float64,
                 device="cpu", repeats: int = 3, seed: int = 0, cold: bool = True) -> dict:
    """Compile time apart from steady state for ``torch_einsum.expand(..., compile=True)``.

    Calls ``expand(..., compile=True)`` on ``n_pairs`` random pairs (None:
    ``torch_einsum.DEFAULT_CHUNK``): the first call compiles (unless this key
    and bucket were compiled earlier in the process), the next ``repeats``
    calls are steady state. ``cold=True`` disables Inductor's on-disk caches
    for the first call (:func:`cold_compile`).

    Returns
    -------
    dict with ``first_call_s``, ``steady_s`` (best of ``repeats``),
    ``compile_s`` (first minus steady), ``compiles`` (graphs compiled by the
    first call), ``backend_s`` (time spent inside Inductor) and ``n_pairs``.
    """
    from einsum_workbench.kernels.torch import pairs as torch_einsum
    from einsum_workbench.reference.random_pairs import random_pair_batch

    n_pairs = torch_einsum.DEFAULT_CHUNK if n_pairs is None else n_pairs
    arrays = [a.astype(dtype) for a in random_pair_batch(n_pairs, seed)]
    before, backend_before = torch_einsum.compile_count(), torch_einsum.compile_seconds()
    with cold_compile() if cold else contextlib.nullcontext():
        start = time.perf_counter()
        torch_einsum.expand(*arrays, hypers, dtype=dtype, device=device, compile=True)
        first = time.perf_counter() - start
    compiles = torch_einsum.compile_count() - before
    steady = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        torch_einsum.expand(*arrays, hypers, dtype=dtype, device=device, compile=True)
        steady.append(time.perf_counter() - start)
    best = min(steady)
    return {"first_call_s": first, "steady_s": best, "compile_s": max(0.0, first - best),
            "compiles": compiles, "backend_s": torch_einsum.compile_seconds() - backend_before,
            "n_pairs": n_pairs}


def _pair_arrays(pairs_or_workload, hypers):
    """(r_ij, rotations, semiaxes) float64 and hypers from a Workload, PairBatch or tuple."""
    if hasattr(pairs_or_workload, "pairs") and hasattr(pairs_or_workload, "hypers"):
        hypers = hypers or pairs_or_workload.hypers
        pairs_or_workload = pairs_or_workload.pairs
    if hasattr(pairs_or_workload, "r_ij"):
        arrays = (pairs_or_workload.r_ij, pairs_or_workload.rotations, pairs_or_workload.semiaxes)
    else:
        arrays = tuple(pairs_or_workload)
        if len(arrays) != 3:
            raise ValueError(f"expected (r_ij, rotations, semiaxes), got {len(arrays)} arrays")
    if not isinstance(hypers, ExpansionHypers):
        raise TypeError(f"hypers must be an ExpansionHypers (or come with the workload), got {hypers!r}")
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in arrays), hypers


def _interleaved_best_times(calls: dict, repeats: int) -> dict:
    """Best wall time per key of ``calls`` (key -> zero-argument callable).

    One warm-up call each, then ``repeats`` rounds that call every entry once:
    on a shared, noisy machine a slow spell hits every entry alike instead of
    whichever happened to run then, so ratios within one study hold.
    """
    for call in calls.values():
        call()
    best = {key: float("inf") for key in calls}
    for _ in range(max(1, repeats)):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def torch_study(pairs_or_workload, hypers: ExpansionHypers | None = None, *, repeats: int = 5,
                reference_pairs: int = 0, include_compiled: bool = True,
                include_opt_einsum: bool = True, cold_compile: bool = True) -> list[dict]:
    """Time NumPy vs Torch, float64 vs float32, eager vs compiled on one workload.

    Parameters
    ----------
    pairs_or_workload : Workload, PairBatch or (r_ij (P,3), rotations (P,3,3), semiaxes (P,3))
    hypers : ExpansionHypers, optional when a Workload is given
    repeats : int
        Timed rounds after one warm-up call (see Timing); the best is kept.
    reference_pairs : int
        If > 0, time the reference loop on the first that many pairs and add
        ``speedup_vs_reference`` to every row (per-pair times compared).
    include_compiled, include_opt_einsum : bool
        Add the ``torch.compile`` rows (seconds of compilation per dtype) and
        the opt_einsum rows.
    cold_compile : bool
        Time the compilation with Inductor's on-disk caches off (what a first
        run on a fresh machine pays); False measures whatever the cache holds.

    Returns
    -------
    list of dict rows with keys: ``variant``, ``dtype``, ``mode``, ``n_pairs``,
    ``seconds`` (best call), ``us_per_pair``, ``pairs_per_s``,
    ``speedup_vs_numpy_f64`` and ``speedup_vs_reference`` (None for the
    conversion rows, the latter also unless measured), ``share_of_torch_eager``
    (conversion rows: their time over torch_einsum eager's, same dtype),
    ``compile_s`` (compiled rows), ``note``, ``threads`` (torch, BLAS).

    Timing: each configuration is called once to warm up, then ``repeats``
    interleaved rounds call every configuration once (best kept), so that a
    slow spell of a shared machine does not favour one row.

    Runs on one thread: ``torch.set_num_threads(1)`` and threadpoolctl's
    BLAS/OpenMP limit for the duration of the call (both restored after).
    For a clean pin also set OMP/MKL/OPENBLAS_NUM_THREADS=1 before importing
    NumPy (``bench.pinning``).
    """
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from einsum_workbench.kernels.numpy import pairs as numpy_einsum
    from einsum_workbench.kernels.torch import pairs as torch_einsum

    arrays64, hypers = _pair_arrays(pairs_or_workload, hypers)
    n_pairs = arrays64[0].shape[0]
    if n_pairs == 0:
        raise ValueError("the study needs at least one pair, got an empty batch")
    previous_threads = torch.get_num_threads()
    rows: list[dict] = []
    try:
        torch.set_num_threads(1)
        with threadpool_limits(limits=1):
            blas_threads = max((p["num_threads"] for p in threadpool_info()), default=1)
            threads = {"torch": torch.get_num_threads(), "blas_max": blas_threads}

            calls, notes, compile_s = {}, {}, {}
            for dtype in (np.float64, np.float32):
                name = np.dtype(dtype).name
                arrays = tuple(a.astype(dtype) for a in arrays64)
                tensors = [torch.from_numpy(a) for a in arrays]
                calls[("numpy_einsum", name, "eager")] = functools.partial(numpy_einsum.expand, *arrays, hypers)
                calls[("torch_einsum", name, "eager")] = functools.partial(torch_einsum.expand, *arrays, hypers)
                notes[("torch_einsum", name, "eager")] = "NumPy in, NumPy out (validation, zero-copy input, output copy)"
                calls[("torch_einsum", name, "core only")] = functools.partial(_torch_core_only, tensors, hypers)
                notes[("torch_einsum", name, "core only")] = "tensors already in Torch, results left in Torch"
                calls[("numpy->torch", name, "zero-copy")] = functools.partial(
                    lambda arrays: [torch.from_numpy(a) for a in arrays], arrays)
                notes[("numpy->torch", name, "zero-copy")] = "torch.from_numpy of the inputs (what torch_einsum does)"
                calls[("numpy->torch", name, "copying round trip")] = functools.partial(
                    _copying_round_trip, arrays, hypers)
                notes[("numpy->torch", name, "copying round trip")] = (
                    "torch.tensor(inputs) + .numpy().copy() of every output block")
                if include_compiled:
                    key = ("torch_einsum", name, "compiled")
                    calls[key] = functools.partial(torch_einsum.expand, *arrays, hypers, compile=True)
                    with _caches_off() if cold_compile else contextlib.nullcontext():
                        start = time.perf_counter()
                        calls[key]()
                        first = time.perf_counter() - start
                    start = time.perf_counter()
                    calls[key]()
                    compile_s[key] = max(0.0, first - (time.perf_counter() - start))
                    notes[key] = ("steady state; compile s = first call minus the next"
                                 + (", on-disk caches off" if cold_compile else "") + " (0 if compiled earlier)")
                if include_opt_einsum:
                    from einsum_workbench.kernels.opt_einsum import pairs as opt_einsum_planned

                    for backend in ("numpy", "torch"):
                        calls[(f"opt_einsum_planned[{backend}]", name, "planned")] = functools.partial(
                            opt_einsum_planned.expand, *arrays, hypers, backend=backend)
            best = _interleaved_best_times(calls, repeats)
            for key, seconds in best.items():
                rows.append(_row(*key, n_pairs, seconds, threads, notes.get(key, ""), compile_s.get(key)))
            reference_us = None
            if reference_pairs > 0:
                from einsum_workbench.reference.expansion import pairwise_ellip_expansion

                sample = tuple(a[:reference_pairs] for a in arrays64)
                seconds = _interleaved_best_times({0: lambda: pairwise_ellip_expansion(*sample, hypers)}, 1)[0]
                rows.append(_row("reference", "float64", "per-pair loop", sample[0].shape[0], seconds, threads,
                                 f"first {sample[0].shape[0]} pairs only (timed after the others)", None))
                reference_us = rows[-1]["us_per_pair"]
    finally:
        torch.set_num_threads(previous_threads)
    numpy64 = next(r["us_per_pair"] for r in rows if r["variant"] == "numpy_einsum" and r["dtype"] == "float64")
    eager = {r["dtype"]: r["seconds"] for r in rows if r["variant"] == "torch_einsum" and r["mode"] == "eager"}
    for row in rows:
        conversion = row["variant"] == "numpy->torch"
        row["speedup_vs_numpy_f64"] = None if conversion else numpy64 / row["us_per_pair"]
        row["speedup_vs_reference"] = reference_us / row["us_per_pair"] if reference_us and not conversion else None
        row["share_of_torch_eager"] = row["seconds"] / eager[row["dtype"]] if conversion else None
    return rows


def _row(variant, dtype, mode, n_pairs, seconds, threads, note, compile_s):
    return {"variant": variant, "dtype": dtype, "mode": mode, "n_pairs": n_pairs, "seconds": seconds,
            "us_per_pair": 1e6 * seconds / n_pairs, "pairs_per_s": n_pairs / seconds,
            "compile_s": compile_s, "note": note, "threads": dict(threads)}


def _torch_core_only(tensors, hypers):
    """torch_einsum's chunk loop on tensors, no NumPy at either end."""
    import torch

    from einsum_workbench.kernels.torch import common as torch_common
    from einsum_workbench.kernels.torch import pairs as torch_einsum

    n_pairs = tensors[0].shape[0]
    with torch.no_grad():
        return [torch_common.chunk_core(*(t[s: s + torch_einsum.DEFAULT_CHUNK] for t in tensors), hypers=hypers)
                for s in range(0, n_pairs, torch_einsum.DEFAULT_CHUNK)]


def _copying_round_trip(arrays, hypers):
    """Cost of a naive conversion: copy inputs into Torch and every output block back."""
    import torch

    inputs = [torch.tensor(a) for a in arrays]
    n_pairs = arrays[0].shape[0]
    outputs = [torch.empty((n_pairs, 2 * l + 1, n), dtype=inputs[0].dtype) for l, n in enumerate(hypers.num_radial)]
    return inputs, [o.numpy().copy() for o in outputs]


def study_markdown(rows: list[dict]) -> str:
    """The study rows as a markdown table (one line per row)."""
    header = ("| variant | dtype | mode | pairs | us/pair | pairs/s | vs numpy f64 | vs reference | compile s | note |\n"
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    lines = [header]
    for r in rows:
        ref = f"{r['speedup_vs_reference']:.1f}x" if r.get("speedup_vs_reference") else "-"
        comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
        if r.get("share_of_torch_eager") is not None:
            versus = f"{100 * r['share_of_torch_eager']:.1f}% of torch eager"
        else:
            versus = f"{r['speedup_vs_numpy_f64']:.2f}x"
        lines.append(
            f"| {r['variant']} | {r['dtype']} | {r['mode']} | {r['n_pairs']} | {r['us_per_pair']:.3f} | "
            f"{r['pairs_per_s']:.3g} | {versus} | {ref} | {comp} | {r['note']} |"
        )
    threads = rows[0]["threads"] if rows else {}
    lines.append(f"\nThreads: torch {threads.get('torch')}, BLAS/OpenMP pools at most {threads.get('blas_max')}.")
    return "\n".join(lines)

"""The NumPy-vs-Torch study (``bench/lib/torch_study.py``) on this session's pairs,
marked ``study`` (not run by default): ``pytest bench -m study``.

float64 and float32, eager and ``torch.compile`` (compile time apart), the
NumPy <-> Torch conversion, opt_einsum's backends, and the reference on a
sample for speedups; one thread, pinned by this session. The table is printed
under the ranking and saved as JSON in ``study/`` of the session's storage
(``--benchmark-storage``, by default ``.benchmarks`` in the current directory).
"""

import json
import time

import pytest

pytestmark = pytest.mark.study

REFERENCE_SAMPLE = 500  # pairs of the reference timed for the speedup column


def test_torch_study(bench_input, bench_state, bench_storage):
    pytest.importorskip("torch", reason="torch is not installed: the NumPy-vs-Torch study cannot run")
    try:
        from einsum_workbench.bench.torch_study import study_markdown, torch_study
    except ImportError as err:
        pytest.skip(f"einsum_workbench.bench.torch_study cannot be imported: {err}")
    from einsum_workbench.bench import pinning

    if bench_state["threads"] != 1:
        pytest.skip(f"the study runs on one thread; this session is pinned to {bench_state['threads']}")
    arrays = bench_input.arrays()
    rows = torch_study(arrays, bench_input.hypers, repeats=5,
                       reference_pairs=min(REFERENCE_SAMPLE, bench_input.n_pairs))
    problems = pinning.verify(bench_state["threads"])
    assert not problems, f"pinning did not hold after the study: {problems}"
    assert rows, "torch_study returned no row"
    assert {"numpy_einsum", "torch_einsum"} <= {r["variant"] for r in rows}
    table = study_markdown(rows)
    bench_state.setdefault("study", []).append(f"### NumPy vs Torch study: {bench_input.label}\n\n{table}")
    out = bench_storage / "study" / f"torch-study-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workload": bench_input.description, "rows": rows,
                               "pinning": pinning.pinning_state(bench_state["threads"])}, indent=1, default=str))

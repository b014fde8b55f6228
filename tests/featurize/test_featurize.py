"""``featurize``: chunked, resumable featurization into a Zarr store, embedded and on a
real ``LocalCluster`` of 2 worker processes (issue 13).

Small trajectories made from the first frames of ``../shared/data/ellipsoids.xyz``
(semi-axes 4, 4, 0.5), lmax 2: the store's values against one pipeline call on
all frames (bit for bit), against each other across runners, after a worker
was killed mid-write, after an interrupted run; bad input named by frame.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

pytest.importorskip("zarr", reason="the distributed extra (zarr) is not installed")
pytest.importorskip("distributed", reason="the distributed extra (dask[distributed]) is not installed")

from einsum_workbench.featurize import (  # noqa: E402
    FeaturizeError,
    StoreMismatchError,
    featurize,
    open_store,
)
from einsum_workbench.featurize import store as store_module  # noqa: E402
from einsum_workbench.reference.hypers import ExpansionHypers  # noqa: E402

SEMIAXES = (4.0, 4.0, 0.5)
HYPERS = ExpansionHypers(lmax=2, radial_basis="gto", cutoff=7.0, sigma=1.5)
N_FRAMES = 240
CHUNK = 40
#: frames from this one on have their first atom relabelled H: later chunks hold a second species
SECOND_SPECIES_FROM = 130


@pytest.fixture(scope="module")
def frames(shared_data_path):
    import ase.io

    frames = ase.io.read(shared_data_path, index=f":{N_FRAMES}")
    for frame in frames[SECOND_SPECIES_FROM:]:
        numbers = frame.numbers.copy()
        numbers[0] = 1
        frame.numbers = numbers
    return frames


@pytest.fixture(scope="module")
def trajectory(frames, tmp_path_factory):
    import ase.io

    path = tmp_path_factory.mktemp("traj") / "two_species.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def embedded_store(trajectory, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "embedded"
    report = featurize(trajectory, HYPERS, chunk_frames=CHUNK, out=out, semiaxes=SEMIAXES, progress=False)
    assert report.chunks_computed == N_FRAMES // CHUNK and report.frames_computed == N_FRAMES
    return out


def _run(trajectory, out, **kwargs):
    kwargs.setdefault("semiaxes", SEMIAXES)
    kwargs.setdefault("progress", False)
    return featurize(trajectory, HYPERS, chunk_frames=CHUNK, out=out, **kwargs)


def _chunk_names(out):
    return sorted(n for n in os.listdir(os.path.join(out, store_module.CHUNKS)) if n != "zarr.json")


def _planned_names(n_frames=N_FRAMES):
    return [store_module.chunk_name(a, b) for a, b in store_module.planned_chunks(n_frames, CHUNK)]


# ---------------------------------------------------------------- values


def test_store_equals_one_pipeline_call_bit_for_bit(embedded_store, frames):
    from einsum_workbench.pipeline import power_spectrum

    stored = open_store(embedded_store)
    whole = power_spectrum(frames, HYPERS, semiaxes=SEMIAXES)
    assert stored.missing == [] and _chunk_names(embedded_store) == _planned_names()
    np.testing.assert_array_equal(stored.frames, np.arange(N_FRAMES))
    # chunks before SECOND_SPECIES_FROM lack species 1: the reader aligns their columns
    assert np.unique(stored.properties[:, 0]).tolist() == [0, 1]
    np.testing.assert_array_equal(stored.properties, whole.properties)
    assert np.array_equal(stored.values, whole.values)
    assert stored.config["hypers"]["lmax"] == 2 and stored.config["backend"] == "numba_fused"
    assert stored.versions["numpy"] == np.__version__


def test_density_store_equals_centre_density(trajectory, frames, tmp_path):
    from einsum_workbench.pipeline import centre_density

    _run(trajectory, tmp_path / "density", descriptor="density")
    stored = open_store(tmp_path / "density").tensormap()
    whole = centre_density(frames, HYPERS, semiaxes=SEMIAXES)
    assert stored.keys == whole.keys
    for key, block in zip(whole.keys, whole.blocks()):
        mine = stored.block(key)
        np.testing.assert_array_equal(mine.samples.values, block.samples.values)
        np.testing.assert_array_equal(mine.properties.values, block.properties.values)
        assert np.array_equal(mine.values, block.values)


def test_local_cluster_equals_embedded_and_pins_threads(trajectory, embedded_store, tmp_path):
    import zarr

    report = _run(trajectory, tmp_path / "cluster", workers=2)
    assert report.workers == 2 and report.chunks_computed == N_FRAMES // CHUNK
    assert np.array_equal(open_store(tmp_path / "cluster").values, open_store(embedded_store).values)
    pids = set()
    for name in _chunk_names(tmp_path / "cluster"):
        attrs = dict(zarr.open_group(tmp_path / "cluster" / "chunks" / name, mode="r").attrs)
        assert attrs["threads"]["numba"] == 1
        assert all(count == 1 for count in attrs["threads"].values()), attrs["threads"]
        pids.add(attrs["pid"])
    assert os.getpid() not in pids and len(pids) >= 1


def test_worker_killed_mid_write_loses_and_duplicates_nothing(trajectory, embedded_store, tmp_path):
    """One worker SIGKILLs itself once, its chunk written but not yet renamed; Dask's nanny
    replaces it, the task runs again: every chunk once, values equal to the embedded run."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    from einsum_workbench.featurize.chunk import thread_env

    victim = store_module.chunk_name(3 * CHUNK, 4 * CHUNK)
    marker = tmp_path / "killed.json"

    class KillOnce(WorkerPlugin):  # defined here: cloudpickle ships it by value
        def setup(self, worker):
            import einsum_workbench.featurize.store as store

            original = store._sync_tree

            def sync_then_die(path):
                original(path)
                if victim in os.path.basename(path) and not os.path.exists(marker):
                    marker.write_text(json.dumps({"pid": os.getpid(), "partial": path}))
                    os.kill(os.getpid(), signal.SIGKILL)

            store._sync_tree = sync_then_die

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=thread_env(1),
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(KillOnce())
        report = _run(trajectory, tmp_path / "killed", scheduler=cluster.scheduler_address)
    killed = json.loads(marker.read_text())
    # the killed write was complete but never renamed: it stays under partial/, not among the chunks
    assert os.path.basename(os.path.dirname(killed["partial"])) == "partial" and os.path.isdir(killed["partial"])
    assert _chunk_names(tmp_path / "killed") == _planned_names()
    assert report.chunks_computed == N_FRAMES // CHUNK and report.chunks_failed == 0
    import zarr

    attrs = dict(zarr.open_group(tmp_path / "killed" / "chunks" / victim, mode="r").attrs)
    assert attrs["pid"] != killed["pid"]
    assert np.array_equal(open_store(tmp_path / "killed").values, open_store(embedded_store).values)


# ---------------------------------------------------------------- resuming


def test_interrupted_run_resumes_with_only_the_missing_chunks(trajectory, embedded_store, tmp_path, monkeypatch):
    import importlib

    chunk_module = importlib.import_module("einsum_workbench.featurize.chunk")  # the worker's task, run embedded
    out = tmp_path / "resumed"
    real = chunk_module.compute_chunk
    calls = []

    def interrupted(task):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third chunk
        calls.append(task.start)
        return real(task)

    monkeypatch.setattr(chunk_module, "compute_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(trajectory, out)
    monkeypatch.setattr(chunk_module, "compute_chunk", real)
    assert len(_chunk_names(out)) == 2
    assert open_store(out).missing == store_module.planned_chunks(N_FRAMES, CHUNK)[2:]
    # a chunk left half-written by a killed process is cleaned, not counted
    (out / "partial" / f"{store_module.chunk_name(80, 120)}.dead").mkdir()
    report = _run(trajectory, out)
    assert (report.chunks_skipped, report.chunks_computed) == (2, N_FRAMES // CHUNK - 2)
    assert os.listdir(out / "partial") == ["zarr.json"]
    assert np.array_equal(open_store(out).values, open_store(embedded_store).values)
    # a second re-run computes nothing
    assert _run(trajectory, out).chunks_computed == 0


def test_failing_chunk_is_retried(trajectory, embedded_store, tmp_path, monkeypatch):
    real = store_module.write_chunk
    failed = []

    def flaky(out, start, stop, arrays, attrs):
        if start == CHUNK and not failed:
            failed.append(start)
            raise OSError("disk hiccup")
        return real(out, start, stop, arrays, attrs)

    monkeypatch.setattr(store_module, "write_chunk", flaky)
    report = _run(trajectory, tmp_path / "retried", retries=1)
    assert failed == [CHUNK] and report.chunks_failed == 0
    assert np.array_equal(open_store(tmp_path / "retried").values, open_store(embedded_store).values)


def test_mismatched_settings_are_refused_naming_them(trajectory, embedded_store, tmp_path):
    with pytest.raises(StoreMismatchError, match=r"hypers.*'lmax': 2.*'lmax': 3"):
        featurize(trajectory, ExpansionHypers(lmax=3, sigma=1.5), chunk_frames=CHUNK, out=embedded_store,
                  semiaxes=SEMIAXES, progress=False)
    with pytest.raises(StoreMismatchError, match="chunk_frames"):
        featurize(trajectory, HYPERS, chunk_frames=CHUNK + 1, out=embedded_store, semiaxes=SEMIAXES, progress=False)
    with pytest.raises(StoreMismatchError, match="backend"):
        _run(trajectory, embedded_store, backend="numpy_einsum")
    other = tmp_path / "other.xyz"
    other.write_bytes(trajectory.read_bytes().replace(b"signac_id", b"signac_ID", 1))
    with pytest.raises(StoreMismatchError, match="trajectory"):
        _run(other, embedded_store)
    (tmp_path / "not_a_store").mkdir()
    (tmp_path / "not_a_store" / "notes.txt").write_text("mine")
    with pytest.raises(StoreMismatchError, match="not an einsum-workbench feature store"):
        _run(trajectory, tmp_path / "not_a_store")
    assert len(_chunk_names(embedded_store)) == N_FRAMES // CHUNK  # nothing was added


# ---------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.xyz"):
        _run(tmp_path / "nowhere.xyz", tmp_path / "out")


def test_frame_without_rotations_is_named_and_other_chunks_stay(frames, embedded_store, tmp_path):
    import ase.io

    broken = [f.copy() for f in frames]
    del broken[130].arrays["c_q"]
    path = tmp_path / "no_rotation.xyz"
    ase.io.write(path, broken, format="extxyz")
    with pytest.raises(FeaturizeError, match=r"frames 120-159: frame 130 has no 'c_q' array") as info:
        _run(path, tmp_path / "out")
    assert [f[:2] for f in info.value.failures] == [(120, 160)]
    stored, reference = open_store(tmp_path / "out"), open_store(embedded_store)
    assert stored.missing == [(120, 160)]
    rows = np.isin(reference.frames, stored.frames)
    np.testing.assert_array_equal(stored.properties, reference.properties)
    assert np.array_equal(stored.values, reference.values[rows])


@pytest.mark.parametrize("where", ["atom line", "atom count"])
def test_unreadable_frame_is_named_and_earlier_chunks_stay(trajectory, embedded_store, tmp_path, where):
    lines = trajectory.read_text().splitlines(keepends=True)
    start = 0
    for _ in range(75):  # the first line of frame 75
        start += int(lines[start]) + 2
    if where == "atom line":
        lines[start + 2] = "X 1.0 abc 2.0 " + lines[start + 2].split(None, 4)[4]
    else:
        lines[start] = "two\n"
    path = tmp_path / "unreadable.xyz"
    path.write_text("".join(lines))
    with pytest.raises(FeaturizeError, match=r"frames 40-79: .*frame 75") as info:
        _run(path, tmp_path / "out")
    assert [f[:2] for f in info.value.failures] == [(40, 80)]
    stored, reference = open_store(tmp_path / "out"), open_store(embedded_store)
    done = stored.finished
    assert (0, 40) in done and (40, 80) not in done
    if where == "atom line":  # the frames after the bad one are still read and stored
        assert len(done) == N_FRAMES // CHUNK - 1
    rows = np.isin(reference.frames, stored.frames)
    names = [tuple(p) for p in stored.properties.tolist()]
    columns = [k for k, p in enumerate(reference.properties.tolist()) if tuple(p) in names]
    assert np.array_equal(stored.values, reference.values[rows][:, columns])


# ---------------------------------------------------------------- command line


def test_command_line(trajectory, embedded_store, tmp_path, capsys):
    from einsum_workbench.cli import main

    out, summary = tmp_path / "cli", tmp_path / "summary.json"
    status = main(["featurize", str(trajectory), "--out", str(out), "--lmax", "2", "--sigma", "1.5",
                   "--cutoff", "7", "--semiaxes", "4,4,0.5", "--chunk-frames", str(CHUNK), "--no-progress",
                   "--summary", str(summary)])
    assert status == 0, capsys.readouterr().err
    assert f"{N_FRAMES} frames, {N_FRAMES // CHUNK} chunks" in capsys.readouterr().out
    assert json.loads(summary.read_text())["frames_computed"] == N_FRAMES
    assert np.array_equal(open_store(out).values, open_store(embedded_store).values)
    assert main(["featurize", str(tmp_path / "missing.xyz"), "--out", str(out)]) == 2
    assert "missing.xyz" in capsys.readouterr().err


# ---------------------------------------------------------------- reading chunks


def test_chunks_are_read_by_the_c_parser_as_ase_reads_them(trajectory):
    from einsum_workbench.featurize.trajectory import index_frames, read_chunk, read_frames
    from einsum_workbench.reference.frames import gather_frames
    from einsum_workbench.reference.readers import ExtxyzArrays

    index = index_frames(trajectory)
    read = read_chunk(trajectory, 120, 160, byte_range=index.byte_range(120, 160))
    assert isinstance(read, ExtxyzArrays) and read.n_frames == CHUNK
    ase_arrays = gather_frames(read_frames(trajectory, 120, 160, byte_range=index.byte_range(120, 160)),
                               rotation_key="c_q")
    for name in ("n_atoms", "positions", "numbers", "cells", "pbc"):
        np.testing.assert_array_equal(getattr(read, name), getattr(ase_arrays, name), err_msg=name)
    np.testing.assert_array_equal(read.arrays["c_q"], ase_arrays.rotations)
    assert set(read.numbers.tolist()) == {0, 1}  # the second species of the later frames


def test_without_the_c_parser_chunks_fall_back_to_ase_bit_for_bit(trajectory, embedded_store, tmp_path, monkeypatch,
                                                                   caplog):
    import logging
    import sys

    monkeypatch.setitem(sys.modules, "extxyz", None)  # the package missing: ASE reads every chunk
    monkeypatch.setitem(sys.modules, "extxyz.cextxyz", None)
    with caplog.at_level(logging.DEBUG, logger="einsum_workbench.featurize.trajectory"):
        _run(trajectory, tmp_path / "ase")
    assert "read with ASE" in caplog.text and "cannot be imported" in caplog.text
    assert np.array_equal(open_store(tmp_path / "ase").values, open_store(embedded_store).values)


def test_a_density_chunk_read_by_either_reader_is_the_same(trajectory, tmp_path, monkeypatch):
    import sys

    _run(trajectory, tmp_path / "c", descriptor="density")
    monkeypatch.setitem(sys.modules, "extxyz", None)
    monkeypatch.setitem(sys.modules, "extxyz.cextxyz", None)
    _run(trajectory, tmp_path / "ase", descriptor="density")
    fast, slow = open_store(tmp_path / "c").blocks, open_store(tmp_path / "ase").blocks
    assert fast.keys() == slow.keys()
    for key in fast:
        for ours, theirs in zip(fast[key], slow[key]):
            assert np.array_equal(ours, theirs)


# ---------------------------------------------------------------- the store's lock


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (the lock file's own content aside)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = None if name == store_module.LOCK_FILE else f.read()
    return found


@pytest.fixture
def held_store(embedded_store, tmp_path):
    """A copy of the embedded store whose lock another process holds (with a chunk it is
    "writing" under partial/) until the test closes that process's stdin."""
    import shutil
    import subprocess
    import sys

    out = tmp_path / "in_use"
    shutil.copytree(embedded_store, out)
    (out / "partial" / f"{store_module.chunk_name(0, 40)}.theirs").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from einsum_workbench.featurize import store\n"
         f"with store.locked({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield out, holder
    if holder.poll() is None:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_second_run_on_a_store_in_use_is_refused_and_damages_nothing(trajectory, held_store, capsys):
    import socket

    out, holder = held_store
    before = _snapshot(out)
    with pytest.raises(store_module.StoreLockedError) as info:
        _run(trajectory, out)
    message = str(info.value)
    assert str(out) in message and "in use by another featurize run" in message
    assert f"pid {holder.pid} on {socket.gethostname()}" in message and "store.locked" in message
    assert info.value.holder["pid"] == holder.pid
    assert _snapshot(out) == before  # the other run's partial chunk included: nothing cleaned, nothing written
    with pytest.raises(store_module.StoreLockedError, match=r"\(waited 0.3 s\)"):
        _run(trajectory, out, wait=0.3)
    assert _snapshot(out) == before
    from einsum_workbench.cli import main

    assert main(["featurize", str(trajectory), "--out", str(out), "--lmax", "2", "--semiaxes", "4,4,0.5",
                 "--chunk-frames", str(CHUNK), "--no-progress"]) == 2
    assert f"pid {holder.pid}" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_a_run_told_to_wait_goes_on_when_the_other_ends(trajectory, embedded_store, held_store):
    import threading

    out, holder = held_store
    timer = threading.Timer(1.0, holder.stdin.close)  # the other run ends after a second
    timer.start()
    try:
        report = _run(trajectory, out, wait=60)
    finally:
        timer.cancel()
    assert holder.wait(timeout=30) == 0
    assert report.chunks_skipped == N_FRAMES // CHUNK and report.chunks_computed == 0
    assert os.listdir(out / "partial") == ["zarr.json"]  # its leftovers cleaned once it had ended
    assert np.array_equal(open_store(out).values, open_store(embedded_store).values)


@pytest.mark.parametrize("wait", [-1, "10", float("nan"), True])
def test_bad_wait_is_named(trajectory, tmp_path, wait):
    with pytest.raises(ValueError, match=r"wait must be seconds >= 0.*got " + repr(wait).replace("(", r"\(")):
        _run(trajectory, tmp_path / "out", wait=wait)
    assert not (tmp_path / "out").exists()


def test_a_lock_left_by_a_killed_run_does_not_block(trajectory, embedded_store, tmp_path):
    import shutil
    import subprocess
    import sys

    out = tmp_path / "killed_holder"
    shutil.copytree(embedded_store, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; from einsum_workbench.featurize import store\n"
         f"with store.locked({str(out)!r}):\n    os.kill(os.getpid(), signal.SIGKILL)"])
    assert holder.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((out / store_module.LOCK_FILE).read_text())["pid"] == holder.pid  # stale content stays
    assert _run(trajectory, out).chunks_skipped == N_FRAMES // CHUNK


def test_a_chunk_with_an_empty_frame_is_read_by_ase(tmp_path, caplog):
    """The C library crashes on a frame of 0 atoms: such a chunk never reaches it."""
    import logging

    from einsum_workbench.featurize.trajectory import index_frames, read_chunk

    frame = "1\nProperties=species:S:1:pos:R:3:c_q:R:4\nX 0 0 0 1 0 0 0\n"
    path = tmp_path / "empty_frame.xyz"
    path.write_text(frame + "0\nProperties=species:S:1:pos:R:3:c_q:R:4\n" + frame)
    index = index_frames(path)
    with caplog.at_level(logging.DEBUG, logger="einsum_workbench.featurize.trajectory"):
        frames = read_chunk(path, 0, 3, byte_range=index.byte_range(0, 3))
    assert [len(f) for f in frames] == [1, 0, 1] and "0 atoms" in caplog.text

"""Frames to AniSOAP's outputs (issue 10): the neighbour search over all frames,
the segments, the workbench's own density and power-spectrum API, and the
switch's wholesale ``transform`` / ``power_spectrum`` against upstream's.

Upstream comparisons use AniSOAP 0.1.1's own Python code in this process
(compiled moments stand-in) and the suite's tolerances: rtol 1e-6, atol 1e-8 x
the tensor's largest magnitude (not each block's: in small symmetric cells
some blocks cancel to pure round-off, 0 upstream and 1e-17 here).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from einsum_workbench.anisoap_switch import switch
from einsum_workbench.pipeline import centre_density, power_spectrum, record_stages
from einsum_workbench.pipeline.layout import density_layout
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.neighbours import neighbour_pairs
from einsum_workbench.reference.frames import frame_geometry
from einsum_workbench.reference.pairs import frames_to_pairs
from einsum_workbench.reference.workloads import benzenes, ellipsoids

HYPERS = ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5)
RTOL, ATOL_SCALE = 1e-6, 1e-8


def _geometry(frames):
    n, positions, _, cells, pbc = frame_geometry(frames)
    return positions, n, cells, pbc


def _unwrapped(frames, seed=0):
    """The same frames with every atom moved by a random lattice vector."""
    rng = np.random.default_rng(seed)
    moved = [f.copy() for f in frames]
    for frame in moved:
        frame.positions += rng.integers(-2, 3, size=(len(frame), 3)) @ frame.cell.array
    return moved


def _mixed_pbc(frames):
    out = [f.copy() for f in frames]
    for frame in out:
        frame.pbc = (True, False, True)
    return out


FRAME_SETS = {
    "ellipsoids-2sp": lambda: ellipsoids(12, seed=4, n_species=2),
    "ellipsoids-unwrapped": lambda: _unwrapped(ellipsoids(8, seed=5)),
    "benzenes-2sp": lambda: benzenes(2, seed=6, n_species=2),
    "benzenes-open": lambda: [f.copy() for f in benzenes(2, seed=7)],
    "ellipsoids-mixed-pbc": lambda: _mixed_pbc(ellipsoids(6, seed=8)),
}


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("name", list(FRAME_SETS))
def test_compiled_search_equals_vesin(name, self_pairs):
    frames = FRAME_SETS[name]()
    if name == "benzenes-open":
        for frame in frames:
            frame.pbc = False
    args = (*_geometry(frames), 5.5)
    vesin = neighbour_pairs(*args, self_pairs=self_pairs, method="vesin")
    assert len(vesin[0]) > 0
    for method in ("auto", "brute_force", "cell_list"):
        compiled = neighbour_pairs(*args, self_pairs=self_pairs, method=method)
        for a, b, what in zip(compiled[:4], vesin[:4], ("frame", "i", "j", "shift")):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, {method}: {what} differs")
        np.testing.assert_allclose(compiled[4], vesin[4], rtol=0, atol=1e-12)


def test_mixed_frame_sizes_keep_frame_order():
    """Frames of different kinds interleaved in one call: the same pairs by every path."""
    frames = [f for pair in zip(ellipsoids(3, seed=1), benzenes(3, seed=2)) for f in pair]
    args = (*_geometry(frames), 6.0)
    mixed = neighbour_pairs(*args)
    one_path = neighbour_pairs(*args, method="vesin")
    assert np.all(np.diff(mixed[0]) >= 0)
    for a, b in zip(mixed[:4], one_path[:4]):
        np.testing.assert_array_equal(a, b)


def test_periodic_frame_with_zero_cell_vector_is_named():
    frame = ellipsoids(1, seed=3)[0]
    frame.cell[1] = 0.0
    with pytest.raises(ValueError, match="frame 0 is periodic"):
        neighbour_pairs(*_geometry([frame]), 5.0)


def test_segments_one_row_per_centre_and_species():
    pairs = frames_to_pairs(benzenes(2, seed=9, n_species=3), 5.0)
    layout, segment = density_layout(pairs)
    assert layout.n_segments == segment.max() + 1 or layout.n_segments > segment.max()
    for c, centre_type in enumerate(layout.centre_types):
        mine = pairs.centre_species == centre_type
        rows = segment[mine] - layout.offsets[c]
        n_types = len(layout.neighbour_types[c])
        centre_row, species_index = rows // n_types, rows % n_types
        np.testing.assert_array_equal(layout.neighbour_types[c][species_index], pairs.neighbour_species[mine])
        np.testing.assert_array_equal(layout.samples[c][centre_row], np.stack([pairs.frame, pairs.centre], 1)[mine])
        assert np.all(np.diff(layout.samples[c][:, 0] * 10**6 + layout.samples[c][:, 1]) > 0), "samples unsorted"


def test_power_spectrum_labels_describe_values():
    """Several species: every column equals its label's definition, computed
    by loops from the density TensorMap (whose labels match its values)."""
    from einsum_workbench.pipeline.power_spectrum import coupling_constant

    frames = benzenes(2, seed=10, n_species=2)
    hypers = ExpansionHypers(lmax=2, radial_basis="gto", cutoff=5.0, sigma=1.5)
    density = centre_density(frames, hypers, property_layout="labelled")
    result = power_spectrum(frames, hypers)
    assert result.values.shape == (2, len(result.properties))
    assert len(np.unique(result.properties[:, 0])) == 2, "both centre species present"
    rng = np.random.default_rng(0)
    for column in rng.choice(len(result.properties), 40, replace=False):
        c, n_a, e_a, l, n_b, e_b, _ = result.properties[column]
        block = density.block(types_center=int(c), angular_channel=int(l))
        props = block.properties.values.tolist()
        qa, qb = props.index([n_a, e_a]), props.index([n_b, e_b])
        samples = block.samples.values
        for frame in range(2):
            rows = samples[:, 0] == frame
            per_centre = coupling_constant(int(l)) * np.einsum("sm,sm->s", block.values[rows, :, qa],
                                                               block.values[rows, :, qb])
            expected = per_centre.mean() if rows.any() else 0.0
            np.testing.assert_allclose(result.values[frame, column], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("property_layout", ["labelled", "upstream"])
def test_power_spectrum_means_equal_the_mean_of_per_centre_rows(property_layout):
    """The one-pass per-structure mean equals the per-centre power spectrum averaged by
    ``mean_over_centres``, to rounding, with a structure that has no centre of one species."""
    import ase

    from einsum_workbench.pipeline.density import density_blocks, density_of_frames
    from einsum_workbench.pipeline.power_spectrum import (
        mean_over_centres,
        species_power_spectrum,
        species_power_spectrum_means,
    )

    frames = benzenes(3, seed=4, n_species=2)
    frames.insert(1, ase.Atoms("H2", positions=[[0, 0, 0], [0.9, 0, 0]], cell=np.eye(3) * 9, pbc=True))
    frames[1].arrays["c_q"] = np.tile([1.0, 0, 0, 0], (2, 1))
    for k in (1, 2, 3):
        frames[1].arrays[f"c_diameter[{k}]"] = np.full(2, 2.0)
    hypers = ExpansionHypers(lmax=3, radial_basis="gto", cutoff=5.0, sigma=1.5)
    layout, density = density_of_frames(frames, hypers)
    blocks = density_blocks(layout, density, property_layout=property_layout)
    absent = 0
    for c in range(len(layout.centre_types)):
        values, _ = species_power_spectrum(layout, blocks, c)
        expected, expected_present = mean_over_centres(values, layout.samples[c][:, 0], len(frames))
        means, present = species_power_spectrum_means(layout, blocks, c, len(frames))
        np.testing.assert_array_equal(present, expected_present)
        np.testing.assert_allclose(means, expected, rtol=1e-13, atol=1e-15 * np.abs(expected).max())
        absent += int((~present).sum())
    assert absent, "a structure without a centre of some species was covered"


def test_pipeline_needs_no_upstream(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from einsum_workbench.pipeline import power_spectrum\n"
        "from einsum_workbench.reference.hypers import ExpansionHypers\n"
        "from einsum_workbench.reference.workloads import ellipsoids\n"
        "ps = power_spectrum(ellipsoids(3, seed=1), ExpansionHypers(2, sigma=1.5), backend='numpy_einsum')\n"
        "assert np.isfinite(ps.values).all() and ps.values.shape[0] == 3\n"
        "assert 'anisoap' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_stage_split_is_recorded():
    with record_stages() as seconds:
        centre_density(ellipsoids(3, seed=2), HYPERS, backend="numpy_einsum")
    assert {"frames", "neighbour_list", "kernel", "tensormap"} <= set(seconds)
    assert all(v >= 0 for v in seconds.values())


@pytest.mark.parametrize("call,kwargs,error,words", [
    (centre_density, {"hypers": {"lmax": 4}}, TypeError, "ExpansionHypers"),
    (centre_density, {"property_layout": "sideways"}, ValueError, "sideways"),
    (centre_density, {"backend": "numpy_einsun"}, KeyError, "numpy_einsum"),
    (power_spectrum, {"rotation_key": "orientation"}, ValueError, "'orientation'"),
])
def test_bad_pipeline_input_is_named(call, kwargs, error, words):
    arguments = {"hypers": HYPERS, **kwargs}
    with pytest.raises(error) as caught:
        call(ellipsoids(2, seed=1), arguments.pop("hypers"), **arguments)
    assert words in str(caught.value)


# ---------------------------------------------------------------- against upstream AniSOAP


@pytest.fixture(scope="module")
def upstream():
    from einsum_workbench.reference.upstream import UpstreamUnavailable, import_upstream_anisoap

    switch.deactivate()
    try:
        anisoap = import_upstream_anisoap(moments="numba")
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream AniSOAP not available, pipeline-vs-upstream tests not run: {err}")
    yield anisoap
    switch.deactivate()


def _projection(anisoap, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # upstream's quaternion-convention warning
        return anisoap.representations.EllipsoidalDensityProjection(
            **{"max_angular": 4, "radial_basis_name": "gto", "cutoff_radius": 7.0,
               "radial_gaussian_width": 1.5, "rotation_key": "c_q", **kwargs})


def _with_diameters(frames, diameters=(8.0, 8.0, 1.0)):
    for frame in frames:
        for k, d in enumerate(diameters, start=1):
            frame.arrays[f"c_diameter[{k}]"] = np.full(len(frame), d)
    return frames


def _assert_tensors_close(actual, expected, label=""):
    if isinstance(expected, np.ndarray):
        assert actual.shape == expected.shape, label
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max(),
                                   err_msg=label)
        return
    assert actual.keys == expected.keys, label
    scale = max(float(np.abs(b.values).max(initial=0.0)) for b in expected.blocks())
    for key, block in expected.items():
        other = actual.block(key)
        assert other.samples == block.samples, (label, key)
        assert other.components == block.components, (label, key)
        assert other.properties == block.properties, (label, key)
        np.testing.assert_allclose(other.values, block.values, rtol=RTOL, atol=ATOL_SCALE * scale,
                                   err_msg=f"{label} {key}")


def test_coupling_constant_is_upstreams_clebsch_gordan(upstream):
    from anisoap.utils.metatensor_utils import ClebschGordanReal

    from einsum_workbench.pipeline.power_spectrum import coupling_constant

    cg = ClebschGordanReal(8).get_cg()
    for l in range(9):
        (entries,) = cg[(l, l, 0)]
        assert np.array_equal(entries["m1"], entries["m2"]) and len(entries) == 2 * l + 1
        np.testing.assert_allclose(entries["cg"], coupling_constant(l), rtol=1e-13)


@pytest.mark.parametrize("normalize", [False, True])
def test_own_density_equals_upstream_transform(upstream, real_frames, normalize):
    frames = _with_diameters([f.copy() for f in real_frames])
    calc = _projection(upstream)
    expected = calc.transform(frames, normalize=normalize)
    hypers = ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5)
    actual = centre_density(frames, hypers, orthonormal=normalize, property_layout="upstream")
    _assert_tensors_close(actual, expected, f"normalize={normalize}")


def test_own_power_spectrum_equals_upstream_for_one_species(upstream, real_frames):
    frames = _with_diameters([f.copy() for f in real_frames])
    expected = _projection(upstream).power_spectrum(frames)
    actual = power_spectrum(frames, ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5))
    np.testing.assert_allclose(actual.values, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max())


SWITCH_CASES = [
    pytest.param("ellipsoids", {}, id="ellipsoids-gto"),
    pytest.param("benzenes", {"radial_basis_name": "monomial", "radial_gaussian_width": None}, id="benzenes-monomial"),
    pytest.param("benzenes", {"subtract_center_contribution": True}, id="benzenes-no-self"),
]


def _frames(kind):
    if kind == "ellipsoids":
        return _with_diameters(ellipsoids(6, seed=12, n_species=1))
    return benzenes(1, seed=13, n_species=2)


@pytest.mark.parametrize("kind,kwargs", SWITCH_CASES)
@pytest.mark.parametrize("backend", ["numba_fused", "numpy_einsum"])
def test_switch_transform_and_power_spectrum_equal_upstream(upstream, kind, kwargs, backend):
    frames = _frames(kind)
    calc = _projection(upstream, **kwargs)
    expected = {normalize: calc.transform(frames, normalize=normalize) for normalize in (False, True)}
    expected_ps = calc.power_spectrum(frames, mean_over_samples=False)
    expected_mean = calc.power_spectrum(frames) if kind == "ellipsoids" else None  # one centre species
    with switch.use_backend(backend):
        assert getattr(type(calc).transform, "workbench_backend", None) == backend
        for normalize in (False, True):
            _assert_tensors_close(calc.transform(frames, normalize=normalize), expected[normalize],
                                  f"{backend} {kind} normalize={normalize}")
        _assert_tensors_close(calc.power_spectrum(frames, mean_over_samples=False), expected_ps, "power spectrum")
        if expected_mean is not None:
            _assert_tensors_close(calc.power_spectrum(frames), expected_mean, "mean over samples")
    assert getattr(type(calc).transform, "workbench_backend", None) is None, "switch not undone"


def test_frames_without_rotations_warn_and_match_upstream(upstream):
    frames = _with_diameters(ellipsoids(2, seed=14))
    del frames[1].arrays["c_q"]
    calc = _projection(upstream)
    with pytest.warns(UserWarning, match="Frame 1 does not have rotations stored") as upstream_warnings:
        expected = calc.transform(frames)
    with switch.use_backend("numba_fused"):
        with pytest.warns(UserWarning, match="Frame 1 does not have rotations stored") as switch_warnings:
            actual = calc.transform(frames)
    _assert_tensors_close(actual, expected, "zero rotations")
    count = [sum("does not have rotations" in str(w.message) for w in ws) for ws in (upstream_warnings,
                                                                                   switch_warnings)]
    assert count[0] == count[1] == len(frames[1])


def test_switch_rotations_of_unnormalised_and_zero_quaternions_are_upstreams(upstream):
    """The switch's compiled quaternion conversion normalises as scipy does; a zero quaternion
    goes to scipy itself, for upstream's own error."""
    frames = _with_diameters(ellipsoids(2, seed=16))
    frames[0].arrays["c_q"] = frames[0].arrays["c_q"] * 3.5  # not unit: normalised by both
    calc = _projection(upstream)
    expected = calc.transform(frames)
    with switch.use_backend("numba_fused"):
        _assert_tensors_close(calc.transform(frames), expected, "unnormalised quaternions")
    frames[1].arrays["c_q"][0] = 0.0
    with pytest.raises(ValueError) as upstream_error:
        calc.transform(frames)
    with switch.use_backend("numba_fused"):
        with pytest.raises(ValueError) as switch_error:
            calc.transform(frames)
    assert str(switch_error.value) == str(upstream_error.value)


def test_several_centre_species_error_says_why_and_the_way_out(upstream):
    calc = _projection(upstream)
    frames = benzenes(1, seed=15, n_species=2)
    with pytest.raises(IndexError):
        calc.power_spectrum(frames)  # upstream 0.1.1 itself
    with switch.use_backend("numpy_einsum"):
        with pytest.raises(IndexError) as caught:
            calc.power_spectrum(frames)
    message = str(caught.value)
    assert "centre species [1, 6]" in message
    assert "mean_over_samples=False" in message and "einsum_workbench.pipeline.power_spectrum" in message


def test_switch_keeps_upstreams_arguments(upstream, capsys):
    frames = _with_diameters(ellipsoids(3, seed=16))
    calc = _projection(upstream)
    with switch.use_backend("numpy_einsum"):
        calc.transform(frames, show_progress=True, rust_moments=False)
        assert "Computing neighborlist" in capsys.readouterr().err, "no progress bar drawn"
        with pytest.raises(TypeError, match="unexpected keyword argument 'return_pef'"):
            calc.transform(frames, return_pef=True)  # anisoap 0.1.1 has no such argument
        assert list(calc.num_atoms_per_frame) == [len(f) for f in frames]
        missing = [f.copy() for f in frames]
        del missing[2].arrays["c_diameter[2]"]
        with pytest.raises(ValueError, match="frame at index 2 is missing a required attribute 'c_diameter\\[2\\]'"):
            calc.power_spectrum(missing)


def test_head_flavour(upstream):
    """The development head orthonormalises each pair and stacks the species'
    means side by side; the switch follows the flavour it finds."""
    from einsum_workbench.anisoap_switch.projection import make_power_spectrum, make_transform
    from einsum_workbench.pipeline.power_spectrum import mean_over_centres

    calc = _projection(upstream)
    frames = benzenes(2, seed=17, n_species=2)
    calls = []

    def head_transform(self, frames, show_progress=False, normalize=True, rust_moments=True, return_pef=False):
        calls.append(return_pef)
        return "upstream's own transform"

    transform = make_transform(head_transform, "numpy_einsum", "head", "upstream")
    hypers = ExpansionHypers(lmax=4, radial_basis="gto", cutoff=7.0, sigma=1.5)
    expected = centre_density(frames, hypers, backend="numpy_einsum", orthonormal=True, property_layout="upstream")
    _assert_tensors_close(transform(calc, frames), expected, "head transform")
    assert transform(calc, frames, return_pef=True) == "upstream's own transform" and calls == [True]
    means = make_power_spectrum("numpy_einsum", "head", "upstream")(calc, frames)
    per_species = make_power_spectrum("numpy_einsum", "head", "upstream")(calc, frames, mean_over_samples=False)
    stacked = np.hstack([mean_over_centres(b.values[:, 0], b.samples.values[:, 0], 2)[0] for b in per_species])
    np.testing.assert_allclose(means, stacked, rtol=1e-14)


def test_is_rotation_flags_what_is_not_a_rotation():
    from einsum_workbench.pipeline.density import is_rotation
    from einsum_workbench.reference.workloads import random_rotations
    from einsum_workbench.reference.limits import ORTHONORMAL_TOL

    matrices = random_rotations(np.random.default_rng(1), 8)
    matrices[1] = 0.0                      # upstream's zero matrix for a frame without rotations
    matrices[2, 0, 0] = np.nan
    matrices[3] *= 1 + 10 * ORTHONORMAL_TOL[np.dtype(np.float64)]
    matrices[4] = -matrices[4]             # a reflection is orthonormal: accepted, as before
    assert is_rotation(matrices).tolist() == [True, False, False, False, True, True, True, True]


@pytest.mark.parametrize("counts", [[(5, 2), (3, 2), (4, 2)], [(5, 3), (2, 1), (4, 2)]],
                         ids=["same-neighbour-species-count", "different-counts"])
@pytest.mark.parametrize("property_layout", ["upstream", "labelled"])
@pytest.mark.parametrize("by_label", [False, True], ids=["raw", "0.1.1-by-label-orthonormalisation"])
def test_density_blocks_equal_each_species_laid_out_alone(counts, property_layout, by_label):
    """density_blocks lays out all centre species at once when they have as many neighbour species
    (then cuts the blocks): the same values as each species' DensityLayout.block_values, times W_l
    by runs of num_radial columns when asked."""
    from einsum_workbench.pipeline.density import density_blocks
    from einsum_workbench.pipeline.layout import DensityLayout
    from einsum_workbench.reference.radial import orthonormalization_matrix

    hypers = ExpansionHypers(3, "gto", cutoff=5.0, sigma=1.2, max_radial=[4, 3, 1, 2])
    rng = np.random.default_rng(7)
    offsets = np.concatenate([[0], np.cumsum([s * e for s, e in counts])])
    layout = DensityLayout(centre_types=np.array([1, 6, 8], np.int32),
                           neighbour_types=[np.arange(e, dtype=np.int32) + 1 for _, e in counts],
                           samples=[np.zeros((s, 2), np.int32) for s, _ in counts], offsets=offsets, n_frames=1)
    density = [rng.normal(size=(offsets[-1], 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]
    blocks = density_blocks(layout, density, property_layout=property_layout,
                            orthonormalize_columns=hypers if by_label else None)
    for c, (n_centres, n_types) in enumerate(counts):
        for l, rho in enumerate(density):
            n_radial = rho.shape[2]
            expected = layout.block_values(rho, c, property_layout)
            if by_label:
                expected = expected.reshape(-1, n_radial) @ orthonormalization_matrix(l, hypers)
            actual = blocks[c][l]
            assert actual.shape == (n_centres, 2 * l + 1, n_radial * n_types) and actual.flags.c_contiguous
            np.testing.assert_allclose(actual.reshape(expected.shape), expected, rtol=1e-13, atol=1e-13,
                                       err_msg=f"c={c} l={l}")

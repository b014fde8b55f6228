"""The reference against upstream AniSOAP 0.1.1's own Python code.

The source distribution is fetched with ``pip download`` and hash-checked
(``reference.upstream``); its Rust moments routine is replaced by upstream's
own Python ``compute_moments_inefficient_implementation``, so this oracle owes
nothing to the workbench's moments, neighbour list, rotations or radial code.
Upstream's inputs are built as its ``EllipsoidalDensityProjection.transform``
builds them (featomic ``NeighborList``, scipy rotations from (w, x, y, z)
quaternions, ``c_diameter[k] / 2``).
"""

from __future__ import annotations

import numpy as np
import pytest

from einsum_workbench.reference import workloads
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.readers import read_frames
from einsum_workbench.reference.pairs import frames_to_pairs
from einsum_workbench.reference.radial import orthonormalization_matrix
from einsum_workbench.reference.solid_harmonics import solid_harmonic_tensors
from einsum_workbench.reference.upstream import UpstreamUnavailable, import_upstream_anisoap

pytestmark = [
    pytest.mark.upstream,
    # upstream 0.1.1's docstrings hold invalid escape sequences
    pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning"),
]

MAX_RELATIVE_DEVIATION = 1e-10
CUTOFF = 7.0


@pytest.fixture(scope="module")
def anisoap():
    try:
        return import_upstream_anisoap(moments="python")
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream AniSOAP 0.1.1 not run against the reference: {err.reason}")


def upstream_radial_basis(anisoap, hypers: ExpansionHypers):
    from anisoap.representations.radial_basis import GTORadialBasis, MonomialBasis

    common = dict(
        max_angular=hypers.lmax, cutoff_radius=hypers.cutoff, rcond=hypers.rcond, tol=hypers.tol,
        max_radial=list(hypers.max_radial) if isinstance(hypers.max_radial, tuple) else hypers.max_radial,
    )
    if hypers.radial_basis == "gto":
        return GTORadialBasis(radial_gaussian_width=hypers.sigma, **common)
    return MonomialBasis(**common)


def upstream_expansion(anisoap, frames, hypers: ExpansionHypers):
    """Upstream's pairwise_ellip_expansion with inputs built as its transform() does."""
    from anisoap.representations.ellipsoidal_density_projection import pairwise_ellip_expansion as upstream
    from anisoap.utils.spherical_to_cartesian import spherical_to_cartesian
    from featomic import NeighborList
    from scipy.spatial.transform import Rotation

    n_atoms = np.array([len(f) for f in frames])
    frame_to_global_atom_idx = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    types = sorted({int(z) for f in frames for z in f.numbers})
    rotation_matrices = np.concatenate(
        [Rotation.from_quat([[*q[1:], q[0]] for q in f.arrays["c_q"]]).as_matrix() for f in frames]
    )
    lengths = np.concatenate(
        [np.stack([f.arrays[f"c_diameter[{k}]"] / 2 for k in (1, 2, 3)], axis=1) for f in frames]
    )
    nl = NeighborList(cutoff=hypers.cutoff, full_neighbor_list=True, self_pairs=True).compute(frames)
    radial_basis = upstream_radial_basis(anisoap, hypers)
    sph_to_cart = spherical_to_cartesian(hypers.lmax, radial_basis.get_num_radial_functions())
    return upstream(
        hypers.lmax, nl, types, frame_to_global_atom_idx, rotation_matrices, lengths,
        sph_to_cart, radial_basis, rust_moments=True,
    )


def max_relative_deviation(anisoap, frames, hypers: ExpansionHypers):
    """Per l: max |ours - upstream| / max |upstream| over every pair."""
    tensor = upstream_expansion(anisoap, frames, hypers)
    batch = frames_to_pairs(frames, hypers.cutoff, self_pairs=True)
    ours = pairwise_ellip_expansion(batch.r_ij, batch.rotations, batch.semiaxes, hypers)
    keys = np.column_stack([batch.frame, batch.centre, batch.neighbour, batch.shift])
    index = {key: p for p, key in enumerate(map(tuple, keys.tolist()))}
    diff = np.zeros(hypers.lmax + 1)
    scale = np.zeros(hypers.lmax + 1)
    matched = np.zeros(hypers.lmax + 1, dtype=int)
    for key, block in zip(tensor.keys, tensor.blocks()):
        l = int(key["angular_channel"])
        samples = np.asarray(block.samples.values)
        rows = np.array([index[tuple(s)] for s in samples.tolist()], dtype=int)
        np.testing.assert_array_equal(batch.centre_species[rows], int(key["types_center"]))
        np.testing.assert_array_equal(batch.neighbour_species[rows], int(key["types_neighbor"]))
        theirs = np.asarray(block.values)
        assert theirs.shape == (len(rows), 2 * l + 1, hypers.num_radial[l])
        diff[l] = max(diff[l], np.abs(ours[l][rows] - theirs).max(initial=0.0))
        scale[l] = max(scale[l], np.abs(theirs).max(initial=0.0))
        matched[l] += len(rows)
    assert np.all(matched == len(batch)), f"upstream has {matched.tolist()} pairs per l, we have {len(batch)}"
    assert np.all(scale > 0)
    return diff / scale


def with_diameters(frames, diameters):
    out = []
    for frame in frames:
        frame = frame.copy()
        for k, d in enumerate(diameters, start=1):
            frame.arrays[f"c_diameter[{k}]"] = np.full(len(frame), float(d))
        out.append(frame)
    return out


@pytest.mark.parametrize(
    "diameters, radial_basis, lmax",
    [((8, 8, 1), "gto", 6), ((8, 8, 1), "monomial", 4), ((6, 6, 2), "gto", 5), ((6, 6, 2), "monomial", 6)],
)
def test_reference_matches_upstream_on_real_frames(anisoap, shared_data_path, diameters, radial_basis, lmax):
    frames = with_diameters(read_frames(shared_data_path, index=":5"), diameters)
    hypers = ExpansionHypers(
        lmax=lmax, radial_basis=radial_basis, cutoff=CUTOFF, sigma=1.5 if radial_basis == "gto" else None
    )
    deviation = max_relative_deviation(anisoap, frames, hypers)
    print(f"real frames, diameters {diameters}, {radial_basis} lmax {lmax}: "
          f"max relative deviation per l {np.array2string(deviation, precision=2)}")
    assert deviation.max() < MAX_RELATIVE_DEVIATION


@pytest.mark.parametrize("radial_basis, lmax, max_radial", [("gto", 6, None), ("monomial", 4, 2)])
def test_reference_matches_upstream_on_benzenes(anisoap, radial_basis, lmax, max_radial):
    frames = workloads.benzenes(2, seed=3, n_species=2)
    hypers = ExpansionHypers(
        lmax=lmax, radial_basis=radial_basis, cutoff=CUTOFF, max_radial=max_radial,
        sigma=1.5 if radial_basis == "gto" else None,
    )
    deviation = max_relative_deviation(anisoap, frames, hypers)
    print(f"benzenes (C, H), {radial_basis} lmax {lmax} max_radial {max_radial}: "
          f"max relative deviation per l {np.array2string(deviation, precision=2)}")
    assert deviation.max() < MAX_RELATIVE_DEVIATION


@pytest.mark.parametrize(
    "lmax, num_radial", [(0, [1]), (4, [3, 2, 2, 1, 1]), (6, [4, 3, 3, 2, 2, 1, 1]), (8, [2] * 9), (5, [1, 4, 2, 3, 1, 2])]
)
def test_solid_harmonic_tensors_equal_upstream(anisoap, lmax, num_radial):
    from anisoap.utils.spherical_to_cartesian import spherical_to_cartesian

    theirs = spherical_to_cartesian(lmax, num_radial)
    ours = solid_harmonic_tensors(lmax, tuple(num_radial))
    assert len(ours) == len(theirs) == lmax + 1
    for l, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"l={l}"
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=f"T_l for l={l}")


def identity_features(hypers: ExpansionHypers, neighbour_type=6):
    """A TensorMap shaped like contract_pairwise_feat's output whose block for
    channel l holds the identity over n: orthonormalising it yields W_l."""
    from metatensor import Labels, TensorBlock, TensorMap

    blocks = []
    for l in range(hypers.lmax + 1):
        n = hypers.num_radial[l]
        blocks.append(
            TensorBlock(
                values=np.eye(n).reshape(n, 1, n).copy(),
                samples=Labels(["type", "center"], np.array([[0, i] for i in range(n)], np.int32)),
                components=[Labels(["spherical_component_m"], np.array([[0]], np.int32))],
                properties=Labels(["n", "neighbor_types"], np.array([[i, neighbour_type] for i in range(n)], np.int32)),
            )
        )
    keys = Labels(["types_center", "angular_channel"], np.array([[6, l] for l in range(hypers.lmax + 1)], np.int32))
    return TensorMap(keys, blocks)


@pytest.mark.parametrize(
    "radial_basis, lmax, max_radial",
    [("gto", 4, None), ("gto", 6, None), ("gto", 5, 3), ("monomial", 4, None), ("monomial", 6, None), ("monomial", 5, 2)],
)
def test_orthonormalization_matrices_equal_upstream(anisoap, radial_basis, lmax, max_radial):
    hypers = ExpansionHypers(
        lmax=lmax, radial_basis=radial_basis, cutoff=CUTOFF, max_radial=max_radial,
        sigma=1.5 if radial_basis == "gto" else None,
    )
    features = upstream_radial_basis(anisoap, hypers).orthonormalize_basis(identity_features(hypers))
    for l in range(lmax + 1):
        theirs = np.asarray(features.block(angular_channel=l).values)[:, 0, :]
        ours = orthonormalization_matrix(l, hypers)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12 * np.abs(theirs).max(), err_msg=f"W_l for l={l}")


def fake_index(tmp_path, version, payload: bytes, stated_sha256: str):
    """A PEP 503 simple index on disk listing one anisoap sdist."""
    files = tmp_path / "files"
    files.mkdir(parents=True)
    (files / f"anisoap-{version}.tar.gz").write_bytes(payload)
    page = tmp_path / "simple" / "anisoap"
    page.mkdir(parents=True)
    href = (files / f"anisoap-{version}.tar.gz").as_uri() + f"#sha256={stated_sha256}"
    (page / "index.html").write_text(f'<html><body><a href="{href}">anisoap-{version}.tar.gz</a></body></html>')
    return (tmp_path / "simple").as_uri()


#: An in-tree PEP 517 backend: pip prepares the fake sdist's metadata without
#: installing anything (no index needed besides the fake one).
FAKE_BACKEND = """
import os


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "anisoap-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: anisoap\\nVersion: {version}\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("a fake sdist for the fetch test: no wheel")
"""


def fake_sdist(version) -> bytes:
    import io
    import tarfile

    files = {
        "anisoap/__init__.py": b"__version__ = 'fake'\n",
        "pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "fake_backend"\nbackend-path = ["."]\n',
        "fake_backend.py": FAKE_BACKEND.format(version=version).encode(),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: anisoap\nVersion: {version}\n".encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"anisoap-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def hermetic_pip(monkeypatch):
    """pip without the user's configuration (only the fake index counts) and without retries."""
    import os

    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


def test_fetch_verifies_the_hash_and_extracts_once(tmp_path, hermetic_pip):
    import hashlib

    from einsum_workbench.reference.upstream import fetch_anisoap_source

    payload = fake_sdist("9.9.9")
    digest = hashlib.sha256(payload).hexdigest()
    index = fake_index(tmp_path / "good", "9.9.9", payload, digest)
    source = fetch_anisoap_source("9.9.9", tmp_path / "cache", index_url=index)
    assert (source / "anisoap" / "__init__.py").read_text() == "__version__ = 'fake'\n"
    assert (source / ".sha256-verified").read_text().strip() == digest
    # reused from the cache without the index
    assert fetch_anisoap_source("9.9.9", tmp_path / "cache", index_url="http://127.0.0.1:9/simple") == source

    bad = fake_index(tmp_path / "bad", "9.9.9", payload, "0" * 64)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch_anisoap_source("9.9.9", tmp_path / "cache2", index_url=bad)
    payload_011 = fake_sdist("0.1.1")
    digest_011 = hashlib.sha256(payload_011).hexdigest()
    with pytest.raises(ValueError, match=f"sha256 mismatch .*downloaded {digest_011}"):
        fetch_anisoap_source("0.1.1", tmp_path / "cache3",
                             index_url=fake_index(tmp_path / "p", "0.1.1", payload_011, digest_011))
    with pytest.raises(UpstreamUnavailable, match="(?s)cannot download anisoap==1.2.3.*No matching distribution"):
        fetch_anisoap_source("1.2.3", tmp_path / "cache4", index_url=index)
    with pytest.raises(UpstreamUnavailable, match="cannot download"):
        fetch_anisoap_source("9.9.9", tmp_path / "cache5", index_url="http://127.0.0.1:9/simple")
    # nothing half-extracted is left behind by the failures
    for name in ("cache2", "cache3", "cache4", "cache5"):
        assert not list((tmp_path / name).iterdir()), name


def test_standin_moments_choice(anisoap):
    import sys

    from einsum_workbench.reference.moments import compute_moments_python

    precision = np.array([[2.0, 0.3, 0.1], [0.3, 1.5, 0.2], [0.1, 0.2, 1.0]])
    centre = np.array([0.3, -0.2, 1.0])
    expected = compute_moments_python(precision, centre, 6)
    for moments in ("numba", "python"):
        import_upstream_anisoap(moments=moments)
        got = sys.modules["anisoap_rust_lib"].compute_moments(precision, centre, 6)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    with pytest.raises(ValueError, match="moments must be one of .*'rust'"):
        import_upstream_anisoap(moments="rust")

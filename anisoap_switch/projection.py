"""``EllipsoidalDensityProjection.transform`` and ``power_spectrum``, replaced wholesale.

Upstream's ``transform`` reads every atom of every frame in Python loops
(rotations through scipy one atom at a time), builds featomic's neighbour
list, expands pairs, sums them in Python loops and orthonormalises block by
block. Here it runs the workbench's pipeline (:mod:`einsum_workbench.pipeline`):
one pass over the frames, one neighbour-list pass for all of them, one call
of the backend's density variant, TensorMaps built from arrays. ``power_spectrum``
contracts the density arrays directly (one matrix product per l) instead of
building the density TensorMap and running ``cg_combine``.

What stays upstream's, for anisoap 0.1.1 and its development head:

- arguments: ``show_progress`` (a tqdm bar over the frames), ``normalize``,
  ``rust_moments`` (accepted, no effect: the backend computes the moments),
  and the head's ``return_pef``, which returns the pair TensorMap too and
  therefore runs upstream's own ``transform`` (with the patched pair
  expansion and neighbour sum);
- reading frames: rotations from ``self.rotation_key`` as scipy's
  ``Rotation`` computes them (quaternions: its arithmetic in one compiled
  pass, ``reference.frames.quaternion_matrices``; matrices and any bad row:
  scipy itself, vectorised, for its numbers and errors), ``c_diameter[k] / 2`` (a ``KeyError`` when
  missing, as upstream), and for a frame without the rotation array
  upstream's warning, once per atom, and zero matrices (those pairs are
  computed with upstream's lab-frame arithmetic, the reference's
  ``any_matrix=True``);
- outputs: keys, samples, components, properties and their order; values
  within the equivalence tolerance. anisoap 0.1.1 orthonormalises after the
  neighbour sum by label, which with two or more neighbour species applies
  the radial matrix to columns holding other (n, species) values; the
  development head orthonormalises each pair first. Each is reproduced.
- ``power_spectrum``: upstream's checks and messages on frames; with
  ``mean_over_samples=True``, anisoap 0.1.1 fails on frames with several
  centre species (``.block()`` on a TensorMap of several blocks): the switch
  raises :class:`SeveralCentreSpeciesError` (an ``IndexError``, as upstream's)
  that says why and names the way out; the head stacks the species side by
  side as it does.

The attribute ``nl`` (featomic's neighbour list) is not set by the replaced
``transform``; the others upstream sets (``frames``, ``num_atoms_per_frame``,
``num_atoms_total``, ``frame_to_global_atom_idx``, ``feature_gradients``) are.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import operator
import warnings

import numpy as np

from einsum_workbench.anisoap_switch.expansion import hypers_from_radial_basis

#: Frame arrays upstream's ``power_spectrum`` requires.
REQUIRED_ATTRIBUTES = ("c_diameter[1]", "c_diameter[2]", "c_diameter[3]", "c_q", "positions", "numbers")
DIAMETERS = ("c_diameter[1]", "c_diameter[2]", "c_diameter[3]")
_REQUIRED = operator.itemgetter(*REQUIRED_ATTRIBUTES)


class SeveralCentreSpeciesError(IndexError):
    """anisoap 0.1.1's ``power_spectrum(mean_over_samples=True)`` cannot average
    frames with several centre species."""


def upstream_flavour(module) -> str:
    """"head" when the module's ``pairwise_ellip_expansion`` orthonormalises
    pairs (it has ``normalize``), else "0.1.1"."""
    originals = module.__dict__.get("_einsum_workbench_originals") or {}
    function = originals.get("pairwise_ellip_expansion", getattr(module, "pairwise_ellip_expansion", None))
    try:
        return "head" if "normalize" in inspect.signature(function).parameters else "0.1.1"
    except (TypeError, ValueError):
        return "0.1.1"


def _stored_matrices(edp, values):
    """(M, 3, 3) matrices of the stored rotation rows as upstream builds them, and whether all are
    rotations by construction: quaternions through scipy's arithmetic compiled
    (``reference.frames.quaternion_matrices``), anything else (matrices, a bad quaternion row)
    through scipy itself, vectorised, for its numbers and its errors."""
    from scipy.spatial.transform import Rotation

    from einsum_workbench.reference.frames import quaternion_matrices

    matrix_mode = getattr(edp, "rotation_maker", None) == Rotation.from_matrix
    quaternions = not matrix_mode and values.shape[1] == 4
    if quaternions:
        matrices, first_bad = quaternion_matrices(np.ascontiguousarray(values, dtype=np.float64))
        if first_bad < 0:
            return matrices, True
    try:
        if quaternions:
            matrices = Rotation.from_quat(values[:, [1, 2, 3, 0]]).as_matrix()  # stored (w, x, y, z)
        elif matrix_mode and values.shape[1] == 9:
            matrices = Rotation.from_matrix(values.reshape(-1, 3, 3)).as_matrix()
        else:
            raise ValueError(f"rotations stored with shape {values.shape}")
    except ValueError:  # upstream's own per-atom call, for upstream's own error
        matrices = np.stack([edp.rotation_maker(v).as_matrix() for v in values])
    return matrices.reshape(-1, 3, 3), False


def _rotation_matrices(edp, read, n_frames: int):
    """(N, 3, 3) rotations as upstream builds them from what ``gather_frames``
    read, and upstream's warnings (once per atom of a frame without them); and
    whether every one is a rotation by construction (normalised quaternions of
    every atom, none with a bad value)."""
    n_atoms = read.n_atoms
    for k in read.without_rotation:
        for _ in range(n_atoms[k]):  # upstream warns once per atom
            warnings.warn(f"Frame {k} does not have rotations stored, this may cause errors down the line.")
    n_total = int(n_atoms.sum())
    if not len(read.rotations):
        return np.zeros((n_total, 3, 3)), n_total == 0
    matrices, proper = _stored_matrices(edp, read.rotations)
    if not read.without_rotation:  # every atom has its rotation
        return np.ascontiguousarray(matrices, dtype=np.float64), proper
    rotations = np.zeros((n_total, 3, 3))  # zero matrices for the frames without (upstream's)
    have = np.ones(n_frames, dtype=bool)
    have[read.without_rotation] = False
    rotations[np.repeat(have, n_atoms)] = matrices
    return rotations, False


def _atoms_table(edp, frames, show_progress: bool):
    """The :class:`AtomsTable` of ``frames`` read as upstream reads them, in the
    product's one pass over the frames (``reference.frames.gather_frames``), and
    whether all its rotations are rotations by construction (``_rotation_matrices``)."""
    from tqdm.auto import tqdm

    from einsum_workbench.reference.frames import AtomsTable, check_positions, gather_frames

    progress = (lambda it: tqdm(it, desc="Computing neighborlist")) if show_progress else None
    read = gather_frames(frames, rotation_key=edp.rotation_key, diameter_keys=(DIAMETERS,), progress=progress)
    if read.without_diameters:  # upstream's KeyError, naming the first array the frame lacks
        arrays = frames[read.without_diameters[0]].arrays
        raise KeyError(next(key for key in DIAMETERS if key not in arrays))
    check_positions(read.positions, read.n_atoms)
    rotations, proper = _rotation_matrices(edp, read, len(frames))
    return AtomsTable(n_atoms=read.n_atoms, positions=read.positions, numbers=read.numbers, rotations=rotations,
                      semiaxes=read.diameters / 2, cells=read.cells, pbc=read.pbc), proper


def _record_attributes(edp, frames, table) -> None:
    """The attributes upstream's ``transform`` leaves on the object."""
    edp.frames = frames
    edp.num_atoms_per_frame = np.asarray(table.n_atoms, dtype=int)
    edp.num_atoms_total = int(table.n_atoms.sum())
    edp.frame_to_global_atom_idx = np.asarray(table.first_atom, dtype=int)
    edp.feature_gradients = 0


def density_blocks_of(edp, frames, *, backend: str, flavour: str, normalize: bool, show_progress: bool,
                      property_layout: str):
    """(layout, blocks): the centre density of ``frames`` as upstream's
    ``transform`` computes it, as arrays (see ``pipeline.density.density_blocks``)."""
    from einsum_workbench.pipeline.density import density_blocks, density_of_table
    from einsum_workbench.pipeline.stages import stage

    hypers = hypers_from_radial_basis(edp.radial_basis, edp.max_angular)
    with stage("frames"):
        table, proper_rotations = _atoms_table(edp, list(frames), show_progress)
        _record_attributes(edp, frames, table)
    # 0.1.1 orthonormalises runs of num_radial columns of its n-major layout (by label); with one
    # species those runs are the rows, so the kernel's own orthonormalisation gives its numbers
    # (on 1,000 one-species ellipsoid frames 0.15 ms less than the matrix products afterwards)
    one_species = len(table.numbers) > 0 and bool((table.numbers == table.numbers[0]).all())
    in_kernel = normalize and (flavour == "head" or one_species)
    # upstream's arithmetic for any matrix that may not be a rotation (zero matrices of frames
    # without rotations, NaNs): checked per atom unless every one is a rotation by construction
    layout, density = density_of_table(table, hypers, backend=backend, orthonormal=in_kernel,
                                       self_pairs=not edp.subtract_center_contribution,
                                       any_matrix=not proper_rotations)
    by_label = hypers if normalize and not in_kernel else None
    blocks = density_blocks(layout, density, property_layout=property_layout, orthonormalize_columns=by_label)
    return layout, blocks


def make_transform(original, backend: str, flavour: str, property_layout: str):
    """A drop-in ``EllipsoidalDensityProjection.transform`` run by the pipeline.

    Parameters
    ----------
    original : function
        Upstream's ``transform`` (its extra keyword arguments are accepted;
        ``return_pef=True`` runs it).
    backend : str
        Registered variant name.
    flavour : {"0.1.1", "head"}
        Where upstream orthonormalises (module docstring).
    property_layout : {"upstream", "labelled"}
    """
    extra = [name for name in inspect.signature(original).parameters
             if name not in ("self", "frames", "show_progress", "normalize", "rust_moments")]

    def transform(self, frames, show_progress=False, normalize=True, rust_moments=True, **kwargs):
        unknown = [name for name in kwargs if name not in extra]
        if unknown:
            raise TypeError(f"transform() got an unexpected keyword argument {unknown[0]!r}")
        if kwargs.get("return_pef"):
            return original(self, frames, show_progress=show_progress, normalize=normalize,
                            rust_moments=rust_moments, **kwargs)
        from einsum_workbench.pipeline.tensormaps import density_tensormap

        layout, blocks = density_blocks_of(self, frames, backend=backend, flavour=flavour, normalize=normalize,
                                           show_progress=show_progress, property_layout=property_layout)
        return density_tensormap(layout, blocks)

    transform.__doc__ = original.__doc__
    transform.workbench_backend = backend
    return transform


def _check_power_spectrum_frames(frames) -> None:
    """Upstream's checks on the frames, with its messages."""
    if frames[0].arrays is None:
        raise ValueError("frames cannot be none")
    arrays = [frame.arrays for frame in frames]
    try:  # the common case in two C-level passes; the loop below only for upstream's message
        collections.deque(map(_REQUIRED, arrays), maxlen=0)  # a KeyError is the finding
        if not any(map(operator.contains, arrays, itertools.repeat("quaternion"))):
            return
    except KeyError:
        pass
    required = set(REQUIRED_ATTRIBUTES)
    for index, frame in enumerate(frames):
        array = frame.arrays
        if required.issubset(array.keys()) and "quaternion" not in array:
            continue  # the common case, without upstream's 12 look-ups per frame
        for attr in REQUIRED_ATTRIBUTES:
            if attr not in array:
                raise ValueError(f"frame at index {index} is missing a required attribute '{attr}'")
            if "quaternion" in array:
                raise ValueError("frame should contain c_q rather than quaternion")


def make_power_spectrum(backend: str, flavour: str, property_layout: str):
    """A drop-in ``EllipsoidalDensityProjection.power_spectrum`` (module docstring)."""

    def power_spectrum(self, frames, mean_over_samples=True, show_progress=False, rust_moments=True):
        from einsum_workbench.pipeline.power_spectrum import power_spectrum_tensormap, species_power_spectrum_means
        from einsum_workbench.pipeline.stages import stage

        _check_power_spectrum_frames(frames)
        layout, blocks = density_blocks_of(self, frames, backend=backend, flavour=flavour, normalize=True,
                                           show_progress=show_progress, property_layout=property_layout)
        if not mean_over_samples:
            return power_spectrum_tensormap(layout, blocks)
        if flavour == "0.1.1" and len(layout.centre_types) > 1:
            raise SeveralCentreSpeciesError(
                f"anisoap 0.1.1's power_spectrum(mean_over_samples=True) averages one centre species only; "
                f"these frames have centre species {layout.centre_types.tolist()} (upstream fails here with "
                "an IndexError from TensorMap.block()). Use power_spectrum(frames, mean_over_samples=False) "
                "for one block per centre species, or einsum_workbench.pipeline.power_spectrum(frames, hypers) "
                "for per-structure features of every species with matching labels."
            )
        with stage("power_spectrum"):
            means = []
            for c in range(len(layout.centre_types)):
                mean, present = species_power_spectrum_means(layout, blocks, c, layout.n_frames)
                means.append(mean[present][:, None, :].squeeze())  # what upstream's .values.squeeze() gives
            return means[0] if flavour == "0.1.1" else np.hstack(means)

    power_spectrum.workbench_backend = backend
    return power_spectrum

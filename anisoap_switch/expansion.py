"""``pairwise_ellip_expansion`` with upstream's signature, computed by a variant.

Upstream (anisoap 0.1.1, ``anisoap.representations.ellipsoidal_density_projection``)
loops over the samples of every neighbour-list block and calls
``numpy.einsum`` once per pair and angular channel. Here the neighbour list's
blocks are flattened into one pair batch (``r_ij`` from the block values, the
rotation and semi-axes of neighbour j through ``frame_to_global_atom_idx``),
one registered variant computes every pair's coefficients, and the result is
cut back into the TensorMap upstream builds:

- keys ``(types_center, types_neighbor, angular_channel)`` int32, in the order
  upstream writes them (the neighbour list's key order, l fastest);
- blocks in upstream's order (centre type, then neighbour type, over the
  sorted ``types``; l fastest), with the neighbour list block's samples,
  components ``spherical_component_m`` = -l..l and properties ``n``.
"""

from __future__ import annotations

import inspect

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

_SAMPLE_COLUMNS = ("system", "first_atom", "second_atom")


def hypers_from_radial_basis(radial_basis, lmax: int) -> ExpansionHypers:
    """The :class:`ExpansionHypers` an AniSOAP radial-basis object stands for.

    Parameters
    ----------
    radial_basis : anisoap ``GTORadialBasis`` or ``MonomialBasis``
        Read: ``radial_basis`` ("gto"/"monomial"), ``cutoff_radius``,
        ``get_num_radial_functions()``, ``radial_gaussian_width`` (GTO),
        ``rcond``, ``tol``.
    lmax : int
        Largest angular channel (upstream's ``max_angular``).

    Returns
    -------
    ExpansionHypers with ``max_radial`` the explicit per-l list, so that
    ``num_radial`` equals the basis object's radial counts.

    Raises
    ------
    ValueError
        unknown basis kind, or fewer radial counts than ``lmax + 1``.
    """
    kind = getattr(radial_basis, "radial_basis", None)
    if kind is None:  # fall back on the class name (GTORadialBasis, MonomialBasis)
        name = type(radial_basis).__name__.lower()
        kind = "gto" if "gto" in name else "monomial" if "monomial" in name else name
    kind = str(kind).lower()
    if kind not in ("gto", "monomial"):
        raise ValueError(
            f"radial basis {type(radial_basis).__name__} of kind {kind!r} is not supported; "
            "expected AniSOAP's GTORadialBasis ('gto') or MonomialBasis ('monomial')"
        )
    num_radial = [int(n) for n in radial_basis.get_num_radial_functions()]
    if len(num_radial) < lmax + 1:
        raise ValueError(
            f"the radial basis gives {len(num_radial)} radial counts {num_radial}, "
            f"fewer than lmax + 1 = {lmax + 1}"
        )
    key = (int(lmax), kind, float(radial_basis.cutoff_radius),
           float(radial_basis.radial_gaussian_width) if kind == "gto" else None,
           tuple(n - 1 for n in num_radial[: lmax + 1]), float(getattr(radial_basis, "rcond", 0.0)),
           float(getattr(radial_basis, "tol", 1e-8)))
    hypers = _HYPERS.get(key)
    if hypers is None:  # validated once per set (ExpansionHypers is frozen): ~20 us of every transform
        lmax_, kind_, cutoff, sigma, max_radial, rcond, tol = key
        hypers = ExpansionHypers(lmax=lmax_, radial_basis=kind_, cutoff=cutoff, sigma=sigma,
                                 max_radial=list(max_radial), rcond=rcond, tol=tol)
        _HYPERS[key] = hypers
    return hypers


#: ExpansionHypers already built, by what they were built from.
_HYPERS: dict = {}


def _sample_columns(samples) -> tuple[np.ndarray, ...]:
    names = list(samples.names)
    missing = [c for c in _SAMPLE_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"neighbour list samples {names} lack the column(s) {missing} that AniSOAP's "
            "neighbour list (featomic NeighborList) provides"
        )
    values = np.asarray(samples.values)
    return tuple(values[:, names.index(c)].astype(np.int64) for c in _SAMPLE_COLUMNS)


def upstream_block_order(neighbor_list, types) -> list[tuple[int, int]]:
    """(centre type, neighbour type) of the neighbour-list blocks upstream
    expands, in its order: both loops over ``types``, kept where the key exists."""
    present = {tuple(int(v) for v in key) for key in np.asarray(neighbor_list.keys.values)}
    return [(int(c), int(n)) for c in types for n in types if (int(c), int(n)) in present]


def neighbour_list_to_pairs(neighbor_list, types, frame_to_global_atom_idx,
                            rotation_matrices, ellipsoid_lengths):
    """Flatten AniSOAP's neighbour list into one pair batch.

    Parameters
    ----------
    neighbor_list : metatensor TensorMap
        featomic ``NeighborList`` output: keys (first_atom_type,
        second_atom_type); samples (system, first_atom, second_atom, cell
        shifts); values (P, 3, 1) = the vector from centre i to neighbour j's
        image, angstrom.
    types : sorted sequence of int
        Atomic numbers present.
    frame_to_global_atom_idx : (F,) int
        Global index of each frame's first atom.
    rotation_matrices : (N, 3, 3) float
        Body-to-lab rotation of every atom.
    ellipsoid_lengths : (N, 3) float, angstrom
        Semi-axes of every atom.

    Returns
    -------
    blocks : list of ((centre type, neighbour type), TensorBlock)
        The neighbour-list blocks in upstream's order.
    offsets : (len(blocks) + 1,) int64
        Pairs of block b are ``offsets[b]:offsets[b+1]`` of the batch.
    r_ij (P, 3), rotations (P, 3, 3), semiaxes (P, 3) : float64 arrays
        Neighbour j's geometry for every pair.

    Raises
    ------
    ValueError
        samples without the expected columns, or an atom index outside the
        rotation / semi-axis arrays.
    """
    start = np.asarray(frame_to_global_atom_idx, dtype=np.int64)
    rotation_matrices = np.asarray(rotation_matrices, dtype=np.float64)
    ellipsoid_lengths = np.asarray(ellipsoid_lengths, dtype=np.float64)
    blocks, r_parts, j_parts = [], [], []
    for key in upstream_block_order(neighbor_list, types):
        block = neighbor_list.block(first_atom_type=key[0], second_atom_type=key[1])
        system, _, second = _sample_columns(block.samples)
        values = np.asarray(block.values, dtype=np.float64)
        r_parts.append(values.reshape(values.shape[0], 3))
        j_parts.append(start[system] + second if system.size else second)
        blocks.append((key, block))
    counts = [len(r) for r in r_parts]
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    r_ij = np.concatenate(r_parts) if r_parts else np.zeros((0, 3))
    j_global = np.concatenate(j_parts) if j_parts else np.zeros(0, dtype=np.int64)
    if j_global.size and (j_global.min() < 0 or j_global.max() >= len(rotation_matrices)
                          or j_global.max() >= len(ellipsoid_lengths)):
        raise ValueError(
            f"neighbour atom index {int(j_global.max())} outside the rotation "
            f"({len(rotation_matrices)}) / semi-axis ({len(ellipsoid_lengths)}) arrays"
        )
    return (blocks, offsets, np.ascontiguousarray(r_ij),
            np.ascontiguousarray(rotation_matrices[j_global]),
            np.ascontiguousarray(ellipsoid_lengths[j_global]))


def _default_normalize(upstream_function) -> bool:
    """Upstream's default for ``normalize`` (the development head has
    ``normalize=True``; 0.1.1 has no such argument and never orthonormalises)."""
    if upstream_function is None:
        return False
    try:
        parameter = inspect.signature(upstream_function).parameters.get("normalize")
    except (TypeError, ValueError):
        return False
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False
    return bool(parameter.default)


def make_pairwise_ellip_expansion(expand, backend_name: str, upstream_function=None):
    """A drop-in ``pairwise_ellip_expansion`` computed by ``expand``.

    Parameters
    ----------
    expand : callable
        A variant's function (contract in DESIGN.md section 4).
    backend_name : str
        Registry name, recorded on the returned function.
    upstream_function : callable or None
        The function being replaced; only its ``normalize`` default is read.

    Returns
    -------
    function with upstream's signature (see its docstring).
    """
    default_normalize = _default_normalize(upstream_function)

    def pairwise_ellip_expansion(lmax, neighbor_list, types, frame_to_global_atom_idx,
                                 rotation_matrices, ellipsoid_lengths, sph_to_cart,
                                 radial_basis, show_progress=False, rust_moments=True,
                                 normalize=default_normalize):
        """Pairwise expansion ``<n l m | rho_ij>`` (AniSOAP's signature), by a
        workbench variant.

        Parameters are upstream's: ``lmax`` int; ``neighbor_list`` featomic
        TensorMap; ``types`` sorted atomic numbers; ``frame_to_global_atom_idx``
        (F,) int; ``rotation_matrices`` (N, 3, 3); ``ellipsoid_lengths`` (N, 3)
        semi-axes in angstrom; ``radial_basis`` AniSOAP GTO/monomial basis.
        ``sph_to_cart`` is not used (the variant builds its own solid-harmonic
        tables from the same hyper-parameters), ``show_progress`` and
        ``rust_moments`` are accepted and ignored. ``normalize`` (development
        head) Loewdin-orthonormalises along n inside, as upstream does there;
        its default is the replaced function's (False for anisoap 0.1.1).

        Returns
        -------
        metatensor TensorMap, keys (types_center, types_neighbor,
        angular_channel) int32; block values (P, 2l+1, num_radial[l]) float64.
        """
        from metatensor import Labels, TensorBlock, TensorMap

        hypers = hypers_from_radial_basis(radial_basis, lmax)
        blocks, offsets, r_ij, rotations, semiaxes = neighbour_list_to_pairs(
            neighbor_list, types, frame_to_global_atom_idx, rotation_matrices, ellipsoid_lengths,
        )
        coefficients = expand(r_ij, rotations, semiaxes, hypers, dtype=np.float64)
        if normalize:
            from einsum_workbench.reference.radial import orthonormalize

            coefficients = orthonormalize(coefficients, hypers)
        components = [
            Labels(["spherical_component_m"], np.arange(-l, l + 1, dtype=np.int32).reshape(-1, 1))
            for l in range(lmax + 1)
        ]
        properties = [
            Labels(["n"], np.arange(hypers.num_radial[l], dtype=np.int32).reshape(-1, 1))
            for l in range(lmax + 1)
        ]
        tensor_blocks = []
        for b, (_, nl_block) in enumerate(blocks):
            lo, hi = int(offsets[b]), int(offsets[b + 1])
            for l in range(lmax + 1):
                tensor_blocks.append(TensorBlock(
                    values=np.ascontiguousarray(coefficients[l][lo:hi], dtype=np.float64),
                    samples=nl_block.samples,
                    components=[components[l]],
                    properties=properties[l],
                ))
        # upstream's keys follow the neighbour list's key order, its blocks the
        # sorted types: identical for featomic's (sorted) keys
        keys = [tuple(int(v) for v in key) + (l,) for key in np.asarray(neighbor_list.keys.values)
                for l in range(lmax + 1)]
        return TensorMap(
            Labels(["types_center", "types_neighbor", "angular_channel"],
                   np.asarray(keys, dtype=np.int32).reshape(-1, 3)),
            tensor_blocks,
        )

    pairwise_ellip_expansion.workbench_backend = backend_name
    return pairwise_ellip_expansion

"""The neighbour sum ``sum_{j in a} <n l m | rho_ij> = <a n l m | rho_i>``, vectorised.

Drop-in for AniSOAP's ``contract_pairwise_feat`` (anisoap 0.1.1), which loops
in Python over keys, neighbour types and samples. Here the pairs of each
(centre type, neighbour type) are grouped by centre once (a sparse 0/1
membership matrix, reused for every l), each block is summed with one sparse
product, and the per-type sums are scattered into the output with
``numpy.searchsorted``.

Upstream's output, reproduced exactly by default:

- keys ``(types_center, angular_channel)`` int32, sorted;
- samples ``("type", "center")`` int32: the sorted union of the (system,
  centre) pairs present in any neighbour type's block (the first name is
  upstream's, although the column holds the system index);
- components: those of the pair blocks;
- properties ``(n, neighbor_types)`` int32 listed species-major (all n of the
  first neighbour type, then the next), but values laid out **n-major**
  (value column ``n * E + e`` for the e-th of E neighbour types present), so
  with two or more neighbour types the labels do not describe the values
  (DESIGN.md section 3, "Neighbour sum"). ``property_layout="labelled"``
  lays the values out species-major so that they match their labels.

Only neighbour types with a pair block for the key count (E may be smaller
than ``len(types)``); a centre with no neighbour of some type gets zeros there.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.pipeline.layout import check_property_layout


def _packed_centres(samples) -> np.ndarray:
    """(system, first_atom) of every pair packed into one sortable int64."""
    names = list(samples.names)
    for column in ("system", "first_atom"):
        if column not in names:
            raise ValueError(f"pair samples {names} lack the column {column!r}")
    values = np.asarray(samples.values)
    system = values[:, names.index("system")].astype(np.int64)
    centre = values[:, names.index("first_atom")].astype(np.int64)
    return (system << 32) | centre


class CentreSegments:
    """Which pairs belong to which centre, for sums over one set of samples.

    Built once per pair-block samples (the blocks of all l for one
    (centre type, neighbour type) share them) and reused for every l. The sum
    is a product with a sparse 0/1 matrix (scipy CSR, one row per centre): one
    pass over the values, no sorted copy (featomic does not list pairs by
    centre), about 3x faster than sorting plus ``numpy.add.reduceat``.

    Attributes
    ----------
    centres : (U,) int64, sorted unique packed (system, first_atom)
    membership : scipy.sparse.csr_matrix (U, P), 1 where pair p has centre u
    """

    def __init__(self, packed: np.ndarray):
        from scipy.sparse import csr_matrix

        self.centres, owner = np.unique(packed, return_inverse=True)
        n_pairs = packed.shape[0]
        self.membership = csr_matrix(
            (np.ones(n_pairs), (owner.reshape(-1), np.arange(n_pairs))),
            shape=(self.centres.shape[0], n_pairs),
        )

    def sums(self, values) -> np.ndarray:
        """``(U, ...)`` float64: values summed over the pairs of each centre."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[0] != self.membership.shape[1]:
            raise ValueError(f"{values.shape[0]} value rows for {self.membership.shape[1]} pairs")
        flat = values.reshape(values.shape[0], -1)
        return np.asarray(self.membership @ flat).reshape((self.centres.shape[0],) + values.shape[1:])


def contract_pairwise_feat(pair_ellip_feat, types, show_progress=False, *,
                           property_layout: str = "upstream"):
    """Sum the pairwise expansion over the neighbours of every centre, per
    neighbour type (AniSOAP's signature).

    Parameters
    ----------
    pair_ellip_feat : metatensor TensorMap
        Output of ``pairwise_ellip_expansion``: keys (types_center,
        types_neighbor, angular_channel); samples with ``system`` and
        ``first_atom`` columns; values (P, 2l+1, num_radial[l]).
    types : sequence of int
        Atomic numbers present (upstream's order of the neighbour types).
    show_progress : bool
        Accepted for compatibility; no progress bar is drawn.
    property_layout : {"upstream", "labelled"}
        See the module docstring.

    Returns
    -------
    metatensor TensorMap with keys (types_center, angular_channel); block
    values (S, 2l+1, num_radial[l] * E) float64.

    Raises
    ------
    ValueError
        unknown ``property_layout``; pair samples without system/first_atom;
        two blocks with the same (centre type, neighbour type, l).
    """
    from metatensor import Labels, TensorBlock, TensorMap

    check_property_layout(property_layout)
    key_values = np.asarray(pair_ellip_feat.keys.values).astype(np.int64)
    block_of = {}
    for index, key in enumerate(key_values):
        triple = tuple(int(v) for v in key)
        if triple in block_of:
            raise ValueError(f"two pair blocks share the key {triple}")
        block_of[triple] = index
    out_keys = sorted({(c, l) for c, _, l in block_of})
    property_names = list(pair_ellip_feat.property_names) + ["neighbor_types"]
    out_blocks = []
    segments_of = {}  # (centre type, neighbour type) -> (samples, CentreSegments), shared by all l
    for centre_type, l in out_keys:
        present = [(int(e), pair_ellip_feat.block(block_of[(centre_type, int(e), l)]))
                   for e in types if (centre_type, int(e), l) in block_of]
        reduced = []
        for e, block in present:
            samples = block.samples
            cached = segments_of.get((centre_type, e))
            if cached is None or cached[0] != samples:
                cached = (samples, CentreSegments(_packed_centres(samples)))
                segments_of[centre_type, e] = cached
            reduced.append((cached[1].centres, cached[1].sums(block.values)))
        all_centres = np.unique(np.concatenate([c for c, _ in reduced]))
        last = present[-1][1]
        n_props = len(last.properties)
        values = np.zeros((len(all_centres),) + tuple(last.values.shape[1:-1]) + (n_props, len(present)))
        for e, (centres, sums) in enumerate(reduced):
            values[np.searchsorted(all_centres, centres), ..., e] = sums
        if property_layout == "labelled":
            values = np.swapaxes(values, -1, -2)
        values = np.ascontiguousarray(values).reshape(values.shape[0], *values.shape[1:-2], -1)
        labels = np.vstack([
            np.column_stack([np.asarray(b.properties.values, dtype=np.int32),
                             np.full(len(b.properties), e, dtype=np.int32)])
            for e, b in present
        ])
        samples = np.column_stack([all_centres >> 32, all_centres & 0xFFFFFFFF]).astype(np.int32)
        out_blocks.append(TensorBlock(
            values=values,
            samples=Labels(["type", "center"], samples.reshape(-1, 2)),
            components=last.components,
            properties=Labels(property_names, labels),
        ))
    return TensorMap(
        Labels(["types_center", "angular_channel"], np.asarray(out_keys, dtype=np.int32).reshape(-1, 2)),
        out_blocks,
    )

"""Random neighbour-pair batches for equivalence and property tests.

Unlike the frame workloads (``workloads.py``), these draw pairs directly:
random vectors inside the cutoff, uniformly random rotations and semi-axes of
a chosen family, so that extreme shapes are covered on purpose.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# semi-axes families in angstrom: (low, high) per axis
SHAPES = {
    "spherical": None,            # l1 = l2 = l3
    "prolate": ((0.15, 0.4), (0.15, 0.4), (2.0, 4.0)),   # needles
    "oblate": ((2.0, 4.0), (2.0, 4.0), (0.05, 0.3)),     # plates
    "general": ((0.3, 3.0), (0.3, 3.0), (0.3, 3.0)),
}


def random_semiaxes(n: int, shape: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) float64 semi-axes of the family ``shape`` (see ``SHAPES``), or "mixed".

    Raises ValueError for an unknown family, naming it.
    """
    if shape == "mixed":
        families = [s for s in SHAPES]
        which = rng.integers(len(families), size=n)
        out = np.empty((n, 3))
        for i, family in enumerate(families):
            mask = which == i
            out[mask] = random_semiaxes(int(mask.sum()), family, rng)
        return out
    if shape not in SHAPES:
        raise ValueError(f"unknown semi-axes family {shape!r}; known: {sorted(SHAPES)} or 'mixed'")
    if shape == "spherical":
        return np.repeat(rng.uniform(0.3, 3.0, size=(n, 1)), 3, axis=1)
    return np.stack([rng.uniform(lo, hi, size=n) for lo, hi in SHAPES[shape]], axis=1)


def random_pair_batch(n_pairs: int, seed: int = 0, *, shape: str = "mixed", max_distance: float = 7.0,
                      self_pair_fraction: float = 0.0):
    """Random (r_ij, rotations, semiaxes) float64 arrays of one pair batch.

    Parameters
    ----------
    n_pairs : int
    seed : int
    shape : semi-axes family, see ``SHAPES``, or "mixed"
    max_distance : float, angstrom; |r_ij| is uniform in volume below it
    self_pair_fraction : float in [0, 1]; that fraction of pairs gets r_ij = 0

    Returns
    -------
    r_ij (P, 3), rotations (P, 3, 3) proper rotations, semiaxes (P, 3)
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n_pairs, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-300
    radius = max_distance * rng.uniform(size=(n_pairs, 1)) ** (1.0 / 3.0)
    r_ij = direction * radius
    r_ij[rng.uniform(size=n_pairs) < self_pair_fraction] = 0.0
    rotations = Rotation.random(n_pairs, random_state=rng).as_matrix().reshape(n_pairs, 3, 3)
    return r_ij, rotations, random_semiaxes(n_pairs, shape, rng)

"""The smooth cutoff around every registered variant of the four problems (``kernels.smooth_cutoff``).

Each smoothed variant (``registry.load_variant(name, problem,
smooth_cutoff=...)``, ``registry.density_function(name, smooth_cutoff=...)``)
is checked against a computation from the reference that shares nothing
with the wrapper but the reference expansion, with ``f`` written out here
from DESIGN.md section 3:

- pairs: ``f_p`` times the reference expansion;
- density: the reference expansion of every pair, times ``f_p``, added
  into its row one pair at a time (``np.add.at``), then ``W_l`` when
  orthonormalised;
- gradients: central finite differences of ``f(|r|) c(r, R, l)`` (the
  smoothed reference expansion), positions, orientations and semi-axes;
- backward: ``reference.backward.finite_difference_backward`` through that
  smoothed reference density.

The batch has a self pair, pairs inside ``rc - w``, pairs in the shell, one
exactly at ``rc - w`` and one exactly at ``rc`` (axis-aligned, so ``|r|`` is
exact) and one beyond ``rc``; its segments are unsorted, one row empty, one
holding only pairs with ``f = 0``. Variants that cannot run here are
skipped with the registry's reason.

Tolerances are the suites': pairs and density ``reference.compare``'s
(float64 rtol 1e-6, atol 1e-8 x block max; float32 rtol 1e-3, atol 1e-4 x
block max); gradients ``test_gradients_equivalence``'s finite-difference
tolerance (rtol 1e-6, atol 1e-6 x scale, scale at least 1e-2 of the
block's values); backward ``test_backward``'s (rtol 1e-6, atol 1e-6 x
scale, scale at least 1e-1 of the largest). The position steps are 1e-7
angstrom (1.5e-7 for the backward pass), not the suites' 1e-5: ``f''``
jumps at both ends of the shell, so a central difference across an end errs
by ``pi^2 h / (8 w^2)`` times the pair's coefficients (at 1e-6 the monomial
pair at ``rc``, whose coefficients are the batch's largest, reaches the
tolerance; at 1e-7 every error is below 0.11 of it).

Last, the property the smooth cutoff is for: as one pair approaches ``rc``
from below, its share of the energy ``sum_l <g_l, rho_l>`` and of the force
go to zero (as ``f`` and ``f'`` do), and are exactly zero at and beyond
``rc``; with the hard cutoff the same pair's share stays finite up to
``rc`` and then drops to zero: a jump.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from einsum_workbench.kernels import registry
from einsum_workbench.kernels.registry import (
    BACKWARD_VARIANTS,
    DENSITY_VARIANTS,
    GRADIENT_VARIANTS,
    VARIANTS,
    density_function,
    load_variant,
)
from einsum_workbench.kernels.smooth_cutoff import with_smooth_cutoff
from einsum_workbench.reference import backward as reference_backward
from einsum_workbench.reference.backward import PairCotangents, finite_difference_backward
from einsum_workbench.reference.compare import assert_coefficients_close, equivalence_hypers, make_hypers
from einsum_workbench.reference.cutoff import ShiftedCosine
from einsum_workbench.reference.density import orthonormalize_density
from einsum_workbench.reference.expansion import pairwise_ellip_expansion
from einsum_workbench.reference.gradients import PairGradients, small_rotations
from einsum_workbench.reference.random_pairs import random_pair_batch

WIDTH = 2.0
SMOOTH = ShiftedCosine(WIDTH)
CUTOFF = 7.0  # reference.compare.make_hypers'
HYPERS = dict(equivalence_hypers())
VALUE_CASES = ("l0-gto-default", "l3-monomial-list", "l8-gto-list")
DERIVATIVE_CASES = ("l2-monomial-int", "l5-gto-int")

#: |r_ij| of the batch; None marks the axis-aligned pairs whose |r| is exact
RADII = [0.0, 1.7, 3.9, None, 5.4, 6.1, 6.6, 6.97, None, 7.3, 4.6, 5.8]
EXACT = {3: (CUTOFF - WIDTH, 0.0, 0.0), 8: (0.0, 0.0, -CUTOFF)}
#: rows: 0 inner and shell, 1 empty, 2 shell only, 3 inner, self pair and the one at rc - w, 4 only f = 0, 5 mixed
SEGMENT = np.array([3, 0, 3, 3, 2, 0, 5, 2, 4, 4, 5, 0])
N_SEGMENTS = 6

#: every registry entry of every problem
TABLES = (("pairs", VARIANTS), ("density", DENSITY_VARIANTS), ("gradients", GRADIENT_VARIANTS),
          ("backward", BACKWARD_VARIANTS))
PROBLEM_VARIANTS = [pytest.param(p, v, id=f"{p}-{v.name}") for p, table in TABLES for v in table]

FD_TOL = {"rtol": 1e-6, "atol_scale": 1e-6, "floor": 1e-2}
BACKWARD_TOL = {"rtol": 1e-6, "atol_scale": 1e-6, "floor": 1e-1}
POSITION_STEP = 1e-7  # angstrom (module docstring)
ANGLE_STEP = 1e-5  # radian: f does not depend on the orientation or the semi-axes
SEMIAXIS_STEP = 1e-5  # relative


# ----------------------------------------------------------------- the independent computation


def cutoff_function(r_ij):
    """f(|r|) and its gradient f'(|r|) r/|r|, pair by pair from DESIGN.md's closed form."""
    f, gradient = np.ones(len(r_ij)), np.zeros((len(r_ij), 3))
    for p, r in enumerate(np.asarray(r_ij, dtype=np.float64)):
        distance = math.sqrt(float(r @ r))
        if distance >= CUTOFF:
            f[p] = 0.0
        elif distance > CUTOFF - WIDTH:
            phase = math.pi * (distance - CUTOFF + WIDTH) / WIDTH
            f[p] = 0.5 * (1.0 + math.cos(phase))
            gradient[p] = -0.5 * math.pi / WIDTH * math.sin(phase) * r / distance
    return f, gradient


def smoothed_expansion(r_ij, rotations, semiaxes, hypers):
    f, _ = cutoff_function(r_ij)
    return [c * f[:, None, None] for c in pairwise_ellip_expansion(r_ij, rotations, semiaxes, hypers)]


def smoothed_density(r_ij, rotations, semiaxes, hypers, segment, n_segments, *, dtype=None, orthonormal=False):
    """f_p times each pair's reference coefficients, added into its row (the ``"density"`` contract, float64)."""
    rows = [np.zeros((n_segments, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]
    for rho, c in zip(rows, smoothed_expansion(r_ij, rotations, semiaxes, hypers)):
        np.add.at(rho, np.asarray(segment), c)
    return orthonormalize_density(rows, hypers) if orthonormal else rows


def smoothed_finite_differences(r_ij, rotations, semiaxes, hypers) -> PairGradients:
    """Central differences of f(|r|) c(r, R, l): every perturbed copy of the batch in one reference call."""
    copies, steps = [], []
    for quantity, step in (("positions", POSITION_STEP), ("orientations", ANGLE_STEP), ("semiaxes", SEMIAXIS_STEP)):
        for alpha in range(3):
            for sign in (1.0, -1.0):
                r, rot, ax = r_ij.copy(), rotations.copy(), semiaxes.copy()
                if quantity == "positions":
                    r[:, alpha] += sign * step
                elif quantity == "orientations":
                    rot = small_rotations(sign * step)[alpha] @ rotations
                else:
                    ax[:, alpha] *= 1.0 + sign * step
                copies.append((r, rot, ax))
            steps.append(np.full(len(r_ij), step) if quantity != "semiaxes" else step * semiaxes[:, alpha])
    batch = [np.concatenate([c[k] for c in copies]) for k in range(3)]
    shifted = smoothed_expansion(*batch, hypers)
    out = {"positions": [], "orientations": [], "semiaxes": []}
    for block in shifted:
        block = block.reshape(3, 3, 2, len(r_ij), *block.shape[1:])
        for qi, quantity in enumerate(out):
            h = np.stack(steps[3 * qi: 3 * qi + 3])[:, :, None, None]  # (3, P, 1, 1)
            out[quantity].append(((block[qi, :, 0] - block[qi, :, 1]) / (2 * h)).transpose(1, 0, 2, 3))
    return PairGradients(values=smoothed_expansion(r_ij, rotations, semiaxes, hypers), **out)


# ----------------------------------------------------------------- inputs and helpers


def batch(seed: int = 5, dtype=np.float64):
    """The module docstring's batch: (r_ij, rotations, semiaxes) of ``dtype``."""
    rng = np.random.default_rng(seed)
    _, rotations, semiaxes = random_pair_batch(len(RADII), seed, shape="mixed")
    direction = rng.normal(size=(len(RADII), 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r_ij = direction * np.array([0.0 if r is None else r for r in RADII])[:, None]
    for p, vector in EXACT.items():
        r_ij[p] = vector
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (r_ij, rotations, semiaxes))


def test_the_batch_covers_every_case():
    r_ij = batch()[0]
    f, _ = cutoff_function(r_ij)
    distance = np.linalg.norm(r_ij, axis=1)
    assert distance[0] == 0.0 and distance[3] == CUTOFF - WIDTH and distance[8] == CUTOFF and distance[9] > CUTOFF
    assert np.sum((f > 0) & (f < 1)) == 5 and np.sum(f == 0) == 2 and np.sum(f == 1) == 5
    np.testing.assert_allclose(SMOOTH.values(distance, CUTOFF), f, rtol=1e-12, atol=0)  # the closed form
    rows = [set(f[SEGMENT == s]) for s in range(N_SEGMENTS)]
    assert rows[1] == set() and rows[4] == {0.0} and all(0 < x < 1 for x in rows[2])


def cotangent(hypers, seed: int = 9):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(N_SEGMENTS, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def loaded(variant, problem, load_or_skip):
    """The smoothed function of a registry entry, or a skip with the registry's reason."""
    load_or_skip(variant, f"{variant.name} ({problem}, smooth cutoff)")
    if problem == "density":
        return density_function(variant.name, smooth_cutoff=SMOOTH)
    return load_variant(variant.name, problem, smooth_cutoff=SMOOTH)


def assert_derivatives_close(actual, expected, tol, label, quantities):
    """Blocks of derivatives (lists over l, or (P, 3) arrays) with the suites' scales (module docstring)."""
    for quantity in quantities:
        got, want = getattr(actual, quantity), getattr(expected, quantity)
        assert got is not None, f"{label}: no {quantity}"
        for l, (a, e) in enumerate(zip(*(x if isinstance(x, list) else [x] for x in (got, want)))):
            assert a.shape == e.shape, (label, quantity, l, a.shape, e.shape)
            values = expected.values[l] if isinstance(expected, PairGradients) else None
            floor = tol["floor"] * (np.abs(values).max() if values is not None else
                                    max(np.abs(x).max() for x in expected if x is not None))
            scale = max(np.abs(e).max(initial=0.0), floor)
            np.testing.assert_allclose(a, e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale,
                                       err_msg=f"{label} {quantity} l={l}")


def case_params(cases):
    return [pytest.param(c, HYPERS[c], id=c) for c in cases]


# ----------------------------------------------------------------- the four problems


@pytest.mark.parametrize("case,hypers", case_params(VALUE_CASES))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_pairs_are_scaled_by_the_cutoff(variant, case, hypers, load_or_skip):
    expand = loaded(variant, "pairs", load_or_skip)
    arrays = batch()
    expected = smoothed_expansion(*arrays, hypers)
    actual = expand(*arrays, hypers)
    assert_coefficients_close(actual, expected, hypers, np.float64, f"{variant.name} pairs {case}")
    f, _ = cutoff_function(arrays[0])
    assert all(not block[f == 0].any() for block in actual), "a pair at or beyond the cutoff is not zero"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_pairs_float32(variant, load_or_skip):
    expand = loaded(variant, "pairs", load_or_skip)
    hypers = make_hypers(6, "gto")
    arrays = batch(dtype=np.float32)
    expected = smoothed_expansion(*(a.astype(np.float64) for a in arrays), hypers)
    assert_coefficients_close(expand(*arrays, hypers, dtype=np.float32), expected, hypers, np.float32,
                              f"{variant.name} pairs float32")


DENSITY_NAMES = [v.name for v in DENSITY_VARIANTS]
#: the pair backends whose density is their expansion plus a segment sum (registry.density_function)
THROUGH_EXPANSION = [v for v in VARIANTS if v.name not in DENSITY_NAMES]


@pytest.mark.parametrize("case,hypers", case_params(VALUE_CASES))
@pytest.mark.parametrize("variant", list(DENSITY_VARIANTS) + THROUGH_EXPANSION,
                         ids=lambda v: v.name if v.problem == "density" else f"{v.name}-through-expansion")
def test_density_sums_the_scaled_pairs(variant, case, hypers, load_or_skip):
    density = loaded(variant, "density", load_or_skip)
    # the same without a registry name: the shell pairs' coefficients from the density, one row per pair
    unnamed = with_smooth_cutoff(density_function(variant.name), "density", SMOOTH)
    arrays = batch()
    for orthonormal in (False, True):
        expected = smoothed_density(*arrays, hypers, SEGMENT, N_SEGMENTS, orthonormal=orthonormal)
        for label, compute in (("named", density), ("one row per pair", unnamed)):
            actual = compute(*arrays, hypers, SEGMENT, N_SEGMENTS, orthonormal=orthonormal)
            assert_coefficients_close(actual, expected, hypers, np.float64,
                                      f"{variant.name} density {label} {case} orthonormal={orthonormal}",
                                      orthonormalised=False)
            assert all(not rho[[1, 4]].any() for rho in actual), "an empty or all-beyond-the-cutoff row is not zero"


@pytest.mark.parametrize("variant", [v for v in DENSITY_VARIANTS if v.name != "reference"], ids=lambda v: v.name)
def test_density_float32(variant, load_or_skip):
    """As the density suite: the variants that compute in float32 (the reference takes float64 only)."""
    density = loaded(variant, "density", load_or_skip)
    hypers = make_hypers(6, "gto")
    arrays = batch(dtype=np.float32)
    for orthonormal in (False, True):
        expected = smoothed_density(*(a.astype(np.float64) for a in arrays), hypers, SEGMENT, N_SEGMENTS,
                                    orthonormal=orthonormal)
        actual = density(*arrays, hypers, SEGMENT, N_SEGMENTS, dtype=np.float32, orthonormal=orthonormal)
        assert_coefficients_close(actual, expected, hypers, np.float32,
                                  f"{variant.name} density float32 orthonormal={orthonormal}", orthonormalised=False)


def test_density_with_no_pair_in_the_shell_is_the_variant_itself():
    """Every pair inside rc - w: the variant's own result, bit for bit (the flag passed once, to it)."""
    arrays = batch()
    inside = np.flatnonzero(cutoff_function(arrays[0])[0] == 1.0)
    hypers = make_hypers(4, "gto")
    subset = [a[inside] for a in arrays]
    for orthonormal in (False, True):
        plain = density_function("numpy_einsum")(*subset, hypers, SEGMENT[inside], N_SEGMENTS, orthonormal=orthonormal)
        smooth = density_function("numpy_einsum", smooth_cutoff=SMOOTH)(*subset, hypers, SEGMENT[inside], N_SEGMENTS,
                                                                         orthonormal=orthonormal)
        for a, b in zip(smooth, plain):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case,hypers", case_params(DERIVATIVE_CASES))
@pytest.mark.parametrize("variant", GRADIENT_VARIANTS, ids=lambda v: v.name)
def test_gradients_equal_finite_differences_of_the_smoothed_expansion(variant, case, hypers, load_or_skip):
    expand_with_gradients = loaded(variant, "gradients", load_or_skip)
    arrays = batch()
    expected = smoothed_finite_differences(*arrays, hypers)
    try:
        actual = expand_with_gradients(*arrays, hypers, semiaxes_gradients=True)
    except NotImplementedError as err:
        pytest.skip(f"{variant.name} does not compute semi-axes derivatives: {err}")
    assert isinstance(actual, PairGradients)
    assert_coefficients_close(actual.values, expected.values, hypers, np.float64, f"{variant.name} values {case}")
    assert_derivatives_close(actual, expected, FD_TOL, f"{variant.name} {case}",
                             ("positions", "orientations", "semiaxes"))
    plain = expand_with_gradients(*arrays, hypers)
    assert plain.semiaxes is None
    assert_derivatives_close(plain, expected, FD_TOL, f"{variant.name} {case} plain", ("positions", "orientations"))


@pytest.mark.parametrize("orthonormal", [False, True], ids=["raw", "orthonormal"])
@pytest.mark.parametrize("case,hypers", case_params(DERIVATIVE_CASES))
@pytest.mark.parametrize("variant", BACKWARD_VARIANTS, ids=lambda v: v.name)
def test_backward_equals_finite_differences_of_the_smoothed_density(variant, case, hypers, orthonormal,
                                                                    load_or_skip, monkeypatch):
    backward = loaded(variant, "backward", load_or_skip)
    arrays, g = batch(), cotangent(hypers)
    monkeypatch.setattr(reference_backward, "POSITION_STEP", POSITION_STEP)  # module docstring: f'' jumps
    expected = finite_difference_backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal,
                                          semiaxes_gradients=True, density=smoothed_density)
    actual = backward(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal, semiaxes_gradients=True)
    assert isinstance(actual, PairCotangents) and actual.r.dtype == np.float64
    assert_derivatives_close(actual, expected, BACKWARD_TOL, f"{variant.name} {case} orthonormal={orthonormal}",
                             ("r", "theta", "semiaxes"))
    f, _ = cutoff_function(arrays[0])
    for q in actual:
        np.testing.assert_array_equal(q[f == 0], 0.0)
    unnamed = with_smooth_cutoff(registry.get_variant(variant.name, "backward").load(), "backward", SMOOTH)
    plain = unnamed(*arrays, hypers, SEGMENT, N_SEGMENTS, g, orthonormal=orthonormal)  # shell pairs: the reference
    assert plain.semiaxes is None
    assert_derivatives_close(plain, expected._replace(semiaxes=None), BACKWARD_TOL,
                             f"{variant.name} {case} unnamed", ("r", "theta"))


# ----------------------------------------------------------------- the energy as a pair crosses the cutoff

#: how far below rc the moving pair is (negative: beyond rc), in angstrom
APPROACH = [0.5, 1e-1, 1e-2, 1e-3, 1e-4, 0.0, -1e-4, -0.2]
DIRECTION = np.array([1.0, 0.0, 0.0])  # |r| exact at every depth, rc included
CROSSING_HYPERS = {"monomial": make_hypers(4, "monomial"), "gto": make_hypers(4, "gto")}


def crossing_batch(depth: float):
    """Five pairs inside rc - w in one segment, and the moving pair at |r| = rc - depth, last."""
    r_ij, rotations, semiaxes = (a.copy() for a in random_pair_batch(6, 21, shape="general", max_distance=4.0))
    r_ij[5] = (CUTOFF - depth) * DIRECTION
    semiaxes[5] = (2.5, 2.0, 1.5)  # wide: its share near rc is not negligible on the GTO basis either
    return r_ij, rotations, semiaxes, np.zeros(6, dtype=np.int64)


def crossing_cotangent(hypers):
    rng = np.random.default_rng(2)
    return [rng.normal(size=(1, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]


def energy(density, hypers, r_ij, rotations, semiaxes, segment):
    rho = density(r_ij, rotations, semiaxes, hypers, segment, 1, orthonormal=True)
    return sum(float(np.vdot(g, x)) for g, x in zip(crossing_cotangent(hypers), rho))


def hard_share(hypers, depth):
    """The moving pair's share of the energy with the hard cutoff (the reference), and its dE/dr."""
    r_ij, rotations, semiaxes, _ = crossing_batch(depth)
    raw = reference_backward.raw_cotangent(crossing_cotangent(hypers), hypers, True)
    c = pairwise_ellip_expansion(r_ij[5:], rotations[5:], semiaxes[5:], hypers)
    share = sum(float(np.vdot(g[0], x[0])) for g, x in zip(raw, c))
    force = reference_backward.centre_density_backward(r_ij[5:], rotations[5:], semiaxes[5:], hypers,
                                                       np.zeros(1, np.int64), 1, crossing_cotangent(hypers),
                                                       orthonormal=True).r[0]
    return share, force


@pytest.mark.parametrize("basis", list(CROSSING_HYPERS))
def test_hard_cutoff_energy_jumps(basis):
    """Without the cutoff function the pair's share stays finite up to rc, then is gone (the pair list drops it)."""
    hypers = CROSSING_HYPERS[basis]
    shares = [hard_share(hypers, depth)[0] for depth in APPROACH if depth > 0]
    largest = max(abs(s) for s in shares)
    jump = abs(shares[-1])  # at rc - 1e-4: what disappears when the pair leaves the list
    assert jump > 1e-2 * largest and jump > 1e-8, (basis, shares)
    assert abs(shares[-1] - shares[-2]) < 1e-2 * jump  # converged: a jump, not a vanishing share


def _smooth_crossing(problem, compute, hypers):
    """(shares of the energy, moving pair's |dE/dr|) at each APPROACH depth, through a smoothed variant."""
    g = crossing_cotangent(hypers)
    shares, forces = [], []
    for depth in APPROACH:
        r_ij, rotations, semiaxes, segment = crossing_batch(depth)
        if problem == "density":
            shares.append(energy(compute, hypers, r_ij, rotations, semiaxes, segment)
                          - energy(compute, hypers, r_ij[:5], rotations[:5], semiaxes[:5], segment[:5]))
        elif problem == "gradients":
            out = compute(r_ij, rotations, semiaxes, hypers)
            raw = reference_backward.raw_cotangent(g, hypers, True)
            shares.append(sum(float(np.vdot(w[0], v[5])) for w, v in zip(raw, out.values)))
            forces.append(np.abs(sum(np.einsum("amn,mn->a", d[5], w[0]) for w, d in zip(raw, out.positions))).max())
        else:
            out = compute(r_ij, rotations, semiaxes, hypers, segment, 1, g, orthonormal=True)
            forces.append(np.abs(out.r[5]).max())
    return shares, forces


@pytest.mark.parametrize("basis", list(CROSSING_HYPERS))
@pytest.mark.parametrize("problem,variant", [p for p in PROBLEM_VARIANTS if p.values[0] != "pairs"])
def test_smooth_cutoff_energy_and_force_are_continuous(problem, variant, basis, load_or_skip):
    hypers = CROSSING_HYPERS[basis]
    compute = loaded(variant, problem, load_or_skip)
    shares, forces = _smooth_crossing(problem, compute, hypers)
    below = [d for d in APPROACH if d > 0]
    hard = [hard_share(hypers, d) for d in below]
    f = [SMOOTH.values(np.array([CUTOFF - d]), CUTOFF)[0] for d in below]
    if shares:  # E_smooth = f E_hard pair by pair, so the share fades as f ~ (pi d / 2w)^2 ...
        np.testing.assert_allclose(shares[:len(below)], [fi * h for fi, (h, _) in zip(f, hard)], rtol=1e-6,
                                   atol=1e-12 * max(abs(h) for h, _ in hard), err_msg=f"{variant.name} {basis}")
        assert abs(shares[len(below) - 1]) < 1e-7 * abs(hard[-1][0])
        assert shares[len(below):] == [0.0] * (len(APPROACH) - len(below)), "at or beyond rc the share must be 0"
    if forces:  # ... and the force as f' ~ pi^2 d / (2 w^2), while the hard cutoff's stays finite
        hard_force = np.abs(hard[-1][1]).max()
        assert hard_force > 0 and forces[len(below) - 1] < 1e-3 * hard_force, (forces, hard_force)
        assert all(a > b for a, b in zip(forces[1:len(below)], forces[2:len(below)])), forces
        assert forces[len(below):] == [0.0] * (len(APPROACH) - len(below)), "at or beyond rc the force must be 0"


# ----------------------------------------------------------------- contract: errors, empty batches, None


def _spoiled(kind):
    r_ij, rotations, semiaxes = (a.copy() for a in batch())
    segment, g_shape_bad = SEGMENT.copy(), False
    if kind == "nan-r_ij":
        r_ij[4, 1] = np.nan
    elif kind == "reflection":
        rotations[6] = -rotations[6]
    elif kind == "not-orthonormal":
        rotations[3] *= 1.1
    elif kind == "semiaxis":
        semiaxes[2, 0] = -1.0
    elif kind == "shape":
        semiaxes = semiaxes[:5]
    elif kind == "mix-up":
        r_ij = r_ij.astype(np.float32)
    elif kind == "segment":
        segment[7] = N_SEGMENTS
    elif kind == "complex":
        r_ij = r_ij.astype(complex)
    elif kind == "cotangent":
        g_shape_bad = True
    return r_ij, rotations, semiaxes, segment, g_shape_bad


PAIR_SPOILS = ("nan-r_ij", "reflection", "not-orthonormal", "semiaxis", "shape", "mix-up", "complex", "hypers")
#: what each problem can get wrong
SPOILS = {"pairs": PAIR_SPOILS, "gradients": PAIR_SPOILS, "density": PAIR_SPOILS + ("segment",),
          "backward": PAIR_SPOILS + ("segment", "cotangent")}


def _call(problem, function, kind):
    hypers = make_hypers(2, "gto")
    r_ij, rotations, semiaxes, segment, g_bad = _spoiled(kind)
    g = cotangent(hypers)
    if g_bad:
        g[1] = g[1][:, :2]
    if kind == "hypers":
        hypers = None
    if problem in ("pairs", "gradients"):
        return function(r_ij, rotations, semiaxes, hypers)
    if problem == "density":
        return function(r_ij, rotations, semiaxes, hypers, segment, N_SEGMENTS, orthonormal=True)
    return function(r_ij, rotations, semiaxes, hypers, segment, N_SEGMENTS, g, orthonormal=True)


@pytest.mark.parametrize("problem,variant,kind", [pytest.param(p, v, k, id=f"{p}-{v.name}-{k}")
                                                  for p, table in TABLES for v in table for k in SPOILS[p]])
def test_bad_input_gets_the_variants_own_error(problem, variant, kind, load_or_skip):
    """The smoothed variant raises what the variant raises, word for word."""
    smooth = loaded(variant, problem, load_or_skip)
    plain = registry.density_function(variant.name) if problem == "density" else registry.get_variant(
        variant.name, problem).load()
    errors = []
    for function in (plain, smooth):
        with pytest.raises((TypeError, ValueError)) as caught:
            _call(problem, function, kind)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1], f"{variant.name} {problem} {kind}: {errors}"


def test_bad_smooth_cutoff_is_named():
    with pytest.raises(TypeError, match=r"smooth_cutoff must be None or a ShiftedCosine\(width\), got float: 2.0"):
        load_variant("numpy_einsum", smooth_cutoff=2.0)
    with pytest.raises(TypeError, match=r"got dict"):
        density_function("numpy_einsum", smooth_cutoff={"width": 2.0})
    with pytest.raises(ValueError, match=r"problem must be one of .*, got 'forces'"):
        with_smooth_cutoff(load_variant("numpy_einsum"), "forces", SMOOTH)
    wide = load_variant("numpy_einsum", smooth_cutoff=ShiftedCosine(8.0))
    with pytest.raises(ValueError, match=r"width = 8.0 angstrom is larger than the cutoff 7.0"):
        wide(*batch(), make_hypers(2, "gto"))


def test_none_is_the_variant_itself():
    expand = load_variant("numpy_einsum")
    assert with_smooth_cutoff(expand, "pairs", None) is expand
    assert load_variant("numpy_einsum", smooth_cutoff=None) is expand
    smooth = load_variant("numpy_einsum", smooth_cutoff=SMOOTH)
    assert smooth.smooth_cutoff is SMOOTH and smooth.wrapped is expand
    assert smooth.__name__ == "numpy_einsum_smooth_cutoff"


@pytest.mark.parametrize("problem,variant", PROBLEM_VARIANTS)
def test_empty_batch(problem, variant, load_or_skip):
    smooth = loaded(variant, problem, load_or_skip)
    hypers = make_hypers(3, "gto")
    # the reference density takes float64 only (as in the density suite)
    for dtype in (np.float64,) if (problem, variant.name) == ("density", "reference") else (np.float64, np.float32):
        empty = (np.zeros((0, 3), dtype), np.zeros((0, 3, 3), dtype), np.zeros((0, 3), dtype))
        rows = [np.zeros((2, 2 * l + 1, n)) for l, n in enumerate(hypers.num_radial)]
        if problem == "pairs":
            blocks = smooth(*empty, hypers, dtype=dtype)
        elif problem == "density":
            out = smooth(*empty, hypers, np.zeros(0, np.int64), 2, dtype=dtype)
            assert [b.shape for b in out] == [(2, 2 * l + 1, n) for l, n in enumerate(hypers.num_radial)]
            assert all(b.dtype == np.dtype(dtype) and not b.any() for b in out), (variant.name, dtype)
            continue
        elif problem == "gradients":
            out = smooth(*empty, hypers, dtype=dtype, semiaxes_gradients=True)
            blocks = out.values + out.positions + out.orientations + out.semiaxes
        else:
            out = smooth(*empty, hypers, np.zeros(0, np.int64), 2, rows, dtype=dtype, semiaxes_gradients=True)
            blocks = list(out)
            assert all(b.shape == (0, 3) for b in blocks)
        assert all(b.dtype == np.dtype(dtype) and b.shape[0] == 0 for b in blocks), (problem, dtype)

"""How "the same numbers as the reference" is decided: one comparison for the
tests, the bench's spot checks and the GPU validation.

DESIGN.md section 5: per angular channel block, on the raw and on the
Loewdin-orthonormalised coefficients,

- float64: ``rtol = 1e-6``, ``atol = 1e-8 x`` the block's largest |value|;
- float32: ``rtol = 1e-3``, ``atol = 1e-4 x`` the block's largest |value|
  (single precision carries ~7 digits; the moment recurrence and the solid
  harmonic sums cancel up to ~3 of them at lmax 8 for needle/plate shapes).

The expected blocks are the reference's, computed in float64.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.radial import orthonormalize

TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-6, "atol_scale": 1e-8},
    np.dtype(np.float32): {"rtol": 1e-3, "atol_scale": 1e-4},
}


def assert_coefficients_close(actual, expected, hypers: ExpansionHypers, dtype, label: str = "",
                              orthonormalised: bool = True, scales=None) -> None:
    """Assert that a variant's blocks match the reference's.

    Parameters
    ----------
    actual : list over l of (P, 2l+1, num_radial[l]) NumPy arrays of ``dtype``
    expected : the reference's blocks (float64), same shapes
    hypers : ExpansionHypers
    dtype : float32 or float64, the dtype ``actual`` must have (sets the tolerances)
    label : str, prefixed to every failure message
    orthonormalised : also compare after orthonormalisation (default True)
    scales : None or list over l of floats
        Magnitudes ``atol`` scales with instead of each block's largest
        |value|: for sums over neighbours, the largest per-row sum of the
        terms' |values|, since a sum that cancels is only as accurate as
        its terms (raw comparison only).

    Raises
    ------
    AssertionError naming the block (l), the kind (raw / orthonormalised) and
    what differs (count of blocks, type, shape, dtype or values).
    """
    dtype = np.dtype(dtype)
    tol = TOLERANCES[dtype]
    if len(actual) != hypers.lmax + 1:
        raise AssertionError(f"{label}: expected {hypers.lmax + 1} blocks, got {len(actual)}")
    for l, (a, e) in enumerate(zip(actual, expected)):
        if not isinstance(a, np.ndarray):
            raise AssertionError(f"{label} l={l}: returned {type(a).__name__}, not a NumPy array")
        if a.shape != e.shape or a.dtype != dtype:
            raise AssertionError(f"{label} l={l}: got {a.shape} {a.dtype}, expected {e.shape} {dtype}")
    kinds = [("raw", actual, expected)]
    if orthonormalised:
        kinds.append(("orthonormalised", orthonormalize([a.astype(np.float64) for a in actual], hypers),
                      orthonormalize(list(expected), hypers)))
    for kind, blocks_a, blocks_e in kinds:
        for l, (a, e) in enumerate(zip(blocks_a, blocks_e)):
            scale = float(np.max(np.abs(e))) if e.size else 0.0
            if scales is not None and kind == "raw":
                scale = max(scale, float(scales[l]))
            np.testing.assert_allclose(
                a.astype(np.float64), e, rtol=tol["rtol"], atol=tol["atol_scale"] * scale,
                err_msg=f"{label} {kind} l={l} ({dtype})",
            )


def equivalence_hypers() -> list[tuple[str, ExpansionHypers]]:
    """The equivalence suite's hyper-parameter sets, with their test ids.

    lmax 0..8 x the three radial-count forms (default, an int, a per-l
    list), the GTO (sigma 1.5) and monomial bases alternating; cutoff 7.
    """
    cases = []
    for lmax in range(9):
        forms = {
            "default": None,
            "int": 2,
            "list": [(lmax - l) % 3 + (1 if l == 0 else 0) for l in range(lmax + 1)],
        }
        for i, (form, max_radial) in enumerate(forms.items()):
            basis = "gto" if (lmax + i) % 2 == 0 else "monomial"
            cases.append((f"l{lmax}-{basis}-{form}", make_hypers(lmax, basis, max_radial)))
    return cases


def float32_hypers() -> list[tuple[str, ExpansionHypers]]:
    """The float32 suite's hyper-parameter sets, with their test ids (a subset of
    :func:`equivalence_hypers`' range: lmax 0, 3, 6 and 8, both bases, the three
    radial-count forms, lmax 8 where single precision cancels most)."""
    return [
        ("l0-gto", make_hypers(0, "gto")),
        ("l3-monomial-int", make_hypers(3, "monomial", 2)),
        ("l6-gto-default", make_hypers(6, "gto")),
        ("l8-gto-list", make_hypers(8, "gto", [3, 2, 2, 1, 1, 1, 0, 0, 0])),
        ("l8-monomial-default", make_hypers(8, "monomial")),
    ]


def make_hypers(lmax: int, basis: str, max_radial=None) -> ExpansionHypers:
    """The suite's hyper-parameters: cutoff 7, GTO sigma 1.5 (no sigma for monomial)."""
    if basis == "gto":
        return ExpansionHypers(lmax, "gto", cutoff=7.0, sigma=1.5, max_radial=max_radial)
    return ExpansionHypers(lmax, "monomial", cutoff=7.0, max_radial=max_radial)

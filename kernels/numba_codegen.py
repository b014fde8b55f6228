"""Source generation for the ``numba_fused`` variant.

For one hyper-parameter set and one compute dtype this writes a small Python
module of Numba functions whose per-pair arithmetic is straight-line code: the
moment recurrence and the sparse contraction against the non-zeros of ``T_l``
are unrolled into fixed lists of multiply-adds with the table values inlined
as constants (no index tables, no branches).

Pairs are processed in blocks of ``LANES`` (a compile-time constant). Every
phase is a loop over the lanes of one block whose body is the straight-line
code of one pair, reading and writing a per-thread scratch buffer at constant
offsets ``slot * LANES + lane``; LLVM vectorises such loops across pairs (one
SIMD lane per pair). The phases of one block:

1. ``geometry``: Gaussian parameters in the ellipsoid's body frame (DESIGN.md
   section 7): ``A' = R diag(d) R^T`` with ``d_k = 1/l_k^2 (+ 1/sigma^2)``,
   covariance ``R diag(1/d) R^T``, centre, and the scale
   ``exp(-k/2) / (l1 l2 l3 sqrt(d1 d2 d3))`` (formulas of
   ``numpy_einsum.body_frame_gaussians``). Scalar: ``exp`` has no vector
   library here.
2. ``moments``: normal-law expectations ``E[x^n0 y^n1 z^n2]`` up to
   ``hypers.max_degree``, in the flat monomial order of ``tables``, by
   ``E[t] = a_k E[t - e_k] + sum_m S_km (t - e_k)_m E[t - e_k - e_m]``,
   started from ``E[0] = scale`` (the recurrence is linear, so every moment
   carries the scale and no output needs a multiplication by it).
3. ``contract_l`` per l: ``c_l[m, n] = sum_k T'_l[k, m, n] E[k]`` over the
   non-zeros of ``T'_l`` (``tables.compact_solid_harmonics``), written to the
   scratch buffer, then copied to the output rows of the block's valid pairs,
   so that every output element is written exactly once.

A driver spreads blocks over threads with ``numba.prange`` in chunks; each
chunk allocates its scratch buffer once (no allocation per pair). Each pair's
arithmetic is independent of which thread or block position computes it, so
results are bit-identical for any thread count.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from .tables import compact_solid_harmonics, monomial_exponents, num_monomials

#: Bump when the generated code changes: part of the cache key.
CODE_VERSION = 1

#: Pairs per block (SIMD lanes): 8 float64 or 16 float32 fill a 512-bit vector.
DEFAULT_LANES = {np.dtype(np.float64): 8, np.dtype(np.float32): 16}

#: Blocks per prange chunk: one scratch allocation per chunk.
BLOCKS_PER_CHUNK = 64

#: Geometry slots per lane in the scratch buffer: centre (3), covariance (6), scale.
_CENTRE = (0, 1, 2)
_COVARIANCE = {(0, 0): 3, (0, 1): 4, (0, 2): 5, (1, 1): 6, (1, 2): 7, (2, 2): 8}
_SCALE = 9
N_GEOMETRY = 10

_OPTIONS = "cache=True, nogil=True, error_model='numpy', fastmath={'contract'}"


def _cov(i: int, j: int) -> str:
    return f"S{min(i, j)}{max(i, j)}"


class _Constants:
    """Floating constants of one generated function, typed in the compute dtype.

    float64 constants are inlined as literals; float32 ones become locals
    ``kN = FT(value)`` defined once before the lane loop (a bare Python float
    would promote float32 arithmetic to float64 in Numba).
    """

    def __init__(self, dtype):
        self.single = np.dtype(dtype) == np.dtype(np.float32)
        self.names: dict[float, str] = {}

    def __call__(self, value: float) -> str:
        value = float(value)
        if not self.single:
            return repr(value)
        if value not in self.names:
            self.names[value] = f"k{len(self.names)}"
        return self.names[value]

    def definitions(self, indent: str) -> list[str]:
        return [f"{indent}{name} = FT({value!r})" for value, name in self.names.items()]


def _slot(offset: int, lanes: int) -> str:
    return f"buf[{offset * lanes} + j]"


def _geometry_function(hypers: ExpansionHypers, dtype, lanes: int) -> list[str]:
    const = _Constants(dtype)
    gto = hypers.radial_basis == "gto"
    body = [
        "p = min(p0 + j, n_pairs - 1)",
        "r0 = r[p, 0]", "r1 = r[p, 1]", "r2 = r[p, 2]",
    ]
    body += [f"R{i}{k} = rot[p, {i}, {k}]" for i in range(3) for k in range(3)]
    body += [f"s{k} = ax[p, {k}]" for k in range(3)]
    one = const(1.0)
    for k in range(3):
        body.append(f"i{k} = {one} / (s{k} * s{k})")
        body.append(f"d{k} = i{k} + {const(1.0 / hypers.sigma**2)}" if gto else f"d{k} = i{k}")
        body.append(f"v{k} = {one} / d{k}")
    for (i, j), _ in _COVARIANCE.items():
        body.append(f"{_cov(i, j)} = " + " + ".join(f"R{i}{k} * R{j}{k} * v{k}" for k in range(3)))
    if gto:
        inv_s2 = const(1.0 / hypers.sigma**2)
        # body-frame vector R^T r, then centre a = r - A'^(-1) r / sigma^2
        for k in range(3):
            body.append(f"b{k} = R0{k} * r0 + R1{k} * r1 + R2{k} * r2")
            body.append(f"w{k} = b{k} * v{k}")
        for i in range(3):
            body.append(f"a{i} = r{i} - {inv_s2} * (R{i}0 * w0 + R{i}1 * w1 + R{i}2 * w2)")
        body.append(f"kk = {inv_s2} * (b0 * w0 * i0 + b1 * w1 * i1 + b2 * w2 * i2)")
        body.append(f"scale = np.exp({const(-0.5)} * kk) / (s0 * s1 * s2 * np.sqrt(d0 * d1 * d2))")
    else:
        body += [f"a{i} = r{i}" for i in range(3)]
        body.append(f"scale = {one} / (s0 * s1 * s2 * np.sqrt(d0 * d1 * d2))")
    for i, slot in enumerate(_CENTRE):
        body.append(f"{_slot(slot, lanes)} = a{i}")
    for (i, j), slot in _COVARIANCE.items():
        body.append(f"{_slot(slot, lanes)} = {_cov(i, j)}")
    body.append(f"{_slot(_SCALE, lanes)} = scale")
    return [
        f"@njit({_OPTIONS})",
        "def geometry(r, rot, ax, p0, n_pairs, buf):",
        '    """Centre, covariance and scale of each lane\'s pair into buf."""',
        *const.definitions("    "),
        f"    for j in range({lanes}):",
        *("        " + line for line in body),
        "",
    ]


def _recurrence_step(t, index):
    """(k, parent index, [(m, multiplicity, lower index)]) with fewest lower terms."""
    best = None
    for k in range(3):
        if t[k] == 0:
            continue
        parent = list(t)
        parent[k] -= 1
        lower = []
        for m in range(3):
            if parent[m] > 0:
                q = list(parent)
                q[m] -= 1
                lower.append((m, parent[m], index[tuple(q)]))
        if best is None or len(lower) < len(best[2]):
            best = (k, index[tuple(parent)], lower)
    return best


def _moments_function(hypers: ExpansionHypers, dtype, lanes: int) -> list[str]:
    const = _Constants(dtype)
    exps = monomial_exponents(hypers.max_degree).tolist()
    index = {tuple(e): i for i, e in enumerate(exps)}
    body = [f"a{i} = {_slot(slot, lanes)}" for i, slot in enumerate(_CENTRE)]
    body += [f"{_cov(i, j)} = {_slot(slot, lanes)}" for (i, j), slot in _COVARIANCE.items()]
    body.append(f"e0 = {_slot(_SCALE, lanes)}")
    body.append(f"{_slot(N_GEOMETRY, lanes)} = e0")
    for t_index, t in enumerate(exps[1:], start=1):
        k, parent, lower = _recurrence_step(t, index)
        terms = [f"a{k} * e{parent}"]
        for m, multiplicity, low in lower:
            factor = _cov(k, m) if multiplicity == 1 else f"({_cov(k, m)} * {const(multiplicity)})"
            terms.append(f"{factor} * e{low}")
        body.append(f"e{t_index} = " + " + ".join(terms))
        body.append(f"{_slot(N_GEOMETRY + t_index, lanes)} = e{t_index}")
    return [
        f"@njit({_OPTIONS})",
        "def moments(buf):",
        '    """Scaled normal-law moments of each lane, flat monomial order, into buf."""',
        *const.definitions("    "),
        f"    for j in range({lanes}):",
        *("        " + line for line in body),
        "",
    ]


def _contract_function(l: int, table: np.ndarray, dtype, lanes: int, out_offset: int) -> list[str]:
    const = _Constants(dtype)
    n_monomials, n_m, n_n = table.shape
    flat = table.reshape(n_monomials, n_m * n_n)
    used = [k for k in range(n_monomials) if np.any(flat[k] != 0)]
    body = [f"e{k} = {_slot(N_GEOMETRY + k, lanes)}" for k in used]
    for c in range(n_m * n_n):
        terms = [f"{const(flat[k, c])} * e{k}" for k in used if flat[k, c] != 0]
        body.append(f"{_slot(out_offset + c, lanes)} = " + (" + ".join(terms) if terms else const(0.0)))
    return [
        f"@njit({_OPTIONS})",
        f"def contract_{l}(buf, out, p0, n_valid):",
        f'    """Channel l={l}: (2l+1) x n_l = {n_m} x {n_n} coefficients of each lane into out."""',
        *const.definitions("    "),
        f"    for j in range({lanes}):",
        *("        " + line for line in body),
        "    for j in range(n_valid):",
        f"        for c in range({n_m * n_n}):",
        f"            out[p0 + j, c] = buf[{out_offset * lanes} + c * {lanes} + j]",
        "",
    ]


def _driver_function(hypers: ExpansionHypers, lanes: int, scratch: int) -> list[str]:
    outs = ", ".join(f"out{l}" for l in range(hypers.lmax + 1))
    calls = [f"contract_{l}(buf, out{l}, p0, n_valid)" for l in range(hypers.lmax + 1)]
    return [
        "@njit(cache=True, nogil=True, parallel=True)",
        f"def expand_pairs(r, rot, ax, {outs}):",
        '    """All pairs; out{l} are (P, (2l+1) n_l) views of the outputs."""',
        "    n_pairs = r.shape[0]",
        f"    n_blocks = (n_pairs + {lanes - 1}) // {lanes}",
        f"    n_chunks = (n_blocks + {BLOCKS_PER_CHUNK - 1}) // {BLOCKS_PER_CHUNK}",
        "    for chunk in prange(n_chunks):",
        f"        buf = np.empty({scratch}, dtype=FT)",
        f"        for block in range(chunk * {BLOCKS_PER_CHUNK}, min((chunk + 1) * {BLOCKS_PER_CHUNK}, n_blocks)):",
        f"            p0 = block * {lanes}",
        f"            n_valid = min({lanes}, n_pairs - p0)",
        "            geometry(r, rot, ax, p0, n_pairs, buf)",
        "            moments(buf)",
        *("            " + call for call in calls),
        "",
    ]


def generate_source(hypers: ExpansionHypers, dtype, lanes: int | None = None) -> str:
    """Python source of the specialised kernel module.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64, the compute dtype
    lanes : pairs per block (default ``DEFAULT_LANES[dtype]``)

    Returns
    -------
    str: a module defining ``expand_pairs(r (P,3), rot (P,3,3), ax (P,3),
    out0, ..., out_lmax)`` with ``out_l`` C-contiguous ``(P, (2l+1) n_l)``
    arrays of ``dtype``, filled in place.
    """
    dtype = np.dtype(dtype)
    lanes = DEFAULT_LANES[dtype] if lanes is None else int(lanes)
    tables = compact_solid_harmonics(hypers)
    out_offset = N_GEOMETRY + num_monomials(hypers.max_degree)
    widest = max(t.shape[1] * t.shape[2] for t in tables)
    scratch = (out_offset + widest) * lanes
    lines = [
        f'"""numba_fused kernel generated for {hypers!r}, {dtype}, {lanes} lanes (code version {CODE_VERSION})."""',
        "import numpy as np",
        "from numba import njit, prange",
        "",
        f"FT = np.{dtype.name}",
        "",
    ]
    lines += _geometry_function(hypers, dtype, lanes)
    lines += _moments_function(hypers, dtype, lanes)
    for l, table in enumerate(tables):
        lines += _contract_function(l, table, dtype, lanes, out_offset)
    lines += _driver_function(hypers, lanes, scratch)
    return "\n".join(lines) + "\n"


def kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None) -> str:
    """Hash naming the generated module: hyper-parameters that shape the
    kernel, dtype, lanes and ``CODE_VERSION`` (rcond/tol do not enter)."""
    dtype = np.dtype(dtype)
    lanes = DEFAULT_LANES[dtype] if lanes is None else int(lanes)
    fields = {
        "lmax": hypers.lmax, "basis": hypers.radial_basis, "sigma": hypers.sigma,
        "num_radial": list(hypers.num_radial), "dtype": dtype.name, "lanes": lanes,
        "version": CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

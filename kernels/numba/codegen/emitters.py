"""Code generation for the ``numba_fused`` variant.

For one hyper-parameter set, dtype and lane count this builds a kernel whose
per-pair arithmetic is straight-line code specialised to the hyper-parameters:
the moment recurrence and the sparse contraction against the non-zeros of
``T_l`` are unrolled into fixed lists of fused multiply-adds with the table
values inlined as constants (no index tables, no branches).

Two layers:

- ``generate_source`` writes a tiny Python module (the driver): a
  ``numba.njit(parallel=True, cache=True)`` function ``expand_pairs`` that
  spreads blocks of ``LANES`` pairs over threads with ``prange`` and calls
  the block intrinsic once per block. It lives in a real file so Numba's
  disk cache can key on it (see ``numba_fused.kernel_module``).
- ``block_intrinsic`` emits the block's LLVM IR directly (``numba.extending.
  intrinsic``): every quantity is an SSA vector of ``LANES`` values, one SIMD
  lane per pair, so SIMD across pairs is explicit. Emitting IR instead of
  Python statements matters for compile time: Numba's typing of thousands
  of generated Python statements took minutes at lmax 10.

Per block of pairs:

1. gather the inputs (AoS rows into lane vectors) and screen them with
   ``check_pair_arrays``'s value tests (``_emit_screen``);
2. geometry in the ellipsoid's body frame (DESIGN.md section 7):
   ``d_k = 1/l_k^2 (+ 1/sigma^2)``, covariance ``R diag(1/d) R^T``, centre,
   scale ``exp(-k/2) / (l1 l2 l3 sqrt(d1 d2 d3))`` (the formulas of
   ``numpy_einsum.body_frame_gaussians``);
3. moments ``E[x^n0 y^n1 z^n2]`` up to ``hypers.max_degree`` by
   ``E[t] = a_k E[t - e_k] + sum_m S_km (t - e_k)_m E[t - e_k - e_m]``,
   started from ``E[0] = scale`` (the recurrence is linear, so every moment
   carries the scale and no output needs a multiplication by it);
4. per l, ``c_l[m, n] = sum_k T'_l[k, m, n] E[k]`` over the non-zeros of
   ``T'_l = tables.compact_solid_harmonics``, transposed in registers and
   stored once into each pair's output row. Large kernels put each l in its
   own out-of-line function reading the moments from the stack
   (``split_contraction``), which keeps LLVM's compile time low.

No heap allocation happens per pair or per block. Every lane runs the same
instructions whatever its block or thread, so results are bit-identical for
any thread count and any position of a pair in the batch.

The centre density (``numba_density``) has its own generated module
(``generate_density_source``, ``density_intrinsic``): the same screen and
moment recurrence per block of pairs of one segment (inputs loaded
contiguously, geometry rearranged to 3 divisions and an inline exp,
``_emit_density_geometry``), but the moments are summed per segment in SIMD
accumulators and contracted with ``T'_l`` once per segment (the contraction
is linear), SIMD across a group of segments.

Machine facts and thresholds, each chosen in one place and part of the
cache key (``kernel_key``): the lane counts (``lane_choice``: from the CPU,
or ``EINSUM_WORKBENCH_LANES``) and the screen's thresholds
(``screen_limits``: from ``reference.validation``). The same tables drive
the generic kernels (``numba_generic``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import NamedTuple

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.limits import ORTHONORMAL_TOL

from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents

#: Bump when the generated code changes: part of the cache key.
CODE_VERSION = 11

#: Pairs per block (SIMD lanes) with 256-bit vectors; see ``default_lanes`` for the per-machine choice.
BASE_LANES = {np.dtype(np.float64): 4, np.dtype(np.float32): 8}
DEFAULT_LANES = BASE_LANES  # the former name (256-bit counts)

#: Environment variable overriding the lane counts: ``8`` (float64 8, float32 16 lanes) or
#: ``float64=8,float32=8`` (either entry may be left out).
LANES_ENV = "EINSUM_WORKBENCH_LANES"

#: CPUs (LLVM names) on which the pair kernel measured faster with 512-bit vectors (8 float64
#: lanes) than with 256-bit ones: AMD Zen 5 (0.035 against 0.037 us per pair, issue 11). Not on
#: the Intel Xeon Emerald Rapids where this was written (0.080 against 0.086 us per pair) nor
#: on Zen 4 (double-pumped AVX-512).
WIDE_PAIR_KERNEL_CPUS = frozenset({"znver5"})

#: Blocks a thread takes at a time (dynamic scheduling of prange, set by the caller:
#: ``numba.set_parallel_chunksize`` inside a cached function defeats the cache).
BLOCKS_PER_CHUNK = 256

#: Largest contraction (non-zeros x lanes) emitted inline; lmax 6 default radial
#: counts give 362 x 8 = 2896 in float32.
INLINE_LIMIT = 3000

#: Independent entries (i <= j) of the symmetric covariance.
_COVARIANCE = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _checked_lanes(dtype, lanes) -> int:
    """The lane count: ``default_lanes(dtype)``, or a given power of two >= 2
    (the in-register transpose of ``store_rows`` halves groups recursively)."""
    if np.dtype(dtype) not in BASE_LANES:
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if lanes is None:
        return default_lanes(dtype, "pairs")
    if isinstance(lanes, bool) or int(lanes) != lanes or lanes < 2 or int(lanes) & (int(lanes) - 1):
        raise ValueError(f"lanes must be a power of two >= 2, got {lanes!r}")
    return int(lanes)


# ---------------------------------------------------------------------------
# Machine facts: lane counts, chosen per machine.

def host_cpu() -> tuple[str, str]:
    """(CPU name, comma-separated features) of Numba's code-generation target here.

    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set (as Numba's code
    generator reads them), else the host's, from llvmlite.
    """
    from numba.core import config

    name, features = config.CPU_NAME, config.CPU_FEATURES
    if name is None or features is None:
        import llvmlite.binding as llvm

        name = name if name is not None else llvm.get_host_cpu_name()
        features = features if features is not None else llvm.get_host_cpu_features().flatten()
    return str(name), str(features)


def _lanes_override(dtype) -> int | None:
    """The lane count ``EINSUM_WORKBENCH_LANES`` sets for ``dtype``, or None."""
    import os

    text = os.environ.get(LANES_ENV, "").strip()
    if not text:
        return None
    dtype = np.dtype(dtype)
    try:
        if "=" not in text:
            lanes = int(text) * (2 if dtype == np.dtype(np.float32) else 1)
        else:
            entries = dict(item.split("=", 1) for item in text.replace(" ", "").split(",") if item)
            unknown = set(entries) - {"float64", "float32"}
            if unknown:
                raise ValueError(f"unknown dtype {sorted(unknown)}")
            if dtype.name not in entries:
                return None
            lanes = int(entries[dtype.name])
    except ValueError as err:
        raise ValueError(f"{LANES_ENV}={text!r}: expected e.g. '8' or 'float64=8,float32=16' ({err})") from None
    if lanes < 2 or lanes & (lanes - 1):
        raise ValueError(f"{LANES_ENV}={text!r}: lane counts must be powers of two >= 2, got {lanes}")
    return lanes


def lane_choice(dtype, kind: str = "pairs") -> dict:
    """The lane count of ``kind``'s kernel (``"pairs"`` or ``"density"``) for ``dtype`` here, and why.

    Returns ``{"lanes", "source", "cpu", "vector_bits"}``; ``source`` is
    ``EINSUM_WORKBENCH_LANES`` when that variable sets it, else the rule
    applied to the CPU's features:

    - density kernel: one vector register of the widest kind the target has
      (512 bits with AVX-512F: 8 float64 / 16 float32 lanes; else 4 / 8);
    - pair kernel: 512-bit only on the CPUs of ``WIDE_PAIR_KERNEL_CPUS``
      (where it measured faster), else 256-bit (4 / 8 lanes), AVX-512 or not.

    The lane count is part of every kernel's cache key (``kernel_key``);
    benches record this dict with their results.
    """
    dtype = np.dtype(dtype)
    if dtype not in BASE_LANES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if kind not in ("pairs", "density"):
        raise ValueError(f"kind must be 'pairs' or 'density', got {kind!r}")
    name, features = host_cpu()
    bits = host_vector_bits()
    override = _lanes_override(dtype)
    if override is not None:
        return {"lanes": override, "source": LANES_ENV, "cpu": name, "vector_bits": bits}
    if kind == "density":
        rule = f"density kernel: one {bits}-bit register"
        lanes = bits // (8 * dtype.itemsize)
    elif bits == 512 and name in WIDE_PAIR_KERNEL_CPUS:
        rule, lanes = f"pair kernel: 512-bit on {name}", 512 // (8 * dtype.itemsize)
    else:
        rule = f"pair kernel: 256-bit ({'AVX-512 measured slower here' if bits == 512 else 'no AVX-512'})"
        lanes = BASE_LANES[dtype]
    return {"lanes": lanes, "source": rule, "cpu": name, "vector_bits": bits}


def default_lanes(dtype, kind: str = "pairs") -> int:
    """``lane_choice(dtype, kind)["lanes"]``."""
    return lane_choice(dtype, kind)["lanes"]


# ---------------------------------------------------------------------------
# The input screen's thresholds (one place).

class ScreenLimits(NamedTuple):
    """Thresholds of the compiled input screens (``_emit_screen``, ``numba_generic._lane``).

    A pair passes when its values are finite, ``semiaxis_min < l_k < semiaxis_max``
    (and ``l_k > 0``), ``|r| < r_max``, ``max |R R^T - I| <= orthonormal_tol``
    and ``det R >= 0``; otherwise the caller hands the batch to
    ``check_pair_arrays``, which raises the canonical error (or finds the
    pair valid: the screen may flag more than it rejects, never less).
    """

    orthonormal_tol: float
    semiaxis_min: float = 0.0
    semiaxis_max: float = float("inf")
    r_max: float = float("inf")


def _validation_ranges(dtype, hypers: ExpansionHypers | None) -> tuple[float, float, float]:
    """(semi-axis min, semi-axis max, |r| max) that ``check_pair_arrays`` admits in ``dtype``.

    Read from ``reference.validation.PAIR_LIMITS[dtype]`` (inclusive bounds;
    with ``hypers`` of the GTO basis the semi-axis maximum is also
    ``semiaxis_per_sigma_max * sigma``); (0, inf, inf), the screen of before,
    where it is absent. The one place to rewire if those names change.
    """
    from einsum_workbench.reference import validation

    limits = getattr(validation, "PAIR_LIMITS", {}).get(np.dtype(dtype))
    if limits is None:
        return 0.0, float("inf"), float("inf")
    high = float(limits.semiaxis_max)
    if hypers is not None and hypers.radial_basis == "gto":
        high = min(high, float(limits.semiaxis_per_sigma_max) * float(hypers.sigma))
    return float(limits.semiaxis_min), high, float(limits.distance_max)


def screen_limits(dtype, hypers: ExpansionHypers | None = None) -> ScreenLimits:
    """The compiled screens' thresholds for ``dtype`` (and ``hypers``), from ``reference.validation``.

    The one place they are read: ``ORTHONORMAL_TOL`` and the ranges of
    ``PAIR_LIMITS`` (``_validation_ranges``). They shape the generated code
    and are part of ``kernel_key``. The screen flags every pair outside the
    open ranges shrunk by 8 units of rounding, so a pair at an edge goes to
    ``check_pair_arrays``, which decides (a superset of what it rejects).
    Hyper-parameter limits (lmax, degree, sigma, cutoff) are checked once
    per call by ``check_hypers``, not per pair.
    """
    dtype = np.dtype(dtype)
    low, high, distance = _validation_ranges(dtype, hypers)
    return ScreenLimits(orthonormal_tol=float(ORTHONORMAL_TOL[dtype]), semiaxis_min=low, semiaxis_max=high,
                        r_max=distance)


@functools.lru_cache(maxsize=128)
def screen_limit_array(dtype, hypers: ExpansionHypers | None = None) -> np.ndarray:
    """``screen_limits(dtype, hypers)`` for the generic kernels, which screen in float64:
    (orthonormal tolerance, semi-axis min, semi-axis max, |r|^2 max), each
    tightened by 8 units of ``dtype``'s rounding so that a pair that
    ``check_pair_arrays`` (computing in ``dtype``) could reject is always flagged.
    Read-only, cached."""
    dtype = np.dtype(dtype)
    limits = screen_limits(dtype, hypers)
    eps = 8 * float(np.finfo(dtype).eps)
    array = np.array([
        limits.orthonormal_tol - eps,
        limits.semiaxis_min * (1 + eps),
        limits.semiaxis_max * (1 - eps),
        (limits.r_max * (1 - eps)) ** 2,
    ], dtype=np.float64)
    array.setflags(write=False)
    return array


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


def _moment_plan(max_degree: int):
    """Straight-line recurrence: per monomial t >= 1, (k, parent, [(m, multiplicity, lower)])."""
    exps = monomial_exponents(max_degree).tolist()
    index = {tuple(e): i for i, e in enumerate(exps)}
    return [_recurrence_step(t, index) for t in exps[1:]]


def _contraction_plan(hypers: ExpansionHypers):
    """Per l, per output column c = m n_l + n: the non-zeros [(monomial, value)] of T'_l."""
    plan = []
    for table in compact_solid_harmonics(hypers):
        flat = table.reshape(table.shape[0], -1)
        plan.append([
            [(int(k), float(flat[k, c])) for k in np.flatnonzero(flat[:, c])]
            for c in range(flat.shape[1])
        ])
    return plan


class _VectorBuilder:
    """Arithmetic on SSA vectors of ``lanes`` values (one lane per pair) in LLVM IR."""

    def __init__(self, builder, dtype, lanes: int):
        from llvmlite import ir
        from numba.core import cgutils

        self.ir, self.b, self.lanes = ir, builder, lanes
        self.scalar = ir.DoubleType() if np.dtype(dtype) == np.dtype(np.float64) else ir.FloatType()
        self.itemsize = np.dtype(dtype).itemsize
        self.vector = ir.VectorType(self.scalar, lanes)
        suffix = f"v{lanes}{'f64' if self.itemsize == 8 else 'f32'}"

        def intrinsic(name, arity):
            kind = ir.FunctionType(self.vector, [self.vector] * arity)
            return cgutils.get_or_insert_function(builder.module, kind, f"llvm.{name}.{suffix}")

        self._fma, self._sqrt, self._exp = intrinsic("fma", 3), intrinsic("sqrt", 1), intrinsic("exp", 1)

    def splat(self, value):
        ir = self.ir
        return ir.Constant(self.vector, [ir.Constant(self.scalar, float(value))] * self.lanes)

    def mul(self, a, b):
        return self.b.fmul(a, b)

    def add(self, a, b):
        return self.b.fadd(a, b)

    def sub(self, a, b):
        return self.b.fsub(a, b)

    def div(self, a, b):
        return self.b.fdiv(a, b)

    def fma(self, a, b, c):
        """a * b + c with one rounding (the same on every lane and every block)."""
        return self.b.call(self._fma, [a, b, c])

    def sqrt(self, a):
        return self.b.call(self._sqrt, [a])

    def exp(self, a):
        return self.b.call(self._exp, [a])

    def dot3(self, pairs):
        """sum of the three products a * b of ``pairs``."""
        (a0, b0), (a1, b1), (a2, b2) = pairs
        return self.fma(a2, b2, self.fma(a1, b1, self.mul(a0, b0)))

    def gather_rows(self, data, rows, width: int, column: int):
        """Vector of ``data[row * width + column]`` over the lanes' rows."""
        ir = self.ir
        value = ir.Constant(self.vector, ir.Undefined)
        for j, row in enumerate(rows):
            index = self.b.add(self.b.mul(row, ir.Constant(row.type, width)), ir.Constant(row.type, column))
            element = self.b.load(self.b.gep(data, [index], inbounds=True), align=self.itemsize)
            value = self.b.insert_element(value, element, ir.Constant(ir.IntType(32), j))
        return value

    def scatter_rows(self, value, data, first_row, width: int, column: int):
        """``data[(first_row + j) * width + column] = value[j]`` for every lane j."""
        ir = self.ir
        row0 = self.b.mul(first_row, ir.Constant(first_row.type, width))
        for j in range(self.lanes):
            index = self.b.add(row0, ir.Constant(first_row.type, j * width + column))
            element = self.b.extract_element(value, ir.Constant(ir.IntType(32), j))
            self.b.store(element, self.b.gep(data, [index], inbounds=True), align=self.itemsize)

    def _lane_row(self, columns, j: int):
        """Vector (columns[0][j], columns[1][j], ...) by a tree of shuffles."""
        ir = self.ir
        level = [self.b.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 2), [j, self.lanes + j]))
                 for a, b in zip(columns[0::2], columns[1::2])]
        while len(level) > 1:
            size = 2 * level[0].type.count
            mask = ir.Constant(ir.VectorType(ir.IntType(32), size), list(range(size)))
            level = [self.b.shuffle_vector(a, b, mask) for a, b in zip(level[0::2], level[1::2])]
        return level[0]

    def select(self, mask, a, b):
        """Lane-wise ``mask ? a : b`` (``mask`` a vector of ``lanes`` i1)."""
        return self.b.select(mask, a, b)

    def lane_mask(self, flags):
        """Vector of ``lanes`` i1 from one i1 per lane."""
        ir = self.ir
        mask = ir.Constant(ir.VectorType(ir.IntType(1), self.lanes), ir.Undefined)
        for j, flag in enumerate(flags):
            mask = self.b.insert_element(mask, flag, ir.Constant(ir.IntType(32), j))
        return mask

    def sum_lanes(self, group):
        """Vector whose lane c is the sum of the lanes of ``group[c]`` (len(group) == lanes).

        A transpose-and-add tree: at each level adjacent vectors are paired,
        every column keeps half as many partial sums (partial i plus partial
        i + half), so ``lanes`` columns cost 2 (lanes - 1) shuffles and
        lanes - 1 additions. The order of the additions is fixed
        (lanes 4: (x0 + x2) + (x1 + x3)), whatever the data.
        """
        ir = self.ir
        lanes = self.lanes
        level, chunk = list(group), lanes
        while len(level) > 1:
            columns, half = lanes // chunk, chunk // 2
            low = [c * chunk + i for c in range(columns) for i in range(half)]
            low = low + [lanes + index for index in low]
            kind = ir.VectorType(ir.IntType(32), lanes)
            lo_mask = ir.Constant(kind, low)
            hi_mask = ir.Constant(kind, [index + half for index in low])
            level = [self.add(self.b.shuffle_vector(a, b, lo_mask), self.b.shuffle_vector(a, b, hi_mask))
                     for a, b in zip(level[0::2], level[1::2])]
            chunk = half
        return level[0]

    def store_rows(self, values, data, first_row):
        """Write lane j of ``values[c]`` to ``data[(first_row + j) * C + c]`` (C = len(values)).

        Groups of ``lanes`` columns are transposed in registers and written
        as one vector per pair row; the remaining columns lane by lane.
        """
        ir = self.ir
        width = len(values)
        row0 = self.b.mul(first_row, ir.Constant(first_row.type, width))
        full = width - width % self.lanes
        for start in range(0, full, self.lanes):
            group = values[start:start + self.lanes]
            for j in range(self.lanes):
                index = self.b.add(row0, ir.Constant(first_row.type, j * width + start))
                ptr = self.b.bitcast(self.b.gep(data, [index], inbounds=True), self.vector.as_pointer())
                self.b.store(self._lane_row(group, j), ptr, align=self.itemsize)
        for c in range(full, width):
            self.scatter_rows(values[c], data, first_row, width, c)


def _gather_inputs(v: _VectorBuilder, r, rot, ax, rows):
    """Vectors of the lanes' r (3), rotation rows R[i][k] (3 x 3) and semi-axes (3)."""
    rv = [v.gather_rows(r, rows, 3, i) for i in range(3)]
    R = [[v.gather_rows(rot, rows, 9, 3 * i + k) for k in range(3)] for i in range(3)]
    s = [v.gather_rows(ax, rows, 3, k) for k in range(3)]
    return rv, R, s


def _gather_block(v: _VectorBuilder, context, signature, args):
    """The lane vectors (r, R, s) of one block of a pair intrinsic ``(r, rot, ax, p0, n_pairs, ...)``:
    pairs p0 .. p0 + lanes - 1, lanes past ``n_pairs`` repeating the last pair."""
    from llvmlite import ir
    from numba.core import cgutils

    builder = v.b
    r, rot, ax = (
        cgutils.create_struct_proxy(t)(context, builder, value=a).data
        for t, a in zip(signature.args[:3], args[:3])
    )
    p0, n_pairs = args[3], args[4]
    last = builder.sub(n_pairs, ir.Constant(n_pairs.type, 1))
    rows = []
    for j in range(v.lanes):
        row = builder.add(p0, ir.Constant(p0.type, j))
        rows.append(builder.select(builder.icmp_signed("<", row, n_pairs), row, last))
    return _gather_inputs(v, r, rot, ax, rows)


def _emit_screen(v: _VectorBuilder, rv, R, s, limits: ScreenLimits):
    """i1: true when some lane's pair could fail ``check_pair_arrays``'s value tests.

    The same tests, branch-free, with the thresholds of ``screen_limits``:
    all 15 inputs finite (their sum minus itself is 0 only when the sum is
    finite; an overflow merely sends the batch to the canonical check),
    semi-axes > 0, |R R^T - I| <= tol entry-wise, det R >= 0; where
    ``limits`` sets them, semi-axes inside (min, max) and |r|^2 < r_max^2
    (bounds tightened by 8 units of rounding, as ``screen_limit_array``).
    """
    b, ir = v.b, v.ir
    tol = limits.orthonormal_tol
    eps = 8 * (2.0 ** -52 if v.itemsize == 8 else 2.0 ** -23)
    total = rv[0]
    for value in rv[1:] + s + [x for row in R for x in row]:
        total = v.add(total, value)
    zero = v.splat(0.0)
    fine = b.fcmp_ordered("==", v.sub(total, total), zero)
    for k in range(3):
        fine = b.and_(fine, b.fcmp_ordered(">", s[k], zero))
        if limits.semiaxis_min > 0:
            fine = b.and_(fine, b.fcmp_ordered(">", s[k], v.splat(limits.semiaxis_min * (1 + eps))))
        if limits.semiaxis_max < float("inf"):
            fine = b.and_(fine, b.fcmp_ordered("<", s[k], v.splat(limits.semiaxis_max * (1 - eps))))
    if limits.r_max < float("inf"):
        norm2 = v.dot3([(rv[k], rv[k]) for k in range(3)])
        fine = b.and_(fine, b.fcmp_ordered("<", norm2, v.splat((limits.r_max * (1 - eps)) ** 2)))
    for i, j in _COVARIANCE:
        gram = v.dot3([(R[i][k], R[j][k]) for k in range(3)])
        deviation = v.sub(gram, v.splat(1.0 if i == j else 0.0))
        fine = b.and_(fine, b.fcmp_ordered("<=", deviation, v.splat(tol)))
        fine = b.and_(fine, b.fcmp_ordered(">=", deviation, v.splat(-tol)))
    minors = [v.sub(v.mul(R[1][1], R[2][2]), v.mul(R[1][2], R[2][1])),
              v.sub(v.mul(R[1][2], R[2][0]), v.mul(R[1][0], R[2][2])),
              v.sub(v.mul(R[1][0], R[2][1]), v.mul(R[1][1], R[2][0]))]
    det = v.dot3([(R[0][k], minors[k]) for k in range(3)])
    fine = b.and_(fine, b.fcmp_ordered(">=", det, zero))
    mask = b.bitcast(fine, ir.IntType(v.lanes))
    return b.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(v.lanes), (1 << v.lanes) - 1))


def _emit_geometry(v: _VectorBuilder, hypers: ExpansionHypers, rv, R, s):
    """Centre (3), covariance {(i, j): S_ij} and scale of each lane's pair.

    Body-frame formulas of ``numpy_einsum.body_frame_gaussians``:
    ``d_k = 1/l_k^2 (+ 1/sigma^2)``, ``S = R diag(1/d) R^T``,
    ``a = r - R (R^T r / d) / sigma^2``, ``k = sum_k (R^T r)_k^2 / (l_k^2 d_k) / sigma^2``,
    ``scale = exp(-k/2) / (l1 l2 l3 sqrt(d1 d2 d3))``.
    """
    one = v.splat(1.0)
    inv_l2 = [v.div(one, v.mul(s[k], s[k])) for k in range(3)]
    gto = hypers.radial_basis == "gto"
    inv_s2 = v.splat(1.0 / hypers.sigma**2) if gto else None
    d = [v.add(inv_l2[k], inv_s2) for k in range(3)] if gto else inv_l2
    inv_d = [v.div(one, d[k]) for k in range(3)]
    cov = {
        (i, j): v.dot3([(v.mul(R[i][k], R[j][k]), inv_d[k]) for k in range(3)])
        for (i, j) in _COVARIANCE
    }
    norm = v.mul(v.mul(v.mul(s[0], s[1]), s[2]), v.sqrt(v.mul(v.mul(d[0], d[1]), d[2])))
    if gto:
        body = [v.dot3([(R[0][k], rv[0]), (R[1][k], rv[1]), (R[2][k], rv[2])]) for k in range(3)]
        w = [v.mul(body[k], inv_d[k]) for k in range(3)]
        centre = [v.sub(rv[i], v.mul(inv_s2, v.dot3([(R[i][k], w[k]) for k in range(3)]))) for i in range(3)]
        kk = v.mul(inv_s2, v.dot3([(v.mul(body[k], w[k]), inv_l2[k]) for k in range(3)]))
        scale = v.div(v.exp(v.mul(v.splat(-0.5), kk)), norm)
    else:
        centre = rv
        scale = v.div(one, norm)
    return centre, cov, scale


def _emit_moments(v: _VectorBuilder, moment_plan, centre, cov, scale, consume=None):
    """Scaled moments E[t] (flat monomial order) by the unrolled recurrence.

    ``consume(t, E[t])``, if given, is called as soon as each moment is
    emitted (the density kernel accumulates it there, so that a moment's
    live range ends with its last use in the recurrence).
    """
    scaled = {}

    def cov_times(k, m, multiplicity):
        key = (min(k, m), max(k, m), multiplicity)
        if key not in scaled:
            base = cov[key[:2]]
            scaled[key] = base if multiplicity == 1 else v.mul(base, v.splat(multiplicity))
        return scaled[key]

    moments = [scale]
    if consume is not None:
        consume(0, scale)
    for k, parent, lower in moment_plan:
        value = v.mul(centre[k], moments[parent])
        for m, multiplicity, low in lower:
            value = v.fma(cov_times(k, m, multiplicity), moments[low], value)
        moments.append(value)
        if consume is not None:
            consume(len(moments) - 1, value)
    return moments


def _emit_contraction(v: _VectorBuilder, columns, moments):
    """Per output column: sum over the non-zeros of T'_l of value * moment."""
    values = []
    for terms in columns:
        if not terms:
            values.append(v.splat(0.0))
            continue
        value = v.mul(v.splat(terms[0][1]), moments[terms[0][0]])
        for k, coefficient in terms[1:]:
            value = v.fma(v.splat(coefficient), moments[k], value)
        values.append(value)
    return values


def split_contraction(hypers: ExpansionHypers, lanes: int) -> bool:
    """Whether the contraction goes to one out-of-line function per l.

    Inline (one straight-line block) is ~20% faster at lmax 6, but LLVM's
    compile time grows faster than linearly with the block, so large kernels
    (more than ``INLINE_LIMIT`` non-zero multiply-adds x lanes) are split.
    """
    nonzeros = sum(len(terms) for columns in _contraction_plan(hypers) for terms in columns)
    return nonzeros * lanes > INLINE_LIMIT


def block_intrinsic(hypers: ExpansionHypers, dtype, lanes: int, split: bool | None = None):
    """Numba intrinsic ``expand_block(r, rot, ax, p0, n_pairs, outs)``: one block of pairs.

    Emits LLVM IR directly: every quantity is an SSA vector of ``lanes``
    values, one lane per pair ``p0 + j`` (clamped to the last pair, whose
    result the padded outputs absorb). Geometry, the unrolled moment
    recurrence and the unrolled sparse contraction use explicit fused
    multiply-adds; each lane's coefficients go straight to its row of each
    flat output ``outs[l]`` (C order, (2l+1) n_l values per row). Emitting IR
    avoids Numba typing thousands of Python statements (most of the compile
    time of Python-source straight-line code) and makes SIMD across pairs
    explicit instead of leaving it to the loop vectoriser.

    It also screens the block's inputs with ``check_pair_arrays``'s value
    tests (``_emit_screen``) and returns 1 if some pair could fail them, else
    0, so that valid input needs no separate validation pass.

    ``r``, ``rot``, ``ax`` must be C-contiguous; ``outs`` a tuple of flat
    C-contiguous arrays with rows for ``p0 + lanes`` pairs.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.np import numpy_support
    from numba.extending import intrinsic

    moment_plan = _moment_plan(hypers.max_degree)
    contraction_plan = _contraction_plan(hypers)
    limits = screen_limits(dtype, hypers)
    split = split_contraction(hypers, lanes) if split is None else bool(split)
    prefix = f"numba_fused_{kernel_key(hypers, dtype, lanes)}"

    def contract_function(module, l: int, columns):
        """``void contract_l(<lanes x T>* moments, T* out, i64 p0)``, defined once per module.

        Kept out of line (noinline): one function per l keeps each body small,
        which bounds LLVM's compile time at large lmax (it grows faster than
        linearly with the size of one straight-line block).
        """
        name = f"{prefix}_contract_{l}"
        if name in module.globals:
            return module.globals[name]
        scalar = ir.DoubleType() if np.dtype(dtype) == np.dtype(np.float64) else ir.FloatType()
        vector = ir.VectorType(scalar, lanes)
        kind = ir.FunctionType(ir.VoidType(), [vector.as_pointer(), scalar.as_pointer(), ir.IntType(64)])
        function = ir.Function(module, kind, name=name)
        function.linkage = "internal"
        function.attributes.add("noinline")
        function.attributes.add("nounwind")
        builder = ir.IRBuilder(function.append_basic_block("entry"))
        v = _VectorBuilder(builder, np.dtype(dtype), lanes)
        moments_ptr, out, p0 = function.args
        used = sorted({k for terms in columns for k, _ in terms})
        moments = {
            k: builder.load(builder.gep(moments_ptr, [ir.Constant(ir.IntType(64), k)], inbounds=True),
                            align=v.itemsize)
            for k in used
        }
        v.store_rows(_emit_contraction(v, columns, moments), out, p0)
        builder.ret_void()
        return function

    def codegen(context, builder, signature, args):
        outs_t = signature.args[5]
        p0 = args[3]
        v = _VectorBuilder(builder, np.dtype(dtype), lanes)
        rv, R, s = _gather_block(v, context, signature, args)
        suspect = builder.zext(_emit_screen(v, rv, R, s, limits), ir.IntType(64))
        centre, cov, scale = _emit_geometry(v, hypers, rv, R, s)
        moments = _emit_moments(v, moment_plan, centre, cov, scale)
        if not split:
            for l, columns in enumerate(contraction_plan):
                out = cgutils.create_struct_proxy(outs_t.dtype)(
                    context, builder, value=builder.extract_value(args[5], l)).data
                v.store_rows(_emit_contraction(v, columns, moments), out, p0)
            return suspect
        # moments of the block on the stack (no heap), read by the per-l functions
        stack = cgutils.alloca_once(builder, ir.ArrayType(v.vector, len(moments)))
        first = builder.bitcast(stack, v.vector.as_pointer())
        for k, value in enumerate(moments):
            builder.store(value, builder.gep(first, [ir.Constant(ir.IntType(64), k)], inbounds=True), align=v.itemsize)
        for l, columns in enumerate(contraction_plan):
            out = cgutils.create_struct_proxy(outs_t.dtype)(
                context, builder, value=builder.extract_value(args[5], l)).data
            builder.call(contract_function(builder.module, l, columns), [first, out, p0])
        return suspect

    @intrinsic
    def expand_block(typingctx, r, rot, ax, p0, n_pairs, outs):
        for name, array in (("r", r), ("rot", rot), ("ax", ax)):
            if not (isinstance(array, types.Array) and array.layout == "C"
                    and array.dtype == numpy_support.from_dtype(np.dtype(dtype))):
                raise TypingError(f"expand_block: {name} must be a C-contiguous {np.dtype(dtype)} array, got {array}")
        if not (isinstance(outs, types.UniTuple) and len(outs) == len(contraction_plan)):
            raise TypingError(f"expand_block: outs must be a tuple of {len(contraction_plan)} arrays, got {outs}")
        return types.int64(r, rot, ax, p0, n_pairs, outs), codegen

    return expand_block


def _driver_function(hypers: ExpansionHypers, lanes: int) -> list[str]:
    outs = ", ".join(f"out{l}" for l in range(hypers.lmax + 1))
    return [
        "@njit(cache=True, nogil=True, parallel=True)",
        f"def expand_pairs(r, rot, ax, {outs}):",
        '    """All pairs into out{l}, flat C-order (P_padded, 2l+1, n_l) outputs (P_padded a multiple of LANES).',
        "",
        "    Returns the number of blocks holding a pair that check_pair_arrays could reject.",
        '    """',
        f"    outs = ({outs},)",
        "    n_pairs = r.shape[0]",
        f"    n_blocks = (n_pairs + {lanes - 1}) // {lanes}",
        "    suspects = 0",
        "    for block in prange(n_blocks):",
        f"        suspects += expand_block(r, rot, ax, block * {lanes}, n_pairs, outs)",
        "    return suspects",
        "",
    ]


def generate_source(hypers: ExpansionHypers, dtype, lanes: int | None = None, split: bool | None = None) -> str:
    """Python source of the specialised kernel module.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64, the compute dtype
    lanes : pairs per block (default ``default_lanes(dtype, "pairs")``: per machine)
    split : contraction in one function per l (default: ``split_contraction``)

    Returns
    -------
    str: a module defining ``LANES`` and ``expand_pairs(r (P,3), rot (P,3,3),
    ax (P,3), out0, ..., out_lmax)``, with ``out_l`` the flat C-order
    ``(P_padded, 2l+1, n_l)`` output of ``dtype`` (``P_padded`` = P rounded up
    to a multiple of ``LANES``), filled in place.
    """
    dtype = np.dtype(dtype)
    lanes = _checked_lanes(dtype, lanes)
    lines = [
        f'"""numba_fused kernel generated for {hypers!r}, {dtype}, {lanes} lanes (code version {CODE_VERSION})."""',
        "import numpy as np",
        "from numba import njit, prange",
        "",
        "from einsum_workbench.kernels.numba.codegen.emitters import block_intrinsic",
        "from einsum_workbench.reference.hypers import ExpansionHypers",
        "",
        f"FT = np.{dtype.name}",
        f"LANES = {lanes}",
        f"HYPERS = ExpansionHypers(**{hypers.as_dict()!r})",
        f"expand_block = block_intrinsic(HYPERS, FT, LANES, split={split!r})",
        "",
    ]
    lines += _driver_function(hypers, lanes)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The centre density: per segment (one output row), the sum of its pairs'
# coefficients, accumulated across SIMD lanes and written once.

def host_vector_bits() -> int:
    """Width in bits of the float vectors Numba's target has here: 512 with AVX-512F, else 256.

    Reads ``NUMBA_CPU_FEATURES`` when set (as Numba's code generator does),
    else the host's features from llvmlite.
    """
    return 512 if "+avx512f" in host_cpu()[1].split(",") else 256


def default_density_lanes(dtype) -> int:
    """Pairs per block (and segments per group) of the density kernel on this machine.

    ``lane_choice(dtype, "density")``: one vector register of the widest kind
    the target has, 8 float64 / 16 float32 lanes with AVX-512F, else 4 / 8
    (or ``EINSUM_WORKBENCH_LANES``). A machine fact, measured on one CPU only
    (not "the best" elsewhere): on the Intel Xeon (Emerald Rapids, AVX-512, 2
    shared cores) where this kernel was written, one thread, default
    workload, the kernel alone took 0.022 us per pair in float64 with 8
    lanes against 0.039 with 4 and 0.027 with 16; the whole float32 call
    0.016 with 16 lanes against 0.025 with 8. Compiled for an AVX2-only
    target (Haswell features) on the same CPU, 4 and 8 float64 lanes tied
    (0.033). Not measured on Zen 4, whose AVX-512 is double-pumped (the pair
    kernel measured 256-bit best there): pass ``lanes`` to
    ``numba_density.centre_density`` to measure a machine.
    """
    return default_lanes(dtype, "density")


def _checked_density_lanes(dtype, lanes) -> int:
    """The density kernel's lane count: ``default_density_lanes`` or a given power of two >= 2."""
    if lanes is None:
        if np.dtype(dtype) not in BASE_LANES:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        return default_density_lanes(dtype)
    return _checked_lanes(dtype, lanes)


def _emit_exp(v: _VectorBuilder, x):
    """Inline ``exp(x)`` on every lane, for the Gaussian's ``x = -k/2 <= 0``.

    ``llvm.exp`` on a vector becomes one libm call per lane here (no vector
    math library), and every call spills the live vectors: it cost about as
    much as the rest of the per-pair work. Instead: ``n = rint(x log2 e)``,
    ``r = x - n ln2`` (Cody-Waite split, fused multiply-adds, |r| <= ln2/2),
    Taylor polynomial of degree 13 (float64; 7 in float32) by Horner, times
    ``2^n`` built in the exponent bits. Relative error a few ulp. ``x``
    below -708 (float32: -87) gives 0: the true value is below 3e-308
    (2e-38), where ``2^n`` would leave the normal range. A NaN ``x`` gives a
    finite value; it only arises from inputs the screen rejects.
    """
    ir, b = v.ir, v.b
    double = v.itemsize == 8
    if double:
        log2e, ln2_hi, ln2_lo, degree, low = 1.4426950408889634, 6.93147180369123816490e-01, \
            1.90821492927058770002e-10, 13, -708.0
        integer, bias, shift = ir.IntType(64), 1023, 52
    else:
        log2e, ln2_hi, ln2_lo, degree, low = 1.4426950408889634, 0.693359375, -2.12194440e-4, 7, -87.0
        integer, bias, shift = ir.IntType(32), 127, 23
    suffix = f"v{v.lanes}{'f64' if double else 'f32'}"
    from numba.core import cgutils

    def call(name, *args):
        kind = ir.FunctionType(v.vector, [v.vector] * len(args))
        return b.call(cgutils.get_or_insert_function(b.module, kind, f"llvm.{name}.{suffix}"), list(args))

    clamped = call("maxnum", x, v.splat(low))
    n = call("rint", v.mul(clamped, v.splat(log2e)))
    r = v.fma(n, v.splat(-ln2_hi), clamped)
    r = v.fma(n, v.splat(-ln2_lo), r)
    factorial = [1.0]
    for k in range(1, degree + 1):
        factorial.append(factorial[-1] * k)
    p = v.splat(1.0 / factorial[degree])
    for k in range(degree - 1, -1, -1):
        p = v.fma(p, r, v.splat(1.0 / factorial[k]))
    vector_int = ir.VectorType(integer, v.lanes)
    bits = b.shl(b.add(b.fptosi(n, vector_int), ir.Constant(vector_int, [ir.Constant(integer, bias)] * v.lanes)),
                 ir.Constant(vector_int, [ir.Constant(integer, shift)] * v.lanes))
    value = v.mul(p, b.bitcast(bits, v.vector))
    return b.select(b.fcmp_ordered("<", x, v.splat(low)), v.splat(0.0), value)


def _emit_density_geometry(v: _VectorBuilder, hypers: ExpansionHypers, rv, R, s):
    """Centre (3), covariance {(i, j): S_ij} and scale of each lane's pair, with few divisions.

    The quantities of :func:`_emit_geometry` (same formulas, DESIGN.md
    section 7), rearranged so that a pair needs 3 divisions instead of 7 and
    no ``llvm.exp`` call (divisions and exp dominated the per-pair cost once
    the density kernel stopped contracting per pair). GTO, with
    ``g_k = 1 / (1 + l_k^2 / sigma^2)`` (in (0, 1], well conditioned):
    ``1/d_k = l_k^2 g_k``, ``S = R diag(l_k^2 g_k) R^T``,
    ``a = r - R (R^T r * l^2 g) / sigma^2``, ``k = sum_k (R^T r)_k^2 g_k / sigma^2``,
    ``scale = exp(-k/2) / (l1 l2 l3 sqrt(d1 d2 d3)) = exp(-k/2) sqrt(g1 g2 g3)``.
    Monomial: ``1/d_k = l_k^2``, ``a = r``, ``scale = 1`` exactly (no division at all).
    """
    l2 = [v.mul(s[k], s[k]) for k in range(3)]
    gto = hypers.radial_basis == "gto"
    if gto:
        one = v.splat(1.0)
        inv_s2 = v.splat(1.0 / hypers.sigma**2)
        g = [v.div(one, v.fma(l2[k], inv_s2, one)) for k in range(3)]
        inv_d = [v.mul(l2[k], g[k]) for k in range(3)]
    else:
        inv_d = l2
    cov = {
        (i, j): v.dot3([(v.mul(R[i][k], R[j][k]), inv_d[k]) for k in range(3)])
        for (i, j) in _COVARIANCE
    }
    if not gto:
        return rv, cov, v.splat(1.0)
    body = [v.dot3([(R[0][k], rv[0]), (R[1][k], rv[1]), (R[2][k], rv[2])]) for k in range(3)]
    w = [v.mul(body[k], inv_d[k]) for k in range(3)]
    centre = [v.sub(rv[i], v.mul(inv_s2, v.dot3([(R[i][k], w[k]) for k in range(3)]))) for i in range(3)]
    kk = v.mul(inv_s2, v.dot3([(v.mul(body[k], body[k]), g[k]) for k in range(3)]))
    scale = v.mul(_emit_exp(v, v.mul(v.splat(-0.5), kk)), v.sqrt(v.mul(v.mul(g[0], g[1]), g[2])))
    return centre, cov, scale


def _load_rows(v: _VectorBuilder, data, first_row, width: int):
    """Lane vectors of the ``width`` columns of rows ``first_row .. first_row + lanes - 1``.

    One contiguous load of ``lanes * width`` values, split into columns by
    shuffles (instead of ``lanes * width`` scalar loads and inserts).
    """
    ir, b = v.ir, v.b
    whole = ir.VectorType(v.scalar, v.lanes * width)
    ptr = b.gep(data, [b.mul(first_row, ir.Constant(first_row.type, width))], inbounds=True)
    block = b.load(b.bitcast(ptr, whole.as_pointer()), align=v.itemsize)
    kind = ir.VectorType(ir.IntType(32), v.lanes)
    return [b.shuffle_vector(block, ir.Constant(whole, ir.Undefined),
                             ir.Constant(kind, [j * width + c for j in range(v.lanes)]))
            for c in range(width)]


def density_intrinsic(hypers: ExpansionHypers, dtype, lanes: int):
    """Numba intrinsic ``density_group(r, rot, ax, starts, group, outs, w)``: ``lanes`` segments.

    Segments ``s = group * lanes + i`` (i < lanes; those >= S = len(starts) - 1
    are empty) are pairs ``starts[s] .. starts[s+1] - 1`` of the C-contiguous
    ``r`` (P, 3), ``rot`` (P, 3, 3), ``ax`` (P, 3), P >= lanes. Their rows go
    to rows ``group * lanes + i`` of each flat C-order ``outs[l]`` ((S_pad,
    2l+1, n_l), S_pad a multiple of ``lanes``), times ``W_l`` (``w``: float64,
    row-major ``W_0, W_1, ...`` concatenated; identity matrices for raw
    output). Returns 1 if some pair could fail ``check_pair_arrays``'s value
    tests, else 0.

    The contraction is linear in the moments, so a segment's sum of pair
    coefficients is the contraction of its summed moments:
    ``sum_p c_l(p)[m, n] = sum_k T'_l[k, m, n] sum_p E_p[k]``. Emitted as LLVM
    IR (see :func:`block_intrinsic`), nothing on the heap:

    1. per segment, a loop over blocks of ``lanes`` consecutive pairs: one
       contiguous load per input array (:func:`_load_rows`; the last block
       of a segment is moved back to end at the segment's end, or at the
       batch's end, and lanes outside the block's share of the segment get
       benign inputs (r = 0, R = I, semi-axes 1) and scale 0), the pair
       kernel's screen and unrolled moment recurrence (unscaled, E[0] = 1;
       geometry as :func:`_emit_density_geometry`), then
       ``acc[k] += scale * E[k]`` for each moment the contraction uses (SoA
       accumulators on the stack: lane j sums the pairs j, j + lanes, ...
       of the block sequence). No coefficient of a pair is formed.
       After the loop the lanes are summed by a fixed transpose-and-add
       tree (:meth:`_VectorBuilder.sum_lanes`) into the segment's row of a
       stack scratch.
    2. per group, SIMD across the ``lanes`` segments: the summed moments
       transposed out of the scratch (to float64), then per l, in one
       out-of-line function each (compile time), contracted with the
       non-zeros of ``T'_l`` (the pair kernel's unrolled multiply-adds),
       times ``W_l``, rounded once to ``dtype`` and written (one row per
       segment, transposed in registers). Empty segments give zero rows.

    The same instructions run whatever the thread or group, and a segment's
    pairs always go to the same lanes (relative to the segment's start and
    end; only a segment shorter than ``lanes`` within the batch's last
    ``lanes`` pairs is shifted), so results are bit-identical for any thread
    count.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.np import numpy_support
    from numba.extending import intrinsic

    dtype = np.dtype(dtype)
    moment_plan = _moment_plan(hypers.max_degree)
    contraction_plan = _contraction_plan(hypers)
    limits = screen_limits(dtype, hypers)
    used = sorted({k for columns in contraction_plan for terms in columns for k, _ in terms})
    groups = -(-len(used) // lanes)  # scratch row: this many vectors of lane sums
    w_offsets = [int(c) for c in np.cumsum([0] + [n * n for n in hypers.num_radial])]
    i64 = ir.IntType(64)

    def const(value):
        return ir.Constant(i64, int(value))

    prefix = f"numba_density_{kernel_key(hypers, dtype, lanes, kind='density')}"

    def segment_moments(v, r, rot, ax, n_pairs, start, stop, acc, suspect):
        """acc[i] (for moment used[i]) = this segment's lane-wise sums of scale * E."""
        b = v.b
        zero, one = v.splat(0.0), v.splat(1.0)
        count = b.sub(stop, start)
        n_blocks = b.sdiv(b.add(count, const(lanes - 1)), const(lanes))
        # the block's first row: p0, or earlier so that the block ends at the segment's
        # end (if the segment is long enough) and inside the batch
        latest = b.sub(n_pairs, const(lanes))
        back = b.sub(stop, const(lanes))
        slots = {k: b.gep(acc, [const(i)], inbounds=True) for i, k in enumerate(used)}
        with cgutils.for_range(b, n_blocks) as loop:
            p0 = b.add(start, b.mul(loop.index, const(lanes)))
            first = b.select(b.icmp_signed("<", back, p0), back, p0)
            first = b.select(b.icmp_signed("<", first, start), p0, first)
            first = b.select(b.icmp_signed("<", latest, first), latest, first)
            inside = []
            for j in range(lanes):
                pair = b.add(first, const(j))
                inside.append(b.and_(b.icmp_signed(">=", pair, p0), b.icmp_signed("<", pair, stop)))
            mask = v.lane_mask(inside)
            rv = [v.select(mask, x, zero) for x in _load_rows(v, r, first, 3)]
            flat = _load_rows(v, rot, first, 9)
            R = [[v.select(mask, flat[3 * i + k], one if i == k else zero) for k in range(3)] for i in range(3)]
            s = [v.select(mask, x, one) for x in _load_rows(v, ax, first, 3)]
            screen = b.zext(_emit_screen(v, rv, R, s, limits), i64)
            b.store(b.or_(b.load(suspect), screen), suspect)
            centre, cov, scale = _emit_density_geometry(v, hypers, rv, R, s)
            scale = v.select(mask, scale, zero)  # lanes outside the share add exactly 0

            # unscaled moments (E[0] = 1): the scale (exp, sqrt, divisions) stays off the
            # recurrence's dependency chain and enters each accumulation's fma, emitted as
            # soon as the moment is (its live range then ends with its last use)
            def accumulate(k, moment):
                if k in slots:
                    b.store(v.fma(scale, moment, b.load(slots[k])), slots[k])

            _emit_moments(v, moment_plan, centre, cov, one, accumulate)

    def splat_loaded(vd, ptr):
        ir_ = vd.ir
        scalar = vd.b.load(ptr, align=8)
        vector = vd.b.insert_element(ir_.Constant(vd.vector, ir_.Undefined), scalar, ir_.Constant(ir_.IntType(32), 0))
        return vd.b.shuffle_vector(vector, ir_.Constant(vd.vector, ir_.Undefined),
                                   ir_.Constant(ir_.VectorType(ir_.IntType(32), lanes), [0] * lanes))

    def write_function(module, l: int, columns):
        """``void write_l(<lanes x double>* moments, double* w, T* out, i64 first_row)``.

        SIMD across ``lanes`` segments: contraction of the summed moments
        (``moments[i]`` = moment ``used[i]``) with the non-zeros of ``T'_l``,
        times ``W_l``, rounded to ``dtype`` and transposed into rows
        ``first_row ..`` of ``out``. Out of line (noinline), one per l, so
        that no straight-line block grows with lmax beyond one channel's
        (LLVM's compile time grows faster than linearly with a block).
        """
        name = f"{prefix}_write_{l}"
        if name in module.globals:
            return module.globals[name]
        scalar = ir.DoubleType() if dtype == np.dtype(np.float64) else ir.FloatType()
        double_vector = ir.VectorType(ir.DoubleType(), lanes)
        kind = ir.FunctionType(ir.VoidType(), [double_vector.as_pointer(), ir.DoubleType().as_pointer(),
                                               scalar.as_pointer(), i64])
        function = ir.Function(module, kind, name=name)
        function.linkage = "internal"
        function.attributes.add("noinline")
        function.attributes.add("nounwind")
        builder = ir.IRBuilder(function.append_basic_block("entry"))
        v = _VectorBuilder(builder, dtype, lanes)
        vd = _VectorBuilder(builder, np.float64, lanes)
        moments_ptr, w, out, first_row = function.args
        position = {k: i for i, k in enumerate(used)}
        moments = {k: builder.load(builder.gep(moments_ptr, [const(position[k])], inbounds=True))
                   for k in sorted({k for terms in columns for k, _ in terms})}
        values = _emit_contraction(vd, columns, moments)
        n_l = hypers.num_radial[l]
        weights = [[splat_loaded(vd, builder.gep(w, [const(w_offsets[l] + i * n_l + n)], inbounds=True))
                    for n in range(n_l)] for i in range(n_l)]
        rows = []
        for m in range(2 * l + 1):
            for n in range(n_l):
                value = vd.mul(values[m * n_l], weights[0][n])
                for i in range(1, n_l):
                    value = vd.fma(values[m * n_l + i], weights[i][n], value)
                rows.append(value if v.itemsize == 8 else builder.fptrunc(value, v.vector))
        v.store_rows(rows, out, first_row)
        builder.ret_void()
        return function

    def codegen(context, builder, signature, args):
        r_t, rot_t, ax_t, starts_t, group_t, outs_t, w_t = signature.args
        r, rot, ax = (
            cgutils.create_struct_proxy(t)(context, builder, value=a).data
            for t, a in zip((r_t, rot_t, ax_t), args[:3])
        )
        n_pairs = cgutils.unpack_tuple(builder, cgutils.create_struct_proxy(r_t)(
            context, builder, value=args[0]).shape, 2)[0]
        starts_array = cgutils.create_struct_proxy(starts_t)(context, builder, value=args[3])
        starts = starts_array.data
        n_segments = builder.sub(cgutils.unpack_tuple(builder, starts_array.shape, 1)[0], const(1))
        group = context.cast(builder, args[4], group_t, types.int64)
        outs = [cgutils.create_struct_proxy(outs_t.dtype)(
            context, builder, value=builder.extract_value(args[5], l)).data for l in range(len(contraction_plan))]
        w = cgutils.create_struct_proxy(w_t)(context, builder, value=args[6]).data

        v = _VectorBuilder(builder, dtype, lanes)
        vd = _VectorBuilder(builder, np.float64, lanes)
        # stack only: accumulators (padded to whole groups of lanes, the padding stays 0),
        # the group's rows of summed moments, and those transposed (SIMD across segments)
        acc_array = cgutils.alloca_once(builder, ir.ArrayType(v.vector, groups * lanes), name="density_acc")
        acc = builder.bitcast(acc_array, v.vector.as_pointer())
        scratch_array = cgutils.alloca_once(builder, ir.ArrayType(v.vector, lanes * groups), name="density_rows")
        scratch = builder.bitcast(scratch_array, v.vector.as_pointer())
        moments_array = cgutils.alloca_once(builder, ir.ArrayType(vd.vector, groups * lanes), name="density_sums")
        moments = builder.bitcast(moments_array, vd.vector.as_pointer())
        suspect = cgutils.alloca_once_value(builder, const(0))
        first_segment = builder.mul(group, const(lanes))
        cgutils.memset(builder, acc_array, const(groups * lanes * lanes * v.itemsize), 0)

        # 1. per segment of the group: its summed moments into a row of the scratch
        with cgutils.for_range(builder, const(lanes)) as outer:
            segment = builder.add(first_segment, outer.index)
            real = builder.icmp_signed("<", segment, n_segments)
            index = builder.select(real, segment, const(0))
            start = builder.load(builder.gep(starts, [index], inbounds=True))
            stop = builder.load(builder.gep(starts, [builder.add(index, const(1))], inbounds=True))
            start = builder.select(real, start, const(0))
            stop = builder.select(real, stop, const(0))
            segment_moments(v, r, rot, ax, n_pairs, start, stop, acc, suspect)
            row = builder.mul(outer.index, const(groups))
            for g in range(groups):
                slots = [builder.gep(acc, [const(g * lanes + j)], inbounds=True) for j in range(lanes)]
                group_vectors = [builder.load(slot) for slot in slots]
                for slot in slots:
                    builder.store(v.splat(0.0), slot)  # ready for the next segment
                builder.store(v.sum_lanes(group_vectors),
                              builder.gep(scratch, [builder.add(row, const(g))], inbounds=True))

        # 2. SIMD across the group's segments: transpose, then per l contraction, W, rows
        with cgutils.for_range(builder, const(groups)) as block:
            rows = [builder.load(builder.gep(scratch, [builder.add(const(i * groups), block.index)], inbounds=True))
                    for i in range(lanes)]
            base = builder.mul(block.index, const(lanes))
            for j in range(lanes):
                value = v._lane_row(rows, j)
                value = value if v.itemsize == 8 else builder.fpext(value, vd.vector)
                builder.store(value, builder.gep(moments, [builder.add(base, const(j))], inbounds=True))
        for l, columns in enumerate(contraction_plan):
            builder.call(write_function(builder.module, l, columns), [moments, w, outs[l], first_segment])
        return builder.load(suspect)

    @intrinsic
    def density_group(typingctx, r, rot, ax, starts, group, outs, w):
        for name, array, ndim in (("r", r, 2), ("rot", rot, 3), ("ax", ax, 2)):
            if not (isinstance(array, types.Array) and array.layout == "C" and array.ndim == ndim
                    and array.dtype == numpy_support.from_dtype(dtype)):
                raise TypingError(f"density_group: {name} must be a C-contiguous {ndim}-d {dtype} array, got {array}")
        if not (isinstance(starts, types.Array) and starts.layout == "C" and starts.ndim == 1
                and starts.dtype == types.int64):
            raise TypingError(f"density_group: starts must be a C-contiguous int64 vector, got {starts}")
        if not isinstance(group, types.Integer):
            raise TypingError(f"density_group: group must be an integer, got {group}")
        if not (isinstance(outs, types.UniTuple) and len(outs) == len(contraction_plan)
                and isinstance(outs.dtype, types.Array) and outs.dtype.layout == "C"
                and outs.dtype.dtype == numpy_support.from_dtype(dtype)):
            raise TypingError(f"density_group: outs must be a tuple of {len(contraction_plan)} "
                              f"C-contiguous {dtype} arrays, got {outs}")
        if not (isinstance(w, types.Array) and w.layout == "C" and w.dtype == types.float64):
            raise TypingError(f"density_group: w must be a C-contiguous float64 array, got {w}")
        return types.int64(r, rot, ax, starts, group, outs, w), codegen

    return density_group


def _density_driver(hypers: ExpansionHypers, lanes: int) -> list[str]:
    outs = ", ".join(f"out{l}" for l in range(hypers.lmax + 1))
    return [
        "@njit(cache=True, nogil=True, parallel=True)",
        f"def density_segments(r, rot, ax, starts, w, {outs}):",
        '    """Segment s = pairs starts[s] .. starts[s + 1] - 1 summed into row s of every out{l}, times W_l.',
        "",
        "    out{l}: flat C-order (S_pad, 2l+1, n_l), S = len(starts) - 1, S_pad = S rounded up to",
        f"    a multiple of {lanes}, every row written (rows >= S zero); r, rot, ax hold >= {lanes} pairs.",
        "    Returns the number of groups of segments holding a pair that check_pair_arrays could reject.",
        '    """',
        f"    outs = ({outs},)",
        f"    n_groups = (starts.shape[0] - 1 + {lanes - 1}) // {lanes}",
        "    suspects = 0",
        "    for group in prange(n_groups):",
        "        suspects += density_group(r, rot, ax, starts, group, outs, w)",
        "    return suspects",
        "",
        "",
    ]


def generate_density_source(hypers: ExpansionHypers, dtype, lanes: int | None = None) -> str:
    """Python source of the specialised centre-density module.

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64, the compute dtype
    lanes : pairs per block and segments per group (default ``default_density_lanes(dtype)``)

    Returns
    -------
    str: a module defining ``LANES``, ``density_segments(r (P,3), rot (P,3,3),
    ax (P,3), starts (S+1,) int64, w (float64, the row-major W_l
    concatenated), out0, ..., out_lmax)`` with ``out_l`` the flat C-order
    ``(S_pad, 2l+1, n_l)`` output of ``dtype`` (S_pad = S rounded up to a
    multiple of ``LANES``; P >= ``LANES``). Segment boundaries come from
    ``numba_generic.segment_starts`` (not specialised).
    """
    dtype = np.dtype(dtype)
    lanes = _checked_density_lanes(dtype, lanes)
    lines = [
        f'"""numba_density kernel generated for {hypers!r}, {dtype}, {lanes} lanes (code version {CODE_VERSION})."""',
        "import numpy as np",
        "from numba import njit, prange",
        "",
        "from einsum_workbench.kernels.numba.codegen.emitters import density_intrinsic",
        "from einsum_workbench.reference.hypers import ExpansionHypers",
        "",
        f"FT = np.{dtype.name}",
        f"LANES = {lanes}",
        f"HYPERS = ExpansionHypers(**{hypers.as_dict()!r})",
        "density_group = density_intrinsic(HYPERS, FT, LANES)",
        "",
    ]
    lines += _density_driver(hypers, lanes)
    return "\n".join(lines) + "\n"


def kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None, split: bool | None = None,
               kind: str = "pairs") -> str:
    """Hash naming the generated module, so that a stale disk cache is never used.

    Covers what shapes the machine code: the hyper-parameters that enter
    (rcond/tol do not: the density kernel reads the orthonormalisation
    matrices at run time), dtype, lanes, split, the kind of kernel
    (``"pairs"`` or ``"density"``), ``CODE_VERSION``, this file's source (the
    IR emitter), the bytes of the solid-harmonic tables (the constants
    inlined) and the screen's thresholds (``screen_limits``). Numba keys its
    cache on the generated file (and the CPU) only.
    """
    dtype = np.dtype(dtype)
    if kind not in ("pairs", "density"):
        raise ValueError(f"kind must be 'pairs' or 'density', got {kind!r}")
    lanes = _checked_lanes(dtype, lanes) if kind == "pairs" else _checked_density_lanes(dtype, lanes)
    tables = hashlib.sha256()
    for table in compact_solid_harmonics(hypers):
        tables.update(np.ascontiguousarray(table).tobytes())
    fields = {
        "lmax": hypers.lmax, "basis": hypers.radial_basis, "sigma": hypers.sigma,
        "num_radial": list(hypers.num_radial), "dtype": dtype.name, "lanes": lanes, "split": split,
        "version": CODE_VERSION, "emitter": _emitter_digest(), "tables": tables.hexdigest(),
        "screen": list(screen_limits(dtype, hypers)),
    }
    if kind != "pairs":  # the pair kernel's fields as they were
        fields["kind"] = kind
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1)
def _emitter_digest() -> str:
    with open(__file__, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()

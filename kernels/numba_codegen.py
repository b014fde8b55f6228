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
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import ORTHONORMAL_TOL

from .tables import compact_solid_harmonics, monomial_exponents

#: Bump when the generated code changes: part of the cache key.
CODE_VERSION = 10

#: Pairs per block (SIMD lanes): 256-bit vectors measured fastest on this Zen 4 (and compile fastest).
DEFAULT_LANES = {np.dtype(np.float64): 4, np.dtype(np.float32): 8}

#: Blocks a thread takes at a time (dynamic scheduling of prange, set by the caller:
#: ``numba.set_parallel_chunksize`` inside a cached function defeats the cache).
BLOCKS_PER_CHUNK = 256

#: Largest contraction (non-zeros x lanes) emitted inline; lmax 6 default radial
#: counts give 362 x 8 = 2896 in float32.
INLINE_LIMIT = 3000

#: Independent entries (i <= j) of the symmetric covariance.
_COVARIANCE = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _checked_lanes(dtype, lanes) -> int:
    """The lane count: the dtype's default, or a given power of two >= 2
    (the in-register transpose of ``store_rows`` halves groups recursively)."""
    if np.dtype(dtype) not in DEFAULT_LANES:
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if lanes is None:
        return DEFAULT_LANES[np.dtype(dtype)]
    if isinstance(lanes, bool) or int(lanes) != lanes or lanes < 2 or int(lanes) & (int(lanes) - 1):
        raise ValueError(f"lanes must be a power of two >= 2, got {lanes!r}")
    return int(lanes)


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


def _emit_screen(v: _VectorBuilder, rv, R, s, tol: float):
    """i1: true when some lane's pair could fail ``check_pair_arrays``'s value tests.

    The same tests, branch-free: all 15 inputs finite (their sum minus itself
    is 0 only when the sum is finite; an overflow merely sends the batch to
    the canonical check), semi-axes > 0, |R R^T - I| <= tol entry-wise, det R >= 0.
    """
    b, ir = v.b, v.ir
    total = rv[0]
    for value in rv[1:] + s + [x for row in R for x in row]:
        total = v.add(total, value)
    zero = v.splat(0.0)
    fine = b.fcmp_ordered("==", v.sub(total, total), zero)
    for k in range(3):
        fine = b.and_(fine, b.fcmp_ordered(">", s[k], zero))
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


def _emit_moments(v: _VectorBuilder, moment_plan, centre, cov, scale):
    """Scaled moments E[t] (flat monomial order) by the unrolled recurrence."""
    scaled = {}

    def cov_times(k, m, multiplicity):
        key = (min(k, m), max(k, m), multiplicity)
        if key not in scaled:
            base = cov[key[:2]]
            scaled[key] = base if multiplicity == 1 else v.mul(base, v.splat(multiplicity))
        return scaled[key]

    moments = [scale]
    for k, parent, lower in moment_plan:
        value = v.mul(centre[k], moments[parent])
        for m, multiplicity, low in lower:
            value = v.fma(cov_times(k, m, multiplicity), moments[low], value)
        moments.append(value)
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
    tol = ORTHONORMAL_TOL[np.dtype(dtype)]
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
        r_t, rot_t, ax_t, _, _, outs_t = signature.args
        r, rot, ax = (
            cgutils.create_struct_proxy(t)(context, builder, value=a).data
            for t, a in zip((r_t, rot_t, ax_t), args[:3])
        )
        p0, n_pairs = args[3], args[4]
        last = builder.sub(n_pairs, ir.Constant(n_pairs.type, 1))
        rows = []
        for j in range(lanes):
            row = builder.add(p0, ir.Constant(p0.type, j))
            rows.append(builder.select(builder.icmp_signed("<", row, n_pairs), row, last))
        v = _VectorBuilder(builder, np.dtype(dtype), lanes)
        rv, R, s = _gather_inputs(v, r, rot, ax, rows)
        suspect = builder.zext(_emit_screen(v, rv, R, s, tol), ir.IntType(64))
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
    lanes : pairs per block (default ``DEFAULT_LANES[dtype]``)
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
        "from einsum_workbench.kernels.numba_codegen import block_intrinsic",
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


def kernel_key(hypers: ExpansionHypers, dtype, lanes: int | None = None, split: bool | None = None) -> str:
    """Hash naming the generated module, so that a stale disk cache is never used.

    Covers what shapes the machine code: the hyper-parameters that enter
    (rcond/tol do not), dtype, lanes, split, ``CODE_VERSION``, this file's
    source (the IR emitter) and the bytes of the solid-harmonic tables (the
    constants inlined). Numba keys its cache on the generated file only.
    """
    dtype = np.dtype(dtype)
    lanes = _checked_lanes(dtype, lanes)
    tables = hashlib.sha256()
    for table in compact_solid_harmonics(hypers):
        tables.update(np.ascontiguousarray(table).tobytes())
    fields = {
        "lmax": hypers.lmax, "basis": hypers.radial_basis, "sigma": hypers.sigma,
        "num_radial": list(hypers.num_radial), "dtype": dtype.name, "lanes": lanes, "split": split,
        "version": CODE_VERSION, "emitter": _emitter_digest(), "tables": tables.hexdigest(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1)
def _emitter_digest() -> str:
    with open(__file__, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()

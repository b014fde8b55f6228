"""Code generation for the ``numba_fused`` pair kernel, and the emitters the other kernels reuse.

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
  disk cache can key on it (see ``kernels.numba.pairs.kernel_module``).
- ``block_intrinsic`` emits the block's LLVM IR directly (``numba.extending.
  intrinsic``, with ``codegen.vector.VectorBuilder``): every quantity is an
  SSA vector of ``LANES`` values, one SIMD lane per pair, so SIMD across
  pairs is explicit. Emitting IR instead of Python statements matters for
  compile time: Numba's typing of thousands of generated Python statements
  took minutes at lmax 10.

Per block of pairs:

1. gather the inputs (AoS rows into lane vectors) and screen them with
   ``check_pair_arrays``'s value tests (``emit_screen``, thresholds from
   ``kernels.numba.screening``);
2. geometry in the ellipsoid's body frame (DESIGN.md section 7):
   ``d_k = 1/l_k^2 (+ 1/sigma^2)``, covariance ``R diag(1/d) R^T``, centre,
   scale ``exp(-k/2) / (l1 l2 l3 sqrt(d1 d2 d3))`` (the formulas of
   ``kernels.numpy.pairs.body_frame_gaussians``);
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

The gather, screen, geometry, moment and contraction emitters and the two
plans (``moment_plan``, ``contraction_plan``) are shared: the centre density
(``codegen.density``) and the gradients (``codegen.gradients``) emit with
them, and the generic kernels (``kernels.numba.generic``) run the same plans
from tables. Machine facts and thresholds, each chosen in one place and part
of the cache key (``codegen.keys.kernel_key``): the lane counts
(``kernels.numba.lanes``) and the screen's thresholds
(``kernels.numba.screening``).
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.numba.codegen.keys import CODE_VERSION, kernel_key
from einsum_workbench.kernels.numba.codegen.vector import VectorBuilder, out_of_line
from einsum_workbench.kernels.numba.lanes import checked_lanes
from einsum_workbench.kernels.numba.screening import ScreenLimits, screen_limits
from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents

#: Largest contraction (non-zeros x lanes) emitted inline; lmax 6 default radial
#: counts give 362 x 8 = 2896 in float32.
INLINE_LIMIT = 3000

#: Independent entries (i <= j) of the symmetric covariance, the order of the screen's and geometry's loops.
COVARIANCE = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


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


def moment_plan(max_degree: int) -> list:
    """The moment recurrence, unrolled: per monomial t >= 1 of ``monomial_exponents(max_degree)``
    (in that order), ``(k, parent, [(m, multiplicity, lower)])`` with
    ``E[t] = centre_k E[parent] + sum multiplicity S_km E[lower]`` (the fewest lower terms)."""
    exps = monomial_exponents(max_degree).tolist()
    index = {tuple(e): i for i, e in enumerate(exps)}
    return [_recurrence_step(t, index) for t in exps[1:]]


def contraction_plan(hypers: ExpansionHypers) -> list:
    """Per l, per output column c = m n_l + n: the non-zeros [(monomial index, float value)] of
    T'_l (``tables.compact_solid_harmonics``)."""
    plan = []
    for table in compact_solid_harmonics(hypers):
        flat = table.reshape(table.shape[0], -1)
        plan.append([
            [(int(k), float(flat[k, c])) for k in np.flatnonzero(flat[:, c])]
            for c in range(flat.shape[1])
        ])
    return plan


def _gather_inputs(v: VectorBuilder, r, rot, ax, rows):
    """Vectors of the lanes' r (3), rotation rows R[i][k] (3 x 3) and semi-axes (3)."""
    rv = [v.gather_rows(r, rows, 3, i) for i in range(3)]
    R = [[v.gather_rows(rot, rows, 9, 3 * i + k) for k in range(3)] for i in range(3)]
    s = [v.gather_rows(ax, rows, 3, k) for k in range(3)]
    return rv, R, s


def gather_block(v: VectorBuilder, context, signature, args):
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


def emit_screen(v: VectorBuilder, rv, R, s, limits: ScreenLimits):
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
    for i, j in COVARIANCE:
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


def emit_geometry(v: VectorBuilder, hypers: ExpansionHypers, rv, R, s):
    """Centre (3 vectors), covariance {(i, j): S_ij} (i <= j, ``COVARIANCE``) and scale of each lane's pair,
    from the lane vectors ``rv`` (3), ``R`` (3 x 3) and ``s`` (3) of ``gather_block``.

    Body-frame formulas of ``kernels.numpy.pairs.body_frame_gaussians``:
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
        for (i, j) in COVARIANCE
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


def emit_moments(v: VectorBuilder, steps, centre, cov, scale, consume=None):
    """Scaled moments E[t] (flat monomial order, a list of lane vectors) by the unrolled recurrence.

    ``steps``: ``moment_plan(max_degree)``; ``centre`` (3 vectors), ``cov``
    ({(i, j): vector}, i <= j) and ``scale`` (E[0]) as ``emit_geometry`` gives
    them. ``consume(t, E[t])``, if given, is called as soon as each moment is
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
    for k, parent, lower in steps:
        value = v.mul(centre[k], moments[parent])
        for m, multiplicity, low in lower:
            value = v.fma(cov_times(k, m, multiplicity), moments[low], value)
        moments.append(value)
        if consume is not None:
            consume(len(moments) - 1, value)
    return moments


def emit_contraction(v: VectorBuilder, columns, moments):
    """Per output column (``columns``: one l of ``contraction_plan``), the lane vector
    ``sum over its non-zeros (k, value) of value * moments[k]`` (0 for a column without any);
    ``moments`` maps monomial index -> lane vector."""
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
    nonzeros = sum(len(terms) for columns in contraction_plan(hypers) for terms in columns)
    return nonzeros * lanes > INLINE_LIMIT


def require_pair_arrays(intrinsic_name: str, dtype, r, rot, ax) -> None:
    """Typing check of an intrinsic's pair inputs: C-contiguous ``r`` (P, 3), ``rot`` (P, 3, 3) and
    ``ax`` (P, 3) Numba array types of ``dtype`` (2-, 3- and 2-d).

    Raises
    ------
    numba.core.errors.TypingError
        naming ``intrinsic_name``, the argument and its type.
    """
    from numba import types
    from numba.core.errors import TypingError
    from numba.np import numpy_support

    dtype = np.dtype(dtype)
    for name, array, ndim in (("r", r, 2), ("rot", rot, 3), ("ax", ax, 2)):
        if not (isinstance(array, types.Array) and array.layout == "C" and array.ndim == ndim
                and array.dtype == numpy_support.from_dtype(dtype)):
            raise TypingError(f"{intrinsic_name}: {name} must be a C-contiguous {ndim}-d {dtype} array, got {array}")


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
    tests (``emit_screen``) and returns 1 if some pair could fail them, else
    0, so that valid input needs no separate validation pass.

    ``r``, ``rot``, ``ax`` must be C-contiguous; ``outs`` a tuple of flat
    C-contiguous arrays with rows for ``p0 + lanes`` pairs.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.extending import intrinsic

    steps = moment_plan(hypers.max_degree)
    plan = contraction_plan(hypers)
    limits = screen_limits(dtype, hypers)
    split = split_contraction(hypers, lanes) if split is None else bool(split)
    prefix = f"numba_fused_{kernel_key(hypers, dtype, lanes)}"

    def contract_function(module, l: int, columns):
        """``void contract_l(<lanes x T>* moments, T* out, i64 p0)``, defined once per module.

        Kept out of line (``out_of_line``): one function per l keeps each body
        small, which bounds LLVM's compile time at large lmax.
        """
        scalar = ir.DoubleType() if np.dtype(dtype) == np.dtype(np.float64) else ir.FloatType()
        vector = ir.VectorType(scalar, lanes)

        def body(builder, moments_ptr, out, p0):
            v = VectorBuilder(builder, np.dtype(dtype), lanes)
            used = sorted({k for terms in columns for k, _ in terms})
            moments = {
                k: builder.load(builder.gep(moments_ptr, [ir.Constant(ir.IntType(64), k)], inbounds=True),
                                align=v.itemsize)
                for k in used
            }
            v.store_rows(emit_contraction(v, columns, moments), out, p0)

        return out_of_line(module, f"{prefix}_contract_{l}",
                           [vector.as_pointer(), scalar.as_pointer(), ir.IntType(64)], body)

    def codegen(context, builder, signature, args):
        outs_t = signature.args[5]
        p0 = args[3]
        v = VectorBuilder(builder, np.dtype(dtype), lanes)
        rv, R, s = gather_block(v, context, signature, args)
        suspect = builder.zext(emit_screen(v, rv, R, s, limits), ir.IntType(64))
        centre, cov, scale = emit_geometry(v, hypers, rv, R, s)
        moments = emit_moments(v, steps, centre, cov, scale)
        if not split:
            for l, columns in enumerate(plan):
                out = cgutils.create_struct_proxy(outs_t.dtype)(
                    context, builder, value=builder.extract_value(args[5], l)).data
                v.store_rows(emit_contraction(v, columns, moments), out, p0)
            return suspect
        # moments of the block on the stack (no heap), read by the per-l functions
        stack = cgutils.alloca_once(builder, ir.ArrayType(v.vector, len(moments)))
        first = builder.bitcast(stack, v.vector.as_pointer())
        for k, value in enumerate(moments):
            builder.store(value, builder.gep(first, [ir.Constant(ir.IntType(64), k)], inbounds=True), align=v.itemsize)
        for l, columns in enumerate(plan):
            out = cgutils.create_struct_proxy(outs_t.dtype)(
                context, builder, value=builder.extract_value(args[5], l)).data
            builder.call(contract_function(builder.module, l, columns), [first, out, p0])
        return suspect

    @intrinsic
    def expand_block(typingctx, r, rot, ax, p0, n_pairs, outs):
        require_pair_arrays("expand_block", dtype, r, rot, ax)
        if not (isinstance(outs, types.UniTuple) and len(outs) == len(plan)):
            raise TypingError(f"expand_block: outs must be a tuple of {len(plan)} arrays, got {outs}")
        return types.int64(r, rot, ax, p0, n_pairs, outs), codegen

    return expand_block


def module_head(title: str, module: str, intrinsic: str, dtype, lanes: int) -> list[str]:
    """First source lines of a generated kernel module: the one-line docstring ``title``, the
    imports (NumPy, Numba's ``njit`` and ``prange``, ``intrinsic`` from ``module``,
    ``ExpansionHypers``), then ``FT`` (the NumPy ``dtype``) and ``LANES``."""
    return [
        f'"""{title}"""',
        "import numpy as np",
        "from numba import njit, prange",
        "",
        f"from {module} import {intrinsic}",
        "from einsum_workbench.reference.hypers import ExpansionHypers",
        "",
        f"FT = np.{np.dtype(dtype).name}",
        f"LANES = {lanes}",
    ]


def driver_lines(signature: str, setup: list[str], loop: str, call: str) -> list[str]:
    """Source lines of a generated parallel driver: ``def {signature}:``, the lines ``setup``
    (docstring, sizes), then ``call`` (an intrinsic returning 1 for a block or group holding a
    pair that ``check_pair_arrays`` could reject, else 0) under ``for {loop}:``, its results summed
    into ``suspects`` and returned; compiled with ``@njit(cache=True, nogil=True, parallel=True)``."""
    return [
        "@njit(cache=True, nogil=True, parallel=True)",
        f"def {signature}:",
        *setup,
        "    suspects = 0",
        f"    for {loop}:",
        f"        suspects += {call}",
        "    return suspects",
    ]


def _driver_function(hypers: ExpansionHypers, lanes: int) -> list[str]:
    outs = ", ".join(f"out{l}" for l in range(hypers.lmax + 1))
    setup = [
        '    """All pairs into out{l}, flat C-order (P_padded, 2l+1, n_l) outputs (P_padded a multiple of LANES).',
        "",
        "    Returns the number of blocks holding a pair that check_pair_arrays could reject.",
        '    """',
        f"    outs = ({outs},)",
        "    n_pairs = r.shape[0]",
        f"    n_blocks = (n_pairs + {lanes - 1}) // {lanes}",
    ]
    call = f"expand_block(r, rot, ax, block * {lanes}, n_pairs, outs)"
    return driver_lines(f"expand_pairs(r, rot, ax, {outs})", setup, "block in prange(n_blocks)", call) + [""]


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
    lanes = checked_lanes(dtype, lanes)
    title = f"numba_fused kernel generated for {hypers!r}, {dtype}, {lanes} lanes (code version {CODE_VERSION})."
    lines = module_head(title, __name__, "block_intrinsic", dtype, lanes) + [
        f"HYPERS = ExpansionHypers(**{hypers.as_dict()!r})",
        f"expand_block = block_intrinsic(HYPERS, FT, LANES, split={split!r})",
        "",
    ]
    lines += _driver_function(hypers, lanes)
    return "\n".join(lines) + "\n"


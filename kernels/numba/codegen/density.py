"""Code generation for the ``numba_fused`` centre density (``kernels.numba.density``).

Its own generated module (``generate_density_source``, ``density_intrinsic``):
per block of pairs of one segment, the pair kernel's screen and moment
recurrence (``codegen.pairs``; inputs loaded contiguously, geometry
rearranged to 3 divisions and an inline exp, ``_emit_density_geometry``), but
the moments are summed per segment in SIMD accumulators and contracted with
``T'_l`` once per segment (the contraction is linear), SIMD across a group of
segments. Lane counts: ``kernels.numba.lanes.default_density_lanes``.
"""

from __future__ import annotations

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.numba.codegen.keys import CODE_VERSION, kernel_key
from einsum_workbench.kernels.numba.codegen.pairs import (
    COVARIANCE,
    contraction_plan,
    driver_lines,
    module_head,
    emit_contraction,
    emit_moments,
    emit_screen,
    moment_plan,
    require_pair_arrays,
)
from einsum_workbench.kernels.numba.codegen.vector import VectorBuilder, out_of_line
from einsum_workbench.kernels.numba.lanes import checked_density_lanes
from einsum_workbench.kernels.numba.screening import screen_limits


def _emit_exp(v: VectorBuilder, x):
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


def _emit_density_geometry(v: VectorBuilder, hypers: ExpansionHypers, rv, R, s):
    """Centre (3), covariance {(i, j): S_ij} and scale of each lane's pair, with few divisions.

    The quantities of ``codegen.pairs.emit_geometry`` (same formulas, DESIGN.md
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
        for (i, j) in COVARIANCE
    }
    if not gto:
        return rv, cov, v.splat(1.0)
    body = [v.dot3([(R[0][k], rv[0]), (R[1][k], rv[1]), (R[2][k], rv[2])]) for k in range(3)]
    w = [v.mul(body[k], inv_d[k]) for k in range(3)]
    centre = [v.sub(rv[i], v.mul(inv_s2, v.dot3([(R[i][k], w[k]) for k in range(3)]))) for i in range(3)]
    kk = v.mul(inv_s2, v.dot3([(v.mul(body[k], body[k]), g[k]) for k in range(3)]))
    scale = v.mul(_emit_exp(v, v.mul(v.splat(-0.5), kk)), v.sqrt(v.mul(v.mul(g[0], g[1]), g[2])))
    return centre, cov, scale


def _load_rows(v: VectorBuilder, data, first_row, width: int):
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


def _gather_rows(v: VectorBuilder, data, index, first_row, width: int):
    """Lane vectors of the ``width`` columns of rows ``index[first_row + j]`` (j < lanes) of ``data``.

    One load of ``width`` values per lane (the row of the lane's atom), the
    rows concatenated and split into columns by shuffles: the layout
    :func:`_load_rows` gives for contiguous rows, from per-atom arrays that
    stay in cache instead of per-pair copies written by the grouping.
    """
    ir, b = v.ir, v.b
    i64 = ir.IntType(64)
    row_type = ir.VectorType(v.scalar, width)
    rows = []
    for j in range(v.lanes):
        atom = b.load(b.gep(index, [b.add(first_row, ir.Constant(i64, j))], inbounds=True), align=8)
        ptr = b.gep(data, [b.mul(atom, ir.Constant(i64, width))], inbounds=True)
        rows.append(b.load(b.bitcast(ptr, row_type.as_pointer()), align=v.itemsize))
    while len(rows) > 1:  # pairwise concatenation: row j at j * width
        n = 2 * rows[0].type.count
        mask = ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n)))
        rows = [b.shuffle_vector(rows[k], rows[k + 1], mask) for k in range(0, len(rows), 2)]
    whole = rows[0]
    kind = ir.VectorType(ir.IntType(32), v.lanes)
    return [b.shuffle_vector(whole, ir.Constant(whole.type, ir.Undefined),
                             ir.Constant(kind, [j * width + c for j in range(v.lanes)]))
            for c in range(width)]


def _pair_inputs(v: VectorBuilder, r, rot, ax, neighbour, gathered, first):
    """(r columns (3), rotation columns (9, row-major), semi-axis columns (3)) of the block of
    pairs ``first .. first + lanes - 1``: rotations and semi-axes per pair (contiguous rows), or,
    where ``gathered`` (i1), per atom at rows ``neighbour[p]``."""
    b = v.b
    rv = _load_rows(v, r, first, 3)
    with b.if_else(gathered) as (by_atom, by_pair):
        with by_atom:
            atom_values = _gather_rows(v, rot, neighbour, first, 9) + _gather_rows(v, ax, neighbour, first, 3)
            atom_block = b.block
        with by_pair:
            pair_values = _load_rows(v, rot, first, 9) + _load_rows(v, ax, first, 3)
            pair_block = b.block
    merged = []
    for a, p in zip(atom_values, pair_values):
        phi = b.phi(v.vector)
        phi.add_incoming(a, atom_block)
        phi.add_incoming(p, pair_block)
        merged.append(phi)
    return rv, merged[:9], merged[9:]


def density_intrinsic(hypers: ExpansionHypers, dtype, lanes: int):
    """Numba intrinsic ``density_group(r, rot, ax, neighbour, starts, group, outs, w)``: ``lanes`` segments.

    Segments ``s = group * lanes + i`` (i < lanes; those >= S = len(starts) - 1
    are empty) are pairs ``starts[s] .. starts[s+1] - 1`` of the C-contiguous
    ``r`` (P, 3), P >= lanes; pair p's rotation and semi-axes are rows p of
    ``rot`` (P, 3, 3) and ``ax`` (P, 3) when ``neighbour`` (int64) is empty,
    else rows ``neighbour[p]`` of per-atom ``rot`` (N, 3, 3) and ``ax`` (N, 3)
    (every ``neighbour[p]`` in ``[0, N)``: not checked here). Their rows go
    to rows ``group * lanes + i`` of each flat C-order ``outs[l]`` ((S_pad,
    2l+1, n_l), S_pad a multiple of ``lanes``), times ``W_l`` (``w``: float64,
    row-major ``W_0, W_1, ...`` concatenated; identity matrices for raw
    output). Returns 1 if some pair could fail ``check_pair_arrays``'s value
    tests, else 0.

    The contraction is linear in the moments, so a segment's sum of pair
    coefficients is the contraction of its summed moments:
    ``sum_p c_l(p)[m, n] = sum_k T'_l[k, m, n] sum_p E_p[k]``. Emitted as LLVM
    IR (see ``codegen.pairs.block_intrinsic``), nothing on the heap:

    1. per segment, a loop over blocks of ``lanes`` consecutive pairs: one
       contiguous load per input array (:func:`_load_rows`; the last block
       of a segment is moved back to end at the segment's end, or at the
       batch's end; rotations and semi-axes gathered by ``neighbour``
       when it is given, :func:`_gather_rows`), and lanes outside the block's share of the segment get
       benign inputs (r = 0, R = I, semi-axes 1) and scale 0), the pair
       kernel's screen and unrolled moment recurrence (unscaled, E[0] = 1;
       geometry as :func:`_emit_density_geometry`), then
       ``acc[k] += scale * E[k]`` for each moment the contraction uses (SoA
       accumulators on the stack: lane j sums the pairs j, j + lanes, ...
       of the block sequence). No coefficient of a pair is formed.
       After the loop the lanes are summed by a fixed transpose-and-add
       tree (:meth:`VectorBuilder.sum_lanes`) into the segment's row of a
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
    steps = moment_plan(hypers.max_degree)
    plan = contraction_plan(hypers)
    limits = screen_limits(dtype, hypers)
    used = sorted({k for columns in plan for terms in columns for k, _ in terms})
    groups = -(-len(used) // lanes)  # scratch row: this many vectors of lane sums
    w_offsets = [int(c) for c in np.cumsum([0] + [n * n for n in hypers.num_radial])]
    i64 = ir.IntType(64)

    def const(value):
        return ir.Constant(i64, int(value))

    prefix = f"numba_density_{kernel_key(hypers, dtype, lanes, kind='density')}"

    def segment_moments(v, r, rot, ax, neighbour, gathered, n_pairs, start, stop, acc, suspect):
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
            r_columns, flat, s_columns = _pair_inputs(v, r, rot, ax, neighbour, gathered, first)
            rv = [v.select(mask, x, zero) for x in r_columns]
            R = [[v.select(mask, flat[3 * i + k], one if i == k else zero) for k in range(3)] for i in range(3)]
            s = [v.select(mask, x, one) for x in s_columns]
            screen = b.zext(emit_screen(v, rv, R, s, limits), i64)
            b.store(b.or_(b.load(suspect), screen), suspect)
            centre, cov, scale = _emit_density_geometry(v, hypers, rv, R, s)
            scale = v.select(mask, scale, zero)  # lanes outside the share add exactly 0

            # unscaled moments (E[0] = 1): the scale (exp, sqrt, divisions) stays off the
            # recurrence's dependency chain and enters each accumulation's fma, emitted as
            # soon as the moment is (its live range then ends with its last use)
            def accumulate(k, moment):
                if k in slots:
                    b.store(v.fma(scale, moment, b.load(slots[k])), slots[k])

            emit_moments(v, steps, centre, cov, one, accumulate)

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
        ``first_row ..`` of ``out``. Out of line (``out_of_line``), one per l, so
        that no straight-line block grows with lmax beyond one channel's
        (LLVM's compile time grows faster than linearly with a block).
        """
        scalar = ir.DoubleType() if dtype == np.dtype(np.float64) else ir.FloatType()
        double_vector = ir.VectorType(ir.DoubleType(), lanes)

        def body(builder, moments_ptr, w, out, first_row):
            v = VectorBuilder(builder, dtype, lanes)
            vd = VectorBuilder(builder, np.float64, lanes)
            position = {k: i for i, k in enumerate(used)}
            moments = {k: builder.load(builder.gep(moments_ptr, [const(position[k])], inbounds=True))
                       for k in sorted({k for terms in columns for k, _ in terms})}
            values = emit_contraction(vd, columns, moments)
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

        return out_of_line(module, f"{prefix}_write_{l}", [double_vector.as_pointer(), ir.DoubleType().as_pointer(),
                                                           scalar.as_pointer(), i64], body)

    def codegen(context, builder, signature, args):
        r_t, rot_t, ax_t, neighbour_t, starts_t, group_t, outs_t, w_t = signature.args
        r, rot, ax = (
            cgutils.create_struct_proxy(t)(context, builder, value=a).data
            for t, a in zip((r_t, rot_t, ax_t), args[:3])
        )
        neighbour_array = cgutils.create_struct_proxy(neighbour_t)(context, builder, value=args[3])
        neighbour = neighbour_array.data
        gathered = builder.icmp_signed("!=", cgutils.unpack_tuple(builder, neighbour_array.shape, 1)[0], const(0))
        n_pairs = cgutils.unpack_tuple(builder, cgutils.create_struct_proxy(r_t)(
            context, builder, value=args[0]).shape, 2)[0]
        starts_array = cgutils.create_struct_proxy(starts_t)(context, builder, value=args[4])
        starts = starts_array.data
        n_segments = builder.sub(cgutils.unpack_tuple(builder, starts_array.shape, 1)[0], const(1))
        group = context.cast(builder, args[5], group_t, types.int64)
        outs = [cgutils.create_struct_proxy(outs_t.dtype)(
            context, builder, value=builder.extract_value(args[6], l)).data for l in range(len(plan))]
        w = cgutils.create_struct_proxy(w_t)(context, builder, value=args[7]).data

        v = VectorBuilder(builder, dtype, lanes)
        vd = VectorBuilder(builder, np.float64, lanes)
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
            segment_moments(v, r, rot, ax, neighbour, gathered, n_pairs, start, stop, acc, suspect)
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
                value = v.lane_row(rows, j)
                value = value if v.itemsize == 8 else builder.fpext(value, vd.vector)
                builder.store(value, builder.gep(moments, [builder.add(base, const(j))], inbounds=True))
        for l, columns in enumerate(plan):
            builder.call(write_function(builder.module, l, columns), [moments, w, outs[l], first_segment])
        return builder.load(suspect)

    @intrinsic
    def density_group(typingctx, r, rot, ax, neighbour, starts, group, outs, w):
        require_pair_arrays("density_group", dtype, r, rot, ax)
        if not (isinstance(neighbour, types.Array) and neighbour.layout == "C" and neighbour.ndim == 1
                and neighbour.dtype == types.int64):
            raise TypingError(f"density_group: neighbour must be a C-contiguous int64 vector, got {neighbour}")
        if not (isinstance(starts, types.Array) and starts.layout == "C" and starts.ndim == 1
                and starts.dtype == types.int64):
            raise TypingError(f"density_group: starts must be a C-contiguous int64 vector, got {starts}")
        if not isinstance(group, types.Integer):
            raise TypingError(f"density_group: group must be an integer, got {group}")
        if not (isinstance(outs, types.UniTuple) and len(outs) == len(plan)
                and isinstance(outs.dtype, types.Array) and outs.dtype.layout == "C"
                and outs.dtype.dtype == numpy_support.from_dtype(dtype)):
            raise TypingError(f"density_group: outs must be a tuple of {len(plan)} "
                              f"C-contiguous {dtype} arrays, got {outs}")
        if not (isinstance(w, types.Array) and w.layout == "C" and w.dtype == types.float64):
            raise TypingError(f"density_group: w must be a C-contiguous float64 array, got {w}")
        return types.int64(r, rot, ax, neighbour, starts, group, outs, w), codegen

    return density_group


def _density_driver(hypers: ExpansionHypers, lanes: int) -> list[str]:
    outs = ", ".join(f"out{l}" for l in range(hypers.lmax + 1))
    signature = f"density_segments(r, rot, ax, neighbour, starts, w, {outs})"
    setup = [
        '    """Segment s = pairs starts[s] .. starts[s + 1] - 1 summed into row s of every out{l}, times W_l.',
        "",
        "    out{l}: flat C-order (S_pad, 2l+1, n_l), S = len(starts) - 1, S_pad = S rounded up to",
        f"    a multiple of {lanes}, every row written (rows >= S zero); r holds >= {lanes} pairs; rot, ax",
        "    one row per pair (neighbour empty) or per atom (pair p: row neighbour[p]).",
        "    Returns the number of groups of segments holding a pair that check_pair_arrays could reject.",
        '    """',
        f"    outs = ({outs},)",
        f"    n_groups = (starts.shape[0] - 1 + {lanes - 1}) // {lanes}",
    ]
    return driver_lines(signature, setup, "group in prange(n_groups)",
                        "density_group(r, rot, ax, neighbour, starts, group, outs, w)") + ["", ""]


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
    ax (P,3), neighbour (0,) int64, starts (S+1,) int64, w (float64, the row-major W_l
    concatenated), out0, ..., out_lmax)`` with ``out_l`` the flat C-order
    ``(S_pad, 2l+1, n_l)`` output of ``dtype`` (S_pad = S rounded up to a
    multiple of ``LANES``; P >= ``LANES``); or ``rot`` (N,3,3) and ``ax``
    (N,3) per atom and ``neighbour`` (P,) the row of each pair's neighbour.
    Segment boundaries come from
    ``numba_generic.segment_starts`` (not specialised).
    """
    dtype = np.dtype(dtype)
    lanes = checked_density_lanes(dtype, lanes)
    title = f"numba_density kernel generated for {hypers!r}, {dtype}, {lanes} lanes (code version {CODE_VERSION})."
    lines = module_head(title, __name__, "density_intrinsic", dtype, lanes) + [
        f"HYPERS = ExpansionHypers(**{hypers.as_dict()!r})",
        "density_group = density_intrinsic(HYPERS, FT, LANES)",
        "",
    ]
    lines += _density_driver(hypers, lanes)
    return "\n".join(lines) + "\n"


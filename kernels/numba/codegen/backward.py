"""Code generation for the ``numba_fused`` backward pass of the centre density (``kernels.numba.backward``).

The vector-Jacobian product of DESIGN.md section 3, "Backward pass", with the
centre density's emitters (``codegen.pairs``: screen, unrolled moment
recurrence; ``codegen.density``: contiguous block loads, inline exp, the
segment and block walk) and ``codegen.vector.VectorBuilder``.

Every raw coefficient is ``c_p = T' . M_p`` with ``M_p[t] = s_p E_p[x^t]``.
For a segment q with raw cotangent ``g_q`` (``g W^T``), ``L = sum_p <gM_q, M_p>``
with ``gM_q[t] = sum_{l,m,n} g_q[l,m,n] T'_l[t,m,n]``. The moments' derivatives
are lower moments (``reference.gradients``), so the derivatives of ``L`` along
the centre ``a``, the covariance ``S`` and ``log s`` are dot products of the
pair's own moments with ten vectors per segment (``segment_plan``):

- ``Lm = s <gM, E>`` (along ``log s``);
- ``La_k = s <gA_k, E>``, ``gA_k[u] = (u_k + 1) gM[u + e_k]`` (along ``a_k``);
- ``LS_ij = s <gH_ij, E>`` (i <= j, along ``S_ij``, both entries moving
  together for i != j), ``gH_ii[u] = (u_i+2)(u_i+1)/2 gM[u + 2 e_i]``,
  ``gH_ij[u] = (u_i+1)(u_j+1) gM[u + e_i + e_j]``.

Chain rule per pair (``_emit_chain_rule``; ``P = I - S / sigma^2``,
``B`` the symmetric matrix with ``B_ii = LS_ii``, ``B_ij = LS_ij / 2``):

- positions: ``dL/dr = -Lm a / sigma^2 + P La`` (monomial: ``La``);
- every derivative along the body frame moves only ``S`` (``da = -dS r /
  sigma^2``, ``d log s = r^T dS r / (2 sigma^4)`` plus, along a semi-axis,
  the normalisation's share), so along it ``dL = tr(Bt dS)`` with
  ``Bt = B - sym(r La^T) / sigma^2 + Lm r r^T / (2 sigma^4)`` (monomial: ``B``);
- orientations: ``dS = W S - S W``, ``W = [e_alpha]_x``, so
  ``dL/dtheta = 2 (C_12, C_20, C_01)`` with ``C = S Bt - Bt S``;
- semi-axes: ``dS = beta_k u u^T``, ``u = R e_k``, ``beta_k = 2 l_k g_k^2``
  (``g_k = 1 / (1 + l_k^2 / sigma^2)``; monomial ``2 l_k``), so
  ``dL/dl_k = beta_k u^T Bt u - Lm l_k g_k / sigma^2`` (monomial: no ``Lm`` term).

These ten vectors give positions, orientations and semi-axes alike (the
orientations through ``dS``, not the rotation generators of
``codegen.gradients``: that would need three vectors of the full moment
table more, and the semi-axes the six ``gH`` anyway). One kernel serves both
``semiaxes_gradients`` settings: the semi-axis part (about 40 operations per
block) runs only when the call asks for it.

Layout (``backward_intrinsic``), per group of ``lanes`` consecutive
segments (one ``prange`` iteration):

1. SIMD across the group's segments, in float64, out of line per l: the
   cotangent rows loaded, checked finite, times ``W_l^T``, contracted with
   the non-zeros of ``T'_l`` into ``gM``; then the ten vectors' entries
   (``segment_plan``) rounded to the compute dtype into a stack table, one
   lane vector per entry;
2. per segment, its pairs in blocks of ``lanes`` (one pair per lane, the
   density kernel's walk: the last block moved back to end at the segment's
   end, so it may compute again, identically, pairs of the block before):
   loads, screen, geometry, the unrolled recurrence of unscaled moments,
   each moment multiplied into the ten dot products as soon as it is
   emitted (each multiply-add reads its segment's entry from the table with
   an embedded broadcast: ``_opaque`` keeps LLVM from hoisting 462
   broadcasts out of the block loop; the longest dot products alternate two
   partial sums, ``PARTIAL_SUMS``), the chain rule, and the block's
   6 (9) results per pair transposed in registers and stored as one vector
   per output; lanes outside the segment (a segment shorter than ``lanes``)
   get benign inputs and store lane by lane into a stack row instead.

Cost at lmax 6 (default radial counts): 84 moments, 462 multiply-adds of dot
products and about 200 of recurrence per block, about 900 vector operations
in all (the centre density's block: about 450). Nothing is on the heap,
nothing per pair is written but its results. The same instructions run for
every lane, block, group and thread: results are bit-identical for any
thread count and any position of a pair in the batch.
"""

from __future__ import annotations

import functools

import numpy as np

from einsum_workbench.reference.hypers import ExpansionHypers

from einsum_workbench.kernels.numba.codegen.density import _emit_exp, _load_rows
from einsum_workbench.kernels.numba.codegen.keys import BACKWARD_CODE_VERSION, backward_kernel_key
from einsum_workbench.kernels.numba.codegen.pairs import (
    COVARIANCE,
    driver_lines,
    emit_moments,
    emit_screen,
    module_head,
    moment_plan,
    require_pair_arrays,
)
from einsum_workbench.kernels.numba.codegen.vector import VectorBuilder, out_of_line
from einsum_workbench.kernels.numba.lanes import checked_density_lanes
from einsum_workbench.kernels.numba.screening import screen_limits
from einsum_workbench.kernels.tables import compact_solid_harmonics, monomial_exponents

#: The ten per-segment vectors, in accumulator order: gM, gA_0..2, gH_ij for (i, j) in ``COVARIANCE``.
FUNCTIONALS = ("M", "A0", "A1", "A2") + tuple(f"H{i}{j}" for i, j in COVARIANCE)
#: Partial sums per dot product, by the functional's kind: the longest chains of dependent
#: multiply-adds (84 terms of M, 56 of each A at lmax 6) alternate between two accumulators, added
#: at the end (measured 3% faster on an Intel Xeon, AVX-512, 8 lanes); the H_ij's 35 terms one.
PARTIAL_SUMS = {"M": 2, "A": 2, "H": 1}


@functools.lru_cache(maxsize=32)
def segment_plan(hypers: ExpansionHypers) -> tuple:
    """The per-segment contraction and the ten vectors' entries, for ``hypers``.

    Returns
    -------
    (gm_terms, entries)
        ``gm_terms[l]``: per monomial t (index into
        ``monomial_exponents(hypers.max_degree)``) with a non-zero of
        ``T'_l = tables.compact_solid_harmonics(hypers)[l]``, ``(t, [(column
        c = m n_l + n, value)])``, so that ``gM[t] = sum_l sum_c value * g_l[c]``.
        ``entries``: ``(u, f, t, factor)`` ordered by moment u (the order the
        recurrence emits moments in), then functional f (index into
        ``FUNCTIONALS``): vector f's entry at moment u is ``factor * gM[t]``
        (module docstring); only entries whose ``gM[t]`` can be non-zero.
    """
    exps = monomial_exponents(hypers.max_degree)
    index = {tuple(e): i for i, e in enumerate(exps.tolist())}
    gm_terms, support = [], set()
    for table in compact_solid_harmonics(hypers):
        flat = table.reshape(table.shape[0], -1)
        rows = []
        for t in range(flat.shape[0]):
            columns = [(int(c), float(flat[t, c])) for c in np.flatnonzero(flat[t])]
            if columns:
                rows.append((t, columns))
                support.add(t)
        gm_terms.append(tuple(rows))
    entries = []
    for u, e in enumerate(exps.tolist()):
        for f, name in enumerate(FUNCTIONALS):
            shifted, factor = list(e), 1.0
            if name[0] == "A":
                k = int(name[1])
                shifted[k] += 1
                factor = float(e[k] + 1)
            elif name[0] == "H":
                i, j = int(name[1]), int(name[2])
                shifted[i] += 1
                shifted[j] += 1
                factor = (e[i] + 2) * (e[i] + 1) / 2.0 if i == j else float((e[i] + 1) * (e[j] + 1))
            t = index.get(tuple(shifted))
            if t is not None and t in support:
                entries.append((u, f, t, factor))
    return tuple(gm_terms), tuple(entries)


def _emit_geometry(v: VectorBuilder, hypers: ExpansionHypers, rv, R, s):
    """Centre (3), covariance {(i, j): S_ij}, scale and ``g_k`` (3; None for the monomial basis).

    The formulas of ``codegen.density._emit_density_geometry`` (3 divisions,
    inline exp; ``R diag(1/d)`` formed once, 9 multiplications fewer), also
    returning ``g_k = 1 / (1 + l_k^2 / sigma^2)``, which the semi-axis
    derivatives need: ``1/d_k = l_k^2 g_k``, ``S = R diag(1/d) R^T``,
    ``a = r - R diag(1/d) R^T r / sigma^2``, ``scale = exp(-k/2) sqrt(g1 g2 g3)``;
    monomial: ``1/d_k = l_k^2``, ``a = r``, ``scale = 1``.
    """
    l2 = [v.mul(s[k], s[k]) for k in range(3)]
    gto = hypers.radial_basis == "gto"
    g = None
    if gto:
        one = v.splat(1.0)
        inv_s2 = v.splat(1.0 / hypers.sigma**2)
        g = [v.div(one, v.fma(l2[k], inv_s2, one)) for k in range(3)]
        inv_d = [v.mul(l2[k], g[k]) for k in range(3)]
    else:
        inv_d = l2
    scaled = [[v.mul(R[i][k], inv_d[k]) for k in range(3)] for i in range(3)]  # R diag(1/d)
    cov = {(i, j): v.dot3([(scaled[i][k], R[j][k]) for k in range(3)]) for (i, j) in COVARIANCE}
    if not gto:
        return rv, cov, v.splat(1.0), None
    # a = r - S r / sigma^2, S r = R diag(1/d) R^T r
    body = [v.dot3([(R[0][k], rv[0]), (R[1][k], rv[1]), (R[2][k], rv[2])]) for k in range(3)]
    centre = [v.sub(rv[i], v.mul(inv_s2, v.dot3([(scaled[i][k], body[k]) for k in range(3)]))) for i in range(3)]
    kk = v.mul(inv_s2, v.dot3([(v.mul(body[k], body[k]), g[k]) for k in range(3)]))
    scale = v.mul(_emit_exp(v, v.mul(v.splat(-0.5), kk)), v.sqrt(v.mul(v.mul(g[0], g[1]), g[2])))
    return centre, cov, scale, g


def _symmetric(entries: dict, i: int, j: int):
    return entries[(min(i, j), max(i, j))]


def _emit_chain_rule(v: VectorBuilder, hypers: ExpansionHypers, dots: dict, rv, centre, cov):
    """(dL/dr (3), Bt {(i, j): vector}) from the ten dot products ``dots`` (scaled; module docstring)."""
    gto = hypers.radial_basis == "gto"
    lm, la = dots["M"], [dots[f"A{k}"] for k in range(3)]
    bt = {(i, j): dots[f"H{i}{j}"] if i == j else v.mul(v.splat(0.5), dots[f"H{i}{j}"]) for i, j in COVARIANCE}
    if not gto:
        return la, bt
    inv_s2 = 1.0 / hypers.sigma**2
    # P La - Lm a / sigma^2 = La - (S La + Lm a) / sigma^2
    dr = []
    for i in range(3):
        inner = v.fma(lm, centre[i], v.dot3([(_symmetric(cov, i, k), la[k]) for k in range(3)]))
        dr.append(v.fma(v.splat(-inv_s2), inner, la[i]))
    # Bt_ij = B_ij + r_i w_j + r_j w_i, w = (Lm r / (2 sigma^2) - La) / (2 sigma^2)
    half = v.splat(0.5 * inv_s2)
    w = [v.mul(half, v.fma(v.mul(lm, half), rv[k], v.sub(v.splat(0.0), la[k]))) for k in range(3)]
    for i, j in COVARIANCE:
        bt[(i, j)] = v.fma(rv[i], w[j], v.fma(rv[j], w[i], bt[(i, j)]))
    return dr, bt


def _emit_orientations(v: VectorBuilder, cov, bt):
    """``dL/dtheta = 2 (C_12, C_20, C_01)``, ``C = S Bt - Bt S`` (both symmetric)."""
    out = []
    for i, j in ((1, 2), (2, 0), (0, 1)):
        sb = v.dot3([(_symmetric(cov, i, k), _symmetric(bt, k, j)) for k in range(3)])
        bs = v.dot3([(_symmetric(bt, i, k), _symmetric(cov, k, j)) for k in range(3)])
        out.append(v.mul(v.splat(2.0), v.sub(sb, bs)))
    return out


def _emit_semiaxes(v: VectorBuilder, hypers: ExpansionHypers, lm, bt, R, s, g):
    """``dL/dl_k = beta_k u^T Bt u - Lm l_k g_k / sigma^2`` (module docstring), ``u = R e_k``."""
    out = []
    for k in range(3):
        u = [R[i][k] for i in range(3)]
        diagonal = v.dot3([(bt[(i, i)], v.mul(u[i], u[i])) for i in range(3)])
        off = v.dot3([(bt[(0, 1)], v.mul(u[0], u[1])), (bt[(0, 2)], v.mul(u[0], u[2])),
                      (bt[(1, 2)], v.mul(u[1], u[2]))])
        quadratic = v.fma(v.splat(2.0), off, diagonal)
        if g is None:  # monomial: beta = 2 l_k, no normalisation term
            out.append(v.mul(v.mul(v.splat(2.0), s[k]), quadratic))
            continue
        lg = v.mul(s[k], g[k])
        beta = v.mul(v.splat(2.0), v.mul(lg, g[k]))
        out.append(v.fma(beta, quadratic, v.mul(v.mul(v.splat(-1.0 / hypers.sigma**2), lm), lg)))
    return out


def _opaque(builder, pointer):
    """``pointer``, through an empty inline asm: LLVM cannot tell it is the same in every block, so it
    does not hoist the segment's entry broadcasts out of the block loop (462 broadcasts and stack
    stores per segment, then a full-vector reload per multiply-add); each multiply-add then reads its
    entry from the table with an embedded broadcast. Measured 20% faster for the kernel (Intel Xeon,
    AVX-512, 8 lanes, default workload: 1.02 to 0.80 ms)."""
    from llvmlite import ir

    opaque = ir.InlineAsm(ir.FunctionType(pointer.type, [pointer.type]), "", "=r,0")
    return builder.call(opaque, [pointer])


def backward_intrinsic(hypers: ExpansionHypers, dtype, lanes: int):
    """Numba intrinsic ``backward_group(r, rot, ax, starts, group, cotangent, w, out_r, out_theta, out_axes,
    want_axes)``: the pairs of ``lanes`` consecutive segments.

    Segments ``s = group * lanes + i`` (i < lanes; those >= S = len(starts) - 1
    are empty) are pairs ``starts[s] .. starts[s+1] - 1`` of the C-contiguous
    ``r`` (P, 3), ``rot`` (P, 3, 3), ``ax`` (P, 3) of ``dtype``, P >= lanes.
    ``cotangent``: a tuple over l of flat C-order float64 ``(S, 2l+1, n_l)``
    arrays (``dL/drho_l``, on orthonormalised rows when ``w`` holds W_l);
    ``w``: float64 ``W_0, W_1, ...`` row-major, concatenated (identities for
    raw rows). Writes rows p of the C-contiguous ``out_r``, ``out_theta``
    ((P', 3), P' >= every pair of a segment) and, when ``want_axes`` is
    non-zero, ``out_axes``; nothing else. Returns 1 if some pair could fail
    ``check_pair_arrays``'s value tests or some cotangent entry of the group
    is not finite, else 0. Module docstring: the formulas and the layout.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.extending import intrinsic
    from numba.np import numpy_support

    dtype = np.dtype(dtype)
    steps = moment_plan(hypers.max_degree)
    gm_terms, entries = segment_plan(hypers)
    limits = screen_limits(dtype, hypers)
    n_moments = len(steps) + 1
    n_entries = max(1, len(entries))
    at_moment: dict[int, list] = {}
    for e, (u, f, _, _) in enumerate(entries):
        at_moment.setdefault(u, []).append((e, f))
    w_offsets = [int(c) for c in np.cumsum([0] + [n * n for n in hypers.num_radial])]
    n_channels = hypers.lmax + 1
    i64 = ir.IntType(64)
    prefix = f"numba_backward_{backward_kernel_key(hypers, dtype, lanes)}"
    scalar = ir.DoubleType() if dtype == np.dtype(np.float64) else ir.FloatType()
    vector = ir.VectorType(scalar, lanes)
    double_vector = ir.VectorType(ir.DoubleType(), lanes)

    def const(value):
        return ir.Constant(i64, int(value))

    def splat_scalar(vb: VectorBuilder, value):
        kind = ir.VectorType(ir.IntType(32), lanes)
        one = vb.b.insert_element(ir.Constant(vb.vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        return vb.b.shuffle_vector(one, ir.Constant(vb.vector, ir.Undefined), ir.Constant(kind, [0] * lanes))

    def channel_function(module, l: int):
        """``void channel_l(double* g_l, double* w, <lanes x double>* gm, i64 first, i64 n_segments, i64* bad)``.

        SIMD across segments ``first .. first + lanes - 1`` (rows past the last
        segment read the last one's: those segments are empty): their rows of
        ``g_l`` times ``W_l^T`` (``raw[m, n] = sum_n' g[m, n'] W_l[n, n']``),
        contracted with the non-zeros of ``T'_l`` and added into ``gm[t]``;
        ``*bad`` set to 1 when a loaded entry is not finite.
        """
        n_l = hypers.num_radial[l]
        width = (2 * l + 1) * n_l

        def body(builder, g, w, gm, first, n_segments, bad):
            vd = VectorBuilder(builder, np.float64, lanes)
            last = builder.sub(n_segments, const(1))
            rows = []
            for j in range(lanes):
                row = builder.add(first, const(j))
                rows.append(builder.select(builder.icmp_signed("<", row, n_segments), row, last))
            columns = [vd.gather_rows(g, rows, width, c) for c in range(width)]
            total = columns[0]
            for column in columns[1:]:
                total = vd.add(total, column)
            fine = builder.fcmp_ordered("==", vd.sub(total, total), vd.splat(0.0))
            mask = builder.bitcast(fine, ir.IntType(lanes))
            finite = builder.icmp_unsigned("==", mask, ir.Constant(ir.IntType(lanes), (1 << lanes) - 1))
            builder.store(builder.select(finite, builder.load(bad), const(1)), bad)
            weights = [[splat_scalar(vd, builder.load(builder.gep(w, [const(w_offsets[l] + i * n_l + k)],
                                                                  inbounds=True)))
                        for k in range(n_l)] for i in range(n_l)]
            raw = []
            for m in range(2 * l + 1):
                for n in range(n_l):
                    value = vd.mul(columns[m * n_l], weights[n][0])
                    for k in range(1, n_l):
                        value = vd.fma(columns[m * n_l + k], weights[n][k], value)
                    raw.append(value)
            for t, terms in gm_terms[l]:
                slot = builder.gep(gm, [const(t)], inbounds=True)
                value = builder.load(slot)
                for c, coefficient in terms:
                    value = vd.fma(vd.splat(coefficient), raw[c], value)
                builder.store(value, slot)

        return out_of_line(module, f"{prefix}_channel_{l}",
                           [ir.DoubleType().as_pointer(), ir.DoubleType().as_pointer(), double_vector.as_pointer(),
                            i64, i64, i64.as_pointer()], body)

    def entries_function(module):
        """``void entries(<lanes x double>* gm, <lanes x T>* table)``: ``table[e] = factor_e * gm[t_e]``."""

        def body(builder, gm, table):
            vd = VectorBuilder(builder, np.float64, lanes)
            loaded = {}
            for e, (_, _, t, factor) in enumerate(entries):
                if t not in loaded:
                    loaded[t] = builder.load(builder.gep(gm, [const(t)], inbounds=True))
                value = loaded[t] if factor == 1.0 else vd.mul(vd.splat(factor), loaded[t])
                if dtype != np.dtype(np.float64):
                    value = builder.fptrunc(value, vector)
                builder.store(value, builder.gep(table, [const(e)], inbounds=True))

        return out_of_line(module, f"{prefix}_entries", [double_vector.as_pointer(), vector.as_pointer()], body)

    def store_rows(v: VectorBuilder, values, out, first, inside, full, spare):
        """Lane j of ``values`` (3 vectors) to row ``first + j`` of ``out`` (3 per row) where ``inside[j]``,
        else to ``spare``: one vector store when ``full`` (every lane inside), else lane by lane."""
        b = v.b
        with b.if_else(full) as (whole, partial):
            with whole:  # the rows transposed in registers, one store of 3 lanes values
                wide = ir.VectorType(ir.IntType(32), 2 * lanes)
                pair = b.shuffle_vector(values[0], values[1], ir.Constant(wide, list(range(2 * lanes))))
                third = b.shuffle_vector(values[2], ir.Constant(v.vector, ir.Undefined),
                                         ir.Constant(wide, list(range(lanes)) + [0] * lanes))
                order = [k * lanes + j if k < 2 else 2 * lanes + j for j in range(lanes) for k in range(3)]
                rows = b.shuffle_vector(pair, third, ir.Constant(ir.VectorType(ir.IntType(32), 3 * lanes), order))
                target = b.bitcast(b.gep(out, [b.mul(first, const(3))], inbounds=True),
                                   ir.VectorType(scalar, 3 * lanes).as_pointer())
                b.store(rows, target, align=v.itemsize)
            with partial:
                for j in range(lanes):
                    row = b.gep(out, [b.mul(b.add(first, const(j)), const(3))])  # not inbounds: may be unused
                    target = b.select(inside[j], row, spare)
                    for c in range(3):
                        element = b.extract_element(values[c], ir.Constant(ir.IntType(32), j))
                        b.store(element, b.gep(target, [const(c)]), align=v.itemsize)

    def emit_block(b, r, rot, ax, table, outs, spare, first, start, stop, want_axes):
        """Pairs ``first .. first + lanes - 1``; returns the screen's i64 flag (1: a lane is suspect).

        Lanes whose pair is outside ``[start, stop)`` (this segment) get benign inputs
        (r = 0, R = I, semi-axes 1) and store into ``spare``; the others compute with
        the segment's entries (``table``: this segment's lane of the entry table, a
        scalar pointer) and store their pair's rows (a pair that an earlier block of
        the segment computed is computed again, by the same instructions: the same
        values). Emitted inline in the segment's loop; ``table`` reaches it through
        ``_opaque``, so that the entries are read per block, broadcast inside the
        multiply-adds (measured 20% faster than LLVM's hoisting them out of the loop).
        """
        v = VectorBuilder(b, dtype, lanes)
        zero, one = v.splat(0.0), v.splat(1.0)
        inside = []
        for j in range(lanes):
            pair = b.add(first, const(j))
            inside.append(b.and_(b.icmp_signed(">=", pair, start), b.icmp_signed("<", pair, stop)))
        full = inside[0]
        for flag in inside[1:]:
            full = b.and_(full, flag)
        mask = v.lane_mask(inside)
        rv = [v.select(mask, x, zero) for x in _load_rows(v, r, first, 3)]
        flat = _load_rows(v, rot, first, 9)
        R = [[v.select(mask, flat[3 * i + k], one if i == k else zero) for k in range(3)] for i in range(3)]
        s = [v.select(mask, x, one) for x in _load_rows(v, ax, first, 3)]
        screen = b.zext(emit_screen(v, rv, R, s, limits), i64)
        centre, cov, scale, g = _emit_geometry(v, hypers, rv, R, s)
        acc = {}

        # unscaled moments (E[0] = 1); each joins its dot products as soon as it is emitted
        terms = dict.fromkeys(range(len(FUNCTIONALS)), 0)

        def accumulate(u, moment):
            for e, f in at_moment.get(u, ()):
                entry = splat_scalar(v, b.load(b.gep(table, [const(e * lanes)], inbounds=True), align=v.itemsize))
                key = (f, terms[f] % PARTIAL_SUMS[FUNCTIONALS[f][0]])
                terms[f] += 1
                acc[key] = v.mul(entry, moment) if key not in acc else v.fma(entry, moment, acc[key])

        emit_moments(v, steps, centre, cov, one, accumulate)
        sums = {}
        for (f, _), value in acc.items():
            sums[f] = value if f not in sums else v.add(sums[f], value)
        dots = {name: v.mul(scale, sums[f]) if f in sums else zero for f, name in enumerate(FUNCTIONALS)}
        dr, bt = _emit_chain_rule(v, hypers, dots, rv, centre, cov)
        store_rows(v, dr, outs[0], first, inside, full, spare)
        store_rows(v, _emit_orientations(v, cov, bt), outs[1], first, inside, full, spare)
        with b.if_then(b.icmp_signed("!=", want_axes, const(0))):
            store_rows(v, _emit_semiaxes(v, hypers, dots["M"], bt, R, s, g), outs[2], first, inside, full, spare)
        return screen

    def segment_pairs(b, r, rot, ax, n_pairs, start, stop, table, outs, want_axes, spare, suspect):
        """Every pair of one segment, in blocks of ``lanes`` (the density kernel's walk,
        ``codegen.density.density_intrinsic``: the last block moved back to end at the
        segment's end, or at the batch's)."""
        count = b.sub(stop, start)
        n_blocks = b.sdiv(b.add(count, const(lanes - 1)), const(lanes))
        latest = b.sub(n_pairs, const(lanes))
        back = b.sub(stop, const(lanes))
        with cgutils.for_range(b, n_blocks) as loop:
            p0 = b.add(start, b.mul(loop.index, const(lanes)))
            first = b.select(b.icmp_signed("<", back, p0), back, p0)
            first = b.select(b.icmp_signed("<", first, start), p0, first)
            first = b.select(b.icmp_signed("<", latest, first), latest, first)
            screen = emit_block(b, r, rot, ax, _opaque(b, table), outs, spare, first, start, stop, want_axes)
            b.store(b.or_(b.load(suspect), screen), suspect)

    def data(context, builder, kind, value):
        return cgutils.create_struct_proxy(kind)(context, builder, value=value)

    def codegen(context, builder, signature, args):
        r_t, rot_t, ax_t, starts_t, group_t, cot_t, w_t, out_t = signature.args[:8]
        r, rot, ax = (data(context, builder, t, a).data for t, a in zip((r_t, rot_t, ax_t), args[:3]))
        n_pairs = cgutils.unpack_tuple(builder, data(context, builder, r_t, args[0]).shape, 2)[0]
        starts_array = data(context, builder, starts_t, args[3])
        starts = starts_array.data
        n_segments = builder.sub(cgutils.unpack_tuple(builder, starts_array.shape, 1)[0], const(1))
        group = context.cast(builder, args[4], group_t, types.int64)
        cotangent = [data(context, builder, cot_t.dtype, builder.extract_value(args[5], l)).data
                     for l in range(n_channels)]
        w = data(context, builder, w_t, args[6]).data
        outs = [data(context, builder, out_t, a).data for a in args[7:10]]
        want_axes = context.cast(builder, args[10], signature.args[10], types.int64)
        # stack only: gM of the group's segments, the entry table, a row for lanes outside a share
        gm_array = cgutils.alloca_once(builder, ir.ArrayType(double_vector, n_moments), name="backward_gm")
        gm = builder.bitcast(gm_array, double_vector.as_pointer())
        table_array = cgutils.alloca_once(builder, ir.ArrayType(vector, n_entries), name="backward_entries")
        table = builder.bitcast(table_array, vector.as_pointer())
        spare = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(scalar, 3), name="backward_spare"),
                                scalar.as_pointer())
        suspect = cgutils.alloca_once_value(builder, const(0))
        first_segment = builder.mul(group, const(lanes))
        cgutils.memset(builder, gm_array, const(n_moments * lanes * 8), 0)

        # 1. the group's segment vectors, SIMD across its segments
        for l in range(n_channels):
            if not hypers.num_radial[l]:  # no coefficient in this channel
                continue
            builder.call(channel_function(builder.module, l),
                         [cotangent[l], w, gm, first_segment, n_segments, suspect])
        builder.call(entries_function(builder.module), [gm, table])

        # 2. per segment, its pairs
        table_scalars = builder.bitcast(table, scalar.as_pointer())
        with cgutils.for_range(builder, const(lanes)) as outer:
            segment = builder.add(first_segment, outer.index)
            real = builder.icmp_signed("<", segment, n_segments)
            index = builder.select(real, segment, const(0))
            start = builder.select(real, builder.load(builder.gep(starts, [index], inbounds=True)), const(0))
            stop = builder.select(real, builder.load(builder.gep(starts, [builder.add(index, const(1))],
                                                                 inbounds=True)), const(0))
            mine = builder.gep(table_scalars, [outer.index], inbounds=True)
            segment_pairs(builder, r, rot, ax, n_pairs, start, stop, mine, outs, want_axes, spare, suspect)
        return builder.load(suspect)

    @intrinsic
    def backward_group(typingctx, r, rot, ax, starts, group, cotangent, w, out_r, out_theta, out_axes, want_axes):
        require_pair_arrays("backward_group", dtype, r, rot, ax)
        if not (isinstance(starts, types.Array) and starts.layout == "C" and starts.ndim == 1
                and starts.dtype == types.int64):
            raise TypingError(f"backward_group: starts must be a C-contiguous int64 vector, got {starts}")
        if not isinstance(group, types.Integer) or not isinstance(want_axes, types.Integer):
            raise TypingError(f"backward_group: group and want_axes must be integers, got {group}, {want_axes}")
        if not (isinstance(cotangent, types.UniTuple) and len(cotangent) == n_channels
                and isinstance(cotangent.dtype, types.Array) and cotangent.dtype.layout == "C"
                and cotangent.dtype.dtype == types.float64):
            raise TypingError(f"backward_group: cotangent must be a tuple of {n_channels} C-contiguous float64 "
                              f"arrays, got {cotangent}")
        if not (isinstance(w, types.Array) and w.layout == "C" and w.dtype == types.float64):
            raise TypingError(f"backward_group: w must be a C-contiguous float64 array, got {w}")
        for name, out in (("out_r", out_r), ("out_theta", out_theta), ("out_axes", out_axes)):
            if not (out == out_r and isinstance(out, types.Array) and out.layout == "C"
                    and out.dtype == numpy_support.from_dtype(dtype)):
                raise TypingError(f"backward_group: {name} must be a C-contiguous {dtype} array of out_r's type, "
                                  f"got {out}")
        return types.int64(r, rot, ax, starts, group, cotangent, w, out_r, out_theta, out_axes, want_axes), codegen

    return backward_group


def generate_backward_source(hypers: ExpansionHypers, dtype, lanes: int | None = None) -> str:
    """Python source of the specialised backward module (a file: Numba's disk cache keys on it).

    Parameters
    ----------
    hypers : ExpansionHypers
    dtype : float32 or float64, the compute dtype
    lanes : pairs per block and segments per group (default ``lanes.default_density_lanes(dtype)``)

    Returns
    -------
    str: a module defining ``LANES`` and ``backward_segments(r (P,3), rot (P,3,3), ax (P,3),
    starts (S+1,) int64, w, g0, ..., g_lmax, out_r, out_theta, out_axes, want_axes)``:
    ``g_l`` the flat float64 cotangent of channel l, ``w`` the float64 row-major
    ``W_l`` concatenated, the outputs (P, 3) arrays of ``dtype`` (``out_axes``
    written only when ``want_axes``), P >= ``LANES``; it returns the number of
    groups of segments holding a suspect pair or a non-finite cotangent entry.

    Raises
    ------
    ValueError
        dtype not float32/float64, or a bad ``lanes``.
    """
    dtype = np.dtype(dtype)
    lanes = checked_density_lanes(dtype, lanes)
    key = backward_kernel_key(hypers, dtype, lanes)
    title = (f"numba_fused backward kernel for {hypers!r}, {dtype}, {lanes} lanes "
             f"(backward code version {BACKWARD_CODE_VERSION}, key {key}).")
    lines = module_head(title, __name__, "backward_intrinsic", dtype, lanes) + [
        f"HYPERS = ExpansionHypers(**{hypers.as_dict()!r})",
        "backward_group = backward_intrinsic(HYPERS, FT, LANES)",
        "",
        "",
    ]
    cotangent = ", ".join(f"g{l}" for l in range(hypers.lmax + 1))
    setup = [
        '    """Every pair of segment s = pairs starts[s] .. starts[s + 1] - 1: its rows of out_r, out_theta',
        "    (and out_axes when want_axes) from the cotangent g{l} of row s. Returns the number of groups",
        "    holding a pair that check_pair_arrays could reject or a non-finite cotangent entry.",
        '    """',
        f"    cotangent = ({cotangent},)",
        f"    n_groups = (starts.shape[0] - 1 + {lanes - 1}) // {lanes}",
    ]
    signature = f"backward_segments(r, rot, ax, starts, w, {cotangent}, out_r, out_theta, out_axes, want_axes)"
    lines += driver_lines(signature, setup, "group in prange(n_groups)",
                          "backward_group(r, rot, ax, starts, group, cotangent, w, out_r, out_theta, out_axes, "
                          "want_axes)")
    return "\n".join(lines) + "\n"

"""Arithmetic on SIMD vectors in LLVM IR: the builder every specialised Numba kernel emits with.

One ``VectorBuilder`` wraps an ``llvmlite`` IR builder and a vector type of
``lanes`` floats (one lane per pair, or per segment): element-wise
arithmetic, the ``llvm.fma`` / ``llvm.sqrt`` / ``llvm.exp`` intrinsics, gathers
and scatters of rows, in-register transposes, lane sums. ``out_of_line``
defines the kernels' ``noinline`` helper functions (one straight-line block
each: LLVM's compile time grows faster than linearly with one block's size).
Nothing here knows the expansion; the emitters are ``codegen.pairs``,
``codegen.density`` and ``codegen.gradients``.
"""

from __future__ import annotations

import numpy as np


class VectorBuilder:
    """Arithmetic on SSA vectors of ``lanes`` values (one lane per pair) in LLVM IR.

    ``builder``: the ``llvmlite.ir.IRBuilder`` emitting into the current
    block (``b``); ``dtype``: float32 or float64 (``scalar``, ``itemsize``;
    ``vector`` is ``<lanes x scalar>``). Every operation emits the same
    instructions on every lane, so results do not depend on a pair's lane.
    """

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

    def lane_row(self, columns, j: int):
        """Vector (columns[0][j], columns[1][j], ...) by a tree of shuffles (``len(columns)`` a power of
        two: lane j of each column, transposed into one vector, as ``store_rows`` writes a pair's row)."""
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
                self.b.store(self.lane_row(group, j), ptr, align=self.itemsize)
        for c in range(full, width):
            self.scatter_rows(values[c], data, first_row, width, c)



def out_of_line(module, name: str, arguments: list, body):
    """The internal ``noinline``, ``nounwind`` void function ``name`` of the LLVM ``module``.

    Defined on first request: ``body(builder, *parameters)`` emits its one
    straight-line block (``arguments``: the parameters' IR types), then it
    returns; a later request returns the same function. The kernels put each
    l (or group of output columns) in one such function, which keeps every
    block small and bounds LLVM's compile time at large lmax.
    """
    from llvmlite import ir

    if name in module.globals:
        return module.globals[name]
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), arguments), name=name)
    function.linkage = "internal"
    function.attributes.add("noinline")
    function.attributes.add("nounwind")
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    body(builder, *function.args)
    builder.ret_void()
    return function

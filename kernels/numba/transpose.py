"""The tile kernels' shuffles: rows of C <= 16 elements transposed into C columns of a tile,
or reduced to one value per row.

The tile kernels (codegen._Gen.tile_kernel) copy a tile of short rows transposed, so that
their passes vectorise across rows. Written as a loop per column, the copy reads one strided
element at a time: 0.33 ns per element on one core of a 2-core EPYC (float32, rows of 10, in
cache), 0.55 of the 1.56 ns per element that categorical crossentropy's tile kernel takes
for its two inputs. LLVM does not turn a strided read into shuffles, and Numba has no vector
types, so :func:`transpose16` writes the LLVM IR itself: sixteen 16-lane loads, one from the
start of each row, a 16 x 16 transpose in four stages of two-input shuffles (the stage k
exchanges bit k of the row with bit k of the lane), and one 16-lane store per column. Same
measurement: rows of 10 0.132 ns per element, of 16 0.072, of 7 0.134, of 3 0.199 (the
loop: 0.29-0.33). The values are moved, never converted: the same bits as the loop.

:func:`row_sums16` and :func:`row_maxima16` run the same stages on 16 rows of term values and
combine each stage's pair at once, so that 16 rows end as one vector of their sums or maxima:
30 shuffles per 16 rows instead of 64, and no column is stored. They serve the ``tile_tree``
kernels, which compute a pass's terms along the elements as they lie and keep no transposed
copy (figures at codegen.TREE_MIN_C). Both work in float32 and write float64. A row's sum is
its own statistic, as Keras's float32 reduce_sum over the row is, not the loss's accumulation:
the rows' losses are still added in float64. Summed pairwise in four stages, a row of at most
16 float32 terms is within four roundings of its exact sum; at 1e8 elements in rows of 10 the
losses' relative error against a float64 NumPy reference was 3.0e-8 (CategoricalHinge, one-hot
labels), 3.4e-8 (soft labels), 1.5e-9 (MSE per row), 1.3e-8 (Huber). Widened to float64 (each
row as 8 + 8 lanes added, then three stages of 8-lane shuffles, from a float64 buffer written
by the term loop) the sum took 0.17 of CategoricalHinge's 0.39 ns per element (one core, 1e6
float32 in rows of 10, in cache; the term loop 0.11-0.13, the maximum 0.07); in float32 the
kernel takes 0.85-0.91 of that time in cache and 0.86-0.93 at 1e7 on 2 threads (paired, medians
of 31-41). Kept from then: masked loads instead of loads and selects lost (0.41 against 0.39 ns
per element), and a prefetch of the next tile spread over the 16-row groups, as the copied
tiles do, lost at 1e7 (paired against the tile: 0.85 with it, 0.79 without; with the float32
sums, one to eight tiles ahead: 1.15-1.36 of the time without).

A tile's rows are read in a burst and then computed on while memory idles, unless the next
tile's lines are already on their way. :func:`prefetch_lines` asks for one share of them: the
tile kernels of K passes over C columns ask for share k·C + j of K·C in column j of pass k, so
the requests are spread over the whole compute of a tile. All of them at once after the copy
(128 lines for two inputs, far more than a core's dozens of outstanding misses) stalled the core
until most had arrived, so that reading and computing still took turns. CCE at 1e7 float32 in
rows of 10, the tile kernel on 2 threads, alternating, paired ratios (medians of 31) against the
prefetch after the copy: no prefetch 1.02-1.07, all lines after the copy as prefetcht2
0.86-0.89, spread over the column loops 0.77 (CCE from probabilities, twice), 0.82 from logits,
0.84 focal, 0.86 SCCE from probabilities, 0.93 from logits; two tiles ahead instead of one: no
better (0.77-0.94). Shares worked out once a tile (:func:`share_lines`) rather than by two
divisions in every call: CCE 0.73 instead of 0.77 at 1e7; in cache (1e6) the prefetches cost 4-5
%. The prefetch after the copy had itself gained only 0.88-0.97 against none; with the shuffles
the copy takes 0.78-0.93 of the column loop's time at 1e6 and 1e7.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

__all__ = ["LANES", "copy_columns", "prefetch_lines", "row_maxima16", "row_sums16", "share_lines", "transpose16"]

#: Rows per transposed block, and the most columns a block holds.
LANES = 16

_F32 = ir.FloatType()
_F64 = ir.DoubleType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)


def _stage_masks(bit: int) -> tuple[ir.Constant, ir.Constant]:
    """Shuffle masks of one transpose stage for the rows a (bit clear) and b = a | bit: lane j
    of the new a takes a's lane j where bit is clear in j, else b's lane j - bit; the new b
    takes a's lane j + bit where bit is clear, else b's lane j (b's lanes count from LANES)."""
    low = [j if not j & bit else (j - bit) + LANES for j in range(LANES)]
    high = [j + bit if not j & bit else j + LANES for j in range(LANES)]
    mask = ir.VectorType(_I32, LANES)
    return ir.Constant(mask, low), ir.Constant(mask, high)


_MASKS = [_stage_masks(1 << k) for k in range(4)]


def _c_float32_matrix(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 2 and t.layout == "C"


@intrinsic
def transpose16(typingctx, src, row0, dst, col0):
    """``dst[j, col0:col0 + 16] = src[row0:row0 + 16, j]`` for every column j of ``src``
    (float32, C order, at most 16 columns). Each row is read as 16 floats from its start, so
    the caller keeps ``(row0 + 15) * C + 16 <= src.size`` (no read beyond the array)."""
    if not (_c_float32_matrix(src) and _c_float32_matrix(dst)
            and isinstance(row0, types.Integer) and isinstance(col0, types.Integer)):
        return None
    sig = types.void(src, types.intp, dst, types.intp)

    def codegen(context, builder, sig, args):
        s = context.make_array(sig.args[0])(context, builder, args[0])
        d = context.make_array(sig.args[2])(context, builder, args[2])
        row0, col0 = args[1], args[3]
        C = builder.extract_value(s.shape, 1)
        tr = builder.extract_value(d.shape, 1)
        vec_ptr = _VEC.as_pointer()
        rows = [builder.load(builder.bitcast(row, vec_ptr), align=4)
                for row in _row_pointers(builder, s, builder.mul(row0, C), C)]
        for k, (low, high) in enumerate(_MASKS):
            bit = 1 << k
            new = list(rows)
            for a in range(LANES):
                if a & bit:
                    continue
                new[a] = builder.shuffle_vector(rows[a], rows[a | bit], low)
                new[a | bit] = builder.shuffle_vector(rows[a], rows[a | bit], high)
            rows = new
        out = builder.gep(d.data, [col0])
        for j in range(LANES):  # rows[j] is now column j; the columns past C are not stored
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, j), C), likely=True):
                column = builder.gep(out, [builder.mul(ir.Constant(_I64, j), tr)])
                builder.store(rows[j], builder.bitcast(column, vec_ptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _reduce_stages(builder, vectors: list, combine):
    """The stages of the transpose above with each stage's pair combined at once: stage k
    shuffles vectors a and a | 2^k as the transpose does and keeps ``combine(low, high)`` in a.
    Shuffles move lanes and the combination works lane by lane, so combining early is
    combining the transposed columns at the end: of 16 rows of 16 lanes, lane j of the one
    vector left holds the combination of row j's lanes. Four stages, 8 + 4 + 2 + 1 shuffle
    pairs (the transpose: 64)."""
    for low, high in _MASKS:
        vectors = [combine(builder.shuffle_vector(a, b, low), builder.shuffle_vector(a, b, high))
                   for a, b in zip(vectors[0::2], vectors[1::2])]
    (combined,) = vectors
    return combined


def _lanes_below(builder, C):
    """The mask ``j < C`` for lanes j."""
    index = ir.Constant(ir.VectorType(_I64, LANES), list(range(LANES)))
    splat = builder.insert_element(ir.Constant(ir.VectorType(_I64, LANES), None), C, ir.Constant(_I32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))
    return builder.icmp_signed("<", index, splat)


def _row_pointers(builder, s, start, C):
    first = builder.gep(s.data, [start])
    return [builder.gep(first, [builder.mul(ir.Constant(_I64, r), C)]) for r in range(LANES)]


def _c_vector(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == 1 and t.layout == "C"


def _rows16(builder, s, start, C, fill: float) -> list:
    """The 16 rows from ``start`` as 16-lane float32 vectors, ``fill`` in the lanes past C."""
    kept = _lanes_below(builder, C)
    filler = ir.Constant(_VEC, [fill] * LANES)
    return [builder.select(kept, builder.load(builder.bitcast(row, _VEC.as_pointer()), align=4), filler)
            for row in _row_pointers(builder, s, start, C)]


def _store_widened(builder, d, d0, values) -> None:
    """The 16 float32 lanes of ``values`` to ``d[d0:d0 + 16]`` as float64, in two halves of 8."""
    wide = builder.fpext(values, ir.VectorType(_F64, LANES))
    v8 = ir.VectorType(_F64, 8)
    out = builder.gep(d.data, [d0])
    for h in (0, 8):
        half = builder.shuffle_vector(wide, wide, ir.Constant(ir.VectorType(_I32, 8), list(range(h, h + 8))))
        builder.store(half, builder.bitcast(builder.gep(out, [ir.Constant(_I64, h)]), v8.as_pointer()), align=8)


@intrinsic
def row_sums16(typingctx, src, start, C, dst, d0):
    """``dst[d0 + r] = sum(src[start + r*C : start + r*C + C])`` for r < 16 (float32 read and
    added, float64 written, C <= 16), in a fixed pairwise order: lanes 2j and 2j + 1 of a row
    (zero past its end), then pairs of those, and so on. Each row is read as 16 values from
    its start, so the caller keeps ``start + 15 * C + 16 <= src.size`` and ``d0 + 16 <=
    dst.size``."""
    if not (_c_vector(src, types.float32) and _c_vector(dst, types.float64)
            and all(isinstance(a, types.Integer) for a in (start, C, d0))):
        return None
    sig = types.void(src, types.intp, types.intp, dst, types.intp)

    def codegen(context, builder, sig, args):
        s = context.make_array(sig.args[0])(context, builder, args[0])
        d = context.make_array(sig.args[3])(context, builder, args[3])
        start, C, d0 = args[1], args[2], args[4]
        _store_widened(builder, d, d0, _reduce_stages(builder, _rows16(builder, s, start, C, 0.0), builder.fadd))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def row_maxima16(typingctx, src, start, C, dst, d0, has_nan):
    """``dst[d0 + r]`` = the largest of ``src[start + r*C : start + r*C + C]`` for r < 16
    (float32 read, float64 written, C <= 16), NaN where the row has one (as tf.reduce_max);
    reads as :func:`row_sums16`. ``has_nan``: whether any of the values may be NaN; where not,
    each stage is one compare and select (a vector max), else two compares, an or and a select
    that keep a NaN from either side (one core, rows of 10 in cache: CategoricalHinge's tree
    kernel 0.436 ns per element with those always, 0.39 with them only where a tile has NaN)."""
    if not (_c_vector(src, types.float32) and _c_vector(dst, types.float64)
            and all(isinstance(a, types.Integer) for a in (start, C, d0)) and isinstance(has_nan, types.Boolean)):
        return None
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.boolean)

    def codegen(context, builder, sig, args):
        s = context.make_array(sig.args[0])(context, builder, args[0])
        d = context.make_array(sig.args[3])(context, builder, args[3])
        start, C, d0, has_nan = args[1], args[2], args[4], args[5]
        rows = _rows16(builder, s, start, C, float("-inf"))

        def larger(a, b):
            return builder.select(builder.fcmp_ordered(">", a, b), a, b)

        def larger_or_nan(a, b):  # a where a is NaN or the larger, else b: NaN in either one propagates
            return builder.select(builder.or_(builder.fcmp_unordered("uno", a, a), builder.fcmp_ordered(">", a, b)),
                                  a, b)

        nan = builder.icmp_unsigned("!=", has_nan, ir.Constant(has_nan.type, 0))
        with builder.if_else(nan, likely=False) as (some, none_there):
            for branch, combine in ((some, larger_or_nan), (none_there, larger)):
                with branch:
                    _store_widened(builder, d, d0, _reduce_stages(builder, rows, combine))
        return context.get_dummy_value()

    return sig, codegen


#: Bytes per cache line: one prefetch each.
LINE = 64


@intrinsic
def _prefetch_lines(typingctx, src, row0, nrows, skip, count):
    """Ask the cache for ``count`` lines of rows ``row0 .. row0 + nrows`` of ``src`` (C order)
    after the first ``skip``, clipped to those rows and the array: one prefetch per 64 bytes
    from the rows' first byte, no load."""
    if not (isinstance(src, types.Array) and src.layout == "C" and src.ndim == 2
            and all(isinstance(a, types.Integer) for a in (row0, nrows, skip, count))):
        return None
    sig = types.void(src, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        s = context.make_array(sig.args[0])(context, builder, args[0])
        R = builder.extract_value(s.shape, 0)
        C = builder.extract_value(s.shape, 1)
        itemsize = ir.Constant(_I64, context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype)))
        row0, nrows, skip, count = args[1:]
        zero, line = ir.Constant(_I64, 0), ir.Constant(_I64, LINE)
        end = builder.add(row0, nrows)
        end = builder.select(builder.icmp_signed("<", end, R), end, R)
        start = builder.select(builder.icmp_signed("<", row0, end), row0, end)
        start = builder.select(builder.icmp_signed("<", start, zero), zero, start)
        i8p = ir.IntType(8).as_pointer()
        base = builder.bitcast(s.data, i8p)
        # bytes [lo, hi): no division here, the caller works out the shares once per tile
        # (two divisions per call, hoisted by nobody, cost CCE's tile kernel 9 % in cache)
        first = builder.mul(builder.mul(start, C), itemsize)
        last = builder.mul(builder.mul(end, C), itemsize)
        lo = builder.add(first, builder.mul(builder.select(builder.icmp_signed("<", skip, zero), zero, skip), line))
        hi = builder.add(lo, builder.mul(count, line))
        hi = builder.select(builder.icmp_signed("<", hi, last), hi, last)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        loop = builder.append_basic_block("prefetch.loop")
        done = builder.append_basic_block("prefetch.done")
        entry = builder.block
        builder.cbranch(builder.icmp_signed("<", lo, hi), loop, done)
        builder.position_at_end(loop)
        off = builder.phi(_I64)
        off.add_incoming(lo, entry)
        builder.call(fn, [builder.gep(base, [off]), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        nxt = builder.add(off, line)
        off.add_incoming(nxt, builder.block)
        builder.cbranch(builder.icmp_signed("<", nxt, hi), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@register_jitable
def share_lines(src, nrows, parts):
    """Lines of 64 bytes per share, where ``nrows`` rows of ``src`` are asked for in ``parts``
    shares by :func:`prefetch_lines` (at least one)."""
    return max(1, (nrows * src.shape[1] * src.itemsize + LINE * parts - 1) // (LINE * max(parts, 1)))


def prefetch_lines(src, row0, nrows, skip, count):  # pragma: no cover - only called from jitted code
    """Ask the cache for ``count`` lines (64 bytes each, counted from the first byte of row
    ``row0``) of rows ``row0 .. row0 + nrows`` of ``src`` after the first ``skip``, clipped to
    those rows and the array (no load, nothing returned). Share k of the rows is
    ``skip = k * n, count = n`` with ``n = share_lines(src, nrows, parts)``: the shares ask for
    every line of the rows but, where the rows do not start on a line, their last. Arrays not
    in C order are left alone."""
    raise NotImplementedError


@overload(prefetch_lines, inline="always")
def _prefetch_lines_overload(src, row0, nrows, skip, count):
    if isinstance(src, types.Array) and src.layout == "C" and src.ndim == 2:
        return lambda src, row0, nrows, skip, count: _prefetch_lines(src, row0, nrows, skip, count)
    return lambda src, row0, nrows, skip, count: None


def copy_columns(src, r0, nt, dst):  # pragma: no cover - only called from jitted code
    """``dst[j, :nt] = src[r0:r0 + nt, j]`` for every column j of ``src`` (converted to
    ``dst``'s dtype). Where both are float32 in C order: blocks of 16 rows through
    :func:`transpose16`, the rest column by column (the caller prefetches the next tile: see
    :func:`prefetch_lines`)."""
    raise NotImplementedError


@register_jitable
def _column_loop(src, r0, first, nt, dst):
    """``dst[j, first:nt] = src[r0 + first:r0 + nt, j]``, column by column."""
    for j in range(src.shape[1]):
        column = src[r0 + first:r0 + nt, j]
        out = dst[j, first:nt]
        for i in range(nt - first):
            out[i] = column[i]


@overload(copy_columns, inline="always")
def _copy_columns(src, r0, nt, dst):
    if not (_c_float32_matrix(src) and _c_float32_matrix(dst)):
        return lambda src, r0, nt, dst: _column_loop(src, r0, 0, nt, dst)

    def impl(src, r0, nt, dst):
        R, C = src.shape
        # the last block that reads no further than the array's end
        last = (R * C - LANES) // max(C, 1) - (LANES - 1)
        done = 0
        if C <= LANES:
            while done + LANES <= nt and r0 + done <= last:
                transpose16(src, r0 + done, dst, done)
                done += LANES
        _column_loop(src, r0, done, nt, dst)

    return impl


"""The tile kernels' transposing copy: rows of C <= 16 elements into C columns of a tile.

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

__all__ = ["LANES", "copy_columns", "prefetch_lines", "share_lines", "transpose16"]

#: Rows per transposed block, and the most columns a block holds.
LANES = 16

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)


def _stage_masks(bit: int) -> tuple[ir.Constant, ir.Constant]:
    """Shuffle masks of one transpose stage for the rows a (bit clear) and b = a | bit: lane j
    of the new a takes a's lane j where bit is clear in j, else b's lane j - bit; the new b
    takes a's lane j + bit where bit is clear, else b's lane j (b's lanes count from 16)."""
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
        first = builder.gep(s.data, [builder.mul(row0, C)])
        rows = [builder.load(builder.bitcast(builder.gep(first, [builder.mul(ir.Constant(_I64, r), C)]), vec_ptr),
                             align=4) for r in range(LANES)]
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


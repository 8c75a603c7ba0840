"""Float64 sums and maxima of a small buffer: the only code compiled with 'reassoc'.

Kernels write a chunk of term values into a buffer (a plain elementwise loop, which LLVM
vectorises without any reassociation), then add the buffer up here. Keeping 'reassoc' out of
the terms keeps Keras's rounding (see codegen.FASTMATH), and the float64 sum still runs in
vector lanes. The lane order is fixed by the code, so the bits do not depend on threads.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

REDUCE_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(fastmath=REDUCE_FASTMATH, cache=True, error_model="numpy", nogil=True)
def sum64(buf, n):
    s = 0.0
    for i in range(n):
        s += np.float64(buf[i])
    return s


@njit(fastmath=REDUCE_FASTMATH, cache=True, error_model="numpy", nogil=True)
def max64(buf, n):
    # NaN propagates, as in tf.reduce_max: the maximum of the other values, and a flag. The
    # loop stays scalar with or without the flag (1024 float32 values, one core: 607-612 ns
    # without it, 620-622 with it)
    m = -np.inf
    nan = False
    for i in range(n):
        v = np.float64(buf[i])
        m = v if v > m else m
        nan |= v != v
    return np.nan if nan else m


@njit(cache=True, error_model="numpy", nogil=True)
def totals4(part):
    # block partials added in block order (no 'reassoc': the order is the bits); returning the
    # totals instead of the (blocks, 4) array saves the caller a NumPy reduction, ~2 µs a call
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for b in range(part.shape[0]):
        s0 += part[b, 0]
        s1 += part[b, 1]
        s2 += part[b, 2]
        s3 += part[b, 3]
    return s0, s1, s2, s3


@njit(cache=True, error_model="numpy", nogil=True)
def totals2(part):
    s0 = 0.0
    s1 = 0.0
    for b in range(part.shape[0]):
        s0 += part[b, 0]
        s1 += part[b, 1]
    return s0, s1


@intrinsic
def fenced(typingctx, x):
    """``x``, which fast-math may not fuse with what follows (LLVM's arithmetic fence).

    The direct tiles add each term straight into a row's float64 sum; with 'contract' a
    float64 term's last product fused into that add (an FMA) and the rows differed in the last
    bit from the copied tiles, which store the term first (float64 cosine similarity: 41 % of
    5003 rows, by up to 7e-16 relative). Float32 terms are converted before the add and could
    not fuse anyway.
    """
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fence = builder.module.declare_intrinsic("llvm.arithmetic.fence", [ty], ir.FunctionType(ty, [ty]))
        return builder.call(fence, [args[0]])

    return x(x), codegen


@intrinsic
def plus_zero(typingctx, x):
    """``x`` with a -0.0 made +0.0, as a sum that starts from 0.0 leaves it (-0.0 + 0.0 is
    +0.0). In integer operations on the bits: under 'nsz' LLVM may drop ``x + 0.0`` or
    ``x if x != 0 else 0.0``, and the fast-math pass puts 'nsz' on every float operation of a
    kernel. The one-hot twins store a row's single term where the pass sums C of them: a
    focal term of -0.0 (α = -0.0, or α < 0 with (1 - q)^γ underflowing) came out -0.0 there
    and +0.0 from the sum."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        ity = ir.IntType(32 if sig.args[0] == types.float32 else 64)
        bits = builder.bitcast(args[0], ity)
        negative_zero = ir.Constant(ity, 1 << (ity.width - 1))
        is_negative_zero = builder.icmp_unsigned("==", bits, negative_zero)
        return builder.bitcast(builder.select(is_negative_zero, ir.Constant(ity, 0), bits), args[0].type)

    return x(x), codegen

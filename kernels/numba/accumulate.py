"""Float64 sums and maxima of a small buffer: the only code compiled with 'reassoc'.

Kernels write a chunk of term values into a buffer (a plain elementwise loop, which LLVM
vectorises without any reassociation), then add the buffer up here. Keeping 'reassoc' out of
the terms keeps Keras's rounding (see codegen.FASTMATH), and the float64 sum still runs in
vector lanes. The lane order is fixed by the code, so the bits do not depend on threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

REDUCE_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(fastmath=REDUCE_FASTMATH, cache=True, error_model="numpy", nogil=True)
def sum64(buf, n):
    s = 0.0
    for i in range(n):
        s += np.float64(buf[i])
    return s


@njit(fastmath=REDUCE_FASTMATH, cache=True, error_model="numpy", nogil=True)
def max64(buf, n):
    # NaN is skipped here; every program with a Max also sums the same elements, and the sum
    # carries the NaN into the result
    m = -np.inf
    for i in range(n):
        v = np.float64(buf[i])
        m = v if v > m else m
    return m


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

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

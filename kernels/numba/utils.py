"""Small whole-array helpers the kernels of some losses need before their main pass."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 1 << 14


@njit(parallel=True, cache=True, nogil=True)
def _count_not_binary(flat):
    n = flat.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    counts = np.zeros(nb, dtype=np.int64)
    for b in prange(nb):
        c = 0
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = flat[i]
            c += 0 if (v == 0 or v == 1) else 1
        counts[b] = c
    return counts.sum()


def all_zero_or_one(arr: np.ndarray) -> bool:
    """True if every element is 0 or 1 (Hinge's batch-global label conversion test)."""
    flat = arr.reshape(-1)
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    if flat.dtype == np.bool_:
        return True
    return _count_not_binary(flat) == 0

"""Small whole-array helpers the kernels of some losses need before their main pass."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 1 << 14


@njit(cache=True, nogil=True)
def _count_not_binary_rows(rows, r0, r1):
    c = 0
    for r in range(r0, r1):
        row = rows[r]
        for j in range(row.shape[0]):
            v = row[j]
            c += 0 if (v == 0 or v == 1) else 1
    return c


@njit(parallel=True, cache=True, nogil=True)
def _count_not_binary(rows):
    R, C = rows.shape
    rpb = max(1, BLOCK // max(C, 1))
    nb = (R + rpb - 1) // rpb
    counts = np.zeros(nb, dtype=np.int64)
    for b in prange(nb):
        counts[b] = _count_not_binary_rows(rows, b * rpb, min(R, (b + 1) * rpb))
    return counts.sum()


def all_zero_or_one(rows: np.ndarray) -> bool:
    """True if every element of the (R, C) view is 0 or 1 (Hinge's batch-global label
    conversion test). Reads the view in place: no copy of non-contiguous inputs. Small inputs
    run serially: waking the thread pool cost ~15 ms a call on a loaded 2-core machine."""
    if rows.dtype == np.bool_:
        return True
    if rows.shape[0] * rows.shape[1] < (1 << 15):
        return _count_not_binary_rows(rows, 0, rows.shape[0]) == 0
    return _count_not_binary(rows) == 0

"""The machine's streaming-read ceiling over the bytes a loss reads.

:func:`reader` returns a thunk that reads every byte of a case's inputs once with a Numba
``prange`` kernel that does nothing but add the words up (32-bit integer adds, which LLVM
vectorises without any fast-math licence), in blocks sized for speed (see MIN_BLOCK): the
fastest plain read of those bytes this code knows with this threading runtime, so
``t_read / t_loss`` is the loss's fraction of the machine's limit. Inputs of equal length are
read in one loop, as the loss kernels read them (two or three streams at once); others (the
int64 labels of the sparse losses) in turn. As in gpuloss, inputs under ``SERIAL_BELOW``
elements are read by the serial twin, so at small sizes the baseline also shows the cost of a
Numba call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from gpuloss._backend import numba_kernels

# gpuloss's kernel package must be the first to import Numba: it chooses Numba's CPU features
# (512-bit vectors on AVX-512 hosts) before Numba reads them. Importing Numba here first left
# the loss kernels on 256-bit vectors for the whole run (log-cosh at 1e7: 14.1 ms instead of ~8).
numba_kernels()

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

__all__ = ["reader", "block_for", "read_gbps"]

#: Block sizes the baseline chooses from (elements). The ceiling should be the fastest read
#: this code can do: at 1e7 float32 pairs, 2-core EPYC, medians of 41 interleaved reads, blocks
#: of 2**12 / 2**14 / 2**16 / 2**18 read 44.4 / 47.5 / 48.4 / 50.0 GB/s (30.0 / 30.5 / 31.4 /
#: 32.0 in a second run), so large inputs get large blocks, while smaller ones keep enough
#: blocks for every thread.
MIN_BLOCK, MAX_BLOCK = 1 << 14, 1 << 18
SERIAL_BELOW = 1 << 15  # the same switch as gpuloss.kernels.numba.SERIAL_BELOW


def _words(a: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous array as uint32 words (a view, no copy)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.nbytes % 4:
        raise ValueError("bandwidth baseline needs arrays of whole 32-bit words")
    return flat.view(np.uint32)


def block_for(n: int, threads: int) -> int:
    """The largest power-of-two block up to MAX_BLOCK that leaves each thread at least four blocks."""
    block = MIN_BLOCK
    while block < MAX_BLOCK and n >= 8 * block * threads:
        block *= 2
    return block


def _make(parallel: bool):
    rng = prange if parallel else range

    @njit(parallel=parallel, cache=True, nogil=True, boundscheck=False)
    def read1(block, a):
        n = a.shape[0]
        nb = (n + block - 1) // block
        acc = np.zeros(nb, dtype=np.uint32)
        for b in rng(nb):
            va = a[b * block:min(n, (b + 1) * block)]
            s = np.uint32(0)
            for j in range(va.shape[0]):
                s += va[j]
            acc[b] = s
        return acc.sum()

    @njit(parallel=parallel, cache=True, nogil=True, boundscheck=False)
    def read2(block, a, c):
        n = a.shape[0]
        nb = (n + block - 1) // block
        acc = np.zeros(nb, dtype=np.uint32)
        for b in rng(nb):
            lo = b * block
            hi = min(n, lo + block)
            va = a[lo:hi]
            vc = c[lo:hi]
            s = np.uint32(0)
            for j in range(va.shape[0]):
                s += va[j] + vc[j]
            acc[b] = s
        return acc.sum()

    @njit(parallel=parallel, cache=True, nogil=True, boundscheck=False)
    def read3(block, a, c, d):
        n = a.shape[0]
        nb = (n + block - 1) // block
        acc = np.zeros(nb, dtype=np.uint32)
        for b in rng(nb):
            lo = b * block
            hi = min(n, lo + block)
            va = a[lo:hi]
            vc = c[lo:hi]
            vd = d[lo:hi]
            s = np.uint32(0)
            for j in range(va.shape[0]):
                s += va[j] + vc[j] + vd[j]
            acc[b] = s
        return acc.sum()

    return {1: read1, 2: read2, 3: read3}


# defined at module level in a file, so Numba's cache loads them in later processes
_PAR = _make(True)
_SER = _make(False)


def reader(inputs: tuple[np.ndarray, ...]) -> Callable[[], Any]:
    """A thunk reading all of ``inputs`` once (compiled on first call)."""
    words = [_words(a) for a in inputs]
    groups: dict[int, list[np.ndarray]] = {}
    for w in words:
        groups.setdefault(w.shape[0], []).append(w)
    calls = []
    for n, ws in groups.items():
        table = _SER if n < SERIAL_BELOW else _PAR
        block = block_for(n, numba.get_num_threads() if table is _PAR else 1)
        while ws:
            k = min(3, len(ws))
            calls.append((table[k], (block, *ws[:k])))
            ws = ws[k:]
    if len(calls) == 1:
        fn, args = calls[0]
        return lambda: fn(*args)
    return lambda: [fn(*args) for fn, args in calls]


def read_gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9

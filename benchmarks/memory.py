"""Peak extra memory of one call, two ways.

``tracemalloc``: the peak of traced allocations during the call, above what was allocated
before it. NumPy registers its array buffers with tracemalloc, and Numba's runtime allocates
through ``PyMem_RawMalloc``, which tracemalloc traces too (from Numba's worker threads as
well), so this counts both the NumPy formula's temporaries and every buffer gpuloss's kernels
allocate.

``rss``: the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) during the call: what the operating system saw, allocator and
libraries included. Linux only, and blind to memory the allocator reuses without asking the
system (small or recently freed blocks), so it is a cross-check for large sizes, None elsewhere.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any, Callable

__all__ = ["peak_extra", "tracemalloc_peak", "rss_peak"]


def tracemalloc_peak(thunk: Callable[[], Any]) -> int:
    gc.collect()
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        thunk()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was:
            tracemalloc.stop()
    return max(0, peak - base)


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_peak(thunk: Callable[[], Any]) -> int | None:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    before = _status("VmRSS")
    thunk()
    peak = _status("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before)


def peak_extra(thunk: Callable[[], Any]) -> dict[str, int | None]:
    """{"tracemalloc": bytes, "rss": bytes or None} for one call of ``thunk`` (warm it first)."""
    return {"tracemalloc": tracemalloc_peak(thunk), "rss": rss_peak(thunk)}

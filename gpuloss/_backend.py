"""Backend selection. The kernel packages are imported here, on first use only."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["numba_kernels", "all_zero_or_one", "resolve_backend", "BACKENDS", "gpu_evaluate", "gpu_partial"]

#: "numba": the CPU kernels (host arrays); "cupy": the GPU kernels (device arrays; host arrays
#: forced onto it are copied to the current GPU and the result copied back)
BACKENDS = ("numba", "cupy")


def resolve_backend(backend: str | None, default: str = "numba") -> str:
    """``backend=`` argument, else ``GPULOSS_BACKEND``, else the inputs' own backend."""
    choice = backend or os.environ.get("GPULOSS_BACKEND") or default
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; available: {', '.join(BACKENDS)}")
    return choice


_NUMBA_KERNELS: list = []


def numba_kernels():
    """The CPU kernel package (imports Numba on the first call only)."""
    if not _NUMBA_KERNELS:
        from .kernels import numba as kernels

        _NUMBA_KERNELS.append(kernels)
    return _NUMBA_KERNELS[0]


def all_zero_or_one(arr: Any) -> bool:
    """Every element 0 or 1? (Hinge's batch-global label rule; on a GPU this reads one flag
    back, the only host sync of a Hinge call there)."""
    if type(arr) is np.ndarray:
        if not _HOST_SCAN:
            from .kernels.numba.utils import all_zero_or_one as impl  # imports Numba: first call only

            _HOST_SCAN.append(impl)
        return _HOST_SCAN[0](arr)
    return bool(((arr == 0) | (arr == 1)).all())  # device arrays (CuPy)


_HOST_SCAN: list = []


def gpu_evaluate(spec, values, compat, reduction, sample_weight, is_class_call):
    from ._gpu import gpu_evaluate as impl  # imports CuPy: first GPU call only

    return impl(spec, values, compat, reduction, sample_weight, is_class_call)


def gpu_partial(spec, values, compat, sample_weight):
    from ._gpu import gpu_partial as impl

    return impl(spec, values, compat, sample_weight)

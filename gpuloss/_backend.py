"""Backend selection. The kernel packages are imported here, on first use only."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["numba_kernels", "all_zero_or_one", "resolve_backend", "BACKENDS"]

BACKENDS = ("numba",)


def resolve_backend(backend: str | None) -> str:
    """``backend=`` argument, else ``GPULOSS_BACKEND``, else "numba" for host arrays."""
    choice = backend or os.environ.get("GPULOSS_BACKEND") or "numba"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; available: {', '.join(BACKENDS)}")
    return choice


def numba_kernels():
    from .kernels import numba as kernels  # imports numba: first call only

    return kernels


def all_zero_or_one(arr: np.ndarray) -> bool:
    from .kernels.numba.utils import all_zero_or_one as impl

    return impl(arr)

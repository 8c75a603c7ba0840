"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cupy_gpu():
    """CuPy, where a GPU is present; the test is skipped cleanly elsewhere."""
    cp = pytest.importorskip("cupy")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception:  # CuPy installed without a driver
        n = 0
    if n == 0:
        pytest.skip("no GPU")
    return cp

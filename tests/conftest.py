"""Shared fixtures.

The CPU backend is imported here, before any test module imports Numba itself
(tests/test_fastmath32.py does, at collection): gpuloss chooses Numba's CPU features only
before Numba is first imported (512-bit vectors on AVX-512 hosts, see
gpuloss.kernels.numba). Collected first, a test module's ``from numba import njit`` left the
whole worker on Numba's default features: the suite tested another configuration than users
get, and the kernels the CLI and README subprocesses compile with gpuloss's choice were
compiled a second time (90 of the 662 kernel signatures of a cold run on an AVX-512 host).
"""

from __future__ import annotations

import pytest

import gpuloss.kernels.numba  # noqa: F401  (its CPU feature choice; see above)


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

"""`import gpuloss` imports no backend; kernels are cached on disk across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, env_extra: dict[str, str] | None = None) -> str:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("NUMBA_CACHE_DIR", None)  # it would move Numba's index files out of gpuloss's kernel cache
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         check=True)
    return out.stdout.strip()


def test_import_imports_no_backend():
    out = _run("""
        import sys, gpuloss
        heavy = [m for m in ("numba", "cupy", "torch", "jax", "pandas", "dask", "cudf") if m in sys.modules]
        print(heavy)
    """)
    assert out == "[]"


def test_kernel_cache_is_reused_by_a_new_process(tmp_path):
    code = """
        import time, numpy as np, gpuloss
        y = np.ones((10, 3), np.float32); p = np.zeros((10, 3), np.float32)
        t = time.perf_counter(); v = gpuloss.Poisson()(y, p + 1); dt = time.perf_counter() - t
        from numba.core.caching import _CacheLocator
        from gpuloss.kernels import numba as K
        mods = [m for m in K._MODULES.values()]
        stats = [d.stats for m in mods for d in vars(m).values()
                 if hasattr(d, "stats") and d.py_func.__module__ == m.__name__]
        print(sum(s.cache_hits.total() if hasattr(s.cache_hits, 'total') else sum(s.cache_hits.values())
                  for s in stats), sum(len(s.cache_misses) for s in stats), float(v))
    """
    env = {"GPULOSS_CACHE_DIR": str(tmp_path)}
    cold_hits, cold_misses, v1 = _run(code, env).split()
    warm_hits, warm_misses, v2 = _run(code, env).split()
    assert int(cold_misses) >= 1 and int(cold_hits) == 0
    assert int(warm_hits) >= 1 and int(warm_misses) == 0
    assert v1 == v2
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*"))

"""Start-up costs, each measured in a fresh Python process.

``import``        ``import gpuloss`` in a new process, NumPy not yet imported (what a user's
                  script pays) and with NumPy already imported (gpuloss's own part);
``cold``          the first call of a loss with a cold kernel cache (a new, empty
                  ``GPULOSS_CACHE_DIR``): Numba is imported, the kernel module generated and
                  compiled. Numba's cache of gpuloss's fixed helpers (``kernels/numba``'s own
                  ``__pycache__``) is left as installed;
``warm``          the first call in a new process whose kernel cache is filled: Numba is
                  imported and the machine code loaded from disk;
``second``        the next call in the same process (steady state, small input).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["measure_startup", "DEFAULT_LOSSES"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOSSES = ("mean_squared_error", "binary_crossentropy_logits", "categorical_crossentropy_logits")

_IMPORT = """
import time, sys
t0 = time.perf_counter()
{pre}
t1 = time.perf_counter()
import gpuloss
t2 = time.perf_counter()
print(t2 - t1)
"""

_FIRST_CALL = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
t0 = time.perf_counter()
import gpuloss
t1 = time.perf_counter()
from benchmarks.cases import CASES, make_inputs
from gpuloss.registry import LOSSES
case = CASES[{case!r}]
inputs = make_inputs(case, {n})
loss = LOSSES[case.fn_name].cls(**case.kwargs)
t2 = time.perf_counter()
v1 = float(loss(*inputs))
t3 = time.perf_counter()
v2 = float(loss(*inputs))
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_call_s": t3 - t2, "second_call_s": t4 - t3, "value": v1}}))
"""


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=str(ROOT), timeout=600)
    return out.stdout.strip().splitlines()[-1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env.update(extra)
    return env


def measure_startup(losses=DEFAULT_LOSSES, repeats: int = 5, n: int = 1000, cold: bool = True) -> dict:
    """Medians (seconds) over ``repeats`` fresh processes; one cold process per loss."""
    # the interpreter's version, not its path: results files are committed
    out: dict = {"repeats": repeats, "n": n, "python": platform.python_version()}
    env = _env()
    no_np = [float(_run(_IMPORT.format(pre="pass"), env)) for _ in range(repeats)]
    with_np = [float(_run(_IMPORT.format(pre="import numpy"), env)) for _ in range(repeats)]
    out["import_s"] = statistics.median(no_np)
    out["import_after_numpy_s"] = statistics.median(with_np)
    out["import_samples_s"] = no_np
    per_loss = {}
    for name in losses:
        entry: dict = {}
        tmp = tempfile.mkdtemp(prefix="gpuloss-bench-cache-")
        try:
            env = _env(GPULOSS_CACHE_DIR=tmp)
            if cold:
                entry["cold"] = json.loads(_run(_FIRST_CALL.format(root=str(ROOT), case=name, n=n), env))
            else:  # fill the cache untimed
                _run(_FIRST_CALL.format(root=str(ROOT), case=name, n=n), env)
            warm = [json.loads(_run(_FIRST_CALL.format(root=str(ROOT), case=name, n=n), env))
                    for _ in range(repeats)]
            entry["warm"] = {k: statistics.median(w[k] for w in warm) for k in ("import_s", "first_call_s",
                                                                                 "second_call_s")}
            entry["warm"]["samples_first_call_s"] = [w["first_call_s"] for w in warm]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        per_loss[name] = entry
    out["first_call"] = per_loss
    return out

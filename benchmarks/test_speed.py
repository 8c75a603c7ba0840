"""pytest-benchmark: gpuloss against the NumPy formula, side by side in one run, and every
loss of the registry for regression tracking.

    pytest benchmarks/ --benchmark-group-by=param:case --benchmark-columns=median,ops
    pytest benchmarks/test_speed.py -k registry --benchmark-save=NAME   # then --benchmark-compare

At 1e7 float32 elements the issue's targets are MSE ≥ 4× and BCE-with-logits ≥ 5× the NumPy
formula; `test_ratio_report` prints the ratios measured in the same run. `test_registry` times
one call of every benchmark case of `benchmarks/cases.py` (every registered loss, plus the
from_logits variants) at GPULOSS_BENCH_N elements (default 1e6), checking its value against the
NumPy formula. The full comparison with torch, JAX and the others is `python -m benchmarks.run`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import gpuloss
from benchmarks.cases import make_inputs, registry_cases
from benchmarks.formulas import NUMPY_FORMULAS

N = 10_000_000
rng = np.random.default_rng(0)
Y01 = (rng.random((N, 1)) < 0.5).astype(np.float32)
P01 = rng.random((N, 1), dtype=np.float32) * 0.98 + 0.01
X = rng.standard_normal((N, 1)).astype(np.float32) * 3

CASES = {
    "mse": (gpuloss.MeanSquaredError(), NUMPY_FORMULAS["mean_squared_error"], Y01, P01),
    "bce_logits": (gpuloss.BinaryCrossentropy(from_logits=True), NUMPY_FORMULAS["binary_crossentropy_logits"],
                   Y01, X),
    "bce": (gpuloss.BinaryCrossentropy(), NUMPY_FORMULAS["binary_crossentropy"], Y01, P01),
    "huber": (gpuloss.Huber(), NUMPY_FORMULAS["huber"], P01, X),
    "log_cosh": (gpuloss.LogCosh(), NUMPY_FORMULAS["log_cosh"], P01, X),
}


@pytest.mark.parametrize("impl", ["gpuloss", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_1e7(benchmark, case, impl):
    loss, formula, y, p = CASES[case]
    fn = loss if impl == "gpuloss" else formula
    fn(y, p)  # compile / warm up outside the timing
    value = benchmark(fn, y, p)
    np.testing.assert_allclose(float(value), float(loss(y, p)), rtol=1e-4)


def _median(fn, *args, repeat=9):
    fn(*args)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def test_ratio_report(capsys):
    """Interleaved medians of both implementations and their ratio (printed, not asserted)."""
    lines = []
    for case, (loss, formula, y, p) in CASES.items():
        g = _median(loss, y, p)
        n = _median(formula, y, p)
        lines.append(f"{case:<11} gpuloss {g * 1e3:7.2f} ms  numpy {n * 1e3:7.2f} ms  ratio {n / g:5.1f}x  "
                     f"({N / g / 1e9:.2f} Gelem/s)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


N_REGISTRY = int(float(os.environ.get("GPULOSS_BENCH_N", "1e6")))


@pytest.mark.parametrize("case", registry_cases(), ids=lambda c: c.name)
def test_registry(benchmark, case):
    from gpuloss.registry import LOSSES

    # quadratic losses (Circle) at 2e4 elements: their full size costs seconds per call
    inputs = make_inputs(case, N_REGISTRY if case.max_n is None else min(N_REGISTRY, 20_000))
    loss = LOSSES[case.fn_name].cls(**case.kwargs)
    loss(*inputs)  # compile / load the kernels outside the timing
    benchmark.group = f"registry n={N_REGISTRY:.0e}"
    benchmark.extra_info["elements"] = int(inputs[1].size)
    value = benchmark(loss, *inputs)
    np.testing.assert_allclose(float(value), float(NUMPY_FORMULAS[case.name](*inputs)), rtol=2e-3, atol=1e-5)

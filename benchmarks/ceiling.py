"""The machine's ceiling for the log/exp losses: what their exp, log, ... calls alone cost.

A log/exp loss evaluates a fixed number of transcendental functions per element (the terms of
its passes) and per row (its finish). Timing each function alone — the vectorised float32
version that the kernels inline, in a loop that does nothing else, on data in cache, on one
core, less the cost of the same loop without the function — and counting the calls in the
loss's single definition gives an upper bound on any kernel built from those functions::

    ceiling (Gelem/s) = threads / (Σ_f calls_f per element × seconds_f per call)

Loads, arithmetic and accumulation are left out and the threads are assumed to scale
perfectly, so every real kernel stays below it. NumPy's SIMD exp/log/log1p are timed beside
them: where they are slower, no faster function of the accuracy Keras's numbers need
(≤ 2 ulp) is at hand on the machine, and a target above the ceiling is one the hardware
forbids with these functions. ``power`` is timed with a runtime exponent; where a case's
exponents are folded into its kernels (γ = 2 of the focal losses, q = 0.5 of generalized CE,
see gpuloss.kernels.numba.codegen.folded_constants: a square, a square root) its power
calls are left out. Where a case's logs read clipped or floored arguments (the crossentropies
of probabilities, KL, MSLE: gpuloss.program.RowProgram.log_floor) its kernels call
``log_positive``, log without the zero, subnormal and negative cases, and its logs are costed
as that.
"""

from __future__ import annotations

import ast
import time
from collections import Counter
from typing import Any

import numpy as np

from gpuloss.vocab import TRANSCENDENTAL

__all__ = ["FUNCTIONS", "calls_per_element", "function_costs", "ceiling_gelem_s", "measure"]

#: The vocabulary's functions that cost more than a few flops (the rest are selects and
#: arithmetic, folded into the loop's own cost), and the log of clipped arguments.
FUNCTIONS = TRANSCENDENTAL + ("log_positive",)
_NUMPY = {"exp": np.exp, "log": np.log, "log1p": np.log1p}
_N = 1 << 15  # 128 KiB of float32 in and out: both stay in L2


def _word_calls(term) -> Counter:
    """Calls of FUNCTIONS in a term, counting through the other terms it calls."""
    from gpuloss.program import Term

    found: Counter = Counter()
    glb = term.fn.__globals__
    for node in ast.walk(term.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = glb.get(node.func.id)
            if isinstance(target, Term) and target is not term:
                found += _word_calls(target)
            elif node.func.id in FUNCTIONS:
                found[node.func.id] += 1
    return found


def calls_per_element(program, row_length: int) -> dict[str, float]:
    """Transcendental calls per element of y_pred: every pass's terms once per element, the
    finish once per row of ``row_length`` elements. Both sides of a select are counted (a
    vectorised loop evaluates both)."""
    total: Counter = Counter()
    for stats in program.passes:
        for _, stat in stats:
            total += _word_calls(stat.term)
    out = {k: float(v) for k, v in total.items()}
    for k, v in _word_calls(program.finish).items():
        out[k] = out.get(k, 0.0) + v / max(1, row_length)
    return out


def _kernels() -> dict[str, Any]:
    from numba import njit

    from gpuloss.kernels.numba import vocab

    flags = {"contract"}  # as fastmath32's own functions; the callers' extra flags buy nothing here

    def unary(f):
        @njit(fastmath=flags, error_model="numpy", nogil=True)
        def k(x, y, out):
            for i in range(x.size):
                out[i] = f(x[i])
        return k

    @njit(fastmath=flags, error_model="numpy", nogil=True)
    def k_power(x, y, out):
        for i in range(x.size):
            out[i] = vocab.power(x[i], y)

    @njit(fastmath=flags, error_model="numpy", nogil=True)
    def k_loop(x, y, out):
        for i in range(x.size):
            out[i] = x[i] + y

    ks = {name: unary(getattr(vocab, name)) for name in FUNCTIONS if name != "power"}
    ks["power"] = k_power
    ks["loop"] = k_loop
    return ks


def _best_s(fn, *args, repeats: int = 200) -> float:
    fn(*args)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def function_costs(repeats: int = 200) -> dict[str, dict[str, float]]:
    """ns per call on one core: gpuloss's vectorised float32 functions (less the bare loop's
    cost) and NumPy's ufuncs (whole calls: they are one loop each)."""
    rng = np.random.default_rng(0)
    x = (rng.random(_N, dtype=np.float32) * np.float32(0.98) + np.float32(0.01))
    out = np.empty_like(x)
    y = np.float32(2.0)
    ks = _kernels()
    loop = _best_s(ks["loop"], x, y, out, repeats=repeats)
    ours = {name: max(0.0, _best_s(ks[name], x, y, out, repeats=repeats) - loop) / _N * 1e9
            for name in FUNCTIONS}
    numpy = {name: _best_s(uf, x, out, repeats=repeats) / _N * 1e9 for name, uf in _NUMPY.items()}
    return {"gpuloss": ours, "numpy": numpy, "loop": {"ns": loop / _N * 1e9}}


def ceiling_gelem_s(calls: dict[str, float], costs_ns: dict[str, float], threads: int) -> float | None:
    """Gelem/s if the threads did nothing but these calls (None: no call to cost)."""
    ns = sum(n * costs_ns[f] for f, n in calls.items())
    return None if ns <= 0 else threads / ns


def measure(cases, threads: int, repeats: int = 200) -> dict[str, Any]:
    """Function costs on this machine and, per case, its calls per element and ceiling."""
    from gpuloss import epsilon
    from gpuloss.kernels.numba import codegen
    from gpuloss.registry import LOSSES

    from .cases import make_inputs

    costs = function_costs(repeats)
    per_case = {}
    for case in cases:
        inputs = make_inputs(case, 1000)
        plan = LOSSES[case.fn_name].body(*inputs, **case.kwargs, compat="keras2")
        if getattr(plan, "program", None) is None:  # Circle: a matrix product, no row program
            continue
        calls = calls_per_element(plan.program, inputs[1].shape[-1])
        if "power" in calls and codegen.folded_constants(plan.program, plan.params):
            del calls["power"]
        if "log" in calls and codegen.positive_logs(plan.program, {**plan.params, "epsilon": epsilon()}):
            calls["log_positive"] = calls.pop("log")
        per_case[case.name] = {"calls": calls,
                               "ceiling_gelem_s": ceiling_gelem_s(calls, costs["gpuloss"], threads)}
    return {"threads": threads, "costs_ns": costs, "cases": per_case}

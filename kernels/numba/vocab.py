"""The term vocabulary (:mod:`gpuloss.vocab`) as Numba implementations.

Each word is a plain Python function overloaded for Numba, so generated kernels call the
same names the definitions use and Numba picks the implementation per dtype at compile
time: float32 goes to the vectorisable polynomials of :mod:`.fastmath32` (Numba has no
SVML, and a libm call per element stops the loop vectoriser: fused BCE-with-logits ran at
0.13 Gelem/s with libm against 2.5 Gelem/s with the polynomials on 2 Zen 5 cores);
float64 ``log`` is :mod:`.fastmath64`'s (within 1 ulp), the rest of float64 keeps libm.

``maximum``/``minimum``/``clip`` propagate NaN as TensorFlow does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from ... import vocab as _py
from . import fastmath32 as _f32
from . import fastmath64 as _f64

exp = _py.exp
log = _py.log
log1p = _py.log1p
sqrt = _py.sqrt
rsqrt = _py.rsqrt
maximum = _py.maximum
minimum = _py.minimum
clip = _py.clip
power = _py.power
sigmoid = _py.sigmoid
softplus = _py.softplus

__all__ = ["exp", "exp_nonpositive", "log", "log_positive", "log1p", "sqrt", "rsqrt", "maximum", "minimum", "clip", "power",
           "sigmoid", "softplus", "label_index", "power_folding"]


def _is32(x) -> bool:
    return x == types.float32


@overload(exp, inline="always")
def _exp(x):
    if _is32(x):
        return lambda x: _f32.exp32(x)
    return lambda x: math.exp(x)


def exp_nonpositive(x):  # pragma: no cover - only called from jitted code
    """``exp`` of an argument that is <= 0, -inf or NaN (``x - m`` with ``m`` the row maximum
    of ``x``, see codegen._RowMaxExp): the same values, without the overflow clamp."""
    raise NotImplementedError


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive(x):
    if _is32(x):
        return lambda x: _f32._exp_nonpositive(x)
    return lambda x: math.exp(x)


@overload(log, inline="always")
def _log(x):
    if _is32(x):
        return lambda x: _f32.log32(x)
    # float64: the vectorisable log64 (within 1 ulp), which the finish terms of float32
    # kernels call once per row (see fastmath64)
    return lambda x: _f64.log64(x)


def log_positive(x):  # pragma: no cover - only called from jitted code
    """``log`` in the kernels of a program whose log arguments are positive normal numbers,
    +inf or NaN (see gpuloss.program.RowProgram.log_floor): the same values, without the
    cases that such an argument cannot take (zero, subnormal, negative)."""
    raise NotImplementedError


@overload(log_positive, inline="always")
def _log_positive(x):
    if _is32(x):
        return lambda x: _f32.log32_positive(x)
    return lambda x: _f64.log64(x)


@overload(log1p, inline="always")
def _log1p(x):
    if _is32(x):
        return lambda x: _f32.log1p32(x)
    return lambda x: math.log1p(x) if x > -1 else (-math.inf if x == -1 else math.nan)


@overload(sqrt, inline="always")
def _sqrt(x):
    return lambda x: np.sqrt(x)


@overload(rsqrt, inline="always")
def _rsqrt(x):
    if _is32(x):
        return lambda x: np.float32(1.0) / np.sqrt(x)
    return lambda x: 1.0 / np.sqrt(x)


@overload(maximum, inline="always")
def _maximum(a, b):
    # select form (not math.fmax) so NaN in either operand propagates and the loop vectorises
    return lambda a, b: a if (a > b or a != a) else b


@overload(minimum, inline="always")
def _minimum(a, b):
    return lambda a, b: a if (a < b or a != a) else b


@overload(clip, inline="always")
def _clip(x, lo, hi):
    def impl(x, lo, hi):
        y = x if (x > lo or x != x) else lo
        return y if (y < hi or y != y) else hi
    return impl


def _power_impl(exp_, log_, f, evens_from: float):
    """C pow semantics (see gpuloss.vocab.power) with the vectorisable exp/log of one float
    type ``f``: |x|**y = exp(y*log|x|), negated for a negative x and odd integer y. Odd
    integers are found in float arithmetic: y/2 is exact below ``evens_from`` (2^mantissa
    bits) and every float from there up is even (an int64 conversion and remainder kept the
    float64 loop scalar; libm's pow, called before, did too)."""
    zero, one, half, nan, inf, big = f(0.0), f(1.0), f(0.5), f(np.nan), f(np.inf), f(evens_from)

    def impl(x, y):
        r = exp_(y * log_(abs(x)))
        integer = y == np.floor(y)
        h = y * half
        odd = integer & (abs(y) < big) & (h != np.floor(h))
        r = -r if (x < zero and odd) else r
        r = nan if (x < zero and not integer and x != -inf) else r  # pow(-inf, 2.5) = inf
        z = zero if y > zero else inf
        r = (math.copysign(z, x) if odd else z) if x == zero else r  # pow(-0, -1) = -inf
        return one if (y == zero or x == one) else r
    return impl


_POWER32 = _power_impl(_f32.exp32, _f32.log32, np.float32, 2.0**24)
_POWER64 = _power_impl(_f64.exp64, _f64.log64, np.float64, 2.0**53)


@overload(power, inline="always")
def _power(x, y):
    return _POWER32 if _is32(x) else _POWER64


@overload(sigmoid, inline="always")
def _sigmoid(x):
    if _is32(x):
        return lambda x: np.float32(1.0) / (np.float32(1.0) + _f32.exp32(-x))
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@overload(softplus, inline="always")
def _softplus(x):
    if _is32(x):
        return lambda x: _f32.softplus32(x)

    def impl64(x):
        m = x if (x > 0.0 or x != x) else 0.0
        return m + math.log1p(math.exp(-abs(x)))
    return impl64


def power_folding(x, y):  # pragma: no cover - only called from jitted code
    """``power`` for kernels in which ``y`` is a compile-time constant (see
    codegen.folded_constants): the exponents 2 and 0.5 are tested first, and LLVM drops the
    tests and the general code for a constant. With a runtime ``y`` the tests stay in the
    loop: generalized crossentropy with q = 0.4, 3e4 rows of 10, one thread, 120 → 482 µs."""
    raise NotImplementedError


@overload(power_folding, inline="always")
def _power_folding(x, y):
    f = np.float32 if _is32(x) else np.float64
    zero, two, half, inf = f(0.0), f(2.0), f(0.5), f(np.inf)

    def impl(x, y):
        if y == two:
            return x * x
        if y == half:  # C pow: pow(-0, 0.5) = +0, pow(-inf, 0.5) = +inf; NaN below 0
            return zero if x == zero else (inf if x == -inf else np.sqrt(x))
        return power(x, y)
    return impl


def label_index(x):  # pragma: no cover - only called from jitted code
    """(ok, class id) of a label value: floats truncate toward 0; NaN/inf/huge are not ok."""
    raise NotImplementedError


@overload(label_index, inline="always")
def _label_index(x):
    if isinstance(x, types.Integer):
        return lambda x: (True, np.int64(x))
    if isinstance(x, types.Boolean):
        return lambda x: (True, np.int64(1) if x else np.int64(0))

    def impl(x):
        ok = abs(x) < 4.0e18  # False for NaN and inf: never converted
        return ok, (np.int64(x) if ok else np.int64(-1))
    return impl

"""Vectorisable float64 log, exp and power for Numba kernels.

Why it exists
-------------
``math.log`` on float64 is a call to libm, which stops the loop vectoriser. The finish
terms of the row programs compute in float64 (``log(Σ exp)`` of the crossentropies from
logits, ``log(Σ q)`` of sparse crossentropy from probabilities), once per row: with 10
classes that one call per row cost about a sixth of a CCE-from-logits tile kernel (glibc
``log``: 4.8 ns a call, one thread of a Zen 3 core). ``log64`` is plain arithmetic, bit
tricks and selects, so LLVM inlines it and vectorises the loop around it.

Algorithm
---------
``x = 2^k * m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` (subnormals are scaled by 2^54
first), ``f = m - 1`` (exact), ``s = f / (2 + f)``, so that
``log(1 + f) = 2 atanh(s) = 2s + 2s^3/3 + ...``. With ``z = s^2``,
``log(1 + f) = f - (f^2/2 - s (f^2/2 + R(z)))`` where ``R(z) = z (2/3 + z (2/5 + ...))`` is
the degree-7 minimax polynomial of the classic fdlibm ``__ieee754_log`` (its published
coefficients ``Lg1..Lg7``, error below 2^-58.45 on the interval). ``k ln2`` is added as
``k ln2_hi`` (exact: ln2_hi has 32 significant bits) plus ``k ln2_lo`` folded into the small
terms. The result is within 1 ulp of the exact logarithm.

Special values: ``log64(+-0) = -inf``, ``log64(x < 0) = NaN``, ``log64(inf) = inf``,
``log64(NaN) = NaN``; ``log64(1) = 0`` exactly.

``exp64``: ``x = n ln2 + r`` (``n = rint(x / ln2)``, the same two-part ln2 as above, so
``n ln2_hi`` is exact), ``|r| <= ln2/2``, and ``e^r = 1 + (r + r^2 q(r))`` with ``q`` the Taylor
series to ``r^11/13!`` (truncation below 2^-57 relative on the interval); ``2^n`` is applied
as two exact powers of two so that results down in the subnormals round once. Within 1 ulp.
``x > 709.78`` gives inf, ``x < -745.2`` gives 0, NaN stays NaN.

The vocabulary's float64 ``power`` is ``exp64(y log64 |x|)`` with C ``pow``'s special cases
(see kernels/numba/vocab.py). Its relative error is about ``|y ln x|`` ulps (exp magnifies the
rounding of ``y ln x``): below 1e-14 for the focal losses' ``(1 - p)^γ`` and the generalized
crossentropy's ``p^q``. libm's ``pow`` is a call that stops the vectoriser: the float64 finish
of generalized crossentropy spent 12 of its 16 ms per 1e7 elements in it (2-core EPYC).

Fast-math flags: only ``contract`` (as fastmath32: the compensated steps must not be
reassociated). Plain ``@njit`` functions, not ``inline="always"``: LLVM inlines them and
they keep their own flags (see fastmath32).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .fastmath32 import pow2_intrinsic, rint_intrinsic

__all__ = ["log64", "exp64"]

_FLAGS = {"contract"}
_F64 = ir.DoubleType()
_I64 = ir.IntType(64)

# bits of sqrt(1/2) and 1.0; adding their difference to the bits of x moves the binade
# boundary to sqrt(2)
_SQRTHF_BITS = 0x3FE6A09E667F3BCD
_ONE_BITS = 0x3FF0000000000000


@intrinsic
def _split_sqrt2(typingctx, x):
    """For a positive normal float64 x: (m, k) with x = m * 2**k, m in [sqrt(.5), sqrt(2)),
    k as float64 (meaningless for other inputs; the caller selects those away)."""
    if x != types.float64:
        return None
    retty = types.UniTuple(types.float64, 2)

    def codegen(context, builder, sig, args):
        ix = builder.add(builder.bitcast(args[0], _I64), ir.Constant(_I64, _ONE_BITS - _SQRTHF_BITS))
        k = builder.sub(builder.ashr(ix, ir.Constant(_I64, 52)), ir.Constant(_I64, 1023))
        mbits = builder.add(builder.and_(ix, ir.Constant(_I64, 0x000FFFFFFFFFFFFF)), ir.Constant(_I64, _SQRTHF_BITS))
        m = builder.bitcast(mbits, _F64)
        kf = builder.sitofp(k, _F64)
        return context.make_tuple(builder, retty, [m, kf])

    return retty(types.float64), codegen


_rint64 = rint_intrinsic(types.float64, _F64, "llvm.rint.f64")
_pow2_64 = pow2_intrinsic(types.float64, _F64, _I64, 1023, 52)  # n in [-1022, 1023]


_ZERO = 0.0
_HALF = 0.5
_ONE = 1.0
_TWO = 2.0
_INF = np.inf
_NAN = np.nan
_MIN_NORMAL = float(np.finfo(np.float64).tiny)  # 2^-1022
_TWO54 = 2.0**54
_54 = 54.0
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: k * LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
# fdlibm's Lg1..Lg7 (R(z) = z*(Lg1 + z*(Lg2 + ... + z*Lg7)))
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def log64(x: float) -> float:
    """Natural log in float64 (within 1 ulp), vectorisable."""
    sub = x < _MIN_NORMAL
    xs = x * _TWO54 if sub else x  # subnormal -> normal, exact
    m, k = _split_sqrt2(xs)
    k = k - _54 if sub else k
    f = m - _ONE  # exact
    s = f / (_TWO + f)
    z = s * s
    w = z * z
    # even and odd halves of R evaluated side by side (shorter dependency chains)
    r_odd = w * (_LG2 + w * (_LG4 + w * _LG6))
    r_even = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = r_odd + r_even
    hfsq = _HALF * f * f
    y = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)
    y = -_INF if x == _ZERO else y
    y = y if x < _INF else x  # +inf -> +inf, NaN -> NaN
    return _NAN if x < _ZERO else y


_LOG2E = 1.4426950408889634
_EXP_HI = 710.0   # above log(max float64): the scaling below overflows to inf
_EXP_LO = -746.0  # below log(min subnormal / 2): the scaling below gives 0
# 1/k! for k = 2 .. 13: e^r = 1 + r + r^2 (1/2! + r/3! + ... + r^11/13!)
_C2, _C3, _C4, _C5 = 1 / 2, 1 / 6, 1 / 24, 1 / 120
_C6, _C7, _C8, _C9 = 1 / 720, 1 / 5040, 1 / 40320, 1 / 362880
_C10, _C11, _C12, _C13 = 1 / 3628800, 1 / 39916800, 1 / 479001600, 1 / 6227020800


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def exp64(x: float) -> float:
    """e**x in float64 (within 1 ulp), vectorisable."""
    # clamp; NaN fails both comparisons and becomes _EXP_LO (restored at the end)
    xc = x if x > _EXP_LO else _EXP_LO
    xc = xc if xc < _EXP_HI else _EXP_HI
    n = _rint64(xc * _LOG2E)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    z = r * r
    # even and odd coefficients side by side (shorter dependency chains, as log64)
    q_even = _C2 + z * (_C4 + z * (_C6 + z * (_C8 + z * (_C10 + z * _C12))))
    q_odd = _C3 + z * (_C5 + z * (_C7 + z * (_C9 + z * (_C11 + z * _C13))))
    p = _ONE + (r + z * (q_even + r * q_odd))
    n1 = _rint64(n * _HALF)
    n2 = n - n1  # both in [-538, 512]: normal powers of two
    y = (p * _pow2_64(n1)) * _pow2_64(n2)  # first product exact, second rounds once
    return y if x == x else x

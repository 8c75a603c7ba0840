# Throughput, measured on the 2-core dev box (the brief said Zen 5; /proc/cpuinfo
# says "Intel Xeon", LLVM's host CPU is emeraldrapids: AVX-512, but LLVM prefers
# 256-bit vectors there), single thread, 1e7 float32, best of 15, box shared
# with other jobs (load ~2.5), so treat +-15 %:
#
#   acc(float64) += log1p(exp(-|x|))          Gelem/s
#     log1p32(exp32(...))                       0.25   (<4 x float>: the double
#                                                       accumulator sets VF=4)
#     math.log(1 + math.exp(...))  (libm)       0.13
#     math.log1p(math.exp(...))    (libm)       0.08
#     np.log1p(np.exp(-np.abs(x))).sum()        0.28-0.31 (3 passes, temporaries)
#   out[i] = f(x[i])  (float32 out, <8 x float>)
#     exp32 1.3-1.6   (math.exp 0.28, np.exp 1.8-2.2)
#     log32 1.4-1.7   (math.log 0.24, np.log 1.6-2.4)
#     log1p32 1.04, expm1_32 1.1-1.25, sigmoid32 1.03
#     out[i] = log1p32(exp32(-|x[i]|))  0.46-0.49
"""Vectorisable float32 exp / log / log1p / expm1 / sigmoid for Numba kernels.

Why this module exists
----------------------
Numba ships without SVML, so ``math.exp`` / ``math.log`` on float32 inside a
loop become calls to scalar libm and the loop vectoriser gives up.  The
functions here are written only with +, *, fma, rint, int32 bit tricks and
``a if cond else b`` selects, so LLVM inlines them into the caller's loop and
vectorises it (``<8 x float>`` / ``<16 x float>``, or ``<4 x float>`` when a
float64 accumulator in the same loop sets the width).

All functions take a float32 (anything else is converted to float32 first) and
return a float32.  float64 callers should simply use ``math.*``.

Algorithms
----------
exp32(x)
    Cody-Waite reduction ``x = n*ln2 + r``, ``n = rint(x/ln2)``, ``|r| <= ln2/2``.
    ``r = fma(-n, LN2_HI, x)`` is exact (the product is exact inside the fma and
    the difference fits in 24 bits), the second step subtracts ``n*LN2_LO``.
    ``exp(r) = (1 + r) + r^2*Q(r)`` with ``1 + r`` kept as an exact pair
    (Fast2Sum) and a degree-4 near-minimax Q.  All polynomials here were fitted
    for this module with Lawson's iteratively reweighted least squares on the
    relative error, coefficients rounded to float32 one at a time and the rest
    refitted.  The scale ``2^n`` is applied as two powers of two
    ``2^n1 * 2^n2`` (``n1 + n2 = n``, both normal): the first product is exact,
    so subnormal results get a single rounding and overflow becomes +inf
    naturally.  x is clamped to [-104, 89] first, which also maps NaN to a
    harmless finite value (the NaN is put back by a final select).
expm1_32(x)
    Same reduction, degree-5 Q, then ``expm1(x) = (2^n - 1) + 2^n*r + 2^n*h``
    with ``h = r^2*Q(r)``: the first two terms are added with an error-free
    Fast2Sum so the cancellation for x in about [-1, 1] costs nothing; for
    n > 24 the ``-1`` moves into the small term.
log32(x)
    Subnormals are scaled by 2^23.  The bits are split so that
    ``x = 2^e * m`` with ``m`` in [sqrt(1/2), sqrt(2)); ``f = m - 1`` is exact.
    ``log1p(f) = f + f^2*(-1/2 + f*P(f))`` with a degree-7 near-minimax P.
    ``e*ln2 + f`` is formed exactly (16-bit LN2_HI, so ``e*LN2_HI`` is exact,
    then Fast2Sum) and everything small is added to its error term.
log1p32(x)
    ``u = 1 + x`` is rounded; its exact rounding error ``c`` is recovered
    (``x - (u - 1)`` for u <= 2, ``1 - (u - x)`` for u > 2, both exact) and
    carried into the reduced argument: with ``u = 2^k*m``,
    ``(1 + x)/2^k - 1 = (m - 1) + c*2^-k = fa + fb`` exactly, the polynomial
    runs on fa and ``fb/(1 + fa)`` is added to first order.  For k == 0,
    ``fa == x`` exactly.  No division.
softplus32(x)
    ``max(x, 0) + log1p(e)`` with ``e = exp(-|x|)``, both functions cut down to the
    range they see here: the exponent is <= 0 (no overflow clamp), and ``e`` lies in
    [0, 1], so ``u = 1 + e`` is in [1, 2], ``k`` is 0 or 1 and the pole, negative,
    signed-zero and overflow selects of log1p32 fall away.  The same bits as
    ``max(x, 0) + log1p32(exp32(-|x|))`` for every float32 x (checked exhaustively),
    in 0.96 instead of 1.35 ns per element (one core, in cache).
sigmoid32(x)
    ``e = exp32(-|x|)`` (never overflows), ``1/(1+e)`` for x >= 0 and
    ``e/(1+e)`` for x < 0.  ``1+e`` is kept as an exact pair (Fast2Sum) and the
    quotient gets one Newton correction with an exact fma residual, so the
    only error left is exp32's, times the sigmoid's condition number (<= 1).
    Results for x in [-104, -87.3] are correctly scaled subnormals.

Accuracy
--------
Measured EXHAUSTIVELY over all 2^32 float32 inputs against glibc float64
exp/log/log1p/expm1 (and a float64 sigmoid) rounded to float32:

    function    max distance to the    max |error| vs the exact
                rounded result (ulp)    value (fractional ulp)
    exp32             1                     0.82
    log32             1                     0.88
    log1p32           1                     0.88
    expm1_32          1                     0.95
    softplus32        1                     -     (on the tests' 47.5M points,
                                                   not exhaustively)
    sigmoid32         1                     1.48  (exp32's 0.5-ulp relative
                                                   error shows through where
                                                   sigmoid ~ e^x)

Subnormal inputs and outputs are included (no flush to zero).  The test suite
re-checks this on ~47M points per function in ~20 s; the contract it asserts
is <= 2 ulp.

Special values (checked exactly by the tests): NaN -> NaN everywhere;
exp32(-inf) = 0, exp32(+inf) = +inf, exp32 overflow -> +inf, underflow ->
subnormals then 0; log32(+-0) = -inf, log32(x<0) = NaN, log32(inf) = inf;
log1p32(-1) = -inf, log1p32(x<-1) = NaN, log1p32(+-0) = +-0;
expm1_32(-inf) = -1, expm1_32(+-0) = +-0, sigmoid32(+-inf) = 1 / 0.

Fast-math flags (FASTMATH_FLAGS = {"contract"})
-----------------------------------------------
* contract: lets LLVM fuse a*b + c.  Safe here because every product that
  feeds one of the compensated sums is exact (powers of two, 16-bit LN2_HI,
  fma residuals), so fusing only ever removes a rounding.
* reassoc: REJECTED.  It licenses folding the error-free transformations
  ((s - a), (u - 1) - x, ...) to zero.  Measured with {"contract", "reassoc",
  "nsz"}: exp32 returns +inf from x = 88.38 on (``(p*2^n1)*2^n2`` reassociated
  into ``p*2^128``) and log1p32(6e-8) returns 0.  reassoc alone happened to
  pass the tests with this LLVM, which is luck, not a guarantee.
* nnan / ninf (and fastmath=True): REJECTED, they make the NaN/inf selects
  dead code.
* nsz, arcp, afn: pass every test, individually and together, but buy no
  measurable speed (no libm calls, one division); left out so that the
  signed-zero results do not depend on optimiser whims.

Inlining: NOT ``inline="always"`` (measured)
--------------------------------------------
Numba's IR-level ``inline="always"`` re-lowers the body inside the caller,
with the CALLER's fastmath flags and error model.  A caller compiled with
fastmath={"reassoc", "nsz", "arcp", "contract", "afn"} then got
log1p32(1e-38) = 0 and 1-ulp differences in every function, and
sigmoid32's division picked up the Python error model (a ZeroDivisionError
branch) and stopped vectorising.  Plain ``@njit`` functions are inlined by
LLVM instead (they are small), keep their own flags, and vectorise the same;
tests/test_fastmath32.py checks both (bit-identical results under a "loose"
caller, vector IR without libm calls).  They are ``cache=False``: callers'
``cache=True`` caches embed the inlined code, so a caller's cache key must
include this file's source if it changes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "FASTMATH_FLAGS",
    "exp32",
    "expm1_32",
    "log32",
    "log32_positive",
    "log1p32",
    "sigmoid32",
    "softplus32",
    "f32_as_i32",
    "i32_as_f32",
]

FASTMATH_FLAGS: frozenset[str] = frozenset({"contract"})
_FLAGS = set(FASTMATH_FLAGS)  # numba accepts bool, dict or set, not frozenset

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_f32 = np.float32

# ---------------------------------------------------------------------------
# LLVM intrinsics.  They emit a handful of plain LLVM instructions on i32/float
# lanes, which the loop vectoriser widens directly.  (Doing the integer part in
# Numba code would promote every int32 op to int64 and halve the vector width;
# going through a tiny numpy array view does not vectorise at all.)
# ---------------------------------------------------------------------------


@intrinsic
def f32_as_i32(typingctx, x):
    """Reinterpret the bits of a float32 as an int32 (LLVM bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.int32(types.float32), codegen


@intrinsic
def i32_as_f32(typingctx, i):
    """Reinterpret the bits of an int32 as a float32 (LLVM bitcast)."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _F32)

    return types.float32(types.int32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a*b + c with a single rounding (llvm.fma.f32 -> vfmadd on x86-64 v3+)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def rint_intrinsic(nbtype, irtype, llvm_name: str):
    """An intrinsic rounding to the nearest integer, ties to even (``llvm_name``, llvm.rint.*:
    vrndscaleps/pd), for floats of Numba type ``nbtype`` (LLVM type ``irtype``)."""

    @intrinsic
    def rint(typingctx, x):
        if x != nbtype:
            return None

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(irtype, [irtype])
            fn = cgutils.get_or_insert_function(builder.module, fnty, llvm_name)
            return builder.call(fn, args)

        return nbtype(nbtype), codegen

    return rint


def pow2_intrinsic(nbtype, irtype, inttype, bias: int, mantissa_bits: int):
    """An intrinsic giving 2**n for an integral float n within the normal exponents
    ([1 - bias, bias]): the bits of the power, built directly."""

    @intrinsic
    def pow2(typingctx, n):
        if n != nbtype:
            return None

        def codegen(context, builder, sig, args):
            i = builder.fptosi(args[0], inttype)
            bits = builder.shl(builder.add(i, ir.Constant(inttype, bias)), ir.Constant(inttype, mantissa_bits))
            return builder.bitcast(bits, irtype)

        return nbtype(nbtype), codegen

    return pow2


_rint = rint_intrinsic(types.float32, _F32, "llvm.rint.f32")
_pow2 = pow2_intrinsic(types.float32, _F32, _I32, 127, 23)  # n in [-126, 127]


# bits of sqrt(1/2) rounded to float32; the mantissa split below puts m in
# [sqrt(1/2), sqrt(2)) so that |log(m)| <= ln(2)/2.
_SQRTHF_BITS = 0x3F3504F3
_ONE_BITS = 0x3F800000


@intrinsic
def _split_sqrt2(typingctx, x):
    """For a positive normal float32 x return (m, e) with x = m * 2**e, m in [sqrt(.5), sqrt(2)).

    e is returned as float32.  Results for zero, subnormal, negative, inf or NaN
    inputs are meaningless (callers replace them with selects).
    """
    if x != types.float32:
        return None
    retty = types.UniTuple(types.float32, 2)

    def codegen(context, builder, sig, args):
        ix = builder.add(builder.bitcast(args[0], _I32), ir.Constant(_I32, _ONE_BITS - _SQRTHF_BITS))
        e = builder.sub(builder.ashr(ix, ir.Constant(_I32, 23)), ir.Constant(_I32, 127))
        mbits = builder.add(builder.and_(ix, ir.Constant(_I32, 0x007FFFFF)), ir.Constant(_I32, _SQRTHF_BITS))
        m = builder.bitcast(mbits, _F32)
        ef = builder.sitofp(e, _F32)
        return context.make_tuple(builder, retty, [m, ef])

    return retty(types.float32), codegen


# ---------------------------------------------------------------------------
# Constants.  Every constant is a float32 global so that Numba types all the
# arithmetic as float32 (a Python float would silently promote to float64).
# ---------------------------------------------------------------------------
_ZERO = _f32(0.0)
_HALF = _f32(0.5)
_ONE = _f32(1.0)
_TWO = _f32(2.0)
_INF = _f32(np.inf)
_NINF = _f32(-np.inf)
_NAN = _f32(np.nan)

_LOG2E = _f32(1.4426950408889634)
_LN2_HI = _f32(0.6931471805599453)  # float32(ln 2)
_LN2_LO = _f32(0.6931471805599453 - float(_f32(0.6931471805599453)))  # ln 2 - LN2_HI

# 16-bit ln 2 for the log kernel: k*_LN2_HI16 is exact for |k| < 256, which lets
# the k*ln2 + f sum be done with an error-free Fast2Sum.
_LN2_HI16 = _f32(0.693145751953125)
_LN2_LO16 = _f32(0.6931471805599453 - 0.693145751953125)

# exp: below -104 the result rounds to 0, above 89 to +inf; clamping keeps
# n = rint(x/ln2) in [-150, 128] so both halves of 2^n are normal numbers.
_EXP_LO = _f32(-104.0)
_EXP_HI = _f32(89.0)
# expm1: below -30 the result is -1 (e^-30 << ulp(1)/2).
_EXPM1_LO = _f32(-30.0)
_EXPM1_BIG = _f32(24.0)  # 2^n - 1 is exact for n <= 24

# exp(r) = 1 + r + r^2*Q(r), |r| <= ln2/2; max |r^2 dQ / expm1(r)| = 1.4e-8.
_E0 = _f32(0.4999999701976776)
_E1 = _f32(0.1666654348373413)
_E2 = _f32(0.04166743531823158)
_E3 = _f32(0.008366649970412254)
_E4 = _f32(0.0013871152186766267)
# same, degree 5 for expm1 (error relative to expm1 matters there): 4.5e-10.
_M0 = _f32(0.5)
_M1 = _f32(0.1666666567325592)
_M2 = _f32(0.04166648909449577)
_M3 = _f32(0.008333542384207249)
_M4 = _f32(0.001393279293552041)
_M5 = _f32(0.00019765601609833539)
# log1p(f) = f - f^2/2 + f^3*P(f), f in [sqrt(.5)-1, sqrt(2)-1];
# max |f^3 dP / log1p(f)| = 6.2e-9.
_L0 = _f32(0.3333333134651184)
_L1 = _f32(-0.2500085234642029)
_L2 = _f32(0.20001330971717834)
_L3 = _f32(-0.16622230410575867)
_L4 = _f32(0.14198052883148193)
_L5 = _f32(-0.13168010115623474)
_L6 = _f32(0.12794366478919983)
_L7 = _f32(-0.07655750215053558)

_MIN_NORMAL = _f32(np.finfo(np.float32).tiny)  # 2^-126
_TWO23 = _f32(2.0**23)
_23 = _f32(23.0)
_126 = _f32(126.0)
_127 = _f32(127.0)

# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def _exp_of_clamped(xc: np.float32, x: np.float32) -> np.float32:
    """e**xc for xc in [_EXP_LO, _EXP_HI], NaN where x is NaN (x clamped to xc by the caller)."""
    n = _rint(xc * _LOG2E)
    r = _fma(-n, _LN2_HI, xc)  # exact
    r = _fma(-n, _LN2_LO, r)
    q = _fma(_fma(_fma(_fma(_E4, r, _E3), r, _E2), r, _E1), r, _E0)
    # p = 1 + r + r^2*q with 1 + r kept exact (Fast2Sum): rounding 1 + (r + r^2 q)
    # directly cost up to 1.04 ulp (measured at x = -5.84); with the pair: 0.82
    s = _ONE + r
    p = s + ((r - (s - _ONE)) + (r * r) * q)
    n1 = _rint(n * _HALF)
    n2 = n - n1
    y = (p * _pow2(n1)) * _pow2(n2)  # first product exact, second rounds once
    return y if x == x else x


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def exp32(x: np.float32) -> np.float32:
    """e**x in float32 (within 1 ulp of the rounded result over all inputs)."""
    x = np.float32(x)
    # clamp; NaN fails both comparisons and becomes _EXP_LO (fixed at the end)
    xc = x if x > _EXP_LO else _EXP_LO
    xc = xc if xc < _EXP_HI else _EXP_HI
    return _exp_of_clamped(xc, x)


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def _exp_nonpositive(x: np.float32) -> np.float32:
    """exp32 for x <= 0 or NaN: without the upper clamp (bit for bit exp32 there)."""
    return _exp_of_clamped(x if x > _EXP_LO else _EXP_LO, x)


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def expm1_32(x: np.float32) -> np.float32:
    """e**x - 1 in float32 (within 1 ulp of the rounded result over all inputs)."""
    x = np.float32(x)
    xc = x if x > _EXPM1_LO else _EXPM1_LO
    xc = xc if xc < _EXP_HI else _EXP_HI
    n = _rint(xc * _LOG2E)
    r = _fma(-n, _LN2_HI, xc)
    r = _fma(-n, _LN2_LO, r)
    q = _fma(_fma(_fma(_fma(_fma(_M5, r, _M4), r, _M3), r, _M2), r, _M1), r, _M0)
    h = (r * r) * q  # expm1(r) = r + h
    # 2^128 is not a float32: use 2^127 and double the result at the end
    top = n > _127
    nn = n - _ONE if top else n
    t = _pow2(nn)
    big = nn > _EXPM1_BIG
    # sum of a + b + c with a = 2^n - 1 (exact for n <= 24), b = 2^n*r (exact),
    # c = 2^n*h.  For n > 24 the -1 moves into c.
    a = t if big else t - _ONE
    b = t * r
    c = _fma(t, h, -_ONE if big else _ZERO)
    s = a + b  # Fast2Sum: |a| >= |b| or a == 0 for every n
    lo = b - (s - a)
    y = s + (lo + c)
    y = y * _TWO if top else y
    y = x if x == _ZERO else y  # keep the sign of zero
    return y if x == x else x


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def _log_kernel(f: np.float32, k: np.float32) -> tuple[np.float32, np.float32]:
    """k*ln2 + log1p(f) as an unevaluated pair (hi, lo), f in [sqrt(.5)-1, sqrt(2)-1]."""
    p = _fma(_fma(_fma(_fma(_fma(_fma(_fma(_L7, f, _L6), f, _L5), f, _L4), f, _L3), f, _L2), f, _L1), f, _L0)
    t = _fma(f, p, -_HALF)  # log1p(f) = f + f^2*t
    # k*ln2 + f: with fma(k, ln2, f) the sum rounds once too often when the
    # result drops a binade (1.5 ulp measured at x = 2864.8), so add it exactly.
    kh = k * _LN2_HI16  # exact for |k| < 256
    hi = kh + f  # Fast2Sum: |kh| >= |f| whenever k != 0
    hi_err = f - (hi - kh)
    lo = _fma(f * f, t, _fma(k, _LN2_LO16, hi_err))
    return hi, lo


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def log32(x: np.float32) -> np.float32:
    """Natural log in float32 (within 1 ulp of the rounded result over all inputs)."""
    x = np.float32(x)
    sub = x < _MIN_NORMAL
    xs = x * _TWO23 if sub else x  # subnormal -> normal, exact
    m, e = _split_sqrt2(xs)
    e = e - _23 if sub else e
    hi, lo = _log_kernel(m - _ONE, e)  # m - 1 is exact
    y = hi + lo
    y = _NINF if x == _ZERO else y
    y = y if x < _INF else x  # +inf -> +inf, NaN -> NaN
    return _NAN if x < _ZERO else y


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def log32_positive(x: np.float32) -> np.float32:
    """log32 for an x that is a positive normal number, +inf or NaN (bit for bit log32
    there); for zero, subnormals and negatives the result is meaningless. The kernels call it
    where Keras clips or floors every log argument first (see RowProgram.log_floor): without
    log32's compares and selects for the other cases a binary crossentropy term loop ran at
    0.98 instead of 1.22 ns per element (one core, in cache, 2-core EPYC)."""
    x = np.float32(x)
    m, e = _split_sqrt2(x)
    hi, lo = _log_kernel(m - _ONE, e)
    y = hi + lo
    return y if x < _INF else x  # +inf -> +inf, NaN -> NaN


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def _log1p_of_split(m: np.float32, k: np.float32, d: np.float32) -> np.float32:
    """log1p(x) from u = 1 + x = 2^k*m and d = c*2^-k, c = (1 + x) - u exactly."""
    # (1 + x) / 2^k - 1 = (m - 1) + d exactly; split it into fa + fb (Fast2Sum:
    # m - 1 is either 0 or at least twice |d|).  For k == 0, fa == x, fb == 0.
    f = m - _ONE
    fa = f + d
    fb = d - (fa - f)
    hi, lo = _log_kernel(fa, k)
    # log1p(fa + fb) = log1p(fa) + fb/(1 + fa) + O(fb^2); |fb| <= ulp(fa)/2, so first
    # order is plenty
    # (rounding fa + fb instead cost 1.46 ulp at x = 0.435)
    return hi + (lo + _fma(-fb, fa, fb))


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def log1p32(x: np.float32) -> np.float32:
    """log(1 + x) in float32 (within 1 ulp of the rounded result over all inputs)."""
    x = np.float32(x)
    u = x + _ONE  # u >= 2^-24 for x > -1, never subnormal
    m, k = _split_sqrt2(u)
    # exact rounding error c = (1 + x) - u; both expressions are exact in their range (at
    # u = 2 only the second: x = 1 - 2^-24 gave 1 - (2 - x) = 1 - round(1 + 2^-24) and the
    # other neighbour of log1p(x), 1 ulp off)
    c = _ONE - (u - x) if u > _TWO else x - (u - _ONE)
    kk = k if k < _126 else _126
    y = _log1p_of_split(m, k, c * _pow2(-kk))
    y = x if x == _ZERO else y  # keep the sign of zero
    y = _NINF if x == -_ONE else y
    y = y if x < _INF else x  # +inf -> +inf, NaN -> NaN
    return _NAN if x < -_ONE else y


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def _log1p_unit(x: np.float32) -> np.float32:
    """log1p32 for x in [0, 1] or NaN (bit for bit log1p32 there): u = 1 + x is in [1, 2],
    u - 1 is exact, k is 0 or 1, and no pole, negative, signed-zero or infinite input."""
    u = x + _ONE
    m, k = _split_sqrt2(u)
    y = _log1p_of_split(m, k, (x - (u - _ONE)) * (_ONE - _HALF * k))  # c / 2^k
    return y if x == x else x


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def softplus32(x: np.float32) -> np.float32:
    """log(1 + e**x) = max(x, 0) + log1p(e**-|x|) in float32, no overflow."""
    x = np.float32(x)
    m = x if (x > _ZERO or x != x) else _ZERO
    return m + _log1p_unit(_exp_nonpositive(-abs(x)))


@njit(fastmath=_FLAGS, error_model="numpy", cache=False)
def sigmoid32(x: np.float32) -> np.float32:
    """1 / (1 + e**-x) in float32 (within 1 ulp of the rounded result), no overflow."""
    x = np.float32(x)
    e = _exp_nonpositive(-abs(x))
    num = _ONE if x >= _ZERO else e  # NaN: e is NaN and so is the result
    s = _ONE + e  # Fast2Sum(1, e), e <= 1
    lo = e - (s - _ONE)
    r = _ONE / s
    q = num * r
    res = _fma(-q, s, num)  # exact residual of the division by s
    res = _fma(-q, lo, res)  # ... and of the division by (s + lo)
    return _fma(res, r, q)

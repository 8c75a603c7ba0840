"""Tests for kernels/numba/fastmath32.py (vectorisable float32 exp/log/log1p/expm1/sigmoid/softplus).

* accuracy: every function is run, through a jitted (vectorised) loop, over a
  strided sweep of ALL 2^32 float32 bit patterns (every 97th pattern, ~44.3M
  points) plus dense blocks of consecutive patterns around every place where the
  algorithms switch regime (subnormal in/out, overflow/underflow thresholds,
  range-reduction boundaries, log1p's u = 1 + x exactness limits) and the
  special values.  The reference is numpy float64 math rounded to float32; the
  distance is counted in float32 ulps (consecutive bit patterns) and must be
  <= 2.  Results whose reference is NaN, +-inf or an exact (signed) zero must
  match exactly.
* special values, one by one, through the scalar and the vectorised path.
* vectorisation: the LLVM IR of a loop calling the functions holds float vectors
  and no libm calls.
* the caller's fast-math flags do not leak into the functions.

Whole file: ~20-25 s on the shared 2-core dev box (about 47M points per function,
~240M in all; the sweeps dominate).
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

_SRC = Path(__file__).resolve().parents[1] / "kernels" / "numba" / "fastmath32.py"


def _load_module():
    # Loaded from its file so the test does not depend on the package
    # __init__ (which pulls in the whole kernel generator).
    name = "_fastmath32_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SRC)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


fm = _load_module()

MAX_ULP = 2
STRIDE = 97  # prime: the sweep visits every residue of every bit field
F32 = np.float32


# ---------------------------------------------------------------------------
# references (float64 numpy, then rounded to float32 by the caller)
# ---------------------------------------------------------------------------
def _ref_sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _ref_softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


_REFS = {
    "exp32": np.exp,
    "log32": np.log,
    "log1p32": np.log1p,
    "expm1_32": np.expm1,
    "sigmoid32": _ref_sigmoid,
    "softplus32": _ref_softplus,
}


# ---------------------------------------------------------------------------
# jitted vector loops over an array, one per function (built lazily, cached)
# ---------------------------------------------------------------------------
_LOOPS: dict[str, object] = {}


def _loop(name: str):
    if name not in _LOOPS:
        f = getattr(fm, name)

        @njit
        def run(x, out):
            for i in range(x.size):
                out[i] = f(x[i])

        _LOOPS[name] = run
    return _LOOPS[name]


def _apply(name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    _loop(name)(x, out)
    return out


# ---------------------------------------------------------------------------
# input sets
# ---------------------------------------------------------------------------
def _bits(x) -> int:
    return int(np.array(x, dtype=F32).view(np.uint32))


def _around(x: float, half: int) -> np.ndarray:
    """The 2*half+1 consecutive float32 bit patterns centred on float32(x) (same sign)."""
    b = _bits(x)
    sign = b & 0x80000000
    mag = b & 0x7FFFFFFF
    lo, hi = max(mag - half, 0), min(mag + half, 0x7F800000)
    return (np.arange(lo, hi + 1, dtype=np.uint32) | np.uint32(sign)).view(F32)


def _span(a: float, b: float) -> np.ndarray:
    """Every float32 between a and b (same sign, inclusive)."""
    ba, bb = sorted((_bits(a), _bits(b)))
    return np.arange(ba, bb + 1, dtype=np.uint32).view(F32)


SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 2.0, 0.5,
     np.finfo(F32).tiny, -np.finfo(F32).tiny, np.finfo(F32).max, -np.finfo(F32).max,
     np.finfo(F32).smallest_subnormal, -np.finfo(F32).smallest_subnormal],
    dtype=F32,
)
# a NaN with payload and sign bit set
SPECIALS = np.concatenate([SPECIALS, np.array([0xFFC12345, 0x7F800001], dtype=np.uint32).view(F32)])

LN2 = math.log(2.0)
_EXP_REGIONS = [
    _span(-104.5, -87.0),  # subnormal results and underflow to 0 (all 2.3M patterns)
    _span(88.0, 89.5),  # overflow threshold 88.7228
    _around(0.0, 1 << 16), _around(-0.0, 1 << 16),  # subnormal inputs
    _around(LN2 / 2, 1 << 16), _around(-LN2 / 2, 1 << 16),  # n = 0 / +-1 switch
    _around(1.0, 1 << 16), _around(-1.0, 1 << 16),
    _around(24.5 * LN2, 1 << 16),  # expm1: n = 24 / 25 (the "-1" term moves)
    _around(-17.33, 1 << 16),  # expm1 reaches -1
]
_LOG_REGIONS = [
    _span(0.0, float(np.finfo(F32).tiny)),  # every subnormal (8.4M patterns)
    _around(float(np.finfo(F32).tiny), 1 << 16),
    _around(1.0, 1 << 18),  # log(x) ~ 0
    _around(math.sqrt(0.5), 1 << 16), _around(math.sqrt(2.0), 1 << 16),  # mantissa split
    _around(float(np.finfo(F32).max), 1 << 16),
    _around(-1.0, 1 << 10),  # negative inputs -> NaN
]
_LOG1P_REGIONS = [
    _span(-1.0, -0.99),  # pole at -1 (167k patterns)
    _around(-1.0, 1 << 12),  # and beyond -> NaN
    _around(0.0, 1 << 16), _around(-0.0, 1 << 16),
    _around(2.0**-24, 1 << 16), _around(-(2.0**-24), 1 << 16),  # u = 1 + x starts to round
    _around(2.0**-25, 1 << 16), _around(-(2.0**-25), 1 << 16),
    _around(math.sqrt(0.5) - 1, 1 << 16), _around(math.sqrt(2.0) - 1, 1 << 16),  # k switch
    _around(1.0, 1 << 16),  # u = 2: the rounding-error formula switches
    _around(2.0**24, 1 << 16),  # 1 + x no longer changes x
    _around(float(np.finfo(F32).max), 1 << 16),
]
_SIGMOID_REGIONS = [
    _span(-104.5, -87.0),  # subnormal results, then 0
    _around(0.0, 1 << 16), _around(-0.0, 1 << 16),
    _around(16.6, 1 << 16), _around(-16.6, 1 << 16),  # 1 + e stops changing
    _around(88.7, 1 << 12), _around(-88.7, 1 << 12),
]
_SOFTPLUS_REGIONS = [
    _span(-104.5, -87.0),  # e**-|x| subnormal, then 0
    _around(0.0, 1 << 16), _around(-0.0, 1 << 16),
    _around(LN2 / 2, 1 << 16), _around(-LN2 / 2, 1 << 16),  # exp's n = 0 / 1 switch
    _around(0.3466, 1 << 16), _around(-0.3466, 1 << 16),  # 1 + e = sqrt(2): log's k switch
    _around(16.6, 1 << 16), _around(-16.6, 1 << 16),  # 1 + e stops changing
    _around(float(np.finfo(F32).max), 1 << 12), _around(-float(np.finfo(F32).max), 1 << 12),
]
REGIONS = {
    "softplus32": _SOFTPLUS_REGIONS,
    "exp32": _EXP_REGIONS,
    "expm1_32": _EXP_REGIONS,
    "log32": _LOG_REGIONS,
    "log1p32": _LOG1P_REGIONS,
    "sigmoid32": _SIGMOID_REGIONS,
}


def _strided(offset: int) -> np.ndarray:
    return np.arange(offset, 1 << 32, STRIDE, dtype=np.uint64).astype(np.uint32).view(F32)


# ---------------------------------------------------------------------------
# ulp comparison
# ---------------------------------------------------------------------------
def _ordered(y: np.ndarray) -> np.ndarray:
    """Map float32 to int64 so that consecutive floats differ by 1 (+0 and -0 both map to 0)."""
    i = y.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _check(name: str, x: np.ndarray) -> tuple[int, int]:
    """Returns (max ulp, number of points); asserts the contract."""
    ref_fn = _REFS[name]
    worst = 0
    chunk = 1 << 22
    for s in range(0, x.size, chunk):
        xs = x[s:s + chunk]
        got = _apply(name, xs)
        with np.errstate(all="ignore"):
            r64 = ref_fn(xs.astype(np.float64))
            r32 = r64.astype(F32)
        # exact classes: NaN, +-inf (incl. overflow) and exact zeros (sign too)
        exact = np.isnan(r64) | np.isinf(r32) | (r64 == 0.0)
        bad_nan = np.isnan(r64) != np.isnan(got)
        same_bits = got.view(np.uint32) == r32.view(np.uint32)
        bad_exact = exact & ~np.isnan(r64) & ~same_bits
        assert not bad_nan.any(), (name, xs[bad_nan][:8], got[bad_nan][:8])
        assert not bad_exact.any(), (name, xs[bad_exact][:8], got[bad_exact][:8], r32[bad_exact][:8])
        fin = ~exact
        assert np.isfinite(got[fin]).all(), (name, xs[fin][~np.isfinite(got[fin])][:8])
        d = np.abs(_ordered(got[fin]) - _ordered(r32[fin]))
        if d.size:
            k = int(d.argmax())
            assert d[k] <= MAX_ULP, (name, xs[fin][k], got[fin][k], r64[fin][k], int(d[k]))
            worst = max(worst, int(d[k]))
    return worst, x.size


@pytest.mark.parametrize("name", list(_REFS))
def test_sweep_all_bit_patterns(name: str) -> None:
    # a different offset per function so the union covers more patterns
    x = np.concatenate([_strided(list(_REFS).index(name) * 13 + 1), SPECIALS, *REGIONS[name]])
    worst, n = _check(name, x)
    print(f"{name}: {n} points, max {worst} ulp")


# ---------------------------------------------------------------------------
# special values, exact (sign of zero included)
# ---------------------------------------------------------------------------
INF, NAN = math.inf, math.nan
TINY_SUB = float(np.finfo(F32).smallest_subnormal)
SPECIAL_CASES = {
    "exp32": [(0.0, 1.0), (-0.0, 1.0), (-INF, 0.0), (INF, INF), (NAN, NAN), (89.0, INF), (88.73, INF),
              (-104.0, 0.0), (-103.0, float(F32(math.exp(-103.0)))), (-1000.0, 0.0), (1000.0, INF),
              (TINY_SUB, 1.0), (-TINY_SUB, 1.0)],
    "expm1_32": [(0.0, 0.0), (-0.0, -0.0), (-INF, -1.0), (INF, INF), (NAN, NAN), (89.0, INF), (-40.0, -1.0),
                 (TINY_SUB, TINY_SUB), (-TINY_SUB, -TINY_SUB)],
    "log32": [(1.0, 0.0), (0.0, -INF), (-0.0, -INF), (INF, INF), (-INF, NAN), (-1.0, NAN), (NAN, NAN),
              (-TINY_SUB, NAN), (TINY_SUB, float(F32(math.log(TINY_SUB))))],
    "log1p32": [(0.0, 0.0), (-0.0, -0.0), (-1.0, -INF), (-1.5, NAN), (-INF, NAN), (INF, INF), (NAN, NAN),
                (TINY_SUB, TINY_SUB), (-TINY_SUB, -TINY_SUB), (float(np.finfo(F32).max), float(F32(math.log1p(float(np.finfo(F32).max))))),
                # 1 + x rounds to 2: its rounding error is exact only as x - (u - 1)
                (1.0 - 2.0**-24, float(F32(math.log1p(1.0 - 2.0**-24))))],
    "softplus32": [(0.0, float(F32(LN2))), (-0.0, float(F32(LN2))), (INF, INF), (-INF, 0.0), (NAN, NAN),
                   (-200.0, 0.0), (200.0, 200.0), (-100.0, float(F32(math.exp(-100.0)))),
                   (float(np.finfo(F32).max), float(np.finfo(F32).max))],
    "sigmoid32": [(0.0, 0.5), (-0.0, 0.5), (INF, 1.0), (-INF, 0.0), (NAN, NAN), (-200.0, 0.0), (200.0, 1.0),
                  (-100.0, float(F32(math.exp(-100.0))))],
}


def _same(a: float, b: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.mark.parametrize("name", list(SPECIAL_CASES))
def test_special_values(name: str) -> None:
    f = getattr(fm, name)
    xs = np.array([c[0] for c in SPECIAL_CASES[name]], dtype=F32)
    vec = _apply(name, xs)
    for (x, want), v in zip(SPECIAL_CASES[name], vec):
        s = float(f(F32(x)))  # scalar path through the dispatcher
        assert _same(s, want), (name, x, s, want)
        assert _same(float(v), want), (name, x, float(v), want)


@njit
def _softplus_composed(x, out):
    for i in range(x.size):
        v = x[i]
        m = v if (v > F32(0.0) or v != v) else F32(0.0)
        out[i] = m + fm.log1p32(fm.exp32(-abs(v)))


def test_softplus_is_the_composition_bit_for_bit() -> None:
    # softplus32's exp and log1p are exp32 and log1p32 cut down to the ranges they see
    x = np.concatenate([_strided(7), SPECIALS, *_SOFTPLUS_REGIONS])
    want = np.empty_like(x)
    _softplus_composed(x, want)
    got = _apply("softplus32", x)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same][:8], got[~same][:8], want[~same][:8])


def test_log_positive_is_log32_bit_for_bit_on_its_domain() -> None:
    # log32_positive is log32 without the zero, subnormal and negative cases: on positive
    # normal numbers, +inf and NaN (what a clipped or floored log argument can be) the same bits
    x = np.concatenate([_strided(11), SPECIALS, *_LOG_REGIONS])
    x = x[(x >= np.finfo(F32).tiny) | np.isnan(x)]
    assert x.size > 20_000_000 and np.isnan(x).any() and np.isinf(x).any()
    got, want = _apply("log32_positive", x), _apply("log32", x)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same][:8], got[~same][:8], want[~same][:8])
    ir = _ir(_loop("log32_positive"))
    assert re.search(r"<(8|16) x float>", ir) and not _LIBM.search(ir)


def test_exp_nonpositive_is_exp32_bit_for_bit_on_its_domain() -> None:
    # the kernels' exp of x - (row maximum of x) takes exp32 without its overflow clamp: the
    # same bits on every float32 with its sign bit set (-0.0, the negatives, -inf, negative
    # NaNs: 2^31 patterns) and on +0.0 and NaN
    for lo in range(1 << 31, 1 << 32, 1 << 24):
        x = np.arange(lo, lo + (1 << 24), dtype=np.uint32).view(F32)
        x = np.concatenate([x, np.array([0.0, -np.inf, np.nan], F32)])
        got, want = _apply("_exp_nonpositive", x), _apply("exp32", x)
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
        assert same.all(), (x[~same][:8], got[~same][:8], want[~same][:8])


def test_nan_with_payload_or_sign_gives_nan() -> None:
    qnan = np.array([0x7FC00001, 0xFFC12345], dtype=np.uint32).view(F32)
    for name in _REFS:
        assert np.isnan(_apply(name, qnan)).all(), name


def test_float64_argument_is_converted() -> None:
    @njit
    def call(x):
        return fm.exp32(x), fm.log32(x), fm.log1p32(x), fm.expm1_32(x), fm.sigmoid32(x)

    r = call(1.5)  # float64 in
    assert r == call(F32(1.5))
    assert r[0] == pytest.approx(math.exp(1.5), rel=1e-7)


def test_bitcast_helpers() -> None:
    @njit
    def roundtrip(x):
        i = fm.f32_as_i32(x)
        return i, fm.i32_as_f32(i)

    i, y = roundtrip(F32(1.0))
    assert i == 0x3F800000 and y == 1.0
    i, y = roundtrip(F32(-0.0))
    assert i == -(1 << 31) and math.copysign(1.0, y) == -1.0


# ---------------------------------------------------------------------------
# vectorisation
# ---------------------------------------------------------------------------
_LIBM = re.compile(r"@(expf|logf|log1pf|expm1f|exp|log|log1p|expm1|llvm\.(exp|log)\.f32)\b")


def _ir(disp) -> str:
    d = disp.inspect_llvm()
    return "\n".join(d.values())


@njit(fastmath={"reassoc"})
def _bce_sum(x):
    acc = 0.0
    for i in range(x.size):
        acc += fm.log1p32(fm.exp32(-abs(x[i])))
    return acc


def test_fused_loop_vectorises() -> None:
    x = np.linspace(-20, 20, 1001, dtype=F32)
    got = _bce_sum(x)
    assert got == pytest.approx(float(np.log1p(np.exp(-np.abs(x.astype(np.float64)))).sum()), rel=1e-6)
    ir = _ir(_bce_sum)
    # AVX-512 hosts that prefer 512-bit vectors give <16 x float>, Intel servers
    # (prefer-vector-width=256) give <4 x float> here because the double
    # accumulator sets the width; AVX2 gives 4 or 8.  Any float vector proves it.
    widths = {int(w) for w in re.findall(r"<(\d+) x float>", ir)}
    assert widths & {4, 8, 16}, sorted(widths)
    assert re.search(r"@llvm\.fma\.v\d+f32", ir), "polynomials were not widened"
    assert not _LIBM.search(ir), _LIBM.search(ir).group(0)


@pytest.mark.parametrize("name", list(_REFS))
def test_each_function_vectorises(name: str) -> None:
    _apply(name, np.ones(64, dtype=F32))
    ir = _ir(_loop(name))
    assert re.search(r"<(8|16) x float>", ir), name  # float32 in/out: 8 lanes at least on AVX2
    assert not _LIBM.search(ir), (name, _LIBM.search(ir).group(0))


# ---------------------------------------------------------------------------
# the caller's fast-math flags must not reach the function bodies
# ---------------------------------------------------------------------------
_LOOSE = {"reassoc", "nsz", "arcp", "contract", "afn"}  # everything but nnan/ninf


@pytest.mark.parametrize("name", list(_REFS))
def test_caller_fastmath_does_not_leak(name: str) -> None:
    f = getattr(fm, name)

    @njit(fastmath=_LOOSE)
    def loose(x, out):
        for i in range(x.size):
            out[i] = f(x[i])

    rng = np.random.default_rng(1)
    x = np.concatenate([
        SPECIALS,
        rng.standard_normal(20000).astype(F32) * F32(30),
        rng.standard_normal(20000).astype(F32) * F32(1e-4),
        np.abs(rng.standard_normal(20000).astype(F32)) * F32(3),
    ])
    want = _apply(name, x)
    got = np.empty_like(x)
    loose(x, got)
    # bit-identical, NaNs and signed zeros included: the compensated sums in the
    # bodies would be simplified away by 'reassoc' if the flags leaked
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


# ---------------------------------------------------------------------------
# the float64 log, exp and power (kernels/numba/fastmath64.py, vocab.power) of the float64 terms
# ---------------------------------------------------------------------------
def _unary_loop(f):
    """A jitted loop applying the float64 function ``f`` (under a caller's loose flags)."""
    @njit(fastmath=_LOOSE, error_model="numpy")
    def loop(x, out):
        for i in range(x.size):
            out[i] = f(x[i])
    return loop


def test_log64_within_one_ulp_and_vectorised() -> None:
    from gpuloss.kernels.numba.fastmath64 import log64

    loop = _unary_loop(log64)

    rng = np.random.default_rng(4)
    x = np.concatenate([
        rng.integers(1, 0x7FF0000000000000, 4_000_000, dtype=np.int64).view(np.float64),  # every binade
        rng.integers(1, 1 << 52, 200_000, dtype=np.int64).view(np.float64),  # subnormals
        rng.uniform(0.5, 2.0, 1_000_000), 1.0 + rng.uniform(-1e-9, 1e-9, 200_000),
        np.array([1.0, 2.0, 0.5, np.e, 10.0, 5e-324, np.finfo(np.float64).max, np.finfo(np.float64).tiny]),
    ])
    got = np.empty_like(x)
    loop(x, got)
    # against libm's log (correctly rounded on these inputs to within its own 0.5 ulp)
    ulps = np.abs(got.view(np.int64) - np.log(x).view(np.int64))
    assert ulps.max() <= 1, x[np.argmax(ulps)]
    special = np.array([0.0, -0.0, -1e-300, -np.inf, np.inf, np.nan, 1.0])
    out = np.empty_like(special)
    loop(special, out)
    np.testing.assert_array_equal(out, [-np.inf, -np.inf, np.nan, np.nan, np.inf, np.nan, 0.0])
    assert np.signbit(out[-1]) == np.False_  # log(1) = +0
    ir = _ir(loop)
    assert re.search(r"<\d+ x double>", ir) and not _LIBM.search(ir)


def test_exp64_within_one_ulp_and_vectorised() -> None:
    from gpuloss.kernels.numba.fastmath64 import exp64

    loop = _unary_loop(exp64)

    rng = np.random.default_rng(5)
    x = np.concatenate([
        rng.uniform(-745.5, 709.9, 2_000_000), rng.uniform(-1.0, 1.0, 1_000_000),
        rng.uniform(-1e-9, 1e-9, 100_000), rng.uniform(-745.2, -707.0, 300_000),  # results in the subnormals
        np.array([1.0, -1.0, 0.5, 709.78, -745.13, 1e-300]),
    ])
    got = np.empty_like(x)
    loop(x, got)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    finite = np.isfinite(want) & (want != 0)
    ulps = np.abs(got.view(np.int64) - want.view(np.int64))
    assert ulps[finite].max() <= 1, x[finite][np.argmax(ulps[finite])]
    np.testing.assert_array_equal(got[~finite], want[~finite])
    special = np.array([0.0, -0.0, 709.79, 710.0, -745.14, -746.0, np.inf, -np.inf, np.nan])
    out = np.empty_like(special)
    loop(special, out)
    np.testing.assert_array_equal(out, [1.0, 1.0, np.inf, np.inf, 0.0, 0.0, np.inf, 0.0, np.nan])
    ir = _ir(loop)
    assert re.search(r"<\d+ x double>", ir) and not _LIBM.search(ir)


def test_float64_power_matches_c_pow_and_vectorises() -> None:
    """The vocabulary's float64 power (exp64 of y·log64|x|): C pow's special cases, and
    within |y ln x| · 2^-52 of libm (the focal losses' γ and the generalized CE's q)."""
    from gpuloss.kernels.numba.vocab import power

    @njit(fastmath=_LOOSE, error_model="numpy")
    def loop(x, y, out):
        for i in range(x.size):
            out[i] = power(x[i], y[i])

    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(0, 1, 500_000), rng.uniform(0, 100, 100_000), -rng.uniform(0, 10, 20_000),
                        [0.0, 0.0, -0.0, 1.0, 1.0, -1.0, np.inf, np.inf, -np.inf, -np.inf, np.nan, np.nan, 2.0,
                         -2.0, -8.0, -3.0, 9e15, -2.0]])
    y = np.concatenate([rng.uniform(0, 4, 500_000), rng.uniform(-3, 3, 100_000),
                        rng.integers(-4, 5, 20_000).astype(np.float64),
                        [0.5, -0.5, 2.0, np.nan, 7.5, 0.5, 0.5, -0.5, 3.0, 2.0, 0.0, 1.0, 0.0, 3.0, 1 / 3, -3.0,
                         0.5, 2.0**53 + 2]])
    got = np.empty_like(x)
    loop(x, y, got)
    with np.errstate(all="ignore"):
        want = np.power(x, y)
        bound = (np.nan_to_num(np.abs(y * np.log(np.abs(x)))) + 2) * 2.0**-52  # pow(1, NaN) = 1 and so on
    finite = np.isfinite(want) & (want != 0)
    rel = np.abs(got[finite] - want[finite]) / np.abs(want[finite])
    worst = np.argmax(rel / bound[finite])
    assert rel[worst] <= bound[finite][worst], (x[finite][worst], y[finite][worst])
    np.testing.assert_array_equal(got[~finite], want[~finite])
    assert re.search(r"<\d+ x double>", _ir(loop))

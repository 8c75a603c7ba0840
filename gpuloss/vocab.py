"""The scalar vocabulary that loss definitions are written in.

A loss term (see :mod:`gpuloss.program`) may use arithmetic, comparisons, conditional
expressions (``a if c else b``), calls to the functions below, and calls to other terms.
Nothing else: that restriction is what lets one definition become both a Numba kernel
(``gpuloss.kernels.numba``, where each name maps to a jitted implementation chosen per
dtype) and a CUDA ``__device__`` function (``gpuloss.kernels.cupy``).

The plain-Python versions here are the meaning of each word. They run on Python floats and
serve documentation and the host-side checks of the CUDA translation.

NaN semantics follow TensorFlow: ``maximum``, ``minimum`` and ``clip`` propagate NaN
(Keras relies on it: a NaN prediction gives a NaN loss, never a clipped number).
"""

from __future__ import annotations

import math

__all__ = [
    "TRANSCENDENTAL",
    "VOCABULARY",
    "abs_",
    "clip",
    "exp",
    "log",
    "log1p",
    "maximum",
    "minimum",
    "power",
    "rsqrt",
    "sigmoid",
    "softplus",
    "sqrt",
]


def exp(x: float) -> float:
    """e**x (inf for overflow, 0 for underflow)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def log(x: float) -> float:
    """Natural logarithm; -inf at 0, NaN below 0."""
    if x != x or x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    return math.log(x)


def log1p(x: float) -> float:
    """log(1 + x), accurate near 0; -inf at -1, NaN below -1."""
    if x != x or x < -1:
        return math.nan
    if x == -1:
        return -math.inf
    return math.log1p(x)


def sqrt(x: float) -> float:
    """Square root; NaN below 0."""
    return math.sqrt(x) if x >= 0 else math.nan


def rsqrt(x: float) -> float:
    """1 / sqrt(x); inf at 0."""
    if x == 0:
        return math.inf
    return 1.0 / sqrt(x)


def abs_(x: float) -> float:
    """|x| (spelled ``abs`` inside terms)."""
    return abs(x)


def maximum(a: float, b: float) -> float:
    """max(a, b), NaN if either is NaN (tf.maximum semantics)."""
    if a != a or b != b:
        return math.nan
    return a if a > b else b


def minimum(a: float, b: float) -> float:
    """min(a, b), NaN if either is NaN (tf.minimum semantics)."""
    if a != a or b != b:
        return math.nan
    return a if a < b else b


def clip(x: float, lo: float, hi: float) -> float:
    """min(max(x, lo), hi), NaN-propagating."""
    return minimum(maximum(x, lo), hi)


def power(x: float, y: float) -> float:
    """x**y with C ``pow`` semantics (TensorFlow's): x**0 = 1 and 1**y = 1 even for NaN;
    a negative x gives a real result for integer y ((-0.5)**2 = 0.25: Keras's focal factor
    meets it for predictions outside [0, 1]) and NaN for fractional y; 0**y is 0 for y > 0,
    inf for y < 0."""
    odd = y == math.floor(y) and y % 2 == 1
    try:
        return math.pow(x, y)  # C pow's special cases; errors where C returns NaN or inf
    except ValueError:
        if x == 0:  # pole: 0**negative
            return -math.inf if (math.copysign(1, x) < 0 and odd) else math.inf
        return math.nan
    except OverflowError:
        return -math.inf if (x < 0 and odd) else math.inf


def sigmoid(x: float) -> float:
    """1 / (1 + e**-x)."""
    return 1.0 / (1.0 + exp(-x))


def softplus(x: float) -> float:
    """log(1 + e**x) in the stable form max(x, 0) + log1p(e**-|x|)."""
    return maximum(x, 0.0) + log1p(exp(-abs(x)))


#: Names a term may call, mapped to their Python meaning. ``abs`` is the builtin.
VOCABULARY = {
    "abs": abs_,
    "clip": clip,
    "exp": exp,
    "log": log,
    "log1p": log1p,
    "maximum": maximum,
    "minimum": minimum,
    "power": power,
    "rsqrt": rsqrt,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "sqrt": sqrt,
}

#: The words that cost tens of instructions an element (the rest are selects and arithmetic):
#: what the exp/log ceiling counts, and what keeps a CPU kernel on long term buffers.
TRANSCENDENTAL = ("exp", "log", "log1p", "sigmoid", "softplus", "power")

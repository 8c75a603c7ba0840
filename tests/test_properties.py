"""Property tests: gpuloss against the float64 reference (tests/reference.py), over the registry.

For every loss: random shapes (rank 1-4, odd sizes, 1x1), dtypes (float32, float64, sometimes
float16), loss options, both compat modes where they apply, sample weights (None, Python scalar,
(B,), (B,1), the shape of L, the shape of y), and reductions. Structural choices are drawn by
hypothesis (derandomized, no example database, so CI is stable); array values come from a NumPy
generator seeded by a hypothesis draw (fast for large arrays). An explicit test runs a row of
10 007 elements per loss, and another checks that repeated calls give identical bits.

Tolerance (see ``TOLERANCES`` and ``magnitude``)
------------------------------------------------
The library computes float32 inputs in float32 (statistics may accumulate in float64); the
reference computes the same float32 input values in float64. Their difference is bounded by

    |lib - ref| <= rtol * S + atol_per_term * M + floor

* ``S`` = the reduction of |L| weighted by |sample_weight| (= |result| unless signs mix, e.g.
  cosine, Poisson, KLD), so ``rtol`` is a relative error on the result and on the terms of the final sum.
* ``M`` = the reduction (same weights) of a per-sample estimate of the magnitude of the terms that
  *cancel* inside the formula, e.g. |x| for ``max(x,0) - x*y`` in BCE from logits, |LSE| + |x_label|
  in SCCE, |log(p+1)| + |log(y+1)| in MSLE, gamma * (m+2)^2 in Circle. Where nothing cancels
  (MSE, MAE, MAPE, Huber) M is 0 and the relative bound alone applies. The terms are allowed the
  same relative error as the result (atol_per_term = rtol).
* float32: rtol 2e-6 = about 33 float32 half-ulps: room for a few roundings per element, a
  polynomial exp/log with ~1e-6 max error (design.md), and pairwise/float64 summation of 10^4+
  terms; it still catches the spec's semantic differences (epsilon placement, clip bounds,
  1e-6 vs 1e-7 floors: >= 1e-7 absolute) wherever the terms involved do not cancel heavily.
* float64: rtol 1e-9 (the library and the reference do the same float64 math, so only summation
  order differs, ~1e-15); it catches epsilon-level (1e-7) semantic differences everywhere.
* float16: the library computes in float32 (same bounds as float32), but the output may be float16
  (rounding 2^-11 relative, subnormals below 6e-5), hence rtol 1e-3 and an absolute floor of 6e-8.
  float16 cases use small arrays and moderate values so that no result overflows 65504.

The bound is picked by the dtype of the result. A Keras 3 *class* converts its inputs to its loss
dtype, float32 (§6), so keras3-mode class calls are compared with the float32 bound and a float32
reference (inputs rounded to float32, float32 clip bounds) whatever the input dtype.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402

F16, F32, F64 = np.float16, np.float32, np.float64
ALL_LOSSES = sorted(ref.REFERENCES)
POINTWISE = ("mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
             "mean_squared_logarithmic_error", "huber", "log_cosh", "poisson", "hinge",
             "squared_hinge", "kl_divergence", "contrastive_loss", "categorical_hinge")
EXTRAS = ("contrastive_loss", "triplet_margin_loss")


@dataclass(frozen=True)
class Tol:
    rtol: float           # on the result (and the terms of the final weighted sum)
    atol_per_term: float  # on the magnitude M of the cancelling terms
    floor: float          # absolute


TOLERANCES = {
    np.dtype(F64): Tol(1e-9, 1e-9, 1e-300),
    np.dtype(F32): Tol(2e-6, 2e-6, 1e-30),
    np.dtype(F16): Tol(1e-3, 2e-6, 6e-8),
}

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gpuloss():
    import gpuloss as lib  # a failure to import is a test error, not a skip

    return lib


# ------------------------------------------------------------------------------------------------
# choosers: hypothesis draws in property tests, a seeded RNG in explicit tests
# ------------------------------------------------------------------------------------------------

class Chooser:
    def __init__(self, data: Any = None, seed: int = 0):
        self.data = data
        self._rng = np.random.default_rng(seed)

    def choice(self, options):
        options = list(options)
        if self.data is not None:
            return self.data.draw(st.sampled_from(options))
        return options[int(self._rng.integers(len(options)))]

    def integer(self, lo: int, hi: int) -> int:
        if self.data is not None:
            return self.data.draw(st.integers(lo, hi))
        return int(self._rng.integers(lo, hi + 1))

    def boolean(self) -> bool:
        return bool(self.choice([False, True]))

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.integer(0, 2 ** 32 - 1))


DIMS = (1, 2, 3, 5, 7, 13)
BIG = 10007  # a row of 10^4+ elements


def draw_shape(ch: Chooser, dtype, min_rank=1, max_rank=4, min_last=1) -> tuple:
    rank = ch.integer(min_rank, max_rank)
    shape = [ch.choice(DIMS) for _ in range(rank)]
    if shape[-1] < min_last:
        shape[-1] = ch.choice([d for d in DIMS if d >= min_last])
    limit = 32 if dtype == F16 else 1500
    while math.prod(shape) > limit:
        i = int(np.argmax(shape))
        shape[i] = max(1, shape[i] // 2)
    shape[-1] = max(shape[-1], min_last)
    return tuple(shape)


def with_zeros(rng, a, frac=0.15):
    a = a.copy()
    a[rng.random(a.shape) < frac] = 0.0
    return a


def unit(rng, shape, ends=True):
    """Uniform [0, 1] with some exact 0 and 1 (clip bounds)."""
    a = rng.random(shape)
    if ends:
        a[rng.random(shape) < 0.08] = 0.0
        a[rng.random(shape) < 0.08] = 1.0
    return a


def labels01(ch, rng, shape):
    return (rng.random(shape) < 0.5).astype(F64) if ch.boolean() else rng.random(shape)


@dataclass
class Sample:
    inputs: tuple                 # numpy arrays in the test dtype (labels may be ints)
    params: dict = field(default_factory=dict)
    may_mismatch: bool = False    # y/p may be given ranks differing by a trailing 1 (class call)


# ------------------------------------------------------------------------------------------------
# per-loss input generators
# ------------------------------------------------------------------------------------------------

def gen_pointwise(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype)
    small = dtype == F16
    scale = ch.choice([1.0, 4.0] if small else [1e-3, 1.0, 50.0])
    params = {}
    if fn in ("mean_squared_error", "mean_absolute_error", "log_cosh", "huber"):
        y, p = rng.normal(size=shape) * scale, rng.normal(size=shape) * scale
        if fn == "huber":
            params["delta"] = ch.choice([1.0, 0.0, 0.5, 1.35, 2.5])
    elif fn == "mean_absolute_percentage_error":
        if small:  # keep |y| >= 1 so that no float16 result overflows
            y = rng.uniform(1, 4, shape) * rng.choice([-1, 1], shape)
            p = y * rng.uniform(0.5, 1.5, shape)
        else:
            y = with_zeros(rng, rng.normal(size=shape) * scale, 0.05)
            p = rng.normal(size=shape) * scale
    elif fn == "mean_squared_logarithmic_error":
        y, p = rng.normal(size=shape) * 2, rng.normal(size=shape) * 2
        y[rng.random(shape) < 0.1] = -1.0
    elif fn == "poisson":
        y = rng.poisson(2.0, shape).astype(F64) if ch.boolean() else rng.uniform(0, 3, shape)
        p = with_zeros(rng, rng.uniform(0, 4, shape), 0.1)
    elif fn in ("hinge", "squared_hinge"):
        mode = ch.choice(["binary01", "pm1", "mixed", "real"])
        if mode == "binary01":
            y = (rng.random(shape) < 0.5).astype(F64)
        elif mode == "pm1":
            y = rng.choice([-1.0, 1.0], shape)
        elif mode == "mixed":  # all 0/1 except one 2: no conversion anywhere (batch-global)
            y = (rng.random(shape) < 0.5).astype(F64)
            y.flat[int(rng.integers(y.size))] = 2.0
        else:
            y = rng.normal(size=shape)
        p = rng.normal(size=shape) * 2
    elif fn == "categorical_hinge":
        if ch.boolean():
            y = np.zeros(shape)
            idx = rng.integers(shape[-1], size=shape[:-1])
            np.put_along_axis(y, idx[..., None], 1.0, axis=-1)
        else:
            y = rng.random(shape)
        p = rng.normal(size=shape) * 2
    elif fn == "kl_divergence":
        y = with_zeros(rng, rng.uniform(-0.2, 1.3, shape))
        p = with_zeros(rng, rng.uniform(-0.2, 1.3, shape))
    elif fn == "contrastive_loss":
        y = labels01(ch, rng, shape)
        p = with_zeros(rng, np.abs(rng.normal(size=shape)) * 1.5, 0.05)
        params["margin"] = ch.choice([1.0, 0.5, 2.0])
    else:
        raise AssertionError(fn)
    return Sample((y.astype(dtype), p.astype(dtype)), params, may_mismatch=True)


def gen_binary(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype)
    from_logits = ch.boolean()
    y = labels01(ch, rng, shape)
    if from_logits:
        p = rng.normal(size=shape) * ch.choice([1.0, 6.0] if dtype == F16 else [1.0, 10.0, 40.0])
    else:
        p = unit(rng, shape)
    axis = ch.choice([-1] + list(range(-len(shape), len(shape))))
    params = {"from_logits": from_logits, "label_smoothing": ch.choice([0.0, 0.1, 0.35]),
              "axis": axis}
    if fn == "binary_focal_crossentropy":
        params.update(apply_class_balancing=ch.boolean(), alpha=ch.choice([0.25, 0.5, 0.9]),
                      gamma=ch.choice([2.0, 0.0, 1.0, 2.5, 5.0]))
    return Sample((y.astype(dtype), p.astype(dtype)), params, may_mismatch=(axis == -1))


def gen_categorical(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype)
    rank = len(shape)
    axis = ch.choice([-1] + list(range(-rank, rank)))
    ax = axis % rank
    from_logits = ch.boolean()
    mode = ch.choice(["onehot", "soft", "any"])
    if mode == "onehot":
        y = np.zeros(shape)
        idx = rng.integers(shape[ax], size=shape[:ax] + (1,) + shape[ax + 1:])
        np.put_along_axis(y, idx, 1.0, axis=ax)
    elif mode == "soft":
        y = rng.random(shape)
        y = y / y.sum(axis=ax, keepdims=True)
    else:
        y = rng.random(shape) * 2
    if from_logits:
        p = rng.normal(size=shape) * ch.choice([1.0, 5.0] if dtype == F16 else [1.0, 10.0, 60.0])
    else:
        p = with_zeros(rng, rng.random(shape), 0.2)
        p = np.where(p.sum(axis=ax, keepdims=True) == 0, 0.5, p)  # no all-zero row (0/0 = NaN)
        if ch.boolean():
            p = p / p.sum(axis=ax, keepdims=True)
    smoothing = ch.choice([0.0, 0.1, 0.35])
    if compat == ref.KERAS3 and ax != rank - 1:
        # Keras <= 3.15.1 takes C from the last dim, Keras HEAD from the class axis: untested.
        smoothing = 0.0
    params = {"from_logits": from_logits, "label_smoothing": smoothing, "axis": axis}
    if fn == "categorical_focal_crossentropy":
        params["gamma"] = ch.choice([2.0, 0.0, 1.0, 3.5])
        if ax == rank - 1 and ch.boolean():
            params["alpha"] = [float(a) for a in np.round(rng.random(shape[-1]), 3)]
        else:
            params["alpha"] = ch.choice([0.25, 1.0, 0.6])
    return Sample((y.astype(dtype), p.astype(dtype)), params)


def gen_sparse(fn, ch, dtype, compat, big, role="class"):
    rng = ch.rng()
    if big:
        shape, axis = (2, BIG), -1
    else:
        shape = draw_shape(ch, dtype, min_rank=2, min_last=2)
        axis = -1
        # the tf_keras function accepts any class axis (moved last); the tf_keras *class* has no
        # axis parameter, and Keras 3 on TensorFlow requires the last axis
        if role == "function" and compat == ref.KERAS2 and ch.boolean():
            axis = ch.choice(list(range(-len(shape), len(shape))))
    rank = len(shape)
    ax = axis % rank
    shape = list(shape)
    if shape[ax] < 2:
        shape[ax] = 3
    shape = tuple(shape)
    n_classes = shape[ax]
    from_logits = ch.boolean()
    p = rng.normal(size=shape) * 4 if from_logits else unit(rng, shape)
    label_shape = shape[:ax] + shape[ax + 1:]
    labels = rng.integers(n_classes, size=label_shape)
    ignore = ch.choice([None, None, -1, 0, int(n_classes) - 1])
    if ignore == -1:
        labels = np.where(rng.random(label_shape) < 0.25, -1, labels)
        if ch.integer(0, 9) == 0:
            labels[...] = -1  # everything ignored: K2 NaN, K3 0
    kind = ch.choice(["int64", "int32", "float"])
    if kind == "float":  # float labels truncate toward 0 (1.7 -> 1); -1 stays -1
        y = np.where(labels >= 0, labels + np.round(rng.random(label_shape) * 0.9, 2), labels)
        y = y.astype(dtype)
    else:
        y = labels.astype(kind)
    if ch.boolean():  # same rank as p with a size-1 class axis
        y = np.expand_dims(y, ax)
    params = {"from_logits": from_logits, "ignore_class": ignore}
    if axis != -1:
        params["axis"] = axis
    return Sample((y, p.astype(dtype)), params)


def gen_cosine(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype)
    axis = ch.choice([-1] + list(range(-len(shape), len(shape))))
    mode = ch.choice(["normal", "zeros", "tiny"] if dtype != F16 else ["normal", "zeros"])
    y, p = rng.normal(size=shape), rng.normal(size=shape)
    if mode == "zeros":
        y = y * (rng.random(shape[:-1] + (1,)) < 0.7)
    elif mode == "tiny":  # norms around the 1e-6 (K2) and 1e-7 (K3) floors
        y = y * 10.0 ** rng.uniform(-8.5, -6, shape[:-1] + (1,))
    return Sample((y.astype(dtype), p.astype(dtype)), {"axis": axis}, may_mismatch=(axis == -1))


def gen_overlap(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype)
    rank = len(shape)
    y = labels01(ch, rng, shape)
    p = unit(rng, shape)
    if ch.boolean():
        y = np.zeros(shape)  # empty masks
    axes = [None, -1, tuple(range(1, rank)) if rank > 1 else 0]
    if rank > 2:
        axes.append((0, rank - 1))
    params = {"axis": ch.choice(axes)}
    if fn == "tversky":
        params["alpha"] = ch.choice([0.5, 0.0, 0.3, 0.7, 1.0])
        params["beta"] = ch.choice([0.5, 0.0, 0.3, 0.7, 1.0])
    return Sample((y.astype(dtype), p.astype(dtype)), params)


def gen_gce(fn, ch, dtype, compat, big):
    rng = ch.rng()
    b, c = (2, BIG) if big else (ch.choice(DIMS), ch.choice([2, 3, 5, 13]))
    p = rng.random((b, c))
    if ch.boolean():
        p = p / p.sum(axis=-1, keepdims=True)
    p = with_zeros(rng, p, 0.1)
    labels = rng.integers(c, size=b)
    y = labels.astype(ch.choice(["int64", "int32"])) if ch.boolean() else labels.astype(dtype)
    return Sample((y, p.astype(dtype)), {"q": ch.choice([0.5, 0.1, 0.7, 0.9])})


def gen_circle(fn, ch, dtype, compat, big):
    rng = ch.rng()
    b, d = (5, BIG) if big else (ch.choice([1, 2, 3, 5, 7, 13]), ch.choice([2, 3, 8, 13]))
    e = rng.normal(size=(b, d))
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    labels = rng.integers(ch.choice([1, 2, 3]), size=b)
    params = {"gamma": ch.choice([80.0, 10.0]), "margin": ch.choice([0.4, 0.25]),
              "remove_diagonal": ch.boolean()}
    return Sample((labels.astype(ch.choice(["int64", "int32"])), e.astype(dtype)), params)


def gen_triplet(fn, ch, dtype, compat, big):
    rng = ch.rng()
    shape = (2, BIG) if big else draw_shape(ch, dtype, max_rank=3)
    a = rng.normal(size=shape)
    pos = a + rng.normal(size=shape) * 0.5
    neg = a + rng.normal(size=shape) * ch.choice([0.5, 1.0])
    params = {"margin": ch.choice([1.0, 0.5, 0.0]), "p": ch.choice([2, 1, 3])}
    return Sample(tuple(v.astype(dtype) for v in (a, pos, neg)), params)


GENERATORS = {fn: gen_pointwise for fn in POINTWISE}
GENERATORS.update({
    "binary_crossentropy": gen_binary,
    "binary_focal_crossentropy": gen_binary,
    "categorical_crossentropy": gen_categorical,
    "categorical_focal_crossentropy": gen_categorical,
    "sparse_categorical_crossentropy": gen_sparse,
    "cosine_similarity": gen_cosine,
    "dice": gen_overlap,
    "tversky": gen_overlap,
    "categorical_generalized_cross_entropy": gen_gce,
    "circle": gen_circle,
    "triplet_margin_loss": gen_triplet,
})


def test_every_reference_has_a_generator():
    assert set(GENERATORS) == set(ref.REFERENCES)


# ------------------------------------------------------------------------------------------------
# magnitude of the cancelling terms, per element of L (see the module docstring)
# ------------------------------------------------------------------------------------------------

def _w(x, cd):
    return np.asarray(x).astype(cd).astype(F64)


def magnitude(fn: str, inputs: tuple, params: dict, compat: str, cd, L: np.ndarray) -> np.ndarray:
    eps, hi = ref.clip_bounds(cd)
    P = params
    if fn == "triplet_margin_loss":
        a, pos, neg = (_w(v, cd) for v in inputs)
        o = float(P.get("p", 2))
        norm = lambda v: np.sum(np.abs(v) ** o, axis=-1) ** (1.0 / o)  # noqa: E731
        m = norm(a - pos) + norm(a - neg) + abs(P.get("margin", 1.0))
        return np.broadcast_to(m, L.shape)
    y, p = _w(inputs[0], cd), _w(inputs[1], cd)
    if fn in ("mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
              "huber", "dice", "tversky"):
        m = 0.0 if fn not in ("dice", "tversky") else 2.0  # 1 - ratio with ratio <= 1
    elif fn == "mean_squared_logarithmic_error":
        la, lb = np.log(np.maximum(p, eps) + 1), np.log(np.maximum(y, eps) + 1)
        m = np.mean(2 * np.abs(la - lb) * (np.abs(la) + np.abs(lb) + 2), axis=-1)
    elif fn == "log_cosh":
        m = np.mean(2 * np.abs(p - y) + 1, axis=-1)
    elif fn == "poisson":
        m = np.mean(np.abs(p) + np.abs(y * np.log(np.maximum(p + eps, 1e-300))), axis=-1)
    elif fn == "kl_divergence":
        yc, pc = np.clip(y, eps, 1), np.clip(p, eps, 1)
        m = np.sum(yc * (1 + np.abs(np.log(yc)) + np.abs(np.log(pc))), axis=-1)
    elif fn in ("hinge", "squared_hinge"):
        yh = 2 * y - 1 if np.all((y == 0) | (y == 1)) else y
        t = np.abs(yh * p)
        factor = 2 * np.maximum(1 - yh * p, 0) if fn == "squared_hinge" else 1.0
        m = np.mean((1 + t) * factor, axis=-1)
    elif fn == "categorical_hinge":
        m = np.sum(np.abs(y * p), axis=-1) + np.max(np.abs((1 - y) * p), axis=-1) + 1
    elif fn == "contrastive_loss":
        mg = P.get("margin", 1.0)
        m = np.mean(np.abs(1 - y) * 2 * np.maximum(mg - p, 0) * (abs(mg) + np.abs(p)), axis=-1)
    elif fn == "cosine_similarity":
        ax = P.get("axis", -1)
        n = lambda v: v / np.maximum(np.linalg.norm(v, axis=ax, keepdims=True), 1e-7)  # noqa: E731
        m = np.sum(np.abs(n(y) * n(p)), axis=ax) + 1
    elif fn in ("binary_crossentropy", "binary_focal_crossentropy"):
        s, ax = P.get("label_smoothing", 0.0), P.get("axis", -1)
        ys = y * (1 - s) + 0.5 * s if s else y
        logits = P.get("from_logits", False)
        b = np.abs(ref.REFERENCES["binary_crossentropy"](  # elementwise BCE via axis-free call
            ys[..., None], p[..., None], from_logits=logits, compat=compat, dtype=cd))
        mb = (np.abs(p) * (1 + np.abs(ys)) if logits else 0.0) + b + 1
        if fn == "binary_crossentropy":
            m = np.mean(np.broadcast_to(mb, np.broadcast_shapes(ys.shape, p.shape)), axis=ax)
        else:
            g = P.get("gamma", 2.0)
            r = ref.sigmoid(p) if logits else p
            pt = ys * r + (1 - ys) * (1 - r)
            w = (ys * P.get("alpha", 0.25) + (1 - ys) * (1 - P.get("alpha", 0.25))
                 if P.get("apply_class_balancing", False) else 1.0)
            f = np.abs(1 - pt) ** g
            df = 2 * g * np.abs(1 - pt) ** max(g - 1, 0.0)
            m = np.mean(np.abs(w) * (f * mb + df * b) + 0 * p, axis=ax)
    elif fn in ("categorical_crossentropy", "categorical_focal_crossentropy"):
        ax = P.get("axis", -1)
        logits = P.get("from_logits", False)
        x = 0.0
        if logits:
            lse = ref.logsumexp(p, axis=ax, keepdims=True)
            x = np.abs(p) + np.abs(lse)
        if fn == "categorical_crossentropy":
            m = np.sum(np.abs(y) * x + 0 * p, axis=ax) + 1
        else:
            q = np.exp(p - ref.logsumexp(p, axis=ax, keepdims=True)) if logits else p
            q = np.clip(q / np.sum(q, axis=ax, keepdims=True), eps, hi)
            g = P.get("gamma", 2.0)
            alpha = np.abs(np.asarray(P.get("alpha", 0.25), dtype=F64))
            m = np.sum(alpha * np.abs(y) * (g + 1) * (np.abs(np.log(q)) + 1 + x), axis=ax) + 1
    elif fn == "sparse_categorical_crossentropy":
        ax = P.get("axis", -1)
        z = p if P.get("from_logits", False) else np.log(np.clip(p, eps, hi))
        m = 2 * np.max(np.abs(z), axis=ax) + math.log(p.shape[ax]) + 1
    elif fn == "categorical_generalized_cross_entropy":
        q = P.get("q", 0.5)
        m = (1 + np.max(np.abs(p), axis=-1) ** q) / q
    elif fn == "circle":
        g, mg = P.get("gamma", 80.0), P.get("margin", 0.4)
        dist = np.maximum(1 - p @ p.T, 0)
        sp = g * np.abs((mg + dist) * (mg - dist))
        sn = g * np.abs((1 + mg - dist) * (1 - mg - dist))
        # dS/dD <= 4*gamma times the rounding of D, plus the size of S and of the two LSEs
        m = 8 * g + 2 * (np.max(sp, axis=1) + np.max(sn, axis=1)) + np.log(len(p)) + 1
    else:
        raise AssertionError(fn)
    return np.broadcast_to(np.asarray(m, dtype=F64), L.shape)


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------

def primary(fn: str, inputs: tuple) -> np.ndarray:
    """The input whose dtype decides the compute dtype: y_pred (the anchor for triplets)."""
    return np.asarray(inputs[0 if fn in ref.TRIPLET_INPUTS else 1])


def allowed_dtypes(dtype, compat: str, is_class: bool) -> tuple:
    """Output dtypes: float32 -> float32, float64 -> float64, float16 -> float16 (tf_keras) or
    float32, bfloat16 -> float32 (the library's rule); a Keras 3 class computes and returns
    float32 whatever the input (§6)."""
    if is_class and compat == ref.KERAS3:
        return (np.dtype(F32),)
    if np.dtype(dtype) == np.dtype(F16):
        return (np.dtype(F16), np.dtype(F32))
    if np.dtype(dtype).name == "bfloat16":
        return (np.dtype(F32),)
    return (np.dtype(dtype),)


def output_problem(result: np.ndarray, allowed: tuple, expected: np.ndarray, S: np.ndarray, M: np.ndarray,
                   what: str) -> str | None:
    """What is wrong with ``result`` against the reference's ``expected`` (None: nothing)."""
    if result.dtype not in allowed:
        return f"{what}: dtype {result.dtype}, expected one of {allowed}"
    if result.shape != expected.shape:
        return f"{what}: shape {result.shape}, reference {expected.shape}"
    tol = TOLERANCES[result.dtype]
    got = result.astype(F64)
    nan = np.isnan(expected)
    if not np.array_equal(np.isnan(got), nan):
        return f"{what}: NaN pattern differs: {got} vs {expected}"
    bound = tol.rtol * np.abs(S) + tol.atol_per_term * np.abs(M) + tol.floor
    err = np.abs(got - expected)
    bad = ~nan & ~(err <= bound)
    if np.any(bad):
        i = np.flatnonzero(bad.ravel())[0]
        return (f"{what}: {np.count_nonzero(bad)} value(s) outside tolerance; first at flat "
                f"index {i}: got {got.ravel()[i]!r}, reference {expected.ravel()[i]!r}, "
                f"|diff| {err.ravel()[i]:.3g} > bound {bound.ravel()[i]:.3g}")
    return None


def check_output(result: Any, allowed: tuple, expected: np.ndarray, S: np.ndarray, M: np.ndarray,
                 what: str):
    assert isinstance(result, np.ndarray), f"{what}: expected a NumPy array, got {type(result)}"
    problem = output_problem(result, allowed, expected, S, M, what)
    if problem:
        pytest.fail(problem)


def reference_class_call(fn: str, inputs: tuple, params: dict, sample_weight: Any, reduction: Any,
                         compat: str) -> tuple:
    """(expected, S, M, allowed output dtypes) of a class call, from the reference (S and M:
    see the module docstring). Raises what the reference raises for a call Keras refuses."""
    dtype = primary(fn, inputs).dtype
    # a Keras 3 class computes in its loss dtype, float32 (§6)
    cd = F32 if compat == ref.KERAS3 else ref.compute_dtype(primary(fn, inputs))
    aligned = inputs if fn in ref.TRIPLET_INPUTS else ref.align_ranks(*inputs, compat)
    L, mask = ref.per_sample(fn, *aligned, compat=compat, dtype=cd, **params)
    M_L = magnitude(fn, aligned, params, compat, cd, L)
    expected = ref.loss_call(fn, *inputs, sample_weight=sample_weight, reduction=reduction, compat=compat,
                             **params)
    abs_sw = None if sample_weight is None else np.abs(_w(sample_weight, cd))
    S = ref.reduce(np.abs(L), abs_sw, reduction, compat, mask)
    M = ref.reduce(M_L, abs_sw, reduction, compat, mask)
    return expected, S, M, allowed_dtypes(dtype, compat, True)


def reference_function_call(fn: str, inputs: tuple, params: dict, compat: str) -> tuple:
    """(expected, S, M, allowed output dtypes) of a loss function call, from the reference."""
    cd = ref.compute_dtype(primary(fn, inputs))
    expected = ref.REFERENCES[fn](*inputs, compat=compat, **params)
    mag_params = {k: v for k, v in params.items() if not k.startswith("ref_")}
    M = magnitude(fn, inputs, mag_params, compat, cd, expected)
    return expected, np.abs(expected), M, allowed_dtypes(primary(fn, inputs).dtype, compat, False)


def weight_candidates(rng, L_shape, y_shape, dtype):
    def arr(shape):
        w = rng.uniform(0.25, 2.0, shape)
        w[rng.random(shape) < 0.25] = 0.0
        return w.astype(dtype)

    cands = [None, 2.0, 0.5, 0.0, arr((1,))]
    if len(L_shape) >= 1:
        cands += [arr(L_shape[:1]), arr(L_shape[:1] + (1,)), arr(L_shape)]
    if len(L_shape) >= 2:
        cands.append(arr(L_shape + (1,)))
    cands.append(arr(y_shape))
    return cands


def compats_for(fn):
    return [ref.KERAS3] if fn in ref.KERAS3_ONLY else [ref.KERAS2, ref.KERAS3]


def reductions_for(compat):
    return list(ref.K2_REDUCTIONS) if compat == ref.KERAS2 else list(ref.K3_REDUCTIONS)


def mismatch_ranks(ch: Chooser, sample: Sample) -> Sample:
    """Drop a trailing size-1 axis of y or p (§5.1 alignment) in some class calls."""
    y, p = sample.inputs
    if not sample.may_mismatch or y.shape != p.shape or len(y.shape) < 2:
        return sample
    which = ch.choice(["none", "none", "y", "p"])
    if which == "none":
        return sample
    y1, p1 = y[..., :1], p[..., :1]
    if which == "y":
        return Sample((y1[..., 0], p1), sample.params)
    return Sample((y1, p1[..., 0]), sample.params)


def call_class(lib, fn, sample: Sample, sample_weight, reduction, compat):
    cls = getattr(lib, ref.CLASS_NAMES[fn])
    loss = cls(**sample.params, reduction=reduction, compat=compat)
    if sample_weight is None:
        return loss(*sample.inputs)
    return loss(*sample.inputs, sample_weight=sample_weight)


def class_case(lib, fn, ch: Chooser, big=False, dtype=None, compat=None, reduction="draw",
               sw="draw"):
    dtype = dtype or ch.choice([F32, F32, F32, F64, F64, F16])
    compat = compat or ch.choice(compats_for(fn))
    sample = GENERATORS[fn](fn, ch, dtype, compat, big)
    if fn not in ref.TRIPLET_INPUTS:
        sample = mismatch_ranks(ch, sample)
    if reduction == "draw":
        reduction = ch.choice(reductions_for(compat))
    if sw == "draw":
        cd = F32 if compat == ref.KERAS3 else ref.compute_dtype(primary(fn, sample.inputs))
        inputs = sample.inputs if fn in ref.TRIPLET_INPUTS else ref.align_ranks(*sample.inputs, compat)
        L, mask = ref.per_sample(fn, *inputs, compat=compat, dtype=cd, **sample.params)
        rng = ch.rng()
        valid = []
        for cand in weight_candidates(rng, L.shape, np.shape(inputs[0]), dtype):
            try:
                ref.reduce(L, cand, reduction, compat, mask)
            except ValueError:
                continue
            valid.append(cand)
        sw = valid[ch.integer(0, len(valid) - 1)]
    expected, S, M, allowed = reference_class_call(fn, sample.inputs, sample.params, sw, reduction, compat)
    what = (f"{ref.CLASS_NAMES[fn]}({sample.params}, reduction={reduction!r}, compat={compat!r}) "
            f"shapes={[np.shape(a) for a in sample.inputs]} dtype={np.dtype(dtype).name} "
            f"sample_weight={'None' if sw is None else np.shape(sw)}")
    result = call_class(lib, fn, sample, sw, reduction, compat)
    check_output(result, allowed, expected, S, M, what)
    return sample, result


# ------------------------------------------------------------------------------------------------
# registry and API coverage
# ------------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS = {  # spec §1.1/§1.2 and the library contract, in order
    "mean_squared_error": {}, "mean_absolute_error": {}, "mean_absolute_percentage_error": {},
    "mean_squared_logarithmic_error": {}, "hinge": {}, "squared_hinge": {},
    "categorical_hinge": {}, "poisson": {}, "log_cosh": {}, "kl_divergence": {},
    "binary_crossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "binary_focal_crossentropy": {"apply_class_balancing": False, "alpha": 0.25, "gamma": 2.0,
                                  "from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "categorical_crossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "categorical_focal_crossentropy": {"alpha": 0.25, "gamma": 2.0, "from_logits": False,
                                       "label_smoothing": 0.0, "axis": -1},
    "sparse_categorical_crossentropy": {"from_logits": False, "axis": -1, "ignore_class": None},
    "cosine_similarity": {"axis": -1},
    "huber": {"delta": 1.0},
    "dice": {"axis": None},
    "tversky": {"alpha": 0.5, "beta": 0.5, "axis": None},
    "categorical_generalized_cross_entropy": {"q": 0.5},
    "circle": {"ref_labels": None, "ref_embeddings": None, "remove_diagonal": True,
               "gamma": 80.0, "margin": 0.4},
    "contrastive_loss": {"margin": 1.0},
    "triplet_margin_loss": {"margin": 1.0, "p": 2},
}


def test_every_registry_loss_has_a_reference(gpuloss):
    missing = set(gpuloss.registry.LOSSES) - set(ref.REFERENCES)
    assert not missing, (
        f"registry losses without a reference in tests/reference.py: {sorted(missing)}")


def test_registry_has_every_contract_loss(gpuloss):
    missing = set(ref.REFERENCES) - set(gpuloss.registry.LOSSES)
    assert not missing, f"losses of the contract missing from the registry: {sorted(missing)}"


@pytest.mark.parametrize("fn", ALL_LOSSES)
def test_registry_spec(gpuloss, fn):
    spec = gpuloss.registry.LOSSES.get(fn)
    if spec is None:
        pytest.fail(f"{fn} not in the registry")
    assert spec.fn_name == fn
    assert spec.class_name == ref.CLASS_NAMES[fn]
    assert callable(getattr(gpuloss, spec.class_name))
    assert callable(getattr(gpuloss, spec.fn_name))
    allowed = EXPECTED_DEFAULTS[fn]
    keys = list(spec.defaults)
    assert set(keys) <= set(allowed), f"unexpected parameters {set(keys) - set(allowed)}"
    for k in keys:
        assert spec.defaults[k] == allowed[k] and type(spec.defaults[k]) in (
            type(allowed[k]), int, float), (k, spec.defaults[k])
    assert keys == [k for k in allowed if k in keys], f"parameter order {keys}"


ALIASES = {"mse": "mean_squared_error", "MSE": "mean_squared_error",
           "mae": "mean_absolute_error", "MAE": "mean_absolute_error",
           "mape": "mean_absolute_percentage_error", "MAPE": "mean_absolute_percentage_error",
           "msle": "mean_squared_logarithmic_error", "MSLE": "mean_squared_logarithmic_error",
           "kld": "kl_divergence", "KLD": "kl_divergence",
           "kullback_leibler_divergence": "kl_divergence", "logcosh": "log_cosh"}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases(gpuloss, alias):
    rng = np.random.default_rng(3)
    y, p = rng.random((4, 5)).astype(F32), rng.random((4, 5)).astype(F32)
    got = getattr(gpuloss, alias)(y, p)
    want = getattr(gpuloss, ALIASES[alias])(y, p)
    assert np.array_equal(got, want)
    assert gpuloss.get(alias)(y, p).tobytes() == want.tobytes()


# ------------------------------------------------------------------------------------------------
# property tests
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ALL_LOSSES)
@settings(max_examples=50, **SETTINGS)
@given(data=st.data())
def test_class_matches_reference(gpuloss, fn, data):
    class_case(gpuloss, fn, Chooser(data))


@pytest.mark.parametrize("fn", ALL_LOSSES)
@settings(max_examples=15, **SETTINGS)
@given(data=st.data())
def test_function_matches_reference(gpuloss, fn, data):
    ch = Chooser(data)
    compat = ch.choice(compats_for(fn))
    # float64 in keras3 mode is checked separately (test_keras3_function_keeps_float64) so that a
    # dtype problem there does not hide everything else
    dtype = ch.choice([F32, F32, F64, F16] if compat == ref.KERAS2 else [F32, F32, F16])
    function_case(gpuloss, fn, ch, dtype, compat)


def function_case(lib, fn, ch, dtype, compat):
    if fn == "sparse_categorical_crossentropy":
        sample = gen_sparse(fn, ch, dtype, compat, False, role="function")
    else:
        sample = GENERATORS[fn](fn, ch, dtype, compat, False)
    params = dict(sample.params)
    if fn == "circle" and ch.boolean():  # reference set given explicitly (function only)
        rng = ch.rng()
        n, d = ch.choice([1, 3, 6]), sample.inputs[1].shape[1]
        e = rng.normal(size=(n, d))
        params["ref_embeddings"] = (e / np.linalg.norm(e, axis=-1, keepdims=True)).astype(dtype)
        params["ref_labels"] = rng.integers(3, size=n)
    expected, S, M, allowed = reference_function_call(fn, sample.inputs, params, compat)
    if fn == "circle" and "ref_embeddings" in params:
        M = np.broadcast_to(8 * params["gamma"] * 4 + 50.0, expected.shape)
    result = getattr(lib, fn)(*sample.inputs, compat=compat, **params)
    shown = {k: v for k, v in params.items() if not k.startswith("ref_")} if fn == "circle" else params
    what = (f"{fn}({shown}, compat={compat!r}) shapes={[np.shape(a) for a in sample.inputs]} "
            f"dtype={np.dtype(dtype).name}")
    check_output(result, allowed, expected, S, M, what)


@pytest.mark.parametrize("fn", ALL_LOSSES)
def test_keras3_function_keeps_float64(gpuloss, fn):
    """§6: a Keras 3 *function* called directly skips the loss-dtype conversion; on TensorFlow
    float64 NumPy input stays float64 (it is the Keras 3 *class* that computes in float32)."""
    function_case(gpuloss, fn, Chooser(seed=5), F64, ref.KERAS3)


@pytest.mark.parametrize("compat", ["keras2", "keras3"])
@pytest.mark.parametrize("fn", ["categorical_crossentropy", "categorical_focal_crossentropy"])
def test_label_smoothing_class_count_with_axis(gpuloss, fn, compat):
    """§3.2: with axis != -1, CCE takes C from the class axis (tf_keras, Keras HEAD) but
    CategoricalFocalCrossentropy from y_true's *last* dim (tf_keras). Keras 3.15.1 vs HEAD
    disagree for CCE, so keras3 mode is only checked where the spec is unambiguous."""
    if compat == "keras3":
        pytest.skip("Keras <= 3.15.1 and HEAD differ (C from the last dim vs the class axis)")
    rng = np.random.default_rng(21)
    y = np.zeros((3, 5), F32)
    y[rng.integers(3, size=5), np.arange(5)] = 1.0  # one-hot along axis 0
    p = rng.random((3, 5)).astype(F32)
    params = {"label_smoothing": 0.2, "axis": 0}
    got = getattr(gpuloss, fn)(y, p, **params)
    want = ref.REFERENCES[fn](y, p, **params)
    check_output(got, (np.dtype(F32),), want, np.abs(want),
                 magnitude(fn, (y, p), params, compat, F32, want), f"{fn}({params})")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fn", ALL_LOSSES)
def test_long_row(gpuloss, fn, seed):
    """A row of 10 007 elements (float32): long reductions must stay within the float32 bounds."""
    compat = ref.default_compat(fn)
    for reduction in ("none", ref.default_reduction(fn)):
        class_case(gpuloss, fn, Chooser(seed=seed), big=True, dtype=F32, compat=compat,
                   reduction=reduction, sw=None)


@pytest.mark.parametrize("fn", ALL_LOSSES)
def test_repeated_calls_are_bit_identical(gpuloss, fn):
    ch = Chooser(seed=7)
    dtype = F32
    compat = ref.default_compat(fn)
    sample = GENERATORS[fn](fn, ch, dtype, compat, True)
    cls = getattr(gpuloss, ref.CLASS_NAMES[fn])
    for reduction in ("none", ref.default_reduction(fn), "sum"):
        loss = cls(**sample.params, reduction=reduction, compat=compat)
        first = loss(*sample.inputs)
        for _ in range(3):
            again = loss(*sample.inputs)
            assert again.dtype == first.dtype and again.shape == first.shape
            assert again.tobytes() == first.tobytes(), f"{fn} {reduction}: results differ bitwise"
    fn_first = getattr(gpuloss, fn)(*sample.inputs, compat=compat, **sample.params)
    fn_again = getattr(gpuloss, fn)(*sample.inputs, compat=compat, **sample.params)
    assert fn_again.tobytes() == fn_first.tobytes()


def _reversed(a):
    """The same shape and dtype with the values in reverse order: one-hot rows, label sets and
    row sums survive, so the inputs stay valid while every value moves."""
    a = np.asarray(a)
    return np.ascontiguousarray(a.reshape(-1)[::-1].reshape(a.shape)) if a.ndim else a


@pytest.mark.parametrize("fn", ALL_LOSSES)
def test_repeated_shape_with_new_values_matches_reference(gpuloss, fn):
    """The second call of a shape reuses what the first worked out (kernel, argument order):
    it must still compute from the new values, for every reduction and the function."""
    for seed, dtype in ((3, F32), (4, F64)):
        compat = ref.default_compat(fn)
        sample = GENERATORS[fn](fn, Chooser(seed=seed), dtype, compat, False)
        cls = getattr(gpuloss, ref.CLASS_NAMES[fn])
        for reduction in ("none", ref.default_reduction(fn), "sum"):
            loss = cls(**sample.params, reduction=reduction, compat=compat)
            for inputs in (sample.inputs, tuple(_reversed(a) for a in sample.inputs)):
                expected, S, M, allowed = reference_class_call(fn, inputs, sample.params, None, reduction, compat)
                check_output(loss(*inputs), allowed, expected, S, M,
                             f"{fn} {reduction} repeated shape {[np.shape(a) for a in inputs]}")
        if fn == "circle":
            continue  # its function compares with a reference set: covered by the function tests
        for inputs in (sample.inputs, tuple(_reversed(a) for a in sample.inputs)):
            expected, S, M, allowed = reference_function_call(fn, inputs, sample.params, compat)
            check_output(getattr(gpuloss, fn)(*inputs, compat=compat, **sample.params), allowed, expected,
                         S, M, f"{fn} function repeated shape")


@pytest.mark.parametrize("fn", ["hinge", "squared_hinge"])
def test_repeated_shape_decides_the_label_rule_per_call(gpuloss, fn):
    """Hinge's {0, 1} → {-1, 1} rule looks at each batch: a repeated shape must not keep the
    first batch's decision."""
    rng = np.random.default_rng(8)
    p = rng.normal(size=(6, 4)).astype(F32)
    binary = rng.integers(0, 2, size=(6, 4)).astype(F32)
    signed = 2 * binary - 1
    mixed = binary.copy()
    mixed[0, 0] = 0.5
    loss = getattr(gpuloss, ref.CLASS_NAMES[fn])()
    for y in (binary, signed, mixed, binary):
        for got, want in ((loss(y, p), ref.REFERENCES[fn](y, p).mean()),
                          (getattr(gpuloss, fn)(y, p), ref.REFERENCES[fn](y, p))):
            np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("C", [1, 5])
def test_hinge_label_rule_over_the_whole_batch(gpuloss, C):
    """The {0, 1} → {-1, 1} rule is guessed from the first labels and checked by the flat
    kernels as they sum (other kernels check first): a non-binary label far past the guessed
    part, ±1 labels sorted ones first, Fortran-ordered inputs (no flat kernel) and weights
    per row (row kernels) all follow the rule over the whole batch."""
    rng = np.random.default_rng(9)
    n = 100_000
    p = rng.normal(size=(n // C, C)).astype(F32)
    binary = (rng.random((n // C, C)) < 0.5).astype(F32)
    late = binary.copy()
    late.reshape(-1)[-3] = 0.5
    sorted_signed = np.sort(2 * binary - 1, axis=None)[::-1].reshape(binary.shape).copy()
    w = rng.random(n // C).astype(F32)
    for name, y, pred in (("binary", binary, p), ("signed", 2 * binary - 1, p), ("late non-binary", late, p),
                          ("sorted ±1", sorted_signed, p), ("Fortran", np.asfortranarray(late), np.asfortranarray(p))):
        for fn in ("hinge", "squared_hinge"):
            want = ref.REFERENCES[fn](y, pred)
            cls = getattr(gpuloss, ref.CLASS_NAMES[fn])
            for got, expected in ((getattr(gpuloss, fn)(y, pred), want), (cls()(y, pred), want.mean()),
                                  (cls(reduction="sum")(y, pred), want.sum()),
                                  (cls()(y, pred, sample_weight=w), (want * w).sum() / want.size)):
                np.testing.assert_allclose(got, expected, rtol=2e-6, err_msg=f"{fn} {name} C={C}")


@pytest.mark.parametrize("ignore_class", [None, 1])
def test_repeated_shape_still_raises_on_bad_labels(gpuloss, ignore_class):
    """A shape seen before with good labels still raises for out-of-range labels."""
    p = np.full((5, 3), 1 / 3, F32)
    good = np.array([0, 1, 2, 1, 0])
    bad = np.array([0, 1, 3, 1, 0])
    for reduction in ("none", "sum_over_batch_size"):
        loss = gpuloss.SparseCategoricalCrossentropy(ignore_class=ignore_class, reduction=reduction)
        loss(good, p)
        loss(good, p)
        with pytest.raises(ValueError, match="outside the valid range"):
            loss(bad, p)
    gpuloss.sparse_categorical_crossentropy(good, p, ignore_class=ignore_class)
    with pytest.raises(ValueError, match="outside the valid range"):
        gpuloss.sparse_categorical_crossentropy(bad, p, ignore_class=ignore_class)


@pytest.mark.parametrize("fn", ["mean_squared_error", "binary_crossentropy",
                                "categorical_crossentropy", "sparse_categorical_crossentropy",
                                "dice"])
def test_same_bits_for_every_thread_count(gpuloss, fn):
    """design.md §6: the same bits on every run and thread count (Numba backend)."""
    numba = pytest.importorskip("numba")
    ch = Chooser(seed=11)
    compat = ref.default_compat(fn)
    sample = GENERATORS[fn](fn, ch, F32, compat, True)
    cls = getattr(gpuloss, ref.CLASS_NAMES[fn])
    before = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            results.append(cls(**sample.params, compat=compat,
                               reduction=ref.default_reduction(fn))(*sample.inputs).tobytes())
    finally:
        numba.set_num_threads(before)
    assert all(r == results[0] for r in results)

"""An independent float64 NumPy reference of every gpuloss loss.

Written from ``shared/keras-semantics.md`` (the "spec"); section numbers below refer to it.
This module never imports gpuloss: it is what the library is checked against.

Conventions
-----------
* ``REFERENCES[fn_name](*inputs, compat="keras2", dtype=None, **params)`` returns the per-sample
  loss ``L`` of the loss *function* (no weighting, no reduction), as a float64 array (0-d for
  scalars). ``fn_name`` is the loss's function name (``"mean_squared_error"``, ``"huber"``, ...).
* All arithmetic is float64. What depends on the caller's dtype is only
  - the *compute dtype* (§6, and the library's contract): float64 inputs compute in float64;
    float32, float16, integer and bool inputs compute in float32. It is taken from ``y_pred``
    (the anchor for the triplet loss) unless ``dtype=`` overrides it. ``y_true`` and the sample
    weights are first rounded to the compute dtype (Keras casts them to it), then widened;
  - the clip bounds (§0): in float32 they are the float32 constants fl32(1e-7) and
    fl32(1 - 1e-7) = 1 - 2**-23, which matter at the 1e-6 level (-log(1 - hi32) = 15.942385,
    -log(1e-7) = 16.118096). In float64 they are 1e-7 and 1 - 1e-7.
* ``loss_call(fn_name, *inputs, sample_weight=None, reduction=..., compat=..., **params)`` is the
  whole class pipeline: rank alignment (§5.1), per-sample loss and its mask, sample-weight
  alignment (§5.2), weighting and reduction (§4).
* ``compat="keras2"`` is tf_keras 2.21 called on tensors; ``compat="keras3"`` is Keras 3 on the
  TensorFlow backend (Tversky: Keras master, alpha weights false positives). In keras3 mode the
  class pipeline (``loss_call``) computes in float32 whatever the input dtype (Keras 3's default
  loss dtype); the functions keep float64 as float64 (Keras 3 functions on TensorFlow).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

__all__ = [
    "KERAS2", "KERAS3", "REFERENCES", "CLASS_NAMES", "CLASS_TO_FN", "KERAS3_ONLY",
    "compute_dtype", "clip_bounds", "align_ranks", "align_sample_weight", "reduce",
    "per_sample", "loss_call", "default_compat", "default_reduction",
]

KERAS2 = "keras2"
KERAS3 = "keras3"
F64 = np.float64

K2_REDUCTIONS = ("auto", "sum_over_batch_size", "sum", "none")
K3_REDUCTIONS = ("sum_over_batch_size", "sum", "none", None, "mean", "mean_with_sample_weight")


# ----------------------------------------------------------------------------------------------
# dtypes and constants
# ----------------------------------------------------------------------------------------------

def compute_dtype(x: Any, dtype: Any = None) -> type:
    """float64 if ``dtype`` (or ``x``'s dtype) is float64, else float32 (§6 + library contract)."""
    dt = np.dtype(dtype) if dtype is not None else np.asarray(x).dtype
    return np.float64 if dt == np.float64 else np.float32


def clip_bounds(cdtype: type) -> tuple[float, float]:
    """(epsilon, 1 - epsilon) as the compute dtype holds them, widened to float64 (§0)."""
    if cdtype == np.float64:
        return 1e-7, 1.0 - 1e-7
    eps32 = np.float32(1e-7)
    return float(eps32), float(np.float32(1.0) - eps32)


def _as(x: Any, cdtype: type) -> np.ndarray:
    """Round to the compute dtype (as Keras's casts do), then widen to float64."""
    return np.asarray(x).astype(cdtype).astype(F64)


def _prep(y_true: Any, y_pred: Any, dtype: Any):
    cd = compute_dtype(y_pred, dtype)
    eps, hi = clip_bounds(cd)
    return _as(y_true, cd), _as(y_pred, cd), eps, hi, cd


def _labels(y_true: Any, cdtype: type, compat: str) -> np.ndarray:
    """Class ids: Keras 3 first converts labels to the float loss dtype; floats truncate to 0."""
    y = np.asarray(y_true)
    if compat == KERAS3 or y.dtype.kind == "f":
        y = y.astype(cdtype if compat == KERAS3 else y.dtype)
        if y.dtype.kind == "f":
            y = np.trunc(y)
    return y.astype(np.int64)


def _check_compat(compat: str) -> None:
    if compat not in (KERAS2, KERAS3):
        raise ValueError(f"compat must be 'keras2' or 'keras3', got {compat!r}")


# ----------------------------------------------------------------------------------------------
# small math helpers (float64)
# ----------------------------------------------------------------------------------------------

def softplus(z: np.ndarray) -> np.ndarray:
    """max(z, 0) + log1p(exp(-|z|)); softplus(-inf) = 0."""
    z = np.asarray(z, dtype=F64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def logsumexp(z: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    m = np.max(z, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(z - m_safe), axis=axis, keepdims=True)) + m_safe
    return out if keepdims else np.squeeze(out, axis=axis)


def _smooth_binary(y: np.ndarray, s: float) -> np.ndarray:
    return y * (1.0 - s) + 0.5 * s if s else y


# ----------------------------------------------------------------------------------------------
# §3.1 regression / distance
# ----------------------------------------------------------------------------------------------

def mean_squared_error(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    return np.mean((y - p) ** 2, axis=-1)


def mean_absolute_error(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    return np.mean(np.abs(y - p), axis=-1)


def mean_absolute_percentage_error(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    return 100.0 * np.mean(np.abs(y - p) / np.maximum(np.abs(y), eps), axis=-1)


def mean_squared_logarithmic_error(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    first = np.log(np.maximum(p, eps) + 1.0)
    second = np.log(np.maximum(y, eps) + 1.0)
    return np.mean((first - second) ** 2, axis=-1)


def huber(y_true, y_pred, delta=1.0, *, compat=KERAS2, dtype=None):
    # The library keeps float64 as float64 (a documented difference from tf_keras, which casts
    # Huber to float32), so the compute dtype rule is the generic one.
    y, p, _, _, cd = _prep(y_true, y_pred, dtype)
    d = float(np.asarray(delta).astype(cd))
    err = p - y
    a = np.abs(err)
    h = np.where(a <= d, 0.5 * err * err, d * a - 0.5 * d * d)
    return np.mean(h, axis=-1)


def log_cosh(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    x = p - y
    return np.mean(x + softplus(-2.0 * x) - math.log(2.0), axis=-1)


def cosine_similarity(y_true, y_pred, axis=-1, *, compat=KERAS2, dtype=None):
    y, p, eps, _, cd = _prep(y_true, y_pred, dtype)
    if compat == KERAS2:
        # TF l2_normalize: v * rsqrt(max(sum v^2, 1e-12))
        floor_sq = float(np.asarray(1e-12).astype(cd))
    else:
        floor_sq = eps * eps                            # Keras >= 3.1: norm floored at epsilon

    def normalise(v):
        return v / np.sqrt(np.maximum(np.sum(v * v, axis=axis, keepdims=True), floor_sq))

    return -np.sum(normalise(y) * normalise(p), axis=axis)


# ----------------------------------------------------------------------------------------------
# §3.2 probabilistic
# ----------------------------------------------------------------------------------------------

def poisson(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(p - y * np.log(p + eps), axis=-1)


def kl_divergence(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    y = np.clip(y, eps, 1.0)
    p = np.clip(p, eps, 1.0)
    return np.sum(y * np.log(y / p), axis=-1)


def _bce_elementwise(ys, p, from_logits, compat, eps, hi):
    """Per-element binary crossentropy on (already smoothed) labels ys."""
    if from_logits:
        x = p
        return np.maximum(x, 0.0) - x * ys + np.log1p(np.exp(-np.abs(x)))
    q = np.clip(p, eps, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        if compat == KERAS2:  # tf_keras adds epsilon inside both logs, after clipping
            return -(ys * np.log(q + eps) + (1.0 - ys) * np.log(1.0 - q + eps))
        return -(ys * np.log(q) + (1.0 - ys) * np.log(1.0 - q))


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *,
                        compat=KERAS2, dtype=None):
    y, p, eps, hi, _ = _prep(y_true, y_pred, dtype)
    ys = _smooth_binary(y, float(label_smoothing))
    return np.mean(_bce_elementwise(ys, p, from_logits, compat, eps, hi), axis=axis)


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1, *,
                              compat=KERAS2, dtype=None):
    y, p, eps, hi, _ = _prep(y_true, y_pred, dtype)
    ys = _smooth_binary(y, float(label_smoothing))
    r = sigmoid(p) if from_logits else p            # not clipped
    p_t = ys * r + (1.0 - ys) * (1.0 - r)
    with np.errstate(invalid="ignore"):
        focal = (1.0 - p_t) ** float(gamma)
    # K2: the BCE term is tf_keras's on the raw input. K3 on TensorFlow: logits -> the exact logits
    # formula (sigmoid output carries cached logits), probabilities -> Keras 3's formula (no +eps).
    bce = _bce_elementwise(ys, p, from_logits, compat, eps, hi)
    out = focal * bce
    if apply_class_balancing:
        out = (ys * alpha + (1.0 - ys) * (1.0 - alpha)) * out
    return np.mean(out, axis=axis)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *,
                             compat=KERAS2, dtype=None):
    y, p, eps, hi, _ = _prep(y_true, y_pred, dtype)
    s = float(label_smoothing)
    if s:
        # C = size of the class axis (tf_keras and Keras HEAD; Keras <= 3.15.1 uses the last dim).
        ys = y * (1.0 - s) + s / y.shape[axis]
    else:
        ys = y
    if from_logits:
        log_q = p - logsumexp(p, axis=axis, keepdims=True)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.clip(p / np.sum(p, axis=axis, keepdims=True), eps, hi)  # normalise, then clip
            log_q = np.log(q)
    return -np.sum(ys * log_q, axis=axis)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1, *, compat=KERAS2, dtype=None):
    y, p, eps, hi, _ = _prep(y_true, y_pred, dtype)
    s = float(label_smoothing)
    if s:
        ys = y * (1.0 - s) + s / y.shape[-1]  # C from y_true's *last* dim (§3.2)
    else:
        ys = y
    if from_logits:
        q = np.exp(p - logsumexp(p, axis=axis, keepdims=True))
    else:
        q = p
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.clip(q / np.sum(q, axis=axis, keepdims=True), eps, hi)
        cce = -ys * np.log(q)
    a = np.asarray(alpha, dtype=F64)  # scalar or per-class list, broadcast against the last axis
    return np.sum(a * (1.0 - q) ** float(gamma) * cce, axis=axis)


def _sparse_prepare(y_true, y_pred, axis, compat, dtype):
    """Return (labels, preds with the class axis last, eps, hi, cdtype)."""
    cd = compute_dtype(y_pred, dtype)
    eps, hi = clip_bounds(cd)
    p = _as(y_pred, cd)
    labels = _labels(y_true, cd, compat)
    ax = axis % p.ndim
    if labels.ndim == p.ndim:  # same rank: the class axis of the labels has size 1
        if labels.shape[ax] != 1:
            raise ValueError("sparse labels of the same rank need a size-1 class axis")
        labels = np.squeeze(labels, axis=ax)
    p = np.moveaxis(p, ax, -1)
    if labels.shape != p.shape[:-1]:
        raise ValueError(f"labels shape {labels.shape} does not match {p.shape[:-1]}")
    return labels, p, eps, hi, cd


def _sparse_ce_and_mask(y_true, y_pred, from_logits=False, axis=-1, ignore_class=None, *,
                        compat=KERAS2, dtype=None, variant="tf"):
    labels, p, eps, hi, _ = _sparse_prepare(y_true, y_pred, axis, compat, dtype)
    n_classes = p.shape[-1]
    if ignore_class is None:
        valid = np.ones(labels.shape, dtype=bool)
    else:
        valid = labels != int(ignore_class)
    if np.any(valid & ((labels < 0) | (labels >= n_classes))):
        raise ValueError("label out of range")
    safe = np.where(valid, labels, 0)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        if from_logits:
            loss = logsumexp(p) - np.take_along_axis(p, safe, axis=-1)[..., 0]
        elif variant == "tf":
            # tf_keras and Keras 3 on TensorFlow: log of the clipped probabilities, then a
            # log-softmax -> renormalised *after* clipping.
            z = np.log(np.clip(p, eps, hi))
            loss = logsumexp(z) - np.take_along_axis(z, safe, axis=-1)[..., 0]
        else:
            # Keras 3 JAX / torch / numpy: normalise, then clip (like CCE).
            q = np.clip(p / np.sum(p, axis=-1, keepdims=True), eps, hi)
            loss = -np.log(np.take_along_axis(q, safe, axis=-1)[..., 0])
    loss = np.where(valid, loss, 0.0)
    return loss, (valid if ignore_class is not None else None)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, axis=-1, ignore_class=None,
                                    *, compat=KERAS2, dtype=None, variant="tf"):
    return _sparse_ce_and_mask(y_true, y_pred, from_logits, axis, ignore_class,
                               compat=compat, dtype=dtype, variant=variant)[0]


def _hinge_labels(y: np.ndarray) -> np.ndarray:
    """2y - 1 if *every* element of y is 0 or 1 (one batch-global decision), else y."""
    return 2.0 * y - 1.0 if np.all((y == 0.0) | (y == 1.0)) else y


def hinge(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    return np.mean(np.maximum(1.0 - _hinge_labels(y) * p, 0.0), axis=-1)


def squared_hinge(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    return np.mean(np.maximum(1.0 - _hinge_labels(y) * p, 0.0) ** 2, axis=-1)


def categorical_hinge(y_true, y_pred, *, compat=KERAS2, dtype=None):
    y, p, *_ = _prep(y_true, y_pred, dtype)
    pos = np.sum(y * p, axis=-1)
    neg = np.max((1.0 - y) * p, axis=-1)
    return np.maximum(neg - pos + 1.0, 0.0)


# ----------------------------------------------------------------------------------------------
# §3.3 Keras-3-only losses
# ----------------------------------------------------------------------------------------------

def _axes(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


def dice(y_true, y_pred, axis=None, *, compat=KERAS3, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    ax = _axes(axis)
    inter = np.sum(y * p, axis=ax)
    return 1.0 - 2.0 * inter / (np.sum(y, axis=ax) + np.sum(p, axis=ax) + eps)


def tversky(y_true, y_pred, alpha=0.5, beta=0.5, axis=None, *, compat=KERAS3, dtype=None):
    y, p, eps, _, _ = _prep(y_true, y_pred, dtype)
    ax = _axes(axis)
    tp = np.sum(y * p, axis=ax)
    fp = np.sum((1.0 - y) * p, axis=ax)
    fn = np.sum(y * (1.0 - p), axis=ax)
    # Keras master (#23333): alpha weights false positives, beta false negatives.
    return 1.0 - tp / (tp + alpha * fp + beta * fn + eps)


def categorical_generalized_cross_entropy(y_true, y_pred, q=0.5, *, compat=KERAS3, dtype=None):
    cd = compute_dtype(y_pred, dtype)
    p = _as(y_pred, cd)
    labels = _labels(y_true, cd, compat)
    if labels.shape != p.shape[:-1]:
        raise ValueError("labels must have the shape of y_pred without its class axis")
    if np.any((labels < 0) | (labels >= p.shape[-1])):
        raise ValueError("label out of range")
    p_t = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]  # no clip, no renormalisation
    return (1.0 - p_t ** float(q)) / float(q)


def _masked_logsumexp(s: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp over the masked entries; -inf for an empty row."""
    vals = np.where(mask, s, -np.inf)
    m = np.max(vals, axis=1)
    out = np.full(s.shape[0], -np.inf)
    rows = np.isfinite(m)
    if np.any(rows):
        shifted = np.exp(vals[rows] - m[rows, None])
        out[rows] = m[rows] + np.log(np.sum(shifted, axis=1))
    return out


def circle(y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=True, gamma=80.0,
           margin=0.4, *, compat=KERAS3, dtype=None):
    cd = compute_dtype(y_pred, dtype)
    emb = _as(y_pred, cd)
    labels = _labels(y_true, cd, compat)
    ref_e = emb if ref_embeddings is None else _as(ref_embeddings, cd)
    ref_l = labels if ref_labels is None else _labels(ref_labels, cd, compat)
    if labels.ndim != 1 or emb.ndim != 2 or ref_l.ndim != 1 or ref_e.ndim != 2:
        raise ValueError("circle expects labels (B,), embeddings (B, D)")
    m, g = float(margin), float(gamma)
    dist = np.maximum(1.0 - emb @ ref_e.T, 0.0)             # cosine distances of normalised rows
    pos = labels[:, None] == ref_l[None, :]
    neg = ~pos
    if remove_diagonal:
        pos = pos & ~np.eye(len(labels), len(ref_l), dtype=bool)
    w_pos = np.maximum((m + dist) * pos, 0.0)
    w_neg = np.maximum((1.0 + m - dist) * neg, 0.0)
    s_pos = -g * w_pos * (m - dist)
    s_neg = g * w_neg * ((1.0 - m) - dist)
    return softplus(_masked_logsumexp(s_pos, pos) + _masked_logsumexp(s_neg, neg))


# ----------------------------------------------------------------------------------------------
# the two extra losses of the library's contract
# ----------------------------------------------------------------------------------------------

def contrastive_loss(y_true, y_pred, margin=1.0, *, compat=KERAS2, dtype=None):
    y, d, _, _, cd = _prep(y_true, y_pred, dtype)
    mg = float(np.asarray(margin).astype(cd))
    return np.mean(y * d * d + (1.0 - y) * np.maximum(mg - d, 0.0) ** 2, axis=-1)


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, *, compat=KERAS2, dtype=None):
    cd = compute_dtype(anchor, dtype)
    a, pos, neg = (_as(v, cd) for v in (anchor, positive, negative))
    mg = float(np.asarray(margin).astype(cd))
    order = float(p)

    def pnorm(v):
        if math.isinf(order):
            return np.max(np.abs(v), axis=-1)
        return np.sum(np.abs(v) ** order, axis=-1) ** (1.0 / order)

    return np.maximum(pnorm(a - pos) - pnorm(a - neg) + mg, 0.0)


# ----------------------------------------------------------------------------------------------
# registry of references
# ----------------------------------------------------------------------------------------------

REFERENCES: dict[str, Callable[..., np.ndarray]] = {}
CLASS_NAMES: dict[str, str] = {}

for _fn, _cls in [
    (mean_squared_error, "MeanSquaredError"),
    (mean_absolute_error, "MeanAbsoluteError"),
    (mean_absolute_percentage_error, "MeanAbsolutePercentageError"),
    (mean_squared_logarithmic_error, "MeanSquaredLogarithmicError"),
    (binary_crossentropy, "BinaryCrossentropy"),
    (binary_focal_crossentropy, "BinaryFocalCrossentropy"),
    (categorical_crossentropy, "CategoricalCrossentropy"),
    (categorical_focal_crossentropy, "CategoricalFocalCrossentropy"),
    (sparse_categorical_crossentropy, "SparseCategoricalCrossentropy"),
    (cosine_similarity, "CosineSimilarity"),
    (hinge, "Hinge"),
    (squared_hinge, "SquaredHinge"),
    (categorical_hinge, "CategoricalHinge"),
    (poisson, "Poisson"),
    (log_cosh, "LogCosh"),
    (kl_divergence, "KLDivergence"),
    (huber, "Huber"),
    (dice, "Dice"),
    (tversky, "Tversky"),
    (categorical_generalized_cross_entropy, "CategoricalGeneralizedCrossEntropy"),
    (circle, "Circle"),
    (contrastive_loss, "ContrastiveLoss"),
    (triplet_margin_loss, "TripletMarginLoss"),
]:
    REFERENCES[_fn.__name__] = _fn
    CLASS_NAMES[_fn.__name__] = _cls

CLASS_TO_FN = {cls: fn for fn, cls in CLASS_NAMES.items()}
KERAS3_ONLY = frozenset({"dice", "tversky", "categorical_generalized_cross_entropy", "circle"})
TRIPLET_INPUTS = frozenset({"triplet_margin_loss"})


def default_compat(fn_name: str) -> str:
    return KERAS3 if fn_name in KERAS3_ONLY else KERAS2


def default_reduction(fn_name: str, compat: str | None = None) -> str:
    """The class default: "sum_over_batch_size" for the Keras-3-only losses and in keras3 mode."""
    compat = compat or default_compat(fn_name)
    return "sum_over_batch_size" if (fn_name in KERAS3_ONLY or compat == KERAS3) else "auto"


# ----------------------------------------------------------------------------------------------
# §5 shape alignment
# ----------------------------------------------------------------------------------------------

def _squeeze_last(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] != 1:
        raise ValueError(f"cannot squeeze last dim of shape {x.shape}")
    return x[..., 0]


def _k3_same_rank(x1: np.ndarray, x2: np.ndarray):
    """Keras 3 ``squeeze_or_expand_to_same_rank`` (acts only on a trailing size-1 dim)."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2:
        return x1, x2
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1:
            x2 = x2[..., None]
        else:
            x1 = x1[..., 0]
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1:
            x1 = x1[..., None]
        else:
            x2 = x2[..., 0]
    return x1, x2


def align_ranks(y: Any, p: Any, compat: str = KERAS2):
    """§5.1: y_true vs y_pred rank alignment of the class pipeline (K2: tensors' rules)."""
    y, p = np.asarray(y), np.asarray(p)
    if compat == KERAS3:
        return _k3_same_rank(y, p)
    ry, rp = y.ndim, p.ndim
    if rp - ry != 1 or (rp > 0 and p.shape[-1] == 1):
        if rp - ry == 1 and p.shape[-1] == 1:
            p = p[..., 0]
        elif rp - ry == -1 and y.shape[-1] == 1:
            y = y[..., 0]
    return y, p


def _k2_align_weight(sw: np.ndarray, target: np.ndarray) -> np.ndarray:
    """tf_keras ``squeeze_or_expand_dimensions(target, None, sw)``."""
    if sw.ndim == 0:
        return sw
    if sw.ndim - target.ndim == 1:
        return _squeeze_last(sw)
    if target.ndim - sw.ndim == 1:
        return sw[..., None]
    return sw


def align_sample_weight(sw: Any, L: np.ndarray, compat: str = KERAS2):
    """§5.2: return (L, sw) after alignment (K3 may reshape L too). Broadcast errors are raised."""
    L = np.asarray(L, dtype=F64)
    sw = np.asarray(sw, dtype=F64)
    if compat == KERAS3:
        L, sw = _k3_same_rank(L, sw)
    else:
        sw = _k2_align_weight(sw, L)
    np.broadcast_shapes(L.shape, sw.shape)  # ValueError if not broadcastable
    return L, sw


# ----------------------------------------------------------------------------------------------
# §4 reductions
# ----------------------------------------------------------------------------------------------

def _divide_no_nan(num: float, den: float) -> float:
    return 0.0 if den == 0 else num / den


def reduce(L: Any, sample_weight: Any = None, reduction: Any = "auto", compat: str = KERAS2,
           mask: Any = None) -> np.ndarray:
    """Weight and reduce the per-sample loss ``L`` like a Keras ``Loss.__call__`` (§4)."""
    _check_compat(compat)
    L = np.asarray(L, dtype=F64)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=F64)
    mean_like = ("auto", "sum_over_batch_size", "mean")

    if compat == KERAS3:
        if reduction not in K3_REDUCTIONS:
            raise ValueError(f"invalid Keras 3 reduction {reduction!r}")
        if mask is not None:
            m = np.asarray(mask, dtype=F64)
            if reduction in ("mean", "sum_over_batch_size"):
                m = m * _divide_no_nan(float(m.size), float(m.sum()))  # all masked -> 0
            if sw is not None:
                m, sw = _k3_same_rank(m, sw)
                sw = sw * m
            else:
                sw = m
        if sw is not None:
            L, sw = align_sample_weight(sw, L, KERAS3)
            W = L * sw
        else:
            W = L
        if reduction in (None, "none") or W.shape in ((), (0,)):
            return np.asarray(W, dtype=F64)  # 0-d and empty 1-d pass through unreduced
        total = float(np.sum(W))
        if reduction == "sum":
            return np.asarray(total)
        if reduction == "mean_with_sample_weight" and sw is not None:
            return np.asarray(_divide_no_nan(total, float(np.sum(sw))))
        return np.asarray(_divide_no_nan(total, float(W.size)))

    # Keras 2 (the library also accepts Keras 3's names in keras2 mode)
    if reduction not in K2_REDUCTIONS + (None, "mean", "mean_with_sample_weight"):
        raise ValueError(f"invalid reduction {reduction!r}")
    if mask is not None:
        m = np.asarray(mask, dtype=F64)
        if reduction in mean_like:
            with np.errstate(divide="ignore", invalid="ignore"):
                m = m * (m.size / m.sum())  # all masked -> size/0 = inf, 0*inf = NaN (§4.1)
        sw = m if sw is None else _k2_align_weight(sw, m) * m
    if sw is None:
        sw = np.asarray(1.0)
    L, sw = align_sample_weight(sw, L, KERAS2)
    with np.errstate(invalid="ignore"):
        W = L * sw
    if reduction in ("none", None):
        return np.asarray(W, dtype=F64)
    total = float(np.sum(W))
    if reduction == "sum":
        return np.asarray(total)
    if reduction == "mean_with_sample_weight" and (sample_weight is not None or mask is not None):
        return np.asarray(_divide_no_nan(total, float(np.sum(sw))))
    return np.asarray(_divide_no_nan(total, float(W.size)))  # unweighted: the plain mean, as in Keras 3


# ----------------------------------------------------------------------------------------------
# the class pipeline
# ----------------------------------------------------------------------------------------------

def per_sample(fn_name: str, *inputs: Any, compat: str | None = None, dtype: Any = None,
               **params: Any):
    """(L, mask) of the loss *function*; mask is the Keras mask L carries (or None)."""
    compat = compat or default_compat(fn_name)
    _check_compat(compat)
    if fn_name == "sparse_categorical_crossentropy":
        return _sparse_ce_and_mask(*inputs, compat=compat, dtype=dtype, **params)
    L = np.asarray(REFERENCES[fn_name](*inputs, compat=compat, dtype=dtype, **params), dtype=F64)
    if fn_name == "circle":
        return L, L > 0  # the default reduction averages over rows with a positive loss
    return L, None


def loss_call(fn_name: str, *inputs: Any, sample_weight: Any = None, reduction: Any = "default",
              compat: str | None = None, dtype: Any = None, **params: Any) -> np.ndarray:
    """The whole ``Loss.__call__``: align ranks, compute L and its mask, weight, reduce."""
    compat = compat or default_compat(fn_name)
    _check_compat(compat)
    if dtype is None and compat == KERAS3:
        # Keras 3's Loss.__call__ converts y_true, y_pred (labels included), sample_weight and
        # the mask to the loss dtype, float32 by default (§2.2, §6): float64 and float16 inputs
        # compute in float32 and the result is float32. (A Keras 3 *function* called directly
        # keeps float64 on TensorFlow, §6, so REFERENCES[...] keeps the input's dtype.)
        dtype = np.float32
    if reduction == "default":
        reduction = default_reduction(fn_name, compat)
    if compat == KERAS3 and reduction == "auto":
        raise ValueError("Keras 3 does not accept reduction='auto'")
    if fn_name not in TRIPLET_INPUTS:
        y, p = inputs
        y, p = align_ranks(y, p, compat)
        inputs = (y, p)
        cd = compute_dtype(p, dtype)
    else:
        cd = compute_dtype(inputs[0], dtype)
    L, mask = per_sample(fn_name, *inputs, compat=compat, dtype=dtype, **params)
    if isinstance(sample_weight, (float, list, tuple)):
        # convert_to_tensor makes Python floats float32 (§6), then Keras casts the weights to the
        # loss's dtype: a weight of 0.7 on a float64 loss is float32(0.7) = 0.69999999
        sample_weight = np.asarray(sample_weight, dtype=np.float32)
    sw = None if sample_weight is None else _as(sample_weight, cd)
    return reduce(L, sw, reduction, compat, mask)

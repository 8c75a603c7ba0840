"""The array formula of each loss as Keras writes it: the baseline every benchmark compares with.

:func:`keras_formulas` takes an array namespace (``numpy``, ``jax.numpy``, ``cupy``) and returns
one function per benchmark case (see :mod:`benchmarks.cases`). Each function takes the case's
inputs and returns the ``"sum_over_batch_size"`` value, computing the way an unfused array
program does (one temporary per operation), in the order tf_keras (Keras 3 for its own losses)
writes the loss. :data:`NUMPY_FORMULAS` is the NumPy instance; ``jax.jit`` of the ``jax.numpy``
instance is the JAX peer.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

EPS = np.float32(1e-7)
ONE_MINUS_EPS = np.float32(1) - EPS
LOG2 = np.float32(math.log(2.0))
C_CLASSES_Q = 0.5  # CategoricalGeneralizedCrossEntropy's default q


def keras_formulas(xp: Any) -> dict[str, Callable[..., Any]]:
    """One formula per case, written with the array namespace ``xp``."""

    def mean(x):
        # Keras 2: per-sample loss = mean over the last axis, then "sum_over_batch_size"
        return xp.mean(xp.mean(x, axis=-1))

    def convert_binary(y):
        # tf_keras hinge/_maybe_convert_labels: {0, 1} -> {-1, 1} only if every label is 0 or 1
        is_binary = xp.all((y == 0) | (y == 1))
        return xp.where(is_binary, 2 * y - 1, y)

    def bce_probs(y, p):
        # tf_keras backend.binary_crossentropy: clip, then ε inside both logs
        q = xp.clip(p, EPS, ONE_MINUS_EPS)
        return -(y * xp.log(q + EPS) + (1 - y) * xp.log(1 - q + EPS))

    def log_softmax(x):
        m = xp.max(x, axis=-1, keepdims=True)
        s = x - m
        return s - xp.log(xp.sum(xp.exp(s), axis=-1, keepdims=True))

    def one_hot(labels, c):
        return (labels[:, None] == xp.arange(c)[None, :]).astype(np.float32)

    def logsumexp_rows(x):
        m = xp.max(x, axis=1, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        return xp.log(xp.sum(xp.exp(x - m), axis=1)) + m[:, 0]

    def mse(y, p):
        return mean(xp.square(p - y))

    def mae(y, p):
        return mean(xp.abs(p - y))

    def mape(y, p):
        return mean(100 * xp.abs((y - p) / xp.maximum(xp.abs(y), EPS)))

    def msle(y, p):
        return mean(xp.square(xp.log(xp.maximum(p, EPS) + 1) - xp.log(xp.maximum(y, EPS) + 1)))

    def huber(y, p, delta=np.float32(1.0)):
        error = p - y
        abs_error = xp.abs(error)
        half = np.float32(0.5)
        return mean(xp.where(abs_error <= delta, half * xp.square(error), delta * abs_error - half * delta * delta))

    def log_cosh(y, p):
        x = p - y
        return mean(x + xp.logaddexp(np.float32(0), -2 * x) - LOG2)  # x + softplus(-2x) - log 2

    def poisson(y, p):
        return mean(p - y * xp.log(p + EPS))

    def hinge(y, p):
        return mean(xp.maximum(1 - convert_binary(y) * p, 0))

    def squared_hinge(y, p):
        return mean(xp.square(xp.maximum(1 - convert_binary(y) * p, 0)))

    def categorical_hinge(y, p):
        pos = xp.sum(y * p, axis=-1)
        neg = xp.max((1 - y) * p, axis=-1)
        return xp.mean(xp.maximum(neg - pos + 1, 0))

    def binary_crossentropy(y, p):
        return mean(bce_probs(y, p))

    def binary_crossentropy_logits(y, x):
        # tf.nn.sigmoid_cross_entropy_with_logits
        return mean(xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x))))

    def binary_focal_crossentropy(y, p, gamma=2.0):
        p_t = y * p + (1 - y) * (1 - p)
        focal = xp.power(1 - p_t, np.float32(gamma))
        return mean(focal * bce_probs(y, p))

    def categorical_crossentropy(y, p):
        p = p / xp.sum(p, axis=-1, keepdims=True)
        p = xp.clip(p, EPS, ONE_MINUS_EPS)
        return xp.mean(-xp.sum(y * xp.log(p), axis=-1))

    def categorical_crossentropy_logits(y, x):
        return xp.mean(-xp.sum(y * log_softmax(x), axis=-1))

    def categorical_focal_crossentropy(y, p, alpha=np.float32(0.25), gamma=np.float32(2.0)):
        p = p / xp.sum(p, axis=-1, keepdims=True)
        p = xp.clip(p, EPS, ONE_MINUS_EPS)
        ce = -y * xp.log(p)
        weighting = alpha * xp.power(1 - p, gamma)
        return xp.mean(xp.sum(weighting * ce, axis=-1))

    def sparse_categorical_crossentropy(labels, p):
        # Keras 2 on TF: sparse_softmax_cross_entropy_with_logits(labels, log(clip(p)))
        logq = xp.log(xp.clip(p, EPS, ONE_MINUS_EPS))
        picked = xp.take_along_axis(logq, labels[:, None].astype(np.int32), axis=-1)[:, 0]
        return xp.mean(xp.log(xp.sum(xp.exp(logq), axis=-1)) - picked)

    def sparse_categorical_crossentropy_logits(labels, x):
        picked = xp.take_along_axis(log_softmax(x), labels[:, None].astype(np.int32), axis=-1)[:, 0]
        return xp.mean(-picked)

    def categorical_generalized_cross_entropy(labels, p, q=np.float32(C_CLASSES_Q)):
        # Keras 3: one_hot(y_true) · y_pred summed over classes, then (1 - p**q) / q
        pl = xp.sum(one_hot(labels, p.shape[-1]) * p, axis=-1)
        return xp.mean((1 - xp.power(pl, q)) / q)

    def kl_divergence(y, p):
        yc = xp.clip(y, EPS, 1)
        pc = xp.clip(p, EPS, 1)
        return xp.mean(xp.sum(yc * xp.log(yc / pc), axis=-1))

    def cosine_similarity(y, p):
        yn = y * (1 / xp.sqrt(xp.maximum(xp.sum(xp.square(y), axis=-1, keepdims=True), np.float32(1e-12))))
        pn = p * (1 / xp.sqrt(xp.maximum(xp.sum(xp.square(p), axis=-1, keepdims=True), np.float32(1e-12))))
        return xp.mean(-xp.sum(yn * pn, axis=-1))

    def dice(y, p):
        inter = xp.sum(y * p)
        union = xp.sum(y) + xp.sum(p)
        return 1 - 2 * inter / (union + EPS)

    def tversky(y, p, alpha=np.float32(0.5), beta=np.float32(0.5)):
        tp = xp.sum(y * p)
        fp = xp.sum((1 - y) * p)
        fn = xp.sum(y * (1 - p))
        return 1 - tp / (tp + alpha * fp + beta * fn + EPS)

    def contrastive_loss(y, d, margin=np.float32(1.0)):
        return mean(y * xp.square(d) + (1 - y) * xp.square(xp.maximum(margin - d, 0)))

    def triplet_margin_loss(a, pos, neg, margin=np.float32(1.0)):
        dp = xp.sqrt(xp.sum(xp.square(a - pos), axis=-1))
        dn = xp.sqrt(xp.sum(xp.square(a - neg), axis=-1))
        return xp.mean(xp.maximum(dp - dn + margin, 0))

    def circle(labels, emb, gamma=np.float32(80.0), margin=np.float32(0.4)):
        # keras.losses.circle (Keras 3), reference = the batch itself, diagonal removed
        b = emb.shape[0]
        dist = xp.maximum(1 - emb @ emb.T, 0)
        same = labels[:, None] == labels[None, :]
        pos = same & ~xp.eye(b, dtype=bool)
        neg = ~same
        posf, negf = pos.astype(np.float32), neg.astype(np.float32)
        wp = xp.maximum((margin + dist) * posf, 0)
        wn = xp.maximum((1 + margin - dist) * negf, 0)
        sp = xp.where(pos, -gamma * wp * (margin - dist), -np.inf)
        sn = xp.where(neg, gamma * wn * ((1 - margin) - dist), -np.inf)
        z = logsumexp_rows(sp) + logsumexp_rows(sn)
        L = xp.logaddexp(np.float32(0), z)
        m = (L > 0).astype(np.float32)
        return xp.sum(L * m) / xp.maximum(xp.sum(m), 1)

    return {
        "mean_squared_error": mse,
        "mean_absolute_error": mae,
        "mean_absolute_percentage_error": mape,
        "mean_squared_logarithmic_error": msle,
        "huber": huber,
        "log_cosh": log_cosh,
        "poisson": poisson,
        "hinge": hinge,
        "squared_hinge": squared_hinge,
        "categorical_hinge": categorical_hinge,
        "binary_crossentropy": binary_crossentropy,
        "binary_crossentropy_logits": binary_crossentropy_logits,
        "binary_focal_crossentropy": binary_focal_crossentropy,
        "categorical_crossentropy": categorical_crossentropy,
        "categorical_crossentropy_logits": categorical_crossentropy_logits,
        "categorical_focal_crossentropy": categorical_focal_crossentropy,
        "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
        "sparse_categorical_crossentropy_logits": sparse_categorical_crossentropy_logits,
        "categorical_generalized_cross_entropy": categorical_generalized_cross_entropy,
        "kl_divergence": kl_divergence,
        "cosine_similarity": cosine_similarity,
        "dice": dice,
        "tversky": tversky,
        "contrastive_loss": contrastive_loss,
        "triplet_margin_loss": triplet_margin_loss,
        "circle": circle,
    }


NUMPY_FORMULAS: dict[str, Callable[..., Any]] = keras_formulas(np)

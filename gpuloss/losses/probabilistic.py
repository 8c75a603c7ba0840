"""Probabilistic losses: crossentropies, focal losses, Poisson, KL divergence (Keras §3.2)."""

from __future__ import annotations

import numpy as np

from .. import _interop
from ..program import Max, Plan, RowProgram, Sum, elementwise, row_sum, term
from ..registry import loss
from ..vocab import clip, exp, log, maximum, power, sigmoid, softplus


def _check_compat(compat: str) -> str:
    if compat not in ("keras2", "keras3"):
        raise ValueError(f"compat must be 'keras2' or 'keras3', got {compat!r}")
    return compat


def _check_smoothing_gamma(label_smoothing: float, gamma: float | None = None) -> None:
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if gamma is not None and not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")


# ---- binary crossentropy and binary focal crossentropy -------------------------------------

@term
def smooth_binary(t, s):
    return t * (1 - s) + 0.5 * s


@term
def bce_from_logits(ys, x):
    # softplus(-|x|) is log1p(exp(-|x|)) exactly (the max(., 0) of a non-positive number is
    # 0), through the float32 softplus of the kernels, cut down to its range: BCE from
    # logits at 1e7 elements, see kernels/numba/fastmath32.softplus32
    return maximum(x, 0) - x * ys + softplus(-abs(x))


@term
def bce_from_probs_keras2(ys, q, epsilon):
    # Keras 2 adds ε inside both logs on top of clipping q to [ε, 1 - ε]
    return -(ys * log(q + epsilon) + (1 - ys) * log(1 - q + epsilon))


@term
def bce_from_probs_keras3(ys, q):
    return -(ys * log(q) + (1 - ys) * log(1 - q))


@term
def bce_from_probs_keras2_binary(ys, q, epsilon):
    # bce_from_probs_keras2 where ys is 0 or 1 and both log arguments are positive and finite
    # (see RowProgram.binary_twin): the same bits with one log
    return -log(ys * (q + epsilon) + (1 - ys) * (1 - q + epsilon))


@term
def bce_from_probs_keras3_binary(ys, q):
    return -log(ys * q + (1 - ys) * (1 - q))


@term
def smoothed_binary_label(t, label_smoothing):
    return smooth_binary(t, label_smoothing)


@term
def bce_logits(t, p, label_smoothing):
    return bce_from_logits(smooth_binary(t, label_smoothing), p)


@term
def bce_probs_keras2(t, p, label_smoothing, epsilon, one_minus_epsilon):
    return bce_from_probs_keras2(smooth_binary(t, label_smoothing), clip(p, epsilon, one_minus_epsilon), epsilon)


@term
def bce_probs_keras3(t, p, label_smoothing, epsilon, one_minus_epsilon):
    return bce_from_probs_keras3(smooth_binary(t, label_smoothing), clip(p, epsilon, one_minus_epsilon))


@term
def focal_factor(ys, r, gamma):
    # r is σ(logit) or the raw (unclipped) probability, as in Keras
    pt = ys * r + (1 - ys) * (1 - r)
    return power(1 - pt, gamma)


@term
def class_balance(ys, alpha):
    return ys * alpha + (1 - ys) * (1 - alpha)


@term
def bfce_logits(t, p, label_smoothing, gamma):
    ys = smooth_binary(t, label_smoothing)
    return focal_factor(ys, sigmoid(p), gamma) * bce_from_logits(ys, p)


@term
def bfce_probs_keras2(t, p, label_smoothing, gamma, epsilon, one_minus_epsilon):
    ys = smooth_binary(t, label_smoothing)
    return focal_factor(ys, p, gamma) * bce_from_probs_keras2(ys, clip(p, epsilon, one_minus_epsilon), epsilon)


@term
def bfce_probs_keras3(t, p, label_smoothing, gamma, epsilon, one_minus_epsilon):
    ys = smooth_binary(t, label_smoothing)
    return focal_factor(ys, p, gamma) * bce_from_probs_keras3(ys, clip(p, epsilon, one_minus_epsilon))


@term
def bfce_logits_balanced(t, p, label_smoothing, gamma, alpha):
    return class_balance(smooth_binary(t, label_smoothing), alpha) * bfce_logits(t, p, label_smoothing, gamma)


@term
def bfce_probs_keras2_balanced(t, p, label_smoothing, gamma, alpha, epsilon, one_minus_epsilon):
    return (class_balance(smooth_binary(t, label_smoothing), alpha)
            * bfce_probs_keras2(t, p, label_smoothing, gamma, epsilon, one_minus_epsilon))


@term
def bfce_probs_keras3_balanced(t, p, label_smoothing, gamma, alpha, epsilon, one_minus_epsilon):
    return (class_balance(smooth_binary(t, label_smoothing), alpha)
            * bfce_probs_keras3(t, p, label_smoothing, gamma, epsilon, one_minus_epsilon))


# the logs of the probability paths read q = clip(p, ε, 1 - ε) (see RowProgram.log_floor)
# with y' of 0 or 1 the reduced flat sweeps take one log instead of two (RowProgram.binary_twin)
_TWINS = {"keras2": (smoothed_binary_label, bce_from_probs_keras2, bce_from_probs_keras2_binary),
          "keras3": (smoothed_binary_label, bce_from_probs_keras3, bce_from_probs_keras3_binary)}
BCE = {"logits": elementwise(bce_logits),
       "keras2": elementwise(bce_probs_keras2, log_floor="epsilon", binary_twin=_TWINS["keras2"]),
       "keras3": elementwise(bce_probs_keras3, log_floor="epsilon", binary_twin=_TWINS["keras3"])}
BFCE = {(path, balanced): elementwise(t, log_floor=None if path == "logits" else "epsilon",
                                      binary_twin=_TWINS.get(path))
        for (path, balanced), t in {
            ("logits", False): bfce_logits, ("keras2", False): bfce_probs_keras2,
            ("keras3", False): bfce_probs_keras3, ("logits", True): bfce_logits_balanced,
            ("keras2", True): bfce_probs_keras2_balanced, ("keras3", True): bfce_probs_keras3_balanced}.items()}


@loss("BinaryCrossentropy", get_aliases=("bce", "BCE"))
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *, compat="keras2"):
    """Binary crossentropy, averaged over ``axis``.

    With ``y' = y_true·(1 - label_smoothing) + label_smoothing/2``:
    from logits ``x``: ``max(x, 0) - x·y' + log1p(exp(-|x|))`` (exact for large logits);
    from probabilities, ``q = clip(y_pred, ε, 1 - ε)`` and
    Keras 2: ``-(y'·log(q + ε) + (1 - y')·log(1 - q + ε))``,
    Keras 3 (``compat="keras3"``): the same without the extra ε.
    """
    _check_smoothing_gamma(label_smoothing)
    path = "logits" if from_logits else _check_compat(compat)
    return Plan(BCE[path], {"label_smoothing": float(label_smoothing)}, axis=axis)


@loss("BinaryFocalCrossentropy")
def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1, *, compat="keras2"):
    """Binary focal crossentropy (Lin et al.), averaged over ``axis``.

    ``r = sigmoid(x)`` from logits, else the raw ``y_pred``; ``p_t = y'·r + (1 - y')(1 - r)``;
    the element is ``(1 - p_t)**gamma`` times the binary crossentropy element (the Keras 2 or
    Keras 3 form, as for :func:`binary_crossentropy`), times ``y'·alpha + (1 - y')(1 - alpha)``
    when ``apply_class_balancing``.
    """
    _check_smoothing_gamma(label_smoothing, gamma)
    path = "logits" if from_logits else _check_compat(compat)
    params = {"label_smoothing": float(label_smoothing), "gamma": float(gamma)}
    if apply_class_balancing:
        params["alpha"] = float(alpha)
    return Plan(BFCE[path, bool(apply_class_balancing)], params, axis=axis)


# ---- categorical crossentropies -------------------------------------------------------------

@term
def smooth_categorical(t, s, n):
    return t * (1 - s) + s / n


@term
def element(p):
    return p


@term
def shifted_exp(p, m):
    return exp(p - m)


@term
def smoothed_label(t, label_smoothing, n):
    return smooth_categorical(t, label_smoothing, n)


@term
def smoothed_label_times_shifted_logit(t, p, m, label_smoothing, n):
    return smooth_categorical(t, label_smoothing, n) * (p - m)


@term
def cce_logits_finish(e, ys, yx):
    # -Σ y'·(x - m - log Σexp(x - m)); shifting by the row max keeps it exact for large logits
    return ys * log(e) - yx


@term
def cce_prob_element(t, p, sp, label_smoothing, n, epsilon, one_minus_epsilon):
    # normalise by the row sum first, then clip (Keras's order)
    return -smooth_categorical(t, label_smoothing, n) * log(clip(p / sp, epsilon, one_minus_epsilon))


@term
def focal_element(ys, q, alpha, gamma):
    return alpha * power(1 - q, gamma) * (-ys * log(q))


@term
def cfce_prob_element(t, p, sp, label_smoothing, label_classes, alpha, gamma, epsilon, one_minus_epsilon):
    q = clip(p / sp, epsilon, one_minus_epsilon)
    return focal_element(smooth_categorical(t, label_smoothing, label_classes), q, alpha, gamma)


@term
def cfce_logit_element(t, p, m, e, label_smoothing, label_classes, alpha, gamma, epsilon, one_minus_epsilon):
    q = clip(exp(p - m) / e, epsilon, one_minus_epsilon)
    return focal_element(smooth_categorical(t, label_smoothing, label_classes), q, alpha, gamma)


@term
def sum_finish(s):
    return s


@term
def label_classes_smoothed(t, label_smoothing, label_classes):
    return smooth_categorical(t, label_smoothing, label_classes)


@term
def finite_nonzero(s):
    # s - s is NaN for ±inf and NaN
    return (s - s == 0) & (s != 0)


# the one-hot twins' conditions (RowProgram.onehot_twin): a zero label's term is ±0. With the
# row's sum sp (in float64, rounded to the compute dtype for this test) finite, every p of the
# row is finite, and with sp not 0 no p / sp is 0/0; then q = clip(p / sp, ε, 1 - ε) is in
# [ε, 1 - ε] (ε > 0: the twin needs log_floor in range) and -0·log q is ±0. From logits the same
# holds of the sum e of exp(x - m), each in [0, 1] where e is finite. The focal factor
# α·(1 - q)**γ is finite where α is (γ >= 0 is checked)
@term
def cce_zero_ok(sp):
    return finite_nonzero(sp)


@term
def cfce_prob_zero_ok(sp, alpha):
    return finite_nonzero(sp) & (alpha - alpha == 0)


@term
def cfce_logit_zero_ok(e, alpha):
    return finite_nonzero(e) & (alpha - alpha == 0)


# with one-hot labels the tile and row kernels take one log per row (RowProgram.onehot_twin)
CCE_PROBS = RowProgram("cce_probs", ("t", "p"), ((("sp", Sum(element)),), (("s", Sum(cce_prob_element)),)), row_sum,
                       log_floor="epsilon", onehot_twin=(smoothed_label, cce_zero_ok))
CCE_LOGITS = RowProgram(
    "cce_logits", ("t", "p"),
    ((("m", Max(element)),),
     (("e", Sum(shifted_exp)), ("ys", Sum(smoothed_label)), ("yx", Sum(smoothed_label_times_shifted_logit)))),
    cce_logits_finish)
CFCE_PROBS = RowProgram("cfce_probs", ("t", "p"), ((("sp", Sum(element)),), (("s", Sum(cfce_prob_element)),)),
                        row_sum, log_floor="epsilon", onehot_twin=(label_classes_smoothed, cfce_prob_zero_ok))
CFCE_LOGITS = RowProgram("cfce_logits", ("t", "p"),
                         ((("m", Max(element)),), (("e", Sum(shifted_exp)),), (("s", Sum(cfce_logit_element)),)),
                         row_sum, log_floor="epsilon", onehot_twin=(label_classes_smoothed, cfce_logit_zero_ok))


@loss("CategoricalCrossentropy")
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, *, compat="keras2"):
    """Categorical crossentropy, summed over the class ``axis``.

    ``y' = y_true·(1 - label_smoothing) + label_smoothing/C``. From logits
    ``L = -Σ y'·log_softmax(x)``; from probabilities ``q = clip(p / Σp, ε, 1 - ε)`` (normalised
    first, then clipped) and ``L = -Σ y'·log q``. y_true and y_pred must have the same shape.
    """
    _check_compat(compat)
    _check_smoothing_gamma(label_smoothing)
    return Plan(CCE_LOGITS if from_logits else CCE_PROBS, {"label_smoothing": float(label_smoothing)},
                layout="strict", axis=axis)


@loss("CategoricalFocalCrossentropy")
def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1, *, compat="keras2"):
    """Categorical focal crossentropy, summed over the class ``axis``.

    ``y' = y_true·(1 - label_smoothing) + label_smoothing/K`` with K the size of y_true's last
    axis (as Keras does, whatever ``axis`` is); ``q = softmax(x)`` from logits, else ``y_pred``;
    ``q = clip(q / Σq, ε, 1 - ε)``;
    ``L = Σ alpha·(1 - q)**gamma·(-y'·log q)``. ``alpha`` is a scalar or one weight per class.
    """
    _check_compat(compat)
    _check_smoothing_gamma(label_smoothing, gamma)
    a = np.asarray(_interop.host_array(alpha), dtype=np.float64)  # a list, or an array of any library
    # Keras smooths with the size of y_true's *last* axis, even when the class axis is another
    label_classes = np.shape(y_true)[-1] if np.ndim(y_true) else 1
    return Plan(CFCE_LOGITS if from_logits else CFCE_PROBS,
                {"label_smoothing": float(label_smoothing), "gamma": float(gamma), "label_classes": label_classes,
                 "alpha": float(a) if a.ndim == 0 else a.reshape(-1)},
                layout="strict", axis=axis)


# ---- sparse labels ----------------------------------------------------------------------------

@term
def clipped(p, epsilon, one_minus_epsilon):
    return clip(p, epsilon, one_minus_epsilon)


@term
def scce_logits_finish(m, e, p_label):
    return log(e) - (p_label - m)


@term
def scce_probs_finish(sq, p_label, epsilon, one_minus_epsilon):
    # Keras 2 / Keras 3 on TF: log-softmax of log(clip(p)), i.e. renormalised after clipping
    return log(sq) - log(clip(p_label, epsilon, one_minus_epsilon))


@term
def gce_finish(p_label, q):
    return (1 - power(p_label, q)) / q


SCCE_LOGITS = RowProgram("scce_logits", ("p",), ((("m", Max(element)),), (("e", Sum(shifted_exp)),)),
                         scce_logits_finish, sparse=True)
SCCE_PROBS = RowProgram("scce_probs", ("p",), ((("sq", Sum(clipped)),),), scce_probs_finish, sparse=True)
GCE = RowProgram("gce", ("p",), (), gce_finish, sparse=True)


@loss("SparseCategoricalCrossentropy",
      class_params=("from_logits", "ignore_class", "reduction", "name"))
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, axis=-1, ignore_class=None,
                                    *, compat="keras2"):
    """Crossentropy with integer class ids as labels.

    From logits ``L = logsumexp(x) - x[label]``; from probabilities (Keras 2 and Keras 3 on
    TensorFlow) ``L = -log(q[label] / Σq)`` with ``q = clip(p, ε, 1 - ε)``. Float labels are
    truncated toward zero. ``ignore_class`` entries give 0 and are left out of the
    "sum_over_batch_size" denominator. A label outside ``[0, C)`` raises ``ValueError``.
    """
    _check_compat(compat)
    return Plan(SCCE_LOGITS if from_logits else SCCE_PROBS, layout="sparse", axis=axis,
                ignore_class=None if ignore_class is None else int(ignore_class))


@loss("CategoricalGeneralizedCrossEntropy", keras3_only=True, name="categorical_generalized_cross_entropy",
      class_params=("q", "reduction", "name"))
def categorical_generalized_cross_entropy(y_true, y_pred, q=0.5, *, compat="keras3"):
    """Generalized crossentropy (Zhang & Sabuncu 2018) for noisy labels.

    y_true holds integer labels of shape (B,), y_pred probabilities (B, C);
    ``L = (1 - p[label]**q) / q`` with ``0 < q < 1`` (q → 0 tends to crossentropy, q = 1 is MAE).
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in the open interval (0, 1), got {q!r}")
    return Plan(GCE, {"q": float(q)}, layout="sparse_strict")


# ---- Poisson and KL divergence ---------------------------------------------------------------

@term
def poisson_term(t, p, epsilon):
    return p - t * log(p + epsilon)


@term
def kl_term(t, p, epsilon):
    tc = clip(t, epsilon, 1)
    return tc * log(tc / clip(p, epsilon, 1))


POISSON = elementwise(poisson_term)
KLD = elementwise(kl_term, reduce="sum", log_floor="epsilon")


@loss("Poisson")
def poisson(y_true, y_pred, *, compat="keras2"):
    """``L = mean(y_pred - y_true·log(y_pred + ε), axis=-1)`` (no clipping: y_pred < -ε gives NaN)."""
    return Plan(POISSON)


@loss("KLDivergence", aliases=("kld", "KLD", "kullback_leibler_divergence"))
def kl_divergence(y_true, y_pred, *, compat="keras2"):
    """``L = Σ y·log(y / p)`` over the last axis, both clipped to ``[ε, 1]``."""
    return Plan(KLD)

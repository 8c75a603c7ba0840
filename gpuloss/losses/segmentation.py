"""Segmentation losses of Keras 3: Dice and Tversky (Keras §3.3)."""

from __future__ import annotations

from ..program import Plan, RowProgram, Sum, term
from ..registry import loss
from .similarity import dot


@term
def true_value(t):
    return t


@term
def pred_value(p):
    return p


@term
def false_positive(t, p):
    return (1 - t) * p


@term
def false_negative(t, p):
    return t * (1 - p)


@term
def dice_finish(tp, ts, ps, epsilon):
    return 1 - 2 * tp / (ts + ps + epsilon)


@term
def tversky_finish(tp, fp, fn, alpha, beta, epsilon):
    return 1 - tp / (tp + alpha * fp + beta * fn + epsilon)


DICE = RowProgram("dice", ("t", "p"), ((("tp", Sum(dot)), ("ts", Sum(true_value)), ("ps", Sum(pred_value))),),
                  dice_finish)
TVERSKY = RowProgram("tversky", ("t", "p"),
                     ((("tp", Sum(dot)), ("fp", Sum(false_positive)), ("fn", Sum(false_negative))),),
                     tversky_finish)


@loss("Dice", keras3_only=True, class_params=("reduction", "name", "axis"))
def dice(y_true, y_pred, axis=None, *, compat="keras3"):
    """Dice loss ``L = 1 - 2·Σ(y·p) / (Σy + Σp + ε)``, summed over ``axis`` (an int, a tuple, or
    None for every axis including the batch, which gives one scalar)."""
    return Plan(DICE, layout="axes", axis=axis)


@loss("Tversky", keras3_only=True, class_params=("alpha", "beta", "reduction", "name", "axis"))
def tversky(y_true, y_pred, alpha=0.5, beta=0.5, axis=None, *, compat="keras3"):
    """Tversky loss ``L = 1 - TP / (TP + alpha·FP + beta·FN + ε)`` with ``TP = Σ y·p``,
    ``FP = Σ (1 - y)·p``, ``FN = Σ y·(1 - p)`` over ``axis`` (None = all axes).

    alpha weights false positives and beta false negatives, as on Keras master (Keras 3.15.1
    and earlier swap them; equal when alpha == beta, where Tversky equals Dice).
    """
    return Plan(TVERSKY, {"alpha": float(alpha), "beta": float(beta)}, layout="axes", axis=axis)

"""Hinge losses (Keras §3.2, end)."""

from __future__ import annotations

from .. import _backend
from ..program import Guessable, Max, Plan, RowProgram, Sum, elementwise, term
from ..registry import loss
from ..vocab import maximum


@term
def converted_label(t, label_scale, label_shift):
    return t * label_scale + label_shift


@term
def hinge_term(t, p, label_scale, label_shift):
    return maximum(1 - converted_label(t, label_scale, label_shift) * p, 0)


@term
def squared_hinge_term(t, p, label_scale, label_shift):
    h = hinge_term(t, p, label_scale, label_shift)
    return h * h


@term
def label_times_pred(t, p):
    return t * p


@term
def negative_times_pred(t, p):
    return (1 - t) * p


@term
def categorical_hinge_finish(positive, negative):
    return maximum(negative - positive + 1, 0)


HINGE = elementwise(hinge_term, check="binary_labels")
SQUARED_HINGE = elementwise(squared_hinge_term, check="binary_labels")
CATEGORICAL_HINGE = RowProgram("categorical_hinge", ("t", "p"),
                               ((("positive", Sum(label_times_pred)), ("negative", Max(negative_times_pred))),),
                               categorical_hinge_finish)


_SIGNED = {"label_scale": 2.0, "label_shift": -1.0}
_PLAIN = {"label_scale": 1.0, "label_shift": 0.0}


def _all_binary(arrays):
    """Keras converts {0, 1} labels to {-1, 1} only if *every* label of the batch is 0 or 1."""
    return dict(_SIGNED if _backend.all_zero_or_one(arrays["t"]) else _PLAIN)


#: labels the guess looks at (a non-binary one among them settles the rule: ±1 labels)
_GUESS_ELEMENTS = 1 << 13


def _guess_binary(arrays):
    t = arrays["t"]
    head = t[:max(1, _GUESS_ELEMENTS // max(1, t.shape[1]))]
    if not _backend.all_zero_or_one(head):
        return dict(_PLAIN), None
    return dict(_SIGNED), dict(_PLAIN)


_binary_to_signed = Guessable(_all_binary, _guess_binary)


@loss("Hinge")
def hinge(y_true, y_pred, *, compat="keras2"):
    """``L = mean(max(1 - y'·y_pred, 0), axis=-1)`` where ``y' = 2·y_true - 1`` if every label of
    the batch is 0 or 1, else ``y_true`` unchanged (one decision for the whole batch)."""
    return Plan(HINGE, prepare=_binary_to_signed)


@loss("SquaredHinge")
def squared_hinge(y_true, y_pred, *, compat="keras2"):
    """``L = mean(max(1 - y'·y_pred, 0)**2, axis=-1)`` with ``y'`` as in :func:`hinge`."""
    return Plan(SQUARED_HINGE, prepare=_binary_to_signed)


@loss("CategoricalHinge")
def categorical_hinge(y_true, y_pred, *, compat="keras2"):
    """``L = max(max((1 - y_true)·y_pred) - Σ y_true·y_pred + 1, 0)`` over the last axis."""
    return Plan(CATEGORICAL_HINGE)

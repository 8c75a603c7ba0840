"""Cosine similarity (Keras §3.1)."""

from __future__ import annotations

from ..program import Plan, RowProgram, Sum, term
from ..registry import loss
from ..vocab import maximum, rsqrt


@term
def dot(t, p):
    return t * p


@term
def true_squared(t):
    return t * t


@term
def pred_squared(p):
    return p * p


@term
def cosine_finish(tp, tt, pp, norm_floor):
    # v / max(‖v‖, c) for both vectors, written with rsqrt as TensorFlow's l2_normalize
    return -tp * rsqrt(maximum(tt, norm_floor)) * rsqrt(maximum(pp, norm_floor))


COSINE = RowProgram("cosine_similarity", ("t", "p"),
                    ((("tp", Sum(dot)), ("tt", Sum(true_squared)), ("pp", Sum(pred_squared))),),
                    cosine_finish)


@loss("CosineSimilarity", k3_function_aligns=True)
def cosine_similarity(y_true, y_pred, axis=-1, *, compat="keras2"):
    """Negative cosine similarity along ``axis``: ``L = -Σ n(y_true)·n(y_pred)``,
    ``n(v) = v / max(‖v‖₂, c)``; c = 1e-6 in Keras 2, ε = 1e-7 with ``compat="keras3"``.
    Identical directions give -1, opposite +1, orthogonal or zero vectors 0."""
    floor = 1e-12 if compat == "keras2" else 1e-14
    return Plan(COSINE, {"norm_floor": floor}, axis=axis)

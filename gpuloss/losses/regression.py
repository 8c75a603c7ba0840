"""Regression losses: elementwise terms averaged over the last axis (Keras §3.1)."""

from __future__ import annotations

from ..program import Plan, elementwise, term
from ..registry import loss
from ..vocab import log, maximum, softplus


@term
def squared_error(t, p):
    d = p - t
    return d * d


@term
def absolute_error(t, p):
    return abs(p - t)


@term
def absolute_percentage_error(t, p, epsilon):
    return 100 * abs(t - p) / maximum(abs(t), epsilon)


@term
def squared_log_error(t, p, epsilon):
    d = log(maximum(p, epsilon) + 1) - log(maximum(t, epsilon) + 1)
    return d * d


@term
def huber_term(t, p, delta):
    e = p - t
    a = abs(e)
    return 0.5 * e * e if a <= delta else delta * a - 0.5 * delta * delta


@term
def log_cosh_term(t, p):
    x = p - t
    return x + softplus(-2 * x) - 0.6931471805599453


MSE = elementwise(squared_error)
MAE = elementwise(absolute_error)
MAPE = elementwise(absolute_percentage_error)
MSLE = elementwise(squared_log_error, log_floor="epsilon")  # its logs read max(x, ε) + 1 >= 1
HUBER = elementwise(huber_term)
LOG_COSH = elementwise(log_cosh_term)


@loss("MeanSquaredError", aliases=("mse", "MSE"), k3_function_aligns=True)
def mean_squared_error(y_true, y_pred, *, compat="keras2"):
    """Mean squared error over the last axis: ``L = mean((y_pred - y_true)**2, axis=-1)``."""
    return Plan(MSE)


@loss("MeanAbsoluteError", aliases=("mae", "MAE"), k3_function_aligns=True)
def mean_absolute_error(y_true, y_pred, *, compat="keras2"):
    """Mean absolute error over the last axis: ``L = mean(|y_pred - y_true|, axis=-1)``."""
    return Plan(MAE)


@loss("MeanAbsolutePercentageError", aliases=("mape", "MAPE"), k3_function_aligns=True)
def mean_absolute_percentage_error(y_true, y_pred, *, compat="keras2"):
    """``L = 100 * mean(|y_true - y_pred| / max(|y_true|, ε), axis=-1)``; y_true = 0 divides by ε."""
    return Plan(MAPE)


@loss("MeanSquaredLogarithmicError", aliases=("msle", "MSLE"), k3_function_aligns=True)
def mean_squared_logarithmic_error(y_true, y_pred, *, compat="keras2"):
    """``L = mean((log(max(y_pred, ε) + 1) - log(max(y_true, ε) + 1))**2, axis=-1)``.

    Values at or below ε (negatives included) count as ε.
    """
    return Plan(MSLE)


@loss("Huber", name="huber_loss", get_aliases=("huber_loss",), k3_function_aligns=True)
def huber(y_true, y_pred, delta=1.0, *, compat="keras2"):
    """Huber loss: with ``e = y_pred - y_true``, ``½e²`` where ``|e| <= delta`` and
    ``delta·|e| - ½delta²`` elsewhere, averaged over the last axis.

    Keras 2 always computes Huber in float32; gpuloss keeps float64 inputs in float64
    (the values agree to float32 precision).
    """
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta!r}")
    return Plan(HUBER, {"delta": float(delta)})


@loss("LogCosh", name="log_cosh", aliases=("logcosh",), k3_function_aligns=True)
def log_cosh(y_true, y_pred, *, compat="keras2"):
    """``L = mean(log(cosh(y_pred - y_true)), axis=-1)`` in the overflow-free form
    ``x + softplus(-2x) - log 2``."""
    return Plan(LOG_COSH)

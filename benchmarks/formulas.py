"""The NumPy formula of each loss as Keras writes it: the baseline every benchmark compares with.

Each entry takes (y_true, y_pred) NumPy arrays and returns the "sum_over_batch_size" value,
computing the way an unfused array program does (one temporary per operation).
"""

from __future__ import annotations

import numpy as np

EPS = np.float32(1e-7)


def _mean(x):
    return np.mean(np.mean(x, axis=-1))


NUMPY_FORMULAS = {
    "mean_squared_error": lambda y, p: _mean(np.square(p - y)),
    "mean_absolute_error": lambda y, p: _mean(np.abs(p - y)),
    "mean_absolute_percentage_error": lambda y, p: _mean(100 * np.abs((y - p) / np.maximum(np.abs(y), EPS))),
    "mean_squared_logarithmic_error": lambda y, p: _mean(np.square(np.log(np.maximum(p, EPS) + 1)
                                                                   - np.log(np.maximum(y, EPS) + 1))),
    "huber": lambda y, p: _mean(np.where(np.abs(p - y) <= 1, 0.5 * np.square(p - y), np.abs(p - y) - 0.5)),
    "log_cosh": lambda y, p: _mean((p - y) + np.logaddexp(0, -2 * (p - y)) - np.log(np.float32(2))),
    "poisson": lambda y, p: _mean(p - y * np.log(p + EPS)),
    "hinge": lambda y, p: _mean(np.maximum(1 - (2 * y - 1) * p, 0)),
    "squared_hinge": lambda y, p: _mean(np.square(np.maximum(1 - (2 * y - 1) * p, 0))),
    "binary_crossentropy": lambda y, p: _mean(-(y * np.log(np.clip(p, EPS, 1 - EPS) + EPS)
                                                + (1 - y) * np.log(1 - np.clip(p, EPS, 1 - EPS) + EPS))),
    "binary_crossentropy_logits": lambda y, x: _mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))),
    "kl_divergence": lambda y, p: np.mean(np.sum(np.clip(y, EPS, 1) * np.log(np.clip(y, EPS, 1)
                                                                           / np.clip(p, EPS, 1)), axis=-1)),
    "contrastive_loss": lambda y, p: _mean(y * np.square(p) + (1 - y) * np.square(np.maximum(1 - p, 0))),
}

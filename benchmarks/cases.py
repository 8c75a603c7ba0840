"""Benchmark cases: one or more per loss of the registry, with generated float32 inputs.

A case is a loss of :data:`gpuloss.registry.LOSSES` with options (``from_logits=True`` gives
a second case for the crossentropies), the kind of data it is called on, and its category for
the performance targets:

``simple``  MSE, MAE, MAPE, Huber and the hinge family: a few flops per element, so they
            should run at the machine's streaming-read speed;
``logexp``  losses with a log, exp or power per element (crossentropies, focal losses,
            Poisson, KL, MSLE, log-cosh, generalized CE): compute-bound on 2 cores;
``other``   cosine similarity, Dice, Tversky, contrastive, triplet and Circle (no target).

The size ``n`` of a case is the number of float32 elements of ``y_pred`` (each of the three
inputs of the triplet loss); class-axis losses use ``C = 10`` classes, so ``n // 10`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "CASES", "KEY_CASES", "registry_cases", "make_inputs", "select_cases", "CLASSES"]

CLASSES = 10
EMBED = 16
f32 = np.float32


@dataclass(frozen=True)
class Case:
    name: str                      # key of the case (and of its formula in benchmarks.formulas)
    fn_name: str                   # the loss in gpuloss.registry.LOSSES
    data: str                      # kind of generated inputs, see make_inputs
    category: str                  # "simple", "logexp" or "other"
    kwargs: dict = field(default_factory=dict)
    max_n: int | None = None       # quadratic losses stop here
    note: str = ""

    @property
    def label(self) -> str:
        from gpuloss.registry import LOSSES

        cls = LOSSES[self.fn_name].class_name
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{cls}({args})"


_TABLE = [
    Case("mean_squared_error", "mean_squared_error", "regression", "simple"),
    Case("mean_absolute_error", "mean_absolute_error", "regression", "simple"),
    Case("mean_absolute_percentage_error", "mean_absolute_percentage_error", "regression", "simple"),
    Case("huber", "huber", "regression", "simple"),
    Case("hinge", "hinge", "binary_margin", "simple"),
    Case("squared_hinge", "squared_hinge", "binary_margin", "simple"),
    Case("categorical_hinge", "categorical_hinge", "onehot_probs", "simple"),
    Case("mean_squared_logarithmic_error", "mean_squared_logarithmic_error", "regression", "logexp"),
    Case("log_cosh", "log_cosh", "regression", "logexp"),
    Case("poisson", "poisson", "regression", "logexp"),
    Case("binary_crossentropy", "binary_crossentropy", "binary_probs", "logexp"),
    Case("binary_crossentropy_logits", "binary_crossentropy", "binary_logits", "logexp", {"from_logits": True}),
    Case("binary_focal_crossentropy", "binary_focal_crossentropy", "binary_probs", "logexp"),
    Case("categorical_crossentropy", "categorical_crossentropy", "onehot_probs", "logexp"),
    Case("categorical_crossentropy_logits", "categorical_crossentropy", "onehot_logits", "logexp",
         {"from_logits": True}),
    Case("categorical_focal_crossentropy", "categorical_focal_crossentropy", "onehot_probs", "logexp"),
    Case("sparse_categorical_crossentropy", "sparse_categorical_crossentropy", "sparse_probs", "logexp"),
    Case("sparse_categorical_crossentropy_logits", "sparse_categorical_crossentropy", "sparse_logits", "logexp",
         {"from_logits": True}),
    Case("categorical_generalized_cross_entropy", "categorical_generalized_cross_entropy", "sparse_probs",
         "logexp"),
    Case("kl_divergence", "kl_divergence", "distributions", "logexp"),
    Case("cosine_similarity", "cosine_similarity", "vectors", "other"),
    Case("dice", "dice", "masks", "other"),
    Case("tversky", "tversky", "masks", "other"),
    Case("contrastive_loss", "contrastive_loss", "pair_distance", "other"),
    Case("triplet_margin_loss", "triplet_margin_loss", "triplet", "other"),
    Case("circle", "circle", "circle", "other", max_n=100_000,
         note="pairwise over the batch (B² work): sizes up to 1e5 elements (B = 6250 embeddings of 16)"),
]

#: The cases also timed at 10⁸ elements (the full run's largest size), chosen to cover the
#: categories: two simple losses and three log/exp ones, one of them a class-axis loss.
KEY_CASES = ("mean_squared_error", "huber", "binary_crossentropy", "binary_crossentropy_logits",
             "categorical_crossentropy_logits")


def registry_cases() -> list[Case]:
    """Every case of the table, plus a default one for any registered loss the table lacks
    (so a new loss is benchmarked, on regression data, as soon as it is registered)."""
    from gpuloss.registry import LOSSES

    cases = [c for c in _TABLE if c.fn_name in LOSSES]
    covered = {c.fn_name for c in cases}
    for name, spec in LOSSES.items():
        if name not in covered:
            data = "triplet" if len(spec.inputs) == 3 else "regression"
            cases.append(Case(name, name, data, "other", note="no case in benchmarks/cases.py: default data"))
    return cases


CASES = {c.name: c for c in _TABLE}


def select_cases(names: list[str] | None) -> list[Case]:
    """Cases by case name or by registry name (a registry name selects all its cases)."""
    all_cases = registry_cases()
    if not names:
        return all_cases
    out = []
    for n in names:
        hit = [c for c in all_cases if c.name == n] or [c for c in all_cases if c.fn_name == n]
        if not hit:
            raise SystemExit(f"unknown loss or case {n!r}; known: {', '.join(c.name for c in all_cases)}")
        out += [c for c in hit if c not in out]
    return out


def _probs(rng, rows: int, c: int) -> np.ndarray:
    p = rng.random((rows, c), dtype=f32) + f32(0.05)
    p /= p.sum(axis=1, keepdims=True)
    return p


def _binary(rng, n: int) -> np.ndarray:
    return (rng.random((n, 1), dtype=f32) < 0.5).astype(f32)


def make_inputs(case: Case, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The case's inputs with ``n`` y_pred elements (C-contiguous float32; integer labels
    are int64). Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    kind = case.data
    rows = max(1, n // CLASSES)
    if kind == "regression":
        y = rng.random((n, 1), dtype=f32) * f32(4) + f32(0.1)
        p = np.abs(y + rng.standard_normal((n, 1), dtype=f32)) + f32(0.01)
        return y, p
    if kind == "binary_probs":
        return _binary(rng, n), rng.random((n, 1), dtype=f32) * f32(0.98) + f32(0.01)
    if kind == "binary_logits":
        return _binary(rng, n), rng.standard_normal((n, 1), dtype=f32) * f32(3)
    if kind == "binary_margin":
        return _binary(rng, n), rng.standard_normal((n, 1), dtype=f32)
    if kind == "pair_distance":
        return _binary(rng, n), np.abs(rng.standard_normal((n, 1), dtype=f32))
    if kind in ("onehot_probs", "onehot_logits"):
        labels = rng.integers(0, CLASSES, size=rows)
        y = np.zeros((rows, CLASSES), f32)
        y[np.arange(rows), labels] = 1
        p = _probs(rng, rows, CLASSES) if kind == "onehot_probs" else \
            rng.standard_normal((rows, CLASSES), dtype=f32) * f32(3)
        return y, p
    if kind in ("sparse_probs", "sparse_logits"):
        labels = rng.integers(0, CLASSES, size=rows)
        p = _probs(rng, rows, CLASSES) if kind == "sparse_probs" else \
            rng.standard_normal((rows, CLASSES), dtype=f32) * f32(3)
        return labels, p
    if kind == "distributions":
        return _probs(rng, rows, CLASSES), _probs(rng, rows, CLASSES)
    if kind == "vectors":
        y = rng.standard_normal((rows, CLASSES), dtype=f32)
        return y, y + f32(0.5) * rng.standard_normal((rows, CLASSES), dtype=f32)
    if kind == "masks":
        y = (rng.random((rows, CLASSES), dtype=f32) < 0.3).astype(f32)
        p = np.clip(y + f32(0.2) * rng.standard_normal((rows, CLASSES), dtype=f32), 0, 1)
        return y, p
    if kind == "triplet":
        r = max(1, n // EMBED)
        a = rng.standard_normal((r, EMBED), dtype=f32)
        return (a, a + f32(0.3) * rng.standard_normal((r, EMBED), dtype=f32),
                rng.standard_normal((r, EMBED), dtype=f32))
    if kind == "circle":
        b = max(2, n // EMBED)
        emb = rng.standard_normal((b, EMBED), dtype=f32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return rng.integers(0, 8, size=b), emb
    raise ValueError(f"unknown data kind {kind!r}")


def elements(inputs: tuple[np.ndarray, ...]) -> int:
    """The size of a call: y_pred's elements (the second input; the anchor's for triplets)."""
    return int(inputs[1].size if len(inputs) > 1 else inputs[0].size)


def input_bytes(inputs: tuple[Any, ...]) -> int:
    return int(sum(a.nbytes for a in inputs))

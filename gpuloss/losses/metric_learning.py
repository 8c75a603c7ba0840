"""Metric-learning losses: contrastive, triplet margin, and Keras 3's Circle loss."""

from __future__ import annotations

import sys

import numpy as np

from ..program import Plan, RowProgram, Sum, elementwise, term
from ..registry import loss
from ..vocab import maximum, power


@term
def contrastive_term(t, p, margin):
    h = maximum(margin - p, 0)
    return t * p * p + (1 - t) * h * h


@term
def distance_to_positive(a, pos, norm):
    d = abs(a - pos)
    return d * d if norm == 2 else power(d, norm)


@term
def distance_to_negative(a, neg, norm):
    d = abs(a - neg)
    return d * d if norm == 2 else power(d, norm)


@term
def triplet_finish(dp, dn, margin, norm):
    return maximum(power(dp, 1 / norm) - power(dn, 1 / norm) + margin, 0)


CONTRASTIVE = elementwise(contrastive_term)
TRIPLET = RowProgram("triplet_margin", ("a", "pos", "neg"),
                     ((("dp", Sum(distance_to_positive)), ("dn", Sum(distance_to_negative))),), triplet_finish)


@loss("ContrastiveLoss", name="contrastive_loss")
def contrastive_loss(y_true, y_pred, margin=1.0, *, compat="keras2"):
    """Contrastive loss (Hadsell et al. 2006) for pairs: y_pred is the distance ``d`` between the
    two embeddings of a pair and y_true is 1 for similar pairs, 0 for dissimilar ones;
    ``L = mean(y·d² + (1 - y)·max(margin - d, 0)², axis=-1)``."""
    return Plan(CONTRASTIVE, {"margin": float(margin)})


@loss("TripletMarginLoss", name="triplet_margin_loss")
def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, *, compat="keras2"):
    """Triplet margin loss (Schroff et al. 2015): for each sample
    ``L = max(‖a - pos‖_p - ‖a - neg‖_p + margin, 0)`` with the p-norm over the last axis.
    Called with three embedding arrays of the same shape; the class averages over the batch."""
    if not p > 0:
        raise ValueError(f"p must be positive, got {p!r}")
    return Plan(TRIPLET, {"margin": float(margin), "norm": float(p)}, layout="triplet")


def _array_module(x):
    """CuPy for CuPy arrays (never imported here: it is in sys.modules if x is one), else NumPy."""
    cupy = sys.modules.get("cupy")
    return cupy if cupy is not None and isinstance(x, cupy.ndarray) else np


def _circle_rows(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal, gamma, margin, dtype):
    """Circle loss rows in float64. NumPy arrays run a fused Numba kernel over the pairs; CuPy
    arrays the array code below, blocked over rows so memory stays O(block·B), whose pairwise
    similarities are a matrix product (cuBLAS) followed by CuPy's elementwise kernels."""
    xp = _array_module(y_pred)
    if xp is np:
        return _circle_rows_host(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal, gamma, margin, dtype)
    emb = xp.asarray(y_pred, dtype=xp.float64)
    labels = xp.asarray(y_true).astype(xp.int64)
    ref = emb if ref_embeddings is None else xp.asarray(ref_embeddings, dtype=xp.float64)
    ref_lab = labels if ref_labels is None else xp.asarray(ref_labels).astype(xp.int64)
    _check_circle_shapes(emb, labels, ref, ref_lab)
    out = xp.empty(emb.shape[0], dtype=xp.float64)
    block = 1024
    for r0 in range(0, emb.shape[0], block):
        e = emb[r0:r0 + block]
        dist = xp.maximum(1.0 - e @ ref.T, 0.0)
        pos = labels[r0:r0 + block, None] == ref_lab[None, :]
        neg = ~pos
        if remove_diagonal:
            idx = xp.arange(r0, r0 + e.shape[0])
            inside = idx < ref.shape[0]
            pos[xp.nonzero(inside)[0], idx[inside]] = False
        wp = xp.maximum((margin + dist) * pos, 0.0)
        wn = xp.maximum((1.0 + margin - dist) * neg, 0.0)
        sp = xp.where(pos, -gamma * wp * (margin - dist), -xp.inf)
        sn = xp.where(neg, gamma * wn * ((1.0 - margin) - dist), -xp.inf)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
            z = _logsumexp(xp, sp) + _logsumexp(xp, sn)
            rows = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
        out[r0:r0 + block] = xp.where(xp.isneginf(z), 0.0, rows)
    return out.astype(dtype), out > 0


_F32, _F64, _I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)
_circle_kernel = None  # kernels.numba.pairwise.circle_rows, imported on first use (it imports Numba)


def _circle_rows_host(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal, gamma, margin, dtype):
    """NumPy inputs: the fused kernel of kernels/numba/pairwise.py, which reads float32 or
    float64 embeddings as they are (in float64) and int64 labels; other dtypes are converted
    once. A class call on 2 embeddings (2-core EPYC, data in cache, alternating processes, best
    of 7) takes 11.0-11.5 µs; it took 12.8-13.0 with the embeddings converted, the references
    transposed and the rows cast and masked by NumPy, and 15.2 through the array module's
    asarray and astype."""
    global _circle_kernel
    if _circle_kernel is None:
        from ..kernels.numba.pairwise import circle_rows

        _circle_kernel = circle_rows
    emb = _host_floats(y_pred)
    labels = _host_array(y_true, _I64)
    ref = emb if ref_embeddings is None else _host_floats(ref_embeddings)
    ref_lab = labels if ref_labels is None else _host_array(ref_labels, _I64)
    _check_circle_shapes(emb, labels, ref, ref_lab)
    return _circle_kernel(emb, labels, ref, ref_lab, remove_diagonal, gamma, margin, dtype)


def _host_array(x, dtype: np.dtype) -> np.ndarray:
    """x as a C-contiguous NumPy array of dtype, cast as astype casts (a label 1.9 becomes 1)."""
    a = x if type(x) is np.ndarray else np.asarray(x)
    if a.dtype != dtype:
        a = a.astype(dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _host_floats(x) -> np.ndarray:
    """x as a C-contiguous float32 or float64 NumPy array (other dtypes as float64): the kernel
    widens each float32 to float64 as it reads it, the value a float64 copy would hold."""
    a = x if type(x) is np.ndarray else np.asarray(x)
    return _host_array(a, a.dtype if a.dtype == _F32 or a.dtype == _F64 else _F64)


def _check_circle_shapes(emb, labels, ref, ref_lab) -> None:
    if emb.ndim != 2 or ref.ndim != 2 or emb.shape[1] != ref.shape[1]:
        raise ValueError(f"Circle expects embeddings of shape (B, D) and references (M, D); "
                         f"got {emb.shape} and {ref.shape}")
    if labels.shape != (emb.shape[0],) or ref_lab.shape != (ref.shape[0],):
        raise ValueError(f"Circle expects labels of shape (B,) and (M,); got {labels.shape} and {ref_lab.shape}")


def _logsumexp(xp, x):
    m = x.max(axis=1)
    shift = xp.where(xp.isfinite(m), m, 0.0)
    return xp.log(xp.exp(x - shift[:, None]).sum(axis=1)) + shift


@loss("Circle", keras3_only=True, class_params=("gamma", "margin", "remove_diagonal", "reduction", "name"))
def circle(y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=True, gamma=80.0, margin=0.4,
           *, compat="keras3"):
    """Circle loss (Sun et al. 2020) on L2-normalised embeddings y_pred (B, D) with integer labels
    y_true (B,), against reference embeddings and labels (default: the batch itself).

    With ``D = max(1 - y_pred·refᵀ, 0)``, positives (same label; the diagonal removed if
    ``remove_diagonal``) and negatives: ``L = softplus(LSE_pos(-γ·max(m + D, 0)·(m - D)) +
    LSE_neg(γ·max(1 + m - D, 0)·(1 - m - D)))``, 0 for a row without positives. The loss
    carries the mask ``L > 0``, so the default reduction averages over rows with a positive loss.
    """
    def direct(y_true, y_pred, dtype):
        return _circle_rows(y_true, y_pred, ref_labels, ref_embeddings, remove_diagonal, float(gamma),
                            float(margin), dtype)

    return Plan(None, layout="direct", prepare=direct)

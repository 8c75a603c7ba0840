"""Golden values: every row of the spec's §8 table (shared/keras-semantics.md) as a test.

Each case calls gpuloss exactly like the table's Keras call and checks value (rtol 1e-6,
atol 1e-7), output dtype and shape. Inputs are the table's, as float32 arrays (#85: int arrays,
#86: float64).

* Default compat (keras2) cases reproduce the "K2" column (tf_keras called on tensors).
* ``-k3`` cases pass ``compat="keras3"`` and reproduce the "K3 (TF)" column. The brief asks for the
  rows where §9 items 1-8 say Keras 2 and Keras 3 differ (#8-10, #21, #46, #52, #80-86); the table's
  K3-TF column is also asserted for the other rows where it is given ("same" = the K2 value),
  which exercises the Keras 3 pipeline on every worked example. In keras3 mode the class default
  reduction is passed explicitly ("sum_over_batch_size"), because "auto" is rejected there.
* Keras-3-only losses (#71-78) use their default compat (keras3). #74 asserts Keras master's
  Tversky (alpha weights false positives). #79 (CTC) is out of scope.
* Rows without a K2 or K3 value in their column are not asserted in that column.

The table (``GOLDEN_CASES``) is plain data so that ``test_reference.py`` can run the same rows
through the float64 reference without importing gpuloss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

RTOL, ATOL = 1e-6, 1e-7

DEFAULT = "<default>"  # reduction not passed: the class default ("auto" in K2, sobs for K3-only)


def f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@dataclass(frozen=True)
class Case:
    id: str
    loss: str                      # gpuloss attribute: a class name or a function name
    inputs: tuple                  # (y_true, y_pred) or (anchor, positive, negative)
    expected: Any                  # float, list, or NaN
    params: dict = field(default_factory=dict)  # loss-specific constructor / function kwargs
    sample_weight: Any = None
    reduction: Any = DEFAULT
    compat: str | None = None      # None: not passed (the loss's default)
    is_function: bool = False
    out_dtype: Any = np.float32

    @property
    def expected_array(self) -> np.ndarray:
        return np.asarray(self.expected, dtype=np.float64)


GOLDEN_CASES: list[Case] = []

SOBS = "sum_over_batch_size"


def _add(num: int, label: str, loss: str, inputs: tuple, *, k2: Any = None, k3: Any = None,
         params: dict | None = None, sw: Any = None, reduction: Any = DEFAULT,
         fn: bool = False, keras3_only: bool = False, dtype: Any = np.float32,
         dtype_k3: Any = None) -> None:
    params = dict(params or {})
    base = f"row{num}-{label}"
    if k2 is not None:
        GOLDEN_CASES.append(Case(base, loss, inputs, k2, params, sw, reduction, None, fn, dtype))
    if k3 is not None:
        if keras3_only:  # the loss's own default compat is keras3
            GOLDEN_CASES.append(Case(base, loss, inputs, k3, params, sw, reduction, None, fn,
                                     dtype))
        else:
            red = SOBS if (reduction == DEFAULT and not fn) else reduction
            GOLDEN_CASES.append(Case(base + "-k3", loss, inputs, k3, params, sw, red, "keras3", fn,
                                     dtype_k3 or dtype))


def _four(num: int, label: str, loss: str, inputs: tuple, sw: list, values: tuple,
          k3_values: tuple | None = None, params: dict | None = None) -> None:
    """Rows listing "sobs / sw=[..] / sum / none"."""
    k3_values = k3_values or values
    for suffix, kwargs, v2, v3 in [
        ("sobs", {}, values[0], k3_values[0]),
        ("sw", {"sw": f32(sw)}, values[1], k3_values[1]),
        ("sum", {"reduction": "sum"}, values[2], k3_values[2]),
        ("none", {"reduction": "none"}, values[3], k3_values[3]),
    ]:
        _add(num, f"{label}-{suffix}", loss, inputs, k2=v2, k3=v3, params=params, **kwargs)


# ---- shared inputs of §8 ----------------------------------------------------------------------
A = (f32([[0, 1], [0, 0]]), f32([[-18.6, 0.51], [2.94, -12.8]]))
A1 = (f32([0, 1, 0, 0]), f32([-18.6, 0.51, 2.94, -12.8]))
B = (f32([[0, 1, 0], [0, 0, 1]]), f32([[0.05, 0.95, 0], [0.1, 0.8, 0.1]]))
YB = f32([1, 2])
B_LOGITS = f32([[1, 2, 3], [0.5, -1, 4]])
H = (f32([[0, 1], [0, 0]]), f32([[0.6, 0.4], [0.4, 0.6]]))
R = (f32([[0, 1], [0, 0]]), f32([[1, 1], [1, 0]]))
P = (f32([[0, 1], [0, 0]]), f32([[1, 1], [0, 0]]))
SW82 = f32([0.8, 0.2])
LOGITS = {"from_logits": True}

# ---- BinaryCrossentropy #1-10 -------------------------------------------------------------------
_add(1, "BCE", "BinaryCrossentropy", A1, k2=0.865458, k3=0.865458, params=LOGITS)
_add(2, "BCE", "BinaryCrossentropy", A, k2=0.865458, k3=0.865458, params=LOGITS)
_add(3, "BCE", "BinaryCrossentropy", A, k2=0.2436386, k3=0.2436386, params=LOGITS, sw=SW82)
_add(4, "BCE", "BinaryCrossentropy", A, k2=1.730916, k3=1.730916, params=LOGITS, reduction="sum")
_add(5, "BCE", "BinaryCrossentropy", A, k2=[0.23515666, 1.4957594], k3=[0.23515666, 1.4957594],
     params=LOGITS, reduction="none")
_add(6, "BCE", "BinaryCrossentropy", A, k2=1.5897081, k3=1.5897081,
     params={"from_logits": True, "label_smoothing": 0.2})
_add(7, "binary_crossentropy", "binary_crossentropy", H, k2=[0.9162905, 0.71355796],
     k3=[0.91629076, 0.7135582], fn=True)
A1P = (A1[0], f32([0.6, 0.3, 0.2, 0.8]))
_add(8, "BCE", "BinaryCrossentropy", A1P, k2=0.988211, k3=0.9882113)
_add(9, "BCE", "BinaryCrossentropy", A1P, k2=0.9725514, k3=0.9725517,
     params={"label_smoothing": 0.1})
_add(10, "BCE", "BinaryCrossentropy", (f32([[0, 1, 0, 1]]), f32([[0, 0, 1, 1]])), k2=7.6895466,
     k3=8.01512)

# ---- BinaryFocalCrossentropy #11-22 -------------------------------------------------------------
BF = "BinaryFocalCrossentropy"


def _bf(gamma: float, cb: bool = False) -> dict:
    d = {"gamma": gamma, "from_logits": True}
    if cb:
        d["apply_class_balancing"] = True
    return d


_add(11, "BFCE", BF, A1, k2=0.6912122, k3=0.6912122, params=_bf(2))
_add(12, "BFCE", BF, A1, k2=0.5101333, k3=0.5101333, params=_bf(2, True))
_add(13, "BFCE", BF, A, k2=0.6469951, k3=0.6469951, params=_bf(3))
_add(14, "BFCE", BF, A, k2=0.48214132, k3=0.48214132, params=_bf(3, True))
_add(15, "BFCE", BF, A, k2=0.13312504, k3=0.13312504, params=_bf(3), sw=SW82)
_add(16, "BFCE", BF, A, k2=0.09735977, k3=0.09735977, params=_bf(3, True), sw=SW82)
_add(17, "BFCE", BF, A, k2=1.2218808, k3=1.2218808, params=_bf(4), reduction="sum")
_add(18, "BFCE", BF, A, k2=0.9140807, k3=0.9140807, params=_bf(4, True), reduction="sum")
_add(19, "BFCE", BF, A, k2=[0.001748373, 1.1561027], k3=[0.001748373, 1.1561027], params=_bf(5),
     reduction="none")
_add(20, "BFCE", BF, A, k2=[4.3709317e-4, 0.86707699], k3=[4.3709317e-4, 0.86707699],
     params=_bf(5, True), reduction="none")
_add(21, "binary_focal_crossentropy", "binary_focal_crossentropy", H,
     k2=[0.32986462, 0.20579834], k3=[0.32986468, 0.20579839], params={"gamma": 2.0}, fn=True)
_add(22, "BFCE", BF, (f32([[0, 1]]), f32([[30, -30]])), k2=[30.0], k3=[30.0], params=_bf(2),
     reduction="none")

# ---- CategoricalCrossentropy #23-30 -------------------------------------------------------------
CC = "CategoricalCrossentropy"
_add(23, "CCE", CC, B, k2=1.1769392, k3=1.1769392)
_add(24, "CCE", CC, B, k2=0.8135988, k3=0.8135988, sw=f32([0.3, 0.7]))
_add(25, "CCE", CC, B, k2=2.3538785, k3=2.3538785, reduction="sum")
_add(26, "CCE-none", CC, B, k2=[0.051293306, 2.3025851], k3=[0.051293306, 2.3025851],
     reduction="none")
_add(26, "categorical_crossentropy", "categorical_crossentropy", B,
     k2=[0.051293306, 2.3025851], k3=[0.051293306, 2.3025851], fn=True)
_add(27, "CCE", CC, B, k2=1.4591359, k3=1.4591359, params={"label_smoothing": 0.1})
_add(28, "CCE", CC, (B[0], B_LOGITS), k2=0.7219377, k3=0.7219377, params=LOGITS)
_add(29, "categorical_crossentropy", "categorical_crossentropy",
     (B[0], f32([[0.1, 0.5, 0.2], [1, 1, 2]])), k2=[0.47000363, 0.6931472],
     k3=[0.47000363, 0.6931472], fn=True)
_add(30, "categorical_crossentropy", "categorical_crossentropy",
     (f32(np.eye(3)), f32([[0.9, 0.05, 0.05], [0.05, 0.89, 0.06], [0.05, 0.01, 0.94]])),
     k2=[0.10536054, 0.11653383, 0.06187541], k3=[0.10536054, 0.11653383, 0.06187541], fn=True)

# ---- CategoricalFocalCrossentropy #31-37 --------------------------------------------------------
CF = "CategoricalFocalCrossentropy"
_add(31, "CFCE", CF, B, k2=0.23315276, k3=0.23315276)
_add(32, "CFCE", CF, B, k2=0.16320053, k3=0.16320053, sw=f32([0.3, 0.7]))
_add(33, "CFCE", CF, B, k2=0.46630552, k3=0.46630552, reduction="sum")
_add(34, "CFCE", CF, B, k2=[3.2058331e-05, 4.6627346e-01], k3=[3.2058331e-05, 4.6627346e-01],
     reduction="none")
_add(35, "categorical_focal_crossentropy", "categorical_focal_crossentropy",
     (B[0], f32([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]])), k2=[2.6340148e-4, 0.67591208],
     k3=[2.6340148e-4, 0.67591208], fn=True)
_add(36, "CFCE", CF, B, k2=[2.5646666e-05, 1.3055657], k3=[2.5646666e-05, 1.3055657],
     params={"alpha": [0.1, 0.2, 0.7]}, reduction="none")
_add(37, "CFCE", CF, (B[0], B_LOGITS), k2=0.10037422, k3=0.10037422, params=LOGITS)

# ---- SparseCategoricalCrossentropy #38-47 -------------------------------------------------------
SC = "SparseCategoricalCrossentropy"
_add(38, "SCCE", SC, (YB, B[1]), k2=1.1769392, k3=1.1769392)
_add(39, "SCCE", SC, (YB, B[1]), k2=0.8135988, k3=0.8135988, sw=f32([0.3, 0.7]))
_add(40, "SCCE", SC, (YB, B[1]), k2=2.3538785, k3=2.3538785, reduction="sum")
# K2 and K3-TF renormalise after clipping: 0.051293444 (not CCE's 0.051293306)
_add(41, "SCCE", SC, (YB, B[1]), k2=[0.051293444, 2.3025851], k3=[0.051293444, 2.3025851],
     reduction="none")
Y42 = f32([[[0, 2], [-1, -1]], [[0, 2], [-1, -1]]])
P42 = f32([[[[1, 0, 0], [0, 0, 1]], [[0.2, 0.5, 0.3], [0, 1, 0]]],
           [[[1, 0, 0], [0, 0.5, 0.5]], [[0.2, 0.5, 0.3], [0, 1, 0]]]])
V42 = [[[2.384e-7, 2.384e-7], [0, 0]], [[2.384e-7, 0.6931473], [0, 0]]]
_add(42, "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", (Y42, P42),
     k2=V42, k3=V42, params={"ignore_class": -1}, fn=True)
_add(43, "SCCE-sobs", SC, (Y42, P42), k2=0.173287, k3=0.173287, params={"ignore_class": -1})
_add(43, "SCCE-sum", SC, (Y42, P42), k2=0.693148, k3=0.693148, params={"ignore_class": -1},
     reduction="sum")
_add(44, "SCCE", SC, (Y42, P42), k2=0.5198608, k3=0.5198608, params={"ignore_class": -1},
     sw=f32([1, 3]))
_add(45, "SCCE", SC, (f32([0, 1, 2]), f32([[0.05, 0.95, 0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])),
     k2=0.56971717, k3=0.56971717, params={"ignore_class": 0})
# every entry ignored: K2 0/0 -> NaN, K3 divide-no-nan -> 0.0
_add(46, "SCCE", SC, (f32([1, 1]), B[1]), k2=np.nan, k3=0.0, params={"ignore_class": 1})
_add(47, "SCCE", SC, (YB, B_LOGITS), k2=0.7219377, k3=0.7219377, params=LOGITS)

# ---- CosineSimilarity #48-52 --------------------------------------------------------------------
CS = "CosineSimilarity"
C48 = (f32([[0, 1], [1, 1]]), f32([[1, 0], [1, 1]]))
_add(48, "Cosine", CS, C48, k2=-0.49999997, k3=-0.49999997, params={"axis": 1})
_add(49, "Cosine", CS, C48, k2=-0.099999994, k3=-0.099999994, params={"axis": 1}, sw=SW82)
_add(50, "Cosine-sum", CS, C48, k2=-0.99999994, k3=-0.99999994, params={"axis": 1},
     reduction="sum")
_add(50, "Cosine-none", CS, C48, k2=[-0.0, -0.99999994], k3=[-0.0, -0.99999994],
     params={"axis": 1}, reduction="none")
C51 = (f32([[0, 1], [1, 1], [1, 1]]), f32([[1, 0], [1, 1], [-1, -1]]))
_add(51, "cosine_similarity", "cosine_similarity", C51, k2=[-0.0, -0.99999994, 0.99999994],
     params={"axis": 1}, fn=True)
_add(51, "cosine_similarity", "cosine_similarity", C51, k3=[-0.0, -0.99999994, 0.99999994],
     params={"axis": -1}, fn=True)
# norm floor 1e-6 (K2) vs 1e-7 (K3)
_add(52, "Cosine", CS, (f32([[0, 0], [1e-7, 0]]), f32([[1, 0], [1, 0]])), k2=[-0.0, -0.1],
     k3=[-0.0, -1.0], reduction="none")

# ---- hinge family, Poisson, LogCosh, KLD, Huber #53-62 ------------------------------------------
SW10 = [1, 0]
_four(53, "Hinge", "Hinge", H, SW10, (1.3, 0.55, 2.6, [1.1, 1.5]))
_four(54, "SquaredHinge", "SquaredHinge", H, SW10, (1.86, 0.73, 3.72, [1.46, 2.26]))
_four(55, "CategoricalHinge", "CategoricalHinge", H, SW10, (1.4000001, 0.6, 2.8000002, [1.2, 1.6]))
_add(56, "hinge", "hinge", (f32([[0, 1], [0, 2]]), H[1]), k2=[0.8, 0.5], k3=[0.8, 0.5], fn=True)
_add(57, "categorical_hinge", "categorical_hinge",
     (f32([[0, 1, 0], [1, 0, 0]]), f32([[0.3, 0.2, 0.5], [-1, 0.5, -2]])), k2=[1.3, 2.5],
     k3=[1.3, 2.5], fn=True)
_four(58, "Poisson", "Poisson", P, [0.8, 0.2],
      (0.49999997, 0.39999998, 0.99999994, [0.99999994, 0]))
_four(59, "LogCosh", "LogCosh", P, [0.8, 0.2], (0.1084452, 0.08675616, 0.2168904, [0.2168904, 0]))
_four(60, "KLDivergence", "KLDivergence", H, [0.8, 0.2],
      (0.45814306, 0.3665154, 0.9162861, [0.91628921, -3.0809074e-06]))
_four(61, "Huber", "Huber", H, SW10, (0.155, 0.09, 0.31, [0.18, 0.13000001]))
_add(62, "Huber", "Huber", (f32([[0, 0]]), f32([[2, -0.3]])), k2=[0.46], k3=[0.46],
     params={"delta": 0.5}, reduction="none")

# ---- regression #63-70 --------------------------------------------------------------------------
SW73 = [0.7, 0.3]
_four(63, "MSE", "MeanSquaredError", R, SW73, (0.5, 0.25, 1.0, [0.5, 0.5]))
_four(64, "MAE", "MeanAbsoluteError", R, SW73, (0.5, 0.25, 1.0, [0.5, 0.5]))
_four(65, "MSLE", "MeanSquaredLogarithmicError", R, SW73,
      (0.24022643, 0.12011322, 0.48045287, [0.24022643, 0.24022643]))
_four(66, "MAPE", "MeanAbsolutePercentageError", (f32([[2, 1], [2, 3]]), R[1]), SW73,
      (50.0, 20.0, 100.0, [25.0, 75.0]))
# #67-69 are Keras 3 docstring examples (no K2 column): asserted in keras3 mode only.
_add(67, "MSE", "MeanSquaredError", (f32([1, 0, 1]), f32([0.9, 0.1, 0.8])), k3=0.020000001)
_add(68, "MAE", "MeanAbsoluteError", (f32([1, 0.3, 1]), f32([1.9, 0.3, 1.8])), k3=0.56666666)
_add(69, "MAPE", "MeanAbsolutePercentageError", (f32([100, 200, 300]), f32([90, 210, 310])),
     k3=6.111111)
_add(70, "mean_squared_logarithmic_error", "mean_squared_logarithmic_error",
     (f32([[-2, 1]]), f32([[-5, 3]])), k2=[0.2402265], k3=[0.2402265], fn=True)

# ---- Keras-3-only losses #71-78 (default compat keras3) -----------------------------------------
Y71 = f32([[[[1], [1]], [[0], [0]]], [[[1], [1]], [[0], [0]]]])
P71 = f32([[[[0], [1]], [[0], [1]]], [[[0.4], [0]], [[0], [0.9]]]])
AX123 = {"axis": (1, 2, 3)}
_add(71, "Dice", "Dice", (Y71, P71), k3=[0.5, 0.75757575], params=AX123, reduction="none",
     keras3_only=True)
_add(72, "Dice", "Dice", (Y71, P71), k3=0.6164384, keras3_only=True)
_add(72, "Tversky", "Tversky", (Y71, P71), k3=0.6164384, keras3_only=True)
_add(73, "Dice-sobs", "Dice", (Y71, P71), k3=0.6287879, params=AX123, keras3_only=True)
_add(73, "Dice-sw", "Dice", (Y71, P71), k3=0.9246576, sw=f32([1, 2]), keras3_only=True)
# Keras master semantics (alpha weights false positives); Keras <= 3.15.1 gives [0.5, 0.7350993]
_add(74, "Tversky", "Tversky", (Y71, P71), k3=[0.5, 0.77653635],
     params={"alpha": 0.3, "beta": 0.7, "axis": (1, 2, 3)}, reduction="none", keras3_only=True)
G75 = (f32([0, 1, 0, 1]), f32([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]]))
GCE = "CategoricalGeneralizedCrossEntropy"
_add(75, "GCE-sobs", GCE, G75, k3=0.3598597, keras3_only=True)
_add(75, "GCE-none", GCE, G75, k3=[0.32667994, 0.21114564, 0.45080662, 0.45080662],
     reduction="none", keras3_only=True)
E76 = f32([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]])
Y76 = (f32([0, 0, 1, 1]), E76)
_add(76, "Circle", "Circle", Y76, k3=[0.8001753, 2.837325, 2.837325, 0.8001753],
     params={"gamma": 10.0, "margin": 0.25}, reduction="none", keras3_only=True)
_add(77, "Circle-none", "Circle", Y76, k3=[6.7726614e-05, 6.4016638, 6.4016638, 6.7726614e-05],
     reduction="none", keras3_only=True)
_add(77, "Circle-sobs", "Circle", Y76, k3=3.2008657, keras3_only=True)
Y78 = (f32([0, 1, 2, 2]), E76)
_add(78, "Circle-none", "Circle", Y78, k3=[0.0, 0.0, 1.1897781, 0.30895734],
     params={"gamma": 10.0}, reduction="none", keras3_only=True)
# mean over the 2 rows with a positive loss (Circle's mask)
_add(78, "Circle-sobs", "Circle", Y78, k3=0.7493677, params={"gamma": 10.0}, keras3_only=True)

# ---- alignment, reductions, dtypes #80-88 -------------------------------------------------------
# #80/#81: the library reproduces tf_keras on *tensors* (K2 squeezes p (3,1) -> scalar L); the
# "NumPy broadcasting" K2 variant is deliberately not reproduced.
_add(80, "MSE", "MeanSquaredError", (f32([1, 2, 3]), f32([[1], [2], [5]])), k2=1.3333334,
     k3=[0.0, 0.0, 4.0], reduction="none")
_add(81, "BCE", "BinaryCrossentropy", (f32([0, 1, 1]), f32([[0.2], [0.7], [0.4]])), k2=0.4987029,
     k3=[0.22314353, 0.35667497, 0.9162907], reduction="none")
X82 = (f32([[0, 1, 1], [1, 0, 1]]), f32([[0.2, 0.7, 0.4], [0.9, 0.3, 0.6]]))
_add(82, "MSE-sw2", "MeanSquaredError", X82, k2=0.21166667, k3=0.21166667, sw=f32([1, 3]))
_add(82, "MSE-sw21", "MeanSquaredError", X82, k2=0.21166667, k3=0.21166667, sw=f32([[1], [3]]))
# K3: sw (2,1) against L (2,) expands L to (2,1); values derived from the row's inputs
# (L = [0.49/3, 0.26/3]; weighted [0.16333334, 0.26]).
_add(82, "MSE-sw21-none", "MeanSquaredError", X82, k3=[[0.16333334], [0.26]], sw=f32([[1], [3]]),
     reduction="none")
X83 = (np.ones((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32))
_add(83, "MSE", "MeanSquaredError", X83, k2=[[1, 1], [3, 3]], k3=[[1, 3], [1, 3]], sw=f32([1, 3]),
     reduction="none")
X84 = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
_add(84, "MSE", "MeanSquaredError", X84, k2=0.0, k3=np.zeros((0,)))
# §7 "Empty batch": K2 sum 0.0, none [] (the K3 column returns [] for every reduction)
_add(84, "MSE-sum", "MeanSquaredError", X84, k2=0.0, k3=np.zeros((0,)), reduction="sum")
_add(84, "MSE-none", "MeanSquaredError", X84, k2=np.zeros((0,)), k3=np.zeros((0,)),
     reduction="none")
# #85: tf_keras computes integer inputs in integer arithmetic (the per-row mean truncates:
# mean([1, 4]) = 2 as int64). The library computes integer inputs as float32, a documented
# difference from K2, so the default mode returns Keras 3's value 2.5 (float32).
X85 = (np.asarray([[0, 1]], np.int64), np.asarray([[1, 3]], np.int64))
_add(85, "MSE", "MeanSquaredError", X85, k2=2.5, k3=2.5)
# #86: tf_keras casts Huber to float32; the library keeps float64 as float64 in the default mode
# (documented difference). Keras 3 converts inputs to its loss dtype, float32 (the K3 column).
X86 = (np.asarray([[0, 1]], np.float64), np.asarray([[0.1, 0.7]], np.float64))
_add(86, "Huber", "Huber", X86, k2=0.025, k3=0.025, dtype=np.float64, dtype_k3=np.float32)
_add(87, "sparse_categorical_crossentropy", "sparse_categorical_crossentropy",
     (f32([0, 1, 2]), f32([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])),
     k3=[0.10536056, 0.22314355, 0.6931472], fn=True)
_add(88, "huber", "huber", H, k2=[0.18, 0.13000001], k3=[0.18, 0.13000001], fn=True)
_add(88, "log_cosh", "log_cosh", P, k2=[0.2168904, 0.0], k3=[0.2168904, 0.0], fn=True)

GOLDEN_ROWS = sorted({int(c.id.split("-")[0][3:]) for c in GOLDEN_CASES})
assert len({c.id for c in GOLDEN_CASES}) == len(GOLDEN_CASES), "duplicate golden ids"


# ------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpuloss():
    import gpuloss as lib  # a failure to import is a test error, not a skip

    return lib


def run_library(lib: Any, case: Case) -> Any:
    obj = getattr(lib, case.loss)
    kwargs = dict(case.params)
    if case.compat is not None:
        kwargs["compat"] = case.compat
    if case.is_function:
        return obj(*case.inputs, **kwargs)
    if case.reduction != DEFAULT:
        kwargs["reduction"] = case.reduction
    loss = obj(**kwargs)
    if case.sample_weight is None:
        return loss(*case.inputs)
    return loss(*case.inputs, sample_weight=case.sample_weight)


def check_result(result: Any, case: Case, *, check_dtype: bool = True) -> None:
    expected = case.expected_array
    assert isinstance(result, np.ndarray), f"expected a NumPy array, got {type(result).__name__}"
    if check_dtype:
        assert result.dtype == np.dtype(case.out_dtype), (
            f"dtype {result.dtype}, want {np.dtype(case.out_dtype)}")
    assert result.shape == expected.shape, f"shape {result.shape}, want {expected.shape}"
    np.testing.assert_allclose(np.asarray(result, np.float64), expected, rtol=RTOL, atol=ATOL,
                               equal_nan=True)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c.id for c in GOLDEN_CASES])
def test_golden(case: Case, gpuloss: Any) -> None:
    result = run_library(gpuloss, case)
    check_result(result, case)

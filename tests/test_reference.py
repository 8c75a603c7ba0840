"""Validate the float64 reference (tests/reference.py) itself, without the library.

1. Every golden row of the spec's §8 table (the same ``GOLDEN_CASES`` that test_golden.py runs on
   gpuloss) must come out of the reference within rtol 1e-6 / atol 1e-7.
2. Further statements of the spec (§4, §5, §7, §9) that the table does not cover.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402
from test_golden import ATOL, DEFAULT, GOLDEN_CASES, RTOL, Case  # noqa: E402


def run_reference(case: Case) -> np.ndarray:
    fn_name = ref.CLASS_TO_FN.get(case.loss, case.loss)
    assert fn_name in ref.REFERENCES, case.loss
    compat = case.compat or ref.default_compat(fn_name)
    if case.is_function:
        return ref.REFERENCES[fn_name](*case.inputs, compat=compat, **case.params)
    reduction = case.reduction
    if reduction == DEFAULT:
        reduction = ref.default_reduction(fn_name, compat)
    return ref.loss_call(fn_name, *case.inputs, sample_weight=case.sample_weight,
                         reduction=reduction, compat=compat, **case.params)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c.id for c in GOLDEN_CASES])
def test_reference_reproduces_golden_table(case: Case) -> None:
    result = np.asarray(run_reference(case))
    expected = case.expected_array
    assert result.dtype == np.float64
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=RTOL, atol=ATOL, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# spec statements outside the §8 table
# ------------------------------------------------------------------------------------------------

f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731


def test_constants_are_float32_bounds():
    eps, hi = ref.clip_bounds(np.float32)
    assert hi == 1 - 2.0 ** -23
    assert abs(-np.log(1 - hi) - 15.942385) < 1e-6
    assert abs(-np.log(eps) - 16.118096) < 1e-6
    assert ref.clip_bounds(np.float64) == (1e-7, 1 - 1e-7)


def test_hinge_label_conversion_is_batch_global():
    p = f32([[0.6, 0.4], [0.4, 0.6]])
    converted = ref.REFERENCES["hinge"](f32([[0, 1], [0, 0]]), p)
    np.testing.assert_allclose(converted, [1.1, 1.5], rtol=1e-6)
    # a single label 2 disables the conversion for every row
    not_converted = ref.REFERENCES["hinge"](f32([[0, 1], [0, 2]]), p)
    np.testing.assert_allclose(not_converted, [0.8, 0.5], rtol=1e-6)


def test_edge_values_of_section_7():
    r = ref.REFERENCES
    # rank-1 pointwise: scalar mean, also for reduction "none"
    out = ref.loss_call("mean_squared_error", f32([1, 2, 3]), f32([1, 2, 5]), reduction="none")
    assert out.shape == () and abs(out - 1.3333334) < 1e-6
    # MAPE with y = 0 divides by epsilon
    v = r["mean_absolute_percentage_error"](f32([[0.0]]), f32([[0.5]]))
    np.testing.assert_allclose(v, [0.5 / np.float32(1e-7) * 100], rtol=1e-6)
    # Huber delta = 0 -> 0
    assert r["huber"](f32([[0, 1]]), f32([[3, -2]]), delta=0.0)[0] == 0.0
    # KLD with y > 1 is clipped to 1
    np.testing.assert_allclose(r["kl_divergence"](f32([[2, 0.5]]), f32([[1.5, 0]])), [7.7124743],
                               rtol=1e-6)
    # probabilities outside [0, 1]: K2 BCE exactly 0 in float32 (log(hi + eps) rounds to log 1;
    # the float64 reference gives ~2e-8), K3 gives 1.19e-7 (float64: -log(1 - eps) = 1.0e-7 for
    # the second element, 1e-8 below float32's rounding to -log(hi))
    k2 = r["binary_crossentropy"](f32([[1, 0]]), f32([[1.5, -0.5]]))
    k3 = r["binary_crossentropy"](f32([[1, 0]]), f32([[1.5, -0.5]]), compat="keras3")
    assert abs(k2[0]) < 1e-7
    np.testing.assert_allclose(k3, [1.1920929e-7], rtol=0, atol=1e-8)
    # large logits are exact on the logits paths
    np.testing.assert_allclose(r["binary_crossentropy"](f32([[0]]), f32([[30]]), from_logits=True),
                               [30.0], rtol=1e-7)
    np.testing.assert_allclose(
        r["categorical_crossentropy"](f32([[0, 1]]), f32([[100, -100]]), from_logits=True), [200.0],
        rtol=1e-7)
    # LogCosh stable form: x = 100 -> 99.306854
    np.testing.assert_allclose(r["log_cosh"](f32([[0]]), f32([[100]])), [99.306854], rtol=1e-7)
    # CCE all-zero row -> NaN; class dim of size 1 -> -log(hi32)
    assert np.isnan(r["categorical_crossentropy"](f32([[0, 1]]), f32([[0, 0]]))[0])
    np.testing.assert_allclose(r["categorical_crossentropy"](f32([[1]]), f32([[1]])),
                               [1.1920929e-7], rtol=1e-5)
    # float labels truncate toward zero in SCCE
    np.testing.assert_allclose(
        r["sparse_categorical_crossentropy"](f32([1.7]), f32([[0.2, 0.8]])), [-np.log(0.8)],
        rtol=1e-6)
    # SCCE variants: TF renormalises after clipping, JAX normalises before
    p = f32([[0.05, 0.95, 0]])
    np.testing.assert_allclose(r["sparse_categorical_crossentropy"](f32([1]), p), [0.051293444],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["sparse_categorical_crossentropy"](f32([1]), p, variant="jax"),
                               [0.051293306], rtol=1e-6)


def test_gamma_zero_alpha_one_focal_equals_cce():
    y, p = f32([[0, 1, 0], [0.2, 0.3, 0.5]]), f32([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(
        ref.REFERENCES["categorical_focal_crossentropy"](y, p, alpha=1.0, gamma=0.0),
        ref.REFERENCES["categorical_crossentropy"](y, p), rtol=1e-12)


def test_tversky_equal_weights_is_dice():
    # equal up to epsilon: Tversky's denominator carries 2*eps where Dice's carries eps
    rng = np.random.default_rng(0)
    y = (rng.random((3, 4, 5)) > 0.5).astype(np.float32)
    p = rng.random((3, 4, 5)).astype(np.float32)
    for axis in (None, (1, 2), -1):
        np.testing.assert_allclose(ref.REFERENCES["tversky"](y, p, axis=axis),
                                   ref.REFERENCES["dice"](y, p, axis=axis), rtol=1e-6)


def test_sample_weight_alignment_table_of_5_2():
    L1 = np.array([1.0, 2.0, 3.0])            # (B,)
    L2 = np.arange(6.0).reshape(3, 2)         # (B, T)
    sw_b = np.array([1.0, 2.0, 3.0])
    sw_b1 = sw_b[:, None]
    # (B,) weights: per sample against (B,) in both versions, and against (B,T) in K2
    assert ref.reduce(L1, sw_b, "none").tolist() == [1, 4, 9]
    assert ref.reduce(L1, sw_b, "none", "keras3").tolist() == [1, 4, 9]
    assert ref.reduce(L2, sw_b, "none").tolist() == [[0, 1], [4, 6], [12, 15]]
    with pytest.raises(ValueError):  # K3 broadcasts (B,) along T: error unless T = B or 1
        ref.reduce(L2, sw_b, "none", "keras3")
    # (B,1): K2 squeezes (out (B,)), K3 expands L (out (B,1))
    assert ref.reduce(L1, sw_b1, "none").shape == (3,)
    assert ref.reduce(L1, sw_b1, "none", "keras3").shape == (3, 1)
    # (B,T) against L (B,): K2 error (squeeze of T != 1)
    with pytest.raises(ValueError):
        ref.reduce(L1, np.ones((3, 2)), "none")
    # (B,T,1) against (B,T): squeezed, elementwise in both
    for compat in ("keras2", "keras3"):
        assert ref.reduce(L2, L2[..., None], "none", compat).tolist() == (L2 * L2).tolist()


def test_reductions_of_section_4():
    L = np.array([[1.0, 2.0], [3.0, 4.0]])
    sw = np.array([0.0, 2.0])
    # the sobs denominator counts zero weights too: (0 + 0 + 6 + 8) / 4
    assert ref.reduce(L, sw, "sum_over_batch_size") == 14 / 4
    assert ref.reduce(L, sw, "sum") == 14
    # K3 mean_with_sample_weight divides by the sum of the aligned (unbroadcast) weights;
    # with the K3 rule (B,) broadcasts along the last axis: W = [[0, 4], [0, 8]]
    assert ref.reduce(L, sw, "mean_with_sample_weight", "keras3") == 12 / 2
    assert ref.reduce(L, None, "mean_with_sample_weight", "keras3") == 10 / 4
    assert ref.reduce(L, None, "mean", "keras3") == 10 / 4
    # K3: 0-d and (0,) pass through every reduction
    assert ref.reduce(np.float64(3.0), None, "sum", "keras3").shape == ()
    assert ref.reduce(np.zeros(0), None, "sum_over_batch_size", "keras3").shape == (0,)
    assert ref.reduce(np.zeros(0), None, "sum_over_batch_size", "keras2").shape == ()
    # K3 rejects "auto"
    with pytest.raises(ValueError):
        ref.reduce(L, None, "auto", "keras3")
    # masks: sobs divides by the valid count; all masked -> NaN (K2) / 0 (K3)
    mask = np.array([[True, False], [True, False]])
    assert ref.reduce(L, None, "sum_over_batch_size", "keras2", mask) == 4 / 2
    assert ref.reduce(L, None, "sum", "keras2", mask) == 4
    assert ref.reduce(L, None, "mean_with_sample_weight", "keras3", mask) == 4 / 2
    none = np.zeros_like(mask)
    assert np.isnan(ref.reduce(L, None, "sum_over_batch_size", "keras2", none))
    assert ref.reduce(L, None, "sum_over_batch_size", "keras3", none) == 0.0


def test_rank_alignment_of_5_1():
    y, p = np.zeros(3), np.zeros((3, 1))
    a, b = ref.align_ranks(y, p, "keras2")
    assert a.shape == b.shape == (3,)
    a, b = ref.align_ranks(y, p, "keras3")
    assert a.shape == b.shape == (3, 1)
    # sparse case: p's last dim != 1 -> nothing
    a, b = ref.align_ranks(np.zeros(3), np.zeros((3, 4)), "keras2")
    assert a.shape == (3,) and b.shape == (3, 4)
    # K3 with higher ranks squeezes the larger one
    a, b = ref.align_ranks(np.zeros((2, 3)), np.zeros((2, 3, 1)), "keras3")
    assert a.shape == b.shape == (2, 3)


def test_circle_mask_drives_the_mean():
    y, e = f32([0, 1, 2, 2]), f32([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]])
    L, mask = ref.per_sample("circle", y, e, gamma=10.0)
    assert mask.tolist() == [False, False, True, True]
    assert ref.reduce(L, None, "sum", "keras3", mask) == pytest.approx(L.sum())


def test_contrastive_and_triplet_definitions():
    y, d = f32([[1, 0, 0]]), f32([[0.5, 0.25, 2.0]])
    expected = (0.25 + 0.75 ** 2 + 0.0) / 3
    np.testing.assert_allclose(ref.REFERENCES["contrastive_loss"](y, d), [expected], rtol=1e-12)
    a, pos, neg = f32([[0, 0]]), f32([[3, 4]]), f32([[1, 0]])
    np.testing.assert_allclose(ref.REFERENCES["triplet_margin_loss"](a, pos, neg), [5.0])
    np.testing.assert_allclose(ref.REFERENCES["triplet_margin_loss"](a, pos, neg, p=1), [7.0])
    np.testing.assert_allclose(ref.REFERENCES["triplet_margin_loss"](a, neg, pos), [0.0])

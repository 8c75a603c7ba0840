"""Bad input never crashes: clear errors, no out-of-bounds reads, Keras's NaN and empty rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpuloss

B = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        gpuloss.MeanSquaredError()(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        gpuloss.categorical_crossentropy(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        gpuloss.SparseCategoricalCrossentropy()(np.array([0, 1, 2]), B)


@pytest.mark.parametrize("labels,bad", [([1, 3], 3), ([-1, 0], -1), ([0, 7.9], 7.9), ([np.nan, 0], "nan"),
                                        ([0, 2**40], 2**40)])
@pytest.mark.parametrize("reduction", ["auto", "none", "sum"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_label_out_of_range(labels, bad, reduction, from_logits):
    loss = gpuloss.SparseCategoricalCrossentropy(from_logits=from_logits, reduction=reduction)
    with pytest.raises(ValueError, match=rf"label value of {bad}.*3 classes"):
        loss(np.array(labels), B)


def test_sparse_label_out_of_range_long_rows_chunked_path():
    # rows of 2**17 classes take the column-chunked kernels
    p = np.full((2, 2**17), 1.0 / 2**17, np.float32)
    with pytest.raises(ValueError, match="131072 classes"):
        gpuloss.SparseCategoricalCrossentropy()(np.array([0, 2**17]), p)


def test_gce_label_out_of_range():
    with pytest.raises(ValueError, match="label value of 2"):
        gpuloss.CategoricalGeneralizedCrossEntropy()(np.array([0, 2]), np.full((2, 2), 0.5, np.float32))


def test_ignored_label_may_be_out_of_range():
    value = gpuloss.SparseCategoricalCrossentropy(ignore_class=-1)(np.array([1, -1]), B)
    np.testing.assert_allclose(value, 0.051293444, rtol=1e-6)


def test_nan_propagates_everywhere():
    y = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    p = np.array([[np.nan, 0.5], [0.2, 0.3]], np.float32)
    for spec in gpuloss.LOSSES.values():
        if spec.layout_kind in ("sparse", "sparse_strict", "direct", "triplet"):
            continue
        value = spec.cls(reduction="none")(y, p)
        assert math.isnan(np.asarray(value).reshape(-1)[0]), spec.class_name
    s = gpuloss.SparseCategoricalCrossentropy(reduction="none")(np.array([1, 1]), np.array([[np.nan, 0.5, 0.5],
                                                                                          [0.2, 0.3, 0.5]],
                                                                                         np.float32))
    assert math.isnan(s[0]) and not math.isnan(s[1])
    w = gpuloss.MeanSquaredError()(y, np.zeros_like(y), sample_weight=[np.nan, 1.0])
    assert math.isnan(w)


def test_empty_batch_keras2_and_keras3():
    e = np.zeros((0, 3), np.float32)
    assert gpuloss.MeanSquaredError()(e, e) == 0.0
    assert gpuloss.MeanSquaredError(reduction="sum")(e, e) == 0.0
    assert gpuloss.MeanSquaredError(reduction="none")(e, e).shape == (0,)
    assert gpuloss.MeanSquaredError(compat="keras3")(e, e).shape == (0,)
    assert gpuloss.CategoricalCrossentropy()(e, e) == 0.0


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="numeric"):
        gpuloss.mean_squared_error(np.array([["a", "b"]]), np.zeros((1, 2), np.float32))


def test_bad_axis():
    with pytest.raises(ValueError, match="axis 2"):
        gpuloss.binary_crossentropy(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), axis=2)


def test_bad_sample_weight_shape():
    y = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError):
        gpuloss.MeanSquaredError()(y, y, sample_weight=np.ones((4, 3, 2)))
    with pytest.raises(ValueError):
        gpuloss.MeanSquaredError()(y, y, sample_weight=np.ones(5))


def test_per_class_alpha_must_match_classes():
    with pytest.raises(ValueError, match="one value per class"):
        gpuloss.CategoricalFocalCrossentropy(alpha=[0.1, 0.9])(B, B)

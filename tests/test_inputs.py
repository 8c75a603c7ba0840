"""Inputs: dtypes, lists, scalars, and memory layouts all give the right numbers."""

from __future__ import annotations

import numpy as np
import pytest

import gpuloss

rng = np.random.default_rng(7)
Y = (rng.random((37, 5)) < 0.4).astype(np.float32)
P = rng.random((37, 5)).astype(np.float32) * 0.98 + 0.01
LOSSES = [gpuloss.MeanSquaredError(), gpuloss.BinaryCrossentropy(), gpuloss.CategoricalCrossentropy(),
          gpuloss.Huber(), gpuloss.CosineSimilarity(), gpuloss.KLDivergence(), gpuloss.CategoricalHinge(),
          gpuloss.BinaryFocalCrossentropy(), gpuloss.Dice()]


def _layouts(a):
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    ro = a.copy()
    ro.setflags(write=False)
    return {
        "fortran": np.asfortranarray(a),
        "strided view": big[::2, ::3],
        "read-only": ro,
        "big-endian": a.astype(a.dtype.newbyteorder(">")),
        "reversed": a[::-1][::-1],
    }


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("kind", ["fortran", "strided view", "read-only", "big-endian", "reversed"])
def test_memory_layouts_give_same_numbers(loss, kind):
    expected = loss(Y, P)
    got = loss(_layouts(Y)[kind], _layouts(P)[kind])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    none = type(loss)(reduction="none")
    np.testing.assert_allclose(none(_layouts(Y)[kind], _layouts(P)[kind]), none(Y, P), rtol=1e-6)


def test_dtype_in_dtype_out():
    mse = gpuloss.MeanSquaredError()
    assert mse(Y, P).dtype == np.float32
    assert mse(Y.astype(np.float64), P.astype(np.float64)).dtype == np.float64
    assert gpuloss.Huber()(Y.astype(np.float64), P.astype(np.float64)).dtype == np.float64
    h = mse(Y.astype(np.float16), P.astype(np.float16))
    assert h.dtype == np.float16
    np.testing.assert_allclose(float(h), float(mse(Y, P.astype(np.float16).astype(np.float32))), rtol=1e-3)
    assert mse(Y, P, sample_weight=np.ones(37, np.float64)).dtype == np.float32
    assert gpuloss.MeanSquaredError(compat="keras3")(Y.astype(np.float64), P.astype(np.float64)).dtype == np.float32


def test_float64_is_computed_in_float64():
    y = np.array([[1.0]], np.float64)
    p = np.array([[1.0 + 1e-12]], np.float64)
    assert gpuloss.mean_absolute_error(y, p)[0] == pytest.approx(1e-12, rel=1e-6)


def test_integer_and_bool_inputs_compute_as_float32():
    # Keras 2 computes integer inputs with integer arithmetic (spec #85 gives 2); gpuloss uses float32
    v = gpuloss.MeanSquaredError()(np.array([[0, 1]]), np.array([[1, 3]]))
    assert v.dtype == np.float32 and v == 2.5
    b = gpuloss.BinaryCrossentropy()(np.array([[True, False]]), np.array([[0.9, 0.2]], np.float32))
    np.testing.assert_allclose(b, gpuloss.BinaryCrossentropy()(np.array([[1.0, 0.0]], np.float32),
                                                              np.array([[0.9, 0.2]], np.float32)))


def test_lists_and_scalars():
    np.testing.assert_allclose(gpuloss.MeanSquaredError()([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]), 0.5)
    assert gpuloss.MeanSquaredError()([[0.0, 1.0]], [[1.0, 1.0]]).dtype == np.float32
    np.testing.assert_allclose(gpuloss.mean_squared_error(1.0, 3.0), 4.0)
    np.testing.assert_allclose(gpuloss.MeanSquaredError()(1.0, 3.0, sample_weight=0.5), 2.0)


def test_broadcast_labels_against_predictions():
    # Keras functions broadcast y (B, 1) against p (B, C) for pointwise losses
    y = np.array([[1.0], [0.0]], np.float32)
    p = np.array([[0.5, 1.0], [0.25, 0.0]], np.float32)
    np.testing.assert_allclose(gpuloss.mean_squared_error(y, p), [0.125, 0.03125])


def test_rank_alignment_keras2_squeezes_keras3_expands():
    y = np.array([1.0, 2.0, 3.0], np.float32)
    p = np.array([[1.0], [2.0], [5.0]], np.float32)
    np.testing.assert_allclose(gpuloss.MeanSquaredError(reduction="none")(y, p), 1.3333334, rtol=1e-6)
    np.testing.assert_allclose(gpuloss.MeanSquaredError(reduction="none", compat="keras3")(y, p), [0, 0, 4])


@pytest.mark.parametrize("compat", ["keras3", "keras2"])
@pytest.mark.parametrize("mask_kind", ["some", "none", "all"])
def test_masked_mean_of_rows_is_keras_arithmetic(compat, mask_kind):
    """The masked mean of materialised rows (Circle's reduction): the mask scaled by size/count,
    the rows times it, summed, divided by the size, bit for bit; no row in the mask gives 0 in
    Keras 3 and NaN in Keras 2 (its size/0 scale). A NaN row outside the mask still counts."""
    from gpuloss._pipeline import _weighted_reduce

    L = np.random.default_rng(5).random(29).astype(np.float32) * 3
    mask = {"some": L > 1.2, "none": np.zeros(29, bool), "all": np.ones(29, bool)}[mask_kind]
    m = mask.astype(np.float64)
    tot = m.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = m * (m.size / tot) if (tot or compat == "keras2") else m * 0
        want = float(np.sum(L.astype(np.float64) * scaled)) / L.size
    for reduction in (("sum_over_batch_size",) if compat == "keras3" else ("auto", "sum_over_batch_size")):
        got = _weighted_reduce(L, mask, None, reduction, compat)
        assert np.array_equal(got, want, equal_nan=True), (compat, mask_kind, got, want)
    if mask_kind == "some":
        L2 = L.copy()
        L2[~mask] = np.nan
        assert np.isnan(_weighted_reduce(L2, mask, None, "sum_over_batch_size", compat))

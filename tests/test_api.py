"""The public API matches tf_keras.losses name for name (spec §1), and get/serialize work."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gpuloss

# (class, its loss-specific parameters with defaults, default name) — spec §1.1 (Keras 2)
K2_CLASSES = {
    "MeanSquaredError": ({}, "mean_squared_error"),
    "MeanAbsoluteError": ({}, "mean_absolute_error"),
    "MeanAbsolutePercentageError": ({}, "mean_absolute_percentage_error"),
    "MeanSquaredLogarithmicError": ({}, "mean_squared_logarithmic_error"),
    "BinaryCrossentropy": ({"from_logits": False, "label_smoothing": 0.0, "axis": -1}, "binary_crossentropy"),
    "BinaryFocalCrossentropy": ({"apply_class_balancing": False, "alpha": 0.25, "gamma": 2.0, "from_logits": False,
                                 "label_smoothing": 0.0, "axis": -1}, "binary_focal_crossentropy"),
    "CategoricalCrossentropy": ({"from_logits": False, "label_smoothing": 0.0, "axis": -1},
                                "categorical_crossentropy"),
    "CategoricalFocalCrossentropy": ({"alpha": 0.25, "gamma": 2.0, "from_logits": False, "label_smoothing": 0.0,
                                      "axis": -1}, "categorical_focal_crossentropy"),
    "SparseCategoricalCrossentropy": ({"from_logits": False, "ignore_class": None},
                                      "sparse_categorical_crossentropy"),
    "CosineSimilarity": ({"axis": -1}, "cosine_similarity"),
    "Hinge": ({}, "hinge"),
    "SquaredHinge": ({}, "squared_hinge"),
    "CategoricalHinge": ({}, "categorical_hinge"),
    "Poisson": ({}, "poisson"),
    "LogCosh": ({}, "log_cosh"),
    "KLDivergence": ({}, "kl_divergence"),
    "Huber": ({"delta": 1.0}, "huber_loss"),
}

# function → parameters after (y_true, y_pred) — spec §1.2 (Keras 2 order)
K2_FUNCTIONS = {
    "binary_crossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "binary_focal_crossentropy": {"apply_class_balancing": False, "alpha": 0.25, "gamma": 2.0, "from_logits": False,
                                  "label_smoothing": 0.0, "axis": -1},
    "categorical_crossentropy": {"from_logits": False, "label_smoothing": 0.0, "axis": -1},
    "categorical_focal_crossentropy": {"alpha": 0.25, "gamma": 2.0, "from_logits": False, "label_smoothing": 0.0,
                                       "axis": -1},
    "sparse_categorical_crossentropy": {"from_logits": False, "axis": -1, "ignore_class": None},
    "cosine_similarity": {"axis": -1},
    "huber": {"delta": 1.0},
    "hinge": {}, "squared_hinge": {}, "categorical_hinge": {}, "poisson": {}, "kl_divergence": {},
    "log_cosh": {}, "mean_squared_error": {}, "mean_absolute_error": {},
    "mean_absolute_percentage_error": {}, "mean_squared_logarithmic_error": {},
}

ALIASES = {"mse": "mean_squared_error", "MSE": "mean_squared_error", "mae": "mean_absolute_error",
           "MAE": "mean_absolute_error", "mape": "mean_absolute_percentage_error",
           "MAPE": "mean_absolute_percentage_error", "msle": "mean_squared_logarithmic_error",
           "MSLE": "mean_squared_logarithmic_error", "kld": "kl_divergence", "KLD": "kl_divergence",
           "kullback_leibler_divergence": "kl_divergence", "logcosh": "log_cosh"}


def _params(obj, skip):
    sig = inspect.signature(obj)
    return [(p.name, p.default) for p in sig.parameters.values()
            if p.name not in skip and p.kind is p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("cls_name", sorted(K2_CLASSES))
def test_class_signature_matches_tf_keras(cls_name):
    options, default_name = K2_CLASSES[cls_name]
    expected = list(options.items()) + [("reduction", "auto"), ("name", default_name)]
    assert _params(getattr(gpuloss, cls_name), {"self"}) == expected
    loss = getattr(gpuloss, cls_name)()
    assert isinstance(loss, gpuloss.Loss)
    assert loss.name == default_name and loss.reduction == "auto"


@pytest.mark.parametrize("fn_name", sorted(K2_FUNCTIONS))
def test_function_signature_matches_tf_keras(fn_name):
    fn = getattr(gpuloss, fn_name)
    expected = [("y_true", inspect.Parameter.empty), ("y_pred", inspect.Parameter.empty)]
    expected += list(K2_FUNCTIONS[fn_name].items())
    assert _params(fn, set()) == expected
    assert fn.__doc__ and len(fn.__doc__) > 40


def test_keras3_only_signatures():
    assert _params(gpuloss.Dice, {"self"}) == [("reduction", "sum_over_batch_size"), ("name", "dice"),
                                                ("axis", None)]
    assert _params(gpuloss.Tversky, {"self"}) == [("alpha", 0.5), ("beta", 0.5),
                                                   ("reduction", "sum_over_batch_size"), ("name", "tversky"),
                                                   ("axis", None)]
    assert _params(gpuloss.Circle, {"self"}) == [("gamma", 80.0), ("margin", 0.4), ("remove_diagonal", True),
                                                  ("reduction", "sum_over_batch_size"), ("name", "circle")]
    assert _params(gpuloss.CategoricalGeneralizedCrossEntropy, {"self"})[0] == ("q", 0.5)
    assert _params(gpuloss.circle, set())[2:] == [("ref_labels", None), ("ref_embeddings", None),
                                                  ("remove_diagonal", True), ("gamma", 80.0), ("margin", 0.4)]
    assert _params(gpuloss.ContrastiveLoss, {"self"}) == [("margin", 1.0), ("reduction", "auto"),
                                                           ("name", "contrastive_loss")]
    assert _params(gpuloss.triplet_margin_loss, set())[:3] == [(n, inspect.Parameter.empty)
                                                               for n in ("anchor", "positive", "negative")]


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases(alias):
    assert getattr(gpuloss, alias) is getattr(gpuloss, ALIASES[alias])


def test_every_class_and_function_takes_compat():
    for spec in gpuloss.LOSSES.values():
        assert "compat" in inspect.signature(spec.function).parameters
        assert "compat" in inspect.signature(spec.cls).parameters


@pytest.mark.parametrize("name", ["bce", "BCE", "huber_loss", "mse", "logcosh", "kld", "huber",
                                  "categorical_crossentropy"])
def test_get_function_names(name):
    fn = gpuloss.get(name)
    assert callable(fn) and not isinstance(fn, gpuloss.Loss)


def test_get_class_name_gives_instance_and_errors():
    loss = gpuloss.get("CategoricalCrossentropy")
    assert isinstance(loss, gpuloss.CategoricalCrossentropy)
    assert gpuloss.get(None) is None
    assert gpuloss.get(gpuloss.mse) is gpuloss.mse
    with pytest.raises(ValueError, match="Unknown loss function: 'cosine'"):
        gpuloss.get("cosine")
    with pytest.raises(ValueError):
        gpuloss.get(42)


def test_serialize_deserialize_round_trip():
    loss = gpuloss.BinaryFocalCrossentropy(gamma=3.0, from_logits=True, reduction="sum")
    ser = gpuloss.serialize(loss)
    assert ser["module"] == "keras.losses" and ser["class_name"] == "BinaryFocalCrossentropy"
    assert ser["registered_name"] is None
    back = gpuloss.deserialize(ser)
    assert back.get_config() == loss.get_config()
    assert gpuloss.serialize(gpuloss.mse) == {"module": "builtins", "class_name": "function",
                                              "config": "mean_squared_error", "registered_name": "function"}
    assert gpuloss.deserialize(gpuloss.serialize(gpuloss.mse)) is gpuloss.mse
    assert gpuloss.serialize(loss, use_legacy_format=True).keys() == {"class_name", "config"}


@pytest.mark.parametrize("spec", list(gpuloss.LOSSES.values()), ids=lambda s: s.class_name)
def test_get_config_from_config_round_trip(spec):
    loss = spec.cls()
    config = loss.get_config()
    assert config["name"] == spec.default_name and config["reduction"] == spec.default_reduction
    for k, v in spec.defaults.items():
        if k in spec.class_params:
            assert config[k] == v
    clone = spec.cls.from_config(config)
    assert clone.get_config() == config


def test_keras2_config_has_fn():
    assert gpuloss.Huber(delta=2.0).get_config() == {"reduction": "auto", "name": "huber_loss", "delta": 2.0,
                                                    "fn": "huber"}


@pytest.mark.parametrize("reduction", ["mean_of_sums", "batch", "", 3])
def test_bad_reduction_raises_at_construction(reduction):
    with pytest.raises(ValueError, match="reduction"):
        gpuloss.MeanSquaredError(reduction=reduction)


def test_keras3_rejects_auto_and_accepts_its_reductions():
    with pytest.raises(ValueError):
        gpuloss.MeanSquaredError(reduction="auto", compat="keras3")
    for r in ("mean", "mean_with_sample_weight", None, "none", "sum", "sum_over_batch_size"):
        gpuloss.MeanSquaredError(reduction=r, compat="keras3")


@pytest.mark.parametrize("make", [
    lambda: gpuloss.CategoricalGeneralizedCrossEntropy(q=1.5),
    lambda: gpuloss.TripletMarginLoss(p=0),
    lambda: gpuloss.MeanSquaredError(compat="keras4"),
    lambda: gpuloss.Huber(delta=-1.0),
    lambda: gpuloss.BinaryCrossentropy(label_smoothing=1.5),
    lambda: gpuloss.BinaryFocalCrossentropy(gamma=-1.0),
    lambda: gpuloss.CategoricalFocalCrossentropy(gamma=-2.0),
])
def test_bad_parameters_raise_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_custom_loss_subclass_uses_keras_reduction():
    class Doubled(gpuloss.Loss):
        def call(self, y_true, y_pred):
            return 2 * np.mean(np.abs(np.asarray(y_pred) - np.asarray(y_true)), axis=-1)

    y = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    p = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(Doubled()(y, p), 1.0)
    np.testing.assert_allclose(Doubled(reduction="sum")(y, p, sample_weight=[1.0, 0.0]), 1.0)


def test_reduction_names():
    assert gpuloss.Reduction.AUTO == "auto" and gpuloss.Reduction.SUM_OVER_BATCH_SIZE == "sum_over_batch_size"
    with pytest.raises(ValueError):
        gpuloss.Reduction.validate("bogus")

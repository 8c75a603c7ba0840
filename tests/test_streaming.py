"""Streaming accumulation: update/merge/result over batches equals the one-shot call on the
concatenated batches to 1e-6 relative, for every reduction with a scalar result."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import gpuloss
from gpuloss import _backend
from gpuloss.partial import Partial
from gpuloss.streaming import LossAccumulator

rng = np.random.default_rng(3)
B, C = 103, 5
SIZES = (7, 30, 1, 0, 65)  # odd batch sizes, an empty batch too
assert sum(SIZES) == B


def _batches(*arrays):
    out, start = [], 0
    for n in SIZES:
        out.append(tuple(None if a is None or np.ndim(a) == 0 else a[start:start + n] for a in arrays))
        start += n
    return out


def _inputs(name, dtype):
    y = (rng.random((B, C)) < 0.4).astype(dtype)
    p = (rng.random((B, C)) * 0.98 + 0.01).astype(dtype)
    x = rng.standard_normal((B, C)).astype(dtype)
    labels = rng.integers(0, C, B)
    labels[:8] = 2  # the first batch is entirely ignored by ignore_class=2
    mixed = y.copy()
    mixed[-3:] = np.where(x[-3:] > 0, 1.0, -1.0)  # the last batch breaks Hinge's all-{0,1} rule
    return {
        "mse": (gpuloss.MeanSquaredError, {}, (y, p)),
        "bce": (gpuloss.BinaryCrossentropy, {"label_smoothing": 0.05}, (y, p)),
        "cce_k3": (gpuloss.CategoricalCrossentropy, {"compat": "keras3"}, (np.eye(C, dtype=dtype)[labels], p)),
        "scce_ignore": (gpuloss.SparseCategoricalCrossentropy, {"ignore_class": 2}, (labels, p)),
        "scce_ignore_k3": (gpuloss.SparseCategoricalCrossentropy, {"ignore_class": 2, "compat": "keras3"},
                           (labels, p)),
        "hinge": (gpuloss.Hinge, {}, (y, x)),
        "squared_hinge_mixed": (gpuloss.SquaredHinge, {}, (mixed, x)),
        "kld": (gpuloss.KLDivergence, {}, (y, p)),
        "cosine": (gpuloss.CosineSimilarity, {}, (y, x)),
        "logcosh_3d": (gpuloss.LogCosh, {}, (np.stack([y, p], 1), np.stack([p, y], 1))),
        "triplet": (gpuloss.TripletMarginLoss, {"margin": 0.5}, (x, p, y)),
        "tversky_rows": (gpuloss.Tversky, {"axis": -1}, (y, p)),
    }[name]


NAMES = ["mse", "bce", "cce_k3", "scce_ignore", "scce_ignore_k3", "hinge", "squared_hinge_mixed", "kld", "cosine",
         "logcosh_3d", "triplet", "tversky_rows"]
MATRIX = [(n, np.float32) for n in NAMES] + [(n, np.float64) for n in ("mse", "scce_ignore", "squared_hinge_mixed")]


def _reductions(loss):
    if loss.compat == "keras3":
        return ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight"]
    return ["auto", "sum", "sum_over_batch_size", "mean_with_sample_weight"]


def _close(got, expected):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=1e-6,
                               atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name, dtype", MATRIX, ids=[f"{n}-{np.dtype(d).name}" for n, d in MATRIX])
def test_accumulated_equals_one_shot(name, dtype):
    cls, kwargs, inputs = _inputs(name, dtype)
    w = (rng.random(B) + 0.1).astype(dtype)
    weights = {"none": None, "scalar": 0.7, "(B,)": w, "(B,1)": w[:, None]}
    for wname, sw in weights.items():
        loss = cls(**kwargs)
        acc = LossAccumulator(loss)
        for *batch, bw in _batches(*inputs, sw):
            acc.update(*batch, sample_weight=sw if np.ndim(sw) == 0 else bw)
        for r in _reductions(loss):
            if wname == "scalar" and r == "mean_with_sample_weight":
                continue  # Keras's Σ w of a scalar weight is per call: documented
            want = cls(reduction=r, **kwargs)(*inputs, sample_weight=sw)
            got = acc.result(r)
            assert got.dtype == want.dtype, (wname, r)
            try:
                _close(got, want)
            except AssertionError as e:
                raise AssertionError(f"{name} weights {wname} reduction {r}: {e}") from None
        _close(acc.result(), cls(**kwargs)(*inputs, sample_weight=sw))  # the loss's own reduction


def test_merge_and_pickle():
    cls, kwargs, (y, x) = _inputs("squared_hinge_mixed", np.float32)
    w = rng.random(B).astype(np.float32)
    loss = cls(**kwargs)
    first, second = LossAccumulator(loss), LossAccumulator(loss)
    batches = _batches(y, x, w)
    for k, (yb, xb, wb) in enumerate(batches):
        (first if k % 2 else second).update(yb, xb, wb)  # positional weights, as in Loss.__call__
    restored = pickle.loads(pickle.dumps(second))
    merged = LossAccumulator(loss).merge(first).merge(restored)
    for r in ("auto", "sum", "mean_with_sample_weight"):
        _close(merged.result(r), cls(reduction=r)(y, x, sample_weight=w))
    # an accumulator pickled half-way goes on where it was
    acc = LossAccumulator(gpuloss.MeanSquaredError())
    for k, (yb, xb, wb) in enumerate(batches):
        acc.update(yb, xb, sample_weight=wb)
        if k == 1:
            acc = pickle.loads(pickle.dumps(acc))
    _close(acc.result(), gpuloss.MeanSquaredError()(y, x, sample_weight=w))
    assert isinstance(acc.state.final(), Partial)
    with pytest.raises(ValueError, match="different losses"):
        acc.merge(LossAccumulator(gpuloss.MeanAbsoluteError()))
    with pytest.raises(ValueError, match="different losses"):
        LossAccumulator(gpuloss.Huber(delta=1.0)).merge(LossAccumulator(gpuloss.Huber(delta=2.0)))
    with pytest.raises(ValueError, match="different losses"):
        LossAccumulator(gpuloss.Huber()).merge(LossAccumulator(gpuloss.Huber(compat="keras3")))


def test_results_and_reductions():
    assert gpuloss.LossAccumulator is LossAccumulator
    acc = LossAccumulator(gpuloss.MeanSquaredError(reduction="none"))
    with pytest.raises(ValueError, match="reduced values only"):
        acc.result()
    assert float(acc.result("sum")) == 0.0  # nothing accumulated
    acc3 = LossAccumulator(gpuloss.MeanSquaredError(compat="keras3"))
    with pytest.raises(ValueError, match="Invalid reduction"):
        acc3.result("auto")
    # loss names, classes and functions are accepted
    y, p = rng.random((9, 3)).astype(np.float32), rng.random((9, 3)).astype(np.float32)
    for spec in ("mse", gpuloss.MeanSquaredError, gpuloss.mean_squared_error, "MeanSquaredError"):
        _close(LossAccumulator(spec).update(y, p).result(), gpuloss.MeanSquaredError()(y, p))
    # dtypes: float64 in, float64 out; float16 in, float16 out (Keras 2); Keras 3 computes in float32
    assert LossAccumulator("mse").update(y.astype(np.float64), p.astype(np.float64)).result().dtype == np.float64
    assert LossAccumulator("mse").update(y, p.astype(np.float16)).result().dtype == np.float16
    assert LossAccumulator(gpuloss.MeanSquaredError(compat="keras3")).update(
        y.astype(np.float64), p.astype(np.float64)).result().dtype == np.float32
    with pytest.raises(TypeError, match="gpuloss loss"):
        LossAccumulator(lambda a, b: 0)


def test_losses_without_a_batch_axis_raise():
    y, p = rng.random((9, 3)).astype(np.float32), rng.random((9, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="cannot be accumulated"):
        LossAccumulator(gpuloss.Dice()).update(y, p)  # axis=None reduces the batch too
    with pytest.raises(ValueError, match="axis 0"):
        LossAccumulator(gpuloss.MeanSquaredError()).update(y[:, 0], p[:, 0])  # 1-D: the batch is the loss axis
    with pytest.raises(ValueError, match="compares the samples"):
        LossAccumulator(gpuloss.Circle()).update(np.arange(9) % 3, p)
    with pytest.raises(ValueError, match="Shapes are incompatible"):
        LossAccumulator(gpuloss.MeanSquaredError()).update(y, p[:5])


def test_custom_loss_subclass():
    class Scaled(gpuloss.Loss):
        def call(self, y_true, y_pred):
            return np.mean(np.abs(y_true - y_pred) * 2.0, axis=-1)

    y, p = rng.random((B, 3)).astype(np.float32), rng.random((B, 3)).astype(np.float32)
    w = rng.random(B).astype(np.float32)
    acc = LossAccumulator(Scaled())
    for yb, pb, wb in _batches(y, p, w):
        acc.update(yb, pb, sample_weight=wb)
    _close(acc.result(), Scaled()(y, p, sample_weight=w))
    _close(acc.result("sum"), Scaled(reduction="sum")(y, p, sample_weight=w))


def test_batches_of_other_array_kinds():
    torch = pytest.importorskip("torch")
    pd = pytest.importorskip("pandas")
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]
    p = (rng.random((B, C)) * 0.98 + 0.01).astype(np.float32)
    w = rng.random(B).astype(np.float32)
    acc = LossAccumulator(gpuloss.CategoricalCrossentropy())
    for k, (yb, pb, wb) in enumerate(_batches(y, p, w)):
        if k % 3 == 0:
            acc.update(torch.from_numpy(yb), torch.from_numpy(pb), sample_weight=torch.from_numpy(wb))
        elif k % 3 == 1:
            acc.update(pd.DataFrame(yb), pd.DataFrame(pb), sample_weight=pd.Series(wb))
        else:
            acc.update(yb, pb, sample_weight=wb)
    _close(acc.result(), gpuloss.CategoricalCrossentropy()(y, p, sample_weight=w))
    jax = pytest.importorskip("jax")
    acc = LossAccumulator(gpuloss.CategoricalCrossentropy())
    for yb, pb, wb in _batches(y, p, w):
        acc.update(jax.numpy.asarray(yb), jax.numpy.asarray(pb), sample_weight=jax.numpy.asarray(wb))
    _close(acc.result(), gpuloss.CategoricalCrossentropy()(y, p, sample_weight=w))


def test_dask_batches():
    da = pytest.importorskip("dask.array")
    dask = pytest.importorskip("dask")
    p = (rng.random((B, C)) * 0.98 + 0.01).astype(np.float32)
    y = (rng.random((B, C)) < 0.5).astype(np.float32)
    y[50:52] = -1.0  # Hinge's rule over all batches and chunks
    w = rng.random(B).astype(np.float32)
    acc = LossAccumulator(gpuloss.Hinge())
    with dask.config.set(scheduler="sync"):
        for yb, pb, wb in _batches(y, p, w):
            acc.update(da.from_array(yb, chunks=4), da.from_array(pb, chunks=(4, C)), sample_weight=wb)
    for r in ("auto", "sum", "mean_with_sample_weight"):
        _close(acc.result(r), gpuloss.Hinge(reduction=r)(y, p, sample_weight=w))
        with dask.config.set(scheduler="sync"):  # one update over chunks: a scalar's Σ w counts once
            scalar = LossAccumulator(gpuloss.Hinge()).update(da.from_array(y, chunks=10), da.from_array(p, chunks=10),
                                                            sample_weight=0.5)
        _close(scalar.result(r), gpuloss.Hinge(reduction=r)(y, p, sample_weight=0.5))
    with pytest.raises(ValueError, match="cannot be accumulated"):
        LossAccumulator(gpuloss.Dice()).update(da.from_array(y, chunks=10), da.from_array(p, chunks=10))


def test_device_batches_need_the_gpu_backend(monkeypatch):
    class FakeCAI:
        ndim = 2
        shape = (4, 3)
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    monkeypatch.delattr(_backend, "gpu_partial", raising=False)
    with pytest.raises(RuntimeError, match=r"gpuloss\[cuda12\]"):
        LossAccumulator(gpuloss.MeanSquaredError()).update(FakeCAI(), FakeCAI())
    with pytest.raises(TypeError, match="Host and device"):
        LossAccumulator(gpuloss.MeanSquaredError()).update(np.ones((4, 3)), FakeCAI())


def test_device_accumulation_on_a_gpu(cupy_gpu):
    cupy = cupy_gpu
    cls, kwargs, (labels, p) = _inputs("scce_ignore", np.float32)
    acc = LossAccumulator(cls(**kwargs))
    for lb, pb in _batches(labels, p):
        acc.update(cupy.asarray(lb), cupy.asarray(pb))
    got = acc.result()
    assert isinstance(got, cupy.ndarray)
    _close(cupy.asnumpy(got), cls(**kwargs)(labels, p))
    _close(pickle.loads(pickle.dumps(acc)).result(), cls(**kwargs)(labels, p))

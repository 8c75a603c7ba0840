"""The CuPy backend, wherever a GPU is present: the golden table, the CPU backend's numbers,
determinism, one launch per reduced call, devices and streams. Skips cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    _GPUS = cupy.cuda.runtime.getDeviceCount()
except Exception:  # CuPy installed, no driver
    _GPUS = 0
if _GPUS == 0:
    pytest.skip("no GPU", allow_module_level=True)

import gpuloss  # noqa: E402
from tests.test_golden import GOLDEN_CASES, check_result  # noqa: E402

GPU_CASES = GOLDEN_CASES


def _to_device(x):
    return cupy.asarray(x) if isinstance(x, np.ndarray) else x


@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_golden_on_gpu(case):
    obj = getattr(gpuloss, case.loss)
    kwargs = dict(case.params)
    if case.compat is not None:
        kwargs["compat"] = case.compat
    inputs = [_to_device(x) for x in case.inputs]
    if case.is_function:
        result = obj(*inputs, **kwargs)
    else:
        if case.reduction != "<default>":
            kwargs["reduction"] = case.reduction
        sw = None if case.sample_weight is None else _to_device(np.asarray(case.sample_weight))
        result = obj(**kwargs)(*inputs, sample_weight=sw)
    assert isinstance(result, cupy.ndarray)
    check_result(cupy.asnumpy(result), case)


REDUCTIONS = ["auto", "sum", "none"]


def _inputs(spec, rng, n=4099, c=17):
    p = rng.random((n, c), dtype=np.float32) * 0.98 + 0.01
    if spec.layout_kind in ("sparse", "sparse_strict"):
        return [rng.integers(0, c, n), p / p.sum(axis=1, keepdims=True)]
    if spec.inputs[0] == "anchor":
        return [rng.standard_normal((n, c)).astype(np.float32) for _ in range(3)]
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    if spec.fn_name in ("categorical_crossentropy", "categorical_focal_crossentropy", "kl_divergence"):
        p = p / p.sum(axis=1, keepdims=True)
    return [y, p]


SPECS = [s for s in gpuloss.LOSSES.values() if s.layout_kind != "direct"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.fn_name)
def test_gpu_matches_cpu(spec, reduction):
    rng = np.random.default_rng(5)
    host = _inputs(spec, rng)
    w = rng.random(host[0].shape[0]).astype(np.float32)
    loss = spec.cls(reduction=reduction if not spec.keras3_only or reduction != "auto" else "sum_over_batch_size")
    for weights in (None, w):
        cpu = loss(*host, sample_weight=weights)
        gpu = loss(*[cupy.asarray(x) for x in host], sample_weight=None if weights is None else cupy.asarray(weights))
        np.testing.assert_allclose(cupy.asnumpy(gpu), cpu, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_same_bits(dtype):
    rng = np.random.default_rng(6)
    y = cupy.asarray((rng.random((1 << 20, 3)) < 0.5).astype(dtype))
    x = cupy.asarray(rng.standard_normal((1 << 20, 3)).astype(dtype))
    loss = gpuloss.BinaryCrossentropy(from_logits=True)
    a, b = loss(y, x), loss(y, x)
    assert a.dtype == dtype and a.shape == ()
    assert cupy.asnumpy(a).tobytes() == cupy.asnumpy(b).tobytes()
    np.testing.assert_allclose(float(a), float(loss(cupy.asnumpy(y).astype(np.float32),
                                                    cupy.asnumpy(x).astype(np.float32))),
                               rtol=1e-3 if dtype == np.float16 else 1e-6)


class _CountingKernel:
    def __init__(self, kernel, counts):
        self.kernel, self.counts = kernel, counts

    def __call__(self, *args, **kwargs):
        self.counts.append(1)
        return self.kernel(*args, **kwargs)


@pytest.mark.parametrize("make", [lambda: gpuloss.CategoricalCrossentropy(from_logits=True),
                                  lambda: gpuloss.MeanSquaredError(),
                                  lambda: gpuloss.SparseCategoricalCrossentropy(from_logits=True)])
def test_reduced_call_is_one_launch(make):
    from gpuloss.kernels.cupy import backend as kb

    loss = make()
    x = cupy.random.standard_normal((1 << 16, 1000), dtype=cupy.float32)
    y = cupy.random.randint(0, 1000, 1 << 16) if isinstance(loss, gpuloss.SparseCategoricalCrossentropy) \
        else cupy.eye(1000, dtype=cupy.float32)[cupy.arange(1 << 16) % 1000]
    loss(y, x)
    counts = []
    for compiled in kb._CACHE.values():
        compiled.kernels = {k: _CountingKernel(v, counts) for k, v in compiled.kernels.items()}
    out = loss(y, x)
    assert out.shape == () and len(counts) == 1


def test_sparse_labels_out_of_range_give_nan_or_raise(monkeypatch):
    p = cupy.asarray(np.full((2, 3), 1 / 3, np.float32))
    v = gpuloss.SparseCategoricalCrossentropy(reduction="none")(cupy.asarray(np.array([0, 7])), p)
    assert np.isnan(cupy.asnumpy(v)[1]) and not np.isnan(cupy.asnumpy(v)[0])
    monkeypatch.setenv("GPULOSS_CHECK_LABELS", "1")
    with pytest.raises(ValueError, match="label value of 7"):
        gpuloss.SparseCategoricalCrossentropy()(cupy.asarray(np.array([0, 7])), p)


def test_current_stream_and_device_are_respected():
    y = cupy.ones((1000, 4), dtype=cupy.float32)
    p = cupy.zeros((1000, 4), dtype=cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        v = gpuloss.MeanSquaredError()(y, p)
    stream.synchronize()
    assert float(v) == 1.0
    if _GPUS > 1:
        with cupy.cuda.Device(1):
            y1, p1 = cupy.ones((10, 2), cupy.float32), cupy.zeros((10, 2), cupy.float32)
        r = gpuloss.MeanSquaredError()(y1, p1)
        assert r.device.id == 1 and float(r) == 1.0


def test_forced_backend_on_host_arrays():
    y = np.ones((100, 3), np.float32)
    p = np.zeros((100, 3), np.float32)
    r = gpuloss.MeanAbsoluteError(backend="cupy")(y, p)
    assert isinstance(r, np.ndarray) and float(r) == 1.0

"""Any array in, the same kind out: NumPy, pandas, torch, JAX, ``__array__`` objects on the host;
device arrays recognised (CuPy, ``__cuda_array_interface__``, DLPack) and routed to the GPU
backend; clear errors for host/device mixes and for several GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import gpuloss
from gpuloss import _backend, _interop

rng = np.random.default_rng(11)
B, C = 23, 4
Y = (rng.random((B, C)) < 0.4).astype(np.float32)
P = (rng.random((B, C)) * 0.98 + 0.01).astype(np.float32)
W = rng.random(B).astype(np.float32)
LABELS = rng.integers(0, C, size=B)


def _close(got, expected):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=1e-6, atol=0)


# ---- 1. sniffing, not importing -------------------------------------------------------------------

def test_numpy_calls_import_no_array_library():
    code = """
        import sys, numpy as np, gpuloss
        y = np.ones((8, 3), np.float32); p = np.full((8, 3), 0.5, np.float32)
        gpuloss.MeanSquaredError()(y, p, sample_weight=np.ones(8, np.float32))
        gpuloss.CategoricalCrossentropy(reduction="none")(y, p)
        gpuloss.mse(y.tolist(), p)
        acc = gpuloss.LossAccumulator(gpuloss.MeanSquaredError()); acc.update(y, p); acc.result()
        heavy = ("torch", "jax", "jaxlib", "cupy", "cudf", "pandas", "dask", "distributed", "pyarrow")
        print(sorted(m for m in heavy if m in sys.modules))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=dict(os.environ), check=True)
    assert out.stdout.strip() == "[]"


def test_classify_host_kinds():
    assert _interop.classify([Y, P, None]) == "host"
    assert _interop.classify([Y.tolist(), 0.5, 2.0]) == "host"
    assert _interop.classify([np.float32(1), np.array(2.0), None]) == "host"


# ---- fakes for device arrays (no GPU needed) ----------------------------------------------------

class FakeCAI:
    """An object exposing ``__cuda_array_interface__`` (like cuDF columns, Numba device arrays)."""

    def __init__(self, shape=(B, C), device=None):
        self.shape, self.ndim = shape, len(shape)
        if device is not None:
            self.device = device

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


class FakeDLPack:
    """A DLPack producer on a DLPack device (type 2 = CUDA, 1 = CPU)."""

    def __init__(self, device_type=2, device_id=0, shape=(B, C)):
        self._dev = (device_type, device_id)
        self.shape, self.ndim = shape, len(shape)

    def __dlpack_device__(self):
        return self._dev

    def __dlpack__(self, stream=None):  # pragma: no cover - never exported here
        raise NotImplementedError


def test_classify_device_kinds():
    assert _interop.classify([FakeCAI(), FakeCAI(), None]) == "device"
    assert _interop.classify([FakeDLPack(2, 0), FakeDLPack(2, 0), 0.5]) == "device"
    assert _interop.classify([FakeDLPack(13, 0), FakeCAI(), None]) == "device"  # CUDA managed memory
    assert _interop.classify([FakeDLPack(1, 0), FakeDLPack(1, 0), None]) == "host"  # DLPack on the CPU
    # scalars and 0-d arrays go with either side
    assert _interop.classify([FakeCAI(), FakeCAI(), np.float32(0.5)]) == "device"
    assert _interop.classify([FakeCAI(), FakeCAI(), np.array(0.5)]) == "device"
    assert _interop.classify([FakeCAI(), FakeCAI(), FakeDLPack(1, 0, shape=())]) == "device"


def test_cupy_recognised_by_module_when_imported(monkeypatch):
    cls = type("ndarray", (), {"ndim": 2, "device": types.SimpleNamespace(id=1)})
    cls.__module__ = "cupy._core.core"
    x = cls()
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert _interop._where(x)[0] == "host"  # cupy not imported: it cannot have made x
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    assert _interop._where(x) == ("device", 1)


def test_mixed_host_and_device_raises_type_error_naming_arguments():
    with pytest.raises(TypeError) as e:
        gpuloss.MeanSquaredError()(Y, FakeCAI())
    msg = str(e.value)
    assert "y_true is a NumPy array in host memory" in msg
    assert "y_pred is a FakeCAI" in msg and "GPU" in msg
    assert "cupy.asarray(y_true)" in msg and "cupy.asnumpy(y_pred)" in msg
    with pytest.raises(TypeError, match="sample_weight is a FakeDLPack on GPU 0"):
        gpuloss.MeanSquaredError()(Y, P, sample_weight=FakeDLPack(2, 0, shape=(B,)))
    with pytest.raises(TypeError, match=r"y_true is a Python list in host memory"):
        gpuloss.CategoricalCrossentropy()(Y.tolist(), FakeDLPack(2, 0))
    with pytest.raises(TypeError, match="anchor .* negative"):
        gpuloss.TripletMarginLoss()(Y, FakeCAI(), P)


def test_mixed_torch_and_device_hints_torch_moves():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError) as e:
        gpuloss.mse(torch.ones(B, C), FakeDLPack(2, 0))
    assert "y_true is a torch tensor on cpu" in str(e.value)


def test_inputs_on_different_gpus_raise_value_error():
    with pytest.raises(ValueError, match="y_true on GPU 0, y_pred on GPU 1"):
        gpuloss.MeanSquaredError()(FakeDLPack(2, 0), FakeDLPack(2, 1))
    with pytest.raises(ValueError, match="one GPU"):
        gpuloss.mse(FakeCAI(device=0), FakeCAI(device=3))
    with pytest.raises(ValueError, match="sample_weight on GPU 2"):
        gpuloss.Huber()(FakeDLPack(2, 0), FakeDLPack(2, 0), sample_weight=FakeDLPack(2, 2, shape=(B,)))


def test_unsupported_dlpack_device_raises():
    with pytest.raises(TypeError, match="DLPack device type 8"):
        gpuloss.mse(FakeDLPack(8, 0), FakeDLPack(8, 0))


def test_device_call_without_gpu_backend_says_how_to_install(monkeypatch):
    monkeypatch.delattr(_backend, "gpu_evaluate", raising=False)
    with pytest.raises(RuntimeError, match=r"gpuloss\[cuda12\]"):
        gpuloss.MeanSquaredError()(FakeCAI(), FakeCAI())
    with pytest.raises(RuntimeError, match=r"gpuloss\[cuda12\]"):
        _interop.evaluate_device(gpuloss.MeanSquaredError.spec, {"y_true": FakeCAI(), "y_pred": FakeCAI()},
                                 "keras2", "sum_over_batch_size", None, True)


def test_device_calls_route_to_the_gpu_backend(monkeypatch):
    """Device arrays become CuPy views on their GPU and go to ``_backend.gpu_evaluate`` (fakes)."""
    class FakeCupyArray:
        def __init__(self, src):
            self.src = src

    entered = []

    class Device:
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            entered.append(self.i)

        def __exit__(self, *a):
            return False

    fake_cupy = types.SimpleNamespace(ndarray=FakeCupyArray, asarray=FakeCupyArray,
                                      from_dlpack=lambda x: FakeCupyArray(("dlpack", x)),
                                      cuda=types.SimpleNamespace(Device=Device))
    monkeypatch.setattr(_interop, "_cupy", lambda: fake_cupy)
    calls = []

    def gpu_evaluate(spec, values, compat, reduction, sample_weight, is_class_call):
        calls.append((spec.fn_name, values, compat, reduction, sample_weight, is_class_call))
        return "device result"

    monkeypatch.setattr(_backend, "gpu_evaluate", gpu_evaluate, raising=False)
    y, p = FakeDLPack(2, 1), FakeCAI()
    out = _interop.evaluate_device(gpuloss.Huber.spec, {"y_true": y, "y_pred": p, "delta": 2.0}, "keras2",
                                   "sum", 0.5, True)
    assert out == "device result" and entered == [1]
    name, values, compat, reduction, sw, is_class = calls[0]
    assert name == "huber" and values["delta"] == 2.0
    assert (compat, reduction, sw, is_class) == ("keras2", "sum", 0.5, True)
    assert values["y_true"].src == ("dlpack", y) and values["y_pred"].src is p


# ---- 2. host arrays of other libraries ----------------------------------------------------------

HOST_LOSSES = [gpuloss.MeanSquaredError, gpuloss.CategoricalCrossentropy, gpuloss.BinaryCrossentropy,
               gpuloss.Hinge]


def test_objects_with_array_protocol():
    class Wrapped:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    got = gpuloss.MeanSquaredError()(Wrapped(Y), Wrapped(P), sample_weight=Wrapped(W))
    assert isinstance(got, np.ndarray)
    _close(got, gpuloss.MeanSquaredError()(Y, P, sample_weight=W))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pd():
    return pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def jax():
    return pytest.importorskip("jax")


@pytest.mark.parametrize("cls", HOST_LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
def test_torch_in_torch_out(torch, cls, reduction):
    loss = cls(reduction=reduction)
    got = loss(torch.from_numpy(Y), torch.from_numpy(P), sample_weight=torch.from_numpy(W))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    _close(got.numpy(), loss(Y, P, sample_weight=W))


def test_torch_dtypes_and_autograd(torch):
    y64, p64 = torch.from_numpy(Y.astype(np.float64)), torch.from_numpy(P.astype(np.float64)).requires_grad_()
    got = gpuloss.MeanSquaredError()(y64, p64)
    assert got.dtype == torch.float64 and not got.requires_grad
    _close(got.numpy(), gpuloss.MeanSquaredError()(Y.astype(np.float64), P.astype(np.float64)))
    half = gpuloss.MeanSquaredError()(torch.from_numpy(Y).half(), torch.from_numpy(P).half())
    assert half.dtype == torch.float16
    bf = gpuloss.MeanSquaredError()(torch.from_numpy(Y).bfloat16(), torch.from_numpy(P).bfloat16())
    assert bf.dtype == torch.float32  # bfloat16 computes and returns float32, as NumPy's does
    # sparse labels as int64 tensors, functions, the triplet loss
    scce = gpuloss.SparseCategoricalCrossentropy()
    _close(scce(torch.from_numpy(LABELS), torch.from_numpy(P)).numpy(), scce(LABELS, P))
    f = gpuloss.categorical_crossentropy(torch.from_numpy(Y), torch.from_numpy(P))
    assert isinstance(f, torch.Tensor) and f.shape == (B,)
    t = gpuloss.TripletMarginLoss()(torch.from_numpy(Y), torch.from_numpy(P), torch.from_numpy(P[::-1].copy()))
    _close(t.numpy(), gpuloss.TripletMarginLoss()(Y, P, P[::-1]))


def test_torch_inputs_are_not_copied(torch):
    ty, tp = torch.from_numpy(Y), torch.from_numpy(P).requires_grad_()
    host, weight, _ = _interop.to_host({"y_true": ty, "y_pred": tp}, ("y_true", "y_pred"), torch.from_numpy(W),
                                       "host")
    assert np.shares_memory(host["y_true"], Y) and np.shares_memory(host["y_pred"], P)
    assert np.shares_memory(weight, W)
    view = torch.from_numpy(Y).t()  # a strided view stays a view
    assert np.shares_memory(_interop.host_array(view), Y)


@pytest.mark.parametrize("cls", HOST_LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
def test_jax_in_jax_out(jax, cls, reduction):
    jnp = jax.numpy
    loss = cls(reduction=reduction)
    got = loss(jnp.asarray(Y), jnp.asarray(P), sample_weight=jnp.asarray(W))
    assert isinstance(got, jax.Array) and got.dtype == jnp.float32
    _close(np.asarray(got), loss(Y, P, sample_weight=W))


def test_jax_inputs_are_not_copied(jax):
    x = jax.numpy.asarray(P)
    host = _interop.host_array(x)
    assert host.__array_interface__["data"][0] == x.unsafe_buffer_pointer()
    f = gpuloss.binary_crossentropy(jax.numpy.asarray(Y), x)
    assert isinstance(f, jax.Array) and f.shape == (B,)


@pytest.mark.parametrize("cls", HOST_LOSSES, ids=lambda c: c.__name__)
def test_pandas_frames(pd, cls):
    index = pd.Index([f"r{i}" for i in range(B)], name="row")
    y, p = pd.DataFrame(Y, index=index), pd.DataFrame(P, index=index)
    w = pd.Series(W, index=index)
    reduced = cls()(y, p, sample_weight=w)
    assert type(reduced) is np.ndarray and reduced.shape == () and reduced.dtype == np.float32
    _close(reduced, cls()(Y, P, sample_weight=W))
    none = cls(reduction="none")(y, p, sample_weight=w)
    assert isinstance(none, pd.Series) and none.index.equals(index)
    _close(none.to_numpy(), cls(reduction="none")(Y, P, sample_weight=W))


def test_pandas_series_and_dtypes(pd):
    s_true, s_pred = pd.Series(Y[:, 0], index=range(100, 100 + B)), pd.Series(P[:, 0], index=range(100, 100 + B))
    # a Series is one row of values for a function (Keras reduces the last axis)...
    _close(gpuloss.mse(s_true, s_pred), gpuloss.mse(Y[:, 0], P[:, 0]))
    # ...and per-sample values keep the index (Keras 3 expands (B,) labels against (B, 1) predictions)
    none = gpuloss.MeanSquaredError(reduction="none", compat="keras3")(s_true, s_pred.to_frame())
    assert isinstance(none, pd.Series) and list(none.index) == list(range(100, 100 + B))
    # no copy for single-dtype numeric frames
    df = pd.DataFrame(P)
    assert np.shares_memory(_interop.host_array(df), df.to_numpy())
    # nullable and Arrow-backed columns: missing values are NaN
    nullable = pd.Series([0.5, None, 0.25], dtype="Float64")
    np.testing.assert_array_equal(np.isnan(_interop.host_array(nullable)), [False, True, False])
    pytest.importorskip("pyarrow")
    arrow = pd.Series(P[:, 0], dtype="float32[pyarrow]")
    _close(gpuloss.mse(s_true, arrow), gpuloss.mse(Y[:, 0], P[:, 0]))


def test_result_kind_follows_y_pred(torch, pd):
    got = gpuloss.MeanSquaredError(reduction="none")(pd.DataFrame(Y), torch.from_numpy(P))
    assert isinstance(got, torch.Tensor)
    got = gpuloss.MeanSquaredError(reduction="none")(torch.from_numpy(Y), P)
    assert isinstance(got, torch.Tensor)  # y_pred is NumPy: the first other input decides
    got = gpuloss.MeanSquaredError(reduction="none")(Y, P, sample_weight=torch.from_numpy(W))
    assert isinstance(got, np.ndarray)  # the weights never decide


# ---- device kinds on a real GPU (skipped without one) -------------------------------------------

@pytest.fixture(scope="module")
def cupy(cupy_gpu):
    return cupy_gpu


@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
def test_cupy_in_cupy_out(cupy, reduction):
    loss = gpuloss.CategoricalCrossentropy(reduction=reduction)
    got = loss(cupy.asarray(Y), cupy.asarray(P), sample_weight=cupy.asarray(W))
    assert isinstance(got, cupy.ndarray)
    _close(cupy.asnumpy(got), loss(Y, P, sample_weight=W))


def test_torch_cuda_in_torch_cuda_out(cupy, torch):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    got = gpuloss.MeanSquaredError()(torch.from_numpy(Y).cuda(), torch.from_numpy(P).cuda())
    assert isinstance(got, torch.Tensor) and got.is_cuda
    _close(got.cpu().numpy(), gpuloss.MeanSquaredError()(Y, P))


def test_numpy_with_cupy_raises_type_error(cupy):
    with pytest.raises(TypeError, match="y_pred is a CuPy array on GPU 0"):
        gpuloss.MeanSquaredError()(Y, cupy.asarray(P))


def test_two_gpus_raise_value_error(cupy):
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU")
    with cupy.cuda.Device(1):
        p1 = cupy.asarray(P)
    with pytest.raises(ValueError, match="GPU 1"):
        gpuloss.MeanSquaredError()(cupy.asarray(Y), p1)

"""Which kind of array a call received, and how to give the result back as that kind.

Input types are recognised without importing their libraries: a library the caller has not
imported cannot have produced the caller's arrays, so every test looks in ``sys.modules``
first, and a NumPy call imports nothing.

Kinds of a call (:func:`classify`):

``"host"``    NumPy arrays, lists and scalars, pandas Series/DataFrames, torch CPU tensors,
              JAX CPU arrays, anything with ``__array__``: the CPU kernels, on the caller's
              memory where it allows (:func:`to_host`), the result as the caller's kind.
``"device"``  CuPy arrays, anything with ``__cuda_array_interface__`` (cuDF, Numba device
              arrays), DLPack producers on a CUDA device (torch CUDA tensors, JAX GPU arrays):
              the GPU kernels (:func:`evaluate_device`), zero-copy, on the inputs' GPU.
``"dask"``    any Dask array (:mod:`gpuloss._dask`).

Host and device arrays in one call raise ``TypeError`` (naming which argument lives where and
how to move it); device arrays on different GPUs raise ``ValueError``. Python scalars and 0-d
arrays go with either side.

The result's kind follows ``y_pred`` (for the triplet loss, the first input), else the first
input that is not a NumPy array, list or scalar; ``sample_weight`` never decides it. torch in,
torch out (a CPU tensor sharing the result's memory, without autograd history); JAX in, JAX out
(on the input's device); pandas in: per-sample values as a Series (a DataFrame for 2-D values)
with the caller's index, reduced values as the 0-d NumPy array a NumPy call returns (Keras
returns a scalar tensor; a 0-d array keeps the dtype, and ``float()`` of it is the Python float).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["classify", "to_host", "host_array", "evaluate_device", "describe"]

#: the argument names of a call as ``_pipeline.evaluate`` lists them (inputs, then the weights)
_DEFAULT_NAMES = {3: ("y_true", "y_pred", "sample_weight"),
                  4: ("anchor", "positive", "negative", "sample_weight")}

# DLPack device types (dlpack.h: DLDeviceType)
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_ROCM, _DL_ROCM_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 10, 11, 13
_DL_ON_DEVICE = frozenset({_DL_CUDA, _DL_ROCM, _DL_CUDA_MANAGED})
_DL_ON_HOST = frozenset({_DL_CPU, _DL_CUDA_HOST, _DL_ROCM_HOST})

_GPU_EXTRA = ("the GPU backend is not installed: pip install 'gpuloss[cuda12]' "
              "(or 'gpuloss[cuda13]' for CUDA 13)")


# ---- recognising arrays -------------------------------------------------------------------------

def _lib(x: Any) -> str:
    """The top-level package that defines ``type(x)`` ("numpy", "torch", "jaxlib", ...)."""
    return (type(x).__module__ or "").partition(".")[0]


def _from(x: Any, *libs: str) -> bool:
    lib = _lib(x)
    return lib in libs and lib in sys.modules


def _is_dask(x: Any) -> bool:
    if "dask" not in sys.modules:
        return False
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def _is_torch(x: Any) -> bool:
    return _from(x, "torch") and isinstance(x, sys.modules["torch"].Tensor)


def _is_jax(x: Any) -> bool:
    if not _from(x, "jax", "jaxlib"):
        return False
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def _is_pandas(x: Any) -> bool:
    if not _from(x, "pandas"):
        return False
    pd = sys.modules["pandas"]
    return isinstance(x, (pd.Series, pd.DataFrame, pd.Index))


def _dlpack_device(x: Any):
    f = getattr(x, "__dlpack_device__", None)
    if f is None or not callable(f):
        return None
    try:
        kind, index = f()
    except Exception:  # e.g. torch tensors on devices DLPack cannot describe
        return None
    return int(kind), int(index)


def _has_cai(x: Any) -> bool:
    try:
        return getattr(x, "__cuda_array_interface__", None) is not None
    except Exception:  # torch CPU tensors raise from the property
        return False


def _where(x: Any) -> tuple[str, int | None]:
    """("neutral" | "host" | "device" | "dask", GPU ordinal or None) of one argument."""
    if x is None or isinstance(x, (bool, int, float, np.generic)):
        return "neutral", None
    if isinstance(x, np.ndarray):
        return ("neutral" if x.ndim == 0 else "host"), None
    if isinstance(x, (list, tuple)):
        return "host", None
    if _is_dask(x):
        return "dask", None
    if _from(x, "cupy"):
        dev = getattr(x, "device", None)
        return _zero_d("device", x), getattr(dev, "id", None)
    if _is_torch(x):
        t = x.device.type
        if t == "cpu":
            return _zero_d("host", x), None
        if t == "cuda":
            return _zero_d("device", x), x.device.index
        raise TypeError(f"{describe(x)} is on a device gpuloss cannot read ({x.device}); move it with "
                        f".cpu() (host kernels) or .cuda() (GPU kernels)")
    dl = _dlpack_device(x)
    if dl is not None:
        kind, index = dl
        if kind in _DL_ON_DEVICE:
            return _zero_d("device", x), index
        if kind in _DL_ON_HOST:
            return _zero_d("host", x), None
        raise TypeError(f"a {type(x).__name__} lives on a device gpuloss cannot read (DLPack device type {kind}); "
                        f"move it to host memory or to a CUDA GPU")
    if _from(x, "cudf") or _has_cai(x):
        return _zero_d("device", x), _device_ordinal(x)
    return _zero_d("host", x), None


def _zero_d(side: str, x: Any) -> str:
    """0-d arrays go with either side (as scalars do in torch and CuPy)."""
    return "neutral" if getattr(x, "ndim", None) == 0 else side


def _device_ordinal(x: Any) -> int | None:
    """The GPU of a device array, where the object tells it without a CUDA call."""
    dev = getattr(x, "device", None)
    if isinstance(dev, int):
        return dev
    ordinal = getattr(dev, "id", None)
    if ordinal is None:
        ordinal = getattr(dev, "index", None)
    return ordinal if isinstance(ordinal, int) else None


def _side(x: Any) -> tuple[str, int | None]:
    """Like :func:`_where`, with Dask arrays on the side of their chunks."""
    w = _where(x)
    if w[0] == "dask":
        meta = getattr(x, "_meta", None)
        return ("device" if meta is not None and _where(meta)[0] == "device" else "host"), None
    return w


def classify(objs: Sequence[Any], names: Sequence[str] | None = None) -> str:
    """"host", "device" or "dask" for the arguments of one call (inputs, then sample_weight).

    Raises ``TypeError`` when host and device arrays are mixed and ``ValueError`` when device
    arrays are on different GPUs. ``names`` are the arguments' names for the messages (by
    default the names ``_pipeline.evaluate`` passes them in).
    """
    if all(o is None or type(o) is np.ndarray or isinstance(o, (float, int)) for o in objs):
        return "host"  # the NumPy call: nothing else to look at
    if names is None:
        names = _DEFAULT_NAMES.get(len(objs)) or [f"argument {i + 1}" for i in range(len(objs))]
    host, device, dask = [], [], False
    for name, obj in zip(names, objs):
        dask = dask or _is_dask(obj)
        side, ordinal = _side(obj)
        if side == "host":
            host.append((name, obj))
        elif side == "device":
            device.append((name, obj, ordinal))
    if host and device:
        raise TypeError(_mixed_message(host, device))
    ordinals = {o for _, _, o in device if o is not None}
    if len(ordinals) > 1:
        where = ", ".join(f"{n} on GPU {o}" for n, _, o in device if o is not None)
        raise ValueError(f"The inputs of one call must be on one GPU; got {where}. Copy them to one device "
                         f"first (CuPy: `with cupy.cuda.Device(i): x = cupy.asarray(x)`; torch: "
                         f"`x.to(device)`; JAX: `jax.device_put(x, device)`)")
    if dask:
        return "dask"
    return "device" if device else "host"


def describe(x: Any) -> str:
    """What ``x`` is and where its memory lives, for messages."""
    if _is_dask(x):
        meta = getattr(x, "_meta", None)
        chunks = "CuPy chunks on the GPU" if meta is not None and _from(meta, "cupy") else "NumPy chunks in host memory"
        return f"a Dask array of {chunks}"
    if isinstance(x, np.ndarray):
        return "a NumPy array in host memory"
    if isinstance(x, (list, tuple)):
        return f"a Python {type(x).__name__} in host memory"
    if _is_torch(x):
        return f"a torch tensor on {x.device}"
    if _is_jax(x):
        devs = getattr(x, "devices", None)
        try:
            where = ", ".join(str(d) for d in devs()) if devs else "?"
        except Exception:
            where = "?"
        return f"a JAX array on {where}"
    if _from(x, "cupy"):
        return f"a CuPy array on GPU {_device_ordinal(x)}"
    if _is_pandas(x):
        return f"a pandas {type(x).__name__} in host memory"
    if _from(x, "cudf"):
        return f"a cuDF {type(x).__name__} on the GPU"
    if _from(x, "numba"):
        return "a Numba device array on the GPU"
    try:
        kind, ordinal = _where(x)
    except TypeError:
        kind, ordinal = "other", None
    if kind == "device":
        gpu = "a GPU" if ordinal is None else f"GPU {ordinal}"
        return f"a {type(x).__name__} on {gpu}"
    return f"a {type(x).__name__} in host memory"


def _to_device_hint(name: str, device_obj: Any, device_name: str) -> str:
    if _is_torch(device_obj):
        return f"`{name} = torch.as_tensor({name}, device={device_name}.device)`"
    if _is_jax(device_obj):
        return f"`{name} = jax.device_put({name}, {device_name}.device)`"
    if _from(device_obj, "cudf"):
        return f"`{name} = cudf.from_pandas({name})` (or `cudf.Series({name})`)"
    if _from(device_obj, "numba"):
        return f"`{name} = numba.cuda.to_device({name})`"
    return f"`{name} = cupy.asarray({name})`"


def _to_host_hint(name: str, obj: Any) -> str:
    if _is_torch(obj):
        return f"`{name}.cpu()`"
    if _is_jax(obj):
        return f"`jax.device_get({name})`"
    if _from(obj, "cudf"):
        return f"`{name}.to_pandas()`"
    if _from(obj, "numba"):
        return f"`{name}.copy_to_host()`"
    if _from(obj, "cupy"):
        return f"`{name}.get()`"
    return f"`cupy.asnumpy({name})`"


def _mixed_message(host, device) -> str:
    dname, dobj, _ = device[0]
    lines = [f"{n} is {describe(o)}" for n, o in host] + [f"{n} is {describe(o)}" for n, o, _ in device]
    to_dev = " and ".join(_to_device_hint(n, dobj, dname) for n, _ in host)
    to_host = " and ".join(_to_host_hint(n, o) for n, o, _ in device)
    return (f"Host and device arrays are mixed in one call: {'; '.join(lines)}. Pass them all on one side: "
            f"move the host arguments to the GPU ({to_dev}), or bring the device arguments to host "
            f"memory ({to_host}).")


# ---- host arrays --------------------------------------------------------------------------------

def host_array(x: Any) -> Any:
    """A NumPy view of a host array of another library (a copy only where its memory does not
    allow one: mixed-dtype frames, nullable columns, bfloat16). NumPy arrays, lists and scalars
    come back unchanged (the pipeline applies TensorFlow's conversion rules to them)."""
    if x is None or isinstance(x, (np.ndarray, np.generic, list, tuple, bool, int, float)):
        return x
    if _from(x, "cupy"):  # loss options given on the device (per-class alpha): a small copy
        return x.get()
    if _is_torch(x):
        t = x.detach()
        if t.device.type != "cpu":
            raise TypeError(f"{describe(x)} is not in host memory; move it with .cpu()")
        t = t.resolve_conj().resolve_neg()
        if t.dtype == sys.modules["torch"].bfloat16:
            t = t.float()
        return t.numpy()
    if _is_pandas(x):
        a = x.to_numpy()
        if a.dtype == object:  # nullable / Arrow-backed columns: missing values become NaN
            a = x.to_numpy(dtype=np.float64, na_value=np.nan)
        return a
    a = np.asarray(x)  # JAX CPU arrays: a read-only view of the buffer; anything with __array__
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a


def _lead(values: dict[str, Any], inputs: Sequence[str]) -> Any:
    """The input whose kind the result takes (y_pred first, then the others in order)."""
    order = ["y_pred"] + [n for n in inputs if n != "y_pred"] if "y_pred" in inputs else list(inputs)
    for n in order:
        x = values.get(n)
        if x is not None and not isinstance(x, (np.ndarray, np.generic, list, tuple, bool, int, float)):
            return x
    return None


def to_host(values: dict[str, Any], inputs: Sequence[str], sample_weight: Any, kind: str
            ) -> tuple[dict[str, Any], Any, Callable[[np.ndarray, bool], Any]]:
    """Host (NumPy) values, weights, and the function giving the result back as the caller's kind."""
    if kind == "device":
        _gpu_evaluate()  # without the GPU backend: how to install it
        raise RuntimeError("device arrays reached the host pipeline: gpuloss._pipeline.evaluate must send kind "
                           "'device' to gpuloss._interop.evaluate_device")
    lead = _lead(values, inputs)
    out = {k: host_array(v) if k in inputs or _foreign(v) else v for k, v in values.items()}
    return out, host_array(sample_weight), _host_wrapper(lead)


def _foreign(x: Any) -> bool:
    """An option value (Circle's references, per-class alpha) from another array library."""
    return not isinstance(x, (np.ndarray, np.generic, list, tuple, bool, int, float, str, type(None))) and \
        (_is_torch(x) or _is_jax(x) or _is_pandas(x))


def _identity(result: np.ndarray, reduced: bool) -> np.ndarray:
    return result


def _host_wrapper(lead: Any) -> Callable[[np.ndarray, bool], Any]:
    if lead is None:
        return _identity
    if _is_torch(lead):
        torch = sys.modules["torch"]

        def to_torch(result, reduced):
            r = np.asarray(result)
            if not r.flags.writeable or not r.flags.c_contiguous:
                r = np.array(r, order="C")
            return torch.from_numpy(r)

        return to_torch
    if _is_jax(lead):
        jax = sys.modules["jax"]
        try:
            devices = list(lead.devices())
        except Exception:
            devices = []

        def to_jax(result, reduced):
            if len(devices) == 1:
                return jax.device_put(np.asarray(result), devices[0])
            return jax.numpy.asarray(result)

        return to_jax
    if _is_pandas(lead):
        pd = sys.modules["pandas"]
        index = lead if isinstance(lead, pd.Index) else lead.index

        def to_pandas(result, reduced):
            # a reduced result is a 0-d NumPy array, as for NumPy inputs (Keras returns a scalar
            # tensor); per-sample values keep the caller's index
            r = np.asarray(result)
            if reduced or r.ndim == 0 or r.shape[0] != len(index):
                return r
            if r.ndim == 1:
                return pd.Series(r, index=index)
            if r.ndim == 2:
                return pd.DataFrame(r, index=index)
            return r

        return to_pandas
    return _identity  # objects with __array__: NumPy results


# ---- device arrays ------------------------------------------------------------------------------

def _gpu_evaluate():
    from . import _backend

    fn = getattr(_backend, "gpu_evaluate", None)
    if fn is None:
        raise RuntimeError(f"Device arrays need the GPU backend, but {_GPU_EXTRA}")
    return fn


def _cupy():
    try:
        import cupy
    except ImportError:
        raise RuntimeError(f"Device arrays need CuPy, but {_GPU_EXTRA}") from None
    return cupy


def to_cupy(x: Any) -> Any:
    """A CuPy view of a device array (cuDF DataFrames are copied: their columns are separate
    buffers). Scalars and 0-d host arrays come back unchanged."""
    if x is None or _where(x)[0] == "neutral" and not _from(x, "cupy"):
        return x
    cupy = _cupy()
    if isinstance(x, cupy.ndarray):
        return x
    if _from(x, "cudf"):
        if hasattr(x, "to_cupy"):
            try:
                return x.to_cupy(na_value=np.nan)
            except TypeError:
                return x.to_cupy()
        return cupy.asarray(x)
    if _is_torch(x):
        x = x.detach().resolve_conj().resolve_neg()
    if _has_cai(x):
        return cupy.asarray(x)
    return cupy.from_dlpack(x)


def _device_wrapper(lead: Any) -> Callable[[Any, bool], Any]:
    if lead is None or _from(lead, "cupy"):
        return _identity
    if _is_torch(lead):
        torch = sys.modules["torch"]
        return lambda r, reduced: torch.from_dlpack(r)
    if _is_jax(lead):
        jax = sys.modules["jax"]
        return lambda r, reduced: jax.dlpack.from_dlpack(r)
    if _from(lead, "cudf"):
        cudf = sys.modules["cudf"]
        index = getattr(lead, "index", None)

        def to_cudf(r, reduced):
            if reduced or r.ndim == 0 or index is None or r.shape[0] != len(index):
                return r
            return cudf.Series(r, index=index) if r.ndim == 1 else cudf.DataFrame(r, index=index)

        return to_cudf
    if _from(lead, "numba"):
        cuda = sys.modules["numba.cuda"] if "numba.cuda" in sys.modules else None
        if cuda is not None:
            return lambda r, reduced: cuda.as_cuda_array(r)
    return _identity  # other __cuda_array_interface__ producers: CuPy results


def evaluate_device(spec, values: dict[str, Any], compat: str, reduction: Any, sample_weight: Any,
                    is_class_call: bool, backend: str | None = None):
    """A call on device arrays: CuPy views on the inputs' GPU, the GPU backend's kernels
    (``gpuloss._backend.gpu_evaluate``), the result as the caller's kind on the same GPU. Nothing
    here synchronises with the host."""
    gpu_evaluate = _gpu_evaluate()
    cupy = _cupy()
    lead = _lead(values, spec.inputs)
    ordinals = [_where(values[n])[1] for n in spec.inputs] + [_where(sample_weight)[1]]
    ordinal = next((o for o in ordinals if o is not None), None)
    with cupy.cuda.Device(ordinal) if ordinal is not None else nullcontext():
        device_values = {k: to_cupy(v) if k in spec.inputs else v for k, v in values.items()}
        result = gpu_evaluate(spec, device_values, compat, reduction, to_cupy(sample_weight), is_class_call)
        return _device_wrapper(lead)(result, is_class_call and reduction not in ("none", None))


def device_partial(spec, values: dict[str, Any], compat: str, sample_weight: Any):
    """The partial triple of a reduced call on device arrays, left on the device: the GPU
    backend's ``gpu_partial`` returns ``[Σ w·ℓ, Σ w, count, masked]`` as a float64 device vector."""
    from . import _backend

    fn = getattr(_backend, "gpu_partial", None)
    if fn is None:
        raise RuntimeError(f"Accumulating device arrays needs the GPU backend, but {_GPU_EXTRA}")
    cupy = _cupy()
    ordinals = [_where(values[n])[1] for n in spec.inputs] + [_where(sample_weight)[1]]
    ordinal = next((o for o in ordinals if o is not None), None)
    with cupy.cuda.Device(ordinal) if ordinal is not None else nullcontext():
        device_values = {k: to_cupy(v) if k in spec.inputs else v for k, v in values.items()}
        return fn(spec, device_values, compat, to_cupy(sample_weight))

"""The CuPy backend: the Keras pipeline of :mod:`gpuloss._pipeline` on device arrays.

Shapes, alignment and parameters are the host pipeline's own functions (they only look at
shapes, or go through NumPy's array-function protocol, which CuPy implements); the work is
one launch of a kernel generated from the loss's definition (:mod:`gpuloss.kernels.cupy`).
A reduced call leaves its value on the device as a 0-d array: nothing here waits for the GPU,
except the checked label mode (``GPULOSS_CHECK_LABELS=1``), which reads the bad-label count.

Out-of-range sparse labels give NaN for their rows on the GPU (as TensorFlow does there); the
checked mode raises ``ValueError`` as the CPU backend always does.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from . import _pipeline as P
from .partial import Partial  # noqa: F401  (the host twin of gpu_partial's vector)

__all__ = ["gpu_evaluate", "gpu_partial"]

_MODES = {"sum": 0, "sum_over_batch_size": 1, "mean": 1, "auto": 1, "mean_with_sample_weight": 2}
_KIND = {"int8": 0, "int16": 1, "int32": 2, "int64": 3, "uint8": 4, "uint16": 5, "uint32": 6, "uint64": 7,
         "bool": 8, "float16": 9, "float32": 10, "float64": 11, "bfloat16": 12}
_COUNTERS: dict[tuple[int, int], Any] = {}
_NULL = np.uint64(0)


def _cp():
    import cupy

    return cupy


def _as_device(x: Any, what: str):
    cp = _cp()
    # Python scalars (a sample_weight of 0.7 next to device inputs) follow the host pipeline's
    # conversion (TensorFlow's: Python floats become float32); cupy.asarray(0.7) is float64,
    # which made float64 losses differ from the CPU backend's by float32's rounding of 0.7
    a = x if isinstance(x, cp.ndarray) else cp.asarray(P.as_array(x, what))
    # bfloat16 (ml_dtypes' type, of kind "V") is numeric: the kernels read it, as the host admits it
    if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
        raise TypeError(f"{what} must be numeric, got an array of dtype {a.dtype}")
    return a


def _dtypes(y_pred, compat: str, is_class_call: bool):
    """(kernel input dtype name, output dtype): 16-bit floats stay 16-bit in memory (the kernels
    compute in float32); Keras 3 classes compute and return float32."""
    name = y_pred.dtype.name
    if compat == "keras3" and is_class_call:
        return ("float32" if name not in ("float16", "bfloat16") else name), np.dtype(np.float32)
    if name == "bfloat16":
        # returned as float32, as the CPU backend returns it for the same inputs (host bfloat16
        # arrays and torch tensors compute and return float32); the GPU returned bfloat16
        return name, np.dtype(np.float32)
    if name in ("float16", "float32", "float64"):
        return name, y_pred.dtype
    return "float32", np.dtype(np.float32)


def _counter(cp):
    dev = cp.cuda.runtime.getDevice()
    stream = cp.cuda.get_current_stream().ptr
    key = (dev, stream)
    c = _COUNTERS.get(key)
    if c is None:
        c = _COUNTERS[key] = cp.zeros(1, dtype=cp.uint32)
    return c


def _ptr_or_null(a):
    return _NULL if a is None else a


def _sm_count(cp) -> int:
    dev = cp.cuda.Device()
    return dev.attributes["MultiProcessorCount"]


#: shared memory a block may use, static and dynamic together, without the opt-in attribute
_SHARED_PER_BLOCK = 48 * 1024


def _dynamic_shared_budget(kernel) -> int:
    """Dynamic shared memory a launch of ``kernel`` may ask for: CUDA refuses a launch whose
    dynamic and static (``__shared__``) memory together exceed 48 KiB. (Staging rows in all of
    the 48 KiB failed: the rows kernels' static arrays take 1.3-1.6 KiB.)"""
    return _SHARED_PER_BLOCK - kernel.shared_size_bytes


def _launch(plan, dtype: str, arrays, labels, params, weights, mode: int | None, out):
    """One launch: per-row values into ``out`` (mode None) or the reduced value (result vector)."""
    from .kernels.cupy import backend as kb
    from .kernels.cupy import templates

    cp = _cp()
    program = plan.program
    colp = tuple(sorted(k for k, v in params.items() if isinstance(v, np.ndarray)))
    compiled = kb.compile_program(program, dtype, colp)
    elems = ["p"] if program.sparse else list(program.elements)
    first = arrays[elems[0]]
    R, C = first.shape
    # every element array is read as `dtype`: convert the others. (A float32 y_true next to a
    # bfloat16 y_pred was passed unconverted, and the kernel read its float32 bytes as pairs of
    # bfloat16.) NumPy knows bfloat16 through ml_dtypes' type: take it from the input that has it.
    storage = (next(a.dtype for a in arrays.values() if a.dtype.name == dtype) if dtype == "bfloat16"
               else np.dtype(dtype))
    views = {e: (arrays[e] if arrays[e].dtype.name == dtype else arrays[e].astype(storage)) for e in elems}
    values = []
    for n in program.param_names():
        v = params[n]
        values.append(cp.asarray(v, dtype=cp.float64) if isinstance(v, np.ndarray) else np.float64(v))
    reducing = mode is not None
    w = weights
    w_kind = _KIND[w.dtype.name] if w is not None else 0
    w_step = np.int64(0 if (w is None or w.size == 1) else 1)
    result = cp.empty(5, dtype=cp.float64) if reducing else None
    counter = _counter(cp) if reducing else None
    out_kind = _KIND[out.dtype.name]
    flat = ("flat" in compiled.kernels and all(v.flags.c_contiguous for v in views.values())
            and (C == 1 or not reducing or w_step == 0) and (reducing or C == 1))
    sms = _sm_count(cp)
    if flat:
        N = R * C
        block = templates.GL_BLOCK
        grid = max(1, min(-(-N // (block * 8)), 8 * sms))
        partials = cp.empty(grid * 4, dtype=cp.float64) if reducing else None
        args = [views[e].reshape(-1) for e in elems] + [np.int64(N), np.int64(C)] + values
        args += [out, np.int32(out_kind), _ptr_or_null(w), np.int32(w_kind), w_step, _ptr_or_null(partials),
                 _ptr_or_null(counter), _ptr_or_null(result), np.int32(mode or 0)]
        compiled.kernels["flat"]((grid,), (block,), tuple(args))
        return result, None
    rows = compiled.kernels["rows"]
    lp = kb.launch_plan(program, dtype, R, C, sms, column_params=colp)
    if lp.shared_bytes:  # staged block rows: within what the kernel's static arrays leave
        lp = kb.launch_plan(program, dtype, R, C, sms, max_dynamic_shared=_dynamic_shared_budget(rows),
                            column_params=colp)
    partials = cp.empty(lp.grid * 4, dtype=cp.float64) if reducing else None
    nbad = None if reducing else cp.zeros(1, dtype=cp.uint64)
    args = []
    for e in elems:
        v = views[e]
        item = v.dtype.itemsize
        args += [v, np.int64(v.strides[0] // item), np.int64(v.strides[1] // item)]
    if program.sparse:
        args += [labels, np.int32(_KIND[labels.dtype.name]), np.int64(labels.strides[0] // labels.dtype.itemsize),
                 np.int32(plan.ignore_class is not None),
                 np.int64(-1 if plan.ignore_class is None else plan.ignore_class)]
    args += [np.int64(R), np.int64(C)] + values + [np.int32(lp.G), np.int64(lp.stage_elems)]
    args += [out, np.int32(out_kind), _ptr_or_null(nbad), _ptr_or_null(w), np.int32(w_kind), w_step,
             _ptr_or_null(partials), _ptr_or_null(counter), _ptr_or_null(result), np.int32(mode or 0)]
    rows((lp.grid,), (lp.block,), tuple(args), shared_mem=lp.shared_bytes)
    return result, nbad


def _check_labels(bad_count, labels, C: int, ignore_class) -> None:
    if os.environ.get("GPULOSS_CHECK_LABELS") == "1" and bad_count is not None and int(bad_count) > 0:
        P._raise_bad_labels(_cp().asnumpy(labels), C, ignore_class)


def _prepare(spec, values, compat, sample_weight, is_class_call):
    raw = [values[n] for n in spec.inputs]
    inputs = [_as_device(x, n) for x, n in zip(raw, spec.inputs)]
    dtype, out_dtype = _dtypes(inputs[1], compat, is_class_call)
    if len(inputs) == 2 and (is_class_call or (compat == "keras3" and spec.k3_function_aligns)):
        y, p = inputs
        inputs = list(P.align_keras3(y, p) if compat == "keras3" else P.align_keras2(y, p))
    options = {k: v for k, v in values.items() if k not in spec.inputs}
    plan = spec.body(*inputs, **options, compat=compat)
    sw = None if sample_weight is None else _as_device(sample_weight, "sample_weight")
    compute = np.dtype("float32" if dtype in ("float16", "bfloat16") else dtype)
    if plan.layout == "direct":
        # Circle: the plan computes its rows itself, on CuPy arrays with cuBLAS and CuPy's
        # kernels (pairwise over the batch: a matrix product, not a row program)
        L, mask = plan.prepare(*inputs, dtype=compute)
        return plan, dtype, out_dtype, {"L": L, "mask": mask}, None, L.shape, None, sw
    arrays, labels, batch = P.layout(plan, inputs, list(spec.inputs))
    params = P._params(plan, compute, arrays)
    return plan, dtype, out_dtype, arrays, labels, batch, params, sw


def _rows(plan, dtype, arrays, labels, params, R: int, out_dtype):
    cp = _cp()
    out = cp.empty(R, dtype=out_dtype if out_dtype != np.float16 else np.float16)
    if R == 0:
        return out, None
    _, nbad = _launch(plan, dtype, arrays, labels, params, None, None, out)
    if plan.program.sparse:
        C = arrays["p"].shape[1]
        _check_labels(nbad[0], labels, C, plan.ignore_class)
    mask = None
    if plan.ignore_class is not None:
        lab = labels if labels.dtype.kind != "f" else cp.trunc(labels)
        mask = lab != plan.ignore_class
    return out, mask


def gpu_evaluate(spec, values: dict[str, Any], compat: str, reduction: Any, sample_weight: Any,
                 is_class_call: bool):
    """A loss call on CuPy arrays of the current device; returns a CuPy array (0-d if reduced)."""
    cp = _cp()
    plan, dtype, out_dtype, arrays, labels, batch, params, sw = _prepare(spec, values, compat, sample_weight,
                                                                         is_class_call)
    if plan.layout == "direct":
        L, mask = arrays["L"], arrays["mask"]
        if not is_class_call:
            return L
        return cp.asarray(P._weighted_reduce(L, mask, sw, reduction, compat)).astype(out_dtype)
    R = math.prod(batch)
    want_rows = not is_class_call or reduction in ("none", None)
    L_shape = batch
    if is_class_call and not want_rows and sw is not None:
        L_shape, sw = P._align_weight(batch, sw, compat)
        if np.broadcast_shapes(L_shape, sw.shape) != L_shape:
            want_rows = True
    if want_rows:
        L, mask = _rows(plan, dtype, arrays, labels, params, R, out_dtype)
        if not is_class_call:
            return L.reshape(batch)
        W = P._weighted_reduce(L.reshape(batch), mask, sw, reduction, compat)
        return cp.asarray(W).astype(out_dtype)
    if compat == "keras3" and L_shape == (0,):
        return cp.zeros((0,), dtype=out_dtype)
    if len(L_shape) == 0:
        reduction = "sum"  # one value: every reduction returns it (weighted)
    masked_keras2 = plan.ignore_class is not None and compat == "keras2" and reduction != "sum"
    scalar_weight_mean = reduction == "mean_with_sample_weight" and sw is not None and \
        (sw.size == 1 or sw.shape != L_shape)
    if R == 0 or masked_keras2 or scalar_weight_mean:
        # Keras's corner cases (all-masked NaN, Σ of unbroadcast weights): a few more tiny ops
        vec = _partial_vector(plan, dtype, arrays, labels, params, sw, L_shape, compat)
        return _value(vec, reduction, compat).astype(out_dtype)
    # the common case: ONE launch, whose last block writes the reduced value into `out`
    out = cp.empty((), dtype=out_dtype)
    result, _ = _launch(plan, dtype, arrays, labels, params, _row_weights(sw, L_shape), _MODES[reduction], out)
    if plan.program.sparse:
        _check_labels(result[4], labels, arrays["p"].shape[1], plan.ignore_class)
    return out


def _row_weights(sw, L_shape):
    """One weight per row (a view where possible), a 1-element array for a scalar, or None."""
    cp = _cp()
    if sw is None:
        return None
    if sw.size == 1:
        return sw.reshape(1)
    return cp.ascontiguousarray(cp.broadcast_to(sw, L_shape)).reshape(-1)


def _partial_vector(plan, dtype, arrays, labels, params, sw, L_shape, compat):
    """[Σ w·ℓ, Σ w (the mean_with_sample_weight divisor), count, masked] on the device."""
    cp = _cp()
    R = math.prod(L_shape)
    masked = plan.ignore_class is not None
    if R == 0:
        return cp.zeros(4, dtype=cp.float64)
    scratch = cp.empty(1, dtype=cp.float64)
    result, _ = _launch(plan, dtype, arrays, labels, params, _row_weights(sw, L_shape), 0, scratch)
    if plan.program.sparse:
        _check_labels(result[4], labels, arrays["p"].shape[1], plan.ignore_class)
    if sw is None:
        total = result[3]
    elif masked:
        total = result[2]
    else:
        total = cp.sum(sw, dtype=cp.float64)  # Keras 3: Σ of the aligned, unbroadcast weights
    return cp.stack([result[1], total, result[3], cp.asarray(float(masked), dtype=cp.float64)])


def _value(vec, reduction: str, compat: str):
    """Partial.value on the device, without a sync."""
    cp = _cp()
    swl, total, count, masked = vec[0], vec[1], vec[2], vec[3]
    if reduction == "sum":
        return swl
    if reduction == "mean_with_sample_weight":
        return cp.where(total != 0, swl / cp.where(total != 0, total, 1.0), 0.0)
    empty = cp.where((masked > 0) & (compat == "keras2"), cp.nan, 0.0)
    return cp.where(count != 0, swl / cp.where(count != 0, count, 1.0), empty)


def gpu_partial(spec, values: dict[str, Any], compat: str, sample_weight: Any):
    """The partial triple of a class call on device arrays, as a float64 device vector
    ``[Σ w·ℓ, Σ w, count, masked]`` (streaming accumulators and Dask CuPy chunks add these)."""
    plan, dtype, _, arrays, labels, batch, params, sw = _prepare(spec, values, compat, sample_weight, True)
    if plan.layout == "direct":  # as on the host (gpuloss.streaming.split)
        raise ValueError(f"{spec.class_name} cannot be accumulated over batches: it compares the samples "
                         "of a batch with each other")
    L_shape = batch
    if sw is not None:
        L_shape, sw = P._align_weight(batch, sw, compat)
        if np.broadcast_shapes(L_shape, sw.shape) != L_shape:
            raise ValueError(f"sample_weight of shape {sw.shape} broadcasts the loss of shape {L_shape}; "
                             "accumulate such calls on host arrays")
    return _partial_vector(plan, dtype, arrays, labels, params, sw, L_shape, compat)

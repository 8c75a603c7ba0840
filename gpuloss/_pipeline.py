"""From a call's arguments to a number: inputs, shapes, kernels, weights and reduction.

This is the one place where Keras's rules live (see the spec sections in brackets):
rank alignment of y_true/y_pred [§5.1], sample_weight alignment [§5.2], masks and
reductions [§4], dtypes [§6]. The loss definitions say *what* a row computes; this module
decides *which* rows, and how the per-row values become the result.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from . import _backend
from .partial import Partial, reduced_value
from .program import Guessable, Plan

__all__ = ["epsilon", "set_epsilon", "REDUCTIONS", "check_reduction", "evaluate", "as_array"]

_EPSILON = [1e-7]

#: Keras 2's reductions plus Keras 3's ("none" and None are the same).
REDUCTIONS = ("auto", "none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight", None)


def epsilon() -> float:
    """The fuzz factor ε used by the losses (Keras's ``backend.epsilon()``, default 1e-7)."""
    return _EPSILON[0]


def set_epsilon(value: float) -> None:
    """Set ε for later calls (read at call time, as in Keras)."""
    _EPSILON[0] = float(value)


def check_reduction(reduction: Any, compat: str) -> Any:
    if reduction not in REDUCTIONS or (compat == "keras3" and reduction == "auto"):
        valid = [r for r in REDUCTIONS if not (compat == "keras3" and r == "auto")]
        raise ValueError(f"Invalid reduction {reduction!r}; expected one of {valid}")
    return reduction


def check_compat(compat: Any) -> str:
    if compat not in ("keras2", "keras3"):
        raise ValueError(f"compat must be 'keras2' or 'keras3', got {compat!r}")
    return compat


# ---- inputs and dtypes [§6] ------------------------------------------------------------------

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_NATIVE_FLOATS = frozenset({_F32, _F64})


def as_array(x: Any, what: str) -> np.ndarray:
    """A native-endian numeric NumPy view of ``x`` (lists and Python floats become float32,
    as TensorFlow converts them; float16 and bfloat16 are widened to float32)."""
    if type(x) is np.ndarray and x.dtype in _NATIVE_FLOATS:
        return x  # the common call; the checks below cost ~2 µs an input (dtype.name is Python code)
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if not isinstance(x, np.ndarray) and not isinstance(x, np.generic) and a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype.kind == "V" and a.dtype.name == "bfloat16":  # ml_dtypes' NumPy bfloat16
        a = a.astype(np.float32)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be numeric, got an array of dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    return a


def result_dtypes(y_pred_raw: Any, compat: str) -> tuple[np.dtype, np.dtype]:
    """(compute dtype, output dtype). Keras 2 follows y_pred's float dtype (float16 is computed
    in float32 and returned as float16); integers and bools compute in float32 (Keras 2 would
    use integer arithmetic). Keras 3 computes and returns float32 (its default loss dtype)."""
    if compat == "keras3":
        return _F32, _F32
    if type(y_pred_raw) is np.ndarray and y_pred_raw.dtype in _NATIVE_FLOATS:
        return (_F64, _F64) if y_pred_raw.dtype == _F64 else (_F32, _F32)
    dt = getattr(y_pred_raw, "dtype", None)
    if isinstance(y_pred_raw, (np.ndarray, np.generic)) and dt is not None and np.dtype(dt) == np.float64:
        return np.dtype(np.float64), np.dtype(np.float64)
    if dt is not None and np.dtype(dt).kind == "f" and np.dtype(dt).itemsize == 2:
        return np.dtype(np.float32), np.dtype(dt)
    return np.dtype(np.float32), np.dtype(np.float32)


# ---- shapes [§5.1] -----------------------------------------------------------------------------

def align_keras2(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tf_keras squeezes a trailing 1 when ranks differ by one (not the sparse-label case)."""
    if p.ndim - y.ndim != 1 or (p.ndim and p.shape[-1] == 1):
        if p.ndim - y.ndim == 1 and p.shape[-1] == 1:
            p = p.reshape(p.shape[:-1])
        elif y.ndim - p.ndim == 1 and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
    return y, p


def align_keras3(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keras 3's squeeze_or_expand_to_same_rank: a rank-1 operand is expanded to (n, 1)."""
    if x1.ndim == x2.ndim + 1 and x1.shape[-1] == 1:
        if x2.ndim == 1:
            x2 = x2.reshape(x2.shape + (1,))
        else:
            x1 = x1.reshape(x1.shape[:-1])
    elif x2.ndim == x1.ndim + 1 and x2.shape[-1] == 1:
        if x1.ndim == 1:
            x1 = x1.reshape(x1.shape + (1,))
        else:
            x2 = x2.reshape(x2.shape[:-1])
    return x1, x2


def _broadcast(arrays: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    first = arrays[0].shape
    if all(a.shape == first for a in arrays):
        return arrays
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        desc = " and ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
        raise ValueError(f"Shapes are incompatible: {desc}") from None
    return [a if a.shape == shape else np.broadcast_to(a, shape) for a in arrays]


def _norm_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for {what} of rank {ndim}")
    return axis % ndim


def layout(plan: Plan, inputs: list[np.ndarray], names: list[str]):
    """Lay the inputs out as rows: returns (arrays by element name, labels, batch shape)."""
    kind = plan.layout
    if (kind == "pointwise" or kind == "strict") and plan.axis == -1 and len(inputs) == 2:
        y, p = inputs
        if y.shape == p.shape and p.ndim and p.shape[-1]:  # the common case, without the general rules
            C = p.shape[-1]
            return {"t": y.reshape(-1, C), "p": p.reshape(-1, C)}, None, p.shape[:-1]
    if kind == "sparse" or kind == "sparse_strict":
        y, p = inputs
        if p.ndim == 0:
            raise ValueError(f"y_pred must have a class axis; got shape {p.shape}")
        ax = _norm_axis(plan.axis, p.ndim, "y_pred")
        if ax != p.ndim - 1:
            p = np.moveaxis(p, ax, -1)
        batch = p.shape[:-1]
        if kind == "sparse_strict" and (p.ndim != 2 or y.shape != batch):
            raise ValueError(f"expected integer labels of shape (B,) and y_pred (B, C); "
                             f"got y_true {y.shape} and y_pred {p.shape}")
        if y.shape == batch + (1,):
            y = y.reshape(batch)
        if y.shape != batch:
            raise ValueError(f"Shapes are incompatible: y_true {y.shape} should be y_pred {p.shape} "
                             f"without its class axis, {batch}")
        if y.dtype.kind not in "iub" and y.dtype.kind != "f":
            raise TypeError(f"labels must be numeric, got {y.dtype}")
        R = math.prod(batch)
        return {"p": p.reshape(R, p.shape[-1])}, y.reshape(R), batch
    if kind == "strict":
        y, p = inputs
        if y.shape != p.shape:
            raise ValueError(f"Shapes are incompatible: y_true {y.shape} and y_pred {p.shape} must be equal")
        arrays = [y, p]
    else:
        arrays = _broadcast(inputs, names)
    shape = arrays[0].shape
    if len(shape) == 0 and kind != "axes":
        arrays = [a.reshape(1) for a in arrays]
        shape = (1,)
    axis = tuple(plan.axis) if isinstance(plan.axis, list) else plan.axis
    perm, rows_shape, batch = _row_layout(shape, axis, kind == "axes")
    elements = ("a", "pos", "neg") if kind == "triplet" else ("t", "p")
    return {e: (a if perm is None else np.transpose(a, perm)).reshape(rows_shape)
            for e, a in zip(elements, arrays)}, None, batch


@functools.lru_cache(maxsize=256)
def _row_layout(shape: tuple, axis, several: bool):
    """(transposition or None, (R, C), batch shape) of rows reduced over ``axis`` of an array of
    ``shape`` (``several``: axis is None = all axes, an int or a tuple of them). Shapes repeat
    from call to call; working this out afresh cost ~4 µs of a 1e3-element Dice call."""
    if several:
        if axis is None:
            axes = tuple(range(len(shape)))
        else:
            ax = axis if isinstance(axis, tuple) else (axis,)
            axes = tuple(sorted({_norm_axis(a, len(shape), "y_pred") for a in ax}))
    else:
        axes = (_norm_axis(axis, len(shape), "y_pred"),)
    rest = [i for i in range(len(shape)) if i not in axes]
    batch = tuple(shape[i] for i in rest)
    C = math.prod(shape[i] for i in axes)
    # the reduced axes last: a reshape, whatever the memory order (a copy only when they are not
    # the trailing ones of a contiguous array)
    trailing = list(axes) == list(range(len(shape) - len(axes), len(shape)))
    return (None if trailing else tuple(rest) + axes), (math.prod(batch), C), batch


# ---- sample weights [§5.2] ---------------------------------------------------------------------

def align_weight_keras2(sw: np.ndarray, L_shape: tuple) -> np.ndarray:
    if sw.ndim == 0:
        return sw
    if sw.ndim == len(L_shape) + 1:
        if sw.shape[-1] != 1:
            raise ValueError(f"sample_weight of shape {sw.shape} cannot be aligned with a loss of shape "
                             f"{L_shape}: its last dimension must be 1")
        return sw.reshape(sw.shape[:-1])
    if len(L_shape) == sw.ndim + 1:
        return sw.reshape(sw.shape + (1,))
    return sw


def _reduce_values(W: np.ndarray, total_weight: float | None, reduction, compat: str,
                   mask_count: float | None):
    """Reduce a weighted loss array W (the general path; the kernels do the common one)."""
    if reduction in ("none", None):
        return W
    s = float(np.sum(W, dtype=np.float64))
    if reduction == "sum":
        return s
    if reduction == "mean_with_sample_weight":
        return s / total_weight if total_weight else 0.0
    count = W.size if mask_count is None else mask_count
    if count == 0:
        if compat == "keras2" and mask_count is not None and W.size:
            return math.nan
        return 0.0
    return s / count


def _finish(value, out_dtype):
    return np.asarray(value, dtype=out_dtype)


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(spec, values: dict[str, Any], compat: str, reduction: Any = None, sample_weight: Any = None,
             is_class_call: bool = False, backend: str | None = None):
    """Compute a loss. ``values`` are the bound arguments of the loss function (inputs first).

    With ``is_class_call`` the Keras class pipeline applies (rank alignment, weights, reduction).
    Inputs of other array libraries are recognised by :mod:`gpuloss._interop` and the result
    comes back as the caller's kind of array.
    """
    if backend is None and sample_weight is None:
        key = _repeat_key(spec, values, compat, reduction, is_class_call)
        if key is not None and not os.environ.get("GPULOSS_BACKEND"):
            repeat = _REPEATS.get(key)
            if repeat is not None:
                result = repeat(values)
                if result is not None:
                    return result
            return _evaluate_host(spec, values, compat, reduction, None, is_class_call, backend, repeat_key=key)
    if backend is None and _plain_numpy_call(spec, values, sample_weight) and not os.environ.get("GPULOSS_BACKEND"):
        # NumPy arrays and plain options: nothing to classify, convert or wrap (saves ~10 µs a call)
        return _evaluate_host(spec, values, compat, reduction, sample_weight, is_class_call, backend)
    from . import _interop

    kind = _interop.classify([values[n] for n in spec.inputs] + [sample_weight],
                             names=list(spec.inputs) + ["sample_weight"])
    if kind == "host" and _backend.resolve_backend(backend) == "cupy":
        return _on_gpu_from_host(spec, values, compat, reduction, sample_weight, is_class_call)
    if kind == "device":
        return _interop.evaluate_device(spec, values, compat, reduction, sample_weight, is_class_call, backend)
    if kind == "dask":
        from . import _dask

        return _dask.evaluate(spec, values, compat, reduction, sample_weight, is_class_call, backend)
    host_values, host_weight, wrap = _interop.to_host(values, spec.inputs, sample_weight, kind)
    result = _evaluate_host(spec, host_values, compat, reduction, host_weight, is_class_call, backend)
    return wrap(result, is_class_call and reduction not in ("none", None))


_PLAIN_INPUTS = (np.ndarray, float, int, type(None))
_PLAIN_OPTIONS = frozenset({float, int, bool, str, tuple, type(None)})


def _plain_numpy_call(spec, values: dict[str, Any], sample_weight: Any) -> bool:
    if type(sample_weight) not in _PLAIN_INPUTS:
        return False
    inputs = spec.inputs
    for k, v in values.items():
        if k in inputs:
            if type(v) not in _PLAIN_INPUTS:
                return False
        elif type(v) not in _PLAIN_OPTIONS:
            return False
    return True


def _on_gpu_from_host(spec, values, compat, reduction, sample_weight, is_class_call):
    """backend="cupy" on host arrays: copy them to the current GPU, compute there, copy back."""
    import cupy

    dev = {k: cupy.asarray(as_array(v, k)) if k in spec.inputs else v for k, v in values.items()}
    sw = None if sample_weight is None else cupy.asarray(as_array(sample_weight, "sample_weight"))
    return cupy.asnumpy(_backend.gpu_evaluate(spec, dev, compat, reduction, sw, is_class_call))


def _evaluate_host(spec, values: dict[str, Any], compat: str, reduction: Any, sample_weight: Any,
                   is_class_call: bool, backend: str | None, want_partial: bool = False, repeat_key=None):
    raw = [values[n] for n in spec.inputs]
    inputs = [as_array(x, n) for x, n in zip(raw, spec.inputs)]
    # Keras 3 casts to its loss dtype in Loss.__call__; its functions keep the input dtype
    dtype, out_dtype = result_dtypes(raw[1], compat if is_class_call else "keras2")
    as_given = inputs  # before alignment: a direct plan remembers calls whose inputs needed no conversion
    aligns = len(inputs) == 2 and (is_class_call or (compat == "keras3" and spec.k3_function_aligns))
    if aligns:
        y, p = inputs
        inputs = list(align_keras3(y, p) if compat == "keras3" else align_keras2(y, p))
    options = {k: v for k, v in values.items() if k not in spec.inputs}
    call = _call_plan(spec, inputs, options, compat, dtype)
    plan = call.plan

    mask = None
    nbad = 0
    if plan.layout == "direct":
        L, mask = plan.prepare(*inputs, dtype=dtype)
        batch = L.shape
        want_rows = True
        if repeat_key is not None and all(a is r for a, r in zip(as_given, raw)):
            _remember_direct(repeat_key, spec, plan.prepare, dtype, aligns, is_class_call, reduction, compat,
                             out_dtype)
    else:
        arrays, labels, batch = layout(plan, inputs, list(spec.inputs))
        bound = call.bound(arrays)
        want_rows = not is_class_call or reduction in ("none", None)
    sw = None if sample_weight is None else as_array(sample_weight, "sample_weight")
    if want_partial:
        want_rows = plan.layout == "direct"
    if is_class_call and not want_rows and sw is not None:
        L_shape, sw = _align_weight(batch, sw, compat)
        if np.broadcast_shapes(L_shape, sw.shape) != L_shape:
            want_rows = True  # weights broadcast the loss to a larger shape: general path
    kernels = _backend.numba_kernels()
    if want_rows and plan.layout != "direct":
        L, valid, nbad = kernels.rows(bound, arrays, labels, plan.ignore_class)
        mask = valid
    if nbad:
        _raise_bad_labels(labels, arrays["p"].shape[1], plan.ignore_class)
    if repeat_key is not None and plan.layout != "direct" and math.prod(batch) and \
            (not is_class_call or not want_rows or plan.ignore_class is None):
        # the same path for this key from now on (unweighted calls whose arrays are reshapes of
        # the inputs; a masked "none" class call weighs its rows afterwards and is not repeated)
        _remember(repeat_key, spec, values, raw, inputs, call, arrays, labels, batch, want_rows,
                  reduction if is_class_call else None, compat, out_dtype)
    if not is_class_call:
        return _finish(L.reshape(batch), out_dtype)
    if want_rows and want_partial:
        return _rows_partial(L.reshape(batch), mask, sw, compat)
    if want_rows:
        return _finish(_weighted_reduce(L.reshape(batch), mask, sw, reduction, compat), out_dtype)

    # fused path: weights per row go into the kernel, which returns the partial triple
    part = _fused_partial(kernels, plan, bound, arrays, labels, sw, L_shape if sw is not None else batch, compat)
    if want_partial:
        return part
    aligned = batch if sw is None else L_shape  # Keras 3 may squeeze L against a scalar weight
    if len(aligned) == 0:
        return _finish(part.weighted_sum, out_dtype)  # one value: every reduction returns it (weighted)
    if compat == "keras3" and aligned == (0,):
        return _finish(np.zeros((0,)), out_dtype)  # Keras 3 returns an empty loss unreduced
    return _finish(part.value(reduction, compat), out_dtype)


def partial(spec, values: dict[str, Any], compat: str, sample_weight: Any = None,
            backend: str | None = None) -> Partial:
    """The partial triple of a class call on host arrays (streaming accumulators and Dask chunks
    merge these; see :class:`gpuloss.partial.Partial`)."""
    return _evaluate_host(spec, values, compat, "sum", sample_weight, True, backend, want_partial=True)


def _rows_partial(L: np.ndarray, mask, sw, compat: str) -> Partial:
    """The triple from materialised per-sample values (weights that broadcast L, Circle)."""
    weighted = float(_weighted_reduce(L, mask, sw, "sum", compat))
    count = float(L.size if mask is None else np.count_nonzero(mask))
    if sw is None:
        total = count
    else:
        total = float(np.sum(sw if mask is None else _weighted_reduce(np.ones_like(L, dtype=np.float64),
                                                                       mask, sw, "sum", compat)))
    return Partial(weighted, total, count, mask is not None and L.size > 0)


def _fused_partial(kernels, plan: Plan, bound, arrays, labels, sw, L_shape, compat) -> Partial:
    """One kernel pass: the partial triple of a reduced call (weights broadcastable to L)."""
    w = None
    if sw is not None:
        if sw.size == 1:
            w = sw.reshape(1)
        else:
            # broadcast only where it adds elements: a view of the same size (sw already of
            # L's shape, or of it with size-1 axes) is read-only, and Numba compiles a kernel of
            # its own for read-only arrays
            wide = np.broadcast_to(sw, L_shape)
            w = sw.reshape(-1) if sw.size == wide.size else wide.reshape(-1)
    swl, sw_sum, count, nbad = kernels.reduce(bound, arrays, labels, w, plan.ignore_class)
    if nbad:
        _raise_bad_labels(labels, arrays["p"].shape[1], plan.ignore_class)
    masked = plan.ignore_class is not None
    if sw is None:
        total = count
    elif masked:
        total = sw_sum
    else:
        total = float(np.sum(sw, dtype=np.float64))  # Keras 3: Σ of the aligned, unbroadcast weights
    return Partial(swl, total, count, masked and math.prod(L_shape) > 0)


def _align_weight(L_shape: tuple, sw: np.ndarray, compat: str):
    """(aligned loss shape, aligned weights); only Keras 3 may reshape the loss."""
    if compat == "keras3":
        shape_only = np.broadcast_to(np.zeros((), np.uint8), L_shape)  # no memory behind it
        L_aligned, sw = align_keras3(shape_only, sw)
        return L_aligned.shape, sw
    return L_shape, align_weight_keras2(sw, L_shape)


def _weighted_reduce(L: np.ndarray, mask, sw, reduction, compat):
    """Weights and reduction on materialised per-sample values (reduction "none", weights
    that broadcast beyond L's shape, and the Circle loss)."""
    if sw is None and mask is not None and L.ndim and L.size and reduction in _MASKED_MEANS[compat] \
            and mask.shape == L.shape:
        # a masked mean without weights (Circle's default): the arithmetic below, by fewer
        # NumPy calls (the same bits: the mask scaled to 0 or size/count, L times it, NumPy's
        # sum, divided by the size). Keras 2 scales by size/0 where no row is in the mask (NaN
        # throughout), left to the path below. 2-core EPYC, 62 rows: 6.0 µs → see _DirectRepeat
        # (np.add.reduce is np.sum's pairwise sum of float64 without its ~1.4 µs of wrapping;
        # float32 L times the float64 scaled mask is widened exactly, as L.astype(float64) is)
        count = np.count_nonzero(mask)
        if count or compat == "keras3":
            W = L * (mask * (L.size / count if count else 0.0))
            return float(np.add.reduce(W)) / W.size
    Lw = L.astype(np.float64) if reduction not in ("none", None) else L
    if compat == "keras3":
        if sw is not None:
            Lw, sw = align_keras3(Lw, sw)
        if mask is not None:
            m = mask.reshape(L.shape).astype(Lw.dtype)
            m = m.reshape(Lw.shape) if m.size == Lw.size else m
            if reduction in ("sum_over_batch_size", "mean"):
                tot = m.sum()
                m = m * (m.size / tot) if tot else m * 0
            sw = m if sw is None else (m * sw)
        W = Lw if sw is None else Lw * sw
        if W.ndim == 0 or (W.ndim == 1 and W.shape[0] == 0):
            return W
        total = None
        if reduction == "mean_with_sample_weight":
            total = float(np.sum(sw)) if sw is not None else W.size
        return _reduce_values(W, total, reduction, compat, None)
    if mask is not None:
        m = mask.reshape(L.shape).astype(np.float64)
        if reduction in ("auto", "sum_over_batch_size", "mean"):
            tot = m.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                m = m * (m.size / tot)
        if sw is not None:
            sw = align_weight_keras2(sw, m.shape) * m
        else:
            sw = m
    elif sw is not None:
        sw = align_weight_keras2(sw, L.shape)
    W = Lw if sw is None else Lw * sw
    total = None
    if reduction == "mean_with_sample_weight":
        total = float(np.sum(sw)) if sw is not None else W.size
    with np.errstate(invalid="ignore"):
        return _reduce_values(W, total, reduction, compat, None)


#: the reductions that _weighted_reduce turns into a mean over the masked rows
_MASKED_MEANS = {"keras3": frozenset({"sum_over_batch_size", "mean"}),
                 "keras2": frozenset({"auto", "sum_over_batch_size", "mean"})}

#: the compute dtypes' names for the kernel modules (``dtype.name`` is Python code, ~1 µs)
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


@functools.lru_cache(maxsize=16)
def _epsilon_params(dtype: np.dtype, eps: float) -> tuple[float, float]:
    t = dtype.type
    e = t(eps)
    return float(e), float(t(1) - e)


@functools.lru_cache(maxsize=256)
def _rounded(dtype: np.dtype, value: float) -> float:
    return float(dtype.type(value))


def _params(plan: Plan, dtype: np.dtype, arrays) -> dict[str, Any]:
    """The plan's runtime scalars plus ε, rounded to the compute dtype as Keras casts them."""
    params = _static_params(plan, dtype, next(iter(arrays.values())).shape[1])
    if plan.prepare is not None:
        params.update(plan.prepare(arrays))
    return params


def _static_params(plan: Plan, dtype: np.dtype, C: int) -> dict[str, Any]:
    """The parameters that do not look at the data (all but ``plan.prepare``'s)."""
    eps, one_minus_eps = _epsilon_params(dtype, _EPSILON[0])
    params: dict[str, Any] = {"epsilon": eps, "one_minus_epsilon": one_minus_eps}
    for k, v in plan.params.items():
        if isinstance(v, np.ndarray):
            if v.shape != (C,):
                raise ValueError(f"{k} must be a scalar or have one value per class ({C}); got shape {v.shape}")
            params[k] = v.astype(dtype)
        else:
            params[k] = _rounded(dtype, v)
    return params


class _CallPlan:
    """What calls of one loss with the same options, compat, compute dtype and input shapes
    share: the plan, its data-independent parameters and the kernels bound to them. The
    pipeline keeps these (see _call_plan): building them is about a third of a 1e3-element
    call (the plan ~3 µs, parameters and kernel look-ups ~5 µs, of ~20 µs)."""

    __slots__ = ("plan", "dtype", "_static", "_bound")

    def __init__(self, plan: Plan, dtype: np.dtype):
        self.plan, self.dtype = plan, dtype
        self._static: dict[str, Any] | None = None
        self._bound: dict[tuple, Any] = {}

    def bound(self, arrays):
        """The bound kernels for these (laid-out) arrays; ``plan.prepare`` looks at the data
        (a Guessable one only at part of it, where the program's kernels check the rest)."""
        plan = self.plan
        if self._static is None:
            self._static = _static_params(plan, self.dtype, next(iter(arrays.values())).shape[1])
        prepare = plan.prepare
        otherwise = None
        if prepare is None:
            extra = {}
        elif isinstance(prepare, Guessable) and plan.program.check is not None:
            extra, otherwise = prepare.guess(arrays)
        else:
            extra = prepare(arrays)
        key = (tuple(extra.items()), None if otherwise is None else tuple(otherwise.items()))
        b = self._bound.get(key)
        if b is None:
            static = self._static
            b = _backend.numba_kernels().bind(plan.program, _DTYPE_NAMES[self.dtype], {**static, **extra},
                                              None if otherwise is None else {**static, **otherwise})
            self._bound[key] = b
        return b


#: (loss body, compat, options, compute dtype, input shapes, ε) → _CallPlan; cleared when full
_CALLS: dict[tuple, _CallPlan] = {}
_CALLS_MAX = 512


def _call_plan(spec, inputs, options: dict[str, Any], compat: str, dtype: np.dtype) -> _CallPlan:
    # the plan may depend on the options and the inputs' shapes (never on their values: see
    # gpuloss.registry.loss); calls with unhashable options (per-class alpha as a list,
    # reference embeddings) are planned afresh each time
    try:
        key = (spec.body, compat, tuple(options.items()), dtype, tuple(a.shape for a in inputs), _EPSILON[0])
        hit = _CALLS.get(key)
    except TypeError:
        key, hit = None, None
    if hit is not None:
        return hit
    call = _CallPlan(spec.body(*inputs, **options, compat=compat), dtype)
    if key is not None:
        if len(_CALLS) >= _CALLS_MAX:
            _CALLS.clear()
        _CALLS[key] = call
    return call


# ---- repeated calls ------------------------------------------------------------------------------
#
# Pipelines call a loss again and again on arrays of one shape. The first NumPy call of a shape
# takes the general path above and leaves behind what it found: which input becomes which kernel
# argument (by reshape only), the kernel and its parameters. Later calls of the same key go
# straight to the kernel: a MeanSquaredError call at 1e3 elements took 33 µs on a 2-core EPYC
# through the general path, of which the kernel itself is 1.8 µs.

#: (loss body, compat, reduction, class call?, ε, then per input its shape, strides and dtype and
#: per option its value) → _Repeat; cleared when full
_REPEATS: dict[tuple, "_Repeat"] = {}
_REPEATS_MAX = 512


def _repeat_key(spec, values: dict[str, Any], compat: str, reduction: Any, is_class_call: bool):
    """The key of an unweighted call on NumPy arrays with hashable plain options, else None."""
    key: list[Any] = [spec.body, compat, reduction, is_class_call, _EPSILON[0]]
    inputs = spec.inputs
    for k, v in values.items():
        if k in inputs:
            if type(v) is not np.ndarray:
                return None
            key += (v.shape, v.strides, v.dtype)
        elif type(v) in _PLAIN_OPTIONS:
            key.append(v)
        else:
            return None
    frozen = tuple(key)
    try:
        hash(frozen)
    except TypeError:  # an option tuple holding a list
        return None
    return frozen


class _Repeat:
    """A call of one key, worked out: the kernel arguments as reshapes of named inputs, the
    kernel's route and either its bound parameters or (Hinge) the plan that binds them per call."""

    __slots__ = ("sources", "elements", "route", "call", "bound", "rows", "reduction", "compat", "masked",
                 "batch", "out_dtype", "unweighted", "as_input")

    def __call__(self, values: dict[str, Any]):
        """The result, or None where the general path must decide (bad labels: it raises)."""
        arrs = [self.as_input(values[name].reshape(shape)) for name, shape in self.sources]
        bound = self.bound
        if bound is None:  # plan.prepare looks at the data (Hinge's batch-global label rule)
            bound = self.call.bound(dict(zip(self.elements, arrs)))
        if self.rows:
            out = np.empty(self.batch, dtype=bound.dtype)
            if self.route(arrs, (out.reshape(-1),), bound):
                return None
            return out if out.dtype == self.out_dtype else out.astype(self.out_dtype)
        swl, _, count, nbad = self.route(arrs, self.unweighted, bound)
        if nbad:
            return None
        if not self.batch:  # one value: every reduction returns it
            return np.asarray(swl, dtype=self.out_dtype)
        return np.asarray(reduced_value(swl, count, count, self.masked, self.reduction, self.compat),
                          dtype=self.out_dtype)


def _remember(key, spec, values, raw, inputs, call: _CallPlan, arrays, labels, batch, rows: bool, reduction,
              compat: str, out_dtype) -> None:
    kernels = _backend.numba_kernels()
    if any(a is not r for a, r in zip(inputs, raw)):
        return  # converted inputs (lists, float16): the conversion is per call
    names = list(spec.inputs)
    pointers = [values[n].ctypes.data for n in names]
    if len(set(pointers)) != len(pointers) or not all(values[n].flags.c_contiguous for n in names):
        return  # one array passed twice, or strided inputs: the sources below would be ambiguous
    program = call.plan.program
    arrs = kernels.kernel_arrays(program, arrays, labels)
    sources = []
    for a in arrs:
        i = pointers.index(a.ctypes.data) if a.ctypes.data in pointers else -1
        if i < 0 or not a.flags.c_contiguous or a.size != values[names[i]].size or a.dtype != values[names[i]].dtype:
            return  # a copy (moved class axis, broadcast): not a reshape of an input
        sources.append((names[i], a.shape))
    bound = call.bound(arrays)
    R, C = arrs[0].shape
    flat_ok = kernels.flat_ok(bound, arrays)
    row_major = kernels.rows_contiguous(bound, arrays)
    route = (kernels.rows_route(bound, R, C, flat_ok, call.plan.ignore_class, row_major) if rows else
             kernels.reduce_route(bound, R, C, flat_ok, 0, call.plan.ignore_class, row_major))
    if route is None:
        return
    r = _Repeat()
    r.sources, r.route, r.call, r.rows, r.reduction, r.compat = sources, route, call, rows, reduction, compat
    r.elements = ("p", "labels") if program.sparse else program.elements
    r.bound = None if call.plan.prepare is not None else bound
    r.masked = call.plan.ignore_class is not None
    r.batch, r.out_dtype = tuple(batch), out_dtype
    r.unweighted = (kernels.UNIT_WEIGHTS[bound.dtype], 0)  # the reduce kernels' weights and weight step
    r.as_input = kernels.as_kernel_input  # read-only inputs run the writable inputs' kernels
    _store_repeat(key, r)


def _store_repeat(key, repeat) -> None:
    if len(_REPEATS) >= _REPEATS_MAX:
        _REPEATS.clear()
    _REPEATS[key] = repeat


class _DirectRepeat:
    """A call of one key whose plan computes its rows itself (layout "direct": Circle): later
    calls go straight to the plan's ``prepare`` and the reduction, past the look-ups of the
    general path (Circle on 2 embeddings, 2-core EPYC: 21.5 µs a call before, see
    _weighted_reduce)."""

    __slots__ = ("names", "prepare", "dtype", "align", "class_call", "reduction", "compat", "out_dtype")

    def __call__(self, values: dict[str, Any]):
        inputs = [values[n] for n in self.names]
        if self.align:
            inputs = align_keras3(*inputs) if self.compat == "keras3" else align_keras2(*inputs)
        L, mask = self.prepare(*inputs, dtype=self.dtype)
        if not self.class_call:
            return _finish(L, self.out_dtype)
        return _finish(_weighted_reduce(L, mask, None, self.reduction, self.compat), self.out_dtype)


def _remember_direct(key, spec, prepare, dtype, align: bool, class_call: bool, reduction, compat: str,
                     out_dtype) -> None:
    r = _DirectRepeat()
    r.names, r.prepare, r.dtype, r.align = tuple(spec.inputs), prepare, dtype, align
    r.class_call, r.reduction, r.compat, r.out_dtype = class_call, reduction, compat, out_dtype
    _store_repeat(key, r)


def _raise_bad_labels(labels: np.ndarray, C: int, ignore_class):
    lab = labels.astype(np.float64)
    with np.errstate(invalid="ignore"):
        t = np.trunc(lab)
        bad = ~((t >= 0) & (t < C))
        if ignore_class is not None:
            bad &= t != ignore_class
    first = labels[np.argmax(bad)]
    raise ValueError(f"Received a label value of {first} which is outside the valid range of [0, {C}) "
                     f"({C} classes)")

"""Streaming accumulation: a loss over many batches, equal to one call on their concatenation.

Every reduction with a scalar result is a function of three sums (Σ w·ℓ, Σ w, count: the
partial triple of :class:`gpuloss.partial.Partial`), so a loss over batches that arrive one at
a time, or over the chunks of a Dask array, is exact without keeping the per-sample values::

    acc = gpuloss.LossAccumulator(gpuloss.SparseCategoricalCrossentropy(ignore_class=0))
    for y, p in batches:
        acc.update(y, p)                    # or acc.update(y, p, sample_weight=w)
    acc.result()                            # == the loss of the concatenated batches (1e-6 rel.)
    acc.result("sum")                       # any reduction with a scalar result

This module also holds the rules that decide whether a call splits along its batch axis
(axis 0), shared with :mod:`gpuloss._dask`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _interop, _pipeline
from .partial import Partial

__all__ = ["LossAccumulator", "BatchState"]


# ---- the state of some batches ------------------------------------------------------------------

@dataclass(frozen=True)
class BatchState:
    """The partial triple of some batches.

    Hinge and SquaredHinge convert {0, 1} labels to ±1 only when *every* label of the call is 0
    or 1, so for them the state also keeps the triple with converted labels (``signed``) while
    every label seen so far was 0 or 1 (``binary``); :meth:`final` picks the one Keras's rule
    gives for all the batches together. For other losses ``signed`` is None.
    """

    partial: Partial = field(default_factory=Partial)
    signed: Partial | None = None
    binary: bool = True

    def merge(self, other: "BatchState") -> "BatchState":
        binary = self.binary and other.binary
        signed = None
        if binary and self.signed is not None and other.signed is not None:
            signed = self.signed.merge(other.signed)
        return BatchState(self.partial.merge(other.partial), signed, binary)

    __add__ = merge

    def final(self) -> Partial:
        return self.signed if self.binary and self.signed is not None else self.partial

    def with_weight_sum(self, total: float) -> "BatchState":
        """The same sums with Σ w replaced (weights that do not carry the batch axis count once)."""
        signed = None if self.signed is None else dataclasses.replace(self.signed, weight_sum=total)
        return BatchState(dataclasses.replace(self.partial, weight_sum=total), signed, self.binary)


# ---- splitting a call along its batch axis ------------------------------------------------------

def _dummy(a: Any) -> np.ndarray:
    """A zero-stride stand-in with ``a``'s shape and dtype (no memory behind it)."""
    return np.broadcast_to(np.zeros((), dtype=np.dtype(a.dtype)), tuple(int(s) for s in a.shape))


def _resized(d: np.ndarray, b: int) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype=d.dtype), (b,) + d.shape[1:])


def _is_label_rule(prepare) -> bool:
    from .losses.hinge import _binary_to_signed

    return prepare is _binary_to_signed


def rule_params(plan) -> tuple[dict, dict]:
    """(parameters with labels converted to ±1, parameters with labels as they are) of Hinge's rule."""
    signed, plain = _rule_params(plan.prepare)
    return dict(signed), dict(plain)


@functools.lru_cache(maxsize=None)
def _rule_params(prepare) -> tuple[dict, dict]:
    return (dict(prepare({"t": np.zeros((1, 1), np.float32)})),
            dict(prepare({"t": np.full((1, 1), 2.0, np.float32)})))


def with_prepare(spec, wrap):
    """``spec`` whose plans have ``prepare`` replaced by ``wrap(prepare)``."""
    body = spec.body

    def body_with_prepare(*args, **kwargs):
        plan = body(*args, **kwargs)
        if plan.prepare is None:
            return plan
        return dataclasses.replace(plan, prepare=wrap(plan.prepare))

    return dataclasses.replace(spec, body=body_with_prepare)


def fixed_prepare(spec, params: dict):
    return with_prepare(spec, lambda prepare: (lambda arrays: dict(params)))


def _shapes(spec, xs: list, options: dict, compat: str, sw, is_class_call: bool):
    """What the pipeline does to the shapes: (plan, aligned inputs, loss shape, result shape,
    loss shape aligned with the weights, aligned weights)."""
    if len(xs) == 2 and (is_class_call or (compat == "keras3" and spec.k3_function_aligns)):
        y, p = xs
        xs = list(_pipeline.align_keras3(y, p) if compat == "keras3" else _pipeline.align_keras2(y, p))
    plan = spec.body(*xs, **options, compat=compat)
    if plan.layout == "direct":  # Circle: one loss per row of y_pred
        ref = xs[1] if len(xs) > 1 else xs[0]
        L = tuple(ref.shape[:1])
    else:
        L = tuple(_pipeline.layout(plan, list(xs), list(spec.inputs))[2])
    L_aligned, W, sw_aligned = L, L, None
    if sw is not None and is_class_call:
        if compat == "keras3":
            l2, sw_aligned = _pipeline.align_keras3(np.broadcast_to(np.zeros((), np.uint8), L), sw)
            L_aligned = tuple(l2.shape)
        else:
            sw_aligned = _pipeline.align_weight_keras2(sw, L)
        W = tuple(np.broadcast_shapes(L_aligned, sw_aligned.shape))
    return plan, xs, L, W, L_aligned, sw_aligned


@dataclass
class Split:
    """Whether a call splits along axis 0 into independent batches, and how."""

    ok: bool
    reason: str = ""
    batch: int = 0
    carries: tuple[bool, ...] = ()      # which inputs have the batch axis as their axis 0
    weight_carries: bool = False        # whether sample_weight has it
    loss_shape: tuple = ()              # the per-sample loss of the whole call
    out_shape: tuple = ()               # an unreduced result (weights may reshape the loss)
    aligned_shape: tuple = ()           # the loss aligned with the weights (Keras 3 may squeeze it)
    plan: Any = None
    rule: tuple | None = None           # Hinge's label rule: (signed params, plain params)
    _probe: tuple = ()

    def consistent(self, sizes) -> str:
        """"" if batches of each size in ``sizes`` have the same shape rules, else why not."""
        spec, dummies, options, compat, sw, is_class_call = self._probe
        tail = math.prod(self.out_shape[1:])
        for b in sorted(set(int(s) for s in sizes)):
            if b == self.batch:
                continue
            xs = [_resized(d, b) if c else d for d, c in zip(dummies, self.carries)]
            w = _resized(sw, b) if sw is not None and self.weight_carries else sw
            try:
                plan, _, L, W, _, _ = _shapes(spec, xs, options, compat, w, is_class_call)
            except (ValueError, TypeError):
                return f"a batch of {b} samples has other shape rules than one of {self.batch}"
            if plan.layout != self.plan.layout or L != (b,) + self.loss_shape[1:] or math.prod(W) != b * tail:
                return f"a batch of {b} samples has other shape rules than one of {self.batch}"
        return ""


def split(spec, inputs: Sequence[Any], options: dict, compat: str, sample_weight: Any, is_class_call: bool,
          sizes: Sequence[int] | None = None) -> Split:
    """How a call with these inputs (anything with ``shape`` and ``dtype``) splits along axis 0.

    Raises the errors of the in-memory call for shapes it rejects. ``sizes``: batch sizes the
    split must hold for (None: any size).
    """
    dummies = [_dummy(a) for a in inputs]
    sw = None if sample_weight is None else _dummy(sample_weight)
    plan, xs, L, W, L_aligned, sw_aligned = _shapes(spec, dummies, options, compat, sw, is_class_call)
    probe = (spec, dummies, options, compat, sw, is_class_call)
    base = dict(loss_shape=L, out_shape=W, aligned_shape=L_aligned, plan=plan, _probe=probe)
    if plan.layout == "direct":
        return Split(False, f"{spec.class_name} compares the samples of a batch with each other", **base)
    rule = None
    if plan.prepare is not None:
        if not _is_label_rule(plan.prepare):
            return Split(False, f"the parameters of {spec.class_name} depend on the whole batch", **base)
        rule = rule_params(plan)
    sparse = plan.layout in ("sparse", "sparse_strict")
    ref = xs[1] if sparse else max(xs, key=lambda a: a.ndim)
    if ref.ndim == 0:
        return Split(False, "the inputs are scalars", **base)
    B = ref.shape[0]
    carries = tuple(a.ndim >= 1 and a.shape[0] == B and (sparse or a.ndim == ref.ndim) for a in xs)
    if not L or L[0] != B:
        return Split(False, f"{spec.class_name} reduces over axis 0 of these inputs (per-sample loss of shape "
                            f"{L} for inputs of batch size {B}), so axis 0 is not a batch axis", **base)
    weight_carries = False
    if sw is not None and is_class_call:
        # (Keras 3 squeezes the loss of a 1-sample batch against a scalar weight: harmless)
        if len(L_aligned) != len(W) or (L_aligned and L_aligned[0] != B):
            return Split(False, "the weights broadcast the per-sample loss beyond its batch axis", **base)
        weight_carries = sw.ndim >= 1 and sw_aligned.ndim == len(W) and sw.shape[0] == B
    out = Split(True, "", B, carries, weight_carries, rule=rule, **base)
    why = out.consistent([B + 1] if sizes is None else sizes)
    if why:
        return Split(False, why, **base)
    return out


# ---- the state of one batch ---------------------------------------------------------------------

def host_state(spec, values: dict, compat: str, sample_weight: Any, backend: str | None,
               rule: tuple | None) -> BatchState:
    """The state of one batch of host arrays (one kernel pass; two for Hinge while its labels
    are all 0 or 1)."""
    if rule is None:
        return BatchState(_pipeline.partial(spec, values, compat, sample_weight, backend))
    signed_params, plain_params = rule
    seen: list = []

    def record(prepare):
        def prepare_and_record(arrays):
            params = dict(prepare(arrays))
            seen.append(params)
            return params
        return prepare_and_record

    first = _pipeline.partial(with_prepare(spec, record), values, compat, sample_weight, backend)
    if seen and seen[-1] != signed_params:
        return BatchState(first, None, False)
    plain = _pipeline.partial(fixed_prepare(spec, plain_params), values, compat, sample_weight, backend)
    return BatchState(plain, first, True)


def _device_state_value(vec, reduction: str, compat: str, dtype):
    """The reduced value of a device vector [Σ w·ℓ, Σ w, count, masked], computed on the device."""
    import cupy as xp

    ws, w, c, m = vec[0], vec[1], vec[2], vec[3]
    if reduction == "sum":
        v = ws
    elif reduction == "mean_with_sample_weight":
        v = xp.where(w != 0, ws / xp.where(w != 0, w, 1.0), 0.0)
    else:
        empty = xp.where((m > 0) & (ws == 0), math.nan, 0.0) if compat == "keras2" else xp.zeros((), xp.float64)
        v = xp.where(c != 0, ws / xp.where(c != 0, c, 1.0), empty)
    return v.astype(dtype)


# ---- the accumulator ----------------------------------------------------------------------------

class LossAccumulator:
    """A gpuloss loss accumulated over batches: :meth:`update` per batch, :meth:`merge` with
    other accumulators (other workers, other devices), :meth:`result` for the value.

    The result equals the loss called once on the concatenated batches (and weights) to 1e-6
    relative, for every reduction with a scalar result ("auto"/"sum_over_batch_size"/"mean",
    "sum", "mean_with_sample_weight"); ``ignore_class`` and Hinge's all-labels rule included.
    The state is the partial triple (:class:`BatchState`), a few floats: an accumulator pickles.

    Batches may be any host kind (NumPy, pandas, torch CPU, JAX CPU), Dask arrays (computed at
    :meth:`update`) or device arrays (accumulated on the device without synchronising; needs the
    GPU backend). The batch axis is axis 0: a loss whose per-sample values do not keep it (a
    loss reducing over axis 0, Dice/Tversky with ``axis=None``, Circle, which compares the
    samples of a batch with each other) raises ``ValueError``.

    With ``"mean_with_sample_weight"`` Keras divides by Σ w of the weights *as given*, so a
    scalar weight counts once per update, not once per sample: the result equals the one-shot
    value when the weights are per sample (shapes ``(B,)``, ``(B, 1)``, ...).
    """

    def __init__(self, loss: Any, *, backend: str | None = None):
        loss = _as_loss(loss)
        self.loss = loss
        self.compat = loss.compat
        self.backend = backend
        self._spec, self._options = _loss_spec(loss)
        self.reset()

    def reset(self) -> "LossAccumulator":
        self._state: BatchState | None = None
        self._device = None
        self._dtype: np.dtype | None = None
        return self

    # -- updates --

    def update(self, y_true: Any, y_pred: Any, *more: Any, sample_weight: Any = None) -> "LossAccumulator":
        """Add one batch (``update(anchor, positive, negative)`` for the triplet loss)."""
        names = tuple(self._spec.inputs) if self._spec is not None else ("y_true", "y_pred")
        args = [y_true, y_pred, *more]
        if len(args) == len(names) + 1 and sample_weight is None:
            *args, sample_weight = args
        if len(args) != len(names):
            raise TypeError(f"update expects {', '.join(names)} and optionally sample_weight")
        kind = _interop.classify(args + [sample_weight], list(names) + ["sample_weight"])
        values = dict(zip(names, args))
        if self._spec is None:
            state, dtype = self._custom_state(values, sample_weight)
        elif kind == "device":
            values.update(self._options)
            vec = _interop.device_partial(self._spec, values, self.compat, sample_weight)
            self._device = vec if self._device is None else self._device + vec
            self._promote(_pipeline.result_dtypes(np.empty(0, np.dtype(args[1].dtype)), self.compat)[1])
            return self
        elif kind == "dask":
            from . import _dask

            values.update(self._options)
            lazy, dtype = _dask.lazy_state(self._spec, values, self.compat, sample_weight, self.backend)
            state = _unbox(lazy.compute())
        else:
            values.update(self._options)
            host_values, host_weight, _ = _interop.to_host(values, names, sample_weight, "host")
            state, dtype = batch_state(self._spec, host_values, self.compat, host_weight, self.backend)
        self._state = state if self._state is None else self._state.merge(state)
        self._promote(dtype)
        return self

    def _custom_state(self, values: dict, sample_weight: Any):
        """A ``Loss`` subclass with its own ``call``: per-sample values, then the triple."""
        y, p = (_interop.host_array(values[n]) for n in ("y_true", "y_pred"))
        L = np.asarray(_interop.host_array(self.loss.call(y, p)))
        if L.ndim == 0:
            raise ValueError(f"{type(self.loss).__name__}.call returned a scalar: batches cannot be accumulated")
        sw = None if sample_weight is None else _pipeline.as_array(_interop.host_array(sample_weight), "sample_weight")
        dtype = L.dtype if L.dtype.kind == "f" else np.dtype(np.float32)
        return BatchState(_pipeline._rows_partial(L, None, sw, self.compat)), dtype

    def _promote(self, dtype) -> None:
        dtype = np.dtype(dtype)
        self._dtype = dtype if self._dtype is None else np.promote_types(self._dtype, dtype)

    def merge(self, other: "LossAccumulator") -> "LossAccumulator":
        """Add the batches of ``other`` (an accumulator of the same loss) to this one."""
        if not isinstance(other, LossAccumulator):
            raise TypeError(f"can only merge a LossAccumulator, got {type(other).__name__}")
        if not self._same_loss(other):
            raise ValueError(f"cannot merge accumulators of different losses: {self.loss!r} and {other.loss!r}")
        if other._state is not None:
            self._state = other._state if self._state is None else self._state.merge(other._state)
        if other._device is not None:
            self._device = other._device if self._device is None else self._device + other._device
        if other._dtype is not None:
            self._promote(other._dtype)
        return self

    def _same_loss(self, other: "LossAccumulator") -> bool:
        if self.compat != other.compat or self._spec is not other._spec:
            return False
        if self._spec is None:
            return type(self.loss) is type(other.loss)
        if self._options.keys() != other._options.keys():
            return False
        return all(_equal(self._options[k], other._options[k]) for k in self._options)

    # -- results --

    @property
    def state(self) -> BatchState:
        """The accumulated state (device sums are copied to the host)."""
        state = self._state or BatchState()
        if self._device is not None:
            ws, w, c, m = (float(v) for v in _to_host_vector(self._device))
            state = state.merge(BatchState(Partial(ws, w, c, m > 0)))
        return state

    def result(self, reduction: Any = None):
        """The loss of all batches so far, reduced with ``reduction`` (default: the loss's)."""
        r = self.loss.reduction if reduction is None else reduction
        if r in ("none", None):
            raise ValueError("result() gives reduced values only: pass reduction='sum_over_batch_size', 'sum', "
                             "'mean' or 'mean_with_sample_weight' (the loss's reduction is "
                             f"{self.loss.reduction!r})")
        r = _pipeline.check_reduction(r, self.compat)
        r = "sum_over_batch_size" if r == "auto" else r
        dtype = self._dtype if self._dtype is not None else np.dtype(np.float32)
        if self._device is not None:
            vec = self._device
            if self._state is not None:
                p = self._state.final()
                vec = vec + _interop._cupy().asarray(np.array([p.weighted_sum, p.weight_sum, p.count,
                                                               float(p.masked)]))
            return _device_state_value(vec, r, self.compat, dtype)
        p = (self._state or BatchState()).final()
        return np.asarray(p.value(r, self.compat), dtype=dtype)

    def __getstate__(self):
        d = dict(self.__dict__)
        if d.get("_device") is not None:
            d["_state"] = self.state
            d["_device"] = None
        del d["_spec"], d["_options"]  # rebuilt from the loss (a spec holds unpicklable definitions)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._spec, self._options = _loss_spec(self.loss)

    def __repr__(self) -> str:
        p = self.state.final()
        return (f"LossAccumulator({type(self.loss).__name__}, Σw·ℓ={p.weighted_sum:.6g}, Σw={p.weight_sum:.6g}, "
                f"count={p.count:.6g})")


def batch_state(spec, values: dict, compat: str, sample_weight: Any, backend: str | None):
    """(state, result dtype) of one batch of host arrays; ``ValueError`` if the loss does not
    keep the batch axis."""
    names = list(spec.inputs)
    options = {k: v for k, v in values.items() if k not in names}
    arrays = [_pipeline.as_array(values[n], n) for n in names]
    sw = None if sample_weight is None else _pipeline.as_array(sample_weight, "sample_weight")
    sp = split(spec, arrays, options, compat, sw, True)
    if not sp.ok:
        raise ValueError(f"{spec.class_name} cannot be accumulated over batches: {sp.reason}")
    state = host_state(spec, values, compat, sample_weight, backend, sp.rule)
    dtype = _pipeline.result_dtypes(values[names[1]], compat)[1]
    return state, dtype


def _as_loss(loss: Any):
    from . import _api, get

    if isinstance(loss, str):
        loss = get(loss)
    if isinstance(loss, type) and issubclass(loss, _api.Loss):
        loss = loss()
    if not isinstance(loss, _api.Loss) and callable(loss) and getattr(loss, "spec", None) is not None:
        loss = loss.spec.cls()
    if not isinstance(loss, _api.Loss):
        raise TypeError(f"LossAccumulator needs a gpuloss loss (an instance of gpuloss.Loss), got {loss!r}")
    return loss


def _loss_spec(loss):
    """(spec, options) of a gpuloss loss; (None, {}) for a ``Loss`` subclass with its own ``call``."""
    spec = getattr(type(loss), "spec", None)
    if spec is None:
        spec = getattr(getattr(loss, "fn", None), "spec", None)
    if spec is None:
        return None, {}
    options = dict(spec.defaults)
    options.update(getattr(loss, "_fn_kwargs", {}))
    return spec, options


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _unbox(x: Any) -> BatchState:
    return x.item() if isinstance(x, np.ndarray) else x


def _to_host_vector(vec) -> np.ndarray:
    get = getattr(vec, "get", None)
    return np.asarray(get() if callable(get) else vec, dtype=np.float64)

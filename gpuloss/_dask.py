"""Dask arrays: the fused kernel per chunk, a tree reduction of the partial triples.

A call with a Dask array among its inputs or weights returns a lazy Dask array:

- reduced class calls: a 0-d array. Each chunk along the batch axis (axis 0) runs the fused
  kernel and gives its partial triple (Σ w·ℓ, Σ w, count; :class:`gpuloss.streaming.BatchState`),
  ``dask.array.reduction`` merges them in a tree, and the last step applies the reduction. The
  value equals the in-memory call to 1e-6 relative for every reduction.
- ``reduction="none"`` and loss functions: the per-sample values, chunked like the inputs.

Inputs are split along axis 0 only: the other axes of each chunk are gathered (rechunked to one
chunk), and inputs, weights and NumPy operands are aligned to the chunks of the first chunked
input. Arrays without the batch axis (a scalar or per-class weight, broadcast labels) go whole to
every chunk. Batch-global rules are kept exact: Hinge's "all labels are 0 or 1" (each chunk
keeps the triples of both label conventions and the reduction picks one; per-sample values wait
for the global test), and Keras's Σ w of weights without the batch axis (counted once). A call
that does not split along axis 0 (the loss reduces over it, Dice/Tversky with ``axis=None``,
Circle, Keras 3's scalar losses) runs in one task on the gathered inputs, with a
``PerformanceWarning``.

Chunks may be NumPy or CuPy (the GPU backend then runs per chunk). Inside Dask workers the
Numba kernels use at most ``cores // worker threads`` threads, capped by ``OMP_NUM_THREADS``
(Dask's nanny sets it to 1), so workers × threads never oversubscribe the cores; in Dask's
local threaded scheduler each task uses ``cores // pool size`` threads.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _interop, _pipeline, streaming
from .partial import Partial
from .streaming import BatchState

__all__ = ["evaluate", "lazy_state", "numba_threads"]


# ---- threads ------------------------------------------------------------------------------------

def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _dask_worker():
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return get_worker()
    except Exception:
        return None


def numba_threads() -> int | None:
    """Numba threads for one chunk task here (None: not inside Dask, leave Numba as it is)."""
    cores = _cores()
    worker = _dask_worker()
    if worker is not None:
        state = getattr(worker, "state", None)
        nthreads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None) or 1
        n = cores // max(1, int(nthreads))
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) > 0:
            n = min(n, int(omp))
    elif threading.current_thread() is not threading.main_thread():
        import dask

        pool = dask.config.get("num_workers", None) or cores
        n = cores // max(1, int(pool))
    else:
        return None
    import numba

    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


_SERIAL = threading.Lock()


@contextmanager
def _kernel_threads():
    from . import _backend

    _backend.numba_kernels()  # before Numba itself: the kernels choose Numba's CPU features on import
    n = numba_threads()
    if n is None:
        yield
        return
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # not chosen until the first parallel kernel runs
        layer = None
    # Numba's workqueue layer aborts on concurrent launches from several threads
    guard = _SERIAL if layer in (None, "workqueue") else nullcontext()
    with guard:
        prev = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            yield
        finally:
            numba.set_num_threads(prev)


# ---- what each task computes --------------------------------------------------------------------

@dataclass
class _Job:
    spec: Any                     # the loss's registered name, or its spec when it is not registered
    compat: str
    reduction: Any
    is_class_call: bool
    backend: str | None
    names: tuple
    options: dict
    has_weight: bool
    rule: tuple | None = None     # Hinge's label rule: (signed params, plain params)
    flag: Any = None              # rows with the rule: True/False, or "arg" (last block)
    lead: int = 0                 # a block with the batch axis
    tail: tuple = ()              # the trailing shape of a result block
    out_dtype: str = "float32"

    def loss_spec(self):
        if isinstance(self.spec, str):
            from .registry import LOSSES

            return LOSSES[self.spec]
        return self.spec


def _unpack(blocks, job: _Job):
    n = len(job.names)
    values = dict(zip(job.names, blocks[:n]))
    values.update(job.options)
    sw = blocks[n] if job.has_weight else None
    return values, sw


def _on_device(values: dict, names, sw) -> bool:
    return _interop.classify([values[n] for n in names] + [sw], list(names) + ["sample_weight"]) == "device"


def _chunk_state(*blocks, job: _Job):
    """One chunk's BatchState, in a 1-element object array."""
    values, sw = _unpack(blocks, job)
    spec = job.loss_spec()
    if _on_device(values, job.names, sw):
        vec = streaming._to_host_vector(_interop.device_partial(spec, values, job.compat, sw))
        state = BatchState(Partial(float(vec[0]), float(vec[1]), float(vec[2]), bool(vec[3] > 0)))
    else:
        with _kernel_threads():
            state = streaming.host_state(spec, values, job.compat, sw, job.backend, job.rule)
    out = np.empty(1, dtype=object)
    out[0] = state
    return out


def _evaluate(spec, values, sw, job: _Job):
    if _on_device(values, job.names, sw):
        return _interop.evaluate_device(spec, values, job.compat, job.reduction, sw, job.is_class_call, job.backend)
    with _kernel_threads():
        return _pipeline._evaluate_host(spec, values, job.compat, job.reduction, sw, job.is_class_call, job.backend)


def _chunk_rows(*blocks, job: _Job):
    """One chunk's per-sample values."""
    values, sw = _unpack(blocks, job)
    spec = job.loss_spec()
    if job.rule is not None:
        binary = bool(np.asarray(blocks[-1])) if job.flag == "arg" else bool(job.flag)
        spec = streaming.fixed_prepare(spec, job.rule[0] if binary else job.rule[1])
    result = _evaluate(spec, values, sw, job)
    shape = (blocks[job.lead].shape[0],) + job.tail
    return result if result.shape == shape else result.reshape(shape)


def _whole(*blocks, job: _Job):
    """The whole call in one task (calls that do not split along axis 0)."""
    values, sw = _unpack(blocks, job)
    result = _evaluate(job.loss_spec(), values, sw, job)
    return result if result.shape == job.tail else result.reshape(job.tail)


def _keep(x, axis=None, keepdims=None):
    return x


def _merge(x, axis=None, keepdims=None):
    states = [s for s in np.asarray(x, dtype=object).ravel() if s is not None]
    merged = states[0] if states else BatchState()
    for s in states[1:]:
        merged = merged.merge(s)
    out = np.empty((1,) if keepdims else (), dtype=object)
    out[...] = _box(merged)
    return out


def _box(state):
    out = np.empty((), dtype=object)
    out[()] = state
    return out


def _with_weight_sum(state, total):
    return _box(streaming._unbox(state).with_weight_sum(float(np.asarray(total))))


def _value(state, reduction, compat, out_dtype):
    return np.asarray(streaming._unbox(state).final().value(reduction, compat), dtype=out_dtype)


# ---- building the graph -------------------------------------------------------------------------

def _operand(x: Any, name: str):
    """Dask arrays as they are; other arguments as NumPy (lists with TensorFlow's rules)."""
    if _interop._is_dask(x):
        if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
            raise ValueError(f"{name} is a Dask array of unknown shape {x.shape}: call "
                             f"{name}.compute_chunk_sizes() first")
        if np.dtype(x.dtype).kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got a Dask array of dtype {x.dtype}")
        return x
    x = _interop.host_array(x)
    if isinstance(x, (list, tuple, bool, int, float)):
        return _pipeline.as_array(x, name)
    return np.asarray(x) if not isinstance(x, np.ndarray) else x


def _meta_like(x) -> np.ndarray:
    return np.empty((0,), dtype=x.dtype) if _interop._is_dask(x) else x


def _output_meta(operands, shape, dtype):
    """An empty array of the chunks' library (CuPy chunks give CuPy results)."""
    for x in operands:
        meta = getattr(x, "_meta", None)
        if meta is not None and _interop._from(meta, "cupy"):
            return sys.modules["cupy"].empty((0,) * len(shape), dtype=dtype)
    return np.empty((0,) * len(shape), dtype=dtype)


@dataclass
class _Graph:
    args: list
    job: _Job
    chunked: bool
    split: Any
    operands: list
    sw: Any


def _build(spec, values: dict, compat: str, reduction: Any, sample_weight: Any, is_class_call: bool,
           backend: str | None, strict: bool = False) -> _Graph:
    import dask.array as da

    names = tuple(spec.inputs)
    operands = [_operand(values[n], n) for n in names]
    sw = None if sample_weight is None else _operand(sample_weight, "sample_weight")
    options = {k: v for k, v in values.items() if k not in names}
    if any(_interop._is_dask(v) for v in options.values()):
        raise TypeError(f"the options of {spec.class_name} must be NumPy arrays or scalars, not Dask arrays")
    sp = streaming.split(spec, operands, options, compat, sw, is_class_call, sizes=())
    out_dtype = _pipeline.result_dtypes(_meta_like(operands[1] if len(operands) > 1 else operands[0]),
                                        compat if is_class_call else "keras2")[1]

    everything = operands + ([sw] if sw is not None else [])
    carriers = list(sp.carries) + ([sp.weight_carries] if sw is not None else []) if sp.ok else []
    order = ([1] if len(operands) > 1 else []) + list(range(len(everything)))
    lead = next((i for i in order if carriers and carriers[i] and _interop._is_dask(everything[i])), None)
    if lead is not None:
        chunks0 = everything[lead].chunks[0]
    elif strict and sp.ok:  # accumulators: NumPy operands with a Dask weight, one chunk
        lead = next(i for i in order if carriers[i])
        chunks0 = (sp.batch,)
    chunked = lead is not None
    reason = sp.reason
    if chunked:
        reason = sp.consistent(chunks0)
        chunked = not reason and (len(chunks0) > 1 or strict)
    if strict and not chunked:
        raise ValueError(f"{spec.class_name} cannot be accumulated over batches: {reason}")
    if not chunked and not sp.ok:
        if any(_interop._is_dask(x) and x.ndim and x.numblocks[0] > 1 for x in everything):
            from dask.array.core import PerformanceWarning

            warnings.warn(f"{spec.class_name} cannot be computed chunk by chunk ({reason}); its inputs are "
                          f"gathered into one task", PerformanceWarning, stacklevel=5)

    args: list = []
    for k, x in enumerate(everything):
        is_dask = _interop._is_dask(x)
        if chunked and carriers[k]:
            if is_dask:
                x = x.rechunk({0: chunks0, **{a: -1 for a in range(1, x.ndim)}})
            else:
                x = da.from_array(x, chunks=(chunks0,) + tuple(x.shape[1:]))
            args += [x, ("b",) + tuple(f"x{k}_{a}" for a in range(1, x.ndim))]
        elif is_dask:
            args += [x, tuple(f"x{k}_{a}" for a in range(x.ndim))]
        else:
            args += [x, None]
    reg = spec.fn_name if _registered(spec) else spec
    reduced = is_class_call and reduction not in ("none", None)
    if chunked:
        tail = tuple(sp.out_shape[1:])
    elif reduced:
        tail = (0,) if compat == "keras3" and sp.aligned_shape == (0,) else ()
    else:
        tail = tuple(sp.out_shape)
    job = _Job(reg, compat, reduction, is_class_call, backend, names, options, sw is not None,
               rule=sp.rule if chunked else None, lead=lead or 0, tail=tail, out_dtype=np.dtype(out_dtype).str)
    return _Graph(args, job, chunked, sp, operands, sw)


def _registered(spec) -> bool:
    from .registry import LOSSES

    return LOSSES.get(spec.fn_name) is spec


def _states(g: _Graph, split_every: Any = None):
    """The merged BatchState of a chunked reduced call: a 0-d object Dask array."""
    import dask.array as da

    parts = da.blockwise(_chunk_state, ("b",), *g.args, adjust_chunks={"b": 1}, dtype=object,
                         concatenate=True, meta=np.empty((0,), dtype=object), job=g.job)
    state = da.reduction(parts, chunk=_keep, combine=_merge, aggregate=_merge, axis=0, dtype=object,
                         concatenate=True, split_every=split_every, meta=np.empty((), dtype=object))
    sw = g.sw
    if sw is not None and not g.split.weight_carries and g.split.plan.ignore_class is None:
        # Keras's Σ w is over the weights as given: one that does not carry the batch axis counts once
        if _interop._is_dask(sw):
            total = sw.astype(np.float64).sum()
            state = da.blockwise(_with_weight_sum, (), state, (), total, (), dtype=object,
                                 meta=np.empty((), dtype=object))
        else:
            total = float(np.sum(_pipeline.as_array(sw, "sample_weight"), dtype=np.float64))
            state = da.blockwise(_with_weight_sum, (), state, (), total, None, dtype=object,
                                 meta=np.empty((), dtype=object))
    return state


def evaluate(spec, values: dict, compat: str, reduction: Any = None, sample_weight: Any = None,
             is_class_call: bool = False, backend: str | None = None):
    """A lazy Dask array: the reduced loss (0-d) or the per-sample values."""
    import dask.array as da

    g = _build(spec, values, compat, reduction, sample_weight, is_class_call, backend)
    job = g.job
    out_dtype = np.dtype(job.out_dtype)
    reduced = is_class_call and reduction not in ("none", None)
    if not g.chunked:
        out_ind = tuple(f"o{k}" for k in range(len(job.tail)))
        return da.blockwise(_whole, out_ind, *g.args, new_axes=dict(zip(out_ind, job.tail)), dtype=out_dtype,
                            concatenate=True, meta=_output_meta(g.operands, job.tail, out_dtype), job=job)
    if reduced:
        state = _states(g)
        return da.blockwise(_value, (), state, (), dtype=out_dtype, meta=np.empty((), dtype=out_dtype),
                            reduction=reduction, compat=compat, out_dtype=job.out_dtype)
    args = list(g.args)
    if job.rule is not None:
        y = g.operands[0]
        if _interop._is_dask(y):
            args += [((y == 0) | (y == 1)).all(), ()]
            job.flag = "arg"
        else:
            job.flag = bool(np.all((y == 0) | (y == 1)))
    out_ind = ("b",) + tuple(f"o{k}" for k in range(1, len(job.tail) + 1))
    return da.blockwise(_chunk_rows, out_ind, *args, new_axes=dict(zip(out_ind[1:], job.tail)), dtype=out_dtype,
                        concatenate=True, meta=_output_meta(g.operands, out_ind, out_dtype), job=job)


def lazy_state(spec, values: dict, compat: str, sample_weight: Any = None, backend: str | None = None):
    """(0-d object Dask array holding the call's BatchState, result dtype), for accumulators;
    ``ValueError`` if the call does not split along axis 0."""
    g = _build(spec, values, compat, "sum", sample_weight, True, backend, strict=True)
    return _states(g), np.dtype(g.job.out_dtype)

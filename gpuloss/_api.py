"""The Keras-shaped API: ``Loss``, ``Reduction``, and the functions and classes made from
the registry (Keras 3 keeps a thin class over each loss function; so does gpuloss)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from . import _backend, _pipeline
from .registry import LossSpec

__all__ = ["Loss", "LossFunctionWrapper", "Reduction", "make_function", "make_class"]


class Reduction:
    """Reduction names (Keras 2's ``tf.keras.losses.Reduction`` plus Keras 3's additions)."""

    AUTO = "auto"
    NONE = "none"
    SUM = "sum"
    SUM_OVER_BATCH_SIZE = "sum_over_batch_size"
    MEAN = "mean"
    MEAN_WITH_SAMPLE_WEIGHT = "mean_with_sample_weight"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return (cls.AUTO, cls.NONE, cls.SUM, cls.SUM_OVER_BATCH_SIZE, cls.MEAN, cls.MEAN_WITH_SAMPLE_WEIGHT)

    @classmethod
    def validate(cls, key: Any) -> None:
        if key not in cls.all():
            raise ValueError(f'Invalid Reduction Key: {key}. Expected keys are "{cls.all()}"')


class Loss:
    """Base class of every loss: subclass it and implement ``call(y_true, y_pred)`` returning
    per-sample values; ``__call__`` weights and reduces them as Keras does.

    ``reduction``: "auto"/"sum_over_batch_size" (Σ w·L / number of elements), "sum", "none",
    and Keras 3's "mean" (= "sum_over_batch_size"), "mean_with_sample_weight" (Σ w·L / Σ w)
    and None (= "none"). ``compat="keras3"`` applies Keras 3's alignment and reduction rules.
    """

    def __init__(self, reduction: Any = "auto", name: str | None = None, *, compat: str = "keras2"):
        self.compat = _pipeline.check_compat(compat)
        self.reduction = _pipeline.check_reduction(reduction, self.compat)
        self.name = name

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None):
        """Per-sample values from ``call``, weighted and reduced (NumPy path)."""
        import numpy as np

        L = np.asarray(self.call(y_true, y_pred))
        sw = None if sample_weight is None else _pipeline.as_array(sample_weight, "sample_weight")
        return np.asarray(_pipeline._weighted_reduce(L, None, sw, _effective(self.reduction), self.compat),
                          dtype=L.dtype if L.dtype.kind == "f" else np.float32)

    def call(self, y_true: Any, y_pred: Any):
        raise NotImplementedError("Must be implemented in subclasses.")

    def get_config(self) -> dict[str, Any]:
        config = {"reduction": self.reduction, "name": self.name}
        if self.compat != "keras2":
            config["compat"] = self.compat
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        config.pop("fn", None)
        return cls(**config)


def _effective(reduction: Any) -> Any:
    return "sum_over_batch_size" if reduction == "auto" else reduction


class LossFunctionWrapper(Loss):
    """A ``Loss`` around a loss function and its keyword arguments."""

    def __init__(self, fn: Callable[..., Any], reduction: Any = "auto", name: str | None = None,
                 *, compat: str = "keras2", **kwargs: Any):
        super().__init__(reduction=reduction, name=name, compat=compat)
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true: Any, y_pred: Any):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._fn_kwargs)
        config["fn"] = getattr(self.fn, "__name__", str(self.fn))
        return config


def make_function(spec: LossSpec) -> Callable[..., Any]:
    """The public loss function: the definition's signature and docstring, computing L."""
    body = spec.body
    sig = inspect.signature(body)

    n_inputs = len(spec.inputs)
    defaults = {k: p.default for k, p in sig.parameters.items() if k not in spec.inputs}
    positional_only_inputs = all(p.default is inspect.Parameter.empty for k, p in sig.parameters.items()
                                 if k in spec.inputs)

    @functools.wraps(body)
    def fn(*args: Any, backend: str | None = None, **kwargs: Any):
        if positional_only_inputs and not kwargs and len(args) == n_inputs:
            values = dict(zip(spec.inputs, args))  # the common call: Signature.bind costs ~4 µs
            values.update(defaults)
        else:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
        compat = _pipeline.check_compat(values.pop("compat"))
        return _pipeline.evaluate(spec, values, compat, backend=backend)

    # the definition's signature plus ``backend`` ("numba", "cupy"; default: where the inputs live)
    fn.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [  # type: ignore[attr-defined]
        inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None)])
    fn.spec = spec  # type: ignore[attr-defined]
    return fn


def make_class(spec: LossSpec) -> type:
    """The public loss class: constructor parameters in Keras's order, fused ``__call__``."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in spec.class_params:
        if name == "reduction":
            default: Any = spec.default_reduction
        elif name == "name":
            default = spec.default_name
        else:
            default = spec.defaults[name]
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    params.append(inspect.Parameter("compat", inspect.Parameter.KEYWORD_ONLY, default=spec.default_compat))
    params.append(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None))
    init_sig = inspect.Signature(params)
    option_names = [n for n in spec.class_params if n not in ("reduction", "name")]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = init_sig.bind(self, *args, **kwargs)
        explicit_reduction = "reduction" in bound.arguments
        bound.apply_defaults()
        a = bound.arguments
        if not explicit_reduction and a["compat"] == "keras3":
            a["reduction"] = "sum_over_batch_size"  # Keras 3's default (it has no "auto")
        options = {n: a[n] for n in option_names}
        LossFunctionWrapper.__init__(self, spec.function, reduction=a["reduction"], name=a["name"],
                                     compat=a["compat"], **options)
        self.backend = _backend.resolve_backend(a["backend"]) if a["backend"] else None
        # build one plan now so bad parameters fail at construction, as Keras does
        _validate_options(spec, options, self.compat)

    def __call__(self, *args: Any, sample_weight: Any = None):
        if len(args) == len(spec.inputs) + 1 and sample_weight is None:
            *args, sample_weight = args
        if len(args) != len(spec.inputs):
            raise TypeError(f"{spec.class_name} expects {', '.join(spec.inputs)} and optionally sample_weight")
        values = dict(zip(spec.inputs, args))
        values.update(self._fn_kwargs)
        reduction = self.reduction
        # positional: keyword passing cost ~1 µs of a ~10 µs repeated call (2-core EPYC)
        return _pipeline.evaluate(spec, values, self.compat, "sum_over_batch_size" if reduction == "auto" else
                                  reduction, sample_weight, True, self.backend)

    __init__.__signature__ = init_sig  # type: ignore[attr-defined]
    call_params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    call_params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in spec.inputs]
    call_params.append(inspect.Parameter("sample_weight", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
    __call__.__signature__ = inspect.Signature(call_params)  # type: ignore[attr-defined]
    doc = f"Loss class of :func:`gpuloss.{spec.fn_name}`.\n\n{spec.doc}"
    cls = type(spec.class_name, (LossFunctionWrapper,), {
        "__init__": __init__, "__call__": __call__, "__doc__": doc, "__module__": "gpuloss", "spec": spec,
    })
    cls.__qualname__ = spec.class_name
    return cls


def _validate_options(spec: LossSpec, options: dict[str, Any], compat: str) -> None:
    import numpy as np

    dummy = [np.zeros((1, 2), np.float32) for _ in spec.inputs]
    spec.body(*dummy, **options, compat=compat)

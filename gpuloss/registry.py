"""The registry of losses: one entry per loss, made by the :func:`loss` decorator.

The registry drives the public API (functions, classes, aliases, ``get``), the tests
(every entry must have an independent reference) and the benchmarks. Adding a loss means
writing its definition in a family module under ``gpuloss/losses/``, a reference in
``tests/reference.py`` and, for a new family module, one import line.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["LossSpec", "LOSSES", "loss"]


@dataclass
class LossSpec:
    """Everything the API, tests and benchmarks need to know about one loss."""

    fn_name: str
    class_name: str
    body: Callable[..., Any]
    defaults: dict[str, Any]
    family: str
    default_name: str
    aliases: tuple[str, ...] = ()
    get_aliases: tuple[str, ...] = ()
    keras3_only: bool = False
    #: the class constructor's parameters in order (loss options, reduction, name, ...)
    class_params: tuple[str, ...] = ()
    #: the inputs of a call: ("y_true", "y_pred") or ("anchor", "positive", "negative")
    inputs: tuple[str, ...] = ("y_true", "y_pred")
    #: Keras 3 applies its rank alignment inside these functions too (§5.1)
    k3_function_aligns: bool = False
    doc: str = ""
    function: Callable[..., Any] | None = field(default=None, repr=False)
    cls: type | None = field(default=None, repr=False)

    @property
    def layout_kind(self) -> str:
        """The shape rules of the loss (see ``gpuloss.program.Plan.layout``)."""
        import numpy as np

        dummy = [np.zeros((1, 2), np.float32) for _ in self.inputs]
        return self.body(*dummy, **self.defaults, compat=self.default_compat).layout

    @property
    def default_compat(self) -> str:
        return "keras3" if self.keras3_only else "keras2"

    @property
    def default_reduction(self) -> str:
        return "sum_over_batch_size" if self.keras3_only else "auto"


LOSSES: dict[str, LossSpec] = {}


def loss(class_name: str, *, name: str | None = None, aliases: tuple[str, ...] = (),
         get_aliases: tuple[str, ...] = (), keras3_only: bool = False,
         class_params: tuple[str, ...] | None = None, k3_function_aligns: bool = False):
    """Register a loss definition.

    The decorated function has the public signature (inputs first, then the loss options
    with Keras's defaults, then keyword-only ``compat``) and returns the
    :class:`gpuloss.program.Plan` of a call; it must not compute on the arrays. Its
    docstring is the documentation of both the function and the class.
    """

    def deco(body: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(body)
        params = list(sig.parameters.values())
        inputs = tuple(p.name for p in params if p.default is inspect.Parameter.empty
                       and p.kind is p.POSITIONAL_OR_KEYWORD)
        defaults = {p.name: p.default for p in params
                    if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
        order = tuple(defaults) + ("reduction", "name") if class_params is None else class_params
        spec = LossSpec(
            fn_name=body.__name__, class_name=class_name, body=body, defaults=defaults,
            family=body.__module__.rsplit(".", 1)[-1], default_name=name or body.__name__,
            aliases=aliases, get_aliases=get_aliases, keras3_only=keras3_only,
            class_params=order, inputs=inputs, k3_function_aligns=k3_function_aligns,
            doc=inspect.getdoc(body) or "",
        )
        LOSSES[spec.fn_name] = spec
        from ._api import make_class, make_function  # the API is built from the spec

        spec.function = make_function(spec)
        spec.cls = make_class(spec)
        return spec.function

    return deco

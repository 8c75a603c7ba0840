"""gpuloss: every Keras loss with tf_keras's numbers, computed by fused kernels.

The API mirrors ``tf_keras.losses`` name for name (classes, functions, aliases, ``get``,
``serialize``, ``deserialize``), plus Keras 3's Dice, Tversky, Circle and generalized
crossentropy, a contrastive and a triplet-margin loss. Every class and function takes
``compat="keras3"`` for Keras 3's numbers where they differ.

``import gpuloss`` imports neither Numba nor CuPy: kernels are generated, compiled and
cached on disk the first time a loss runs.
"""

from __future__ import annotations

from typing import Any, Callable

from . import losses as _losses  # noqa: F401  (fills the registry)
from ._api import Loss, LossFunctionWrapper, Reduction
from ._pipeline import epsilon, set_epsilon
from .registry import LOSSES

__version__ = "0.1.0"

_exports: dict[str, Any] = {}
for _spec in LOSSES.values():
    _exports[_spec.fn_name] = _spec.function
    _exports[_spec.class_name] = _spec.cls
    for _alias in _spec.aliases:
        _exports[_alias] = _spec.function
globals().update(_exports)

#: names ``get`` accepts beyond the module attributes (tf_keras module globals)
_GET_ONLY: dict[str, Callable[..., Any]] = {
    alias: spec.function for spec in LOSSES.values() for alias in spec.get_aliases
}


def serialize(loss: Any, use_legacy_format: bool = False) -> dict[str, Any]:
    """A dict describing a loss object or function, as Keras writes it."""
    if isinstance(loss, Loss):
        out = {"module": "keras.losses", "class_name": type(loss).__name__, "config": loss.get_config(),
               "registered_name": None}
    elif callable(loss):
        out = {"module": "builtins", "class_name": "function", "config": loss.__name__,
               "registered_name": "function"}
    else:
        raise ValueError(f"Cannot serialize {loss!r}: not a loss")
    if use_legacy_format:
        return {"class_name": out["class_name"], "config": out["config"]}
    return out


def deserialize(name: Any, custom_objects: dict[str, Any] | None = None, use_legacy_format: bool = False):
    """The loss described by ``name`` (a dict from :func:`serialize` or a name)."""
    custom_objects = custom_objects or {}
    if isinstance(name, dict):
        cls_name, config = name.get("class_name"), name.get("config")
        if cls_name == "function":
            return _lookup(config, custom_objects)
        obj = custom_objects.get(cls_name) or _exports.get(cls_name)
        if not (isinstance(obj, type) and issubclass(obj, Loss)):
            raise ValueError(f"Unknown loss function: '{cls_name}'. Please ensure you are using a "
                             "`gpuloss` loss or pass it in `custom_objects`.")
        return obj.from_config(config or {})
    return _lookup(name, custom_objects)


def _lookup(name: str, custom_objects: dict[str, Any]):
    obj = custom_objects.get(name) or _exports.get(name) or _GET_ONLY.get(name)
    if obj is None and name in ("Loss", "Reduction"):
        obj = {"Loss": Loss, "Reduction": Reduction}[name]
    if obj is None:
        raise ValueError(f"Unknown loss function: '{name}'. Please ensure you are using a `gpuloss` loss "
                         "or pass it in `custom_objects`.")
    if isinstance(obj, type) and issubclass(obj, Loss):
        return obj()
    return obj


def get(identifier: Any):
    """A loss from a name, a config dict or a callable (returned unchanged); None gives None."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return deserialize(identifier)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret loss function identifier: {identifier}")


from . import registry  # noqa: E402,F401  (gpuloss.registry.LOSSES drives tests and benchmarks)
from .streaming import LossAccumulator  # noqa: E402

__all__ = sorted(list(_exports) + ["Loss", "LossFunctionWrapper", "LossAccumulator", "Reduction", "get",
                                   "serialize", "deserialize", "epsilon", "set_epsilon", "registry", "LOSSES"])
del _spec, _alias

"""The implementations gpuloss is timed against, per benchmark case.

Each peer computes the same number as gpuloss (the runner checks it once per case and size
and records a mismatch instead of timing a different computation):

``numpy``     the formula as Keras writes it (:data:`benchmarks.formulas.NUMPY_FORMULAS`);
``torch``     ``torch.nn.functional`` where an equivalent exists, else the formula in torch ops
              (CPU, eager, the library's default thread count);
``jax``       ``jax.jit`` of the ``jax.numpy`` formula, on the CPU;
``sklearn``   the scikit-learn metric where one computes the same number;
``tf_keras``  the tf_keras loss class (optional, heavy: only if it is installed).

A library is used only if it imports. Converting inputs (``torch.from_numpy``, moving to the
JAX device, label decoding for scikit-learn) is done once, outside the timing.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .cases import CLASSES, Case
from .formulas import EPS, NUMPY_FORMULAS, keras_formulas

__all__ = ["Peer", "PEER_LIBRARIES", "available", "peers_for", "versions"]

PEER_LIBRARIES = ("numpy", "torch", "jax", "sklearn", "tf_keras")


@dataclass
class Peer:
    library: str
    api: str                                    # what is called, for the report
    prepare: Callable[[tuple], tuple]           # case inputs -> call arguments (untimed)
    call: Callable[..., Any]                    # the timed call
    to_float: Callable[[Any], float] = float    # result -> Python float (untimed)
    max_n: int | None = None                    # sizes above this are skipped (time budget)


_STATE: dict[str, Any] = {}


def _try_import(lib: str):
    if lib in _STATE:
        return _STATE[lib]
    mod = None
    try:
        if lib == "numpy":
            mod = np
        elif lib == "torch":
            import torch

            mod = torch
        elif lib == "jax":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CPU peer, also on a GPU machine
            import jax

            mod = jax
        elif lib == "sklearn":
            import sklearn.metrics  # noqa: F401
            import sklearn

            mod = sklearn
        elif lib == "tf_keras":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tf_keras

            mod = tf_keras
    except Exception as exc:  # not installed or broken: the peer is skipped, the reason kept
        _STATE[f"{lib}:error"] = f"{type(exc).__name__}: {exc}"
        mod = None
    _STATE[lib] = mod
    return mod


def available(libs=PEER_LIBRARIES) -> dict[str, bool]:
    return {lib: _try_import(lib) is not None for lib in libs}


def versions() -> dict[str, str | None]:
    """Versions of the peer libraries (None: not importable; the reason is kept)."""
    out: dict[str, str | None] = {}
    for lib in PEER_LIBRARIES:
        mod = _try_import(lib)
        out[lib] = getattr(mod, "__version__", "?") if mod is not None else None
        if lib == "torch" and mod is not None:
            out["torch_threads"] = str(mod.get_num_threads())
        if lib == "jax" and mod is not None:
            out["jax_backend"] = mod.default_backend()
            import jaxlib

            out["jaxlib"] = jaxlib.__version__
        if lib == "tf_keras" and mod is not None:
            import tensorflow as tf

            out["tensorflow"] = tf.__version__
    return out


def import_errors() -> dict[str, str]:
    return {k.split(":")[0]: v for k, v in _STATE.items() if k.endswith(":error")}


# ---- numpy ------------------------------------------------------------------------------------

def _numpy_peer(case: Case) -> Peer | None:
    f = NUMPY_FORMULAS.get(case.name)
    if f is None:
        return None
    return Peer("numpy", "Keras's formula in NumPy", lambda a: a, f)


# ---- torch ------------------------------------------------------------------------------------

def _torch_impls():
    import torch
    import torch.nn.functional as F

    eps = float(EPS)
    log2 = math.log(2.0)

    def conv(y):  # hinge's {0,1} -> {-1,1} conversion, batch-global as in Keras
        return torch.where(((y == 0) | (y == 1)).all(), 2 * y - 1, y)

    def bce_elem(y, p):
        q = p.clamp(eps, 1 - eps)
        return -(y * (q + eps).log() + (1 - y) * (1 - q + eps).log())

    def cce(y, p):
        q = (p / p.sum(-1, keepdim=True)).clamp(eps, 1 - eps)
        return -(y * q.log()).sum(-1).mean()

    def cfce(y, p):
        q = (p / p.sum(-1, keepdim=True)).clamp(eps, 1 - eps)
        return (0.25 * (1 - q).pow(2.0) * (-y * q.log())).sum(-1).mean()

    def bfce(y, p):
        pt = y * p + (1 - y) * (1 - p)
        return ((1 - pt).pow(2.0) * bce_elem(y, p)).mean()

    def gce(lab, p):
        pl = p.gather(1, lab[:, None]).squeeze(1)
        return ((1 - pl.pow(0.5)) / 0.5).mean()

    def dice(y, p):
        return 1 - 2 * (y * p).sum() / (y.sum() + p.sum() + eps)

    def tversky(y, p):
        tp = (y * p).sum()
        fp = ((1 - y) * p).sum()
        fn = (y * (1 - p)).sum()
        return 1 - tp / (tp + 0.5 * fp + 0.5 * fn + eps)

    def circle(lab, emb, gamma=80.0, margin=0.4):
        b = emb.shape[0]
        dist = (1 - emb @ emb.T).clamp_min(0)
        same = lab[:, None] == lab[None, :]
        pos = same & ~torch.eye(b, dtype=torch.bool)
        neg = ~same
        wp = ((margin + dist) * pos).clamp_min(0)
        wn = ((1 + margin - dist) * neg).clamp_min(0)
        ninf = torch.tensor(-math.inf)
        sp = torch.where(pos, -gamma * wp * (margin - dist), ninf)
        sn = torch.where(neg, gamma * wn * ((1 - margin) - dist), ninf)
        L = torch.logaddexp(torch.zeros(()), torch.logsumexp(sp, 1) + torch.logsumexp(sn, 1))
        m = L > 0
        return L[m].sum() / m.sum().clamp_min(1)

    # (api label, function of torch tensors)
    return {
        "mean_squared_error": ("F.mse_loss", lambda y, p: F.mse_loss(p, y)),
        "mean_absolute_error": ("F.l1_loss", lambda y, p: F.l1_loss(p, y)),
        "mean_absolute_percentage_error": ("torch ops", lambda y, p: (100 * (y - p).abs()
                                                                      / y.abs().clamp_min(eps)).mean()),
        "mean_squared_logarithmic_error": ("torch ops", lambda y, p: ((p.clamp_min(eps) + 1).log()
                                                                      - (y.clamp_min(eps) + 1).log())
                                           .square().mean()),
        "huber": ("F.huber_loss", lambda y, p: F.huber_loss(p, y, delta=1.0)),
        "log_cosh": ("torch ops (F.softplus)", lambda y, p: ((p - y) + F.softplus(-2 * (p - y)) - log2).mean()),
        "poisson": ("F.poisson_nll_loss(log_input=False)",
                    lambda y, p: F.poisson_nll_loss(p, y, log_input=False, eps=eps)),
        "hinge": ("torch ops", lambda y, p: (1 - conv(y) * p).clamp_min(0).mean()),
        "squared_hinge": ("torch ops", lambda y, p: (1 - conv(y) * p).clamp_min(0).square().mean()),
        "categorical_hinge": ("torch ops", lambda y, p: ((((1 - y) * p).amax(-1) - (y * p).sum(-1) + 1)
                                                         .clamp_min(0)).mean()),
        "binary_crossentropy": ("F.binary_cross_entropy", lambda y, p: F.binary_cross_entropy(p, y)),
        "binary_crossentropy_logits": ("F.binary_cross_entropy_with_logits",
                                       lambda y, x: F.binary_cross_entropy_with_logits(x, y)),
        "binary_focal_crossentropy": ("torch ops", bfce),
        "categorical_crossentropy": ("torch ops", cce),
        "categorical_crossentropy_logits": ("F.cross_entropy (probability targets)",
                                            lambda y, x: F.cross_entropy(x, y)),
        "categorical_focal_crossentropy": ("torch ops", cfce),
        "sparse_categorical_crossentropy": ("F.cross_entropy(log(clip(p)))",
                                            lambda lab, p: F.cross_entropy(p.clamp(eps, 1 - eps).log(), lab)),
        "sparse_categorical_crossentropy_logits": ("F.cross_entropy", lambda lab, x: F.cross_entropy(x, lab)),
        "categorical_generalized_cross_entropy": ("torch ops", gce),
        "kl_divergence": ("F.kl_div(batchmean)", lambda y, p: F.kl_div(p.clamp(eps, 1).log(), y.clamp(eps, 1),
                                                                       reduction="batchmean")),
        "cosine_similarity": ("F.cosine_similarity", lambda y, p: -F.cosine_similarity(y, p, dim=-1).mean()),
        "dice": ("torch ops", dice),
        "tversky": ("torch ops", tversky),
        "contrastive_loss": ("torch ops", lambda y, d: (y * d.square()
                                                        + (1 - y) * (1 - d).clamp_min(0).square()).mean()),
        "triplet_margin_loss": ("F.triplet_margin_loss", lambda a, pos, neg: F.triplet_margin_loss(
            a, pos, neg, margin=1.0, p=2, eps=0.0)),
        "circle": ("torch ops", circle),
    }


def _torch_peer(case: Case) -> Peer | None:
    torch = _try_import("torch")
    if torch is None:
        return None
    impls = _STATE.setdefault("torch:impls", _torch_impls())
    if case.name not in impls:
        return None
    api, fn = impls[case.name]
    return Peer("torch", api, lambda a: tuple(torch.from_numpy(x) for x in a), fn, lambda v: float(v.item()))


# ---- jax --------------------------------------------------------------------------------------

def _jax_peer(case: Case) -> Peer | None:
    jax = _try_import("jax")
    if jax is None:
        return None
    if "jax:formulas" not in _STATE:
        import jax.numpy as jnp

        _STATE["jax:formulas"] = keras_formulas(jnp)
    f = _STATE["jax:formulas"].get(case.name)
    if f is None:
        return None
    jitted = jax.jit(f)

    def prepare(a):
        out = []
        for x in a:
            x = x.astype(np.int32) if x.dtype.kind in "iu" else x  # jax runs without x64
            out.append(jax.device_put(x))
        return tuple(jax.block_until_ready(out))

    def call(*args):
        return jitted(*args).block_until_ready()

    return Peer("jax", "jax.jit(Keras's formula in jax.numpy)", prepare, call)


# ---- scikit-learn -----------------------------------------------------------------------------

def _sklearn_peer(case: Case) -> Peer | None:
    if _try_import("sklearn") is None:
        return None
    from sklearn import metrics
    from sklearn.metrics.pairwise import paired_cosine_distances

    labels = np.arange(CLASSES)
    flat = lambda a: tuple(x.reshape(-1) for x in a)  # noqa: E731  (views of contiguous inputs)
    table: dict[str, tuple[str, Callable, Callable]] = {
        "mean_squared_error": ("metrics.mean_squared_error", lambda a: a, metrics.mean_squared_error),
        "mean_absolute_error": ("metrics.mean_absolute_error", lambda a: a, metrics.mean_absolute_error),
        "mean_absolute_percentage_error": ("100 × metrics.mean_absolute_percentage_error", lambda a: a,
                                           lambda y, p: 100 * metrics.mean_absolute_percentage_error(y, p)),
        "mean_squared_logarithmic_error": ("metrics.mean_squared_log_error", lambda a: a,
                                           metrics.mean_squared_log_error),
        "hinge": ("metrics.hinge_loss", flat, metrics.hinge_loss),
        "categorical_hinge": ("metrics.hinge_loss (multiclass, label ids)",
                              lambda a: (np.argmax(a[0], axis=1), a[1]),
                              lambda lab, p: metrics.hinge_loss(lab, p, labels=labels)),
        "binary_crossentropy": ("metrics.log_loss", flat, metrics.log_loss),
        "categorical_crossentropy": ("metrics.log_loss (label ids)", lambda a: (np.argmax(a[0], axis=1), a[1]),
                                     lambda lab, p: metrics.log_loss(lab, p, labels=labels)),
        "sparse_categorical_crossentropy": ("metrics.log_loss", lambda a: a,
                                            lambda lab, p: metrics.log_loss(lab, p, labels=labels)),
        "cosine_similarity": ("pairwise.paired_cosine_distances − 1", lambda a: a,
                              lambda y, p: float(np.mean(paired_cosine_distances(y, p))) - 1.0),
    }
    if case.name not in table:
        return None
    api, prep, fn = table[case.name]
    # scikit-learn validates and label-encodes its inputs (np.unique on y_true): at 1e8 one call
    # takes tens of seconds, so it is timed up to 1e7
    return Peer("sklearn", api, prep, fn, max_n=10_000_000)


# ---- tf_keras (optional) ----------------------------------------------------------------------

def _tf_keras_peer(case: Case) -> Peer | None:
    tfk = _try_import("tf_keras")
    if tfk is None:
        return None
    from gpuloss.registry import LOSSES

    cls = getattr(tfk.losses, LOSSES[case.fn_name].class_name, None)
    if cls is None or case.data in ("triplet", "circle"):
        return None
    import tensorflow as tf

    obj = cls(**case.kwargs)
    return Peer("tf_keras", f"tf_keras.losses.{cls.__name__}", lambda a: tuple(tf.constant(x) for x in a),
                obj, lambda v: float(v.numpy()), max_n=10_000_000)


_BUILDERS = {"numpy": _numpy_peer, "torch": _torch_peer, "jax": _jax_peer, "sklearn": _sklearn_peer,
             "tf_keras": _tf_keras_peer}


def peers_for(case: Case, libs=PEER_LIBRARIES) -> list[Peer]:
    """The importable peers of ``case`` among ``libs``, in the order of :data:`PEER_LIBRARIES`."""
    out = []
    for lib in PEER_LIBRARIES:
        if lib in libs:
            peer = _BUILDERS[lib](case)
            if peer is not None:
                out.append(peer)
    return out


def bind(peer: Peer, inputs: tuple) -> Callable[[], Any]:
    """The timed thunk of a peer on prepared arguments."""
    return functools.partial(peer.call, *peer.prepare(inputs))

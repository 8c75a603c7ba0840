"""The ``gpuloss`` command: ``demo`` (the default) and ``info``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import numpy as np

__all__ = ["main", "demo_cases"]


def demo_cases(n: int = 100_000, classes: int = 10, seed: int = 0) -> list[tuple[str, Callable[[], Any]]]:
    """One call per registered loss on generated data: (label, thunk)."""
    import gpuloss
    from gpuloss.registry import LOSSES

    rng = np.random.default_rng(seed)
    f32 = np.float32
    probs = rng.dirichlet(np.ones(classes), size=n).astype(f32)
    logits = rng.standard_normal((n, classes)).astype(f32) * 3
    labels = rng.integers(0, classes, size=n)
    onehot = np.eye(classes, dtype=f32)[labels]
    binary = rng.integers(0, 2, size=(n, 1)).astype(f32)
    pbin = rng.random((n, 1), dtype=f32)
    target = rng.standard_normal((n, 1)).astype(f32)
    pred = target + 0.3 * rng.standard_normal((n, 1)).astype(f32)
    emb = rng.standard_normal((min(n, 2048), 16)).astype(f32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    masks = (rng.random((64, 32, 32, 1)) < 0.3).astype(f32)
    soft = np.clip(masks + 0.2 * rng.standard_normal(masks.shape).astype(f32), 0, 1)
    inputs: dict[str, tuple] = {
        "binary_crossentropy": (binary, pbin), "binary_focal_crossentropy": (binary, pbin),
        "categorical_crossentropy": (onehot, probs), "categorical_focal_crossentropy": (onehot, probs),
        "sparse_categorical_crossentropy": (labels, probs),
        "categorical_generalized_cross_entropy": (labels, probs),
        "kl_divergence": (probs[::-1].copy(), probs), "poisson": (np.abs(target), np.abs(pred)),
        "cosine_similarity": (logits[::-1].copy(), logits), "categorical_hinge": (onehot, logits),
        "hinge": (binary, pred), "squared_hinge": (binary, pred),
        "dice": (masks, soft), "tversky": (masks, soft),
        "circle": (rng.integers(0, 8, size=emb.shape[0]), emb),
        "contrastive_loss": (binary, np.abs(pred)),
        "triplet_margin_loss": (emb, emb + 0.1, emb[::-1].copy()),
        "mean_absolute_percentage_error": (target + 3, pred + 3),
    }
    cases = []
    for name, spec in LOSSES.items():
        args = inputs.get(name, (target, pred))
        cases.append((spec.class_name, (lambda cls=spec.cls, a=args: cls()(*a))))
    cases.append(("CategoricalCrossentropy(from_logits=True)",
                  lambda: gpuloss.CategoricalCrossentropy(from_logits=True)(onehot, logits)))
    cases.append(("BinaryCrossentropy(from_logits=True)",
                  lambda: gpuloss.BinaryCrossentropy(from_logits=True)(binary, pred)))
    return cases


def _demo(args: argparse.Namespace) -> int:
    """Every loss on generated data: value, backend and time (first call includes compiling
    or loading the cached kernels; the best of the next calls is the steady state)."""
    cases = demo_cases(n=args.n)
    width = max(len(c[0]) for c in cases)
    print(f"gpuloss demo: {len(cases)} losses on generated float32 data ({args.n} samples)")
    print(f"{'loss':<{width}}  {'value':>14}  {'backend':<8} {'first call':>11} {'per call':>10}")
    print("-" * (width + 50))
    for label, thunk in cases:
        t0 = time.perf_counter()
        value = thunk()
        first = time.perf_counter() - t0
        best = min(_timed(thunk) for _ in range(3))
        print(f"{label:<{width}}  {float(value):>14.7g}  {'numba':<8} {first * 1e3:>9.1f}ms {best * 1e3:>8.2f}ms",
              flush=True)
    return 0


def _timed(thunk: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    thunk()
    return time.perf_counter() - t0


def _info(args: argparse.Namespace) -> int:
    import gpuloss

    print(f"gpuloss {gpuloss.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    try:
        import numba

        from gpuloss.kernels import numba as kernels

        folder = kernels.cache_dir()
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
        numba.njit(lambda: 0)()  # start the threading layer so it can be named
        try:
            layer = numba.threading_layer()
        except ValueError:
            layer = "not started"
        print(f"numba {numba.__version__}: {numba.get_num_threads()} threads, threading layer {layer}")
        print(f"kernel cache: {folder} ({size / 1e6:.1f} MB)")
    except ImportError as exc:
        print(f"numba: not available ({exc})")
    if "cupy" in sys.modules or os.environ.get("GPULOSS_PROBE_CUPY", "1") == "1":
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
            print(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, {n} GPU(s)")
            for i in range(n):
                props = cupy.cuda.runtime.getDeviceProperties(i)
                print(f"  GPU {i}: {props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
        except Exception as exc:  # no CuPy or no driver: say so, do not fail
            print(f"cupy: not available ({type(exc).__name__})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuloss", description="Keras-exact losses computed by fused kernels.")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="every loss on built-in example data (the default)")
    p_demo.add_argument("-n", type=int, default=100_000, help="samples per loss (default 100000)")
    p_demo.set_defaults(func=_demo)
    p_info = sub.add_parser("info", help="versions, backends, threads and the kernel cache")
    p_info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"] + (argv or []))
    return args.func(args)

"""GPU benchmark: every loss on CuPy arrays against a device-to-device copy and the peers.

    python -m benchmarks.gpu [--quick] [--out benchmarks/results]

For each case and size (float32, 2^20 … 2^28 elements of y_pred; CCE/SCCE from logits also at
1k, 32k and 128k classes) it reports, measured in the same run with CUDA events (median of
repeats, each the mean of back-to-back calls): time per call, achieved bandwidth (input bytes /
time) as a fraction of a device-to-device copy of the same bytes (read + write bytes / time),
kernel launches per gpuloss call, and the same loss through CuPy's unfused formula, torch eager,
``torch.compile`` and ``jax.jit`` where installed. Writes ``gpu_results.json`` and
``gpu_results.md``. Needs a GPU; exits with a message without one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cases import CASES, KEY_CASES, make_inputs
from .formulas import keras_formulas

SIZES = [1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28]
QUICK_SIZES = [1 << 20, 1 << 22]
CLASS_COUNTS = [1024, 32768, 131072]


def _time(fn: Callable[[], Any], cp, repeats: int = 7, min_ms: float = 5.0) -> float:
    """Median seconds per call (CUDA events; back-to-back calls amortise launch latency)."""
    fn()
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    one = max(cp.cuda.get_elapsed_time(start, stop), 1e-3)
    inner = max(1, int(min_ms / one))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, stop) / 1e3 / inner)
    return float(np.median(samples))


def _launches(loss, args) -> int:
    from gpuloss.kernels.cupy import backend as kb

    counts: list[int] = []

    class Counting:
        def __init__(self, k):
            self.k = k

        def __call__(self, *a, **kw):
            counts.append(1)
            return self.k(*a, **kw)

    saved = {key: dict(c.kernels) for key, c in kb._CACHE.items()}
    for c in kb._CACHE.values():
        c.kernels = {k: Counting(v) for k, v in c.kernels.items()}
    try:
        loss(*args)
    finally:
        for key, c in kb._CACHE.items():
            c.kernels = saved.get(key, c.kernels)
    return len(counts)


def _peers(case_name: str, cp, dev_args) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    f = keras_formulas(cp).get(case_name)
    if f is not None:
        out["cupy (unfused formula)"] = lambda: f(*dev_args)
    try:
        import torch

        from .peers import _torch_impls

        impl = _torch_impls().get(case_name)
        if impl is not None:
            targs = [torch.from_dlpack(a) for a in dev_args]
            fn = impl[1]
            out["torch eager"] = lambda: fn(*targs)
            compiled = torch.compile(fn)
            out["torch.compile"] = lambda: compiled(*targs)
    except Exception as exc:  # a peer that cannot run is reported, not fatal
        print(f"  torch peer unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        import jax
        import jax.numpy as jnp

        jf = keras_formulas(jnp).get(case_name)
        if jf is not None:
            jargs = [jax.dlpack.from_dlpack(a.astype(cp.int32) if a.dtype.kind in "iu" else a) for a in dev_args]
            jitted = jax.jit(jf)
            out["jax.jit"] = lambda: jitted(*jargs).block_until_ready()
    except Exception as exc:
        print(f"  jax peer unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def _measure(case, n: int, cp, extra_label: str = "", inputs=None) -> dict[str, Any]:
    from gpuloss.registry import LOSSES

    host = inputs if inputs is not None else make_inputs(case, n)
    dev = [cp.asarray(a) for a in host]
    loss = LOSSES[case.fn_name].cls(**case.kwargs)
    nbytes = sum(a.nbytes for a in dev)
    src = cp.empty(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    row: dict[str, Any] = {"case": case.name + extra_label, "n": int(dev[-1].size if len(dev) < 3 else dev[0].size),
                           "bytes": int(nbytes)}
    t_copy = _time(lambda: cp.copyto(dst, src), cp)
    t = _time(lambda: loss(*dev), cp)
    row.update(copy_GBps=2 * nbytes / t_copy / 1e9, seconds=t, GBps=nbytes / t / 1e9,
               fraction_of_copy=(nbytes / t) / (2 * nbytes / t_copy), launches=_launches(loss, dev),
               value=float(loss(*dev)))
    peers = {}
    for name, fn in _peers(case.name, cp, dev).items():
        try:
            peers[name] = _time(fn, cp)
        except Exception as exc:
            peers[name] = f"error: {type(exc).__name__}"
    row["peers"] = peers
    row["speedup"] = {k: v / t for k, v in peers.items() if isinstance(v, float)}
    return row


def _wide_rows(cp, classes: int, rows: int, sparse: bool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32) * 3
    lab = rng.integers(0, classes, rows)
    if sparse:
        return lab, x
    y = np.zeros((rows, classes), np.float32)
    y[np.arange(rows), lab] = 1
    return y, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small sizes, key cases only")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    opts = ap.parse_args(argv)
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no GPU")
    except Exception as exc:
        print(f"benchmarks.gpu needs CuPy and a GPU ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    sizes = QUICK_SIZES if opts.quick else SIZES
    rows = []
    for case in CASES.values():
        if case.name.startswith("circle"):
            continue
        for n in sizes:
            if n > (1 << 24) and case.name not in KEY_CASES:
                continue
            if opts.quick and case.name not in KEY_CASES:
                continue
            print(f"{case.name} n={n}", file=sys.stderr, flush=True)
            rows.append(_measure(case, n, cp))
    for classes in ([1024] if opts.quick else CLASS_COUNTS):
        for sparse in (False, True):
            name = "sparse_categorical_crossentropy_logits" if sparse else "categorical_crossentropy_logits"
            case = CASES.get(name)
            if case is None:
                continue
            r = max(1, (1 << 26) // classes) if not opts.quick else 256
            rows.append(_measure(case, r * classes, cp, f"[C={classes}]", _wide_rows(cp, classes, r, sparse)))
    props = cp.cuda.runtime.getDeviceProperties(0)
    meta = {"device": props["name"].decode(), "date": _dt.date.today().isoformat(),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent).stdout.strip(),
            "cupy": cp.__version__, "python": platform.python_version()}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "gpu_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# GPU results: {meta['device']}, {meta['date']}, commit {meta['commit']}", "",
             "| case | n | time | GB/s | × copy | launches | vs CuPy | vs torch | vs torch.compile | vs jax.jit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["speedup"]
        lines.append(f"| {r['case']} | {r['n']} | {r['seconds'] * 1e6:.1f} µs | {r['GBps']:.0f} | "
                     f"{r['fraction_of_copy']:.2f} | {r['launches']} | "
                     + " | ".join(f"{s[k]:.1f}×" if k in s else "–" for k in
                                  ("cupy (unfused formula)", "torch eager", "torch.compile", "jax.jit")) + " |")
    (opts.out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

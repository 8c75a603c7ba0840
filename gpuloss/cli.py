"""The ``gpuloss`` command: ``demo`` (the default), ``info``, ``eval`` and ``bench``.

``gpuloss eval LOSS --y-true FILE[:COLUMNS] --y-pred FILE[:COLUMNS]`` computes a loss on arrays
stored in files (see :mod:`gpuloss._files` for the formats and the column syntax). Its loss
options are made from the registry: every parameter of the loss's class becomes an option
(``from_logits`` -> ``--from-logits/--no-from-logits``, ``label_smoothing`` ->
``--label-smoothing X``, a comma-separated list for per-class values or several axes), so a
new loss needs no command-line code.

Inputs larger than a chunk (``--chunk-size`` rows, by default about 64 MB of input) are read
and computed chunk by chunk along the batch axis when the loss of a sample depends on that
sample's rows only; :class:`gpuloss.LossAccumulator` merges the chunks' partial sums into
the reduced value, and ``--reduction none`` writes the chunks' per-sample values one after
the other. Losses that look at the whole batch (Circle; Dice and Tversky with
``axis`` None; a loss over the batch axis itself, such as MSE of two 1-D arrays) are computed
on all rows at once.

Errors in the inputs or options print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

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


# ---- gpuloss info ---------------------------------------------------------------------------------

def info_facts() -> dict[str, Any]:
    """Versions, backends, threads, GPUs and the kernel cache; a missing or broken backend is
    reported, not raised."""
    import gpuloss
    from gpuloss import _backend

    facts: dict[str, Any] = {"gpuloss": gpuloss.__version__, "python": sys.version.split()[0],
                             "numpy": np.__version__, "backends": list(_backend.BACKENDS)}
    try:
        import numba

        facts["numba"] = {"version": numba.__version__, "threads": numba.get_num_threads(),
                          "threading_layer": _threading_layer(numba)}
    except Exception as exc:  # not installed, or broken: say so
        facts["numba"] = {"error": _short(exc)}
    try:
        from gpuloss.kernels import numba as kernels

        folder = kernels.cache_dir()
        files = [f for f in folder.rglob("*") if f.is_file()] if folder.exists() else []
        facts["kernel_cache"] = {"path": str(folder), "bytes": sum(f.stat().st_size for f in files),
                                 "files": len(files)}
    except Exception as exc:
        facts["kernel_cache"] = {"error": _short(exc)}
    facts["cupy"] = _cupy_facts()
    return facts


def _threading_layer(numba: Any) -> str:
    """The threading layer Numba uses (started here, without compiling anything)."""
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        return numba.threading_layer()
    except Exception:
        return f"not started (requested: {numba.config.THREADING_LAYER})"


def _cupy_facts() -> dict[str, Any]:
    import importlib.util

    if os.environ.get("GPULOSS_PROBE_CUPY", "1") != "1" and "cupy" not in sys.modules:
        return {"error": "not probed (GPULOSS_PROBE_CUPY=0)"}
    if importlib.util.find_spec("cupy") is None:
        return {"error": "not installed"}
    try:
        import cupy

        rt = cupy.cuda.runtime
        out: dict[str, Any] = {"version": cupy.__version__, "cuda_runtime": _cuda_version(rt.runtimeGetVersion())}
        try:
            out["cuda_driver"] = _cuda_version(rt.driverGetVersion())
        except Exception:
            pass
        gpus = []
        for i in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(i)
            name = props["name"]
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_bytes": int(props["totalGlobalMem"])})
        out["gpus"] = gpus
        return out
    except Exception as exc:  # no driver, no device: say so, do not fail
        return {"error": _short(exc)}


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _info(args: argparse.Namespace) -> int:
    facts = info_facts()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"gpuloss {facts['gpuloss']}")
    print(f"python {facts['python']}, numpy {facts['numpy']}")
    print(f"backends: {', '.join(facts['backends'])}")
    nb = facts["numba"]
    if "error" in nb:
        print(f"numba: not available ({nb['error']})")
    else:
        print(f"numba {nb['version']}: {nb['threads']} threads, threading layer {nb['threading_layer']}")
    kc = facts["kernel_cache"]
    if "error" in kc:
        print(f"kernel cache: unknown ({kc['error']})")
    else:
        print(f"kernel cache: {kc['path']} ({kc['bytes'] / 1e6:.1f} MB, {kc['files']} files)")
    cp = facts["cupy"]
    if "error" in cp:
        print(f"cupy: not available ({cp['error']})")
    else:
        driver = f", driver {cp['cuda_driver']}" if "cuda_driver" in cp else ""
        print(f"cupy {cp['version']}: CUDA runtime {cp['cuda_runtime']}{driver}, {len(cp['gpus'])} GPU(s)")
        for g in cp["gpus"]:
            print(f"  GPU {g['index']}: {g['name']}, {g['memory_bytes'] / 2**30:.1f} GiB")
    return 0


# ---- gpuloss eval ---------------------------------------------------------------------------------

class UsageError(Exception):
    """A problem with the command line, the inputs or the data: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


CHUNK_BYTES = 64 << 20
REDUCTION_CHOICES = ("auto", "sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none")


def loss_options(spec) -> dict[str, Any]:
    """The loss's options on the command line: class parameter -> default (from the registry)."""
    return {n: spec.defaults[n] for n in spec.class_params if n not in ("reduction", "name")}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_type(name: str, default: Any) -> Callable[[str], Any]:
    """Parse an option value: a number, ``none``, or a comma-separated list of numbers (one
    value per class, several axes). Floats stay floats where the default is a float."""
    def parse(text: str) -> Any:
        t = text.strip()
        if t.lower() in ("none", "null"):
            return None
        try:
            values = [_number(x) for x in t.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number, a comma-separated "
                                             "list of numbers or 'none'") from None
        if isinstance(default, float):
            values = [float(v) for v in values]
        if len(values) == 1:
            return values[0]
        return values if isinstance(default, float) else tuple(values)

    parse.__name__ = name
    return parse


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def eval_parser(spec=None) -> _Parser:
    """The parser of ``gpuloss eval``; with a loss's spec, its options too."""
    from gpuloss import _backend

    inputs = spec.inputs if spec is not None else ("y_true", "y_pred")
    usage = " ".join(["%(prog)s LOSS"] + [f"{_flag(n)} FILE[:COLUMNS]" for n in inputs] + ["[options]"])
    p = _Parser(prog="gpuloss eval", usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Compute a loss on arrays stored in files and print its value.",
                epilog=_EVAL_EPILOG)
    p.add_argument("loss", metavar="LOSS", help="a loss name gpuloss.get accepts: function, class or alias "
                   "(mse, Huber, categorical_crossentropy, ...)")
    g = p.add_argument_group("inputs (FILE or FILE:COLUMN[,COLUMN...]; .npy .npz .parquet .csv)")
    for name in inputs:
        g.add_argument(_flag(name), dest=f"in_{name}", required=True, metavar="FILE[:COLUMNS]", help=name)
    g.add_argument("--sample-weight", dest="in_sample_weight", metavar="FILE[:COLUMNS]",
                   help="sample weights (one per sample, or the per-sample loss's shape)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--reduction", choices=REDUCTION_CHOICES,
                   help="default: the loss's ('auto'; 'sum_over_batch_size' with keras3)")
    e.add_argument("--compat", choices=("keras2", "keras3"),
                   help="whose numbers: tf_keras's (default) or Keras 3's (default for Keras 3 losses)")
    e.add_argument("--backend", choices=_backend.BACKENDS, help="default: GPULOSS_BACKEND, else numba")
    e.add_argument("--chunk-size", type=_positive_int, metavar="ROWS",
                   help="rows per chunk when streaming (default: about 64 MB of input per chunk)")
    e.add_argument("--output", metavar="FILE.npy", help="with --reduction none: where the per-sample values go")
    e.add_argument("--json", action="store_true",
                   help='print {"loss", "value", "reduction", "n", "backend", "seconds", ...} as JSON')
    if spec is not None:
        o = p.add_argument_group(f"{spec.class_name} options")
        for name, default in loss_options(spec).items():
            if isinstance(default, bool):
                o.add_argument(_flag(name), dest=f"opt_{name}", action=argparse.BooleanOptionalAction,
                               default=default, help=f"(default: {default})")
            else:
                o.add_argument(_flag(name), dest=f"opt_{name}", type=_option_type(name, default),
                               default=default, metavar="X" if default is not None else "X|none",
                               help=f"(default: {default})")
    return p


_EVAL_EPILOG = """\
examples:
  gpuloss eval mse --y-true y.npy --y-pred p.npy
  gpuloss eval categorical_crossentropy --y-true data.parquet:onehot --y-pred data.parquet:p0,p1,p2 --from-logits
  gpuloss eval SparseCategoricalCrossentropy --y-true t.csv:label --y-pred t.csv:'p*' --json
  gpuloss eval huber --y-true y.npz:y --y-pred y.npz:p --delta 2 --sample-weight w.npy --reduction sum

A single table column is one value per sample, shape (n, 1) (sample weights: (n,)); several
columns, a glob (FILE:'p*') or a list column form the class axis, (n, k). `gpuloss eval LOSS
--help` lists the loss's options."""


def _positive_int(text: str) -> int:
    try:
        v = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be at least 1")
    return v


def resolve_loss(name: str):
    """The registry spec of a loss name ``gpuloss.get`` accepts."""
    import gpuloss
    from gpuloss.registry import LOSSES

    try:
        obj = gpuloss.get(name)
    except ValueError:
        obj = None
    spec = getattr(obj, "spec", None)
    if spec is None:
        names = sorted({n for s in LOSSES.values()
                        for n in (s.fn_name, s.class_name, *s.aliases, *s.get_aliases)})
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known losses: {', '.join(LOSSES)}"
        raise UsageError(f"unknown loss {name!r}{hint}")
    return spec


def _eval_main(argv: list[str]) -> int:
    # Numba's pedantic SSA check may warn while a kernel compiles (first use); it is harmless
    # and would break the one-line output of errors
    warnings.filterwarnings("ignore", module=r"numba\.core\.ssa")
    name = _loss_name(argv)
    if name is None:
        eval_parser().parse_args(argv)  # prints the help, or says that LOSS is missing
        return 2
    try:
        spec = resolve_loss(name)
    except UsageError as exc:
        if any(a in ("-h", "--help") for a in argv):
            eval_parser().print_help()
            return 0
        return _fail(str(exc))
    args = eval_parser(spec).parse_args(argv)
    try:
        return run_eval(spec, args)
    except (UsageError, _files().InputError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("gpuloss eval: interrupted", file=sys.stderr)
        return 130


def _loss_name(argv: list[str]) -> str | None:
    """LOSS, read before the loss's own options are known: the first argument (as the usage
    writes it), else the first positional one that the common options leave."""
    if argv and not argv[0].startswith("-"):
        return argv[0]
    pre = eval_parser()
    for action in pre._actions:
        action.required = False

    def error(message: str):
        raise SystemExit(2)

    pre.error = error  # type: ignore[method-assign]
    try:
        known, _ = pre.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    except SystemExit:
        return None
    return known.loss


def _fail(message: str, prog: str = "gpuloss eval") -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _files():
    from gpuloss import _files as files

    return files


def run_eval(spec, args: argparse.Namespace) -> int:
    """``gpuloss eval`` after parsing: build the loss, open the inputs, compute, print."""
    from gpuloss import _backend

    files = _files()
    t0 = time.perf_counter()
    options = {name: getattr(args, f"opt_{name}") for name in loss_options(spec)}
    kwargs: dict[str, Any] = dict(options, compat=args.compat or spec.default_compat)
    if args.reduction is not None:
        kwargs["reduction"] = args.reduction
    try:
        loss = spec.cls(**kwargs)
        backend = _backend.resolve_backend(args.backend)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{spec.class_name}: {exc}") from None
    reduction = "none" if loss.reduction in ("none", None) else loss.reduction
    if reduction == "none" and not args.output:
        raise UsageError("--reduction none gives one value per sample: name a .npy file for them with --output")
    if args.output and reduction != "none":
        raise UsageError("--output is for --reduction none (a reduced loss is printed)")
    if args.output and not args.output.endswith(".npy"):
        raise UsageError(f"--output {args.output}: the per-sample values are written as .npy")

    roles = list(spec.inputs) + (["sample_weight"] if args.in_sample_weight else [])
    sources = {r: files.open_source(getattr(args, f"in_{r}"), r) for r in roles}
    size = args.chunk_size or max(1, CHUNK_BYTES // max(1, sum(s.row_bytes for s in sources.values())))
    stream = _streams(spec, loss, sources, size, reduction == "none")
    rows = next((s.rows for s in sources.values() if s.rows is not None), None)  # None: CSV only

    out_shape, chunks = None, 1
    if not stream:
        arrays = {r: s.read_all() for r, s in sources.items()}
        n = _length(arrays[spec.inputs[0]])
        result = _compute(spec, loss, arrays, reduction, backend)
        if reduction == "none":
            out_shape = _save(args.output, np.asarray(result))
    elif reduction == "none":
        n, out_shape, chunks = _stream_rows(spec, loss, sources, size, rows, args.output, backend)
    else:
        n, result, chunks = _stream_reduced(spec, loss, sources, size, rows, reduction, backend)
    seconds = time.perf_counter() - t0

    value = None if reduction == "none" else float(np.asarray(result))
    if args.json:
        record: dict[str, Any] = {"loss": spec.fn_name, "value": value if value is None or np.isfinite(value)
                                  else None, "reduction": loss.reduction, "n": int(n), "backend": backend,
                                  "seconds": round(seconds, 6), "compat": loss.compat, "chunks": chunks}
        if value is not None and not np.isfinite(value):
            record["value_text"] = f"{value:.9g}"
        if reduction == "none":
            record.update(output=args.output, shape=list(out_shape))
        print(json.dumps(record))
    elif reduction == "none":
        print(f"{args.output}: {out_shape} per-sample values")
    else:
        print(f"{value:.9g}")
    return 0


def _length(a: np.ndarray) -> int:
    return int(a.shape[0]) if a.ndim else 1


def _compute(spec, loss, arrays: dict[str, np.ndarray], reduction: str, backend: str):
    """One class call of ``loss`` on in-memory arrays (the Python API's computation)."""
    from gpuloss import _pipeline

    values = {name: arrays[name] for name in spec.inputs}
    values.update(loss._fn_kwargs)
    try:
        return _pipeline.evaluate(spec, values, loss.compat, reduction=reduction,
                                  sample_weight=arrays.get("sample_weight"), is_class_call=True, backend=backend)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{spec.class_name}: {_shapes(arrays)}: {exc}") from None


def _shapes(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{r} {tuple(a.shape)}" for r, a in arrays.items())


def accumulate(loss, chunks: Iterator[dict[str, np.ndarray]], backend: str):
    """The reduced loss over chunks of rows (:class:`gpuloss.LossAccumulator`: each chunk's
    partial sums, merged, reduced once), as a 0-d array of the result dtype."""
    from gpuloss.streaming import LossAccumulator

    acc = LossAccumulator(loss, backend=backend)
    for arrays in chunks:
        try:
            acc.update(*(arrays[name] for name in loss.spec.inputs), sample_weight=arrays.get("sample_weight"))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{loss.spec.class_name}: {_shapes(arrays)}: {exc}") from None
    return acc.result()


def _stream_reduced(spec, loss, sources, size, rows, reduction, backend):
    """Chunks of rows through :func:`accumulate`; one chunk is one class call."""
    chunks = _lockstep(sources, size, rows)
    first = next(chunks, None)
    second = next(chunks, None) if first is not None else None
    if second is None:  # everything fits in one chunk: the Python API's call, exactly
        arrays = first or {r: s.read_all() for r, s in sources.items()}
        return _length(arrays[spec.inputs[0]]), _compute(spec, loss, arrays, reduction, backend), 1
    counted = _counting(_chain(first, second, chunks), spec.inputs[0])
    value = accumulate(loss, counted, backend)
    return counted.n, value, counted.count


def _stream_rows(spec, loss, sources, size, rows, path, backend):
    """--reduction none, chunk by chunk, into a .npy file."""
    out = None
    parts: list[np.ndarray] = []
    n = count = 0
    for arrays in _lockstep(sources, size, rows):
        count += 1
        L = np.asarray(_compute(spec, loss, arrays, "none", backend))
        if rows is not None:
            if out is None:
                out = _open_npy(path, L.dtype, (rows,) + L.shape[1:])
            out[n:n + len(L)] = L
        else:
            parts.append(L)
        n += len(L)
    if out is not None:
        out.flush()
        return n, out.shape, count
    if not parts:
        arrays = {r: s.read_all() for r, s in sources.items()}
        return 0, _save(path, np.asarray(_compute(spec, loss, arrays, "none", backend))), 1
    return n, _save(path, np.concatenate(parts)), count


def _open_npy(path: str, dtype, shape):
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as exc:
        raise UsageError(f"--output {path}: {exc.strerror or exc}") from None


def _save(path: str, values: np.ndarray) -> tuple[int, ...]:
    try:
        np.save(path, values)
    except OSError as exc:
        raise UsageError(f"--output {path}: {exc.strerror or exc}") from None
    return values.shape


class _counting:
    """An iterator of chunks that counts them, and the rows of one input, as it goes."""

    def __init__(self, chunks: Iterator[dict[str, np.ndarray]], role: str):
        self.chunks, self.role, self.n, self.count = chunks, role, 0, 0

    def __iter__(self):
        for arrays in self.chunks:
            self.n += len(arrays[self.role])
            self.count += 1
            yield arrays


def _chain(first, second, rest):
    yield first
    yield second
    yield from rest


def _lockstep(sources, size: int, rows: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of the same rows of every input, with a progress bar over the rows on a terminal."""
    iters = {r: s.chunks(size) for r, s in sources.items()}
    seen = dict.fromkeys(sources, 0)
    with _progress(rows) as bar:
        while True:
            got = {r: next(it, None) for r, it in iters.items()}
            if all(c is None for c in got.values()):
                return
            lengths = {len(c) for c in got.values() if c is not None}
            if any(c is None for c in got.values()) or len(lengths) > 1:
                longest = max(lengths)
                counts = []
                for r, c in got.items():
                    total = seen[r] + (0 if c is None else len(c))
                    exact = sources[r].rows is not None or c is None or len(c) < longest
                    count = (sources[r].rows or total) if exact else f"at least {total}"
                    counts.append(f"{sources[r].where} has {count}")
                raise UsageError("inputs have different numbers of rows: " + ", ".join(counts))
            for r, c in got.items():
                seen[r] += len(c)
            yield got
            bar.update(lengths.pop())


def _progress(total: int | None):
    """A tqdm bar on stderr when it is a terminal; nothing when piped (or without tqdm)."""
    enabled = sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, unit="rows", unit_scale=True, file=sys.stderr, disable=False, leave=False,
                dynamic_ncols=True)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _streams(spec, loss, sources, size: int, per_sample: bool) -> bool:
    """Whether the inputs can be computed in chunks of rows: every input has a first axis with
    the same number of rows, and the loss's per-sample values keep that axis (the rules of
    :func:`gpuloss.streaming.split`, on the shapes alone: nothing is read or computed). Shape
    errors are raised here, with the whole inputs' shapes."""
    from gpuloss import streaming

    if any(s.scalar for s in sources.values()):
        return False  # a 0-d weight or input applies to every row: one call, as Keras makes it
    known = {s.rows for s in sources.values() if s.rows is not None}
    if len(known) > 1:
        if min(known) != 1:
            raise UsageError("inputs have different numbers of rows: " + ", ".join(
                f"{s.where} has {s.rows}" for s in sources.values() if s.rows is not None))
        return False  # one row against many: the loss broadcasts it (or says why not)
    rows = known.pop() if known else None
    if rows == 0:
        return False  # empty inputs: Keras's rules for empty calls
    n = rows or 2  # CSV only: the shape rules of any batch size
    stand_ins = {r: np.broadcast_to(np.zeros((), s.dtype), (n,) + tuple(s.row_shape)) for r, s in sources.items()}
    sizes = None if rows is None else sorted({min(size, rows), rows % size or min(size, rows)})
    options = {**spec.defaults, **loss._fn_kwargs}
    try:
        sp = streaming.split(spec, [stand_ins[r] for r in spec.inputs], options, loss.compat,
                             stand_ins.get("sample_weight"), True, sizes=sizes)
    except (ValueError, TypeError) as exc:
        if rows is None:
            return False  # the whole call says what is wrong
        raise UsageError(f"{spec.class_name}: {_shapes(stand_ins)}: {exc}") from None
    # Hinge's label rule looks at every label: per-sample values need them all at once
    return sp.ok and not (per_sample and sp.rule is not None)


# ---- gpuloss bench --------------------------------------------------------------------------------

def source_root() -> Path | None:
    """The source checkout holding ``benchmarks/run.py``: the one this package was imported from
    (an editable install or a checkout on the path), else the current directory."""
    here = Path(__file__).resolve().parent.parent
    for root in (here, Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file() and (root / "gpuloss").is_dir():
            return root
    return None


def _bench(argv: list[str]) -> int:
    """Forward to the benchmark runner (``benchmarks.run.main``) of the source checkout."""
    root = source_root()
    if root is None:
        return _fail("the benchmarks live in the source repository, not in the installed package: "
                     "run `gpuloss bench` from a source checkout (or `python -m benchmarks.run` there)",
                     prog="gpuloss bench")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks.run import main as run_main
    except ImportError as exc:
        return _fail(f"cannot import the benchmark runner from {root / 'benchmarks'}: {exc}", prog="gpuloss bench")
    return int(run_main(argv) or 0)


# ---- entry point ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # the reader went away (gpuloss demo | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "eval":
        return _eval_main(argv[1:])
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = _Parser(prog="gpuloss", description="Keras-exact losses computed by fused kernels.")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="every loss on built-in example data (the default)")
    p_demo.add_argument("-n", type=int, default=100_000, help="samples per loss (default 100000)")
    p_demo.set_defaults(func=_demo)
    p_info = sub.add_parser("info", help="versions, backends, threads, GPUs and the kernel cache")
    p_info.add_argument("--json", action="store_true", help="print the facts as JSON")
    p_info.set_defaults(func=_info)
    sub.add_parser("eval", help="a loss on arrays from .npy/.npz/.parquet/.csv files (gpuloss eval --help)",
                   add_help=False)
    sub.add_parser("bench", help="the benchmark runner (from a source checkout; gpuloss bench --help)",
                   add_help=False)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["demo"] + argv
    args = parser.parse_args(argv)
    return args.func(args)

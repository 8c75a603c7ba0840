"""CPU backend: fused Numba kernels generated from the row programs.

Importing this module imports Numba (``import gpuloss`` alone does not). Kernels are
generated as module files under the kernel cache (see :func:`cache_dir`), imported, and
compiled by Numba on first use with ``cache=True``, so a new process loads machine code
from disk instead of compiling.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Mapping


def _prefer_512_bit_vectors() -> None:
    """On AVX-512 CPUs that LLVM tunes for 256-bit vectors (Intel Xeon server parts), let
    the loop vectoriser use 512-bit ones. Measured on a 2-core Emerald Rapids, 1e7 float32:
    BCE-with-logits 12.1 → 7.3 ms, MSE unchanged (memory-bound). Only possible before Numba
    is imported (it reads NUMBA_CPU_FEATURES once); skipped if the user set that variable, or
    set GPULOSS_PREFER_512_BIT=0."""
    if "numba" in sys.modules or os.environ.get("NUMBA_CPU_FEATURES") \
            or os.environ.get("GPULOSS_PREFER_512_BIT", "1") == "0":
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
    except Exception:  # no llvmlite host query: keep Numba's defaults
        return
    if features.get("avx512f"):  # "prefer-256-bit" is implied by the CPU model, not reported
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"


_prefer_512_bit_vectors()

import numba  # noqa: E402  (after the CPU feature choice above)
import warnings  # noqa: E402

from numba.core.errors import NumbaIRAssumptionWarning  # noqa: E402

# Numba's SSA pass warns about the branches of inlined vocabulary overloads ("variable ... is
# not in scope"); the generated code is correct, and the warning would reach every user on the
# first call of each kernel. Only that category, only from that pass.
warnings.filterwarnings("ignore", category=NumbaIRAssumptionWarning, module=r"numba\.core\.ssa")
import numpy as np  # noqa: E402

from ...program import RowProgram  # noqa: E402
from . import codegen  # noqa: E402

__all__ = ["cache_dir", "kernel_module", "Bound", "bind", "settled", "rows", "reduce", "rows_route", "reduce_route",
           "kernel_arrays", "as_kernel_input", "flat_ok", "rows_contiguous", "Route", "UNIT_WEIGHTS",
           "kernel_weights", "SERIAL_BELOW"]

#: Inputs smaller than this (elements) run the serial twin of each kernel: waking Numba's
#: thread pool costs more than the whole loop below ~32k elements.
SERIAL_BELOW = 1 << 15

_HERE = Path(__file__).parent
_LOCK = threading.Lock()
_MODULES: dict[tuple, ModuleType] = {}


@functools.lru_cache(maxsize=1)
def _machinery_hash() -> str:
    """Numba's cache does not see changes to inlined callees in other files, so the
    kernel directory is keyed by the sources every generated module depends on (read once a
    process: cache_dir() is asked for every cached function of this folder as it is defined)."""
    h = hashlib.sha256(numba.__version__.encode() + sys.version.encode())
    for name in ("codegen.py", "vocab.py", "fastmath32.py", "fastmath64.py", "accumulate.py", "transpose.py"):
        h.update((_HERE / name).read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    """Where generated kernel modules and Numba's compiled code live.

    ``GPULOSS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gpuloss`` (``~/.cache/gpuloss``).
    """
    root = os.environ.get("GPULOSS_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpuloss")
    return Path(root) / f"numba-{_machinery_hash()}"


def _package_cache_locator():
    """A Numba cache locator that puts the compiled code of the kernels in this folder
    (accumulate, pairwise, utils) under :func:`cache_dir`, never beside the installed sources.
    Numba writes its cache into a writable ``__pycache__`` next to the source; in a
    site-packages install those files are not pip's, so ``pip uninstall`` leaves a
    ``gpuloss/`` folder of them behind, which a later editable install cannot shadow: ``import
    gpuloss`` outside the checkout then found that folder, a namespace package without the
    library (README's install-and-demo command, then its install-and-test command in the same
    environment: 37 failed tests). None where this Numba has no such locator classes."""
    from numba.core import caching

    base = getattr(caching, "UserProvidedCacheLocator", None) or getattr(caching, "_UserProvidedCacheLocator", None)
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if base is None or impl is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return None
    package = os.path.normcase(os.path.realpath(_HERE))  # gpuloss/kernels/numba (kernels/numba in a checkout)

    class PackageCacheLocator(base):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(cache_dir(), "package", self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.normcase(os.path.realpath(py_file)).startswith(package + os.sep):
                return None
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    impl._locator_classes.insert(0, PackageCacheLocator)
    return PackageCacheLocator


_PACKAGE_CACHE_LOCATOR = _package_cache_locator()


def kernel_module(program: RowProgram, dtype: str, column_params: tuple[str, ...] = (),
                  constants: tuple[tuple[str, float], ...] = (), positive_logs: bool = False) -> ModuleType:
    """The generated kernel module of ``program`` for ``dtype`` (and the parameter values
    ``constants`` written into it, see codegen.folded_constants; its logs ``log_positive``
    where ``positive_logs``, see codegen.positive_logs), written and imported once."""
    key = (program.fingerprint, dtype, column_params, constants, positive_logs)
    mod = _MODULES.get(key)
    if mod is not None:
        return mod
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is not None:
            return mod
        src = codegen.module_source(program, dtype, column_params, constants, positive_logs)
        digest = hashlib.sha256(src.encode()).hexdigest()[:16]
        name = f"gl_{program.name}_{dtype}_{digest}"
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        # Never rewrite an existing file: Numba keys its cache on the source's mtime.
        if not path.exists():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(src)
            os.replace(tmp, path)
        modname = f"gpuloss_kernel_cache.{name}"
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
        _MODULES[key] = mod
        return mod


def _param_values(program: RowProgram, params: Mapping[str, object]) -> list:
    out = []
    for n in program.param_names():
        if n not in params:
            raise TypeError(f"{program.name}: no value for parameter {n!r}")
        v = params[n]
        out.append(np.ascontiguousarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else float(v))
    return out


def _column_params(params: Mapping[str, object]) -> tuple[str, ...]:
    cols = [k for k, v in params.items() if isinstance(v, np.ndarray)]
    return tuple(sorted(cols)) if cols else ()


class _WritableInterface:
    """A read-only array's memory, described to NumPy as writable (see :func:`as_kernel_input`)."""

    def __init__(self, a: np.ndarray):
        interface = dict(a.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface
        self.owner = a  # keeps the memory alive as long as the view


def as_kernel_input(a: np.ndarray) -> np.ndarray:
    """``a``, or where it is read-only a writable view of the same memory (no copy).

    Numba types read-only arrays apart from writable ones and compiles a second kernel for
    them (JAX arrays, pandas' Arrow-backed columns and ``np.frombuffer`` arrays are read-only):
    a cold test suite compiled 43 of its ~400 kernel signatures for read-only inputs alone,
    ~1-2 s each. The kernels never write their inputs.
    """
    if a.flags.writeable:
        return a
    return np.asarray(_WritableInterface(a))


def kernel_arrays(program: RowProgram, arrays: Mapping[str, np.ndarray], labels) -> list:
    """The kernels' array arguments, in order, from the laid-out arrays (and sparse labels)."""
    if program.sparse:
        return [as_kernel_input(arrays["p"]), as_kernel_input(labels)]
    return [as_kernel_input(arrays[e]) for e in program.elements]


def _shape(program, arrays) -> tuple[int, int]:
    first = arrays["p"] if program.sparse else arrays[program.elements[0]]
    return first.shape


def _use_chunks(program: RowProgram, R: int, C: int) -> bool:
    return bool(program.passes) and C >= codegen.CHUNK_MIN_COLS and R <= codegen.CHUNK_MAX_ROWS


def _use_tiles(program: RowProgram, C: int) -> bool:
    return codegen.tile_ok(program) and codegen.tile_fits(program, C)


def _flattenable(program: RowProgram) -> bool:
    """Rows of this program can be fused into one flat sweep (a single Sum, no row length)."""
    return bool(program.flat_scale) and not program.sparse and "n" not in program.passes[0][0][1].term.args


class Bound:
    """A program bound to a compute dtype and runtime parameters: its kernel module and the
    kernels' trailing arguments, worked out once (the pipeline keeps one per call shape, so a
    repeated call skips the look-ups: ~5 µs of a ~20 µs call at 1e3 elements)."""

    __slots__ = ("program", "dtype", "module", "values", "column_params", "flat", "tiled", "direct", "tree",
                 "otherwise", "constants", "positive_logs", "_folded")

    def __init__(self, program: RowProgram, dtype: str, params: Mapping[str, object],
                 otherwise: "Bound | None" = None):
        self.program = program
        self.dtype = dtype
        self.column_params = _column_params(params)
        self.positive_logs = codegen.positive_logs(program, params)
        self.module = kernel_module(program, dtype, self.column_params, positive_logs=self.positive_logs)
        self.values = _param_values(program, params)  # raises for a missing parameter
        self.constants = codegen.folded_constants(program, params)
        self._folded: ModuleType | None = None
        self.flat = not self.column_params and _flattenable(program)
        self.tiled = codegen.tile_ok(program)
        # the generated module has them or not (codegen.direct_ok walks the terms: ~140 µs)
        self.direct = hasattr(self.module, "tile_direct_par")
        self.tree = hasattr(self.module, "tile_tree_par")
        #: where ``params`` are a guess (see gpuloss.program.Guessable): the binding that
        #: applies if the program's check fails somewhere in the data
        self.otherwise = otherwise

    def kernels(self, suffix: str) -> ModuleType:
        """The module whose ``suffix`` kernels a call runs: for the threaded ones ("par", large
        inputs) the module with the parameters' folded exponents where there is one (see
        codegen.folded_constants), else the general module. Small calls spend their time in
        overhead, not in the power, and one module for them spares a compile per kernel and
        exponent value (the test suite on a fresh clone, 2 cores: 405 s before folding, 583 s
        with folded serial kernels too, 444 s with folded threaded kernels only)."""
        if suffix != "par" or not self.constants:
            return self.module
        if self._folded is None:
            self._folded = kernel_module(self.program, self.dtype, self.column_params, self.constants,
                                         self.positive_logs)
        return self._folded


def bind(program: RowProgram, dtype: str, params: Mapping[str, object],
         otherwise: Mapping[str, object] | None = None) -> Bound:
    """``program``'s kernels for compute dtype ``dtype`` ("float32", "float64") and ``params``
    (a guess that holds where the program's check holds, else ``otherwise``)."""
    return Bound(program, dtype, params, None if otherwise is None else Bound(program, dtype, otherwise))


def _check_holds(program: RowProgram, arrays: Mapping[str, np.ndarray]) -> bool:
    """The program's check over all the data, in a pass of its own (kernels that do not count it)."""
    if program.check == "binary_labels":
        from .utils import all_zero_or_one

        return all_zero_or_one(arrays["t"])
    raise ValueError(f"unknown check {program.check!r}")


def settled(bound: Bound, arrays: Mapping[str, np.ndarray]) -> Bound:
    """``bound`` without a guess: checked over the data where it is one."""
    if bound.otherwise is None:
        return bound
    return bound if _check_holds(bound.program, arrays) else bound.otherwise


def flat_ok(bound: Bound, arrays) -> bool:
    """The flat sweep applies: a flattenable program on C-contiguous arrays."""
    return bound.flat and all(arrays[e].flags.c_contiguous for e in bound.program.elements)


def rows_contiguous(bound: Bound, arrays) -> bool:
    """``bound`` has tile kernels that read rows in place and every (R, C) element array is laid
    out for them: C-contiguous for ``tile_tree`` (a tile's elements are one run), contiguous
    along its rows for ``tile_direct`` (Fortran-ordered rows are copied as before)."""
    if bound.tree:
        return all(arrays[e].flags.c_contiguous for e in bound.program.elements)
    return bound.direct and all(arrays[e].strides[1] == arrays[e].itemsize for e in bound.program.elements)


def _sparse_args(program, ignore_class):
    if not program.sparse:
        return []
    return [ignore_class is not None, -1 if ignore_class is None else int(ignore_class)]


def _chunked_stats(mod, program, arrs, pv):
    R, C = arrs[0].shape
    chunk = codegen.BLOCK * 4
    stats = np.zeros((R, 0))
    for k, passes in enumerate(program.passes):
        part = getattr(mod, f"chunk_{k}")(*arrs, stats, chunk, *pv)
        combined = np.empty((R, len(passes)))
        for i, (_, st) in enumerate(passes):
            col = part[:, :, i]
            combined[:, i] = col.sum(axis=1) if st.kind == "sum" else col.max(axis=1)
        stats = np.concatenate([stats, combined], axis=1)
    return stats


class Route:
    """Which kernel a call of one shape runs and how: the kernel, whether its arrays are
    flattened, the sparse-label arguments and the post-processing of its result. Worked out
    once per call shape: the pipeline keeps routes for repeated calls (choosing the kernel and
    formatting its name cost ~5 µs of a ~30 µs call at 1e3 elements on a 2-core EPYC)."""

    __slots__ = ("kernel", "flatten", "sparse", "finish", "checks", "t_index", "before", "after")

    def __init__(self, kernel, flatten: bool, sparse: tuple, finish, checks: bool = False, t_index: int = 0,
                 before: tuple = (), after: tuple = ()):
        self.kernel, self.flatten, self.sparse, self.finish = kernel, flatten, sparse, finish
        #: the kernel counts the program's check (its result's bad-label count is that count)
        self.checks, self.t_index = checks, t_index
        #: arguments around ``leading`` that the tile kernel takes in both kinds of call (the
        #: output of a rows call, the weights of a reduced one): see :func:`_tile_route`
        self.before, self.after = before, after

    def __call__(self, arrs: list, leading: tuple, bound: Bound):
        """The kernel on ``arrs`` (in :func:`kernel_arrays` order), then ``leading`` (the output
        or the weights), the sparse-label arguments and ``bound``'s parameters. A guessed
        binding runs once where the kernel counts its check and the count is 0, else again
        with the binding that applies; kernels that do not count it check first."""
        if bound.otherwise is not None and not self.checks:
            bound = settled(bound, {"t": arrs[self.t_index]})
        if self.flatten:
            arrs = [a.reshape(-1) for a in arrs]
        result = self.finish(self.kernel(*arrs, *self.before, *leading, *self.after, *self.sparse, *bound.values))
        if not self.checks:
            return result
        if bound.otherwise is not None and _violations(result):
            result = self.finish(self.kernel(*arrs, *self.before, *leading, *self.after, *self.sparse,
                                             *bound.otherwise.values))
        return _without_violations(result)


def _violations(result) -> int:
    return result[3] if isinstance(result, tuple) else result


def _without_violations(result):
    return (*result[:3], 0) if isinstance(result, tuple) else 0


def _t_index(program: RowProgram) -> int:
    """Where y_true is among the kernel arrays (read by a check: programs with one read ``t``)."""
    return program.elements.index("t") if program.check is not None else 0


def _as_count(nbad):
    return int(nbad)


def _no_bad_labels(_):
    return 0


def rows_route(bound: Bound, R: int, C: int, flat_ok: bool, ignore_class: int | None,
               row_major: bool = False) -> Route | None:
    """The route of :func:`rows` (leading argument: ``out``); None for the chunked kernels.
    ``row_major``: the arrays are contiguous along their rows (:func:`rows_contiguous`)."""
    program = bound.program
    if _use_chunks(program, R, C):
        return None
    suffix = "ser" if R * C < SERIAL_BELOW else "par"
    mod = bound.kernels(suffix)
    t_index = _t_index(program)
    if C == 1 and flat_ok:
        checks = program.check is not None
        return Route(getattr(mod, f"flat_rows_{suffix}"), True, (), _as_count if checks else _no_bad_labels,
                     checks, t_index)
    if bound.tiled and codegen.tile_fits(program, C):
        return _tile_route(bound, suffix, ignore_class, rows=True, kind=_tile_kind(bound, C, row_major))
    return Route(getattr(mod, f"rows_{suffix}"), False, tuple(_sparse_args(program, ignore_class)), _as_count,
                 False, t_index)


def _tile_count(result):
    return int(result[3])


def _tile_kind(bound: Bound, C: int, row_major: bool) -> str:
    """Which tile kernel reads the rows (``row_major`` as from :func:`rows_contiguous`)."""
    if bound.tree:
        return "tile_tree" if row_major and C >= codegen.TREE_MIN_C else "tile"
    return "tile_direct" if bound.direct and row_major and C >= codegen.DIRECT_MIN_C else "tile"


def _tile_route(bound: Bound, suffix: str, ignore_class: int | None, rows: bool, kind: str) -> Route:
    """The tile kernel takes ``out`` and the weights in both kinds of call: a rows call passes
    unit weights after its ``out``, a reduced call an empty ``out`` before its weights."""
    kernel = getattr(bound.kernels(suffix), f"{kind}_{suffix}")
    sparse = tuple(_sparse_args(bound.program, ignore_class))
    t_index = _t_index(bound.program)
    if rows:
        return Route(kernel, False, sparse, _tile_count, False, t_index, after=(UNIT_WEIGHTS[bound.dtype], 0))
    return Route(kernel, False, sparse, _as_triple, False, t_index, before=(_NO_ROWS[bound.dtype],))


def rows(bound: Bound, arrays: Mapping[str, np.ndarray], labels=None, ignore_class: int | None = None):
    """Per-row loss values: returns (L of shape (R,), valid mask or None, bad label count)."""
    program, pv = bound.program, bound.values
    R, C = _shape(program, arrays)
    out = np.empty(R, dtype=bound.dtype)
    if R == 0:
        return out, None, 0
    arrs = kernel_arrays(program, arrays, labels)
    route = rows_route(bound, R, C, flat_ok(bound, arrays), ignore_class, rows_contiguous(bound, arrays))
    if route is None:  # few very long rows: the chunked kernels, threaded
        mod = bound.kernels("par")
        pv = settled(bound, arrays).values
        sp = _sparse_args(program, ignore_class)
        stats = _chunked_stats(mod, program, arrs, pv)
        valid = np.ones(R, dtype=bool)
        nbad = mod.chunk_finish(*arrs, stats, out, valid, *sp, *pv)
        return out, (valid if ignore_class is not None else None), nbad
    nbad = route(arrs, (out,), bound)
    valid = None
    if ignore_class is not None:
        valid = _valid_mask(labels, ignore_class)
    return out, valid, nbad


def _valid_mask(labels: np.ndarray, ignore_class: int) -> np.ndarray:
    lab = labels
    if lab.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            lab = np.trunc(lab)
    return lab != ignore_class


#: the weight of an unweighted call per compute dtype (the kernels only read it; one array, not
#: one per call). In the compute dtype, like the weights of weighted calls (:func:`kernel_weights`),
#: so that both run the same compiled kernel.
UNIT_WEIGHTS = {"float32": np.ones(1, np.float32), "float64": np.ones(1)}
#: the ``out`` of a reduced call of the tile kernel: no rows to write
_NO_ROWS = {"float32": np.empty(0, np.float32), "float64": np.empty(0)}


def kernel_weights(weights: np.ndarray | None, dtype: str) -> np.ndarray:
    """``weights`` (None, one value, or one per row) as the reduce kernels read them.

    Keras casts sample weights to the loss dtype (spec §5.2); here one value, and weights of a
    dtype other than float32/float64, are cast to the compute dtype ``dtype``. Float arrays stay
    as they are (no copy of a per-element weight array). Numba compiles one kernel per argument
    type: before, the unit weight (float64), scalar weights (float64) and float32 weight arrays
    made up to three compiles of every reduce kernel of a float32 loss, ~1-2 s each (a cold test
    suite compiled 544 kernels, 99 of them for another weight type alone).
    """
    if weights is None:
        return UNIT_WEIGHTS[dtype]
    if weights.size == 1:
        return np.array(weights.reshape(1), dtype=dtype)
    if weights.dtype != np.float32 and weights.dtype != np.float64:
        return np.ascontiguousarray(weights, dtype=dtype)
    return as_kernel_input(weights)


class _FlatFinish:
    """The flat sweep sums all R·C elements: rows of C elements weigh 1/C each."""

    __slots__ = ("R", "C", "mean")

    def __init__(self, R: int, C: int, mean: bool):
        self.R, self.C, self.mean = float(R), C, mean

    def __call__(self, result):
        swl, sw = result[0], result[1]
        if self.C > 1:
            sw = sw / self.C
            if self.mean:
                swl = swl / self.C
        return swl, sw, self.R, (int(result[2]) if len(result) > 2 else 0)  # the check's count


def _as_triple(result):
    swl, sw, cnt, nbad = result
    return swl, sw, cnt, int(nbad)


def reduce_route(bound: Bound, R: int, C: int, flat_ok: bool, w_step: int,
                 ignore_class: int | None, row_major: bool = False) -> Route | None:
    """The route of :func:`reduce` (leading arguments: weights, w_step); None for the chunked
    kernels. ``row_major`` as in :func:`rows_route`."""
    program = bound.program
    if _use_chunks(program, R, C):
        return None
    suffix = "ser" if R * C < SERIAL_BELOW else "par"
    mod = bound.kernels(suffix)
    t_index = _t_index(program)
    if (w_step == 0 or C == 1) and flat_ok:
        return Route(getattr(mod, f"flat_reduce_{suffix}"), True, (), _FlatFinish(R, C, program.flat_scale == "mean"),
                     program.check is not None, t_index)
    if bound.tiled and codegen.tile_fits(program, C):
        return _tile_route(bound, suffix, ignore_class, rows=False, kind=_tile_kind(bound, C, row_major))
    return Route(getattr(mod, f"reduce_{suffix}"), False, tuple(_sparse_args(program, ignore_class)), _as_triple,
                 False, t_index)


def reduce(bound: Bound, arrays: Mapping[str, np.ndarray], labels=None, weights: np.ndarray | None = None,
           ignore_class: int | None = None) -> tuple[float, float, float, int]:
    """The partial triple of a reduced call in one pass: (Σ w·ℓ, Σ w, count, bad labels).

    ``weights`` is None, a 1-element array (one weight for all rows) or one weight per row;
    masked rows (SCCE ``ignore_class``) count in none of the three.
    """
    program = bound.program
    R, C = _shape(program, arrays)
    if R == 0:
        return 0.0, 0.0, 0.0, 0
    weights = kernel_weights(weights, bound.dtype)
    w_step = 0 if weights.size == 1 else 1
    route = reduce_route(bound, R, C, flat_ok(bound, arrays), w_step, ignore_class, rows_contiguous(bound, arrays))
    if route is None:
        L, valid, nbad = rows(bound, arrays, labels, ignore_class)
        w = np.broadcast_to(weights, (R,)) if w_step == 0 else weights
        if valid is not None:
            L, w = L[valid], w[valid]
        wl = w * L.astype(np.float64)
        return float(wl.sum()), float(w.sum()), float(L.size), int(nbad)
    return route(kernel_arrays(program, arrays, labels), (weights, w_step), bound)

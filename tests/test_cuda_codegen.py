"""The CUDA code generator, checked without a GPU.

(a) Every kernel of every registered program, for every input dtype, compiles with NVRTC
    (cubin for sm_90 with ptxas's register/spill report, PTX for sm_80).
(b) The translated ``__device__`` terms, compiled as host C++ by g++, give the same numbers
    as Numba-compiled versions of the same Python terms on random inputs (float32 and
    float64; a deliberately broken translation must fail that check), the vocabulary header
    matches gpuloss.vocab, and the row functions of the kernels (``gl_row``, with the lanes of
    a group emulated by threads) match a float64 evaluation of each program.

The file skips if the NVRTC library cannot be loaded (pip install nvidia-cuda-nvrtc
nvidia-cuda-runtime, the ``test`` extra); the host-C++ checks also need g++.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import importlib.util
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuloss.losses  # noqa: F401 - the programs
from gpuloss import vocab as V
from gpuloss.kernels.cupy import nvrtc, templates, translate as tr
from gpuloss.program import RowProgram, Term

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cuda_host  # noqa: E402 - the host compiler, its cache, the programs

if not nvrtc.available():
    pytest.skip("NVRTC library not found (pip install nvidia-cuda-nvrtc)", allow_module_level=True)

CXX = cuda_host.CXX
needs_cxx = pytest.mark.skipif(CXX is None, reason="no host C++ compiler")

DTYPES = list(templates.DTYPES)


# ---- the programs ----------------------------------------------------------------------------

PROGRAMS: list[RowProgram] = cuda_host.generated_programs()
VARIANTS = [(p, c) for p in PROGRAMS for c in cuda_host.column_variants(p)]


def test_every_registered_loss_has_programs():
    assert len(PROGRAMS) >= 30
    names = {p.name for p in PROGRAMS}
    assert {"cce_logits", "scce_logits", "cce_probs", "cfce_logits", "gce", "triplet_margin"} <= names


# ---- (a) NVRTC ---------------------------------------------------------------------------------

ARCHS = ("sm_90", "compute_80")  # cubin (ptxas runs: registers, spills) and PTX


def _batch_source(dtype: str) -> str:
    """All programs in one source (one NVRTC run per dtype and arch: the header and NVRTC's
    start-up are paid once; each program sits in its own namespace)."""
    return templates.HEADER + "".join(templates.program_body(p, [dtype], c) for p, c in VARIANTS)


def _expected_names(dtype: str) -> set[str]:
    return {n for p, c in VARIANTS for n in templates.kernel_names(p, dtype, c).values()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_compiles_with_nvrtc(dtype, arch, record_property):
    try:
        res = nvrtc.compile(_batch_source(dtype), arch)
    except nvrtc.NVRTCError as exc:
        pytest.fail(f"NVRTC failed for {dtype} {arch}:\n{exc.log[:20000]}")
    expected = _expected_names(dtype)
    if res.kind == "cubin":
        assert set(res.kernels) == expected, "ptxas compiled another set of kernels than generated"
        regs = {k: (v.registers, v.spill_stores) for k, v in res.kernels.items()}
        record_property("registers", regs)
        worst = max(regs.values())
        assert worst[0] is not None and worst[0] <= 128, f"register use grew: {sorted(regs.items())[:5]}"
    else:
        ptx = res.binary.rstrip(b"\0").decode()
        entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx))
        assert entries == expected


def test_single_program_source_compiles_as_the_backend_would():
    # the per-program source the backend hands to CuPy (header + one namespace)
    from gpuloss.losses.probabilistic import SCCE_LOGITS

    src = templates.program_source(SCCE_LOGITS, "bfloat16")
    res = nvrtc.compile(src, "sm_90")
    assert set(res.kernels) == set(templates.kernel_names(SCCE_LOGITS, "bfloat16").values())
    assert res.seconds < 30


def test_compile_error_carries_the_log():
    with pytest.raises(nvrtc.NVRTCError) as info:
        nvrtc.compile(templates.HEADER + 'extern "C" __global__ void k() { undefined_thing(); }', "sm_90")
    assert "undefined_thing" in info.value.log


# ---- translation: whitelist, precedence, literals --------------------------------------------

def _src(code: str, name: str) -> Term:
    ns: dict = {}
    exec(compile(code, f"<term {name}>", "exec"), dict(V.VOCABULARY), ns)
    t = Term(ns[name])
    t.source = code.strip() + "\n"  # no file behind exec'd code: give the source directly
    return t


@pytest.mark.parametrize("code,needle", [
    ("def f(a, b):\n    return a // b\n", "FloorDiv"),
    ("def f(a, b):\n    return a % b\n", "Mod"),
    ("def f(a):\n    return math.exp(a)\n", "Attribute"),
    ("def f(a):\n    return a + EPS\n", "EPS"),
    ("def f(a, b):\n    return a or b\n", "boolean"),
    ("def f(a):\n    if a > 0:\n        return a\n    return -a\n", "If"),
    ("def f(a):\n    return min(a, 0)\n", "min"),
    ("def f(a):\n    return [a][0]\n", "Subscript"),
    ("def f(a):\n    return a & 1\n", "BitAnd"),
    ("def f(a, *b):\n    return a\n", "positional"),
])
def test_translator_rejects_outside_the_whitelist(code, needle):
    t = _src(code, "f")
    with pytest.raises(TypeError) as info:
        tr.translate_term(t, "e")
    assert "term f" in str(info.value) and needle in str(info.value)


def test_translation_keeps_precedence_and_types_literals():
    t = _src("def g(a, b, c):\n    x = a - (b - c) * 2\n    x = x / (a * b) if a < b < c else -x ** 0.5\n"
             "    return x + 1e-07\n", "g")
    e = tr.translate_term(t, "e")
    f = tr.translate_term(t, "f")
    assert "const auto x = (a - ((b - c) * T(2.0)));" in e
    assert "const auto x_1 = ((((a < b) && (b < c))) ? ((x / (a * b))) : ((-gl_pow(x, T(0.5)))));" in e
    assert "return (x_1 + T(1e-07));" in e
    assert "template <typename T>" in e and "T e_g(T a, T b, T c)" in e
    assert "double f_g(double a, double b, double c)" in f and "(x_1 + 1e-07)" in f and "T(" not in f


def test_reserved_names_are_renamed():
    t = _src("def h(int, double):\n    new = int * double\n    return new\n", "h")
    e = tr.translate_term(t, "e")
    assert "T e_h(T int_, T double_)" in e and "const auto new_ = (int_ * double_);" in e


# ---- sweeps -------------------------------------------------------------------------------------

def test_sweep_plans_read_logits_once():
    from gpuloss.losses import probabilistic as P

    def shape(p):
        return [[(s.name, s.kind) for s in sw.slots] for sw in templates.plan_sweeps(p)]

    assert shape(P.CCE_LOGITS) == [[("m", "max"), ("e", "exp"), ("ys", "sum"), ("yx", "aff")]]
    assert shape(P.SCCE_LOGITS) == [[("m", "max"), ("e", "exp")]]
    assert shape(P.CFCE_LOGITS) == [[("m", "max"), ("e", "exp")], [("s", "sum")]]
    assert shape(P.CCE_PROBS) == [[("sp", "sum")], [("s", "sum")]]
    assert shape(P.GCE) == []
    # without fusion the passes stay as written
    assert len(templates.plan_sweeps(P.CFCE_LOGITS, fuse=False)) == 3


# ---- host C++ builds --------------------------------------------------------------------------

def _work_dir() -> Path:
    """Built test libraries and Numba modules, keyed by content: the two xdist workers (and
    later runs) share them instead of building twice."""
    return cuda_host.work_dir("cuda-codegen-tests")


_locked = cuda_host.locked

CXXFLAGS = ["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-w"]


def _build(source: str, tag: str) -> ctypes.CDLL:
    try:
        so = cuda_host.compile_shared(source, tag, CXXFLAGS, "cuda-codegen-tests")
    except cuda_host.CompileError as exc:
        pytest.fail(f"host C++ compile failed:\n{exc.log}")
    return ctypes.CDLL(str(so))


def _all_terms() -> list[Term]:
    out: list[Term] = []
    for p in PROGRAMS:
        for t in p.terms:
            if t not in out:
                out.append(t)
    names = [t.name for t in out]
    assert len(names) == len(set(names)), "two different terms share a name"
    return out


TERMS = _all_terms()


def _term_host_source(terms: list[Term]) -> str:
    parts = [tr.HOST_SHIM, tr.VOCAB_HEADER]
    for i, t in enumerate(terms):
        parts.append(f"namespace tk{i} {{\n{tr.translate_terms([t], 'e')}\n{tr.translate_terms([t], 'f')}\n}}")
        for tag, ctype, call in (("e32", "float", f"e_{t.name}<float>"), ("e64", "double", f"e_{t.name}<double>"),
                                 ("f64", "double", f"f_{t.name}")):
            args = ", ".join(f"X[{k} * n + i]" for k in range(len(t.args)))
            parts.append(f'extern "C" void tk{i}_{tag}(const {ctype}* X, long n, {ctype}* out) {{\n'
                         f"    for (long i = 0; i < n; ++i) out[i] = tk{i}::{call}({args});\n}}")
    return "\n".join(parts)


# ---- Numba versions of the same terms ---------------------------------------------------------

_REF_VOCAB = r'''
import math
import numpy as np
from numba import njit, types
from numba.extending import overload

def exp(x): pass
def log(x): pass
def log1p(x): pass
def sqrt(x): pass
def rsqrt(x): pass
def maximum(a, b): pass
def minimum(a, b): pass
def clip(x, lo, hi): pass
def power(x, y): pass
def sigmoid(x): pass
def softplus(x): pass

def _consts(x):
    f = np.float32 if x == types.float32 else np.float64
    return f(0.0), f(1.0), f(np.inf), f(np.nan)

@overload(exp)
def _exp(x):
    return lambda x: np.exp(x)

@overload(log)
def _log(x):
    return lambda x: np.log(x)

@overload(log1p)
def _log1p(x):
    return lambda x: np.log1p(x)

@overload(sqrt)
def _sqrt(x):
    return lambda x: np.sqrt(x)

@overload(rsqrt)
def _rsqrt(x):
    zero, one, inf, nan = _consts(x)
    return lambda x: inf if x == zero else one / np.sqrt(x)

@overload(maximum)
def _maximum(a, b):
    return lambda a, b: a if (a > b or a != a) else b

@overload(minimum)
def _minimum(a, b):
    return lambda a, b: a if (a < b or a != a) else b

@overload(clip)
def _clip(x, lo, hi):
    def impl(x, lo, hi):
        y = x if (x > lo or x != x) else lo
        return y if (y < hi or y != y) else hi
    return impl

@overload(power)
def _power(x, y):
    zero, one, inf, nan = _consts(x)
    def impl(x, y):  # C pow semantics, as gpuloss.vocab.power
        return np.power(x, y)
    return impl

@overload(sigmoid)
def _sigmoid(x):
    zero, one, inf, nan = _consts(x)
    return lambda x: one / (one + np.exp(-x))

@overload(softplus)
def _softplus(x):
    zero, one, inf, nan = _consts(x)
    def impl(x):
        m = x if (x > zero or x != x) else zero
        return m + np.log1p(np.exp(-abs(x)))
    return impl
'''


def _typed_literals(node: ast.AST) -> ast.AST:
    """``2`` → ``_T(2.0)``: the Numba backend's own literal typing (kernels.numba.codegen)."""
    try:
        from gpuloss.kernels.numba.codegen import _Literals
    except ImportError:  # pragma: no cover - renamed: the same rule, here
        class _Literals(ast.NodeTransformer):
            def __init__(self, cast, prefix, terms):
                self.cast = cast

            def visit_Constant(self, node):
                if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                    return ast.Call(ast.Name(self.cast, ast.Load()), [ast.Constant(float(node.value))], [])
                return node
    return _Literals("_T", "", set()).visit(node)


def _numba_module(terms: list[Term]) -> dict:
    """Numba versions of the terms: each term's Python expression (its locals and the terms it
    calls substituted, an exact rewrite of pure expressions), literals typed by the Numba
    backend's codegen (``_T(2.0)``), no fastmath (IEEE operations as written), compiled by
    numba.njit into one driver per type: ``run_e32`` (float32) and ``run_e64`` (float64: the
    reference of both the float64 element and the finish versions). One function per type
    compiles in seconds; one njit function per term took ~0.13 s each.

    The vocabulary here is libm's (:data:`_REF_VOCAB`), as in the CUDA header's host build, so
    a translation mistake shows as a mismatch of bits. (The CPU backend's float32 exp/log are
    polynomials a few ulp from libm; CPU-vs-GPU agreement of whole losses is for GPU tests.)"""
    lines = ["from numba import njit, float32, float64"]
    for tag, cast in (("e32", "float32"), ("e64", "float64")):
        body = []
        for i, t in enumerate(terms):
            e = tr.inline_term(t)
            assert e is not None, f"term {t.name} is not a plain expression function"
            e = tr._Subst({a: ast.Name(f"X[{i}, {k}, j]", ast.Load()) for k, a in enumerate(t.args)}).visit(e)
            e = _typed_literals(e)
            text = ast.unparse(ast.fix_missing_locations(e)).replace("_T(", f"{cast}(")
            body.append(f"        out[{i}, j] = {text}")
        lines.append(f"@njit(error_model='numpy', cache=True)\ndef run_{tag}(X, out):\n"
                     f"    for j in range(X.shape[2]):\n" + "\n".join(body))
    src = _REF_VOCAB + "\n\n" + "\n\n".join(lines) + "\n"
    # a real module file, so Numba's disk cache works (exec'd code is never cached) and the
    # second xdist worker loads what the first compiled
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    d = _work_dir()
    path = d / f"ref_terms_{key}.py"
    with _locked(d / f"ref_terms_{key}.lock"):
        if not path.exists():
            path.write_text(src)
        name = f"gl_ref_terms_{key}"
        mod = sys.modules.get(name)
        if mod is None:
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # Numba's cache finds the overloads through the module name
            spec.loader.exec_module(mod)
        maxa = max(len(t.args) for t in terms)
        for tag, dt in (("e32", np.float32), ("e64", np.float64)):  # compile (or load) now
            args = np.zeros((len(terms), maxa, 1), dt), np.zeros((len(terms), 1), dt)
            try:
                getattr(mod, f"run_{tag}")(*args)
            except Exception:  # an unusable disk cache: drop it and compile
                for f in (d / "__pycache__").glob(f"ref_terms_{key}*"):
                    f.unlink()
                getattr(mod, f"run_{tag}").stats  # noqa: B018
                getattr(mod, f"run_{tag}").recompile()
                getattr(mod, f"run_{tag}")(*args)
    ns = dict(vars(mod))
    ns["run_f64"] = ns["run_e64"]
    return ns


# ---- random inputs -------------------------------------------------------------------------------

SPECIAL = np.array([0.0, 1.0, -1.0, 2.0, 0.5, 1e-7, 1 - 1e-7, 3.0, -0.0, 100.0])
NONFINITE = np.array([np.nan, np.inf, -np.inf])


def _inputs(arg: str, n: int, rng) -> np.ndarray:
    if arg == "n":
        return rng.integers(1, 65, n).astype(np.float64)
    kind = rng.random(n)
    x = np.where(kind < 0.4, rng.uniform(-3, 3, n),
                 np.where(kind < 0.65, rng.uniform(0, 1, n),
                          np.where(kind < 0.75, rng.uniform(0, 20, n),
                                   rng.choice(SPECIAL, n))))
    bad = rng.random(n) < 0.03
    x[bad] = rng.choice(NONFINITE, int(bad.sum()))
    return x


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place: 0 where both are NaN, inf where only one is, or
    where non-finite values differ."""
    def line(x):
        if x.dtype == np.float32:
            i = x.view(np.int32).astype(np.int64)
            return np.where(i < 0, np.int64(-2**31) - i, i).astype(np.float64)
        i = x.view(np.int64)
        return np.where(i < 0, np.int64(-2**63) - i, i).astype(np.float64)

    a, b = np.asarray(a), np.asarray(b)
    d = np.abs(line(a) - line(b))
    na, nb = np.isnan(a), np.isnan(b)
    nonfinite = ~np.isfinite(a) | ~np.isfinite(b)
    d = np.where(nonfinite, np.where((a == b) | (na & nb), 0.0, np.inf), d)
    return d


N_RANDOM = 4000


@pytest.fixture(scope="module")
def host_terms():
    if CXX is None:
        pytest.skip("no host C++ compiler")
    lib = _build(_term_host_source(TERMS), "terms")
    return lib


@pytest.fixture(scope="module")
def numba_terms():
    return _numba_module(TERMS)


def _run_host(lib, i: int, tag: str, X: np.ndarray) -> np.ndarray:
    dt = np.float32 if tag == "e32" else np.float64
    Xc = np.ascontiguousarray(X, dtype=dt)
    out = np.empty(X.shape[-1], dtype=dt)
    fn = getattr(lib, f"tk{i}_{tag}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
    fn(Xc.ctypes.data, Xc.shape[-1], out.ctypes.data)
    return out


def _compare_terms(lib, ns, terms, tag: str, seed: int = 7):
    """(max ulp distance per term, first mismatching input per term)."""
    rng = np.random.default_rng(seed)
    dt = np.float32 if tag == "e32" else np.float64
    maxa = max(len(t.args) for t in terms)
    X = np.zeros((len(terms), maxa, N_RANDOM), dtype=dt)
    for i, t in enumerate(terms):
        for k, a in enumerate(t.args):
            X[i, k] = _inputs(a, N_RANDOM, rng).astype(dt)
    out = np.empty((len(terms), N_RANDOM), dtype=dt)
    with np.errstate(all="ignore"):
        ns[f"run_{tag}"](X, out)
    worst = {}
    for i, t in enumerate(terms):
        host = _run_host(lib, i, tag, X[i, :len(t.args)])
        d = _ulps(host, out[i])
        j = int(np.argmax(d))
        worst[t.name] = (float(d[j]), X[i, :len(t.args), j].tolist(), float(host[j]), float(out[i, j]))
    return worst


#: float32 and float64 alike: the same libm on both sides and IEEE operations in the same
#: order give the same bits (measured: 0 ulp for every term); 2 ulp leave room for a platform
#: whose Numba lowers a math function differently
ULP_TOLERANCE = 2


@needs_cxx
@pytest.mark.parametrize("tag", ["e32", "e64", "f64"])
def test_host_translation_matches_numba(host_terms, numba_terms, tag):
    worst = _compare_terms(host_terms, numba_terms, TERMS, tag)
    bad = {k: v for k, v in worst.items() if v[0] > ULP_TOLERANCE}
    assert not bad, f"translated terms differ from Numba ({tag}): {bad}"


class _NoParens(tr.ExprEmitter):
    """A broken translation: binary operators without their parentheses."""

    def _BinOp(self, node):
        s = super()._BinOp(node)
        return s[1:-1] if s.startswith("(") and s.endswith(")") else s


class _WrongWord(tr.ExprEmitter):
    """A broken translation: softplus emitted as log1p."""

    def _Call(self, node):
        return super()._Call(node).replace("gl_softplus(", "gl_log1p(")


@needs_cxx
@pytest.mark.parametrize("broken", [_NoParens, _WrongWord])
def test_broken_translation_is_caught(numba_terms, monkeypatch, broken):
    from gpuloss.losses import probabilistic as P, regression as R

    pick = [P.smooth_binary, P.focal_factor, P.bce_logits, R.squared_log_error, R.log_cosh_term,
            P.cce_logits_finish]
    idx = [TERMS.index(t) for t in pick]
    monkeypatch.setattr(tr, "ExprEmitter", broken)
    lib = _build(_term_host_source(pick), "broken")
    monkeypatch.undo()
    # numba_terms evaluates all TERMS; compare the picked ones through their own indices
    rng = np.random.default_rng(11)
    caught = []
    for tag in ("e32", "e64", "f64"):
        dt = np.float32 if tag == "e32" else np.float64
        X = np.zeros((len(TERMS), max(len(t.args) for t in TERMS), N_RANDOM), dtype=dt)
        for i in idx:
            for k, a in enumerate(TERMS[i].args):
                X[i, k] = _inputs(a, N_RANDOM, rng).astype(dt)
        out = np.empty((len(TERMS), N_RANDOM), dtype=dt)
        with np.errstate(all="ignore"):
            numba_terms[f"run_{tag}"](X, out)
        for j, i in enumerate(idx):
            host = _run_host(lib, j, tag, X[i, :len(TERMS[i].args)])
            if np.max(_ulps(host, out[i])) > ULP_TOLERANCE:
                caught.append((tag, TERMS[i].name))
    assert caught, "the broken translation was not detected"
    if broken is _NoParens:
        assert {n for _, n in caught} >= {"smooth_binary", "focal_factor"}
    else:
        assert "bce_logits" in {n for _, n in caught}


# ---- the vocabulary header against gpuloss.vocab -----------------------------------------------

_VOCAB_GRID = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -0.5, 1e-7, 3.0, 100.0,
               -3.0, 1e-30, 7.25, 0.999]


@needs_cxx
def test_vocabulary_header_matches_gpuloss_vocab():
    words = sorted(V.VOCABULARY)
    parts = [tr.HOST_SHIM, tr.VOCAB_HEADER]
    for w in words:
        k = len(tr._VOCAB_PARAMS[w])
        for ct, tag in (("double", "d"), ("float", "f")):
            params = ", ".join(f"{ct} a{i}" for i in range(3))
            args = ", ".join(f"a{i}" for i in range(k))
            parts.append(f'extern "C" {ct} v_{w}_{tag}({params}) {{ return {tr.VOCAB_CUDA[w]}({args}); }}')
    lib = _build("\n".join(parts), "vocab")
    problems = []
    for w in words:
        k = len(tr._VOCAB_PARAMS[w])
        py = V.VOCABULARY[w]
        for tag, ct, npt in (("d", ctypes.c_double, np.float64), ("f", ctypes.c_float, np.float32)):
            fn = getattr(lib, f"v_{w}_{tag}")
            fn.restype = ct
            fn.argtypes = [ct, ct, ct]
            grid = np.array(np.meshgrid(*[_VOCAB_GRID] * k)).reshape(k, -1).T if k else [()]
            for args in grid:
                a = [float(npt(x)) for x in args]
                try:
                    want = py(*a)
                except (OverflowError, ZeroDivisionError, ValueError):
                    continue
                got = fn(*(a + [0.0] * (3 - k)))
                with np.errstate(all="ignore"):  # a float64 value past float32's range casts to inf
                    want_t, got_t = np.array([want], npt), np.array([got], npt)
                    d = _ulps(got_t, want_t)[0]
                # vocab.power computes exp(y*log(x)); the header uses pow (more exact)
                tol = 4 if w != "power" else (1e4 if tag == "d" else 4)
                if d > tol:
                    problems.append((w, tag, a, got, want))
    assert not problems, problems[:20]


# ---- gl_row (the kernels' row functions) on the host --------------------------------------------

_HOST_GROUP = r"""
#include <barrier>
#include <thread>
#include <vector>
// The lanes of a group as threads; reduce() is the device butterfly (shfl_xor) step for step.
struct HostShared { std::barrier<>* bar; double slots[32][64]; };
struct HostGroup {
    int lane_, size_;
    HostShared* sh;
    int lane() const { return lane_; }
    int size() const { return size_; }
    template <class A> void reduce(A& a) const {
        for (int off = size_ >> 1; off > 0; off >>= 1) {
            for (int k = 0; k < A::NF; ++k) sh->slots[lane_][k] = a.f[k];
            sh->bar->arrive_and_wait();
            A o;
            for (int k = 0; k < A::NF; ++k) o.f[k] = sh->slots[lane_ ^ off][k];
            sh->bar->arrive_and_wait();
            A::merge(a, o);
        }
    }
};
template <class F> void gl_host_lanes(int G, F body) {
    std::barrier<> bar(G);
    HostShared sh;
    sh.bar = &bar;
    std::vector<std::thread> th;
    for (int l = 0; l < G; ++l) th.emplace_back([&, l] { HostGroup g{l, G, &sh}; body(g); });
    for (auto& t : th) t.join();
}
"""


def _row_host_source() -> str:
    parts = [tr.HOST_SHIM, templates.HEADER, _HOST_GROUP]
    for p, colp in VARIANTS:
        g = templates._gen(p, colp)
        parts.append(f"namespace glp_{g.id} {{\n{g.row_code()}\n}}")
        for ct in ("float", "double"):
            sig = [f"const {ct}* {e}, long long {e}_rs, long long {e}_cs" for e in g.elements]
            fill = [f"A.{e} = {e}; A.{e}_rs = {e}_rs; A.{e}_cs = {e}_cs; A.stg_{e} = nullptr;" for e in g.elements]
            if p.sparse:
                sig.append("const void* labels, int label_kind, int has_ignore, long long ignore")
                fill.append("A.lab = labels; A.lab_kind = label_kind; A.lab_step = 1; "
                            "A.has_ignore = has_ignore; A.ignore = ignore;")
            sig.append("long long R, long long C")
            fill.append("A.R = R; A.C = C;")
            for n in g.params:
                sig.append(f"const double* P_{n}" if n in colp else f"double P_{n}")
                fill.append(f"A.P_{n} = P_{n};")
            sig.append("int G, double* out, int* status")
            parts.append(
                f'extern "C" void rows_{g.id}_{ct}({", ".join(sig)}) {{\n'
                f"    glp_{g.id}::GlArgs<{ct}> A;\n    " + "\n    ".join(fill) + "\n"
                f"    gl_host_lanes(G, [&](const HostGroup& grp) {{\n"
                f"        for (long long r = 0; r < R; ++r) {{\n"
                f"            double v;\n"
                f"            const int st = glp_{g.id}::gl_row<{ct}, {ct}>(grp, A, r, v);\n"
                f"            if (grp.lane() == 0) {{ out[r] = v; status[r] = st; }}\n"
                f"        }}\n    }});\n}}")
    return "\n".join(parts)


PARAMS = {"epsilon": 1e-7, "one_minus_epsilon": 1 - 1e-7, "label_smoothing": 0.1, "gamma": 2.0,
          "alpha": 0.25, "beta": 0.7, "delta": 1.0, "margin": 1.0, "norm": 2.0, "label_scale": 2.0,
          "label_shift": -1.0, "norm_floor": 1e-12, "q": 0.5, "label_classes": 4.0}


def _ref_max(vals):
    m = -math.inf
    for v in vals:
        m = V.maximum(m, v)
    return m


def _reference_rows(p: RowProgram, arrays: dict, labels, params: dict, ignore):
    """The program's meaning in float64 Python (gpuloss.vocab), row by row."""
    first = arrays["p"] if p.sparse else arrays[p.elements[0]]
    R, C = first.shape
    out, status = np.empty(R), np.zeros(R, dtype=np.int32)
    for r in range(R):
        env: dict = {"n": float(C)}
        if p.sparse:
            x = labels[r]
            ok = bool(abs(x) < 4e18) if isinstance(x, (float, np.floating)) else True
            lab = int(x) if ok else -1
            if ignore is not None and ok and lab == ignore:
                out[r], status[r] = 0.0, 1
                continue
            if not ok or not 0 <= lab < C:
                out[r], status[r] = math.nan, 2
                continue
            env["label"], env["p_label"] = float(lab), float(arrays["p"][r, lab])
        for stats in p.passes:
            new = {}
            for name, st in stats:
                vals = []
                for j in range(C):
                    bind = {**env, **{e: float(arrays[e][r, j]) for e in arrays}}
                    args = []
                    for a in st.term.args:
                        v = params[a] if a in params else bind[a]
                        args.append(float(v[j]) if isinstance(v, np.ndarray) else v)
                    vals.append(st.term.fn(*args))
                new[name] = math.fsum(vals) if st.kind == "sum" and all(map(math.isfinite, vals)) \
                    else (sum(vals) if st.kind == "sum" else _ref_max(vals))
            env.update(new)
        out[r] = p.finish.fn(*[params[a] if a in params else env[a] for a in p.finish.args])
    return out, status


def _row_data(p: RowProgram, C: int, rng, colp):
    R = 7
    arrays = {}
    for e in (("p",) if p.sparse else p.elements):
        if "logits" in p.name:
            a = rng.normal(0, 3, (R, C))
            if C > 2:
                a[1, : C // 2] = -np.inf  # -inf before the first finite logit
                a[2, :] = -np.inf  # a row of -inf only
                a[3, C - 1] = -np.inf
        else:
            a = rng.uniform(0.05, 1.0, (R, C))
        arrays[e] = a
    if "t" in arrays:
        arrays["t"] = rng.uniform(0, 1, (R, C))
        arrays["t"][0] = 0.0
        arrays["t"][0, rng.integers(0, C)] = 1.0
    labels = None
    if p.sparse:
        labels = rng.integers(0, C, R).astype(np.float64)
        labels[1] = -1  # bad
        labels[2] = C  # bad
        labels[3] = 1.7 if C > 2 else 0.2  # truncated
        labels[4] = np.nan  # bad
    params = {k: PARAMS.get(k, 0.5) for k in p.param_names()}
    for c in colp:
        params[c] = rng.uniform(0.1, 0.9, C)
    return arrays, labels, params


@pytest.fixture(scope="module")
def host_rows():
    if CXX is None:
        pytest.skip("no host C++ compiler")
    return _build(_row_host_source(), "rows")


def _call_rows(lib, p, colp, ct, arrays, labels, params, ignore, G):
    g = templates._gen(p, colp)
    dt = np.float32 if ct == "float" else np.float64
    keep, args = [], []
    for e in g.elements:
        a = np.ascontiguousarray(arrays[e], dtype=dt)
        keep.append(a)
        args += [ctypes.c_void_p(a.ctypes.data), ctypes.c_longlong(a.shape[1]), ctypes.c_longlong(1)]
    R, C = keep[0].shape
    if p.sparse:
        lab = np.ascontiguousarray(labels, dtype=np.float64)
        keep.append(lab)
        args += [ctypes.c_void_p(lab.ctypes.data), ctypes.c_int(templates.KINDS["float64"]),
                 ctypes.c_int(ignore is not None), ctypes.c_longlong(-1 if ignore is None else ignore)]
    args += [ctypes.c_longlong(R), ctypes.c_longlong(C)]
    for n in g.params:
        if n in colp:
            v = np.ascontiguousarray(params[n], dtype=np.float64)
            keep.append(v)
            args.append(ctypes.c_void_p(v.ctypes.data))
        else:
            args.append(ctypes.c_double(float(dt(params[n]))))
    out, status = np.empty(R), np.empty(R, dtype=np.int32)
    args += [ctypes.c_int(G), ctypes.c_void_p(out.ctypes.data), ctypes.c_void_p(status.ctypes.data)]
    getattr(lib, f"rows_{g.id}_{ct}")(*args)
    return out, status


@needs_cxx
@pytest.mark.parametrize("ct", ["double", "float"])
def test_host_rows_match_float64_reference(host_rows, ct):
    rng = np.random.default_rng(5)
    failures = []
    for p, colp in VARIANTS:
        for C in (1, 6, 45):
            arrays, labels, params = _row_data(p, C, rng, colp)
            if ct == "float":  # the reference sees the float32-rounded inputs and parameters
                arrays = {k: v.astype(np.float32).astype(np.float64) for k, v in arrays.items()}
                params = {k: (v.astype(np.float32).astype(np.float64) if isinstance(v, np.ndarray)
                              else float(np.float32(v))) for k, v in params.items()}
            ignore = 0 if p.sparse else None
            with np.errstate(all="ignore"):
                want, want_st = _reference_rows(p, arrays, labels, params, ignore)
            for G in (1, 8, 32):
                got, st = _call_rows(host_rows, p, colp, ct, arrays, labels, params, ignore, G)
                rtol, atol = (1e-9, 1e-12) if ct == "double" else (3e-5, 3e-6)
                close = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
                if not close.all() or not (st == want_st).all():
                    r = int(np.argmin(close))
                    failures.append((p.name, colp, C, G, r, got[r], want[r], st.tolist(), want_st.tolist()))
    assert not failures, failures[:10]


@needs_cxx
def test_host_rows_same_bits_for_same_group_size(host_rows):
    from gpuloss.losses import probabilistic as P

    rng = np.random.default_rng(9)
    arrays, labels, params = _row_data(P.CCE_LOGITS, 300, rng, ())
    a = _call_rows(host_rows, P.CCE_LOGITS, (), "float", arrays, labels, params, None, 32)[0]
    b = _call_rows(host_rows, P.CCE_LOGITS, (), "float", arrays, labels, params, None, 32)[0]
    assert a.tobytes() == b.tobytes()


def test_launch_plan_is_a_function_of_the_shape():
    from gpuloss.kernels.cupy.backend import launch_plan
    from gpuloss.losses import probabilistic as P

    assert launch_plan(P.CCE_LOGITS, "float32", 10_000, 3, 132).G == 4
    assert launch_plan(P.CCE_LOGITS, "float32", 10_000, 1000, 132).G == 32
    big = launch_plan(P.CCE_PROBS, "float32", 100, 5000, 132)
    assert big.G == 0 and big.stage_elems >= 5000 and big.shared_bytes == big.stage_elems * 4  # p only
    assert launch_plan(P.CCE_LOGITS, "float32", 100, 5000, 132).shared_bytes == 0  # one sweep
    assert launch_plan(P.CCE_PROBS, "float32", 100, 50_000, 132).stage_elems == 0  # too long


def test_compile_program_uses_rawmodule_lazily_and_caches(monkeypatch):
    import sys as _sys
    import types

    from gpuloss.kernels.cupy import backend
    from gpuloss.losses import regression as R

    made = []

    class RawModule:
        def __init__(self, code, options=()):
            made.append((code, options))

        def get_function(self, name):
            return f"kernel:{name}"

    fake = types.SimpleNamespace(RawModule=RawModule,
                                 cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    monkeypatch.setitem(_sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_CACHE", {})
    a = backend.compile_program(R.MSE, "float16")
    b = backend.compile_program(R.MSE, "float16")
    assert a is b and len(made) == 1
    assert set(a.kernels) == {"rows", "flat"} and a.kernels["flat"] == "kernel:gl_squared_error_f16_flat"
    assert made[0][0] == templates.program_source(R.MSE, "float16")
    assert "-std=c++17" in made[0][1]
    backend.compile_program(R.MSE, "float32")
    assert len(made) == 2

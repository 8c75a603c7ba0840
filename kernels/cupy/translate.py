"""Terms (:class:`gpuloss.program.Term`) → CUDA C++ ``__device__`` functions.

A whitelisted walk over the term's syntax tree. Every term becomes two functions::

    template <typename T> __device__ __forceinline__ T e_<name>(T t, T p, ...)   // element version
    __device__ __forceinline__ double f_<name>(double s, double n, ...)         // finish version

the same split as the Numba backend (``gpuloss.kernels.numba.codegen``): element terms compute
in the input's float type ``T`` (``float`` for float16/bfloat16/float32 inputs, ``double`` for
float64), finish terms in double. Numeric literals are typed explicitly (``T(1.5)`` in the
element version, ``1.5`` in the finish version), so float32 arithmetic never widens to double.

Accepted syntax (anything else raises ``TypeError`` naming the term and the node):

* ``+ - * /`` and ``**`` (→ ``gl_pow``, C ``pow``: what ``**`` means for Python and Numba
  floats), unary ``- + not``; ``//``, ``%``, ``@`` and bit operations are rejected;
* comparisons ``== != < <= > >=``, chained ones too (``a < b < c`` → ``(a < b) && (b < c)``);
* ``and``/``or`` between booleans (comparisons, ``not``, bool literals): Python's value-returning
  ``x or y`` on floats has no C++ counterpart and is rejected;
* ``a if c else b`` → ``((c) ? (a) : (b))``;
* calls to the vocabulary (:data:`gpuloss.vocab.VOCABULARY`, mapped to the ``gl_*`` functions
  of :data:`VOCAB_HEADER`) and to other terms (keyword arguments and constant defaults are
  resolved at the call site);
* local assignments (``x = ...``, ``x += ...``), each becoming a ``const auto`` (a re-assigned
  name gets a fresh C++ name), a docstring, and one final ``return``.

Every operator is emitted with parentheses around it, so Python's precedence is kept however
C++ would have parsed the same text.
"""

from __future__ import annotations

import ast
import inspect
import math

from ...program import Term
from ...vocab import VOCABULARY

__all__ = ["VOCAB_HEADER", "HOST_SHIM", "translate_term", "translate_terms", "ExprEmitter",
           "inline_term", "literal", "VOCAB_CUDA"]

#: vocabulary word → CUDA function (overloaded for float and double in VOCAB_HEADER)
VOCAB_CUDA = {
    "abs": "gl_abs",
    "clip": "gl_clip",
    "exp": "gl_exp",
    "log": "gl_log",
    "log1p": "gl_log1p",
    "maximum": "gl_maximum",
    "minimum": "gl_minimum",
    "power": "gl_power",
    "rsqrt": "gl_rsqrt",
    "sigmoid": "gl_sigmoid",
    "softplus": "gl_softplus",
    "sqrt": "gl_sqrt",
}
assert set(VOCAB_CUDA) == set(VOCABULARY), "every vocabulary word needs a CUDA translation"

#: Parameter lists of the vocabulary words (for keyword arguments at call sites).
_VOCAB_PARAMS = {k: tuple(inspect.signature(fn).parameters) for k, fn in VOCABULARY.items()}

#: Names that can not be C++ identifiers as they are (keywords, the template parameter, CUDA
#: built-ins, macros that headers define). A Python name in this set gets a trailing ``_``.
_RESERVED = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
    char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
    co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
    extern false float for friend goto if inline int long mutable namespace new noexcept not
    not_eq nullptr operator or or_eq private protected public register reinterpret_cast requires
    return short signed sizeof static static_assert static_cast struct switch template this
    thread_local throw true try typedef typeid typename union unsigned using virtual void
    volatile wchar_t while xor xor_eq
    T threadIdx blockIdx blockDim gridDim warpSize main
    NAN INFINITY HUGE_VAL HUGE_VALF EOF NULL assert errno signbit isnan isinf isfinite
    fpclassify FP_NAN FP_INFINITE FP_ZERO FP_NORMAL FP_SUBNORMAL
""".split())

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


def _cxx_name(name: str) -> str:
    """A Python identifier as a C++ identifier that can not clash with anything we emit."""
    if name in _RESERVED or name.startswith(("gl_", "GL_", "__")) or name.startswith(("e_", "f_")):
        return name + "_"
    return name


def literal(value: float, version: str) -> str:
    """A numeric literal typed for ``version`` ("e": ``T(...)``, "f": double)."""
    v = float(value)
    if math.isnan(v):
        text = "gl_nan()"
    elif math.isinf(v):
        text = "gl_inf()" if v > 0 else "(-gl_inf())"
    else:
        text = repr(v)  # shortest text that round-trips through a double: exact
        if "e" not in text and "." not in text:
            text += ".0"
    return f"T({text})" if version == "e" else f"({text})" if text.startswith("(") else text


class TranslationError(TypeError):
    """A term uses something outside the whitelist (a TypeError, as program.check_term)."""


def _where(t: Term | None, node: ast.AST) -> str:
    name = t.name if t is not None else "<expression>"
    line = getattr(node, "lineno", None)
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse of a hand-made node
        text = type(node).__name__
    return f"term {name}{f' line {line}' if line else ''}: {type(node).__name__} `{text}`"


class ExprEmitter:
    """Emits one Python expression as C++ (used for term bodies and for fused factors).

    ``names`` maps Python names to C++ expressions; ``version`` is "e" (type T) or "f"
    (double); ``callables`` maps term names to Term objects (calls to other terms)."""

    def __init__(self, term: Term | None, version: str, names: dict[str, str],
                 callables: dict[str, Term], bool_names: set[str] | None = None):
        self.term = term
        self.version = version
        self.names = names
        self.callables = callables
        self.bool_names = set(bool_names or ())

    def fail(self, node: ast.AST, why: str) -> TranslationError:
        return TranslationError(f"{_where(self.term, node)}: {why}")

    # -- typing: only to tell booleans from numbers (for and/or and for `const auto`)
    def is_bool(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return True
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return True
        if isinstance(node, ast.BoolOp):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.bool_names
        if isinstance(node, ast.IfExp):
            return self.is_bool(node.body) and self.is_bool(node.orelse)
        return False

    def emit(self, node: ast.AST) -> str:
        meth = getattr(self, "_" + type(node).__name__, None)
        if meth is None:
            raise self.fail(node, "not allowed in a term")
        return meth(node)

    def _Constant(self, node: ast.Constant) -> str:
        v = node.value
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return literal(v, self.version)
        raise self.fail(node, f"constant of type {type(v).__name__} is not a number")

    def _Name(self, node: ast.Name) -> str:
        if node.id not in self.names:
            raise self.fail(node, f"name {node.id!r} is neither an argument nor a local of the term "
                                  "(globals and constants must be passed as parameters)")
        return self.names[node.id]

    def _BinOp(self, node: ast.BinOp) -> str:
        a, b = self.emit(node.left), self.emit(node.right)
        if isinstance(node.op, ast.Pow):
            return f"gl_pow({a}, {b})"
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed "
                                  "(only + - * / and **; // and % have no float meaning here)")
        if self.is_bool(node.left) or self.is_bool(node.right):
            raise self.fail(node, "arithmetic on a boolean")
        return f"({a} {op} {b})"

    def _UnaryOp(self, node: ast.UnaryOp) -> str:
        a = self.emit(node.operand)
        if isinstance(node.op, ast.USub):
            return f"(-{a})"
        if isinstance(node.op, ast.UAdd):
            return f"(+{a})"
        if isinstance(node.op, ast.Not):
            return f"(!{a})"  # Python truthiness of a float: x != 0 (NaN is true), as C++ !x
        raise self.fail(node, f"unary {type(node.op).__name__} is not allowed")

    def _BoolOp(self, node: ast.BoolOp) -> str:
        for v in node.values:
            if not self.is_bool(v):
                raise self.fail(v, "`and`/`or` need boolean operands (comparisons): Python's "
                                   "value-returning `x or y` on numbers is not translated")
        op = " && " if isinstance(node.op, ast.And) else " || "
        return "(" + op.join(self.emit(v) for v in node.values) + ")"

    def _Compare(self, node: ast.Compare) -> str:
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            sym = _CMPOPS.get(type(op))
            if sym is None:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            parts.append(f"({self.emit(left)} {sym} {self.emit(right)})")
            left = right
        return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"

    def _IfExp(self, node: ast.IfExp) -> str:
        return f"(({self.emit(node.test)}) ? ({self.emit(node.body)}) : ({self.emit(node.orelse)}))"

    def _Call(self, node: ast.Call) -> str:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node.func, "only calls of vocabulary words and other terms by name")
        fname = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.fail(node, "*args/**kwargs in a call")
        if fname in self.callables:
            callee = self.callables[fname]
            if self.term is not None and callee is self.term:
                raise self.fail(node, "a term may not call itself")
            params = tuple(callee.args)
            defaults = _constant_defaults(callee)
        elif fname in VOCAB_CUDA:
            callee = None
            params = _VOCAB_PARAMS[fname]
            defaults = {}
        else:
            raise self.fail(node, f"call of {fname!r}, which is neither in the vocabulary nor a term")
        bound = _bind(params, node, defaults, self)
        args = ", ".join(self.emit(a) for a in bound)
        if callee is None:
            return f"{VOCAB_CUDA[fname]}({args})"
        if self.version == "e":
            return f"e_{callee.name}<T>({args})"
        return f"f_{callee.name}({args})"


def _constant_defaults(t: Term) -> dict[str, ast.expr]:
    a = t.tree.args
    out = {}
    for name, d in zip([x.arg for x in a.args][len(a.args) - len(a.defaults):], a.defaults):
        out[name] = d
    return out


def _bind(params: tuple[str, ...], node: ast.Call, defaults: dict[str, ast.expr], em) -> list[ast.expr]:
    if len(node.args) > len(params):
        raise em.fail(node, f"{len(node.args)} arguments for {len(params)} parameters")
    got: dict[str, ast.expr] = dict(zip(params, node.args))
    for k in node.keywords:
        if k.arg not in params or k.arg in got:
            raise em.fail(node, f"keyword argument {k.arg!r} does not fit {params}")
        got[k.arg] = k.value
    out = []
    for p in params:
        if p in got:
            out.append(got[p])
        elif p in defaults:
            d = defaults[p]
            if not (isinstance(d, ast.Constant) and isinstance(d.value, (int, float))):
                raise em.fail(node, f"default of {p!r} is not a numeric constant")
            out.append(d)
        else:
            raise em.fail(node, f"no value for parameter {p!r}")
    return out


def _callables(t: Term) -> dict[str, Term]:
    return {c.name: c for c in t.callees()}


def _check_signature(t: Term) -> None:
    a = t.tree.args
    if a.vararg or a.kwarg or a.kwonlyargs or getattr(a, "posonlyargs", []):
        raise TranslationError(f"term {t.name}: only plain positional parameters are allowed")
    for d in a.defaults:
        if not (isinstance(d, ast.Constant) and isinstance(d.value, (int, float))
                and not isinstance(d.value, bool)):
            raise TranslationError(f"term {t.name}: default values must be numeric constants")


def translate_term(t: Term, version: str) -> str:
    """C++ source of one term: ``version`` "e" (template over T) or "f" (double)."""
    if version not in ("e", "f"):
        raise ValueError(version)
    _check_signature(t)
    ctype = "T" if version == "e" else "double"
    names = {a: _cxx_name(a) for a in t.args}
    if len(set(names.values())) != len(names):
        raise TranslationError(f"term {t.name}: parameter names clash after C++ renaming")
    used = set(names.values())
    em = ExprEmitter(t, version, names, _callables(t))
    body: list[str] = []
    stmts = list(t.tree.body)
    if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant) \
            and isinstance(stmts[0].value.value, str):
        stmts = stmts[1:]  # docstring
    if not stmts or not isinstance(stmts[-1], ast.Return) or stmts[-1].value is None:
        raise TranslationError(f"term {t.name}: must end with `return <expression>`")

    def bind_local(target: ast.expr, value_cxx: str, is_bool: bool, stmt: ast.stmt) -> None:
        if not isinstance(target, ast.Name):
            raise em.fail(stmt, "only assignments to plain names")
        base = _cxx_name(target.id)
        cname, k = base, 1
        while cname in used:
            cname, k = f"{base}_{k}", k + 1
        used.add(cname)
        body.append(f"    const auto {cname} = {value_cxx};")
        names[target.id] = cname
        if is_bool:
            em.bool_names.add(target.id)
        else:
            em.bool_names.discard(target.id)

    for stmt in stmts[:-1]:
        if isinstance(stmt, ast.Assign):
            value = em.emit(stmt.value)
            isb = em.is_bool(stmt.value)
            for target in stmt.targets:
                bind_local(target, value, isb, stmt)
        elif isinstance(stmt, ast.AugAssign):
            if not isinstance(stmt.target, ast.Name):
                raise em.fail(stmt, "only assignments to plain names")
            expr = ast.BinOp(left=ast.Name(stmt.target.id, ast.Load()), op=stmt.op, right=stmt.value)
            ast.copy_location(expr, stmt)
            bind_local(stmt.target, em.emit(expr), False, stmt)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            bind_local(stmt.target, em.emit(stmt.value), em.is_bool(stmt.value), stmt)
        else:
            raise em.fail(stmt, "statement not allowed in a term (only assignments and a final return)")
    body.append(f"    return {em.emit(stmts[-1].value)};")
    params = ", ".join(f"{ctype} {names_a}" for names_a in (_cxx_name(a) for a in t.args))
    if version == "e":
        head = f"template <typename T>\n__device__ __forceinline__ T e_{t.name}({params})"
    else:
        head = f"__device__ __forceinline__ double f_{t.name}({params})"
    doc = f"// {t.name}({', '.join(t.args)})"
    return doc + "\n" + head + "\n{\n" + "\n".join(body) + "\n}\n"


def translate_terms(terms: list[Term], version: str) -> str:
    """Several terms, callees first (each once), as one C++ text."""
    order: list[Term] = []
    for t in terms:
        for sub in t.callees() + [t]:
            if sub not in order:
                order.append(sub)
    return "\n".join(translate_term(t, version) for t in order)


# ---- inlining (for the pass-fusion analysis of the kernel templates) -------------------------

class _Subst(ast.NodeTransformer):
    def __init__(self, env: dict[str, ast.expr]):
        self.env = env

    def visit_Name(self, node: ast.Name):
        return self.env.get(node.id, node)


def inline_term(t: Term, env: dict[str, ast.expr] | None = None, depth: int = 0) -> ast.expr | None:
    """The term as ONE expression over its arguments (or the expressions in ``env``), with
    locals substituted and calls of other terms expanded; vocabulary calls stay calls.
    None if the term is not a plain expression function (then no fusion is attempted)."""
    import copy

    if depth > 32:
        return None
    env = dict(env or {a: ast.Name(a, ast.Load()) for a in t.args})
    stmts = list(t.tree.body)
    if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant):
        stmts = stmts[1:]
    calls = _callables(t)
    for stmt in stmts:
        if isinstance(stmt, ast.Assign) and all(isinstance(x, ast.Name) for x in stmt.targets):
            value = _expand(_Subst(env).visit(copy.deepcopy(stmt.value)), calls, depth)
            if value is None:
                return None
            for x in stmt.targets:
                env[x.id] = value
        elif isinstance(stmt, ast.Return) and stmt.value is not None:
            return _expand(_Subst(env).visit(copy.deepcopy(stmt.value)), calls, depth)
        else:
            return None
    return None


def _expand(node: ast.expr | None, calls: dict[str, Term], depth: int) -> ast.expr | None:
    if node is None:
        return None
    failed = []

    class _Calls(ast.NodeTransformer):
        def visit_Call(self, c: ast.Call):
            self.generic_visit(c)
            if isinstance(c.func, ast.Name) and c.func.id in calls:
                callee = calls[c.func.id]
                if c.keywords or len(c.args) != len(callee.args):
                    failed.append(c)
                    return c
                sub = inline_term(callee, dict(zip(callee.args, c.args)), depth + 1)
                if sub is None:
                    failed.append(c)
                    return c
                return sub
            return c

    out = _Calls().visit(node)
    return None if failed else out


def free_names(node: ast.AST) -> set[str]:
    """Names read by an (inlined) expression, call targets excluded."""
    funcs = {id(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in funcs}


def same_expr(a: ast.AST, b: ast.AST) -> bool:
    return ast.dump(a, annotate_fields=False) == ast.dump(b, annotate_fields=False)


# ---- the vocabulary in CUDA (and, through HOST_SHIM, in host C++) ----------------------------

#: Makes VOCAB_HEADER, the translated terms and the row functions of the templates compile as
#: host C++ (g++/clang++), for the host-side checks of the translation.
HOST_SHIM = r"""
#include <math.h>
#include <stdint.h>
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
"""

#: Device functions of the vocabulary (float and double overloads), the meaning of each word
#: as in gpuloss.vocab. Valid CUDA for NVRTC and, after HOST_SHIM, valid host C++.
VOCAB_HEADER = r"""
// ---- gpuloss vocabulary (gpuloss.vocab) as device functions --------------------------------
#define GL_D __device__ __forceinline__
#if defined(__CUDACC__)
GL_D double gl_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
GL_D double gl_nan() { return __longlong_as_double(0x7ff8000000000000LL); }
GL_D float gl_inff() { return __int_as_float(0x7f800000); }
GL_D float gl_nanf() { return __int_as_float(0x7fc00000); }
#else
GL_D double gl_inf() { return __builtin_huge_val(); }
GL_D double gl_nan() { return __builtin_nan(""); }
GL_D float gl_inff() { return __builtin_huge_valf(); }
GL_D float gl_nanf() { return __builtin_nanf(""); }
#endif
template <typename T> struct GlNum;
template <> struct GlNum<float> {
    static GL_D float inf() { return gl_inff(); }
    static GL_D float nan() { return gl_nanf(); }
};
template <> struct GlNum<double> {
    static GL_D double inf() { return gl_inf(); }
    static GL_D double nan() { return gl_nan(); }
};

GL_D float gl_exp(float x) { return expf(x); }
GL_D double gl_exp(double x) { return exp(x); }
// log, log1p: -inf at 0 (at -1), NaN below: the C functions' own behaviour
GL_D float gl_log(float x) { return logf(x); }
GL_D double gl_log(double x) { return log(x); }
GL_D float gl_log1p(float x) { return log1pf(x); }
GL_D double gl_log1p(double x) { return log1p(x); }
GL_D float gl_sqrt(float x) { return sqrtf(x); }
GL_D double gl_sqrt(double x) { return sqrt(x); }
GL_D float gl_abs(float x) { return fabsf(x); }
GL_D double gl_abs(double x) { return fabs(x); }
// 1/sqrt(x), +inf at +-0 (vocab.rsqrt); not the approximate rsqrtf
template <typename T> GL_D T gl_rsqrt(T x) { return x == T(0) ? GlNum<T>::inf() : T(1) / gl_sqrt(x); }
// NaN-propagating (tf.maximum): NaN if either is NaN, b when equal (as vocab.maximum)
template <typename T> GL_D T gl_maximum(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> GL_D T gl_minimum(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T> GL_D T gl_clip(T x, T lo, T hi) { return gl_minimum(gl_maximum(x, lo), hi); }
template <typename T> GL_D T gl_sigmoid(T x) { return T(1) / (T(1) + gl_exp(-x)); }
template <typename T> GL_D T gl_softplus(T x) { return gl_maximum(x, T(0)) + gl_log1p(gl_exp(-gl_abs(x))); }
// Python/Numba `x ** y` on floats: C pow
GL_D float gl_pow(float x, float y) { return powf(x, y); }
GL_D double gl_pow(double x, double y) { return pow(x, y); }
// vocab.power: C pow semantics (x**0 = 1, 1**y = 1, real results for negative x and integer y)
template <typename T> GL_D T gl_power(T x, T y) { return gl_pow(x, y); }
"""

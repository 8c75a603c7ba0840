"""How a loss is defined once and run by every backend.

A loss is a **row program**: the inputs are viewed as rows (one row per value of the
per-sample loss ``L``, the reduced axis or axes laid out along the row), and each row is
reduced to one number in one or more *passes*. Each pass computes named statistics
(``Sum`` or ``Max`` of a scalar *term* over the row's elements); a final *finish* term turns
the statistics into the row's value. Examples::

    MSE:          pass 1: s = Sum((p - t)**2)                 finish: s / n
    CCE (logits): pass 1: m = Max(p)
                  pass 2: e = Sum(exp(p - m)), ys = Sum(t'), yx = Sum(t' * p)
                  finish: (m + log(e)) * ys - yx

Terms are plain Python functions over scalars written in :mod:`gpuloss.vocab`. Their
argument names say what they read, so a backend binds them by name:

=================  ===========================================================
``t``, ``p``       the row's element of y_true / y_pred (``a``, ``pos``, ``neg``
                   for the three inputs of a triplet loss), in the compute dtype
``n``              the row length (number of elements in the reduced axes)
``label``          the row's class id (sparse losses)
``p_label``        the row's y_pred element at ``label`` (sparse losses)
a statistic name   its value from an earlier pass (float64)
a parameter name   a runtime scalar from the plan (``delta``, ``label_smoothing``,
                   ``epsilon``...)
=================  ===========================================================

Element terms compute in the input's float dtype (float32 stays float32: literals are
typed by the backend); statistics accumulate, and finish terms compute, in float64.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .vocab import VOCABULARY

__all__ = ["Term", "term", "Sum", "Max", "RowProgram", "Plan", "elementwise", "ELEMENT_NAMES"]

#: Argument names that a term may read per element, per row, or as the row length.
ELEMENT_NAMES = ("t", "p", "a", "pos", "neg")
ROW_NAMES = ("n", "label", "p_label")


class Term:
    """A scalar function that every backend can compile (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.name = fn.__name__
        code = fn.__code__
        self.args = code.co_varnames[: code.co_argcount]
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    # source and syntax tree are read on first use (code generation), not at import:
    # parsing every term's source made `import gpuloss` ~60 ms slower
    @functools.cached_property
    def source(self) -> str:
        return textwrap.dedent(inspect.getsource(self.fn))

    @functools.cached_property
    def tree(self) -> ast.FunctionDef:
        tree = ast.parse(self.source).body[0]
        assert isinstance(tree, ast.FunctionDef)
        tree.decorator_list = []
        return tree

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<term {self.name}({', '.join(self.args)})>"

    def callees(self) -> list["Term"]:
        """Other terms this one calls, depth first, each once (for code generation)."""
        found: list[Term] = []
        glb = self.fn.__globals__
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                target = glb.get(node.func.id)
                if isinstance(target, Term) and target is not self:
                    for sub in target.callees() + [target]:
                        if sub not in found:
                            found.append(sub)
        return found


def term(fn: Callable[..., Any]) -> Term:
    """Mark a scalar function as a translatable term (see :mod:`gpuloss.program`)."""
    return Term(fn)


@dataclass(frozen=True)
class Stat:
    """A row statistic: ``kind`` ("sum" or "max") of ``term`` over the row's elements."""

    kind: str
    term: Term


def Sum(t: Term) -> Stat:  # noqa: N802 - reads like the math
    return Stat("sum", t)


def Max(t: Term) -> Stat:  # noqa: N802
    return Stat("max", t)


@dataclass(frozen=True)
class RowProgram:
    """Passes of named statistics over a row, then ``finish`` (see module docstring)."""

    name: str
    elements: tuple[str, ...]
    passes: tuple[tuple[tuple[str, Stat], ...], ...]
    finish: Term
    sparse: bool = False
    #: ``finish`` is ``s / n`` or ``s`` of a single Sum: rows can be fused into a flat sweep.
    flat_scale: str | None = None
    #: A condition on the data that a guessed parameter rests on, which the flat sweep checks
    #: while it sums (see :class:`Guessable`): "binary_labels", every element of ``t`` is 0
    #: or 1 (Hinge's batch-global label rule).
    check: str | None = None
    #: The parameter that keeps every ``log`` argument of the element terms a positive normal
    #: number, +inf or NaN where its value lies in [2^-24, 0.5], as Keras clips or floors
    #: before its logs: "epsilon" for the crossentropies of probabilities (q clipped to
    #: [ε, 1 - ε]), KL (both clipped to [ε, 1]) and MSLE (max(x, ε) + 1). There the CPU
    #: kernels take a log without the zero, subnormal and negative cases
    #: (kernels/numba/codegen.positive_logs), with the same results.
    log_floor: str | None = None
    #: ``(target, inner, replacement)``: where ``target`` (a term of the elements and
    #: parameters) is 0 or 1 at every element of a chunk and the logs' arguments are positive
    #: (``log_floor`` in range), the element term with ``inner`` replaced by ``replacement``
    #: gives the same bits more cheaply; the CPU's reduced flat sweeps take it there (see
    #: kernels/numba/codegen._Gen.twin_loop). Binary crossentropy of probabilities: with y' of
    #: 0 or 1 one of its two logs is multiplied by 0, and ``-log(y'·a + (1 - y')·b)`` is
    #: ``-(y'·log a + (1 - y')·log b)``.
    binary_twin: tuple[Term, Term, Term] | None = None
    #: ``(target, zero_ok)``: where ``target`` (a term of the elements and parameters) is 1 at
    #: one element of a row and 0 at every other, and ``zero_ok`` holds at every element (it
    #: says that the element term there is ±0 when the target is 0), the Sum of the last pass,
    #: that pass's only statistic, is the element term at the one element: 0 + ±0 + v + ±0 is
    #: v, or +0.0 where v is -0.0 (the kernels store v with a -0.0 made +0.0). The CPU's tile
    #: and row kernels take it there, one transcendental per row instead of one per element
    #: (see kernels/numba/codegen._Gen.onehot_pass and onehot_row). Categorical crossentropy of
    #: probabilities: with one-hot labels ``-Σ y'·log q`` is ``-log q`` at the label.
    onehot_twin: tuple[Term, Term] | None = None

    @property
    def terms(self) -> list[Term]:
        out: list[Term] = []
        for t in [s.term for p in self.passes for _, s in p] + [self.finish]:
            for sub in t.callees() + [t]:
                if sub not in out:
                    out.append(sub)
        return out

    @property
    def twin_terms(self) -> list[Term]:
        """The terms of the twins (binary_twin, onehot_twin), which only the CPU kernels use."""
        return list(self.binary_twin or ()) + list(self.onehot_twin or ())

    @property
    def stat_names(self) -> tuple[str, ...]:
        return tuple(name for p in self.passes for name, _ in p)

    def param_names(self) -> tuple[str, ...]:
        """Runtime scalars the program reads, sorted (the kernels' trailing arguments)."""
        return self._param_names

    @functools.cached_property
    def _param_names(self) -> tuple[str, ...]:
        # computed once: every call reads it, and building it costs ~4 µs of a ~20 µs call
        known = set(ELEMENT_NAMES) | set(ROW_NAMES) | set(self.stat_names)
        names: set[str] = set()
        for t in [s.term for p in self.passes for _, s in p] + [self.finish]:
            names.update(a for a in t.args if a not in known)
        return tuple(sorted(names))

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of everything that shapes the generated code (computed once)."""
        h = hashlib.sha256()
        h.update(repr((self.name, self.elements, self.sparse, self.flat_scale, self.check, self.log_floor)).encode())
        for p in self.passes:
            h.update(repr([(n, s.kind, s.term.name) for n, s in p]).encode())
        for t in self.terms + self.twin_terms:
            h.update(t.source.encode())
        return h.hexdigest()[:16]


def check_term(t: Term) -> None:
    """Reject anything outside the vocabulary, so every backend can translate every term."""
    allowed_calls = set(VOCABULARY) | {c.name for c in t.callees()}
    for node in ast.walk(t.tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in allowed_calls:
                raise TypeError(f"term {t.name}: call to {ast.unparse(node.func)} is not in the vocabulary")
        elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda, ast.For, ast.While,
                               ast.ListComp, ast.Dict, ast.List, ast.Tuple, ast.Starred)):
            raise TypeError(f"term {t.name}: {type(node).__name__} is not allowed in a term")


@term
def row_mean(s, n):
    return s / n


@term
def row_sum(s):
    return s


def elementwise(element_term: Term, reduce: str = "mean", name: str | None = None,
                check: str | None = None, log_floor: str | None = None,
                binary_twin: tuple[Term, Term, Term] | None = None) -> RowProgram:
    """The common shape: one Sum of ``element_term`` per row, then its mean or sum."""
    finish = row_mean if reduce == "mean" else row_sum
    elements = tuple(a for a in element_term.args if a in ELEMENT_NAMES)
    if "t" not in elements:  # the kernels always read both inputs of a pair
        elements = ("t",) + elements
    return RowProgram(
        name=name or element_term.name,
        elements=tuple(sorted(elements, key=ELEMENT_NAMES.index)),
        passes=((("s", Sum(element_term)),),),
        finish=finish,
        flat_scale=reduce,
        check=check,
        log_floor=log_floor,
        binary_twin=binary_twin,
    )


class Guessable:
    """A ``prepare`` (see :class:`Plan`) whose answer a look at part of the data can guess.

    Called, it is ``prepare``: it reads all the data it needs. ``guess(arrays)`` returns
    ``(params, otherwise)``: ``params`` from part of the data, and ``otherwise`` None where
    that part settles the answer, else the parameters that apply if the program's ``check``
    finds a violation anywhere. A backend whose kernels count the check while they sum runs
    once with the guess and again with ``otherwise`` only where the count is not zero: Hinge's
    {0, 1} → {-1, 1} rule then costs no pass over the labels of its own.
    """

    def __init__(self, prepare: Callable[..., Mapping[str, float]],
                 guess: Callable[..., tuple[Mapping[str, float], Mapping[str, float] | None]]):
        self.prepare, self.guess = prepare, guess
        functools.update_wrapper(self, prepare)

    def __call__(self, arrays):
        return self.prepare(arrays)


@dataclass
class Plan:
    """What one call computes: a program, its runtime scalars and how inputs are laid out.

    ``layout`` names the shape rules (see ``gpuloss._shapes``): "pointwise" (y and p broadcast,
    the class axis is ``axis``), "strict" (identical shapes), "sparse" (labels without the
    class axis), "axes" (rows reduce over the axes in ``axis``; None = all), "triplet".
    ``prepare`` (optional) looks at the aligned inputs and returns extra runtime scalars; Hinge
    uses it for its batch-global label conversion.
    """

    program: RowProgram
    params: Mapping[str, float] = field(default_factory=dict)
    layout: str = "pointwise"
    axis: Any = -1
    ignore_class: int | None = None
    prepare: Callable[..., Mapping[str, float]] | None = None

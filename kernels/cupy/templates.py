"""CUDA source of the kernels of one row program (see :mod:`gpuloss.program`).

The source has three layers:

1. :data:`HEADER` — the vocabulary (:data:`.translate.VOCAB_HEADER`), loads and conversions
   of float16/bfloat16/float32/float64 elements, label and weight readers for any dtype, the
   cooperative-group policies and the deterministic grid-wide finish. Written once.
2. :func:`row_code` — per program, dtype independent and valid host C++ too (so the tests
   compile it with g++ and run it against the Numba kernels): the translated terms, a struct
   ``GlArgs<In>`` of the row inputs, one accumulator struct per *sweep* of the row, and
   ``gl_row<In, T>(group, args, r, val)``, which computes row r's value with the lanes of a
   group cooperating (a group is a few lanes of a warp, or a whole block).
3. :func:`kernel_code` — per dtype, the ``extern "C" __global__`` kernels:

   ``rows``  every program. Rows are shared out to groups of G lanes of a warp (G = 1..32, a
             power of two) or, with G = 0, one block (``GL_BLOCK`` threads) per row; groups
             stride over the rows of the grid. A block row read by more than one sweep is
             staged in dynamic shared memory in its first sweep when it fits (``stage_elems``),
             and later sweeps read it from there.
   ``flat``  single-Sum elementwise programs on contiguous inputs: one flat grid-stride sweep
             over all R·C elements with vector loads when aligned (16 bytes of float/double,
             8 bytes of 16-bit types); or one value per element for rows of one element.

   One kernel serves reduction "none" and the reduced calls (a runtime switch, so the row code
   is compiled once per dtype, not twice: compiling is what the tests spend their time on).
   Without ``partials`` a kernel writes per-row values (as ``out_kind``) and counts bad labels
   in ``nbad``. With ``partials`` each block writes its partials (Σ w·ℓ, Σ w, count, bad
   labels) in float64, and the last block to finish (``__threadfence`` + an integer
   ``atomicAdd`` on a counter, no float atomics) adds them up in block order, writes the
   reduced value (``mode``: 0 sum, 1 sum_over_batch_size, 2 mean_with_sample_weight) to the
   0-d ``out`` and the totals to ``result[5]`` = (value, Σ w·ℓ, Σ w, count, bad), and resets
   the counter. One launch per call, the same bits on every run for the same grid.

Sweeps: the passes of a program are regrouped into sweeps over the row (:func:`plan_sweeps`).
A statistic that reads no earlier statistic moves to the first sweep. A Sum that reads only a
Max statistic ``m`` of an earlier pass joins ``m``'s sweep *online* when its term, inlined,
has one of two shapes, with ``X`` the Max's own term:

``exp(X - m)``      kept relative to the running max and rescaled by ``exp(m_old - m_new)``
                    when the max grows (the online softmax normaliser)
``A * (X - m)``     kept relative to the running max plus ``Σ A``, corrected by
                    ``(m_old - m_new)·Σ A`` when the max grows

So CCE/SCCE from logits (max, then Σ exp(x - m), Σ y', Σ y'·(x - m)) read each row ONCE, and
categorical focal from logits twice instead of three times. The terms are evaluated with the
running max in place of ``m``: the same translated function the final max would use, only
the scaling differs (float rounding of the element terms, as in the two-pass form). Rows whose
elements are all -inf keep the two-pass values (NaN), and -inf elements before the first finite
one contribute exactly what they would against the final max. CCE/CFCE from probabilities
(Σp, then terms of p/Σp) need a second sweep by their definition (clip(p/Σp) does not
decompose). Rows of up to 1024 elements belong to lanes of one warp, which re-read them a
moment later from L1/L2. Longer rows get a block each, staged in shared memory in the first
sweep when they fit the dynamic shared memory the launcher gives (48 KiB by default: 12k
float32; up to 227 KiB with the opt-in attribute on an H100). Still longer rows are re-read
from L2, or from memory: about a thousand block rows are in flight with every SM busy, so
rows beyond ~12k float32 can fall out of an H100's 50 MB L2 between the two sweeps.

Max statistics propagate NaN (as ``maximum`` and tf.reduce_max).

Sparse programs read the row's label of any integer, bool or float dtype (``label_kind``,
see :data:`KINDS`); floats truncate toward zero; a label outside [0, C) (or NaN, inf) never
reads y_pred: the row's value is NaN and it counts in the bad-label total (``nbad`` / the
4th partial), so the host can raise in a checked mode. ``ignore_class`` rows give 0 and count
in no total.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from ...program import ELEMENT_NAMES, RowProgram, Term
from . import translate as tr

__all__ = ["HEADER", "DTYPES", "KINDS", "GL_BLOCK", "plan_sweeps", "row_code", "kernel_code",
           "program_body", "program_source", "kernel_names", "kernel_params", "describe", "flat_ok",
           "Sweep"]

#: Threads per block of every kernel (``__launch_bounds__``); a multiple of 32.
GL_BLOCK = 256

#: input dtype → (CUDA storage type, compute type T, short name used in kernel names)
DTYPES = {
    "float16": ("__half", "float", "f16"),
    "bfloat16": ("__nv_bfloat16", "float", "bf16"),
    "float32": ("float", "float", "f32"),
    "float64": ("double", "double", "f64"),
}

#: dtype codes of labels (``label_kind``), weights (``w_kind``) and outputs (``out_kind``;
#: outputs: float16, float32, float64, bfloat16 only)
KINDS = {
    "int8": 0, "int16": 1, "int32": 2, "int64": 3,
    "uint8": 4, "uint16": 5, "uint32": 6, "uint64": 7,
    "bool": 8, "float16": 9, "float32": 10, "float64": 11, "bfloat16": 12,
}

HEADER = tr.VOCAB_HEADER + r"""
// ---- gpuloss kernel support ---------------------------------------------------------------
#define GL_BLOCK """ + str(GL_BLOCK) + r"""
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

template <typename T, typename In> GL_D T gl_cvt(In x) { return T(x); }
#if defined(__CUDACC__)
template <> GL_D float gl_cvt<float, __half>(__half x) { return __half2float(x); }
template <> GL_D float gl_cvt<float, __nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename In> GL_D In gl_ldg(const In* p) { return __ldg(p); }
#else
template <typename In> GL_D In gl_ldg(const In* p) { return *p; }
#endif

// NaN-propagating max of statistics (double)
GL_D double gl_max_stat(double a, double b) { return (a > b || a != a) ? a : b; }
// online statistics: S kept relative to a running max mo, brought to the new max M
GL_D double gl_resc_exp(double S, double mo, double M) {
    return (M > mo && mo != -gl_inf()) ? S * exp(mo - M) : S;
}
GL_D double gl_resc_aff(double S, double SA, double mo, double M) {
    return (M > mo && mo != -gl_inf()) ? S + (mo - M) * SA : S;
}

// a float label (NaN, inf, huge: not ok) → class id, truncated toward zero (as the CPU kernels)
GL_D long long gl_label_f(double x, bool& ok) {
    ok = fabs(x) < 4.0e18;
    return ok ? (long long)x : -1LL;
}
// label i of an array of dtype code `kind` (KINDS in templates.py)
GL_D long long gl_label(const void* p, int kind, long long i, bool& ok) {
    ok = true;
    switch (kind) {
        case 0: return ((const signed char*)p)[i];
        case 1: return ((const short*)p)[i];
        case 2: return ((const int*)p)[i];
        case 3: return ((const long long*)p)[i];
        case 4: return ((const unsigned char*)p)[i];
        case 5: return ((const unsigned short*)p)[i];
        case 6: return ((const unsigned int*)p)[i];
        case 7: return (long long)((const unsigned long long*)p)[i];
        case 8: return ((const unsigned char*)p)[i] ? 1 : 0;
#if defined(__CUDACC__)
        case 9: return gl_label_f(__half2float(((const __half*)p)[i]), ok);
        case 12: return gl_label_f(__bfloat162float(((const __nv_bfloat16*)p)[i]), ok);
#endif
        case 10: return gl_label_f(((const float*)p)[i], ok);
        case 11: return gl_label_f(((const double*)p)[i], ok);
        default: ok = false; return -1;
    }
}
// value i of an array of dtype code `kind`, as double (weights); no array: 1
GL_D double gl_value(const void* p, int kind, long long i) {
    if (p == nullptr) return 1.0;
    switch (kind) {
        case 0: return ((const signed char*)p)[i];
        case 1: return ((const short*)p)[i];
        case 2: return ((const int*)p)[i];
        case 3: return (double)((const long long*)p)[i];
        case 4: return ((const unsigned char*)p)[i];
        case 5: return ((const unsigned short*)p)[i];
        case 6: return ((const unsigned int*)p)[i];
        case 7: return (double)((const unsigned long long*)p)[i];
        case 8: return ((const unsigned char*)p)[i] ? 1.0 : 0.0;
#if defined(__CUDACC__)
        case 9: return __half2float(((const __half*)p)[i]);
        case 12: return __bfloat162float(((const __nv_bfloat16*)p)[i]);
#endif
        case 10: return ((const float*)p)[i];
        case 11: return ((const double*)p)[i];
        default: return gl_nan();
    }
}
// store value v at i of an output of dtype code `kind` (16-bit outputs round through float,
// as the CPU path: compute dtype float32, then cast)
GL_D void gl_store(void* out, int kind, long long i, double v) {
    switch (kind) {
        case 11: ((double*)out)[i] = v; break;
        case 10: ((float*)out)[i] = (float)v; break;
#if defined(__CUDACC__)
        case 9: ((__half*)out)[i] = __float2half((float)v); break;
        case 12: ((__nv_bfloat16*)out)[i] = __float2bfloat16((float)v); break;
#endif
        default: break;
    }
}
GL_D void gl_store(void* out, int kind, long long i, float v) {
    switch (kind) {
        case 11: ((double*)out)[i] = v; break;
        case 10: ((float*)out)[i] = v; break;
#if defined(__CUDACC__)
        case 9: ((__half*)out)[i] = __float2half(v); break;
        case 12: ((__nv_bfloat16*)out)[i] = __float2bfloat16(v); break;
#endif
        default: break;
    }
}

#if defined(__CUDACC__)
// a vector of elements: 16 bytes of float/double (4 or 2), 8 bytes of half/bfloat16 (4), so a
// flat kernel inlines its term at most 4 times per vector (16-byte vectors of 16-bit types
// doubled the kernels' compile time)
template <typename In> struct GlVec {
    static const int B = sizeof(In) == 2 ? 8 : 16;
    static const int W = B / sizeof(In);
    In v[W];
};
template <typename In> GL_D GlVec<In> gl_ldv(const In* p) {
    GlVec<In> r;
    if (GlVec<In>::B == 16) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
        memcpy(&r, &u, 16);
    } else {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
        memcpy(&r, &u, 8);
    }
    return r;
}

// The lanes that cooperate on a row: G consecutive lanes of a warp (G a power of two <= 32),
// or, with G == 0, the whole block (sm: 32 * NF doubles of shared memory). reduce() leaves the
// merge of all lanes' accumulators in every lane; merge is commutative, so all lanes agree.
struct GlGroup {
    int lane_, size_;
    unsigned mask_;
    double* sm_;
    GL_D GlGroup(int G, double* sm) : sm_(sm) {
        if (G == 0) {
            size_ = blockDim.x;
            lane_ = threadIdx.x;
            mask_ = 0xffffffffu;
        } else {
            size_ = G;
            lane_ = threadIdx.x & (G - 1);
            const int first = (threadIdx.x & 31) & ~(G - 1);
            mask_ = (G == 32) ? 0xffffffffu : (((1u << G) - 1u) << first);
        }
    }
    GL_D int lane() const { return lane_; }
    GL_D int size() const { return size_; }
    GL_D bool block() const { return size_ > 32; }
    template <class A> GL_D void reduce(A& a) const {
        const int width = block() ? 32 : size_;
#pragma unroll 1
        for (int off = width >> 1; off > 0; off >>= 1) {
            A o;
#pragma unroll
            for (int k = 0; k < A::NF; ++k) o.f[k] = __shfl_xor_sync(mask_, a.f[k], off, width);
            A::merge(a, o);
        }
        if (!block()) return;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < A::NF; ++k) sm_[warp * A::NF + k] = a.f[k];
        }
        __syncthreads();
        if (warp == 0) {
            A b;
            if (lane < nw) {
#pragma unroll
                for (int k = 0; k < A::NF; ++k) b.f[k] = sm_[lane * A::NF + k];
            } else {
                A::init(b);
            }
#pragma unroll 1
            for (int off = 16; off > 0; off >>= 1) {
                A o;
#pragma unroll
                for (int k = 0; k < A::NF; ++k) o.f[k] = __shfl_xor_sync(0xffffffffu, b.f[k], off);
                A::merge(b, o);
            }
            if (lane == 0) {
#pragma unroll
                for (int k = 0; k < A::NF; ++k) sm_[k] = b.f[k];
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < A::NF; ++k) a.f[k] = sm_[k];
        __syncthreads();
    }
};

// fixed-order block sum of 4 doubles; the result is in thread 0 (sm: 128 doubles)
GL_D void gl_warp_sum4(double v[4]) {
#pragma unroll 1
    for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
}
GL_D void gl_block_sum4(double v[4], double* sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    gl_warp_sum4(v);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < 4; ++k) sm[warp * 4 + k] = v[k];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = lane < nw ? sm[lane * 4 + k] : 0.0;
        gl_warp_sum4(v);
    }
    __syncthreads();
}

// Block partial (acc: Σ w·ℓ, Σ w, count, bad) → partials[blockIdx.x]; the last block to arrive
// adds all partials in block order and writes the reduced value. Deterministic for a given grid.
// div_l, div_wc: divide Σ w·ℓ and (Σ w, count) by these at the end (flat sweeps: C).
GL_D void gl_finish_reduce(double acc[4], double* partials, unsigned int* counter, double* result,
                           void* out, int out_kind, int mode, double div_l, double div_wc) {
    __shared__ double sm[128];
    __shared__ bool last;
    gl_block_sum4(acc, sm);
    if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < 4; ++k) partials[4 * (long long)blockIdx.x + k] = acc[k];
        __threadfence();
        const unsigned int prev = atomicAdd(counter, 1u);
        last = (prev == gridDim.x - 1);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    double tot[4] = {0.0, 0.0, 0.0, 0.0};
    for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) {
#pragma unroll
        for (int k = 0; k < 4; ++k) tot[k] += __ldcg(partials + 4 * (long long)b + k);
    }
    gl_block_sum4(tot, sm);
    if (threadIdx.x == 0) {
        const double swl = tot[0] / div_l, sw = tot[1] / div_wc, cnt = tot[2] / div_wc;
        double value;
        if (mode == 1) value = cnt != 0.0 ? swl / cnt : 0.0;
        else if (mode == 2) value = sw != 0.0 ? swl / sw : 0.0;
        else value = swl;
        if (result != nullptr) {
            result[0] = value; result[1] = swl; result[2] = sw; result[3] = cnt; result[4] = tot[3];
        }
        if (out != nullptr) gl_store(out, out_kind, 0, value);
        __threadfence();
        *counter = 0u;  // ready for the next launch on this stream
    }
}
#endif  // __CUDACC__
"""


# ---- sweeps ----------------------------------------------------------------------------------

@dataclass
class Slot:
    """One statistic in a sweep's accumulator."""

    name: str
    kind: str  # "sum", "max", "exp" (online exp(X - m)), "aff" (online A·(X - m))
    term: Term
    index: int
    base: str | None = None  # the Max statistic an online slot follows
    aux: int | None = None  # field of Σ A (aff)
    factor: ast.expr | None = None  # A (aff), over the names terms bind


@dataclass
class Sweep:
    slots: list[Slot] = field(default_factory=list)
    nf: int = 0

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)


def _match_online(program: RowProgram, st_term: Term, m: str, max_expr: ast.expr):
    """("exp", None) or ("aff", A) if the term's inlined expression has an online shape."""
    e = tr.inline_term(st_term)
    if e is None:
        return None

    def is_shift(node) -> bool:
        return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)
                and isinstance(node.right, ast.Name) and node.right.id == m
                and m not in tr.free_names(node.left) and tr.same_expr(node.left, max_expr))

    if (isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "exp"
            and len(e.args) == 1 and not e.keywords and is_shift(e.args[0])):
        return "exp", None
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult):
        for shift, a in ((e.right, e.left), (e.left, e.right)):
            if is_shift(shift) and m not in tr.free_names(a) \
                    and tr.free_names(a) <= _bindable(program):
                return "aff", a
    return None


def _bindable(program: RowProgram) -> set[str]:
    return set(ELEMENT_NAMES) | {"n", "label", "p_label"} | set(program.param_names())


def plan_sweeps(program: RowProgram, fuse: bool = True) -> list[Sweep]:
    """The program's statistics regrouped into sweeps over the row (module docstring)."""
    sweep_of: dict[str, int] = {}
    max_expr: dict[str, ast.expr] = {}
    placed: list[tuple[int, Slot]] = []
    known: set[str] = set()
    for stats in program.passes:
        for name, st in stats:
            deps = [a for a in st.term.args if a in known]
            slot = Slot(name, st.kind, st.term, -1)
            if not deps:
                idx = 0
            else:
                idx = max(sweep_of[d] + 1 for d in deps)
                if fuse and st.kind == "sum" and len(deps) == 1 and deps[0] in max_expr:
                    found = _match_online(program, st.term, deps[0], max_expr[deps[0]])
                    if found is not None:
                        slot.kind, slot.factor = found
                        slot.base = deps[0]
                        idx = sweep_of[deps[0]]
            if st.kind == "max":
                e = tr.inline_term(st.term)
                if e is not None:
                    max_expr[name] = e
            sweep_of[name] = idx
            placed.append((idx, slot))
        known.update(n for n, _ in stats)
    n_sweeps = 1 + max((i for i, _ in placed), default=-1)
    sweeps = [Sweep() for _ in range(n_sweeps)]
    for idx, slot in placed:
        sweeps[idx].slots.append(slot)
    for sw in sweeps:
        k = 0
        for s in sw.slots:
            s.index = k
            k += 1
        for s in sw.slots:
            if s.kind == "aff":
                s.aux = k
                k += 1
        sw.nf = k
    return sweeps


def describe(program: RowProgram) -> str:
    """One line per sweep, e.g. ``sweep 0: m=max, e=exp-online(m), ys=sum, yx=affine-online(m)``."""
    out = []
    for i, sw in enumerate(plan_sweeps(program)):
        parts = []
        for s in sw.slots:
            kind = {"exp": f"exp-online({s.base})", "aff": f"affine-online({s.base})"}.get(s.kind, s.kind)
            parts.append(f"{s.name}={kind}")
        out.append(f"sweep {i}: " + ", ".join(parts))
    return "\n".join(out) if out else "no sweep (finish only)"


def flat_ok(program: RowProgram, column_params: tuple[str, ...] = ()) -> bool:
    """Has the flat kernels: a single Sum, finish s or s/n, no `n`, not sparse, no column params."""
    if not program.flat_scale or program.sparse or column_params or len(program.passes) != 1:
        return False
    if len(program.passes[0]) != 1:
        return False
    (_, st), = program.passes[0]
    return st.kind == "sum" and "n" not in st.term.args


# ---- per-program code ----------------------------------------------------------------------

def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _prog_id(program: RowProgram, column_params: tuple[str, ...]) -> str:
    base = _ident(program.name)
    return base + ("__col_" + "_".join(column_params) if column_params else "")


class _Gen:
    def __init__(self, program: RowProgram, column_params: tuple[str, ...] = (), fuse: bool = True):
        self.p = program
        self.colp = tuple(column_params)
        self.params = program.param_names()
        for c in self.colp:
            if c not in self.params:
                raise TypeError(f"{program.name}: column parameter {c!r} is not a parameter of the program")
        self.elements = ("p",) if program.sparse else tuple(program.elements)
        self.sweeps = plan_sweeps(program, fuse)
        self.id = _prog_id(program, self.colp)
        self.stat_names = set(program.stat_names)

    # -- terms
    def elem_terms(self) -> list[Term]:
        out: list[Term] = []
        for stats in self.p.passes:
            for _, st in stats:
                for t in st.term.callees() + [st.term]:
                    if t not in out:
                        out.append(t)
        return out

    def terms_code(self) -> str:
        parts = []
        et = self.elem_terms()
        if et:
            parts.append(tr.translate_terms(et, "e"))
        parts.append(tr.translate_terms([self.p.finish], "f"))
        return "\n".join(parts)

    # -- argument expressions inside gl_row
    def arg(self, a: str, version: str, online: dict[str, str] | None = None) -> str:
        if a in ELEMENT_NAMES:
            if version != "e":
                raise TypeError(f"{self.p.name}: element {a!r} read outside an element term")
            if a not in self.elements:
                raise TypeError(f"{self.p.name}: element {a!r} is not an input of the program")
            return f"x_{a}"
        if a == "n":
            return "n_T" if version == "e" else "n_F"
        if a == "label":
            if not self.p.sparse:
                raise TypeError(f"{self.p.name}: `label` read by a program without labels")
            return "T(lab)" if version == "e" else "(double)lab"
        if a == "p_label":
            if not self.p.sparse:
                raise TypeError(f"{self.p.name}: `p_label` read by a program without labels")
            return "p_label_T" if version == "e" else "p_label_F"
        if a in self.stat_names:
            if online and a in online:
                return online[a]
            return f"st_{a}_T" if version == "e" else f"st_{a}"
        if a in self.colp:
            if version != "e":
                raise TypeError(f"{self.p.name}: per-column parameter {a!r} used outside an element term")
            return f"T(A.P_{a}[j])"
        return f"P_{a}_T" if version == "e" else f"A.P_{a}"

    def call(self, t: Term, version: str, online: dict[str, str] | None = None) -> str:
        args = ", ".join(self.arg(a, version, online) for a in t.args)
        return f"e_{t.name}<T>({args})" if version == "e" else f"f_{t.name}({args})"

    def factor_code(self, node: ast.expr) -> str:
        names = {n: self.arg(n, "e") for n in tr.free_names(node)}
        callables = {}
        em = tr.ExprEmitter(None, "e", names, callables)
        return em.emit(node)

    # -- structs
    def args_struct(self) -> str:
        L = ["template <typename In> struct GlArgs {"]
        for e in self.elements:
            L.append(f"    const In* {e}; long long {e}_rs; long long {e}_cs; In* stg_{e};")
        if self.p.sparse:
            L.append("    const void* lab; int lab_kind; long long lab_step; int has_ignore; long long ignore;")
        L.append("    long long R; long long C;")
        for n in self.params:
            L.append(f"    const double* P_{n};" if n in self.colp else f"    double P_{n};")
        L.append("};")
        return "\n".join(L)

    def acc_struct(self, k: int, sw: Sweep) -> str:
        name = f"GlAcc{k}"
        init = []
        for s in sw.slots:
            init.append(f"        a.f[{s.index}] = {'-gl_inf()' if s.kind == 'max' else '0.0'};  // {s.name}")
            if s.aux is not None:
                init.append(f"        a.f[{s.aux}] = 0.0;  // sum of the factor of {s.name}")
        merge = []
        bases = sorted({s.base for s in sw.slots if s.base})
        for b in bases:
            merge.append(f"        const double M_{b} = gl_max_stat(a.f[{sw.slot(b).index}], b.f[{sw.slot(b).index}]);")
        for s in sw.slots:
            i = s.index
            if s.kind == "exp":
                mi = sw.slot(s.base).index
                merge.append(f"        a.f[{i}] = gl_resc_exp(a.f[{i}], a.f[{mi}], M_{s.base}) + "
                             f"gl_resc_exp(b.f[{i}], b.f[{mi}], M_{s.base});")
            elif s.kind == "aff":
                mi = sw.slot(s.base).index
                merge.append(f"        a.f[{i}] = gl_resc_aff(a.f[{i}], a.f[{s.aux}], a.f[{mi}], M_{s.base}) + "
                             f"gl_resc_aff(b.f[{i}], b.f[{s.aux}], b.f[{mi}], M_{s.base});")
                merge.append(f"        a.f[{s.aux}] = a.f[{s.aux}] + b.f[{s.aux}];")
        for s in sw.slots:
            i = s.index
            if s.kind == "sum":
                merge.append(f"        a.f[{i}] = a.f[{i}] + b.f[{i}];")
            elif s.kind == "max":
                if s.name in bases:
                    merge.append(f"        a.f[{i}] = M_{s.name};")
                else:
                    merge.append(f"        a.f[{i}] = gl_max_stat(a.f[{i}], b.f[{i}]);")
        fix = []
        for b in bases:
            online = [s for s in sw.slots if s.base == b]
            sets = " ".join(f"a.f[{s.index}] = gl_nan();" for s in online)
            fix.append(f"        if (len > 0 && a.f[{sw.slot(b).index}] == -gl_inf()) {{ {sets} }}")
        return "\n".join([
            f"struct {name} {{",
            f"    static const int NF = {sw.nf};",
            f"    double f[{sw.nf}];",
            f"    static GL_D void init({name}& a) {{",
            *init,
            "    }",
            f"    static GL_D void merge({name}& a, const {name}& b) {{",
            *merge,
            "    }",
            "    // a row whose max is -inf: the two-pass values (exp(-inf - -inf) = NaN)",
            f"    static GL_D void fix({name}& a, long long len) {{",
            *(fix or ["        (void)a; (void)len;"]),
            "    }",
            "};",
        ])

    def sweep_elements(self, sw: Sweep) -> list[str]:
        names: set[str] = set()
        for s in sw.slots:
            names.update(a for a in s.term.args if a in ELEMENT_NAMES)
            if s.factor is not None:
                names.update(a for a in tr.free_names(s.factor) if a in ELEMENT_NAMES)
        return [e for e in self.elements if e in names]

    def row_function(self) -> str:
        p = self.p
        L = ["template <typename In, typename T, class G>",
             "GL_D int gl_row(const G& g, const GlArgs<In>& A, const long long r, double& val)",
             "{",
             "    // status: 0 valid, 1 ignored (ignore_class), 2 bad label (value NaN)",
             "    const long long C = A.C;",
             "    long long len = C;",
             "    int status = 0;",
             "    const T n_T = T(C);",
             "    const double n_F = (double)C;",
             "    (void)n_T; (void)n_F;"]
        for e in self.elements:
            L.append(f"    const In* row_{e} = A.{e} + r * A.{e}_rs;")
        if p.sparse:
            L += [
                "    bool ok;",
                "    const long long lab = gl_label(A.lab, A.lab_kind, r * A.lab_step, ok);",
                "    T p_label_T = T(0);",
                "    double p_label_F = 0.0;",
                "    if (A.has_ignore && ok && lab == A.ignore) { status = 1; len = 0; }",
                "    else if (!ok || lab < 0 || lab >= C) { status = 2; len = 0; }",
                "    else { p_label_T = gl_cvt<T>(gl_ldg(row_p + lab * A.p_cs)); p_label_F = (double)p_label_T; }",
                "    (void)p_label_T; (void)p_label_F;",
            ]
        for n in self.params:
            if n not in self.colp:
                L.append(f"    const T P_{n}_T = T(A.P_{n}); (void)P_{n}_T;")
        # element arrays read by more than one sweep are staged (if the kernel gave room)
        reads = [self.sweep_elements(sw) for sw in self.sweeps]
        first_read = {}
        for k, es in enumerate(reads):
            for e in es:
                first_read.setdefault(e, k)
        staged = {e for e in self.elements if sum(e in es for es in reads) > 1}
        for k, sw in enumerate(self.sweeps):
            L.append(f"    // sweep {k}: " + ", ".join(f"{s.name} ({s.kind})" for s in sw.slots))
            L.append(f"    GlAcc{k} a{k};")
            L.append(f"    GlAcc{k}::init(a{k});")
            L.append("    for (long long j = g.lane(); j < len; j += g.size()) {")
            for e in reads[k]:
                src = f"gl_ldg(row_{e} + j * A.{e}_cs)"
                if e in staged and first_read[e] == k:
                    L.append(f"        const In raw_{e} = {src};")
                    L.append(f"        if (A.stg_{e} != nullptr) A.stg_{e}[j] = raw_{e};")
                    L.append(f"        const T x_{e} = gl_cvt<T>(raw_{e});")
                elif e in staged:
                    L.append(f"        const T x_{e} = gl_cvt<T>(A.stg_{e} != nullptr ? A.stg_{e}[j] : {src});")
                else:
                    L.append(f"        const T x_{e} = gl_cvt<T>({src});")
            acc = f"a{k}"
            online: dict[str, str] = {}
            bases = {s.base for s in sw.slots if s.base}
            for s in sw.slots:
                if s.kind != "max":
                    continue
                v = self.call(s.term, "e")
                i = s.index
                if s.name in bases:
                    deps = [d for d in sw.slots if d.base == s.name]
                    L.append("        {")
                    L.append(f"            const double mo = {acc}.f[{i}];")
                    L.append(f"            const double mn = gl_max_stat(mo, (double){v});")
                    L.append("            if (mn > mo && mo != -gl_inf()) {")
                    for d in deps:
                        if d.kind == "exp":
                            L.append(f"                {acc}.f[{d.index}] *= exp(mo - mn);")
                        else:
                            L.append(f"                {acc}.f[{d.index}] += (mo - mn) * {acc}.f[{d.aux}];")
                    L.append("            }")
                    L.append(f"            {acc}.f[{i}] = mn;")
                    L.append("        }")
                    L.append(f"        const T mr_{s.name} = {acc}.f[{i}] == -gl_inf() ? T(0) : T({acc}.f[{i}]);")
                    online[s.name] = f"mr_{s.name}"
                else:
                    L.append(f"        {acc}.f[{i}] = gl_max_stat({acc}.f[{i}], (double){v});")
            for s in sw.slots:
                if s.kind == "max":
                    continue
                v = self.call(s.term, "e", online if s.base else None)
                L.append(f"        {acc}.f[{s.index}] += (double){v};")
                if s.kind == "aff":
                    L.append(f"        {acc}.f[{s.aux}] += (double)({self.factor_code(s.factor)});")
            if not reads[k]:
                L.append("        (void)j;")
            L.append("    }")
            L.append(f"    g.reduce(a{k});")
            L.append(f"    GlAcc{k}::fix(a{k}, len);")
            for s in sw.slots:
                L.append(f"    const double st_{s.name} = a{k}.f[{s.index}];")
                L.append(f"    const T st_{s.name}_T = T(st_{s.name}); (void)st_{s.name}_T;")
        fin = self.call(p.finish, "f")
        L.append(f"    val = status == 0 ? {fin} : (status == 1 ? 0.0 : gl_nan());")
        L.append("    return status;")
        L.append("}")
        return "\n".join(L)

    def row_code(self) -> str:
        parts = [f"// ---- program {self.p.name}" + (f" (per-column {', '.join(self.colp)})" if self.colp else ""),
                 "// " + describe(self.p).replace("\n", "\n// "),
                 self.terms_code(), self.args_struct()]
        parts += [self.acc_struct(k, sw) for k, sw in enumerate(self.sweeps)]
        parts.append(self.row_function())
        return "\n\n".join(parts)

    # -- kernels
    def common_params(self, In: str) -> list[tuple[str, str]]:
        out = []
        for e in self.elements:
            out += [(f"const {In}* __restrict__", e), ("long long", f"{e}_rs"), ("long long", f"{e}_cs")]
        if self.p.sparse:
            out += [("const void*", "labels"), ("int", "label_kind"), ("long long", "label_step"),
                    ("int", "has_ignore"), ("long long", "ignore")]
        out += [("long long", "R"), ("long long", "C")]
        for n in self.params:
            out.append(("const double*", f"P_{n}") if n in self.colp else ("double", f"P_{n}"))
        return out

    _OUT = [("void*", "out"), ("int", "out_kind")]
    _REDUCE = [("const void*", "w"), ("int", "w_kind"), ("long long", "w_step"), ("double*", "partials"),
               ("unsigned int*", "counter"), ("double*", "result"), ("int", "mode")]

    def params_of(self, kind: str, In: str) -> list[tuple[str, str]]:
        if kind == "rows":
            return (self.common_params(In) + [("int", "G"), ("long long", "stage_elems")] + self._OUT
                    + [("unsigned long long*", "nbad")] + self._REDUCE)
        if kind == "flat":
            return ([(f"const {In}* __restrict__", e) for e in self.elements]
                    + [("long long", "N"), ("long long", "C")]
                    + [("double", f"P_{n}") for n in self.params] + self._OUT + self._REDUCE)
        raise ValueError(kind)

    def kinds(self) -> list[str]:
        return ["rows", "flat"] if flat_ok(self.p, self.colp) else ["rows"]

    def name(self, kind: str, dtype: str) -> str:
        return f"gl_{self.id}_{DTYPES[dtype][2]}_{kind}"

    def fill_args(self) -> list[str]:
        L = ["    GlArgs<In> A;"]
        for e in self.elements:
            L.append(f"    A.{e} = {e}; A.{e}_rs = {e}_rs; A.{e}_cs = {e}_cs; A.stg_{e} = nullptr;")
        if self.p.sparse:
            L.append("    A.lab = labels; A.lab_kind = label_kind; A.lab_step = label_step; "
                     "A.has_ignore = has_ignore; A.ignore = ignore;")
        L.append("    A.R = R; A.C = C;")
        for n in self.params:
            L.append(f"    A.P_{n} = P_{n};")
        return L

    def staged(self) -> list[str]:
        """Element arrays read by more than one sweep (staged in shared memory by block rows)."""
        reads = [self.sweep_elements(sw) for sw in self.sweeps]
        return [e for e in self.elements if sum(e in es for es in reads) > 1]

    def kernel(self, kind: str, dtype: str) -> str:
        In, T, _ = DTYPES[dtype]
        sig = ",\n    ".join(f"{t} {n}" for t, n in self.params_of(kind, In))
        head = (f'extern "C" __global__ void __launch_bounds__(GL_BLOCK)\n'
                f"{self.name(kind, dtype)}(\n    {sig})\n{{\n"
                f"    typedef {In} In;\n    typedef {T} T;\n")
        return head + "\n".join(self.rows_body() if kind == "rows" else self.flat_body()) + "\n}\n"

    def rows_body(self) -> list[str]:
        nf = max([sw.nf for sw in self.sweeps] + [1])
        L = self.fill_args()
        L += [f"    __shared__ double gl_red[32 * {nf}];",
              "    extern __shared__ __align__(16) unsigned char gl_dyn[];",
              "    const GlGroup g(G, gl_red);",
              "    // G lanes of a warp per row, or (G == 0) one block per row; grid-stride over rows",
              "    const long long ngroups = G == 0 ? (long long)gridDim.x : ((long long)gridDim.x * blockDim.x) / G;",
              "    const long long first = G == 0 ? (long long)blockIdx.x"
              " : ((long long)blockIdx.x * blockDim.x + threadIdx.x) / G;",
              "    const bool leader = g.lane() == 0;"]
        staged = self.staged()
        if staged:
            L.append("    if (G == 0 && stage_elems >= C) {  // the row fits the dynamic shared memory")
            for i, e in enumerate(staged):
                L.append(f"        A.stg_{e} = reinterpret_cast<In*>(gl_dyn) + {i} * stage_elems;")
            L.append("    }")
        else:
            L.append("    (void)stage_elems; (void)gl_dyn;")
        L += ["    const bool reducing = partials != nullptr;",
              "    double acc[4] = {0.0, 0.0, 0.0, 0.0};  // Σ w·ℓ, Σ w, count, bad labels",
              "    unsigned long long bad = 0;",
              "    for (long long r = first; r < R; r += ngroups) {",
              "        double val;",
              "        const int st = gl_row<In, T>(g, A, r, val);",
              "        if (!leader) continue;",
              "        if (!reducing) {",
              "            gl_store(out, out_kind, r, val);",
              "            bad += (st == 2);",
              "        } else if (st != 1) {",
              "            const double wr = gl_value(w, w_kind, r * w_step);",
              "            acc[0] += wr * val; acc[1] += wr; acc[2] += 1.0; acc[3] += (st == 2);",
              "        }",
              "    }",
              "    if (reducing) gl_finish_reduce(acc, partials, counter, result, out, out_kind, mode, 1.0, 1.0);",
              "    else if (leader && bad != 0 && nbad != nullptr) atomicAdd(nbad, bad);"]
        return L

    def flat_body(self) -> list[str]:
        (_, st), = self.p.passes[0]
        args = []
        for a in st.term.args:
            if a in ELEMENT_NAMES:
                args.append(f"x_{a}")
            elif a in ("n", "label", "p_label") or a in self.stat_names:
                raise TypeError(f"{self.p.name}: {a!r} in a flat kernel")
            else:
                args.append(f"P_{a}_T")
        term = f"e_{st.term.name}<T>({', '.join(args)})"
        L = [f"    const T P_{n}_T = T(P_{n}); (void)P_{n}_T;" for n in self.params]

        def loads(idx: str, ind: str) -> list[str]:
            return [f"{ind}const T x_{e} = gl_cvt<T>(gl_ldg({e} + {idx}));" for e in self.elements]

        align = " | ".join(f"reinterpret_cast<unsigned long long>({e})" for e in self.elements)
        div_l = "(double)C" if self.p.flat_scale == "mean" else "1.0"
        L += ["    const long long nth = (long long)gridDim.x * blockDim.x;",
              "    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
              "    const bool storing = partials == nullptr;  // per-element values (rows of one element)",
              "    const bool per_elem = w != nullptr && w_step != 0;  // one weight per element (C == 1)",
              "    double s = 0.0, sw = 0.0;",
              "    const int V = GlVec<In>::W;",
              "    long long done = 0;",
              f"    if (!storing && !per_elem && (({align}) % GlVec<In>::B) == 0) {{",
              "        // vector loads (GlVec)",
              "        const long long NV = N / V;",
              "        for (long long i = tid; i < NV; i += nth) {",
              *[f"            const GlVec<In> v_{e} = gl_ldv({e} + i * V);" for e in self.elements],
              "#pragma unroll",
              "            for (int k = 0; k < V; ++k) {",
              *[f"                const T x_{e} = gl_cvt<T>(v_{e}.v[k]);" for e in self.elements],
              f"                s += (double){term};",
              "            }",
              "        }",
              "        done = NV * V;",
              "    }",
              "    for (long long i = done + tid; i < N; i += nth) {",
              *loads("i", "        "),
              f"        const T v = {term};",
              "        if (storing) {",
              "            gl_store(out, out_kind, i, v);",
              "        } else if (per_elem) {",
              "            const double wi = gl_value(w, w_kind, i);",
              "            s += wi * (double)v;",
              "            sw += wi;",
              "        } else {",
              "            s += (double)v;",
              "        }",
              "    }",
              "    if (storing) return;",
              "    // elements this thread summed",
              "    const long long nv = done / V, rest = N - done;",
              "    const long long mine_v = nv > tid ? (nv - tid + nth - 1) / nth : 0;",
              "    const long long mine_s = rest > tid ? (rest - tid + nth - 1) / nth : 0;",
              "    const double cnt = (double)(mine_v * V + mine_s);",
              "    if (!per_elem) {",
              "        const double w0 = gl_value(w, w_kind, 0);",
              "        s *= w0;",
              "        sw = w0 * cnt;",
              "    }",
              "    double acc[4] = {s, sw, cnt, 0.0};",
              f"    gl_finish_reduce(acc, partials, counter, result, out, out_kind, mode, {div_l}, (double)C);"]
        return L

    def kernel_code(self, dtypes) -> str:
        return "\n".join(self.kernel(k, d) for d in dtypes for k in self.kinds())


def _gen(program: RowProgram, column_params=(), fuse: bool = True) -> _Gen:
    return _Gen(program, tuple(column_params), fuse)


def row_code(program: RowProgram, column_params: tuple[str, ...] = (), fuse: bool = True) -> str:
    """Terms, GlArgs, accumulators and gl_row of ``program`` (dtype independent; host C++ too)."""
    return _gen(program, column_params, fuse).row_code()


def kernel_code(program: RowProgram, dtypes, column_params: tuple[str, ...] = ()) -> str:
    """The ``extern "C"`` kernels of ``program`` for each dtype in ``dtypes``."""
    return _gen(program, column_params).kernel_code(list(dtypes))


def program_body(program: RowProgram, dtypes, column_params: tuple[str, ...] = ()) -> str:
    """Row code and kernels of one program in its own namespace (several fit in one source)."""
    g = _gen(program, column_params)
    return (f"namespace glp_{g.id} {{\n\n{g.row_code()}\n\n#if defined(__CUDACC__)\n"
            f"{g.kernel_code(list(dtypes))}#endif\n\n}}  // namespace glp_{g.id}\n")


def program_source(program: RowProgram, dtype: str, column_params: tuple[str, ...] = ()) -> str:
    """Complete CUDA source of ``program``'s kernels for inputs of ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return HEADER + "\n" + program_body(program, [dtype], column_params)


def kernel_names(program: RowProgram, dtype: str, column_params: tuple[str, ...] = ()) -> dict[str, str]:
    """Kernel kind → ``extern "C"`` name, for ``program_source(program, dtype, column_params)``."""
    g = _gen(program, column_params)
    return {k: g.name(k, dtype) for k in g.kinds()}


def kernel_params(program: RowProgram, dtype: str, kind: str,
                  column_params: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(C type, name) of each argument of one kernel, in order (for the launcher)."""
    g = _gen(program, column_params)
    return g.params_of(kind, DTYPES[dtype][0])

"""Python source of the Numba kernels of one row program.

Numba's on-disk cache only hits, in a new process, for functions defined at module level in
a real file (measured with Numba 0.68.1: a kernel made by a closure over a jitted term wrote
its cache and missed it in every new process, 0.55 s of compile each time; the same kernel
in a module file loaded from the cache in 0.13 s). So the templates below are text: for
each (program, compute dtype, per-column parameters) :func:`module_source` writes one small
module, which :mod:`gpuloss.kernels.numba` saves under the kernel cache and imports.

Every kernel works on rows of a 2-D view (R rows, C elements) and splits the work into
blocks whose bounds depend on the shape only: each block is summed serially in float64,
and blocks are combined in index order, so the bits do not depend on the thread count.

Kernels of a module (``_par`` runs blocks on Numba's threads, ``_ser`` is the same code
without threads, used for small inputs where waking threads costs more than the work):

``rows``          per-row values (reduction "none")
``reduce``        Σ w·ℓ, Σ w, valid count, bad labels (reduced calls; blocks added in order)
``flat_reduce``   single-Sum programs on contiguous data: one sweep over all elements (Σ w·ℓ, Σ w)
``flat_rows``     the same for rows of one element (C == 1, reduction "none")
``tile``          short rows (up to TILE_MAX_C elements): tiles of rows, copied transposed so
                  that every term loop vectorises across rows; per-row values into ``out``, or
                  with an empty ``out`` the four sums of ``reduce``
``tile_direct``   the same for one cheap statistic on rows of DIRECT_MIN_C or more contiguous elements:
                  each row summed in place, no transposed copy
``tile_tree``     one cheap sum (and maxima) on C-contiguous rows of TREE_MIN_C or more (float32):
                  the terms along the tile's elements, 16 rows at a time reduced by shuffles
``chunk_k``/``chunk_finish``  few very long rows: pass k split into column chunks
"""

from __future__ import annotations

import ast

import numpy as np

from ...program import ELEMENT_NAMES, RowProgram, Term, check_term
from ...vocab import TRANSCENDENTAL

#: Elements per block. 2**13 float32 pairs = 64 KiB, well inside L2; at 1e8 elements that is
#: 12k partials (a few µs to combine).
BLOCK = 8192
#: Rows of at most this many elements run the tile kernels (see _Gen.tile_kernel). Measured
#: on one thread of a Zen 3 core, 1e7 float32, row kernel / tile kernel (ms): CCE from logits
#: C=2 260/76, C=10 70/39, C=16 49/35, C=24 41/39, C=32 42/48; cosine C=10 49/23, C=16 24/22,
#: C=32 14/25; CCE from probabilities C=16 33/36 (the row kernels vectorise along rows of 16
#: and more, the tiles pay a transposing copy of about 0.4 ns per element and input).
TILE_MAX_C = 16
#: Rows of at least this many elements (and at most TILE_MAX_C), contiguous along the row, run
#: ``tile_direct`` where the program has it (direct_ok). 1e7 float32, 2-core EPYC (AVX2),
#: interleaved, medians of 21, copied tile / direct (ms): CategoricalHinge C=4 13.0/14.8,
#: C=6 11.0/11.0, C=8 11.7/10.0, C=10 8.6/6.1, C=16 8.8/5.7; MSE per row C=6 10.3/12.8,
#: C=8 9.8/8.2, C=10 7.5/4.9; cosine C=8 13.4/13.0, C=16 12.6/9.4. On shorter rows each row's
#: serial sums cost more than the copy. SCCE from probabilities (one input, one sum) lost at
#: every C (C=10 8.9/10.7), so single-input programs have no direct kernel. Since the copy
#: shuffles, prefetches the next tile and takes a pass's statistics in one loop, programs of
#: more than one statistic gain from it, so only one-statistic programs keep a direct kernel
#: (1e7 float32, AVX-512 EPYC, paired ratios, copied tile / direct: CategoricalHinge C=10
#: 0.90, 0.65 at 1e6; cosine C=10 0.74, C=16 0.79; MSE per row C=10 1.20, C=16 1.15).
DIRECT_MIN_C = 8
#: Rows of at least this many elements (and at most TILE_MAX_C), C-contiguous, run ``tile_tree``
#: where the module has it (tree_ok): the terms along the elements as they lie, each 16 rows
#: reduced by shuffles. 1e7 float32, 2-core EPYC (AVX-512), 2 threads, medians of 25
#: interleaved, tree / copied tile: CategoricalHinge C=3 1.16, C=6 1.09, C=8 0.78, C=10
#: 0.85-0.97 (paired over 41: 0.84-0.91), C=16 0.80; MSE per row C=4 0.72, C=8 0.64, C=10
#: 0.59-0.61, C=16 0.62 (the direct tile 0.85-0.88 there); MAE C=10 0.71, Huber C=10 0.71
#: (direct 1.29). One thread, 1e6 in rows of 10: CategoricalHinge 0.71, MSE 0.62; with the
#: sums' trees in float32, CategoricalHinge 0.67 (two threads 0.65). A row of C
#: elements fills C of 16 lanes, so short rows waste most of each shuffle. Programs of more
#: sums (a tree each) lost: cosine C=10 1.33 with the sums' trees in float64, 1.15 since they
#: run in float32 (transpose.row_sums16), the triplet loss 1.02-1.19; so did terms with a log
#: (KLD C=10 1.08).
TREE_MIN_C = 8
#: Elements of one tile per input (4 KiB of float32, transposed where the tile is copied).
#: Shorter tiles read the next rows sooner after the compute of the last; below 1024 the
#: loops' set-up shows. 1e7 float32, 2-core EPYC (AVX-512), threaded kernels alternating,
#: medians of 31-41 per round (ms), 512 / 1024 / 2048 elements: CCE 11.1 / 11.2 / 11.7 and
#: 10.5 / 10.3 / 11.5; SCCE 6.0 / 5.7 / - and - / 5.5 / 6.2; CategoricalHinge (direct) 6.1 /
#: 5.5 / - and - / 4.9 / 5.3; generalized crossentropy (q = 0.5, no copy) - / 1.56 / 1.92,
#: - / 1.85 / 2.17 and - / 1.76 / 1.98 (its 48 MB read at ~30 GB/s takes 1.6).
TILE_ELEMS = 1024
#: Runs of consecutive blocks that the tile kernels hand to threads, each with one set of
#: buffers (see _runs_of_blocks): enough for 16 threads to share out evenly.
BLOCK_RUNS = 64
#: Rows this long (and fewer than CHUNK_MAX_ROWS of them) are split into column chunks.
CHUNK_MIN_COLS = 1 << 16
CHUNK_MAX_ROWS = 32

# Fast-math flags. Kernels need 'reassoc' so LLVM vectorises the float64 accumulation (without
# it the fused MSE ran at ~24 GB/s instead of ~45 GB/s). Terms must NOT be reassociated: Keras's
# `log(1 - q + ε)` at q = 1 - ε became `log((1 + ε) - q)` and binary crossentropy of a saturated
# prediction moved from 15.33 to 15.25. So kernels and terms compile without it; the terms fill a
# small buffer in a plain elementwise loop (vectorised without reassociation) and only the sum of
# that buffer (kernels/numba/accumulate.py) is reassociated. (Leaving terms as separate functions for
# LLVM to inline failed: the larger ones were not inlined and their loops stayed scalar.)
# No 'nnan'/'ninf' anywhere: NaN and inf propagate as they do in Keras. No 'arcp' either: with it
# LLVM took 1/Σp out of a row's loop and multiplied by it, and p·(1/Σp) is not Keras's p/Σp
# (categorical crossentropy's rows of 40 differed from one division in the last bit, which the
# one-hot twin's bitwise test found).
FASTMATH = {"contract", "nsz"}
#: Term values are buffered in chunks of this many elements (4 KiB of float32, in L1) and
#: summed by kernels.numba.accumulate, whose float64 loop alone is reassociated and vectorised.
BUF = 1024
#: The buffer of element terms without a transcendental call (see _costly). While a chunk's
#: buffer is summed no input is read; for terms of a few flops per element that pause left
#: memory idle: MSE at 1e7 float32, 2-core EPYC, fraction of the streaming read (flat sweeps
#: of FLAT_BLOCK elements, medians of 21 interleaved calls, two runs): 0.55 / 0.85 with 1024
#: elements, 0.64 / 1.10 with 128, 0.72 / 1.10 with 64. Log/exp terms lost 5-15 % with short
#: buffers (log-cosh 9.95 ms with 1024, 10.3 with 128, 11.2 with 64), so they keep BUF. The
#: row kernels' pass loops take the module's buffer too (MAE, reduction "none", 1e7 elements in
#: rows of 100 / 1000 / 10000: 3.38 / 3.95 / 3.79 ms with 1024, 3.21 / 3.39 / 3.32 with 128).
BUF_CHEAP = 128
#: Elements per block of the flat sweeps (2**16 float32 pairs = 512 KiB, inside L2). Same
#: measurement as BUF_CHEAP, buffers of 1024: MSE 0.53 / 0.75 of the read with blocks of 2**13,
#: 0.55 / 0.85 with 2**16; Poisson 4.36 → 3.91 ms. A block allocates its buffers and writes
#: a partial; a 1e6-element call still has 16 blocks to share among threads.
FLAT_BLOCK = 1 << 16

_VOCAB_IMPORT = ("from gpuloss.kernels.numba.vocab import (exp, exp_nonpositive, log, log1p, sqrt, rsqrt, "
                 "maximum, minimum, clip, power, sigmoid, softplus, label_index)")


class _Literals(ast.NodeTransformer):
    """Type every numeric literal (``2`` → ``_T(2.0)``): int or float64 literals would
    promote float32 arithmetic to float64 and halve the vector width."""

    def __init__(self, cast: str, prefix: str, terms: set[str]):
        self.cast, self.prefix, self.terms = cast, prefix, terms

    def visit_Constant(self, node: ast.Constant):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return ast.Call(ast.Name(self.cast, ast.Load()), [ast.Constant(float(node.value))], [])
        return node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in self.terms:
            node.func = ast.Name(self.prefix + node.func.id, ast.Load())
        return node


class _RowMaxExp(ast.NodeTransformer):
    """``exp(x - m)`` → ``exp_nonpositive(x - m)`` where ``m`` is the row maximum of element
    ``x`` (a Max statistic of ``x`` itself): ``x - m`` is then <= 0, -inf or NaN, and float32's
    exp drops its overflow clamp, with the same bits (kernels/numba/vocab.py). Together with the
    last pass's sums left without float32 copies (a change to the float64 statistics the tile
    kernels then had; float32 since, see _Gen.tile_kernel), at 1e7 float32, 2 threads,
    paired with the kernels before, medians of 31: CCE from logits 0.93 (0.96 and 0.97 in two
    earlier rounds), SCCE from logits 0.91-0.92; CCE from logits on one thread in cache 0.88."""

    def __init__(self, pairs: set[tuple[str, str]]):
        self.pairs = pairs

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        a = node.args[0] if len(node.args) == 1 else None
        if (isinstance(node.func, ast.Name) and node.func.id == "exp" and isinstance(a, ast.BinOp)
                and isinstance(a.op, ast.Sub) and isinstance(a.left, ast.Name) and isinstance(a.right, ast.Name)
                and (a.left.id, a.right.id) in self.pairs):
            node.func = ast.Name("exp_nonpositive", ast.Load())
        return node


def _emit_term(t: Term, prefix: str, cast: str, term_names: set[str], name: str | None = None,
               row_max: set[tuple[str, str]] = frozenset()) -> str:
    """The term as a jitted function. ``row_max``: (element, statistic) pairs where the
    statistic is the row maximum of the element; only for terms the kernels call with the
    program's own names, never through another term (which may bind them otherwise)."""
    tree = ast.parse(t.source).body[0]
    rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    pairs = {(e, m) for e, m in row_max if e in t.args and m in t.args and not {e, m} & rebound}
    if pairs:
        tree = _RowMaxExp(pairs).visit(tree)
    tree = _Literals(cast, prefix, term_names).visit(tree)
    tree.name = prefix + (name or t.name)
    tree.decorator_list = []
    return (f"@njit(inline='always', fastmath=FASTMATH, error_model='numpy')\n"
            + ast.unparse(ast.fix_missing_locations(tree)))


class _Gen:
    def __init__(self, program: RowProgram, dtype: str, column_params: tuple[str, ...],
                 constants: tuple[tuple[str, float], ...] = (), positive_logs: bool = False):
        self.p = program
        self.positive_logs = positive_logs
        self.dtype = dtype
        self.params = program.param_names()
        self.colp = tuple(column_params)
        self.constants = dict(constants)
        self.elements = program.elements
        self.arrays = ["p_arr"] if program.sparse else [f"{e}_arr" for e in self.elements]
        if program.sparse:
            self.arrays.append("label_arr")

    # ---- argument lists -------------------------------------------------------------------
    def param_args(self) -> str:
        return "".join(f", P_{n}" for n in self.params)

    def array_args(self) -> str:
        return ", ".join(self.arrays)

    def param_setup(self, ind: str) -> str:
        lines = []
        for n in self.params:
            if n in self.colp or n in self.constants:  # constants: written into the calls (see _call)
                continue
            lines.append(f"{ind}{n}_T = _T(P_{n})")
            lines.append(f"{ind}{n}_F = _F(P_{n})")
        return "\n".join(lines) + ("\n" if lines else "")

    def buffered(self, stat) -> bool:
        """A statistic of the copied tiles whose term values go through a buffer first, in
        float64 modules only: every sum, since a float64 term added where it is computed ends in
        a product that 'contract' fuses into the add, and the rows would differ in the last bit
        from the direct tiles' (see accumulate.fenced; fencing it here kept the loop scalar, 2x
        slower), and every term that calls a transcendental word (see _buffered). float32
        modules take their row statistics in float32 (see tile_kernel), where the terms with
        exp or log vectorise in the loop that adds them up and the buffer only cost time."""
        return self.dtype == "float64" and (_buffered(stat) or stat.kind == "sum")

    # ---- row bodies -----------------------------------------------------------------------
    def _call(self, t: Term, prefix: str, suffix: str, index: str | None, col: str | None,
              row: str | None = None, row_labels: bool = False, elements: str = "{}_v") -> str:
        """A call of term ``t``; elements are read as ``<name>_v[index]`` from the slice of the
        current row or block (None in finish terms). Indexing a slice rather than the whole
        array lets LLVM prove the index non-negative: with ``arr[r, j]`` Numba's negative-index
        wraparound made the vectoriser emit gathers. ``row``: statistics are per-row arrays of
        a tile, read at that index (tile kernels); with ``row_labels`` so are the label and
        ``p_label`` (``lb``, ``pl``: float64, filled by the tile's label loop). ``elements``:
        the array an element is read from, by name (the one-hot twin reads gathered arrays)."""
        args = []
        for a in t.args:
            if a in ELEMENT_NAMES:
                if index is None:
                    raise TypeError(f"{t.name}: element {a} read outside an element term")
                arr = "p_v" if self.p.sparse else elements.format(a)
                args.append(f"_T({arr}[{index}])")
            elif a == "n":
                args.append("n" + suffix)
            elif a == "label":
                args.append(f"lb[{row}]" if row_labels else f"{suffix}(lab)")
            elif a == "p_label":
                args.append(f"pl[{row}]" if row_labels else "p_label" + suffix)
            elif a in self.p.stat_names:
                name = f"st_{a}" if suffix == "_F" else f"st_{a}_T"
                args.append(name if row is None else f"{name}[{row}]")
            elif a in self.colp:
                if col is None:
                    raise TypeError(f"{t.name}: per-column parameter {a} used outside an element term")
                args.append(f"_T(P_{a}[{col}])")
            elif a in self.constants:
                # a literal in the call, not a variable set before the loop: the parallel
                # kernels pass such variables into their prange body as runtime arguments,
                # where LLVM no longer sees the constant (BFCE, 1e6 elements, one thread:
                # serial kernel 2.9 → 1.4 ns per element with γ folded, parallel unchanged)
                args.append(f"{suffix}({float(self.constants[a])!r})")
            else:
                args.append(f"{a}{suffix}")
        return f"{prefix}{t.name}({', '.join(args)})"

    def _element_call(self, t: Term) -> str:
        return self._call(t, "e_", "_T", "j", "q0 + j")

    def buffers(self, ind: str) -> str:
        names = [n for p in self.p.passes for n, _ in p]
        # buffers hold term values in the compute dtype: a float64 buffer made LLVM pick 4-wide
        # vectors for the whole float32 term (measured: BCE-with-logits 4.5 → see BUF note)
        return "".join(f"{ind}buf_{n} = np.empty(BUF, dtype=_T)\n" for n in names)

    def slices(self, ind: str, lead: str, span: str) -> str:
        """``<name>_v = <name>_arr[lead, span]`` for each element array."""
        names = ["p"] if self.p.sparse else list(self.elements)
        sep = ", " if lead else ""
        return "".join(f"{ind}{n}_v = {n}_arr[{lead}{sep}{span}]\n" for n in names)

    def stats_decl_T(self, names, ind) -> str:
        return "".join(f"{ind}st_{n}_T = _T(st_{n})\n" for n in names)

    def pass_loop(self, k: int, ind: str, row: str, c0: str, c1: str) -> str:
        """Accumulate pass k's statistics over columns c0..c1 of ``row`` into st_<name>."""
        out = []
        for name, st in self.p.passes[k]:
            out.append(f"{ind}st_{name} = {'0.0' if st.kind == 'sum' else '-np.inf'}")
        out.append(f"{ind}for q0 in range({c0}, {c1}, BUF):")
        out.append(f"{ind}    q1 = min({c1}, q0 + BUF)")
        out.append(self.slices(ind + "    ", row, "q0:q1").rstrip("\n"))
        out.append(f"{ind}    for j in range(q1 - q0):")
        for name, st in self.p.passes[k]:
            out.append(f"{ind}        buf_{name}[j] = {self._element_call(st.term)}")
        for name, st in self.p.passes[k]:
            if st.kind == "sum":
                out.append(f"{ind}    st_{name} += sum64(buf_{name}, q1 - q0)")
            else:
                out.append(f"{ind}    m_{name} = max64(buf_{name}, q1 - q0)")
                out.append(f"{ind}    st_{name} = {_larger(f'm_{name}', f'st_{name}')}")
        return "\n".join(out) + "\n"

    def label_branches(self, ind: str, row: str, on_ignore: list[str], on_bad: list[str]) -> list[str]:
        """The row's label checked (sparse programs): ``on_ignore`` for ``ignore_class`` rows,
        ``on_bad`` for labels outside [0, C) (never read), else ``p_label`` is read and the
        caller's lines follow, indented one level deeper than ``ind``."""
        return ([f"{ind}ok, lab = label_index(label_arr[{row}])",
                 f"{ind}if has_ignore and ok and lab == ignore:"]
                + [f"{ind}    {x}" for x in on_ignore]
                + [f"{ind}elif not ok or lab < 0 or lab >= C:"]
                + [f"{ind}    {x}" for x in on_bad]
                + [f"{ind}else:",
                   f"{ind}    p_label_T = _T(p_arr[{row}, lab])",
                   f"{ind}    p_label_F = _F(p_label_T)"])

    def tile_labels(self, ind: str) -> list[str]:
        """The tile's labels into ``state``/``pl``/``lb`` (see tile_kernel), without a branch:
        a label that is not read selects column 0 of its row (never past the row; with C == 0
        nothing is read), and the indices are unsigned so that Numba adds no wraparound test.
        With the branches of label_branches LLVM vectorised the loop into masked gathers, slower
        on a Zen 4 core than scalar loads: the gather alone of generalized CE's labels, 1e6 rows
        of 10 float32, 2 threads, 2.9 → 1.1 ms (a streaming read of all of p: 0.76 ms)."""
        inner = ind + "    "
        return [f"{ind}pv_t = p_arr[r0:r0 + nt]",
                f"{ind}lv_t = label_arr[r0:r0 + nt]",
                f"{ind}for i in range(nt):",
                f"{inner}ok, lab = label_index(lv_t[i])",
                f"{inner}ign = has_ignore & ok & (lab == ignore)",
                f"{inner}use = ok & (lab >= 0) & (lab < C) & (not ign)",
                f"{inner}x = _F(_T(pv_t[np.uint64(i), np.uint64(lab if use else 0)])) if C > 0 else 1.0",
                f"{inner}state[i] = 0 if use else (1 if ign else 2)",
                f"{inner}pl[i] = x if use else 1.0",
                *([f"{inner}lb[i] = _F(lab) if use else 0.0"] if self.finish_reads("label") else [])]

    def finish_reads(self, name: str) -> bool:
        return any(name in t.args for t in self.p.finish.callees() + [self.p.finish])

    def row_value(self, ind: str, row: str) -> str:
        """Code that leaves the row's loss in ``val`` and its validity in ``valid``."""
        out = [f"{ind}valid = True", f"{ind}n_F = _F(C)", f"{ind}n_T = _T(C)"]
        body_ind = ind
        if self.p.sparse:
            out += self.label_branches(ind, row, ["valid = False", "val = 0.0"], ["bad += 1", "val = np.nan"])
            body_ind = ind + "    "
        done: list[str] = []
        for k in range(len(self.p.passes)):
            out.append(self.stats_decl_T(done, body_ind).rstrip("\n")) if done else None
            loop = self.pass_loop(k, body_ind, row, "0", "C").rstrip("\n")
            if self.onehot_active() and k == len(self.p.passes) - 1:
                # "else:", not a second "if not hot_:": with two ifs Numba's type inference of
                # the threaded row kernels of CFCE from logits failed ("unexpected cycle in lookup")
                loop = self.onehot_row(body_ind, row, k) + "\n".join("    " + x for x in loop.split("\n"))
            out.append(loop)
            done += [n for n, _ in self.p.passes[k]]
        out.append(f"{body_ind}val = " + self._call(self.p.finish, "f_", "_F", None, None))
        return "\n".join(x for x in out if x) + "\n"

    # ---- kernels --------------------------------------------------------------------------
    def header(self) -> str:
        sparse = ", has_ignore, ignore" if self.p.sparse else ""
        return sparse

    def rows_kernel(self, suffix: str, parallel: bool) -> str:
        ind = " " * 12
        return (
            f"@njit(parallel={parallel}, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
            f"def rows_{suffix}({self.array_args()}, out{self.header()}{self.param_args()}):\n"
            f"    R = out.shape[0]\n"
            f"    C = {self.arrays[0]}.shape[1]\n"
            f"{self.param_setup('    ')}"
            f"    rpb = max(1, BLOCK // max(C, 1))\n"
            f"    nb = (R + rpb - 1) // rpb\n"
            f"    nbad = np.zeros(nb, dtype=np.int64)\n"
            f"    for b in prange(nb):\n"
            f"        bad = 0\n"
            f"{self.buffers('        ')}"
            f"        for r in range(b * rpb, min(R, (b + 1) * rpb)):\n"
            f"{self.row_value(ind, 'r')}"
            f"            out[r] = val\n"
            f"        nbad[b] = bad\n"
            f"    return nbad.sum()\n"
        )

    def reduce_kernel(self, suffix: str, parallel: bool) -> str:
        ind = " " * 12
        return (
            f"@njit(parallel={parallel}, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
            f"def reduce_{suffix}({self.array_args()}, w_arr, w_step{self.header()}{self.param_args()}):\n"
            f"    R = {self.arrays[0]}.shape[0]\n"
            f"    C = {self.arrays[0]}.shape[1]\n"
            f"{self.param_setup('    ')}"
            f"    rpb = max(1, BLOCK // max(C, 1))\n"
            f"    nb = (R + rpb - 1) // rpb\n"
            f"    part = np.zeros((nb, 4))\n"
            f"    for b in prange(nb):\n"
            f"        bad = 0\n"
            f"{self.buffers('        ')}"
            f"        swl = 0.0\n"
            f"        sw = 0.0\n"
            f"        cnt = 0.0\n"
            f"        for r in range(b * rpb, min(R, (b + 1) * rpb)):\n"
            f"{self.row_value(ind, 'r')}"
            f"            if valid:\n"
            f"                w = _F(w_arr[r * w_step])\n"
            f"                swl += w * val\n"
            f"                sw += w\n"
            f"                cnt += 1.0\n"
            f"        part[b, 0] = swl\n"
            f"        part[b, 1] = sw\n"
            f"        part[b, 2] = cnt\n"
            f"        part[b, 3] = bad\n"
            f"    return totals4(part)\n"
        )

    def flat_check(self, ind: str) -> str:
        """The program's check inside the term loop (``off`` ends up nonzero where it fails):
        Hinge's labels outside {0, 1}, found in the loop that reads them anyway instead of in a
        scan of their own. 1e7 binary labels, 2-core EPYC: 8.3 ms with the scan, 6.6 with the
        check in a loop of its own after each chunk, 5.8 in the term loop (5.1 without it)."""
        if self.p.check is None:
            return ""
        if self.p.check != "binary_labels":
            raise ValueError(f"unknown check {self.p.check!r}")
        return f"{ind}off |= (t_v[j] != 0) & (t_v[j] != 1)\n"

    def twin_active(self) -> bool:
        """The reduced flat sweep has the program's binary twin (RowProgram.binary_twin): only
        where its logs take log_positive, i.e. every log argument is positive and finite (with
        ε = 0, Keras's 0·log(0) is NaN where the twin's log is of 1), and without a check."""
        return self.p.binary_twin is not None and self.positive_logs and self.p.check is None

    def _twin_args(self) -> str:
        target = self.p.binary_twin[0]
        return ", ".join([f"{e}_v" for e in self.elements] + [f"{a}_T" for a in target.args if a not in ELEMENT_NAMES])

    def twin_loop(self, ind: str, head: str, tail: str, call: str) -> str:
        """A chunk's term loop (with the program's check, if any). With the binary twin, while
        ``use_twin`` holds: the twin's loop, then its targets checked (in cache by then); where
        one is not 0 or 1 the chunk again with the element term, and the rest of the block with
        it alone. BCE at 1e7, 2 threads, paired against the element term alone: binary labels
        0.79 with the check after the loop (0.68 without any check; 0.99 with the check
        before the loop, which read the labels from memory before the term did; 0.88 with
        the check in the term loop), soft labels 1.02 (1.21 with the check in the loop)."""
        loop = f"for j in range(q1 - q0):\n{ind}    {head}{{}}{tail}\n" + self.flat_check(ind + "    ")
        if not self.twin_active():
            return ind + loop.format(call)
        name = self.p.passes[0][0][1].term.name
        twin = call.replace(f"e_{name}(", f"b_{name}(", 1)
        deeper = loop.replace(f"\n{ind}", f"\n{ind}    ")
        deepest = loop.replace(f"\n{ind}", f"\n{ind}        ")
        return (f"{ind}if use_twin:\n{ind}    " + deeper.format(twin)
                + f"{ind}    if twin_off(q1 - q0, {self._twin_args()}):\n{ind}        " + deepest.format(call)
                + f"{ind}        use_twin = False\n"
                + f"{ind}else:\n{ind}    " + deeper.format(call))

    def tree_active(self) -> bool:
        """The module has ``tile_tree`` kernels: a program with them (tree_ok) in a float32
        module (row_maxima16 reads float32) without per-column parameters (the flat term loop
        does not know an element's column)."""
        return tree_ok(self.p) and self.dtype == "float32" and not self.colp

    def onehot_active(self) -> bool:
        """The tile and row kernels have the program's one-hot twin (RowProgram.onehot_twin):
        where its logs take log_positive (the zero terms' logs are then finite, see
        codegen.positive_logs), without a check, and where the last pass has a single Sum."""
        if self.p.onehot_twin is None or not self.positive_logs or self.p.check is not None \
                or not self.p.passes or self.p.sparse:
            return False
        last = self.p.passes[-1]
        return len(last) == 1 and last[0][1].kind == "sum"

    def _onehot_parts(self) -> tuple[Term, Term, bool]:
        """The twin's target and zero_ok terms, and whether zero_ok reads neither elements nor
        per-column parameters (then it is tested once per row)."""
        target, zero_ok = self.p.onehot_twin
        per_row = not any(a in ELEMENT_NAMES or a in self.colp
                          for t in zero_ok.callees() + [zero_ok] for a in t.args)
        return target, zero_ok, per_row

    def onehot_row(self, ind: str, row: str, k: int) -> str:
        """The row kernels' one-hot twin (see onehot_pass): integer counts of the row's zero and
        one targets and the column of its one, in a loop that vectorises without reassociation
        (integer sums); where the row is one-hot and zero_ok holds, its last pass's Sum is the
        element term at that column (``hot_`` true). Ends in ``else:``: the caller indents the
        pass as written under it."""
        target, zero_ok, per_row = self._onehot_parts()
        (n, st), = self.p.passes[k]
        inner = ind + "    "
        y = self._call(target, "e_", "_T", "j", None)
        ok = self._call(zero_ok, "e_", "_T", "j", None if per_row else "q0 + j")
        zero = "y_ == _T(0.0)" if per_row else f"(y_ == _T(0.0)) & {ok}"
        value = self._call(st.term, "e_", "_T", f"{row}, hcol_", "hcol_", elements="{}_arr")
        return "\n".join([
            f"{ind}zeros_ = 0",
            f"{ind}ones_ = 0",
            f"{ind}hcol_ = 0",
            f"{ind}for q0 in range(0, C, BUF):",
            f"{inner}q1 = min(C, q0 + BUF)",
            self.slices(inner, row, "q0:q1").rstrip("\n"),
            f"{inner}for j in range(q1 - q0):",
            f"{inner}    y_ = {y}",
            f"{inner}    one_ = y_ == _T(1.0)",
            f"{inner}    zeros_ += 1 if {zero} else 0",
            f"{inner}    ones_ += 1 if one_ else 0",
            f"{inner}    hcol_ += q0 + j if one_ else 0",
            f"{ind}hot_ = (zeros_ == C - 1) & (ones_ == 1)" + (f" & {ok}" if per_row else ""),
            f"{ind}if hot_:",
            f"{inner}st_{n} = plus_zero(_F({value}))",
            f"{ind}else:",
        ]) + "\n"

    def onehot_pass(self, ind: str, k: int, names: list[str]) -> list[str]:
        """The last pass of a tile by the one-hot twin, while ``use_hot`` holds: one sweep over
        the columns adds up each row's targets (``hc``), its zero targets (``hz``) and target ×
        column (``hs``, the one column of a one-hot row), without a transcendental; a row is
        one-hot where hc = 1 and hz = C - 1 (a NaN target is neither 0 nor counted as 1).
        ``zero_ok`` is tested once per row where it reads neither elements nor per-column
        parameters, else at every zero target. Where every row of the tile passes, each row's
        elements at its one column are gathered and the element term is computed once per row;
        else ``use_hot`` turns off for the rest of the block and the pass is done as written.
        The sums are exact in float32 (at most TILE_MAX_C columns). Counts per row instead of
        an or-reduction of the tests in the column loop: CCE at 1e6, one thread, paired, 0.93."""
        target, zero_ok, per_row = self._onehot_parts()
        (n, st), = self.p.passes[k]
        inner = ind + "    "
        y = self._call(target, "e_", "_T", "i", "j", row="i")
        ok = self._call(zero_ok, "e_", "_T", "i", None if per_row else "j", row="i")
        zero = "y_ == _T(0.0)" if per_row else f"(y_ == _T(0.0)) & {ok}"
        row_ok = f" | (not {ok})" if per_row else ""
        gather = [f"{inner}        hv_{e}[i] = tb_{e}[h_, np.uint64(i)]" for e in names]
        value = self._call(st.term, "e_", "_T", "i", "hcol[i]", row="i", elements="hv_{}")
        return [
            f"{ind}if use_hot:",
            f"{inner}for i in range(nt):",
            f"{inner}    hc[i] = _T(0.0)",
            f"{inner}    hz[i] = _T(0.0)",
            f"{inner}    hs[i] = _T(0.0)",
            f"{inner}for j in range(C):",
            *[f"{inner}    {e}_v = tb_{e}[j]" for e in names],
            *[f"{inner}    prefetch_lines({e}_arr, r0 + nt, nt, ({k} * C + j) * pf_{e}, pf_{e})" for e in names],
            f"{inner}    jT = _T(j)",
            f"{inner}    for i in range(nt):",
            f"{inner}        y_ = {y}",
            f"{inner}        hz[i] += _T(1.0) if {zero} else _T(0.0)",
            f"{inner}        hc[i] += y_",
            f"{inner}        hs[i] += y_ * jT",
            f"{inner}hoff = False",
            f"{inner}zeros = _T(C - 1)",
            f"{inner}for i in range(nt):",
            f"{inner}    hoff |= (hc[i] != _T(1.0)) | (hz[i] != zeros){row_ok}",
            f"{inner}if hoff:",
            f"{inner}    use_hot = False",
            f"{inner}else:",
            f"{inner}    for i in range(nt):",
            f"{inner}        h_ = np.uint64(hs[i])",
            f"{inner}        hcol[i] = h_",
            *gather,
            f"{inner}    for i in range(nt):",
            f"{inner}        st_{n}[i] = plus_zero(_F({value}))",
        ]

    def twin_off(self) -> str:
        """Whether a target of the chunk is other than 0 or 1 (NaN included), in a function
        of its own (a boolean or-reduction: 0.08 ns per element on one core in cache, an
        integer count 0.11)."""
        target = self.p.binary_twin[0]
        return (f"@njit(fastmath=FASTMATH, error_model='numpy', cache=True, nogil=True)\n"
                f"def twin_off(m, {self._twin_args()}):\n"
                f"    off = False\n"
                f"    for j in range(m):\n"
                f"        y_ = {self._call(target, 'e_', '_T', 'j', None)}\n"
                f"        off |= (y_ != _T(0.0)) & (y_ != _T(1.0))\n"
                f"    return off\n")

    def flat_kernels(self, suffix: str, parallel: bool) -> str:
        """``flat_reduce``/``flat_rows``: the rows fused into one sweep. With a ``check`` both
        also return a count that is nonzero where it fails (blocks with a violation; without
        one flat_reduce returns its two sums, flat_rows nothing)."""
        (name, st), = self.p.passes[0]
        call = self._call(st.term, "e_", "_T", "j", None)
        checked = self.p.check is not None
        reduce_return = "    s0, s1 = totals2(part)\n    return s0, s1, offs.sum()\n" if checked else \
            "    return totals2(part)\n"
        return (
            f"@njit(parallel={parallel}, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
            f"def flat_reduce_{suffix}({self.array_args()}, w_arr, w_step{self.param_args()}):\n"
            f"    N = {self.arrays[0]}.shape[0]\n"
            f"{self.param_setup('    ')}"
            f"    nb = (N + FLAT_BLOCK - 1) // FLAT_BLOCK\n"
            f"    part = np.zeros((nb, 2))\n"
            + ("    offs = np.zeros(nb, dtype=np.int64)\n" if checked else "") +
            f"    for b in prange(nb):\n"
            f"        buf = np.empty(BUF, dtype=_T)\n"
            f"        wbuf = np.empty(BUF)\n"
            f"        swl = 0.0\n"
            f"        sw = 0.0\n"
            + ("        off = False\n" if checked else "")
            + ("        use_twin = True\n" if self.twin_active() else "") +
            f"        for q0 in range(b * FLAT_BLOCK, min(N, (b + 1) * FLAT_BLOCK), BUF):\n"
            f"            q1 = min(N, q0 + BUF)\n"
            f"{self.slices('            ', '', 'q0:q1')}"
            f"            if w_step == 0:\n"
            f"{self.twin_loop('                ', 'buf[j] = ', '', call)}"
            f"                swl += sum64(buf, q1 - q0)\n"
            f"            else:\n"
            f"                w_v = w_arr[q0:q1]\n"
            f"{self.twin_loop('                ', 'wbuf[j] = _F(w_v[j]) * _F(', ')', call)}"
            f"                swl += sum64(wbuf, q1 - q0)\n"
            f"                sw += sum64(w_v, q1 - q0)\n"
            f"        if w_step == 0:\n"
            f"            w = _F(w_arr[0])\n"
            f"            sw = w * (min(N, (b + 1) * FLAT_BLOCK) - b * FLAT_BLOCK)\n"
            f"            swl *= w\n"
            f"        part[b, 0] = swl\n"
            f"        part[b, 1] = sw\n"
            + ("        offs[b] = off\n" if checked else "") +
            reduce_return + "\n\n"
            f"@njit(parallel={parallel}, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
            f"def flat_rows_{suffix}({self.array_args()}, out{self.param_args()}):\n"
            f"    N = out.shape[0]\n"
            f"{self.param_setup('    ')}"
            f"    nb = (N + FLAT_BLOCK - 1) // FLAT_BLOCK\n"
            + ("    offs = np.zeros(nb, dtype=np.int64)\n" if checked else "") +
            f"    for b in prange(nb):\n"
            f"        lo = b * FLAT_BLOCK\n"
            f"        hi = min(N, lo + FLAT_BLOCK)\n"
            + ("        off = False\n" if checked else "") +
            f"{self.slices('        ', '', 'lo:hi')}"
            f"        out_v = out[lo:hi]\n"
            f"        for j in range(hi - lo):\n"
            f"            out_v[j] = {call}\n"
            f"{self.flat_check('            ')}"
            + ("        offs[b] = off\n    return offs.sum()\n" if checked else "")
        )

    def tile_kernel(self, suffix: str, parallel: bool, direct: bool = False, tree: bool = False) -> str:
        """``tile``: short rows (C <= TILE_MAX_C), a tile of rows at a time.

        The tile is copied transposed into buffers of shape (C, rows), so every pass loops over
        the columns and, inside, over the rows of the tile: that inner loop is contiguous and
        vectorises across rows, with each row's statistics held in small arrays of the compute
        dtype. The row kernels vectorise along a row, which for 10 classes is a 10-element loop
        plus the set-up of every buffer and sum per row (figures at TILE_MAX_C).

        ``direct`` (``tile_direct``, for one statistic of a term without a transcendental call,
        on rows that are contiguous): no copy; each row's statistic is summed along the row in
        place, in the same order, into the same per-row arrays, and the finish and sums follow
        as above. For a single sum of a few flops per element the transposing copy costs more
        than the serial sums (the strided reads without the copy: CategoricalHinge, 1e6 rows
        of 10, 8.3 vs 7.5 ms, the best of 15); figures at DIRECT_MIN_C.

        ``tree`` (``tile_tree``, see tree_ok, on C-contiguous inputs): no copy either; the
        pass's terms are computed along the tile's elements as they lie (one flat loop, each
        statistic's values into a float32 buffer), and each 16 rows of a buffer are reduced by
        shuffles, in float32, to float64 row statistics (transpose.row_sums16, row_maxima16:
        the precision there). The finish and sums follow as above."""
        # a program without passes (generalized crossentropy: a finish of the label's
        # probability) copies no tile: its rows only split labels, finish and sums
        names = [] if not self.p.passes or direct or tree else ["p"] if self.p.sparse else list(self.elements)
        ind = " " * 12
        # a run of blocks' buffers (see _runs_of_blocks), then the lines of one block
        bufs = [f"tb_{e} = np.empty((C, tr), dtype=_T)" for e in names]
        for stats in self.p.passes:
            for n, st in stats:
                bufs.append(f"st_{n} = np.empty(tr)")
                if tree:  # the term values, read past the last row by up to LANES
                    bufs.append(f"tb_{n} = np.empty(tr * C + LANES, dtype=_T)")
                    continue
                bufs.append(f"st_{n}_T = np.empty(tr, dtype=_T)")
                if direct:
                    continue
                if self.buffered(st):
                    bufs.append(f"tv_{n} = np.empty(tr, dtype=_T)")
                if st.kind == "max":
                    bufs.append(f"alt_{n} = np.empty(tr, dtype=_T)")
        L = ["        swl = 0.0", "        sw = 0.0", "        cnt = 0.0"]
        if self.p.sparse:
            bufs += ["pl = np.empty(tr)", "lb = np.empty(tr)", "state = np.empty(tr, dtype=np.int64)"]
        if self.onehot_active():
            L.append("        use_hot = True")
            bufs += ["hc = np.empty(tr, dtype=_T)", "hz = np.empty(tr, dtype=_T)", "hs = np.empty(tr, dtype=_T)",
                     "hcol = np.empty(tr, dtype=np.uint64)"]
            bufs += [f"hv_{e} = np.empty(tr, dtype=_T)" for e in names]
        bufs += ["vals = np.empty(tr)", "wl = np.empty(tr)", "wv = np.empty(tr)", "one = np.empty(tr)"]
        L += ["        bad = 0",
              "        for r0 in range(b * rpb, min(R, (b + 1) * rpb), tr):",
              f"{ind}nt = min(tr, R - r0)"]
        # blocks of 16 rows transposed by shuffles where the input is float32 in C order,
        # else column by column (figures in kernels/numba/transpose.py). The copy is most of a
        # tile kernel's time at 1e7: CCE in rows of 10, 2 threads, alternating, medians of 21,
        # with the column loop / without any copy: 9.5 / 4.2 ms
        L += [f"{ind}copy_columns({e}_arr, r0, nt, tb_{e})" for e in names]
        passes = [] if direct or tree else self.p.passes
        if passes:
            L += [f"{ind}pf_{e} = share_lines({e}_arr, nt, {len(passes)} * C)" for e in names]
        for k, stats in enumerate(passes):
            start = len(L)
            L.append(f"{ind}for i in range(nt):")
            L += [f"{ind}    st_{n}_T[i] = _T(0.0)" if st.kind == "sum" else f"{ind}    st_{n}_T[i] = -np.inf"
                  for n, st in stats]
            L.append(f"{ind}for j in range(C):")
            L += [f"{ind}    {e}_v = tb_{e}[j]" for e in names]
            # the next tile's lines asked for a share per column and pass, so that they
            # arrive while this tile is computed on (see kernels/numba/transpose.py)
            L += [f"{ind}    prefetch_lines({e}_arr, r0 + nt, nt, ({k} * C + j) * pf_{e}, pf_{e})" for e in names]
            # float64 modules: the sums and the terms with exp or log fill buffers in one plain
            # loop first (see buffered). Added straight into float64 statistics, the exp-bearing
            # loops stayed scalar (CCE from logits' Σ exp: 25 → 10.6 ms per 1e7 elements, one
            # thread, with the buffer). The row statistics of float32 modules are float32, as
            # Keras's own sums over a row are, and copied to float64 for the finish after the
            # pass; the rows' losses are still added in float64. Those loops vectorise with the
            # terms computed in them: one core, 1e6 float32 in rows of 10 in cache, paired
            # against float64 statistics with buffers, medians of 31: CCE from logits 0.82,
            # SCCE from logits 0.94, CCE 0.97, focal CCE 0.97, SCCE 0.90, cosine 0.90, the
            # triplet loss 0.85 (float32 statistics with the buffers kept: 0.92, 0.99, 1.03,
            # 0.98, 0.91, 0.90, 0.87); 1e7 on 2 threads, medians of 21: CCE from logits 0.84
            # (0.91 with the buffers), SCCE from logits 0.89 (0.98), CCE 0.95 (0.99), focal
            # 0.99 (1.00)
            buffered = [(n, st) for n, st in stats if self.buffered(st)]
            if buffered:
                L.append(f"{ind}    for i in range(nt):")
            for n, st in buffered:
                L.append(f"{ind}        tv_{n}[i] = {self._call(st.term, 'e_', '_T', 'i', 'j', row='i')}")
            # then every statistic of the pass in one loop: a buffered term's value from its
            # buffer, the others' computed there. A loop per statistic read the tile's columns
            # again for each (CategoricalHinge, 1e6 elements in rows of 10, 2 threads, medians of
            # 41 alternating: 0.78 of the time with its sum and maximum in one loop, 0.84 with
            # only the sum's buffer left out)
            L.append(f"{ind}    for i in range(nt):")
            for n, st in stats:
                v = f"tv_{n}[i]" if self.buffered(st) else self._call(st.term, 'e_', '_T', 'i', 'j', row='i')
                if st.kind == "sum":
                    L.append(f"{ind}        st_{n}_T[i] += {v}")
                else:
                    # NaN propagates, as in max64 and tf.reduce_max. The new maximum
                    # goes to a second array, swapped with the first: written in place, LLVM
                    # drops the store of an unchanged value and the loop needs masked stores,
                    # microcoded on AMD (10 classes: 6.3 → 1.3 ms per 1e7 elements). In the
                    # compute dtype: the maximum of float32 values is the same in float32 as
                    # in float64, and twice as many lanes compare at once
                    L.append(f"{ind}        v_{n} = {v}")
                    L.append(f"{ind}        c_{n} = st_{n}_T[i]")
                    L.append(f"{ind}        alt_{n}[i] = {_larger(f'v_{n}', f'c_{n}')}")
            L += [f"{ind}    st_{n}_T, alt_{n} = alt_{n}, st_{n}_T" for n, st in stats if st.kind == "max"]
            # the statistics in float64 for the finish (the passes after read the compute
            # dtype's); the one-hot twin writes its sum in float64 itself
            L += [f"{ind}for i in range(nt):", *[f"{ind}    st_{n}[i] = _F(st_{n}_T[i])" for n, _ in stats]]
            if self.onehot_active() and k == len(passes) - 1:
                # the pass as written runs where the twin does not apply
                plain, L[start:] = L[start:], []
                L += self.onehot_pass(ind, k, names) + [f"{ind}if not use_hot:"] + ["    " + x for x in plain]
        inner = ind + "    "
        if direct:
            L += [f"{ind}for i in range(nt):", f"{inner}r = r0 + i",
                  self.slices(inner, "r", ":").rstrip("\n")]
            for stats in self.p.passes:
                L += [f"{inner}a_{n} = {'0.0' if st.kind == 'sum' else '_T(-np.inf)'}" for n, st in stats]
                L.append(f"{inner}for j in range(C):")
                for n, st in stats:
                    v = self._call(st.term, 'e_', '_T', 'j', 'j', row='i')
                    if st.kind == "sum":
                        L.append(f"{inner}    a_{n} += fenced(_F({v}))")
                    else:  # NaN propagates, as in max64 and the copied tiles; in the compute dtype,
                        # as there (CategoricalHinge, 1e7 float32, alternating processes: 4.80 -> 4.39 ms)
                        L += [f"{inner}    v_{n} = {v}",
                              f"{inner}    a_{n} = {_larger(f'v_{n}', f'a_{n}')}"]
                for n, st in stats:
                    L += ([f"{inner}st_{n}[i] = a_{n}", f"{inner}st_{n}_T[i] = _T(a_{n})"] if st.kind == "sum" else
                          [f"{inner}st_{n}[i] = _F(a_{n})", f"{inner}st_{n}_T[i] = a_{n}"])
        if tree:
            (stats,) = self.p.passes
            L += [f"{ind}e0 = r0 * C"]
            L += [f"{ind}{e}_v = {e}_flat[e0:e0 + nt * C]" for e in self.elements]
            # whether a maximum's values hold NaN, found in the loop that writes them (an or
            # of compares, vectorised) so that the trees of tiles without one take plain maxima
            L += [f"{ind}nan_{n} = False" for n, st in stats if st.kind == "max"]
            L.append(f"{ind}for q in range(nt * C):")
            for n, st in stats:
                v = self._call(st.term, 'e_', '_T', 'q', None)
                if st.kind == "sum":
                    L.append(f"{inner}tb_{n}[q] = {v}")
                else:
                    L += [f"{inner}v_{n} = {v}", f"{inner}tb_{n}[q] = v_{n}", f"{inner}nan_{n} |= v_{n} != v_{n}"]
            L.append(f"{ind}for i0 in range(0, nt, LANES):")
            L += [f"{inner}row_sums16(tb_{n}, i0 * C, C, st_{n}, i0)" if st.kind == "sum" else
                  f"{inner}row_maxima16(tb_{n}, i0 * C, C, st_{n}, i0, nan_{n})" for n, st in stats]
        if self.p.sparse:
            # the labels first, in a loop of their own (state 0: a class, 1: ignore_class,
            # 2: outside [0, C), never read), then the finish over the tile's rows, which
            # vectorises (its float64 logs), then the sums (SCCE from probabilities, 1e7
            # elements, 2 threads: 20.3 ms with all three in one scalar loop, 12.3 ms split)
            L += self.tile_labels(ind)
        fin = self._call(self.p.finish, "f_", "_F", None, None, row="i", row_labels=self.p.sparse)
        # finish values in a loop of their own (it vectorises where the finish does)
        L += [f"{ind}for i in range(nt):", f"{inner}vals[i] = {fin}"]
        # one kernel for both kinds of call: per-row values where ``out`` has the rows, else
        # the weighted sums (the row and reduce kernels of a tile program were two compiles of
        # the same loops, ~1.5 s each: a cold test suite compiled 278 of them)
        if self.p.sparse:
            row = [f"{inner}    s_ = state[i]",
                   f"{inner}    valid = s_ != 1",
                   f"{inner}    val = vals[i] if s_ == 0 else (0.0 if s_ == 1 else np.nan)",
                   f"{inner}    bad += s_ >> 1"]
        else:
            row = [f"{inner}    valid = True", f"{inner}    val = vals[i]"]
        deeper = ["    " + x for x in row]
        if self.p.sparse:
            unit = [f"{inner}    for i in range(nt):", *deeper,
                    f"{inner}        wl[i] = val",
                    f"{inner}        one[i] = 1.0 if valid else 0.0",
                    f"{inner}    swl += sum64(wl, nt)",
                    f"{inner}    n_ = sum64(one, nt)",
                    f"{inner}    sw += n_",
                    f"{inner}    cnt += n_"]
        else:
            unit = [f"{inner}    swl += sum64(vals, nt)", f"{inner}    sw += _F(nt)", f"{inner}    cnt += _F(nt)"]
        # rows and weights are read through the tile's slices: indexed by ``r0 + i`` and
        # ``r * w_step`` (signed, wraparound-checked) these loops stayed scalar (generalized
        # CE without the power of its finish, 1e6 rows of 10 float32, 2 threads, the tile
        # kernel: 4.5 → 3.5 ms)
        L += [f"{ind}if store:",
              f"{inner}out_t = out[r0:r0 + nt]",
              f"{inner}for i in range(nt):",
              *row,
              f"{inner}    out_t[i] = val",
              f"{ind}else:",
              # unit weights (no sample_weight, the common call): the sum of the values and
              # the count of valid rows, with the bits of the weighted sums below (1·v is v;
              # a sum of ones is exact). CategoricalHinge at 1e7 float32, 2 threads, paired
              # with the weighted loop: 0.94 (0.92 for one thread in cache)
              f"{inner}if unit_w:",
              *unit,
              f"{inner}else:",
              # the tile's weighted values, weights and counts into buffers (a masked row
              # weighs 0), then added by sum64: added row by row into three float64 sums they
              # were chains of dependent adds. One core, in cache, ns per element, before /
              # after: generalized CE 0.89 / 0.74, SCCE 1.45 / 1.20, CCE 1.72 / 1.75; 1e7
              # elements, 2 threads, two runs each: generalized CE 6.6, 6.4 / 5.6, 5.2 ms,
              # SCCE 11.2, 9.6 / 8.5, 8.3, CCE 15.8, 14.4 / 12.7, 12.8
              f"{inner}    if w_step == 0:",
              f"{inner}        w0 = _F(w_arr[0])",
              f"{inner}        for i in range(nt):",
              f"{inner}            wv[i] = w0",
              f"{inner}    else:",
              f"{inner}        w_t = w_arr[r0:r0 + nt]",
              f"{inner}        for i in range(nt):",
              f"{inner}            wv[i] = _F(w_t[i])",
              f"{inner}    for i in range(nt):",
              *deeper,
              f"{inner}        w = wv[i] if valid else 0.0",
              f"{inner}        wl[i] = w * val",
              f"{inner}        wv[i] = w",
              f"{inner}        one[i] = 1.0 if valid else 0.0",
              f"{inner}    swl += sum64(wl, nt)",
              f"{inner}    sw += sum64(wv, nt)",
              f"{inner}    cnt += sum64(one, nt)",
              "        part[b, 0] = swl", "        part[b, 1] = sw", "        part[b, 2] = cnt",
              "        part[b, 3] = bad", "    return totals4(part)"]
        kind = "tile_direct" if direct else "tile_tree" if tree else "tile"
        head = f"def {kind}_{suffix}({self.array_args()}, out, w_arr, w_step{self.header()}{self.param_args()}):"
        alloc = ["    part = np.zeros((nb, 4))", "    store = out.shape[0] > 0",
                 "    unit_w = False", "    if w_step == 0:", "        unit_w = _F(w_arr[0]) == 1.0"]
        first = self.arrays[0]
        return "\n".join([
            f"@njit(parallel={parallel}, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')",
            head,
            f"    R = {first}.shape[0]",
            f"    C = {first}.shape[1]",
            self.param_setup("    ").rstrip("\n"),
            "    n_F = _F(C)",
            "    n_T = _T(C)",
            "    # rows per tile (a multiple of 32: whole vectors, unrolled 4 times, no scalar",
            "    # remainder) and per block (whole tiles)",
            "    tr = max(32, (TILE_ELEMS // max(C, 1)) // 32 * 32)",
            "    rpb = max(tr, (BLOCK // max(C, 1)) // tr * tr)",
            "    nb = (R + rpb - 1) // rpb",
            *alloc,
            *([f"    {e}_flat = {e}_arr.reshape(R * C)" for e in self.elements] if tree else []),
            *_runs_of_blocks(bufs, L),
        ]) + "\n"

    def chunk_kernels(self) -> str:
        """Pass k over (row, column-chunk) blocks; the caller combines chunks in order."""
        out = []
        done: list[str] = []
        for k, stats in enumerate(self.p.passes):
            names = [n for n, _ in stats]
            prev = "".join(f"        st_{n} = prev[r, {i}]\n" for i, n in enumerate(done))
            ind = " " * 8
            loop = self.pass_loop(k, ind, "r", "c0", "c1")
            store = "".join(f"        part[r, c, {i}] = st_{n}\n" for i, n in enumerate(names))
            out.append(
                f"@njit(parallel=True, fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
                f"def chunk_{k}({self.array_args()}, prev, chunk{self.param_args()}):\n"
                f"    R = {self.arrays[0]}.shape[0]\n"
                f"    C = {self.arrays[0]}.shape[1]\n"
                f"{self.param_setup('    ')}"
                f"    n_F = _F(C)\n"
                f"    n_T = _T(C)\n"
                f"    nc = (C + chunk - 1) // chunk\n"
                f"    part = np.zeros((R, nc, {len(names)}))\n"
                f"    for q in prange(R * nc):\n"
                f"        r = q // nc\n"
                f"        c = q % nc\n"
                f"        c0 = c * chunk\n"
                f"        c1 = min(C, c0 + chunk)\n"
                f"{self.buffers('        ')}"
                f"{prev}"
                f"{self.stats_decl_T(done, ind)}"
                f"{loop}"
                f"{store}"
                f"    return part\n"
            )
            done += names
        sets = "".join(f"        st_{n} = stats[r, {i}]\n" for i, n in enumerate(done))
        ind = " " * 8
        if self.p.sparse:
            body = "\n".join(self.label_branches("        ", "r", ["out[r] = 0.0", "valid[r] = False"],
                                                 ["out[r] = np.nan", "nbad += 1"])
                             + [f"            out[r] = {self._call(self.p.finish, 'f_', '_F', None, None)}"]) + "\n"
        else:
            body = f"        out[r] = {self._call(self.p.finish, 'f_', '_F', None, None)}\n"
        out.append(
            f"@njit(fastmath=FASTMATH, cache=True, nogil=True, error_model='numpy')\n"
            f"def chunk_finish({self.array_args()}, stats, out, valid{self.header()}{self.param_args()}):\n"
            f"    R = out.shape[0]\n"
            f"    C = {self.arrays[0]}.shape[1]\n"
            f"{self.param_setup('    ')}"
            f"    n_F = _F(C)\n"
            f"    nbad = 0\n"
            f"    for r in range(R):\n"
            f"{sets}"
            f"{body}"
            f"    return nbad\n"
        )
        del ind
        return "\n\n".join(out)

    def module(self) -> str:
        elem_terms: list[Term] = []
        for stats in self.p.passes:
            for _, st in stats:
                for t in st.term.callees() + [st.term]:
                    if t not in elem_terms:
                        elem_terms.append(t)
        fin_terms = self.p.finish.callees() + [self.p.finish]
        names = {t.name for t in elem_terms + fin_terms}
        parts = [
            f'"""Generated by gpuloss.kernels.numba.codegen for {self.p.name} ({self.dtype}). Do not edit."""',
            "import numpy as np",
            "from numba import njit, prange, float32, float64",
            _VOCAB_IMPORT,
            *(["from gpuloss.kernels.numba.vocab import power_folding as power"] if self.constants else []),
            *(["from gpuloss.kernels.numba.vocab import log_positive as log"] if self.positive_logs else []),
            f"_T = {self.dtype}",
            "_F = float64",
            f"FASTMATH = {sorted(FASTMATH)!r}",
            "FASTMATH = set(FASTMATH)",
            "from gpuloss.kernels.numba.accumulate import sum64, max64, totals2, totals4, fenced, plus_zero",
            "from gpuloss.kernels.numba.transpose import LANES, copy_columns, prefetch_lines, row_maxima16, "
            "row_sums16, share_lines",
            f"BUF = {BUF if _costly(elem_terms) else BUF_CHEAP}",
            f"BLOCK = {BLOCK}",
            f"FLAT_BLOCK = {FLAT_BLOCK}",
            f"TILE_ELEMS = {TILE_ELEMS}",
            f"BLOCK_RUNS = {BLOCK_RUNS}",
        ]
        # statistics that are the row maximum of an element, and the terms the kernels call by
        # the program's names that no other term calls (see _RowMaxExp)
        row_max = {(st.term.args[0], n) for stats in self.p.passes for n, st in stats
                   if st.kind == "max" and _identity(st.term) and st.term.args[0] in ELEMENT_NAMES}
        called = {c.name for x in elem_terms + fin_terms for c in x.callees()}
        by_name = {st.term.name for stats in self.p.passes for _, st in stats} - called
        parts += [_emit_term(t, "e_", "_T", names, row_max=row_max if t.name in by_name else set())
                  for t in elem_terms]
        if self.twin_active():
            # the target, and the element term again under "b_" with its inner term replaced
            target, inner, replacement = self.p.binary_twin
            (_, st), = self.p.passes[0]
            tchain = target.callees() + [target]
            parts += [_emit_term(t, "e_", "_T", names | {c.name for c in tchain}) for t in tchain
                      if t not in elem_terms]
            chain = list(dict.fromkeys(replacement.callees() + st.term.callees() + [st.term]))
            bnames = {t.name for t in chain}
            for t in chain:
                parts.append(_emit_term(replacement, "b_", "_T", bnames, name=inner.name) if t is inner
                             else _emit_term(t, "b_", "_T", bnames))
            parts.append(self.twin_off())
        if self.onehot_active():
            for t in dict.fromkeys(c for x in self.p.onehot_twin for c in x.callees() + [x]):
                if t not in elem_terms:
                    parts.append(_emit_term(t, "e_", "_T", names | {c.name for c in t.callees() + [t]}))
        parts += [_emit_term(t, "f_", "_F", names) for t in fin_terms]
        for suffix, par in (("par", True), ("ser", False)):
            parts.append(self.rows_kernel(suffix, par))
            parts.append(self.reduce_kernel(suffix, par))
            if self.p.flat_scale and not self.p.sparse:
                parts.append(self.flat_kernels(suffix, par))
            if tile_ok(self.p):
                parts.append(self.tile_kernel(suffix, par))
                if direct_ok(self.p) and not self.tree_active():  # tree kernels read those rows
                    parts.append(self.tile_kernel(suffix, par, direct=True))
                if self.tree_active():
                    parts.append(self.tile_kernel(suffix, par, tree=True))
        if self.p.passes:
            parts.append(self.chunk_kernels())
        return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"


def _runs_of_blocks(buffers: list[str], body: list[str]) -> list[str]:
    """A tile kernel's loop over its blocks: ``body`` the lines of one block (at the indentation
    of a ``for b in prange(nb)`` body, then the kernel's return), in BLOCK_RUNS runs of
    consecutive blocks, a run to a prange iteration, whose ``buffers`` (assignments of np.empty)
    are allocated once per run instead of once per block. Each block still writes its own
    partials, so the bits do not change. Allocated per block, a tile kernel at 1e7 made 1302
    blocks' buffers, 5 to 20 each: CategoricalHinge's tree kernel, 1e7 float32 in rows of 10,
    2 threads, paired against per-block buffers over 31, four rounds: 0.84-0.90 of the time
    (1e6: 0.95)."""
    *block, ret = "\n".join(body).split("\n")
    return ["    runs = min(nb, BLOCK_RUNS)",
            "    for run in prange(runs):",
            *["        " + x for x in buffers],
            "        for b in range(run * nb // runs, (run + 1) * nb // runs):",
            *["    " + x for x in block],
            ret]


def _larger(v: str, m: str) -> str:
    """The source of the new maximum of ``m`` and ``v``, NaN where either is (as tf.reduce_max
    and max64): v where it is larger or NaN, else m."""
    return f"{v} if ({v} > {m} or {v} != {v}) else {m}"


def _identity(t: Term) -> bool:
    """The term returns its one argument unchanged (``element``)."""
    body = t.tree.body
    return (len(t.args) == 1 and len(body) == 1 and isinstance(body[0], ast.Return)
            and isinstance(body[0].value, ast.Name) and body[0].value.id == t.args[0])


def _buffered(stat) -> bool:
    """A statistic of the copied tiles whose term values go through a buffer first: those whose
    term calls exp, log or another transcendental word (the rest are computed in the loop that
    takes the pass's statistics)."""
    return _costly(stat.term.callees() + [stat.term])


def _costly(terms: list[Term]) -> bool:
    """Some term calls a transcendental word of the vocabulary (see BUF_CHEAP)."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSCENDENTAL
               for t in terms for node in ast.walk(t.tree))


def tile_ok(program: RowProgram) -> bool:
    """The program has tile kernels: its element terms read no label (the tile computes every
    row's statistics before it looks at the row's label), and it has passes or sparse labels
    (without passes a tile only splits the labels, the finish and the sums into loops of
    their own, so that the finish vectorises: generalized crossentropy at 1e7 elements,
    2-core EPYC, 16 → 4.5 ms with its float64 power vectorised too)."""
    return (bool(program.passes) or program.sparse) and not any(
        a in ("label", "p_label") for stats in program.passes for _, st in stats
        for t in st.term.callees() + [st.term] for a in t.args)


def direct_ok(program: RowProgram) -> bool:
    """The program (one with tile kernels) has ``tile_direct`` kernels too: it has one statistic,
    reads two or more inputs and none of its pass terms calls a transcendental word (see
    _Gen.tile_kernel and DIRECT_MIN_C)."""
    return tile_ok(program) and sum(len(stats) for stats in program.passes) == 1 and not program.sparse \
        and len(program.elements) >= 2 \
        and not _costly([t for stats in program.passes for _, st in stats for t in st.term.callees() + [st.term]])


def tree_ok(program: RowProgram) -> bool:
    """The program has ``tile_tree`` kernels (see _Gen.tile_kernel) where its module allows
    (_Gen.tree_active): one pass of one sum and any maxima of terms without a transcendental
    call, dense labels, no check and no one-hot twin (figures at TREE_MIN_C)."""
    if not (tile_ok(program) and len(program.passes) == 1 and not program.sparse and program.check is None
            and program.onehot_twin is None):
        return False
    (stats,) = program.passes
    kinds = [st.kind for _, st in stats]
    return kinds.count("sum") == 1 and set(kinds) <= {"sum", "max"} and not any(_buffered(st) for _, st in stats)


def tile_fits(program: RowProgram, C: int) -> bool:
    """Rows of C elements suit the tile kernels (of a program with them, see tile_ok): short
    rows, or a program without passes (nothing to copy: the row length does not matter)."""
    return C <= TILE_MAX_C or not program.passes


#: Exponents that a module folds into its code where a parameter that is an exponent of
#: ``power`` takes one of them (see :func:`folded_constants`): the defaults of the losses. Each
#: value is a module of its own, compiled on first use, so the list stays short.
FOLDED_EXPONENTS = (0.5, 2.0)
_EXPONENT_PARAMS: dict[str, tuple[tuple[str, ...], bool]] = {}


def _constant_names(expr: ast.AST, params: set[str]) -> set[str] | None:
    """The parameters an expression of parameters and numbers reads (``gamma``, ``1 / norm``);
    None if it reads anything else."""
    names = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.Name):
            if node.id not in params:
                return None
            names.add(node.id)
        elif not isinstance(node, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.Load)):
            return None
    return names


def exponent_params(program: RowProgram) -> tuple[tuple[str, ...], bool]:
    """The program's parameters that the exponents of its ``power`` calls read (the focal
    losses' ``gamma``, generalized crossentropy's ``q``, the triplet loss's ``norm`` in
    ``1 / norm``), and whether every exponent is built from parameters and numbers alone;
    worked out once."""
    found = _EXPONENT_PARAMS.get(program.fingerprint)
    if found is None:
        params = set(program.param_names())
        names: set[str] = set()
        constant = True
        for t in program.terms:
            for node in ast.walk(t.tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "power":
                    read = _constant_names(node.args[1], params) if len(node.args) == 2 else None
                    constant = constant and read is not None
                    names |= read or set()
        found = (tuple(sorted(names)), constant)
        _EXPONENT_PARAMS[program.fingerprint] = found
    return found


def folded_constants(program: RowProgram, params) -> tuple[tuple[str, float], ...]:
    """(name, value) of the exponent parameters, where every exponent of the program's powers is
    built from them and each takes one of FOLDED_EXPONENTS in ``params`` (else nothing is
    folded). The module of these values writes them into its kernels as constants and calls
    ``power_folding``, whose tests of the exponent LLVM then resolves at compile time:
    ``(1 - p)**2`` of the focal losses becomes a square, ``p**0.5`` of generalized crossentropy
    a square root, both correctly rounded (exp(y log x) was within a few ulp). With a runtime
    exponent those tests stay in the loop and slow it down (see kernels/numba/vocab.py): such
    modules keep the general power."""
    names, all_named = exponent_params(program)
    if not names or not all_named:
        return ()
    values = [params.get(n) for n in names]
    out = tuple((n, float(v)) for n, v in zip(names, values)
                if v is not None and not isinstance(v, np.ndarray) and float(v) in FOLDED_EXPONENTS)
    return out if len(out) == len(names) else ()


def positive_logs(program: RowProgram, params) -> bool:
    """Whether the program's ``log`` calls can take ``log_positive`` (kernels/numba/vocab.py)
    for these parameter values: the program names the parameter that keeps its log arguments
    positive (``RowProgram.log_floor``) and its value lies in [2^-24, 0.5]: a normal number
    whose ``1 - floor`` rounds below 1 even in float32 (Keras 3's ``log(1 - q)`` of a q
    clipped to [ε, 1 - ε] stays positive). Keras's default ε = 1e-7 does; ε = 0 does not
    (the crossentropies' logs meet 0 and must give -inf)."""
    if program.log_floor is None:
        return False
    v = params.get(program.log_floor)
    if v is None or isinstance(v, np.ndarray):
        return False
    return bool(2.0**-24 <= float(v) <= 0.5)


def module_source(program: RowProgram, dtype: str, column_params: tuple[str, ...] = (),
                  constants: tuple[tuple[str, float], ...] = (), positive_logs: bool = False) -> str:
    """The kernels of ``program`` for compute dtype ``dtype`` ("float32" or "float64");
    ``constants`` as from :func:`folded_constants`; ``positive_logs`` as from
    :func:`positive_logs`."""
    for t in program.terms + program.twin_terms:
        check_term(t)  # the CPU backend accepts only what every backend can translate
    return _Gen(program, dtype, column_params, constants, positive_logs).module()

"""Kernel paths: the same numbers from every path, the same bits for any thread count."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

import gpuloss
from gpuloss.kernels import numba as K
from gpuloss.kernels.numba import codegen
from gpuloss.losses.probabilistic import element as codegen_element
from gpuloss.program import term

rng = np.random.default_rng(3)


def _bits(x):
    return np.asarray(x).tobytes()


@pytest.mark.parametrize("make,shape", [
    (lambda: gpuloss.MeanSquaredError(), (300_001, 1)),
    (lambda: gpuloss.BinaryCrossentropy(from_logits=True), (100_003, 3)),
    (lambda: gpuloss.CategoricalCrossentropy(from_logits=True), (4_001, 37)),
    (lambda: gpuloss.SparseCategoricalCrossentropy(from_logits=True), (4_001, 37)),
    (lambda: gpuloss.CosineSimilarity(), (2, 200_000)),
    (lambda: gpuloss.MeanSquaredError(), (1, 1_000_003)),
])
def test_same_bits_for_any_thread_count(make, shape):
    loss = make()
    p = rng.standard_normal(shape).astype(np.float32)
    if isinstance(loss, gpuloss.SparseCategoricalCrossentropy):
        y = rng.integers(0, shape[1], size=shape[0])
    else:
        y = rng.random(shape).astype(np.float32)
    w = rng.random(shape[0]).astype(np.float32)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append((_bits(loss(y, p)), _bits(loss(y, p, sample_weight=w))))
            results.append((_bits(loss(y, p)), _bits(loss(y, p, sample_weight=w))))
    finally:
        numba.set_num_threads(before)
    assert all(r == results[0] for r in results)


def _reference_rows_cce(y, x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return -(y * (x - lse[:, None])).sum(axis=1)


def test_column_chunked_rows_match_row_local():
    # few very long rows go through the chunked kernels; compare with float64 math
    C = codegen.CHUNK_MIN_COLS * 2 + 5
    x = rng.standard_normal((3, C)).astype(np.float32) * 4
    y = np.zeros((3, C), np.float32)
    y[np.arange(3), rng.integers(0, C, 3)] = 1
    assert K._use_chunks(gpuloss.losses.probabilistic.CCE_LOGITS, 3, C)
    got = gpuloss.categorical_crossentropy(y, x, from_logits=True)
    np.testing.assert_allclose(got, _reference_rows_cce(y, x), rtol=1e-6)
    labels = y.argmax(axis=1)
    np.testing.assert_allclose(gpuloss.sparse_categorical_crossentropy(labels, x, from_logits=True),
                               _reference_rows_cce(y, x), rtol=1e-6)
    np.testing.assert_allclose(gpuloss.CategoricalCrossentropy(from_logits=True)(y, x),
                               _reference_rows_cce(y, x).mean(), rtol=1e-6)


def test_flat_and_row_paths_agree():
    y = rng.random((50_000, 4)).astype(np.float32)
    p = rng.random((50_000, 4)).astype(np.float32)
    ref = ((p.astype(np.float64) - y) ** 2).mean(axis=1)
    np.testing.assert_allclose(gpuloss.MeanSquaredError()(y, p), ref.mean(), rtol=1e-7)  # flat
    w = rng.random(50_000)
    np.testing.assert_allclose(gpuloss.MeanSquaredError()(y, p, sample_weight=w), (w * ref).mean(), rtol=1e-7)
    yF, pF = np.asfortranarray(y), np.asfortranarray(p)  # row kernels on strided rows
    np.testing.assert_allclose(gpuloss.MeanSquaredError()(yF, pF), ref.mean(), rtol=1e-7)


@pytest.mark.parametrize("n", [1, 7, K.SERIAL_BELOW - 1, K.SERIAL_BELOW + 1, 10 * codegen.BLOCK + 3,
                               3 * codegen.FLAT_BLOCK + 5])
def test_serial_and_parallel_sizes(n):
    y = rng.random((n, 1)).astype(np.float32)
    p = rng.random((n, 1)).astype(np.float32)
    ref = np.abs(p.astype(np.float64) - y).mean()
    np.testing.assert_allclose(gpuloss.MeanAbsoluteError()(y, p), ref, rtol=1e-6)
    np.testing.assert_allclose(gpuloss.MeanAbsoluteError(reduction="none")(y, p), np.abs(p - y)[:, 0], rtol=1e-6)


def test_precision_at_ten_million_elements():
    y = rng.random(10_000_000).astype(np.float32)
    p = rng.random(10_000_000).astype(np.float32)
    ref = float(np.mean((p.astype(np.float64) - y) ** 2))
    np.testing.assert_allclose(float(gpuloss.mean_squared_error(y, p)), ref, rtol=1e-6)


def test_generated_sources_are_valid_python_for_every_registered_program():
    import ast

    for program in _programs():
        for dtype in ("float32", "float64"):
            ast.parse(codegen.module_source(program, dtype))


def _programs():
    seen = {}
    import gpuloss.losses as fam

    for mod in (fam.regression, fam.probabilistic, fam.hinge, fam.similarity, fam.segmentation,
                fam.metric_learning):
        for v in vars(mod).values():
            items = v.values() if isinstance(v, dict) else [v]
            for it in items:
                if isinstance(it, gpuloss.program.RowProgram):
                    seen[it.fingerprint] = it
    return list(seen.values())


# each case compiles its parallel kernels from cold in CI, so a few representative ones
@pytest.mark.parametrize("make,order", [(lambda: gpuloss.MeanSquaredError(), "C"),
                                        (lambda: gpuloss.Hinge(), "F"),
                                        (lambda: gpuloss.BinaryCrossentropy(from_logits=True), "F"),
                                        (lambda: gpuloss.CategoricalCrossentropy(), "C"),
                                        (lambda: gpuloss.SparseCategoricalCrossentropy(), "C")],
                         ids=["mse-C", "hinge-F", "bce-F", "cce-C", "scce-C"])
def test_reduced_call_allocates_no_input_sized_temporary(make, order):
    import tracemalloc

    loss = make()
    p = np.asarray(rng.random((1_000_000, 8)), dtype=np.float32, order=order)
    y = rng.integers(0, 8, 1_000_000) if isinstance(loss, gpuloss.SparseCategoricalCrossentropy) else \
        np.asarray((rng.random((1_000_000, 8)) < 0.5), dtype=np.float32, order=order)
    w = rng.random(1_000_000).astype(np.float32)
    loss(y, p, sample_weight=w)  # compile both variants before measuring
    loss(y, p)
    tracemalloc.start()
    try:
        loss(y, p)
        loss(y, p, sample_weight=w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a fixed ~0.2 MB of Python objects and block partials, whatever the size
    assert peak <= 0.01 * (p.nbytes + y.nbytes), f"peak extra memory {peak} bytes"


@term
def _negated(p):
    return -p


@term
def _exp_of_difference(p, m):
    return exp(p - m)  # noqa: F821 - a vocabulary word, resolved by the code generators


@term
def _swapped(p, m):
    return _exp_of_difference(m, p)


@term
def _log_of(e):
    return log(e)  # noqa: F821


def test_exp_of_an_element_less_its_row_maximum_drops_the_overflow_clamp():
    """exp(x - m) with m the row maximum of x itself becomes exp_nonpositive in the terms the
    kernels call by the program's names; a maximum of another function of x, or a term reached
    through another term (which may bind its names otherwise), keeps exp. The copied tiles of
    float32 take their row sums in float32, the exp term computed where it is added, and copy
    them to float64 for the finish; those of float64 fill a buffer of the terms first."""
    from gpuloss.losses import probabilistic as P
    from gpuloss.program import Max, RowProgram, Sum

    def calls(src, word):
        return [line.strip() for line in src.splitlines() if f"{word}(" in line and "import" not in line]

    for program in (P.CCE_LOGITS, P.SCCE_LOGITS, P.CFCE_LOGITS):
        src = codegen.module_source(program, "float32")
        assert calls(src, "exp_nonpositive") and not calls(src, " exp"), program.name
    own = codegen.module_source(RowProgram("own_max", ("p",), ((("m", Max(codegen_element)),),
                                                               (("e", Sum(_exp_of_difference)),)), _log_of), "float32")
    assert calls(own, "exp_nonpositive") == ["return exp_nonpositive(p - m)"]
    for first, second in ((_negated, _exp_of_difference), (codegen_element, _swapped)):
        other = codegen.module_source(RowProgram("other", ("p",), ((("m", Max(first)),), (("e", Sum(second)),)),
                                                 _log_of), "float32")
        assert not calls(other, "exp_nonpositive") and calls(other, "exp"), (first.name, second.name)
    cce = codegen.module_source(P.CCE_LOGITS, "float32")
    tile = cce[cce.index("def tile_ser"):]
    assert "st_m[i] = _F(st_m_T[i])" in tile and "st_e[i] = _F(st_e_T[i])" in tile
    assert "st_e_T[i] += e_shifted_exp(" in tile and "tv_e[i] =" not in tile
    cce64 = codegen.module_source(P.CCE_LOGITS, "float64")
    tile64 = cce64[cce64.index("def tile_ser"):]
    assert "tv_e[i] = e_shifted_exp(" in tile64 and "st_e_T[i] += tv_e[i]" in tile64


def test_terms_outside_the_vocabulary_are_rejected():
    from gpuloss.program import elementwise, term

    @term
    def uses_numpy(t, p):
        return np.tanh(p - t)

    with pytest.raises(TypeError, match="not in the vocabulary"):
        codegen.module_source(elementwise(uses_numpy), "float32")


@pytest.mark.parametrize("where", ["none", "first", "middle", "last", "nan"])
@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
def test_hinge_label_scan_sees_every_label(where, layout):
    """Hinge converts {0, 1} labels only if all are 0/1: the parallel scan that stops early must
    still find a single non-binary label anywhere, in any memory layout (300k labels: blocks on
    both threads)."""
    rng = np.random.default_rng(7)
    y = (rng.random((100_000, 3)) > 0.5).astype(np.float32)
    p = rng.standard_normal((100_000, 3)).astype(np.float32)
    spot = {"first": 0, "middle": y.size // 2, "last": y.size - 1, "nan": y.size // 3}.get(where)
    if spot is not None:
        y.reshape(-1)[spot] = np.nan if where == "nan" else 2.0
    if layout == "fortran":
        y, p = np.asfortranarray(y), np.asfortranarray(p)
    elif layout == "strided":
        y, p = np.repeat(y, 2, axis=1)[:, ::2], np.repeat(p, 2, axis=1)[:, ::2]
    y64, p64 = y.astype(np.float64), p.astype(np.float64)
    signed = 2 * y64 - 1 if where == "none" else y64
    want = np.maximum(1 - signed * p64, 0).mean(axis=-1)
    got = gpuloss.hinge(y, p)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if where == "nan":
        assert np.isnan(got.reshape(-1)[spot // 3])


_TILE_PARAMS = {"epsilon": 1e-7, "one_minus_epsilon": 1 - 1e-7, "label_smoothing": 0.1, "gamma": 2.0,
                "alpha": 0.25, "norm": 2.0, "margin": 1.0, "norm_floor": 1e-12, "label_classes": 4.0, "q": 0.7}


def _tile_cases():
    """One program of each shape the tile kernels meet (each case compiles four kernels from
    cold in CI, so not every program): max then online sums, a sparse program, two passes
    with per-column parameters, sum + max in one pass, three sums, three inputs, no pass, one
    sum with a direct kernel (float64: its terms' products must not fuse into the row sums)."""
    from gpuloss.losses import hinge as H, metric_learning as M, probabilistic as P, regression as Rg
    from gpuloss.losses import similarity as S

    return [(P.CCE_LOGITS, (), "float32"), (P.SCCE_LOGITS, (), "float32"), (P.CFCE_PROBS, ("alpha",), "float32"),
            (H.CATEGORICAL_HINGE, (), "float32"), (S.COSINE, (), "float64"), (M.TRIPLET, (), "float32"),
            (P.GCE, (), "float64"), (Rg.MSE, (), "float64")]


@pytest.mark.parametrize("program,colp,dtype", _tile_cases(), ids=lambda v: getattr(v, "name", None) or str(v))
def test_tile_kernels_agree_with_row_kernels(program, colp, dtype):
    """The tile kernels (short rows, transposed tiles) against the row kernels on the same
    inputs: partial tiles, several blocks, strided and Fortran views, NaN and inf elements, and
    for sparse programs bad and ignored labels (the parallel kernels are the same code in a
    prange: test_same_bits_for_any_thread_count and the API tests run them)."""
    r = np.random.default_rng(11)
    assert codegen.tile_ok(program)
    for C, R, layout in ((1, 4001, "c"), (3, 1001, "strided"), (10, 5003, "c"), (16, 2999, "fortran")):
        arrays = {}
        for e in (("p",) if program.sparse else program.elements):
            a = r.uniform(0.05, 1.0, (R, C)) if "logits" not in program.name else r.normal(0, 3, (R, C))
            a[R // 3, 0] = np.nan
            a[R // 2, C - 1] = np.inf if "logits" in program.name else 0.5
            if layout == "strided":
                a = np.repeat(a, 2, axis=1)[:, ::2]
            elif layout == "fortran":
                a = np.asfortranarray(a)
            arrays[e] = a.astype(dtype)
        labels = None
        if program.sparse:
            labels = r.integers(0, C, R)
            labels[1], labels[2] = -1, C  # out of range: NaN rows, counted
        params = {k: _TILE_PARAMS[k] for k in program.param_names()}
        for c in colp:
            params[c] = r.uniform(0.1, 0.9, C)
        mod = K.kernel_module(program, dtype, K._column_params(params))
        pv = K._param_values(program, params)
        arrs = K.kernel_arrays(program, arrays, labels)
        sp = K._sparse_args(program, 0 if program.sparse else None)  # label 0 ignored
        want_rows, got_rows = np.empty(R, dtype), np.empty(R, dtype)
        # the serial twins: the same generated code without prange, a quarter of the compile time
        unit = K.UNIT_WEIGHTS[dtype]
        assert mod.rows_ser(*arrs, want_rows, *sp, *pv) == mod.tile_ser(*arrs, got_rows, unit, 0, *sp, *pv)[3]
        rtol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got_rows, want_rows, rtol=rtol, atol=rtol, equal_nan=True,
                                   err_msg=f"{program.name} C={C}")
        assert np.isnan(got_rows).any()
        w = r.random(R)
        for weights, step in ((unit, 0), (w, 1)):
            a = np.array(mod.reduce_ser(*arrs, weights, step, *sp, *pv))
            b = np.array(mod.tile_ser(*arrs, np.empty(0, dtype), weights, step, *sp, *pv))
            np.testing.assert_allclose(b, a, rtol=rtol, equal_nan=True, err_msg=f"{program.name} C={C}")
            if codegen.direct_ok(program) and layout == "c":
                # rows summed in place: the same sums in the same order as the copied tiles
                d = np.array(mod.tile_direct_ser(*arrs, np.empty(0, dtype), weights, step, *sp, *pv))
                np.testing.assert_array_equal(d, b, err_msg=f"{program.name} C={C}")
        # unit weights skip the weighted loop (the values' sum and the count of valid rows):
        # the same bits as a weight of one per row through it, ignored and bad rows included
        ones = np.ones(R)
        np.testing.assert_array_equal(np.array(mod.tile_ser(*arrs, np.empty(0, dtype), unit, 0, *sp, *pv)),
                                      np.array(mod.tile_ser(*arrs, np.empty(0, dtype), ones, 1, *sp, *pv)),
                                      err_msg=f"{program.name} C={C}")
        if codegen.direct_ok(program) and layout == "c":
            direct_rows = np.empty(R, dtype)
            assert mod.tile_direct_ser(*arrs, direct_rows, unit, 0, *sp, *pv)[3] == 0
            np.testing.assert_array_equal(direct_rows, got_rows, err_msg=f"{program.name} C={C}")
        if hasattr(mod, "tile_tree_ser") and layout == "c":
            # rows reduced by shuffles: the same float64 sums in another order, the same maxima
            tree_rows = np.empty(R, dtype)
            assert mod.tile_tree_ser(*arrs, tree_rows, unit, 0, *sp, *pv)[3] == 0
            np.testing.assert_allclose(tree_rows, want_rows, rtol=rtol, atol=rtol, equal_nan=True,
                                       err_msg=f"{program.name} C={C}")
            assert np.array_equal(np.isnan(tree_rows), np.isnan(want_rows))
            for weights, step in ((unit, 0), (w, 1)):
                np.testing.assert_allclose(
                    np.array(mod.tile_tree_ser(*arrs, np.empty(0, dtype), weights, step, *sp, *pv)),
                    np.array(mod.reduce_ser(*arrs, weights, step, *sp, *pv)), rtol=rtol, equal_nan=True,
                    err_msg=f"{program.name} C={C}")


def test_short_rows_run_the_tile_kernels():
    from gpuloss.losses import probabilistic as P

    assert K._use_tiles(P.CCE_LOGITS, 10) and K._use_tiles(P.SCCE_LOGITS, codegen.TILE_MAX_C)
    assert not K._use_tiles(P.CCE_LOGITS, codegen.TILE_MAX_C + 1)
    assert K._use_tiles(P.GCE, 10) and K._use_tiles(P.GCE, 1000)  # no pass: no tile to copy, any row length


def test_rows_of_cheap_terms_run_the_direct_tiles_where_contiguous():
    from gpuloss.losses import hinge as H, probabilistic as P, regression as Rg

    assert codegen.direct_ok(Rg.MSE)
    assert not codegen.direct_ok(H.CATEGORICAL_HINGE)  # two statistics: the copied tile is faster
    assert not codegen.direct_ok(P.CCE_LOGITS)  # exp in its terms
    assert not codegen.direct_ok(P.SCCE_PROBS)  # one input: the copied tile is faster
    bound = K.bind(Rg.MSE, "float64", {})  # float32 rows run the tree kernels (below)
    y = np.zeros((500, 10), np.float32)
    c, f = {"t": y, "p": y}, {"t": np.asfortranarray(y), "p": np.asfortranarray(y)}
    assert K.rows_contiguous(bound, c) and not K.rows_contiguous(bound, f)
    kernel = {True: bound.module.tile_direct_ser, False: bound.module.tile_ser}
    for C in (codegen.DIRECT_MIN_C - 1, codegen.DIRECT_MIN_C, codegen.TILE_MAX_C):
        for row_major in (True, False):
            route = K.reduce_route(bound, 100, C, False, 0, None, row_major)
            assert route.kernel is kernel[row_major and C >= codegen.DIRECT_MIN_C], (C, row_major)


def test_float32_rows_of_one_cheap_sum_run_the_tree_tiles_where_c_contiguous():
    from gpuloss.losses import hinge as H, probabilistic as P, regression as Rg, similarity as S

    assert codegen.tree_ok(H.CATEGORICAL_HINGE) and codegen.tree_ok(Rg.MSE) and codegen.tree_ok(Rg.HUBER)
    assert not codegen.tree_ok(S.COSINE)  # three sums: the copied tile is faster
    assert not codegen.tree_ok(P.KLD)  # a log in its term
    assert not codegen.tree_ok(P.CCE_LOGITS)  # two passes
    assert not codegen.tree_ok(H.HINGE)  # a check of its labels
    assert not hasattr(K.bind(Rg.MSE, "float64", {}).module, "tile_tree_ser")  # float32 maxima
    for program in (H.CATEGORICAL_HINGE, Rg.MSE):
        bound = K.bind(program, "float32", {})
        assert not hasattr(bound.module, "tile_direct_ser")  # the tree reads those rows
        y = np.zeros((500, 10), np.float32)
        arrays = {e: y for e in program.elements}
        assert K.rows_contiguous(bound, arrays)
        for other in (np.asfortranarray(y), np.zeros((500, 20), np.float32)[:, ::2]):
            assert not K.rows_contiguous(bound, {**arrays, program.elements[-1]: other})
        for C in (codegen.TREE_MIN_C - 1, codegen.TREE_MIN_C, codegen.TILE_MAX_C):
            for row_major in (True, False):
                route = K.reduce_route(bound, 100, C, False, 1, None, row_major)
                tree = row_major and C >= codegen.TREE_MIN_C
                assert route.kernel is (bound.module.tile_tree_ser if tree else bound.module.tile_ser), (C, row_major)


@pytest.mark.parametrize("name", ["categorical_hinge", "mean_squared_error", "mean_absolute_error", "huber"])
def test_tree_tiles_match_the_float64_reference(name):
    """Calls that run the tree tiles (float32, C-contiguous rows of 8 to 16, above and below
    the serial limit) against the spec's float64 reference: per-row values with NaN, inf and
    negative predictions, and weighted means."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference as ref

    r = np.random.default_rng(5)
    for C, R in ((8, 301), (10, 20011), (16, 99)):
        t = (r.random((R, C)) < 0.3).astype(np.float32) if name == "categorical_hinge" else \
            r.normal(0, 2, (R, C)).astype(np.float32)
        p = r.normal(0, 2, (R, C)).astype(np.float32)
        p[R // 3, C // 2] = np.nan
        p[R // 2, C - 1] = np.inf
        t[R // 2, C - 1] = 0
        with np.errstate(invalid="ignore"):  # inf - inf in the reference
            want = np.asarray(ref.REFERENCES[name](t, p), np.float64)
        got = getattr(gpuloss, name)(t, p)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, equal_nan=True, err_msg=f"{name} C={C}")
        assert np.array_equal(np.isnan(got), np.isnan(want))
        w = r.random(R).astype(np.float32)
        keep = ~np.isnan(want) & np.isfinite(want)
        cls = {"categorical_hinge": gpuloss.CategoricalHinge, "mean_squared_error": gpuloss.MeanSquaredError,
               "mean_absolute_error": gpuloss.MeanAbsoluteError, "huber": gpuloss.Huber}[name]
        got_mean = float(cls()(t[keep], p[keep], sample_weight=w[keep]))
        np.testing.assert_allclose(got_mean, (want[keep] * w[keep]).sum() / keep.sum(), rtol=2e-6)


@pytest.mark.parametrize("layout", ["tree", "copied", "rows", "chunks", "float64"])
def test_maxima_propagate_nan(layout):
    """A NaN term of a maximum makes it NaN (spec §7, tf.reduce_max) in every CPU kernel, also
    where no sum meets a NaN: CategoricalHinge's (1 - y)·p of y = 1 and p = inf is NaN while
    its y·p is inf, and Keras's row is NaN. A NaN that is not in a row's last lane, and rows
    without one, against the float64 reference."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference as ref

    R, C = {"chunks": (4, codegen.CHUNK_MIN_COLS), "rows": (40, 40)}.get(layout, (40, 10))
    r = np.random.default_rng(3)
    t = np.zeros((R, C), np.float32)
    t[np.arange(R), r.integers(0, C, R)] = 1
    p = r.random((R, C)).astype(np.float32)
    for row, col in ((1, 0), (2, C // 2), (R - 1, C - 1)):
        t[row] = 0
        t[row, col] = 1
        p[row, col] = np.inf
    if layout == "copied":
        t, p = np.asfortranarray(t), np.asfortranarray(p)
    elif layout == "float64":
        t, p = t.astype(np.float64), p.astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = ref.categorical_hinge(t, p)
    got = gpuloss.categorical_hinge(t, p)
    assert np.isnan(want[[1, 2, R - 1]]).all() and np.isnan(want).sum() == 3
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert np.isnan(float(gpuloss.CategoricalHinge()(t, p)))


def test_weighted_unweighted_and_per_row_calls_share_one_compiled_tile_kernel():
    """Unit weights, scalar weights and float32 weight arrays reach the kernel as one argument
    type, read-only inputs as writable ones, and rows and reduced calls run the same tile
    kernel: one compiled signature serves all eight calls (each further one costs ~1.5 s of
    compile on a first call). In a process of its own, so that other tests' signatures do
    not count."""
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, numpy as np, gpuloss
        from gpuloss.kernels import numba as K
        from gpuloss.losses import probabilistic as P
        r = np.random.default_rng(3)
        y = np.eye(7, dtype=np.float32)[r.integers(0, 7, 301)]
        p = r.dirichlet(np.ones(7), 301).astype(np.float32)
        y_ro, p_ro, w_ro = y.copy(), p.copy(), np.full(301, 0.5, np.float32)
        for a in (y_ro, p_ro, w_ro):
            a.flags.writeable = False  # as JAX arrays and Arrow-backed columns arrive
        loss = gpuloss.CategoricalCrossentropy()
        calls = [float(loss(y, p)), float(loss(y, p, sample_weight=0.5)),
                 float(loss(y, p, sample_weight=np.full(301, 0.5, np.float32))),
                 float(loss(y, p, sample_weight=np.full((301, 1), 0.5, np.float32))),
                 float(gpuloss.CategoricalCrossentropy(reduction="none")(y, p).mean()),
                 float(loss(y_ro, p_ro, sample_weight=w_ro)),
                 float(loss(y_ro, p_ro)), float(loss(y_ro, p_ro))]  # the second: a repeated call
        print(json.dumps([calls, len(K.kernel_module(P.CCE_PROBS, "float32", positive_logs=True).tile_ser.signatures)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    calls, n_signatures = json.loads(out)
    values = np.array(calls)
    np.testing.assert_allclose(values[[1, 2, 3, 5]], 0.5 * values[0], rtol=1e-6)
    np.testing.assert_allclose(values[[4, 6, 7]], values[0], rtol=1e-6)
    assert int(n_signatures) == 1, out


def test_default_exponents_are_folded_into_their_modules():
    """γ = 2 of the focal losses and q = 0.5 of generalized crossentropy are written as constants
    into the module of their threaded kernels; other values, programs without such a parameter
    and the serial kernels keep the general module. Both modules give the same values (BFCE
    rows, predictions beyond [0, 1] too: the focal factor of a negative base)."""
    from gpuloss.losses import metric_learning as M, probabilistic as P

    bfce = P.BFCE["keras2", False]
    params = {"epsilon": 1e-7, "one_minus_epsilon": 1 - 1e-7, "label_smoothing": 0.0, "gamma": 2.0}
    assert codegen.exponent_params(bfce) == (("gamma",), True)
    assert codegen.exponent_params(P.CCE_PROBS) == ((), True)
    assert codegen.exponent_params(M.TRIPLET) == (("norm",), True)  # power(d, norm), power(dp, 1 / norm)
    assert codegen.folded_constants(M.TRIPLET, {"norm": 2.0, "margin": 1.0}) == (("norm", 2.0),)
    assert codegen.folded_constants(M.TRIPLET, {"norm": 3.0, "margin": 1.0}) == ()
    assert codegen.folded_constants(bfce, params) == (("gamma", 2.0),)
    assert codegen.folded_constants(bfce, {**params, "gamma": 2.5}) == ()
    assert codegen.folded_constants(P.GCE, {"q": 0.5}) == (("q", 0.5),)
    bound = K.bind(bfce, "float32", params)
    folded, general = bound.kernels("par"), bound.kernels("ser")
    assert general is K.kernel_module(bfce, "float32", positive_logs=True) and K.bind(
        bfce, "float32", {**params, "gamma": 2.5}).kernels(
        "par") is general  # small calls, and other exponents, run the general module
    assert "power_folding" in Path(folded.__file__).read_text()
    assert "power_folding" not in Path(general.__file__).read_text()
    t = (rng.random(5000) < 0.5).astype(np.float32)
    p = rng.uniform(-0.3, 1.3, 5000).astype(np.float32)
    got, want = np.empty(5000, np.float32), np.empty(5000, np.float32)
    pv = K._param_values(bfce, params)
    folded.flat_rows_ser(t, p, got, *pv)
    general.flat_rows_ser(t, p, want, *pv)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_logs_of_clipped_arguments_skip_the_special_cases_with_the_same_bits():
    """Programs whose log arguments Keras clips or floors (RowProgram.log_floor) call
    log_positive where ε lies in [2^-24, 0.5], which Keras's default does; the general log
    otherwise (ε = 0: the logs meet 0). On every kind of input, NaN, ±inf and predictions
    outside [0, 1] included, both modules give the same bits."""
    from gpuloss.losses import probabilistic as P, regression as G

    eps = {"epsilon": np.float32(1e-7), "one_minus_epsilon": np.float32(1 - 1e-7), "label_smoothing": 0.0}
    assert codegen.positive_logs(P.BCE["keras2"], eps)
    assert not codegen.positive_logs(P.BCE["keras2"], {**eps, "epsilon": 0.0})
    assert not codegen.positive_logs(P.BCE["keras2"], {**eps, "epsilon": 2.0**-30})  # 1 - ε rounds to 1
    assert not codegen.positive_logs(P.BCE["logits"], eps)
    assert not codegen.positive_logs(P.POISSON, eps)  # log(p + ε) of an unclipped p
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, 1e-38, 2.0, 1e30], np.float32)
    for program, params in ((P.BCE["keras2"], eps), (P.BCE["keras3"], eps), (P.KLD, eps), (G.MSLE, eps),
                            (P.BFCE["keras2", True], {**eps, "gamma": 1.5, "alpha": 0.25}),
                            (P.CCE_PROBS, eps), (P.CFCE_LOGITS, {**eps, "gamma": 1.5, "alpha": 0.25,
                                                                 "label_classes": 7.0})):
        shape = (997, 7)
        t = rng.uniform(-0.2, 1.2, shape).astype(np.float32)
        p = rng.uniform(-0.2, 1.2, shape).astype(np.float32)
        p.flat[::13] = np.resize(special, p.flat[::13].shape)
        t.flat[5::17] = np.resize(special, t.flat[5::17].shape)
        bound = K.bind(program, "float32", params)
        assert bound.positive_logs and "log_positive" in Path(bound.module.__file__).read_text()
        general = K.kernel_module(program, "float32", K._column_params(params))
        assert "log_positive" not in Path(general.__file__).read_text()
        pv = K._param_values(program, params)
        got, want = np.empty(shape[0], np.float32), np.empty(shape[0], np.float32)
        bound.module.rows_ser(t, p, got, *pv)
        general.rows_ser(t, p, want, *pv)
        assert np.isnan(want).any() and np.isfinite(want).any()
        assert _bits(got) == _bits(want), program.name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_power_folding_keeps_c_pow_semantics(dtype):
    """The folded exponents give C pow's special values (pow(-0, 0.5) = +0, pow(-inf, 0.5) =
    +inf, NaN for a negative base), other constant exponents the general power's (one compile
    per dtype: each exponent a constant of its own row)."""
    from gpuloss import vocab
    from gpuloss.kernels.numba.vocab import power_folding

    exponents = (2.0, 0.5, 1.0, 2.5, -1.0)
    assert set(codegen.FOLDED_EXPONENTS) <= set(exponents)
    c = numba.float32 if dtype == np.float32 else numba.float64

    @numba.njit
    def powers(v):
        out = np.empty((5, v.size), v.dtype)
        for i in range(v.size):
            out[0, i] = power_folding(v[i], c(2.0))
            out[1, i] = power_folding(v[i], c(0.5))
            out[2, i] = power_folding(v[i], c(1.0))
            out[3, i] = power_folding(v[i], c(2.5))
            out[4, i] = power_folding(v[i], c(-1.0))
        return out

    x = np.array([-np.inf, -2.0, -0.0, 0.0, 1e-30, 0.25, 1.0, 3.0, 1e30, np.inf, np.nan], dtype)
    got_all = powers(x)
    for y, got in zip(exponents, got_all):
        with np.errstate(over="ignore"):
            want = np.array([vocab.power(float(a), y) for a in x]).astype(dtype)
        # the general power is within about |y ln x| ulps (kernels/numba/fastmath64.py)
        ulps = 1 if y in codegen.FOLDED_EXPONENTS else 256
        np.testing.assert_allclose(got, want, rtol=ulps * np.finfo(dtype).eps, err_msg=f"y={y}")
        real = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[real]), np.signbit(want[real]), err_msg=f"y={y}")


def test_circle_kernel_matches_the_float64_reference():
    """The fused Circle rows (kernels/numba/pairwise.py) against the reference of the spec:
    rows without a positive (0), references apart from the batch with and without the
    diagonal removed, float32 and float64 inputs, and a batch above the serial limit (the
    threaded kernel). A NaN embedding makes every row that meets it NaN, as NumPy's
    log-sum-exp of the array code does (the reference leaves such rows out)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference as ref
    from gpuloss.kernels.numba import pairwise

    def normalised(b, d):
        e = rng.normal(size=(b, d))
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    labels = np.array([0, 1, 0, 2, 1, 3, 0])  # label 2 and 3: one row each, no positive
    emb = normalised(7, 5)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        for remove in (True, False):
            got = gpuloss.circle(labels, emb.astype(dtype), remove_diagonal=remove)
            want = ref.circle(labels, emb.astype(dtype), remove_diagonal=remove)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    assert gpuloss.circle(labels, emb)[3] == 0.0 and gpuloss.circle(labels, emb)[5] == 0.0
    ref_labels, ref_emb = np.array([1, 0, 0, 4]), normalised(4, 5)
    for remove in (True, False):
        kw = dict(ref_labels=ref_labels, ref_embeddings=ref_emb, remove_diagonal=remove, gamma=10.0, margin=0.25)
        np.testing.assert_allclose(gpuloss.circle(labels, emb, **kw), ref.circle(labels, emb, **kw), rtol=1e-12)
    # the kernel reads float32 and float64 embeddings as they are, each widened to float64 as
    # read; other dtypes (float16, integers) are converted to float64 first, and an array in
    # Fortran order is copied to C order
    for e, r in ((emb.astype(np.float32), ref_emb), (emb, ref_emb.astype(np.float32)),
                 (emb.astype(np.float16), ref_emb.astype(np.float16)), (np.asfortranarray(emb), ref_emb)):
        kw = dict(ref_labels=ref_labels, ref_embeddings=r)
        want = ref.circle(labels, e.astype(np.float64), ref_labels=ref_labels, ref_embeddings=r.astype(np.float64))
        got = gpuloss.circle(labels, e, **kw)  # y_pred's float dtype, rounded from float64
        np.testing.assert_allclose(got, want.astype(got.dtype), rtol=np.finfo(got.dtype).eps, atol=1e-12)
    big_labels, big = rng.integers(0, 9, 300), normalised(300, 16)
    assert big.shape[0] ** 2 >= pairwise.SERIAL_BELOW_PAIRS
    np.testing.assert_allclose(gpuloss.circle(big_labels, big), ref.circle(big_labels, big), rtol=1e-11)
    emb[4, 2] = np.nan
    assert np.isnan(gpuloss.circle(labels, emb)).all()


@pytest.mark.parametrize("path", ["keras2", "keras3"])
@pytest.mark.parametrize("focal", [False, True])
def test_binary_twin_gives_the_element_terms_bits(path, focal):
    """Binary crossentropy's one-log twin (RowProgram.binary_twin) against the same program
    without it: the same sums bit for bit for binary labels (with NaN, ±inf, 0 and 1 among the
    predictions), soft labels, and labels that turn soft part-way through a block (the chunk
    is redone with the element term, the rest of the block takes it alone); weighted too. The
    twin alone differs from the element term for a soft label, so the check is what keeps them
    equal."""
    import dataclasses

    from gpuloss.losses import probabilistic as P

    program = P.BFCE[path, False] if focal else P.BCE[path]
    plain = dataclasses.replace(program, binary_twin=None)
    params = {"epsilon": 1e-7, "one_minus_epsilon": 1 - 1e-7, "label_smoothing": 0.0, "gamma": 2.0}
    values = [params[n] for n in program.param_names()]
    twin_mod = K.kernel_module(program, "float32", positive_logs=True)
    plain_mod = K.kernel_module(plain, "float32", positive_logs=True)
    assert "twin_off" in vars(twin_mod) and "twin_off" not in vars(plain_mod)
    r = np.random.default_rng(3)
    N = 3 * codegen.FLAT_BLOCK + 1234
    p = r.random(N).astype(np.float32)
    p[:8] = [0, 1, np.nan, np.inf, -np.inf, 1e-30, 1 - 1e-8, 0.5]
    binary = (r.random(N) < 0.4).astype(np.float32)
    soft = r.random(N).astype(np.float32)
    mixed = binary.copy()
    mixed[codegen.FLAT_BLOCK + 5000] = 0.25  # one soft label in the second block's fifth chunk
    w = r.random(N).astype(np.float32)
    for t in (binary, soft, mixed):
        for weights, step in ((K.UNIT_WEIGHTS["float32"], 0), (w, 1)):
            for suffix in ("ser", "par"):
                got = getattr(twin_mod, f"flat_reduce_{suffix}")(t, p, weights, step, *values)
                want = getattr(plain_mod, f"flat_reduce_{suffix}")(t, p, weights, step, *values)
                assert np.array_equal(got, want, equal_nan=True), (program.name, suffix, step, got, want)
    assert np.isnan(twin_mod.flat_reduce_ser(binary, p, K.UNIT_WEIGHTS["float32"], 0, *values)[0])  # the NaN p
    q = np.nan_to_num(p, nan=0.5, posinf=1.0, neginf=0.0)
    off = twin_mod.twin_off  # the check itself: soft labels and NaN are found
    assert off(8, soft[:8], q[:8], np.float32(0)) and not off(8, binary[:8], q[:8], np.float32(0))
    assert off(1, np.array([np.nan], np.float32), q[:1], np.float32(0))
    # the twin itself is wrong for a soft label (so the sums above would differ without the check)
    name = program.passes[0][0][1].term.name
    e, b = getattr(twin_mod, f"e_{name}"), getattr(twin_mod, f"b_{name}")
    assert e(np.float32(0.25), np.float32(0.7), *_term_args(program, params)) != \
        b(np.float32(0.25), np.float32(0.7), *_term_args(program, params))
    assert e(np.float32(1.0), np.float32(0.7), *_term_args(program, params)) == \
        b(np.float32(1.0), np.float32(0.7), *_term_args(program, params))


def _term_args(program, params):
    """The element term's parameters after (t, p), as float32."""
    term = program.passes[0][0][1].term
    return [np.float32(params[a]) for a in term.args[2:]]



@term
def unconditional_sp(sp):
    return (sp == sp) | (sp != sp)


@term
def unconditional_e(e):
    return (e == e) | (e != e)


def _onehot_cases():
    from gpuloss.losses import probabilistic as P

    # zero_ok once per row (CCE) and at each zero label (per-class α); each case compiles about
    # ten kernels from cold in CI, so not every combination
    return [(P.CCE_PROBS, False), (P.CFCE_PROBS, True), (P.CFCE_LOGITS, True)]


def _onehot_rows(program, C, r):
    """One-hot labels and predictions over five blocks, with the rows that must fall back."""
    R = 5 * codegen.BLOCK // C + 37
    t = np.zeros((R, C), np.float32)
    t[np.arange(R), r.integers(0, C, R)] = 1
    p = (r.standard_normal((R, C)) * 3 if "logits" in program.name else r.uniform(0.01, 1, (R, C)))
    p = p.astype(np.float32)
    mid = R // 2
    p[mid, 0], p[mid + 7, C - 1] = np.nan, np.inf
    p[mid + 20] = 0  # a zero row sum (0/0) from probabilities, softmax of zeros from logits
    p[mid + 21] = -0.0
    if C > 1:
        p[mid + 22, :2] = [1.5, -1.5]  # a row sum of 0 with nonzero predictions
        t[R // 4, :2] = 1  # two ones
    t[R // 5] = 0  # all-zero labels
    t[R // 3, 0] = 0.25  # a soft label
    t[3 * R // 4, C - 1] = np.nan
    return t, p


@pytest.mark.parametrize("program,per_class", _onehot_cases(), ids=lambda v: getattr(v, "name", None) or str(v))
def test_onehot_twin_gives_the_element_terms_bits(program, per_class):
    """The categorical crossentropies' one-hot twin (RowProgram.onehot_twin: one term per row
    where the labels are one-hot) against the same program without it, bit for bit, per row
    (tile and row kernels) and reduced (the tiles' weighted sums), over several blocks: one-hot
    rows, and rows that must fall back to the element terms — a NaN, an inf, a zero or
    negative-zero row sum among the predictions, labels all 0, two 1s, a soft label, a NaN
    label, label smoothing, with per-class α an infinite α (every row then NaN, as in Keras),
    and an α of -0.0 (focal terms of -0.0, +0.0 once summed). The twin without its zero_ok
    condition gives other numbers on these rows (from probabilities an inf in a row whose label
    is elsewhere; an infinite α): the test sees the condition."""
    import dataclasses

    plain = dataclasses.replace(program, onehot_twin=None)
    unchecked = dataclasses.replace(
        program, onehot_twin=(program.onehot_twin[0], unconditional_e if "logits" in program.name else unconditional_sp))
    r = np.random.default_rng(5)
    unit = K.UNIT_WEIGHTS["float32"]
    for C in (1, 10, 16, 40):
        t, p = _onehot_rows(program, C, r)
        R = t.shape[0]
        w = r.random(R).astype(np.float32)  # the weights' dtype of the calls: no other compile
        params = {"epsilon": 1e-7, "one_minus_epsilon": 1 - 1e-7, "label_smoothing": 0.0, "gamma": 2.0,
                  "alpha": r.uniform(0.1, 0.9, C) if per_class else 0.25, "label_classes": float(C)}
        colp = K._column_params(params)
        mods = {name: K.kernel_module(prog, "float32", colp, positive_logs=True)
                for name, prog in (("twin", program), ("plain", plain), ("unchecked", unchecked))}
        assert "use_hot" in Path(mods["twin"].__file__).read_text()
        assert "use_hot" not in Path(mods["plain"].__file__).read_text()
        focal = "alpha" in program.param_names()
        alpha = params["alpha"]
        # α = -0.0 (at class 0 where per class): the focal terms at those labels are -0.0, which a
        # sum starting from 0.0 makes +0.0 and the twin must too
        for smoothing, inf_alpha, negative_zero_alpha in ((0.0, False, False), (0.1, False, False),
                                                           (0.0, per_class and C > 1, False), (0.0, False, focal)):
            params["label_smoothing"] = smoothing
            if per_class:
                params["alpha"] = alpha.copy()
                params["alpha"][C - 1] = np.inf if inf_alpha else alpha[C - 1]
                params["alpha"][0] = -0.0 if negative_zero_alpha else alpha[0]
            else:
                params["alpha"] = -0.0 if negative_zero_alpha else alpha
            pv = K._param_values(program, params)
            # the tile kernels (short rows) and the row kernels (any length), serial; the
            # threaded ones are the same code in a prange (their bits for any thread count:
            # test_same_bits_for_any_thread_count), compiled here once, for the longest rows, as
            # their type inference once failed where the serial one passed (CFCE from logits);
            # the row kernels' reduce is their rows' loop with weights (each kernel compiled
            # costs seconds in CI)
            kinds = (("tile", "ser"), ("rows", "ser")) if C <= codegen.TILE_MAX_C else (("rows", "ser"), ("rows", "par"))
            for kind, suffix in kinds:
                twin, base = getattr(mods["twin"], f"{kind}_{suffix}"), getattr(mods["plain"], f"{kind}_{suffix}")
                got, want = np.empty(R), np.empty(R)
                twin(t, p, got, *((unit, 0) if kind == "tile" else ()), *pv)
                base(t, p, want, *((unit, 0) if kind == "tile" else ()), *pv)
                # the same bits, NaN where NaN (a NaN's sign is nobody's contract, and it differs
                # between a vector loop and one scalar call)
                assert _bits(np.nan_to_num(got, nan=7.0)) == _bits(np.nan_to_num(want, nan=7.0)) \
                    and np.array_equal(np.isnan(got), np.isnan(want)), (program.name, kind, C, smoothing, inf_alpha, suffix)
                assert (~np.isfinite(got)).sum() >= (R if inf_alpha else 2)  # inf α: NaN, or inf at the label
                assert inf_alpha or np.isfinite(got).sum() > R // 2
                for weights, step in ((unit, 0), (w, 1)) if kind == "tile" else ():
                    a = twin(t, p, np.empty(0), weights, step, *pv)
                    b = base(t, p, np.empty(0), weights, step, *pv)
                    assert np.array_equal(a, b, equal_nan=True), (program.name, kind, C, smoothing, suffix, step)
            # with one class there is no zero label; from logits a non-finite e makes the
            # label's own term NaN too, so only an infinite α tells the unchecked twin apart
            if smoothing == 0.0 and C > 1 and ("logits" not in program.name or inf_alpha):
                loose = np.empty(R)
                mods["unchecked"].rows_ser(t, p, loose, *pv)
                assert _bits(loose) != _bits(want), (program.name, C)
                if C <= codegen.TILE_MAX_C:
                    mods["unchecked"].tile_ser(t, p, loose, unit, 0, *pv)
                    assert _bits(loose) != _bits(want), (program.name, C)

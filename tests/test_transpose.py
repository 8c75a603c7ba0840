"""The tile kernels' shuffles (kernels/numba/transpose.py): the transposing copy gives the same
values as the column loop for every row length a tile takes, tails of any length, other dtypes
and layouts; the row reductions give each row's sum and maximum; the shuffles in the generated
code; no read past the end of the input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit, typeof

from gpuloss.kernels.numba.transpose import (LANES, copy_columns, prefetch_lines, row_maxima16, row_sums16,
                                             share_lines, transpose16)


@njit(error_model="numpy")
def _copy(src, r0, nt, dst):
    copy_columns(src, r0, nt, dst)


@njit(error_model="numpy")
def _block(src, row0, dst, col0):
    transpose16(src, row0, dst, col0)


rng = np.random.default_rng(11)


@pytest.mark.parametrize("C", [1, 2, 3, 7, 8, 10, 15, 16, 17])
def test_copy_is_the_transpose_for_every_row_length_and_tail(C):
    R = 203  # blocks of 16, a tail of 11, and the last rows copied one column at a time
    src = rng.standard_normal((R, C)).astype(np.float32)
    src.flat[::7] = np.nan
    src.flat[3::11] = -np.inf
    for r0, nt in ((0, R), (5, 96), (R - 40, 40), (R - 3, 3), (17, 0)):
        dst = np.full((C, 128 if nt <= 128 else nt), 7.0, np.float32)
        _copy(src, r0, nt, dst)
        want = src[r0:r0 + nt].T
        # the same bits (NaN payloads and signs included), and nothing past column nt written
        assert dst[:, :nt].tobytes() == np.ascontiguousarray(want).tobytes(), (C, r0, nt)
        assert (dst[:, nt:] == 7.0).all()


@pytest.mark.parametrize("src", [
    rng.standard_normal((100, 10)),  # float64 into a float32 tile: the column loop converts
    rng.standard_normal((100, 20)).astype(np.float32)[:, ::2],  # strided rows
    np.broadcast_to(rng.standard_normal((1, 10)).astype(np.float32), (100, 10)),  # a broadcast y_true
])
def test_other_dtypes_and_layouts_take_the_column_loop(src):
    dst = np.empty((10, 100), np.float32)
    _copy(src, 0, 100, dst)
    np.testing.assert_array_equal(dst, np.asarray(src, np.float32).T)


def test_contiguous_float32_rows_are_transposed_by_shuffles():
    src, dst = np.zeros((64, 10), np.float32), np.zeros((10, 32), np.float32)
    _block(src, 0, dst, 0)
    ir = "\n".join(_block.inspect_llvm().values())
    assert ir.count("shufflevector <16 x float>") >= 4 * LANES
    assert "<16 x float>" in ir


@njit(error_model="numpy")
def _reduce_rows(values, start, C, sums, maxima, d0):
    row_sums16(values, start, C, sums, d0)
    row_maxima16(values, start, C, maxima, d0, np.isnan(values).any())


@njit(error_model="numpy")
def _maxima(values, start, C, out, has_nan):
    row_maxima16(values, start, C, out, 0, has_nan)


def _pairwise_float32(row: np.ndarray) -> float:
    """The documented order of row_sums16, in NumPy: the row padded with zeros to 16 lanes,
    then lanes 2j and 2j + 1 added in float32, four times."""
    lanes = np.zeros(LANES, np.float32)
    lanes[:row.size] = row
    while lanes.size > 1:
        lanes = lanes[0::2] + lanes[1::2]
    return float(lanes[0])


@pytest.mark.parametrize("C", range(1, LANES + 1))
def test_row_reductions_give_each_rows_sum_and_maximum(C):
    """16 rows of C values from any start: the sum (float32, the bits of the pairwise order it
    documents, and within float32 rounding of math.fsum) and the
    maximum (NaN where a row has one, first or last or alone; inf where there is one; negative
    rows), written to the 16 outputs from d0 and nowhere else; the lanes past a row's end (the
    next rows' values, or the buffer's tail) count for nothing."""
    import math

    for start in (0, 5):
        values = (rng.standard_normal(start + LANES * C + LANES) * 100).astype(np.float32)
        rows = values[start:start + LANES * C].reshape(LANES, C)  # a view: the edits below reach values
        rows[1, 0] = np.nan
        rows[2, C - 1] = np.inf
        rows[3] = np.nan
        rows[4] = -np.abs(rows[4]) - 1  # negative only
        rows[5, C - 1] = np.nan
        rows[6, C // 2] = np.nan
        values[start + LANES * C:] = 1e30  # past the last row: must not count
        sums, maxima = np.full(LANES + 8, 7.0), np.full(LANES + 8, 7.0)
        _reduce_rows(values, start, C, sums, maxima, 4)
        got = sums[4:4 + LANES]
        np.testing.assert_array_equal(got, [_pairwise_float32(r) for r in rows], err_msg=f"C={C}")
        exact = np.array([math.fsum(r) if not np.isnan(r).any() else np.nan for r in rows.astype(np.float64)])
        # four roundings of float32 at most, each within half an ulp of the partial sum
        bound = 4 * 2.0 ** -24 * np.abs(rows.astype(np.float64)).sum(axis=1)
        finite = np.isfinite(exact)
        assert (np.abs(got[finite] - exact[finite]) <= bound[finite]).all(), C
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
        assert got[2] == np.inf
        want_max = [np.nan if np.isnan(r).any() else r.max() for r in rows.astype(np.float64)]
        np.testing.assert_array_equal(maxima[4:4 + LANES], want_max, err_msg=f"C={C}")
        assert (sums[:4] == 7).all() and (sums[4 + LANES:] == 7).all()
        assert (maxima[:4] == 7).all() and (maxima[4 + LANES:] == 7).all()
        # without NaN the plain compares (has_nan False), and the NaN-keeping ones agree there
        clean = np.where(np.isnan(values), np.float32(-3.5), values)
        for has_nan in (False, True):
            got = np.full(LANES, 7.0)
            _maxima(clean, start, C, got, has_nan)
            np.testing.assert_array_equal(got, clean[start:start + LANES * C].reshape(LANES, C).max(1),
                                          err_msg=f"C={C}")


def test_rows_are_reduced_by_shuffles():
    values, out = np.zeros(LANES * 10 + LANES, np.float32), np.zeros(LANES)
    _reduce_rows(values, 0, 10, out, out.copy(), 0)
    ir = "\n".join(_reduce_rows.inspect_llvm().values())
    # four stages of 8 + 4 + 2 + 1 pairs for the sums, and for the maxima (two copies, with
    # and without NaN, whose common shuffles LLVM may share); no float64 shuffles
    assert ir.count("shufflevector <16 x float>") >= 2 * 2 * 15
    assert "shufflevector <8 x double>" not in ir


@njit(error_model="numpy")
def _prefetch_all(src, row0, nrows, parts):
    n = share_lines(src, nrows, parts)
    for part in range(parts):
        prefetch_lines(src, row0, nrows, part * n, n)
    return n


@pytest.mark.parametrize("src", [np.zeros((100, 10), np.float32), np.zeros((100, 10))])
def test_prefetch_of_c_order_rows_asks_the_cache(src):
    """Arguments past the array's ends or an empty range ask for nothing outside it (a prefetch
    does not fault, so this checks that it compiles and runs for any arguments)."""
    for row0, nrows, parts in ((0, 100, 20), (90, 96, 7), (100, 96, 3), (-5, 10, 1), (3, 0, 4), (0, 100, 0)):
        _prefetch_all(src, row0, nrows, parts)
    sig = [s for s in _prefetch_all.signatures if s[0] == typeof(src)][0]
    assert "llvm.prefetch" in _prefetch_all.inspect_llvm(sig)


@pytest.mark.parametrize("nrows, C, itemsize, parts", [(96, 10, 4, 20), (96, 10, 4, 10), (13, 3, 8, 5), (1, 1, 4, 7)])
def test_shares_cover_the_rows(nrows, C, itemsize, parts):
    """parts shares of share_lines lines each reach past the rows' last byte."""
    src = np.zeros((200, C), np.float32 if itemsize == 4 else np.float64)
    n = _prefetch_all(src, 0, nrows, parts)
    assert parts * n * 64 >= nrows * C * itemsize
    assert (parts * n - n) * 64 < nrows * C * itemsize or n == 1  # not one share too many


def test_prefetch_of_other_layouts_is_left_out():
    src = np.zeros((100, 20), np.float32)[:, ::2]
    _prefetch_all(src, 0, 100, 4)
    sig = [s for s in _prefetch_all.signatures if s[0].layout != "C"][0]
    assert "llvm.prefetch" not in _prefetch_all.inspect_llvm(sig)


def test_tile_kernels_prefetch_the_next_tile_in_every_pass():
    """Share k·C + j of 2·C in column j of pass k, for each copied input (CCE: two passes)."""
    from gpuloss.kernels.numba import codegen
    from gpuloss.losses.probabilistic import CCE_PROBS

    src = codegen.module_source(CCE_PROBS, "float32")
    body = src[src.index("def tile_par"):src.index("def tile_ser")]
    calls = [line.strip() for line in body.splitlines() if "prefetch_lines(" in line or "share_lines(" in line]
    assert calls == ([f"pf_{e} = share_lines({e}_arr, nt, 2 * C)" for e in "tp"]
                     + [f"prefetch_lines({e}_arr, r0 + nt, nt, ({k} * C + j) * pf_{e}, pf_{e})"
                        for k in (0, 1) for e in "tp"])


def test_no_read_past_the_end_of_the_input():
    """The input ends right before a page that may not be read: a block that read past the
    last row would crash the process."""
    code = textwrap.dedent("""
        import ctypes, mmap
        import numpy as np
        from numba import njit
        from gpuloss.kernels.numba.transpose import copy_columns

        @njit
        def copy(src, r0, nt, dst):
            copy_columns(src, r0, nt, dst)

        page = mmap.PAGESIZE
        buf = mmap.mmap(-1, 4 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        libc = ctypes.CDLL(None)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(base + 3 * page, page, 0) == 0  # PROT_NONE
        for C in (1, 3, 10, 16):
            R = (2 * page // 4) // C
            nbytes = R * C * 4
            src = np.frombuffer(buf, np.float32, R * C, 3 * page - nbytes).reshape(R, C)
            dst = np.empty((C, R), np.float32)
            copy(src, 0, R, dst)
            assert (dst == src.T).all()
            for r0 in range(max(0, R - 40), R):
                copy(src, r0, R - r0, dst)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])

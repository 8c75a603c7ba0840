"""Dask arrays: lazy results, the fused kernel per chunk and a tree reduction of partial triples,
equal to the in-memory call to 1e-6 relative; run on a LocalCluster with worker processes."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import gpuloss

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.xdist_group("dask")

N_WORKERS, THREADS = 2, 1


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=THREADS, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


rng = np.random.default_rng(5)
B, C = 103, 4
CHUNKS = (17, 30, 1, 25, 30)
assert sum(CHUNKS) == B


def _data(dtype):
    y = (rng.random((B, C)) < 0.4).astype(dtype)
    p = (rng.random((B, C)) * 0.98 + 0.01).astype(dtype)
    onehot = np.eye(C, dtype=dtype)[rng.integers(0, C, B)]
    labels = rng.integers(0, C, B)
    return y, p, onehot, labels


def _dask(x, chunks=CHUNKS):
    x = np.asarray(x)
    return da.from_array(x, chunks=(chunks,) + tuple(-1 for _ in x.shape[1:]))


def _weights(dtype):
    w = (rng.random(B) + 0.1).astype(dtype)
    return {
        "none": (None, None),
        "scalar": (0.7, 0.7),
        "(B,)": (w, _dask(w, (50, 53))),  # other chunks than the inputs': aligned
        "(B,1) numpy": (w[:, None], w[:, None]),
        "(B,1)": (w[:, None], _dask(w[:, None], (20, 83))),
    }


def _case(name, dtype):
    y, p, onehot, labels = _data(dtype)
    signed = np.where(rng.random((B, C)) < 0.5, -1.0, 1.0).astype(dtype)
    mixed = y.copy()
    mixed[60:63] = signed[60:63]  # one chunk breaks Hinge's all-{0,1} rule for the whole batch
    a, pos, neg = (rng.standard_normal((B, C)).astype(dtype) for _ in range(3))
    cases = {
        "mse": (gpuloss.MeanSquaredError, {}, (y, p)),
        "cce": (gpuloss.CategoricalCrossentropy, {"label_smoothing": 0.1}, (onehot, p)),
        "bce_logits": (gpuloss.BinaryCrossentropy, {"from_logits": True}, (y, a)),
        "scce_ignore": (gpuloss.SparseCategoricalCrossentropy, {"ignore_class": 1}, (labels, p)),
        "scce_ignore_k3": (gpuloss.SparseCategoricalCrossentropy, {"ignore_class": 1, "compat": "keras3"},
                           (labels, p)),
        "hinge": (gpuloss.Hinge, {}, (y, a)),
        "hinge_mixed_labels": (gpuloss.SquaredHinge, {}, (mixed, a)),
        "cosine": (gpuloss.CosineSimilarity, {}, (y, p)),
        "huber_k3": (gpuloss.Huber, {"compat": "keras3"}, (y, a)),
        "triplet": (gpuloss.TripletMarginLoss, {}, (a, pos, neg)),
        "dice_axis1": (gpuloss.Dice, {"axis": 1}, (y, p)),
        "mse_3d": (gpuloss.MeanSquaredError, {}, (np.stack([y, p], 1), np.stack([p, y], 1))),
    }
    return cases[name]


CASES = ["mse", "cce", "bce_logits", "scce_ignore", "scce_ignore_k3", "hinge", "hinge_mixed_labels", "cosine",
         "huber_k3", "triplet", "dice_axis1", "mse_3d"]


def _compare(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12, equal_nan=True)


MATRIX = [(name, np.float32) for name in CASES] + \
    [(name, np.float64) for name in ("mse", "scce_ignore", "hinge_mixed_labels", "triplet")]


@pytest.mark.parametrize("name, dtype", MATRIX, ids=[f"{n}-{np.dtype(d).name}" for n, d in MATRIX])
def test_every_reduction_and_weight_matches_in_memory(client, name, dtype):
    cls, kwargs, inputs = _case(name, dtype)
    reductions = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"] \
        if cls.spec.keras3_only or kwargs.get("compat") == "keras3" else ["auto", "sum", "mean_with_sample_weight",
                                                                        "none"]
    dask_inputs = [_dask(x) for x in inputs]
    expected, lazy, labels = [], [], []
    for wname, (w, dw) in _weights(dtype).items():
        for r in reductions:
            loss = cls(reduction=r, **kwargs)
            try:
                want = loss(*inputs, sample_weight=w)
            except ValueError:  # shapes Keras rejects (Keras 3 weights (B,) against a (B, T) loss)
                with pytest.raises(ValueError):
                    loss(*dask_inputs, sample_weight=dw)
                continue
            got = loss(*dask_inputs, sample_weight=dw)
            assert isinstance(got, da.Array) and got.dtype == want.dtype and got.shape == want.shape
            expected.append(want)
            lazy.append(got)
            labels.append((wname, r))
    assert lazy
    for (wname, r), got, want in zip(labels, dask.compute(*lazy), expected):
        try:
            _compare(got, want)
        except AssertionError as e:
            raise AssertionError(f"{name} weights {wname} reduction {r}: {e}") from None


def test_reduced_result_is_lazy_and_a_tree_of_chunk_partials(client):
    y, p, _, _ = _data(np.float32)
    got = gpuloss.MeanSquaredError()(_dask(y), _dask(p))
    assert isinstance(got, da.Array) and got.shape == ()
    layers = got.dask.layers
    chunk_tasks = next(layer for name, layer in layers.items() if name.startswith("chunk_state"))
    assert len(chunk_tasks) == len(CHUNKS)  # the fused kernel runs once per chunk
    assert any("merge-partial" in name for name in layers)  # partial triples merged in a tree
    _compare(got.compute(), gpuloss.MeanSquaredError()(y, p))

    @dask.delayed
    def broken():
        raise RuntimeError("computed too early")

    bad = da.from_delayed(broken(), shape=(B, C), dtype=np.float32)
    lazy = gpuloss.MeanSquaredError()(bad, _dask(p))  # builds the graph, computes nothing
    with pytest.raises(RuntimeError, match="computed too early"):
        lazy.compute()


def test_functions_and_none_give_chunked_per_sample_values(client):
    y, p, onehot, labels = _data(np.float64)
    got = gpuloss.categorical_crossentropy(_dask(onehot), _dask(p))
    assert got.chunks == (CHUNKS,) and got.dtype == np.float64
    _compare(got.compute(), gpuloss.categorical_crossentropy(onehot, p))
    # other chunkings along the class axis are gathered; NumPy operands are sliced to the chunks
    p_cols = da.from_array(p, chunks=(40, 2))
    _compare(gpuloss.MeanSquaredError(reduction="none")(y, p_cols).compute(),
             gpuloss.MeanSquaredError(reduction="none")(y, p))
    _compare(gpuloss.SparseCategoricalCrossentropy()(labels, p_cols, sample_weight=_dask(np.ones(B))).compute(),
             gpuloss.SparseCategoricalCrossentropy()(labels, p, sample_weight=np.ones(B)))


def test_all_masked_chunks_and_batches(client):
    _, p, _, labels = _data(np.float32)
    labels = labels.copy()
    labels[:47] = 2  # the first chunks are entirely ignored
    for compat in ("keras2", "keras3"):
        loss = gpuloss.SparseCategoricalCrossentropy(ignore_class=2, compat=compat)
        _compare(loss(_dask(labels), _dask(p)).compute(), loss(labels, p))
        everything = np.full(B, 2)
        _compare(loss(_dask(everything), _dask(p)).compute(), loss(everything, p))  # NaN (Keras 2) / 0 (Keras 3)


def test_calls_that_do_not_split_run_in_one_task_with_a_warning(client):
    from dask.array.core import PerformanceWarning

    y, p, _, labels = _data(np.float32)
    cases = [
        (gpuloss.Dice(), (y, p)),                                  # axis=None: the batch is reduced
        (gpuloss.MeanSquaredError(), (y[:, 0], p[:, 0])),          # 1-D: the batch is the loss axis
        (gpuloss.BinaryCrossentropy(axis=0), (y, p)),              # the class axis is axis 0
        (gpuloss.Circle(), (labels, p / np.linalg.norm(p, axis=1, keepdims=True))),  # pairs within the batch
    ]
    for loss, inputs in cases:
        with pytest.warns(PerformanceWarning, match="one task"):
            got = loss(*(_dask(x) for x in inputs))
        _compare(got.compute(), loss(*inputs))
    none = gpuloss.Circle(reduction="none")
    inputs = cases[-1][1]
    with pytest.warns(PerformanceWarning):
        got = none(*(_dask(x) for x in inputs))
    _compare(got.compute(), none(*inputs))


def _threads_inside_a_chunk():
    from gpuloss._dask import _cores, _kernel_threads

    import numba

    with _kernel_threads():
        return numba.get_num_threads(), _cores()


def test_numba_threads_in_workers_do_not_oversubscribe(client):
    results = [client.submit(_threads_inside_a_chunk, pure=False, key=f"threads-{i}").result() for i in range(2)]
    for n, cores in results:
        assert n >= 1 and N_WORKERS * THREADS * n <= max(cores, N_WORKERS * THREADS)


def test_unknown_chunk_sizes_raise(client):
    y, p, _, _ = _data(np.float32)
    dy = _dask(y)
    unknown = dy[dy[:, 0] >= 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        gpuloss.MeanSquaredError()(unknown, _dask(p))


def test_cupy_chunks(client, cupy_gpu):
    cupy = cupy_gpu
    y, p, _, _ = _data(np.float32)
    got = gpuloss.MeanSquaredError()(_dask(y).map_blocks(cupy.asarray), _dask(p).map_blocks(cupy.asarray))
    _compare(cupy.asnumpy(got.compute(scheduler="sync")), gpuloss.MeanSquaredError()(y, p))

"""The CuPy backend's whole path on the CPU: gpuloss's device code (``gpuloss._gpu``, the device
side of ``gpuloss._interop``, ``kernels.cupy.backend``) over a NumPy-backed CuPy
(:mod:`fake_cupy`), whose RawModule runs the generated CUDA kernels in the host emulator
(:mod:`cuda_host`: threads as fibers, barriers and warp shuffles with CUDA's semantics).

Every registered loss with its main options, both compat modes, every reduction, without and
with sample weights (scalar, per sample), float32 and float64 (and float16/bfloat16 cases), odd
shapes (one row, C = 1, 3, 45; C = 1500: a block per row with the row staged in shared memory;
C = 40000: too long to stage; strided, transposed, misaligned and broadcast views; batch axes;
a class axis other than the last) and the function forms must give the float64 reference's
numbers (tests/reference.py, within the property tests' tolerance: relative to the result and
to the terms that cancel), with the CPU backend's result types; non-finite inputs, forced
``backend="cupy"`` and the streaming accumulator the CPU backend's numbers; the golden table's
values; NaN rows for bad sparse labels (``GPULOSS_CHECK_LABELS=1``: ValueError); ONE launch and
no host copy per reduced call; the same bits on every call and whatever block finishes last; a
reset counter after each launch; launches within CUDA's 48 KiB of shared memory per block.
Circle (pairwise, computed with the array library's own matrix product) runs on device arrays
too. The emulator itself is checked (shuffle semantics against the CUDA Programming Guide,
deadlocks, undefined shuffles, faults, shared memory state, 16-bit conversions against NumPy
and ml_dtypes).

The reference is the oracle rather than the CPU backend because each CPU comparison compiles
that backend's kernels for every program, dtype and kernel shape: from a cold cache that made
this file take 15-30 minutes on 2 cores, against seconds for the reference.

What this cannot see (see :mod:`cuda_host`): races and memory ordering between blocks or
threads, the GPU's math library and FMA contraction (results agree to rounding), the GPU's
resource limits other than shared memory per block.

The libraries are built before the first test, batched per dtype and in parallel, and cached
on disk (``GPULOSS_CACHE_DIR`` or the temp folder): a warm run compiles nothing.
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cuda_host  # noqa: E402

if not sys.platform.startswith("linux"):
    pytest.skip("the emulator's fibers, guard pages and fault handling are written for Linux",
                allow_module_level=True)
if cuda_host.CXX is None:
    pytest.skip("no host C++ compiler (g++): the CUDA kernels cannot be emulated", allow_module_level=True)

import fake_cupy  # noqa: E402
import test_properties as props  # noqa: E402  (the reference's tolerance)

import gpuloss  # noqa: E402
from gpuloss import _gpu  # noqa: E402
from gpuloss.kernels.cupy import backend as kb  # noqa: E402
from gpuloss.kernels.cupy import templates  # noqa: E402
from test_golden import DEFAULT, GOLDEN_CASES, check_result  # noqa: E402

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the test extra installs it (through JAX)
    ml_dtypes = None

RTOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
if ml_dtypes is not None:
    RTOL[np.dtype(ml_dtypes.bfloat16)] = 2e-3

#: kernels.cupy.backend's cache while the fake is installed: the emulated programs only, kept
#: between tests (never mixed with a real GPU's compiled programs)
_EMULATED_PROGRAMS: dict = {}

PREBUILT_DTYPES = ("float32", "float64")


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator_libraries() -> None:
    """Every program's kernels for float32 and float64, before the first test: per dtype in
    batches (a batch compiles the shim and header once: 0.7 s, then 0.3 s per program), the
    batches in parallel; the second xdist worker takes them in the other order, so the two
    workers build different batches and then find the other's in the disk cache."""
    variants = [(p, c) for p in cuda_host.generated_programs() for c in cuda_host.column_variants(p)]
    per_dtype = max(2, os.cpu_count() or 2)
    batches = []
    for dtype in PREBUILT_DTYPES:
        jobs = [(templates.program_source(p, dtype, c), cuda_host.program_kernels(p, dtype, c)) for p, c in variants]
        size = -(-len(jobs) // per_dtype)
        batches += [jobs[i:i + size] for i in range(0, len(jobs), size)]
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0").endswith(("1", "3", "5", "7", "9")):
        batches.reverse()
    try:
        cuda_host.build_many(batches)
    except cuda_host.CompileError as exc:
        pytest.fail(f"the emulator could not build the generated kernels:\n{exc.log[:20000]}")


@pytest.fixture
def cp(monkeypatch, emulator_libraries):
    """The fake CuPy as ``cupy`` for one test, with gpuloss's device caches keyed to it."""
    fake = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(kb, "_CACHE", _EMULATED_PROGRAMS)
    monkeypatch.setattr(_gpu, "_COUNTERS", {})
    for var in ("GPULOSS_BACKEND", "GPULOSS_CHECK_LABELS"):
        monkeypatch.delenv(var, raising=False)
    return fake


# ---- inputs --------------------------------------------------------------------------------------

SPECS = {s.fn_name: s for s in gpuloss.LOSSES.values()}
DEVICE_SPECS = [s for s in SPECS.values() if s.layout_kind != "direct"]

#: the main options of each loss ("per_class": one alpha per class; keys starting with "_" pick
#: the inputs and are not passed on)
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "hinge": [{}, {"_signed_labels": True}],
    "contrastive_loss": [{}, {"margin": 0.5}],
    "triplet_margin_loss": [{}, {"margin": 0.5, "p": 1}],
    "binary_crossentropy": [{}, {"from_logits": True}, {"label_smoothing": 0.1},
                            {"from_logits": True, "label_smoothing": 0.2}],
    "binary_focal_crossentropy": [{}, {"from_logits": True}, {"apply_class_balancing": True, "alpha": 0.3},
                                  {"apply_class_balancing": True, "from_logits": True, "gamma": 1.5,
                                   "label_smoothing": 0.1}],
    "categorical_crossentropy": [{}, {"from_logits": True}, {"label_smoothing": 0.1},
                                 {"from_logits": True, "label_smoothing": 0.1}, {"axis": 1}],
    "categorical_focal_crossentropy": [{}, {"from_logits": True}, {"alpha": "per_class", "gamma": 1.5},
                                       {"from_logits": True, "alpha": "per_class", "label_smoothing": 0.1}],
    "sparse_categorical_crossentropy": [{}, {"from_logits": True}, {"ignore_class": 1},
                                        {"from_logits": True, "ignore_class": 0}, {"from_logits": True, "axis": 1}],
    "cosine_similarity": [{}, {"axis": 1}],
    "categorical_generalized_cross_entropy": [{}, {"q": 0.7}],
    "huber": [{}, {"delta": 0.5}],
    "tversky": [{}, {"alpha": 0.7, "beta": 0.3}],
    "dice": [{}, {"axis": 1}],
}

CATEGORICAL = ("categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge")
BINARY = ("binary_crossentropy", "binary_focal_crossentropy", "dice", "tversky", "contrastive_loss", "hinge",
          "squared_hinge")


def loss_options(options: dict[str, Any], C: int) -> dict[str, Any]:
    out = {k: v for k, v in options.items() if not k.startswith("_")}
    if out.get("alpha") == "per_class":
        out["alpha"] = np.linspace(0.2, 0.8, C)
    return out


def class_axis(spec, options: dict[str, Any]) -> int:
    """The axis a row runs along (``axis`` of the axes layout names the reduced axes instead)."""
    return options.get("axis", -1) if spec.layout_kind != "axes" else -1


def make_inputs(spec, options: dict[str, Any], shape: tuple[int, ...], dtype, rng) -> list[np.ndarray]:
    """Host inputs of ``shape`` (y_pred's) in the loss's domain: labels, probabilities, logits
    (classes along the loss's ``axis``)."""
    name = spec.fn_name
    axis = class_axis(spec, options)
    C = shape[axis] if shape else 1
    logits = options.get("from_logits", False)
    if spec.inputs[0] == "anchor":
        return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    probs = rng.uniform(0.02, 0.98, shape)
    if spec.layout_kind in ("sparse", "sparse_strict"):
        labels = rng.integers(0, C, tuple(s for i, s in enumerate(shape) if i != axis % len(shape)))
        p = rng.normal(0, 3, shape) if logits else probs / probs.sum(axis=axis, keepdims=True)
        return [labels, p.astype(dtype)]
    if name in CATEGORICAL:
        y = np.moveaxis(np.zeros(shape), axis, -1)
        flat = y.reshape(-1, C)
        flat[np.arange(flat.shape[0]), rng.integers(0, C, flat.shape[0])] = 1.0
        y = np.moveaxis(y, -1, axis)
        p = rng.normal(0, 2, shape) if logits else probs
    elif name in BINARY:
        y = (rng.random(shape) < 0.4).astype(np.float64)
        if options.get("_signed_labels"):
            y = 2 * y - 1
        elif name in ("binary_crossentropy", "binary_focal_crossentropy") and not logits:
            y = np.where(rng.random(shape) < 0.2, rng.random(shape), y)  # some soft labels
        p = rng.normal(0, 2, shape) if (logits or "hinge" in name) else probs
        if name == "contrastive_loss":
            p = rng.uniform(0, 2, shape)
    elif name in ("poisson", "kl_divergence", "mean_squared_logarithmic_error"):
        y, p = rng.uniform(0, 2, shape), rng.uniform(0.05, 2, shape)
    elif name == "mean_absolute_percentage_error":
        y, p = rng.uniform(0.5, 2, shape) * rng.choice([-1, 1], shape), rng.normal(0, 2, shape)
    else:
        y, p = rng.normal(0, 1.5, shape), rng.normal(0, 1.5, shape)
    return [y.astype(dtype), p.astype(dtype)]


def batch_shape(spec, options: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample loss's shape (what a per-sample weight has)."""
    axis = options.get("axis", None if spec.layout_kind == "axes" else -1)
    return () if axis is None else tuple(s for i, s in enumerate(shape) if i != axis % len(shape))


# ---- comparing ---------------------------------------------------------------------------------------

def mismatch(got: Any, want: Any, what: str) -> str | None:
    """None if the device result ``got`` matches ``want``, else what differs. ``want`` is the
    reference's (expected, S, M, allowed dtypes), checked with the property tests' tolerance
    (test_properties: relative to the result and to the terms that cancel), or a host result of
    the CPU backend (type, dtype, shape, value within the dtype's tolerance, scaled by the
    largest value)."""
    if not isinstance(got, fake_cupy.ndarray):
        return f"{what}: a {type(got).__name__}, not a device array"
    g = fake_cupy.asnumpy(got)
    if isinstance(want, tuple):
        return props.output_problem(g, want[3], want[0], want[1], want[2], what)
    w = np.asarray(want)
    if g.shape != w.shape:
        return f"{what}: shape {g.shape}, want {w.shape}"
    if g.dtype != w.dtype:
        return f"{what}: dtype {g.dtype}, want {w.dtype}"
    rtol = RTOL[w.dtype]
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    finite = w64[np.isfinite(w64)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    ok = np.isclose(g64, w64, rtol=rtol, atol=rtol * scale, equal_nan=True)
    if ok.all():
        return None
    i = np.unravel_index(int(np.argmin(ok)), ok.shape) if ok.ndim else ()
    return f"{what}: {np.count_nonzero(~ok)} of {ok.size} values differ, e.g. at {i}: {g64[i]!r} vs {w64[i]!r}"


def device(cp, x: Any) -> Any:
    return cp.asarray(x) if isinstance(x, np.ndarray) else x


def compare_calls(cp, spec, options: dict[str, Any], compat: str, host: list[np.ndarray], reductions, weights,
                  failures: list[str], label: str, device_inputs: list[Any] | None = None,
                  oracle: str = "reference") -> None:
    """Every (reduction, weight) class call, and the function, on the device against the oracle:
    the float64 reference (tests/reference.py), or with ``oracle="host"`` the CPU backend on the
    host inputs (for non-finite inputs, whose propagation is the library's own contract)."""
    C = host[-1].shape[class_axis(spec, options)] if host[-1].ndim else 1
    opts = loss_options(options, C)
    dev = device_inputs if device_inputs is not None else [device(cp, x) for x in host]
    if not all(k in spec.class_params for k in opts):  # a function-only option (SCCE's axis)
        reductions = []
    for reduction in reductions:
        loss = spec.cls(reduction=reduction, compat=compat, **opts)
        for wname, w in weights.items():
            what = f"{label} {compat} reduction={reduction} weight={wname}"
            try:
                want = loss(*host, sample_weight=w) if oracle == "host" else \
                    props.reference_class_call(spec.fn_name, tuple(host), opts, w, reduction, compat)
            except Exception as exc:  # the call is refused: the device must refuse it too
                with pytest.raises(type(exc)):
                    loss(*dev, sample_weight=device(cp, w))
                continue
            failures.append(mismatch(loss(*dev, sample_weight=device(cp, w)), want, what))
    fn_opts = dict(opts, compat=compat)
    try:
        want = spec.function(*host, **fn_opts) if oracle == "host" else \
            props.reference_function_call(spec.fn_name, tuple(host), opts, compat)
    except Exception as exc:
        with pytest.raises(type(exc)):
            spec.function(*dev, **fn_opts)
        return
    failures.append(mismatch(spec.function(*dev, **fn_opts), want, f"{label} function"))


def reductions_of(compat: str) -> list[str]:
    return (["none", "sum", "auto", "mean_with_sample_weight"] if compat == "keras2"
            else ["none", "sum", "sum_over_batch_size", "mean_with_sample_weight"])


def weights_for(shape: tuple[int, ...], rng) -> dict[str, Any]:
    return {"none": None, "scalar": 0.7, "per_sample": rng.uniform(0, 2, shape).astype(np.float32)}


# ---- every loss, its options, both compat modes, every reduction, weights, float32/float64 --------

@dataclass(frozen=True)
class Config:
    spec: Any
    options: dict = field(default_factory=dict)
    compat: str = "keras2"

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.spec.fn_name}[{opts}]-{self.compat}"


CONFIGS = [Config(spec, options, compat)
           for spec in DEVICE_SPECS
           for options in OPTIONS.get(spec.fn_name, [{}])
           for compat in (("keras3",) if spec.keras3_only else ("keras2", "keras3"))]

#: y_pred shapes, taken in turn: groups of 8, 16, 4 lanes per row, rows of one element (flat
#: kernels), a warp per row with 1.4 and 9.4 elements per lane, batch axes (blocks per row and
#: the other odd shapes: test_odd_shapes_match_reference)
SHAPES = [(37, 5), (1, 9), (64, 1), (23, 3), (9, 45), (6, 300), (4, 6, 7), (50, 17)]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.id for c in CONFIGS])
def test_matches_reference(cp, config: Config):
    spec, options, compat = config.spec, config.options, config.compat
    rng = np.random.default_rng(zlib.crc32(config.id.encode()))  # hash() of a str changes per process
    failures: list[str | None] = []
    for k, dtype in enumerate((np.float32, np.float64)):
        shape = SHAPES[(CONFIGS.index(config) + 3 * k) % len(SHAPES)]
        if "axis" in options:  # classes (or reduced elements) along axis 1 of 3-D inputs
            shape = (5, 4, 6)
        host = make_inputs(spec, options, shape, dtype, rng)
        weights = weights_for(batch_shape(spec, options, shape), rng)
        compare_calls(cp, spec, options, compat, host, reductions_of(compat), weights, failures,
                      f"{np.dtype(dtype).name} {shape}")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures[:12])


def test_circle_on_device_arrays(cp):
    """Circle computes its pairwise rows with the arrays' own library (CuPy's matmul and
    elementwise kernels on device arrays): the CPU backend's numbers, a device result, for the
    class (every reduction, weights) and the function; neither side accumulates it over batches."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 40)
    w = rng.random(40).astype(np.float32)
    for reduction in ("sum_over_batch_size", "sum", "none", "mean_with_sample_weight"):
        for weights in (None, w):
            loss = gpuloss.Circle(reduction=reduction)
            want = loss(labels, emb, sample_weight=weights)
            got = loss(cp.asarray(labels), cp.asarray(emb),
                       sample_weight=None if weights is None else cp.asarray(weights))
            assert isinstance(got, fake_cupy.ndarray)
            np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-6, err_msg=reduction)
    np.testing.assert_allclose(cp.asnumpy(gpuloss.circle(cp.asarray(labels), cp.asarray(emb))),
                               gpuloss.circle(labels, emb), rtol=1e-6)
    for batch in ((labels, emb), (cp.asarray(labels), cp.asarray(emb))):  # pairwise: no batch partials
        with pytest.raises(ValueError, match="cannot be accumulated over batches"):
            gpuloss.LossAccumulator(gpuloss.Circle()).update(*batch)


# ---- the golden table ----------------------------------------------------------------------------

GPU_GOLDEN = GOLDEN_CASES


@pytest.mark.parametrize("case", GPU_GOLDEN, ids=[c.id for c in GPU_GOLDEN])
def test_golden_on_emulator(cp, case):
    obj = getattr(gpuloss, case.loss)
    kwargs = dict(case.params)
    if case.compat is not None:
        kwargs["compat"] = case.compat
    inputs = [device(cp, x) for x in case.inputs]
    if case.is_function:
        result = obj(*inputs, **kwargs)
    else:
        if case.reduction != DEFAULT:
            kwargs["reduction"] = case.reduction
        sw = None if case.sample_weight is None else cp.asarray(np.asarray(case.sample_weight))
        result = obj(**kwargs)(*inputs, sample_weight=sw)
    assert isinstance(result, fake_cupy.ndarray)
    check_result(cp.asnumpy(result), case)


# ---- odd shapes, views and broadcasts ---------------------------------------------------------------

@dataclass(frozen=True)
class ShapeCase:
    id: str
    shape: tuple[int, ...]
    view: str = "plain"  # "strided", "transposed", "offset", "broadcast"


SHAPE_CASES = [
    ShapeCase("one-row", (1, 7)),
    ShapeCase("C1", (50, 1)),
    ShapeCase("C3", (40, 3)),
    ShapeCase("C45", (20, 45)),
    ShapeCase("C1500-block-rows-staged", (5, 1500)),
    ShapeCase("C40000-too-long-to-stage", (3, 40000)),
    ShapeCase("strided", (19, 11), "strided"),
    ShapeCase("transposed", (13, 6), "transposed"),
    ShapeCase("misaligned", (21, 5), "offset"),
    ShapeCase("broadcast", (17, 9), "broadcast"),
    ShapeCase("batch-axes", (3, 5, 8)),
]

#: each loss with its defaults and, where it has one, from_logits
SHAPE_VARIANTS = [(spec, options) for spec in DEVICE_SPECS
                  for options in ([{}, {"from_logits": True}] if "from_logits" in spec.defaults else [{}])]


def views_of(case: ShapeCase, host: list[np.ndarray], cp) -> tuple[list[np.ndarray], list[Any]]:
    """(host inputs, device inputs) of the same values, the device inputs laid out as
    ``case.view`` says (the host ones are contiguous: the layouts under test are the device's,
    and every host layout is a kernel specialisation Numba compiles)."""
    host_views, dev = _views(case, host, cp)
    return [np.ascontiguousarray(x) for x in host_views], dev


def _views(case: ShapeCase, host: list[np.ndarray], cp) -> tuple[list[np.ndarray], list[Any]]:
    if case.view == "strided":  # every other row and every third column of larger arrays
        big = [np.repeat(np.repeat(x, 2, axis=0), 3, axis=-1) if x.ndim == 2 else np.repeat(x, 2, axis=0)
               for x in host]
        sl = [(slice(None, None, 2), slice(None, None, 3)) if x.ndim == 2 else (slice(None, None, 2),) for x in big]
        return [b[s] for b, s in zip(big, sl)], [cp.asarray(b)[s] for b, s in zip(big, sl)]
    if case.view == "offset":  # contiguous, one row into a larger buffer: not 16-byte aligned
        return host, [cp.asarray(np.concatenate([x[:1], x]))[1:] for x in host]
    if case.view == "transposed":  # Fortran-ordered 2-D inputs: columns are contiguous
        host = [np.asfortranarray(x) if x.ndim == 2 else x for x in host]
        return host, [cp.asarray(np.ascontiguousarray(x.T)).T if x.ndim == 2 else cp.asarray(x) for x in host]
    if case.view == "broadcast":  # the first 2-D input is one row, broadcast (row stride 0)
        first = next(i for i, x in enumerate(host) if x.ndim == 2)
        row = host[first][:1]
        out_h = list(host)
        out_h[first] = np.broadcast_to(row, host[first].shape)
        out_d = [cp.asarray(x) for x in host]
        out_d[first] = cp.broadcast_to(cp.asarray(row), host[first].shape)
        return out_h, out_d
    return host, [cp.asarray(x) for x in host]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.id for c in SHAPE_CASES])
def test_odd_shapes_match_reference(cp, case: ShapeCase):
    rng = np.random.default_rng(11)
    failures: list[str | None] = []
    for spec, options in SHAPE_VARIANTS:
        compat = spec.default_compat
        reductions = ["none", "sum", "auto" if compat == "keras2" else "sum_over_batch_size"]
        for dtype in (np.float32, np.float64):
            host = make_inputs(spec, options, case.shape, dtype, rng)
            host, dev = views_of(case, host, cp)
            if spec.layout_kind == "sparse_strict" and len(case.shape) != 2:  # (B,) labels, (B, C) only
                for inputs in (host, dev):
                    with pytest.raises(ValueError, match="expected integer labels of shape"):
                        spec.cls()(*inputs)
                continue
            weights = {"none": None,
                       "per_sample": rng.uniform(0, 2, batch_shape(spec, options, case.shape)).astype(np.float32)}
            compare_calls(cp, spec, options, compat, host, reductions, weights, failures,
                          f"{spec.fn_name}{options or ''} {np.dtype(dtype).name} {case.id}", device_inputs=dev)
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures[:12])


def test_the_shapes_reach_every_kernel_mode(cp):
    """C = 1500 runs a block per row (G = 0) with the row staged in shared memory, C = 40000 a
    block per row without staging, C = 45 a warp per row, C = 3 groups of 4 lanes, and rows of
    one element the flat kernel."""
    from gpuloss.losses import probabilistic as P

    seen = []
    for C in (1, 3, 45, 1500, 40000):
        rng = np.random.default_rng(C)
        y, p = make_inputs(SPECS["categorical_crossentropy"], {}, (3, C), np.float32, rng)
        fake_cupy.reset()
        gpuloss.CategoricalCrossentropy()(cp.asarray(y), cp.asarray(p))
        (launch,) = fake_cupy.STATE.launches
        seen.append((C, launch.kernel, launch.shared_mem))
        plan = kb.launch_plan(P.CCE_PROBS, "float32", 3, C, fake_cupy.SM_COUNT)
        assert plan.shared_bytes == launch.shared_mem
    assert seen[3][2] >= 1500 * 4 and seen[4][2] == 0, seen
    assert kb.launch_plan(P.CCE_PROBS, "float32", 3, 1500, 4).G == 0
    assert kb.launch_plan(P.CCE_PROBS, "float32", 3, 45, 4).G == 32
    assert kb.launch_plan(P.CCE_PROBS, "float32", 3, 3, 4).G == 4
    fake_cupy.reset()
    gpuloss.MeanSquaredError(reduction="none")(cp.asarray(np.ones((9, 1), np.float32)), cp.zeros((9, 1), np.float32))
    assert [launch.kernel for launch in fake_cupy.STATE.launches] == ["gl_squared_error_f32_flat"]



NON_FINITE_LOSSES = [("categorical_crossentropy", {"from_logits": True}), ("categorical_crossentropy", {}),
                     ("sparse_categorical_crossentropy", {"from_logits": True}),
                     ("categorical_focal_crossentropy", {"from_logits": True}),
                     ("binary_crossentropy", {"from_logits": True}), ("categorical_hinge", {}),
                     ("mean_squared_error", {}), ("cosine_similarity", {})]


@pytest.mark.parametrize("C", [7, 45, 1500])
def test_non_finite_inputs_match_cpu_backend(cp, C):
    """-inf before the first finite logit, rows of -inf only, +inf and NaN elements: the online
    max/exp statistics are merged across lanes (C = 7, 45) and across the warps of a block
    (C = 1500) as the CPU backend computes them."""
    rng = np.random.default_rng(C)
    x = rng.normal(0, 3, (6, C)).astype(np.float32)
    x[1, : C // 2] = -np.inf
    x[2, :] = -np.inf
    x[3, C - 1] = np.inf
    x[4, C // 3] = np.nan
    labels = rng.integers(0, C, 6)
    onehot = np.eye(C, dtype=np.float32)[labels]
    failures: list[str | None] = []
    for name, options in NON_FINITE_LOSSES:
        spec = SPECS[name]
        host = [labels if spec.layout_kind == "sparse" else onehot, x]
        with np.errstate(all="ignore"):
            compare_calls(cp, spec, options, "keras2", host, ["none", "sum"], {"none": None}, failures,
                          f"{name}{options or ''} C={C}", oracle="host")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures[:12])

# ---- 16-bit inputs ----------------------------------------------------------------------------------

SIXTEEN_BIT = [("mean_squared_error", {}, (33, 7)), ("binary_crossentropy", {"from_logits": True}, (33, 7)),
               ("categorical_crossentropy", {"from_logits": True}, (12, 45)),
               ("categorical_crossentropy", {}, (4, 1500)),
               ("sparse_categorical_crossentropy", {"from_logits": True}, (20, 9)),
               ("categorical_focal_crossentropy", {"from_logits": True}, (4, 1500)),
               ("cosine_similarity", {}, (21, 5))]


def _sixteen_bit_dtypes() -> list:
    out = [pytest.param(np.dtype(np.float16), id="float16")]
    out.append(pytest.param(np.dtype(ml_dtypes.bfloat16) if ml_dtypes is not None else None, id="bfloat16",
                            marks=pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")))
    return out


@pytest.mark.parametrize("dtype", _sixteen_bit_dtypes())
def test_sixteen_bit_inputs_match_reference(cp, dtype):
    """16-bit inputs stay 16-bit in device memory; the kernels compute in float32. The CPU backend
    widens them to float32 first; float16 results are float16, bfloat16 results float32 on
    both (the values agree to the 16-bit rounding of the result)."""
    rng = np.random.default_rng(16)
    failures: list[str | None] = []
    for name, options, shape in SIXTEEN_BIT:
        spec = SPECS[name]
        host = make_inputs(spec, options, shape, np.float32, rng)
        host = [x.astype(dtype) if x.dtype.kind == "f" else x for x in host]
        if name == "binary_crossentropy":
            host[0] = host[0].astype(np.float32)  # a float32 y_true next to a 16-bit y_pred
        weights = {"none": None, "per_sample": rng.uniform(0, 2, shape[:-1]).astype(np.float32)}
        compare_calls(cp, spec, options, "keras2", host, ["none", "sum", "auto"], weights, failures,
                      f"{name} {dtype.name} {shape}")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures[:12])


# ---- sparse labels out of range ---------------------------------------------------------------------

@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, np.float32, np.float64])
def test_bad_sparse_labels_give_nan_rows_or_raise(cp, monkeypatch, label_dtype):
    rng = np.random.default_rng(7)
    p = rng.uniform(0.05, 1, (6, 4)).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True)
    if np.dtype(label_dtype).kind == "f":
        labels = np.array([0, 7, np.nan, 2.9, np.inf, -0.5], dtype=label_dtype)  # -0.5 truncates to 0
        bad = np.array([False, True, True, False, True, False])
    else:
        labels = np.array([0, 7, 4, 2, 200, 3], dtype=label_dtype)
        bad = np.array([False, True, True, False, True, False])
    for from_logits in (False, True):
        loss = gpuloss.SparseCategoricalCrossentropy(from_logits=from_logits, reduction="none")
        got = cp.asnumpy(loss(cp.asarray(labels), cp.asarray(p)))
        assert np.isnan(got[bad]).all() and np.isfinite(got[~bad]).all(), got
        want = loss(np.trunc(labels[~bad].astype(np.float64)).astype(np.int64), p[~bad])
        np.testing.assert_allclose(got[~bad], want, rtol=1e-6)
        reduced = gpuloss.SparseCategoricalCrossentropy(from_logits=from_logits)
        assert np.isnan(float(reduced(cp.asarray(labels), cp.asarray(p))))  # NaN rows make the mean NaN
    monkeypatch.setenv("GPULOSS_CHECK_LABELS", "1")
    for call in (lambda y, x: gpuloss.SparseCategoricalCrossentropy(reduction="none")(y, x),
                 lambda y, x: gpuloss.SparseCategoricalCrossentropy()(y, x),
                 lambda y, x: gpuloss.sparse_categorical_crossentropy(y, x),
                 lambda y, x: gpuloss.CategoricalGeneralizedCrossEntropy()(y, x)):
        with pytest.raises(ValueError, match="label value of 7"):
            call(cp.asarray(labels), cp.asarray(p))


def test_ignored_labels_are_not_bad(cp, monkeypatch):
    monkeypatch.setenv("GPULOSS_CHECK_LABELS", "1")
    p = np.full((4, 3), 1 / 3, np.float32)
    for labels in (np.array([0, 5, 2, 5]), np.array([5, 5, 5, 5])):  # 5 is out of range but ignored
        for compat in ("keras2", "keras3"):  # all ignored: NaN in Keras 2, 0 in Keras 3
            for reduction in ("none", "sum", "sum_over_batch_size", "mean_with_sample_weight"):
                loss = gpuloss.SparseCategoricalCrossentropy(ignore_class=5, reduction=reduction, compat=compat)
                got = loss(cp.asarray(labels), cp.asarray(p))
                assert mismatch(got, loss(labels, p), f"{labels} {compat} {reduction}") is None


# ---- launches, host copies, determinism, the counter ----------------------------------------------

LAUNCH_CASES = [
    ("MSE-flat", lambda: gpuloss.MeanSquaredError(), "pair", (4096, 3)),
    ("CCE-logits-warp-rows", lambda: gpuloss.CategoricalCrossentropy(from_logits=True), "onehot", (300, 1000)),
    ("SCCE-logits", lambda: gpuloss.SparseCategoricalCrossentropy(from_logits=True), "labels", (500, 20)),
    ("CCE-probs-block-rows-staged", lambda: gpuloss.CategoricalCrossentropy(), "onehot", (6, 1500)),
    ("BCE-weighted", lambda: gpuloss.BinaryCrossentropy(), "pair", (257, 5)),
    ("Hinge", lambda: gpuloss.Hinge(), "pair", (100, 4)),
]


def launch_inputs(kind: str, shape: tuple[int, int], rng) -> list[np.ndarray]:
    R, C = shape
    p = rng.uniform(0.05, 0.95, shape).astype(np.float32)
    if kind == "labels":
        return [rng.integers(0, C, R), p]
    if kind == "onehot":
        return [np.eye(C, dtype=np.float32)[rng.integers(0, C, R)], p]
    return [(rng.random(shape) < 0.5).astype(np.float32), p]


@pytest.mark.parametrize("name,make,kind,shape", LAUNCH_CASES, ids=[c[0] for c in LAUNCH_CASES])
def test_reduced_call_is_one_launch_and_no_host_copy(cp, name, make, kind, shape):
    rng = np.random.default_rng(1)
    host = launch_inputs(kind, shape, rng)
    w = rng.uniform(0, 1, shape[0]).astype(np.float32)
    dev = [cp.asarray(x) for x in host]
    dw = cp.asarray(w)
    loss = make()
    for weights, device_weights in ((None, None), (w, dw), (0.5, 0.5)):
        fake_cupy.reset()
        out = loss(*dev, sample_weight=device_weights)
        assert out.shape == () and len(fake_cupy.STATE.launches) == 1, fake_cupy.STATE.launches
        # Hinge reads one flag back (are all labels 0 or 1?); nothing else waits for the GPU
        assert fake_cupy.STATE.host_copies == (1 if name == "Hinge" else 0)
        assert mismatch(out, loss(*host, sample_weight=weights), name) is None


def test_same_bits_whatever_block_finishes_last(cp):
    """The last block adds the partials in block order, whichever block arrives last."""
    rng = np.random.default_rng(2)
    for make, kind, shape in [(lambda: gpuloss.CategoricalCrossentropy(from_logits=True), "onehot", (2000, 40)),
                              (lambda: gpuloss.MeanSquaredError(), "pair", (50_000, 3)),
                              (lambda: gpuloss.CategoricalCrossentropy(), "onehot", (40, 1500))]:
        dev = [cp.asarray(x) for x in launch_inputs(kind, shape, rng)]
        loss = make()
        bits = set()
        for order in (None, lambda n: list(range(n))[::-1], lambda n: rng.permutation(n).tolist(), None):
            fake_cupy.STATE.block_order = order
            bits.add(cp.asnumpy(loss(*dev)).tobytes())
            assert fake_cupy.STATE.launches[-1].grid[0] > 1  # several blocks, or the test shows nothing
        fake_cupy.STATE.block_order = None
        assert len(bits) == 1


def test_counter_is_reset_after_each_launch(cp):
    """The last block zeroes the stream's counter: consecutive reduced calls (different programs,
    grids and inputs) are all right, and the counter reads 0 after each."""
    rng = np.random.default_rng(4)
    calls = []
    for make, kind, shape in [(gpuloss.MeanSquaredError, "pair", (3000, 7)),
                              (gpuloss.CategoricalCrossentropy, "onehot", (20, 1500)),
                              (gpuloss.MeanSquaredError, "pair", (100, 2)),
                              (gpuloss.BinaryCrossentropy, "pair", (777, 9))]:
        host = launch_inputs(kind, shape, rng)
        calls.append((make(), host, [cp.asarray(x) for x in host]))
    for _ in range(2):
        for loss, host, dev in calls:
            assert mismatch(loss(*dev), loss(*host), type(loss).__name__) is None
            (counter,) = _gpu._COUNTERS.values()
            assert int(counter[0]) == 0


def test_counter_per_stream(cp):
    y, p = np.ones((1000, 4), np.float32), np.zeros((1000, 4), np.float32)
    with cp.cuda.Stream(non_blocking=True):
        v = gpuloss.MeanSquaredError()(cp.asarray(y), cp.asarray(p))
    w = gpuloss.MeanSquaredError()(cp.asarray(y), cp.asarray(p))
    assert float(v) == float(w) == 1.0 and len(_gpu._COUNTERS) == 2
    with cp.cuda.Device(0):
        assert float(gpuloss.MeanSquaredError()(cp.asarray(y), cp.asarray(p))) == 1.0


def test_forced_backend_on_host_arrays(cp, monkeypatch):
    rng = np.random.default_rng(5)
    y, p = rng.random((100, 3)).astype(np.float32), rng.random((100, 3)).astype(np.float32)
    want = gpuloss.MeanAbsoluteError()(y, p)
    r = gpuloss.MeanAbsoluteError(backend="cupy")(y, p)
    assert type(r) is np.ndarray and len(fake_cupy.STATE.launches) == 1
    np.testing.assert_allclose(r, want, rtol=1e-6)
    f = gpuloss.mean_absolute_error(y, p, backend="cupy")
    np.testing.assert_allclose(f, gpuloss.mean_absolute_error(y, p), rtol=1e-6)
    monkeypatch.setenv("GPULOSS_BACKEND", "cupy")
    r = gpuloss.MeanAbsoluteError()(y, p)
    assert type(r) is np.ndarray and len(fake_cupy.STATE.launches) == 3
    np.testing.assert_allclose(r, want, rtol=1e-6)


def test_accumulator_on_device_batches(cp):
    """LossAccumulator.update on device batches (gpu_partial): the device sums equal the host's."""
    rng = np.random.default_rng(8)
    for loss, kind in ((gpuloss.SparseCategoricalCrossentropy(ignore_class=0), "labels"),
                       (gpuloss.CategoricalCrossentropy(from_logits=True), "onehot"),
                       (gpuloss.MeanSquaredError(reduction="sum"), "pair"),
                       (gpuloss.BinaryCrossentropy(reduction="mean_with_sample_weight"), "pair")):
        on_device, on_host = gpuloss.LossAccumulator(loss), gpuloss.LossAccumulator(loss)
        for R in (31, 1, 64):
            host = launch_inputs(kind, (R, 6), rng)
            w = rng.uniform(0, 2, R).astype(np.float32)
            on_device.update(*[cp.asarray(x) for x in host], sample_weight=cp.asarray(w))
            on_host.update(*host, sample_weight=w)
        assert mismatch(on_device.result(), on_host.result(), type(loss).__name__) is None



def test_mixing_host_and_device_arrays_is_refused(cp):
    with pytest.raises(TypeError, match=r"y_true = cupy\.asarray\(y_true\)"):
        gpuloss.MeanSquaredError()(np.ones((3, 2), np.float32), cp.ones((3, 2), np.float32))


def test_keras3_reduction_aliases(cp):
    rng = np.random.default_rng(10)
    host = launch_inputs("pair", (30, 4), rng)
    for reduction in ("mean", None):
        loss = gpuloss.MeanSquaredError(reduction=reduction, compat="keras3")
        assert mismatch(loss(*[cp.asarray(x) for x in host]), loss(*host), str(reduction)) is None

# ---- shared memory per block --------------------------------------------------------------------------

STAGED_PROGRAMS = [("categorical_crossentropy", {}, np.float32), ("categorical_crossentropy", {}, np.float64),
                   ("categorical_focal_crossentropy", {"from_logits": True}, np.float32),
                   ("categorical_focal_crossentropy", {}, np.float16)]


@pytest.mark.parametrize("name,options,dtype", STAGED_PROGRAMS,
                         ids=[f"{n}{o or ''}-{np.dtype(d).name}" for n, o, d in STAGED_PROGRAMS])
def test_staged_rows_leave_room_for_static_shared_memory(cp, name, options, dtype):
    """CUDA gives a block 48 KiB of shared memory, static and dynamic together, unless the
    kernel opts in to more: rows staged up to that size must still launch."""
    from gpuloss.kernels.cupy import nvrtc

    if not nvrtc.available():
        pytest.skip("the kernels' static shared memory comes from NVRTC's ptxas report (pip install nvidia-cuda-nvrtc)")
    item = np.dtype(dtype).itemsize
    spec = SPECS[name]
    rng = np.random.default_rng(9)
    for C in (48 * 1024 // item, 48 * 1024 // item - 5, 46 * 1024 // item):
        host = make_inputs(spec, options, (2, C), dtype, rng)
        fake_cupy.reset()
        loss = spec.cls(**options)
        assert mismatch(loss(*[cp.asarray(x) for x in host]), loss(*host), f"C={C}") is None
        (launch,) = fake_cupy.STATE.launches
        if C == 46 * 1024 // item:
            assert launch.shared_mem >= C * item  # staged: 2 KiB are enough for the static shared memory


# ---- the emulator itself -------------------------------------------------------------------------------

PROBES = r"""
extern "C" __global__ void emu_shuffle(const int* arg, int mode, int width, unsigned mask, int* out) {
    const int t = threadIdx.x;
    const int v = 100 + t;
    int r = -1;
    if ((mask >> (t & 31)) & 1u) {
        switch (mode) {
            case 0: r = __shfl_sync(mask, v, arg[t], width); break;
            case 1: r = __shfl_up_sync(mask, v, (unsigned)arg[t], width); break;
            case 2: r = __shfl_down_sync(mask, v, (unsigned)arg[t], width); break;
            default: r = __shfl_xor_sync(mask, v, arg[t], width); break;
        }
    }
    out[t] = r;
}
// groups of G lanes reach their shuffles at different times (group g runs g % 4 + 1 rounds),
// then the whole warp meets at full-mask shuffles
extern "C" __global__ void emu_groups(int G, double* out) {
    const unsigned lane = threadIdx.x & 31u, first = lane & ~(unsigned)(G - 1), group = threadIdx.x / G;
    const unsigned mask = G == 32 ? 0xffffffffu : ((1u << G) - 1u) << first;
    const double v = threadIdx.x + 1.0;
    double acc = 0.0;
    for (unsigned round = 0; round <= group % 4u; ++round) {
        double s = v * (round + 1);
        for (int off = G / 2; off > 0; off >>= 1) s += __shfl_xor_sync(mask, s, off, G);
        acc += s;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = acc;
    __syncthreads();
}
extern "C" __global__ void emu_exit_before_barrier(int* out) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
extern "C" __global__ void emu_exit_before_shuffle(int* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
extern "C" __global__ void emu_read_outside_mask(int* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (int)threadIdx.x, 16);
}
extern "C" __global__ void emu_mask_without_caller(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x1u, (int)threadIdx.x, 0);
}
extern "C" __global__ void emu_read_dynamic_shared(long long i, int* out) {
    extern __shared__ __align__(16) unsigned char dyn[];
    if (threadIdx.x == 0) out[0] = dyn[i];
}
// what a block finds in shared memory before it writes (the previous block wrote 1 and 2)
extern "C" __global__ void emu_shared_memory_at_start(float* out) {
    __shared__ float st[64];
    extern __shared__ __align__(16) float dynf[];
    if (threadIdx.x < 64) {
        out[blockIdx.x * 128 + threadIdx.x] = st[threadIdx.x];
        out[blockIdx.x * 128 + 64 + threadIdx.x] = dynf[threadIdx.x];
    }
    __syncthreads();
    if (threadIdx.x < 64) { st[threadIdx.x] = 1.0f; dynf[threadIdx.x] = 2.0f; }
}
extern "C" __global__ void emu_block_order(unsigned* seen, unsigned* counter) {
    if (threadIdx.x == 0) seen[atomicAdd(counter, 1u)] = blockIdx.x;
}
extern "C" __global__ void emu_sixteen_bit(const __half* h, float* hf, const __nv_bfloat16* b, float* bf,
                                          const float* f, __half* fh, __nv_bfloat16* fb, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        hf[i] = __half2float(h[i]);
        bf[i] = __bfloat162float(b[i]);
        fh[i] = __float2half(f[i]);
        fb[i] = __float2bfloat16(f[i]);
    }
}
"""

_I, _P = "int", "int*"
PROBE_KERNELS = {
    "emu_shuffle": [("const int*", "arg"), (_I, "mode"), (_I, "width"), ("unsigned int", "mask"), (_P, "out")],
    "emu_groups": [(_I, "G"), ("double*", "out")],
    "emu_exit_before_barrier": [(_P, "out")],
    "emu_exit_before_shuffle": [(_P, "out")],
    "emu_read_outside_mask": [(_P, "out")],
    "emu_mask_without_caller": [(_P, "out")],
    "emu_read_dynamic_shared": [("long long", "i"), (_P, "out")],
    "emu_shared_memory_at_start": [("float*", "out")],
    "emu_block_order": [("unsigned int*", "seen"), ("unsigned int*", "counter")],
    "emu_sixteen_bit": [("const __half*", "h"), ("float*", "hf"), ("const __nv_bfloat16*", "b"), ("float*", "bf"),
                        ("const float*", "f"), ("__half*", "fh"), ("__nv_bfloat16*", "fb"), ("long long", "n")],
}


@pytest.fixture(scope="module")
def probes() -> cuda_host.Library:
    return cuda_host.build(PROBES, PROBE_KERNELS)


def _expected_source_lane(mode: str, t: int, arg: int, width: int) -> int:
    """The CUDA Programming Guide's description of each shuffle, lane by lane."""
    segment, lane = t // width * width, t % width
    if mode == "idx":  # srcLane modulo width, within the caller's segment
        return segment + arg % width
    if mode == "up":  # the lowest delta lanes of a segment keep their value
        return t - arg if lane >= arg else t
    if mode == "down":  # the highest delta lanes keep their value
        return t + arg if lane + arg < width else t
    j = t ^ (arg & 31)  # xor: earlier segments may be read, later ones give the caller's value
    return t if j // width > t // width else j


@pytest.mark.parametrize("mode", ["idx", "up", "down", "xor"])
def test_emulated_shuffles_follow_cuda(probes, mode):
    kernel = probes.kernel("emu_shuffle")
    out = np.empty(32, np.int32)
    for width in (1, 2, 4, 8, 16, 32):
        for arg in (0, 1, 3, 5, 8, 17, 31):
            args = np.full(32, arg, np.int32)
            kernel(1, 32, [args.ctypes.data, ["idx", "up", "down", "xor"].index(mode), width, 0xFFFFFFFF,
                           out.ctypes.data])
            want = [100 + _expected_source_lane(mode, t, arg, width) for t in range(32)]
            assert out.tolist() == want, (mode, width, arg)
    # lanes may pass different arguments; lanes outside the mask take no part
    args = np.arange(32, dtype=np.int32)[::-1].copy()
    kernel(1, 32, [args.ctypes.data, 0, 32, 0xFFFFFFFF, out.ctypes.data])
    assert out.tolist() == [100 + 31 - t for t in range(32)]
    ones, out64 = np.ones(64, np.int32), np.empty(64, np.int32)
    kernel(1, 64, [ones.ctypes.data, 3, 2, 0x0F0F0F0F, out64.ctypes.data])  # two warps, half of each lane
    assert out64.tolist() == [100 + (t ^ 1) if (0x0F0F0F0F >> (t % 32)) & 1 else -1 for t in range(64)]


def test_groups_of_a_warp_shuffle_independently(probes):
    out = np.empty(8)
    for G in (1, 2, 4, 8, 16, 32):
        probes.kernel("emu_groups")(2, 128, [G, out.ctypes.data])
        want = []
        for warp in range(4):  # the 4 warps of one block (both blocks compute the same)
            total = 0.0
            for t in range(warp * 32, warp * 32 + 32):
                group = t // G
                s = sum(u + 1.0 for u in range(group * G, group * G + G))
                total += sum(s * (r + 1) for r in range(group % 4 + 1))
            want.append(total)
        assert out[:4].tolist() == want and out[4:].tolist() == want, G


@pytest.mark.parametrize("kernel,match", [
    ("emu_exit_before_barrier", "deadlock in block 0: 255 threads wait at __syncthreads"),
    ("emu_exit_before_shuffle", r"deadlock in block 0: 0 threads wait at __syncthreads, 31 at warp shuffles"),
    ("emu_read_outside_mask", "reads lane 16, which is not in the mask 0x0000ffff"),
    ("emu_mask_without_caller", "does not name the calling lane 1"),
])
def test_emulator_reports_what_cuda_leaves_undefined(probes, kernel, match):
    out = np.zeros(256, np.int32)
    with pytest.raises(cuda_host.LaunchError, match=match):
        probes.kernel(kernel)(1, 256, [out.ctypes.data])


def test_emulator_memory(probes):
    out = np.zeros(4, np.int32)
    probes.kernel("emu_read_dynamic_shared")(1, 32, [1000, out.ctypes.data], shared_mem=1024)
    assert out[0] == 0xFF  # unwritten shared memory: 0xFF bytes
    with pytest.raises(cuda_host.LaunchError, match="past the end of the dynamic shared memory"):
        probes.kernel("emu_read_dynamic_shared")(1, 32, [1024 + 64, out.ctypes.data], shared_mem=1024)
    with pytest.raises(cuda_host.LaunchError, match="illegal memory access"):
        probes.kernel("emu_read_dynamic_shared")(1, 32, [0, out.ctypes.data])  # no dynamic shared memory
    seen = np.zeros(3 * 128, np.float32)
    probes.kernel("emu_shared_memory_at_start")(3, 64, [seen.ctypes.data], shared_mem=256)
    assert np.isnan(seen).all()  # every block starts from garbage, not from the previous block's values
    with pytest.raises(cuda_host.LaunchError, match="invalid configuration"):
        probes.kernel("emu_block_order")(1, 2048, [out.ctypes.data, out.ctypes.data])


def test_emulator_block_order(probes):
    seen, counter = np.zeros(7, np.uint32), np.zeros(1, np.uint32)
    order = [3, 0, 6, 1, 5, 2, 4]
    probes.kernel("emu_block_order")(7, 64, [seen.ctypes.data, counter.ctypes.data], block_order=order)
    assert seen.tolist() == order and counter[0] == 7


def test_emulated_sixteen_bit_conversions_round_as_numpy(probes):
    """__half2float/__bfloat162float exact for every bit pattern, __float2half and
    __float2bfloat16 round to nearest even as NumPy's float16 and ml_dtypes' bfloat16 do (NaN:
    CUDA's canonical NaN)."""
    rng = np.random.default_rng(12)
    n = 1 << 18
    h = np.tile(np.arange(1 << 16, dtype=np.uint16), n >> 16)
    special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001,
                        3 * 2.0 ** -25, 2.0 ** -14, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, np.inf, -np.inf, np.nan,
                        3.4e38, 1e-45], np.float32)
    f = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    f[:special.size] = special
    f[special.size:1000] = rng.normal(0, 1e-5, 1000 - special.size)  # half subnormals
    outs = [np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.uint16), np.empty(n, np.uint16)]
    hf, bf, fh, fb = outs
    probes.kernel("emu_sixteen_bit")(4, 256, [h.ctypes.data, hf.ctypes.data, h.ctypes.data, bf.ctypes.data,
                                               f.ctypes.data, fh.ctypes.data, fb.ctypes.data, n])

    def same(got: np.ndarray, want: np.ndarray) -> bool:
        nan = np.isnan(want)
        return bool((np.isnan(got) == nan).all() and (got[~nan].view(np.uint32) == want[~nan].view(np.uint32)).all())

    assert same(hf, h.view(np.float16).astype(np.float32))
    with np.errstate(over="ignore"):
        want_fh = f.astype(np.float16)
    nan = np.isnan(f)
    assert (fh[~nan] == want_fh[~nan].view(np.uint16)).all() and (fh[nan] == 0x7FFF).all()
    assert same(bf, (h.astype(np.uint32) << 16).view(np.float32))
    if ml_dtypes is not None:
        with np.errstate(invalid="ignore"):
            want_fb = f.astype(ml_dtypes.bfloat16).view(np.uint16)
        assert (fb[~nan] == want_fb[~nan]).all() and (fb[nan] == 0x7FFF).all()


def test_fake_kernel_arguments_are_checked_as_the_gpu_reads_them():
    assert fake_cupy._kernel_arg("int", "G", np.int32(3)) == 3
    assert fake_cupy._kernel_arg("void*", "out", np.uint64(0)) is None
    for ctype, value in (("int", np.int64(3)), ("long long", 3), ("double", np.float32(1)), ("double", 1.0)):
        with pytest.raises(TypeError, match="must be numpy"):
            fake_cupy._kernel_arg(ctype, "x", value)
    with pytest.raises(TypeError, match="the kernel would read float32"):
        fake_cupy._kernel_arg("const float* __restrict__", "t", fake_cupy.zeros(3, np.float64))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(fake_cupy.zeros(3))
    with pytest.raises(TypeError, match="Unsupported type"):
        fake_cupy.zeros(3) + np.zeros(3)


def test_per_class_alpha_on_the_device(cp):
    """A per-class alpha given as a device array is read on the host (a few values): the same
    numbers as with a NumPy alpha."""
    rng = np.random.default_rng(8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 30)]
    p = rng.dirichlet(np.ones(4), 30).astype(np.float32)
    alpha = np.array([0.1, 0.2, 0.3, 0.4])
    want = gpuloss.CategoricalFocalCrossentropy(alpha=alpha)(y, p)
    got = gpuloss.CategoricalFocalCrossentropy(alpha=cp.asarray(alpha))(cp.asarray(y), cp.asarray(p))
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-6)

"""Smoke test of the benchmark runner (CI runs this, not the full benchmark): tiny sizes, seconds.

    python -m pytest benchmarks/test_runner_smoke.py -q
"""

from __future__ import annotations

import json

import pytest

from benchmarks.cases import make_inputs, registry_cases
from benchmarks.formulas import NUMPY_FORMULAS


def test_quick_run_writes_json_and_markdown(tmp_path):
    from benchmarks.run import main

    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "results.md").read_text()
    assert data["meta"]["machine"]["cores"] >= 1 and data["meta"]["versions"]["gpuloss"]
    isa = data["meta"]["machine"]["vector_isa"]
    assert isa and f"({isa})" in md.splitlines()[3], isa
    rows = data["results"]
    assert rows and all("gpuloss" in r["timings"] and r["timings"]["gpuloss"]["median_s"] > 0 for r in rows)
    assert all("numpy" in r["timings"] for r in rows), [r["mismatches"] for r in rows]
    assert any("memory" in r for r in rows)
    assert "startup" in data and data["startup"]["import_s"] > 0
    assert "# gpuloss benchmark results" in md and "| mean_squared_error |" in md
    costs = data["ceiling"]["costs_ns"]
    assert all(costs["gpuloss"][f] > 0 for f in ("exp", "log", "log1p")), costs
    assert "## exp/log ceiling" in md and "| binary_crossentropy_logits | 1 softplus |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "throughput.png").stat().st_size > 0


def test_every_registered_loss_has_a_case_and_a_formula():
    cases = registry_cases()
    assert not [c.name for c in cases if c.note.startswith("no case")], "add the loss to benchmarks/cases.py"
    assert not [c.name for c in cases if c.name not in NUMPY_FORMULAS], "add its formula to benchmarks/formulas.py"


@pytest.mark.parametrize("case", registry_cases(), ids=lambda c: c.name)
def test_numpy_formula_matches_gpuloss(case):
    from gpuloss.registry import LOSSES

    inputs = make_inputs(case, 2000, seed=1)
    want = float(LOSSES[case.fn_name].cls(**case.kwargs)(*inputs))
    got = float(NUMPY_FORMULAS[case.name](*inputs))
    assert got == pytest.approx(want, rel=2e-3, abs=1e-5)


@pytest.mark.parametrize("case_name, calls", [
    # Keras's formulas: log(p + ε) and log(1 - p + ε); max(x, 0) - x·z + softplus(-|x|);
    # log(p + ε) + log(t + ε) squared apart; one exp per logit and one log per row of 10
    ("binary_crossentropy", {"log": 2}),
    ("binary_crossentropy_logits", {"softplus": 1}),
    ("mean_squared_logarithmic_error", {"log": 2}),
    ("poisson", {"log": 1}),
    ("categorical_crossentropy_logits", {"exp": 1, "log": 0.1}),
    ("mean_squared_error", {}),
    ("huber", {}),
])
def test_ceiling_counts_the_calls_of_each_definition(case_name, calls):
    from benchmarks.cases import CASES
    from benchmarks.ceiling import calls_per_element
    from gpuloss.registry import LOSSES

    case = CASES[case_name]
    inputs = make_inputs(case, 100)
    plan = LOSSES[case.fn_name].body(*inputs, **case.kwargs, compat="keras2")
    assert calls_per_element(plan.program, inputs[1].shape[-1]) == pytest.approx(calls)


def test_ceiling_of_two_logs():
    from benchmarks.ceiling import ceiling_gelem_s

    # two threads, two 0.5 ns logs per element: 2 / 1 ns = 2 Gelem/s
    assert ceiling_gelem_s({"log": 2.0}, {"log": 0.5}, 2) == pytest.approx(2.0)
    assert ceiling_gelem_s({}, {"log": 0.5}, 2) is None


def test_fast_implementations_take_more_samples_per_round():
    import time

    from benchmarks.run import time_interleaved

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.003)

    t = time_interleaved({"fast": fast, "slow": slow}, budget_s=0.0, min_rounds=4, max_rounds=4,
                         sample_s=1e-4, warmup=0, prime=False, per_round=3)
    assert t["slow"]["rounds"] == t["fast"]["rounds"] == 4
    assert t["slow"]["samples"] == 4 and t["fast"]["samples"] == 12
    assert t["slow"]["number"] == 1 and t["fast"]["number"] > 1
    assert calls["slow"] == 1 + 4  # the calibration call and one sample a round
    assert t["slow"]["median_s"] > 0.003 > t["fast"]["median_s"]

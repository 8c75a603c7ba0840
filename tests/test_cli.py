"""The ``gpuloss`` command, run as a subprocess: demo, info, eval (every file format, sample
weights, JSON, chunked streaming), bench, and its errors (one line on stderr, exit status 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gpuloss

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N, C = 1000, 4
CHUNK = 97  # rows per chunk in the streaming tests: N is not a multiple of it


def run(*args: str, cwd: Path | None = None, stdin=None, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuloss", *args], stdout=subprocess.PIPE, stderr=stderr,
                          text=True, cwd=cwd, stdin=stdin, timeout=300)


def eval_json(*args: str, cwd: Path) -> dict:
    out = run("eval", *args, "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """One data set in every format: one-hot labels, class ids, probabilities, logits, weights."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, C, N)
    arrays = {
        "y": np.eye(C, dtype=np.float32)[labels],
        "labels": labels.astype(np.int64),
        "p": rng.dirichlet(np.ones(C), N).astype(np.float32),
        "logits": (3 * rng.standard_normal((N, C))).astype(np.float32),
        "w": rng.random(N).astype(np.float32),
        "t": rng.standard_normal((N, 1)).astype(np.float64),
    }
    arrays["q"] = arrays["t"] + 0.3 * rng.standard_normal((N, 1))
    for name in ("y", "p", "logits", "w", "labels"):
        np.save(d / f"{name}.npy", arrays[name])
    np.savez(d / "d.npz", y_true=arrays["y"], y_pred=arrays["p"], weights=arrays["w"])
    cols = {f"y{i}": arrays["y"][:, i] for i in range(C)} | {f"p{i}": arrays["p"][:, i] for i in range(C)}
    table = pa.table(cols | {
        "label": arrays["labels"], "w": arrays["w"], "t": arrays["t"][:, 0], "q": arrays["q"][:, 0],
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(arrays["p"].reshape(-1)), C),
        "onehot": pa.array(list(arrays["y"]), type=pa.list_(pa.float32())),
        "name": [f"row{i}" for i in range(N)],
    })
    pq.write_table(table, d / "d.parquet", row_group_size=300)  # row groups unaligned with the chunks
    header = ",".join(list(cols) + ["label", "w"])
    rows = np.column_stack([arrays["y"], arrays["p"], arrays["labels"], arrays["w"]])
    # float32 values written with repr: the CSV reads back the same float32 numbers
    lines = [header] + [",".join([repr(float(v)) for v in r[:-2]] + [str(int(r[-2])), repr(float(r[-1]))])
                        for r in rows]
    (d / "d.csv").write_text("\n".join(lines) + "\n")
    return d, arrays


def close(a: float, b: float, rtol: float = 1e-6) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ---- demo, info, bench --------------------------------------------------------------------------

def test_demo_prints_every_loss():
    out = run("demo", "-n", "500")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("gpuloss demo:") and len(lines) == 3 + len(gpuloss.LOSSES) + 2
    assert all(np.isfinite(float(line.split()[-4])) for line in lines[3:])


def test_info():
    out = run("info")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"gpuloss {gpuloss.__version__}" in text
    assert "threading layer" in text and "kernel cache:" in text and "cupy" in text
    facts = json.loads(run("info", "--json").stdout)
    assert facts["gpuloss"] == gpuloss.__version__
    assert facts["numba"]["threads"] >= 1 and facts["kernel_cache"]["bytes"] >= 0
    assert "numba" in facts["backends"]


def test_info_without_numba_or_cupy():
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # importing them now fails, as if not installed
        sys.modules["cupy"] = None
        from gpuloss.cli import main
        sys.exit(main(["info"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "numba: not available" in out.stdout and "cupy: not available" in out.stdout
    assert "Traceback" not in out.stderr


def test_bench_forwards_to_the_runner():
    out = run("bench", "--help")
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_bench_outside_a_checkout_fails_in_one_line():
    code = "import sys, gpuloss.cli as c; c.source_root = lambda: None; sys.exit(c.main(['bench', '--quick']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "source checkout" in out.stderr


# ---- eval: formats, options, weights, JSON ---------------------------------------------------------

def test_eval_npy_prints_the_api_value(data):
    d, a = data
    out = run("eval", "categorical_crossentropy", "--y-true", "y.npy", "--y-pred", "p.npy", cwd=d)
    assert out.returncode == 0, out.stderr
    expected = float(gpuloss.CategoricalCrossentropy()(a["y"], a["p"]))
    assert out.stdout.strip() == f"{expected:.9g}"


def test_eval_json_schema(data):
    d, a = data
    rec = eval_json("CategoricalCrossentropy", "--y-true", "y.npy", "--y-pred", "logits.npy", "--from-logits",
                    "--label-smoothing", "0.1", "--sample-weight", "w.npy", cwd=d)
    assert {"loss", "value", "reduction", "n", "backend", "seconds"} <= set(rec)
    assert rec["loss"] == "categorical_crossentropy" and rec["reduction"] == "auto" and rec["n"] == N
    assert rec["backend"] == "numba" and isinstance(rec["seconds"], float) and rec["seconds"] >= 0
    expected = gpuloss.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(a["y"], a["logits"], a["w"])
    assert close(rec["value"], float(expected))


def test_eval_npz_members(data):
    d, a = data
    rec = eval_json("categorical_crossentropy", "--y-true", "d.npz", "--y-pred", "d.npz",
                    "--sample-weight", "d.npz:weights", "--reduction", "sum", cwd=d)
    expected = gpuloss.CategoricalCrossentropy(reduction="sum")(a["y"], a["p"], sample_weight=a["w"])
    assert close(rec["value"], float(expected)) and rec["reduction"] == "sum"


# globs (FILE:'p*') and CSV columns are read in the chunked tests below
@pytest.mark.parametrize("y_true,y_pred", [
    ("d.parquet:y0,y1,y2,y3", "d.parquet:p0,p1,p2,p3"),   # several columns form the class axis
    ("d.parquet:onehot", "d.parquet:probs"),             # list columns (variable and fixed size)
], ids=["parquet-columns", "parquet-lists"])
def test_eval_tables(data, y_true, y_pred):
    d, a = data
    rec = eval_json("categorical_crossentropy", "--y-true", y_true, "--y-pred", y_pred,
                    "--sample-weight", f"{y_true.split(':')[0]}:w", cwd=d)
    expected = gpuloss.CategoricalCrossentropy()(a["y"], a["p"], sample_weight=a["w"])
    assert close(rec["value"], float(expected))


def test_eval_sparse_labels_from_a_column_chunked_with_masked_rows(data):
    d, a = data
    rec = eval_json("SparseCategoricalCrossentropy", "--y-true", "d.parquet:label", "--y-pred", "d.parquet:p?",
                    "--ignore-class", "2", "--compat", "keras3", "--chunk-size", str(CHUNK), cwd=d)
    expected = gpuloss.SparseCategoricalCrossentropy(ignore_class=2, compat="keras3")(a["labels"], a["p"])
    assert close(rec["value"], float(expected)) and rec["reduction"] == "sum_over_batch_size" and rec["chunks"] > 1


def test_eval_float64_columns_compute_in_float64(data):
    d, a = data
    rec = eval_json("huber", "--y-true", "d.parquet:t", "--y-pred", "d.parquet:q", "--delta", "0.5", cwd=d)
    expected = gpuloss.Huber(delta=0.5)(a["t"], a["q"])
    assert expected.dtype == np.float64 and close(rec["value"], float(expected), 1e-12)


def test_eval_per_class_alpha(data):
    d, a = data
    rec = eval_json("categorical_focal_crossentropy", "--y-true", "y.npy", "--y-pred", "p.npy",
                    "--alpha", "0.1,0.2,0.3,0.4", "--gamma", "1.5", cwd=d)
    expected = gpuloss.CategoricalFocalCrossentropy(alpha=[0.1, 0.2, 0.3, 0.4], gamma=1.5)(a["y"], a["p"])
    assert close(rec["value"], float(expected))


# ---- eval: chunked streams ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["npy", "parquet", "csv"])
def test_chunked_stream_equals_one_shot(data, fmt):
    """A file of N rows in chunks of CHUNK rows: the merged value is the one-shot value (the Python
    API's, and for .npy the command's own without chunks), to 1e-6 relative; piped, no progress bar."""
    d, a = data
    inputs = {"npy": ("y.npy", "p.npy", "w.npy"),
              "parquet": ("d.parquet:y*", "d.parquet:probs", "d.parquet:w"),
              "csv": ("d.csv:y0,y1,y2,y3", "d.csv:p*", "d.csv:w")}[fmt]
    args = ["categorical_crossentropy", "--y-true", inputs[0], "--y-pred", inputs[1],
            "--sample-weight", inputs[2], "--reduction", "mean_with_sample_weight", "--json"]
    out = run("eval", *args, "--chunk-size", str(CHUNK), cwd=d)
    assert out.returncode == 0, out.stderr
    chunked = json.loads(out.stdout)
    assert chunked["chunks"] == -(-N // CHUNK) and chunked["n"] == N
    assert "rows" not in out.stderr and "\r" not in out.stderr and "%" not in out.stderr  # no progress bar
    expected = float(gpuloss.CategoricalCrossentropy(reduction="mean_with_sample_weight")(a["y"], a["p"], a["w"]))
    assert close(chunked["value"], expected)
    if fmt == "npy":
        whole = eval_json(*args[:-1], cwd=d)
        assert whole["chunks"] == 1 and whole["value"] == expected and close(chunked["value"], whole["value"])


def test_chunked_sparse_logits_keras2(data):
    d, a = data
    rec = eval_json("sparse_categorical_crossentropy", "--y-true", "labels.npy", "--y-pred", "logits.npy",
                    "--from-logits", "--sample-weight", "w.npy", "--chunk-size", str(CHUNK), cwd=d)
    expected = gpuloss.SparseCategoricalCrossentropy(from_logits=True)(a["labels"], a["logits"], a["w"])
    assert rec["chunks"] > 1 and close(rec["value"], float(expected))


def test_chunked_per_sample_values_to_npy(data, tmp_path):
    d, a = data
    out_file = tmp_path / "per_sample.npy"
    rec = eval_json("categorical_crossentropy", "--y-true", "d.csv:y*", "--y-pred", "p.npy", "--reduction", "none",
                    "--output", str(out_file), "--chunk-size", str(CHUNK), cwd=d)
    assert rec["value"] is None and rec["shape"] == [N] and rec["chunks"] > 1
    expected = gpuloss.CategoricalCrossentropy(reduction="none")(a["y"], a["p"])
    np.testing.assert_allclose(np.load(out_file), expected, rtol=1e-6)


def test_batch_global_loss_is_not_chunked(data):
    d, a = data
    rec = eval_json("dice", "--y-true", "y.npy", "--y-pred", "p.npy", "--chunk-size", str(CHUNK), cwd=d)
    assert rec["chunks"] == 1 and close(rec["value"], float(gpuloss.Dice()(a["y"], a["p"])))


@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs a pseudo-terminal")
def test_terminal_shows_a_progress_bar(data):
    import fcntl
    import struct
    import termios

    pytest.importorskip("tqdm")
    d, _ = data
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "gpuloss", "eval", "mse", "--y-true", "y.npy", "--y-pred",
                             "p.npy", "--chunk-size", str(CHUNK)], cwd=d, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closes with the process
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        rc = proc.wait(timeout=300)
        proc.stdout.close()
    assert rc == 0
    assert b"rows/s" in seen and b"\r" in seen


# ---- eval: errors -----------------------------------------------------------------------------------

ERRORS = {
    "missing file": (["mse", "--y-true", "nope.npy", "--y-pred", "p.npy"], "nope.npy"),
    "missing column": (["mse", "--y-true", "d.parquet:nope", "--y-pred", "p.npy"], "'nope'"),
    "missing csv column": (["mse", "--y-true", "d.csv:y0,zz", "--y-pred", "d.csv:p0"], "'zz'"),
    "missing npz member": (["mse", "--y-true", "d.npz:zz", "--y-pred", "p.npy"], "'zz'"),
    "ambiguous table": (["mse", "--y-true", "d.parquet", "--y-pred", "p.npy"], "choose columns"),
    "non-numeric column": (["mse", "--y-true", "d.parquet:name", "--y-pred", "p.npy"], "'name'"),
    "unreadable format": (["mse", "--y-true", "notes.txt", "--y-pred", "p.npy"], ".txt"),
    "not an npy file": (["mse", "--y-true", "fake.npy", "--y-pred", "p.npy"], "fake.npy"),
    "not a parquet file": (["mse", "--y-true", "fake.parquet:a", "--y-pred", "p.npy"], "fake.parquet"),
    "shape mismatch": (["mse", "--y-true", "y.npy", "--y-pred", "d.parquet:p0,p1"], "(1000, 4)"),
    "row count mismatch": (["mse", "--y-true", "y.npy", "--y-pred", "short.npy"], "999"),
    "row count mismatch, streamed": (["mse", "--y-true", "short.csv:a", "--y-pred", "d.parquet:y0",
                                      "--chunk-size", "100"], "short.csv"),
    "unknown loss": (["nosuch_loss", "--y-true", "y.npy", "--y-pred", "p.npy"], "nosuch_loss"),
    "unknown option": (["mse", "--y-true", "y.npy", "--y-pred", "p.npy", "--delta", "2"], "--delta"),
    "bad option value": (["huber", "--y-true", "y.npy", "--y-pred", "p.npy", "--delta", "abc"], "--delta"),
    "invalid loss parameter": (["binary_crossentropy", "--y-true", "y.npy", "--y-pred", "p.npy",
                                "--label-smoothing", "3"], "label_smoothing"),
    "alpha per class of the wrong length": (["categorical_focal_crossentropy", "--y-true", "y.npy", "--y-pred",
                                             "p.npy", "--alpha", "0.5,0.5"], "alpha"),
    "bad reduction": (["mse", "--y-true", "y.npy", "--y-pred", "p.npy", "--reduction", "max"], "--reduction"),
    "reduction none without --output": (["mse", "--y-true", "y.npy", "--y-pred", "p.npy", "--reduction",
                                         "none"], "--output"),
    "missing input": (["mse", "--y-true", "y.npy"], "--y-pred"),
    "labels out of range, streamed": (["sparse_categorical_crossentropy", "--y-true", "bad_labels.npy",
                                       "--y-pred", "p.npy", "--chunk-size", "100"], "label value of 4"),
}


@pytest.fixture(scope="module")
def error_files(data):
    d, _ = data
    (d / "notes.txt").write_text("hello\n")
    (d / "fake.npy").write_text("not an array\n")
    (d / "fake.parquet").write_text("not a table\n")
    np.save(d / "short.npy", np.zeros((N - 1, C), np.float32))
    (d / "short.csv").write_text("a\n" + "0.5\n" * 150)  # ends in the second chunk of 100 rows
    np.save(d / "bad_labels.npy", np.arange(N) % (C + 3))  # class ids 4, 5, 6 are out of range
    return d


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_with_status_2(error_files, case):
    args, needle = ERRORS[case]
    out = run("eval", *args, cwd=error_files)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("gpuloss eval: error: ") and needle in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""

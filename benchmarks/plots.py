"""PNG plots of a results JSON (matplotlib, Agg backend; from the ``bench`` extra).

``throughput.png``          Gelem/s against size for a few key losses, one line per library,
                            with the streaming-read ceiling over the same bytes;
``bandwidth_fraction.png``  gpuloss's time as a fraction of the streaming-read time over the
                            same bytes, per loss, at one size (1e7 by default), with the 0.8
                            target of the simple losses;
``speedup.png``             gpuloss's speed-up over each peer per loss at that size (log scale).

    python -m benchmarks.plots benchmarks/results/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["make_plots", "PLOT_CASES"]

PLOT_CASES = ("mean_squared_error", "huber", "binary_crossentropy", "binary_crossentropy_logits",
              "categorical_crossentropy_logits", "sparse_categorical_crossentropy_logits")
COLORS = {"gpuloss": "#d62728", "numpy": "#1f77b4", "torch": "#ff7f0e", "jax": "#2ca02c", "sklearn": "#9467bd",
          "tf_keras": "#8c564b", "read ceiling": "#7f7f7f"}
CAT_COLORS = {"simple": "#1f77b4", "logexp": "#d62728", "other": "#7f7f7f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(data: dict) -> str:
    m = data["meta"]["machine"]
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores — gpuloss {data['meta']['versions'].get('gpuloss')}"


def plot_throughput(data: dict, path: Path, cases=PLOT_CASES) -> Path | None:
    plt = _pyplot()
    rows = data["results"]
    cases = [c for c in cases if any(r["case"] == c for r in rows)]
    if not cases:
        return None
    ncol = 3 if len(cases) > 4 else 2
    nrow = (len(cases) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        rs = sorted((r for r in rows if r["case"] == case), key=lambda r: r["n"])
        libs: dict[str, list] = {}
        for r in rs:
            for lib, t in r["timings"].items():
                name = "read ceiling" if lib == "read" else lib
                libs.setdefault(name, []).append((r["n"], r["n"] / t["median_s"] / 1e9))
        for lib, pts in libs.items():
            xs, ys = zip(*pts)
            style = dict(color=COLORS.get(lib), marker="o", ms=3)
            if lib == "read ceiling":
                style.update(ls="--", marker=None)
            if lib == "gpuloss":
                style.update(lw=2.5)
            ax.plot(xs, ys, label=lib, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(rs[0]["label"], fontsize=9)
        ax.set_xlabel("float32 elements")
        ax.set_ylabel("Gelem/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle(f"Throughput against size (median of interleaved runs) — {_title(data)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _at_size(data: dict, size: int) -> list[dict]:
    return [r for r in data["results"] if r["n"] == size and "gpuloss" in r["timings"]]


def plot_bandwidth_fraction(data: dict, path: Path, size: int = 10_000_000) -> Path | None:
    plt = _pyplot()
    rows = [r for r in _at_size(data, size) if "read" in r["timings"]]
    if not rows:
        return None
    rows.sort(key=lambda r: (r["category"], -r["derived"]["fraction_of_read"]))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    names = [r["case"] for r in rows]
    vals = [r["derived"]["fraction_of_read"] for r in rows]
    ax.barh(names, vals, color=[CAT_COLORS.get(r["category"], "#7f7f7f") for r in rows])
    for i, v in enumerate(vals):
        ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=7)
    ax.axvline(0.8, color="k", ls="--", lw=1)
    ax.text(0.8, len(rows) - 0.4, " target 0.8 (simple losses)", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("t(streaming read of the same bytes) / t(gpuloss)")
    ax.set_xlim(0, max(1.05, max(vals) + 0.15))
    read = rows[0]["derived"]["read_gbps"]
    ax.set_title(f"Fraction of the streaming-read ceiling at {size:.0e} elements "
                 f"(read ceiling ≈ {read:.0f} GB/s)\nblue: simple losses, red: log/exp, grey: other — {_title(data)}",
                 fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup(data: dict, path: Path, size: int = 10_000_000) -> Path | None:
    plt = _pyplot()
    import numpy as np

    rows = _at_size(data, size)
    if not rows:
        return None
    libs = [lib for lib in ("numpy", "torch", "jax", "sklearn", "tf_keras")
            if any(lib in r["timings"] for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))
    h = 0.8 / max(1, len(libs))
    for k, lib in enumerate(libs):
        vals = [r["derived"]["speedup"].get(lib, np.nan) for r in rows]
        ax.barh(y + k * h, vals, height=h, label=lib, color=COLORS.get(lib))
    ax.axvline(1, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y + h * (len(libs) - 1) / 2, [r["case"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("t(peer) / t(gpuloss)   (> 1: gpuloss faster)")
    ax.set_title(f"gpuloss speed-up over each peer at {size:.0e} elements\n{_title(data)}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(data: dict, out: Path, size: int = 10_000_000) -> list[str]:
    """All plots of ``data`` into ``out``; returns the files written ([] without matplotlib)."""
    try:
        _pyplot()
    except ImportError:
        return []
    out = Path(out)
    written = [plot_throughput(data, out / "throughput.png"),
               plot_bandwidth_fraction(data, out / "bandwidth_fraction.png", size),
               plot_speedup(data, out / "speedup.png", size)]
    return [str(p) for p in written if p is not None]


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/results.json")
    print("\n".join(make_plots(json.loads(src.read_text()), src.parent)))

"""kernels/ installs as gpuloss.kernels, never as a top-level `kernels`, in both install modes."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import importlib.util, os, sys
    os.chdir(os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~")) else "/")
    sys.path = [p for p in sys.path if p not in ("", ".")]
    import gpuloss.kernels.numba.codegen as cg
    import gpuloss
    assert importlib.util.find_spec("kernels") is None, "a top-level 'kernels' package is importable"
    print(os.path.dirname(gpuloss.kernels.__file__))
""")


def _venv(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "env")], check=True)
    py = tmp / "env" / "bin" / "python"
    # numpy, numba and setuptools come from the running environment, through a .pth file
    # (plain paths: that environment's own .pth files, its editable gpuloss included, are not read)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "outer.pth").write_text("\n".join(sorted(here)) + "\n")
    return py


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_kernels_install_as_subpackage(tmp_path, editable):
    py = _venv(tmp_path)
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
           "--no-build-isolation"]
    cmd += ["-e", str(ROOT)] if editable else [str(ROOT)]
    subprocess.run(cmd, check=True, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    out = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    location = Path(out.stdout.strip())
    if editable:
        assert location == ROOT / "kernels"
    else:
        assert location.name == "kernels" and location.parent.name == "gpuloss"
        assert ROOT not in location.parents


def test_an_installed_package_leaves_nothing_behind_after_uninstall(tmp_path):
    """Numba's compiled code of the package's own kernels (label scans, sums, Circle) goes to
    the kernel cache, not beside the installed sources: there, pip would not remove it, and
    the gpuloss/ folder of cache files it left would shadow a later editable install as a
    namespace package (README's install-and-demo command, then its install-and-test command
    in one environment)."""
    py = _venv(tmp_path)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", GPULOSS_CACHE_DIR=str(tmp_path / "cache"))
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)], check=True, env=env)
    run = textwrap.dedent("""
        import os, sys
        sys.path = [p for p in sys.path if p not in ("", ".")]
        import numpy as np, gpuloss
        r = np.random.default_rng(0)
        emb = r.standard_normal((40, 8)).astype(np.float32)
        gpuloss.circle(r.integers(0, 4, 40), emb / np.linalg.norm(emb, axis=1, keepdims=True))
        gpuloss.Hinge()(r.integers(0, 2, (500, 3)).astype(np.float32), r.standard_normal((500, 3)).astype(np.float32))
        gpuloss.CategoricalCrossentropy()(np.eye(5, dtype=np.float32)[r.integers(0, 5, 300)],
                                          r.dirichlet(np.ones(5), 300).astype(np.float32))
        print(os.path.dirname(gpuloss.__file__))
    """)
    out = subprocess.run([str(py), "-c", run], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    installed = Path(out.stdout.strip())
    assert not [p for p in installed.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert list((tmp_path / "cache").rglob("*.nbi"))  # compiled, and cached where it belongs
    subprocess.run(pip + ["uninstall", "-q", "-y", "gpuloss"], check=True, env=env)
    assert not installed.exists(), sorted(str(p) for p in installed.rglob("*"))[:10]

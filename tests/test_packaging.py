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

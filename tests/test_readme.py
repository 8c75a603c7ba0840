"""Every Python code block of the README runs (and the shell blocks name real commands)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _needs_gpu(code: str) -> bool:
    return code.startswith("# needs a GPU")


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, capsys, request):
    if _needs_gpu(code):
        request.getfixturevalue("cupy_gpu")
        for lib in re.findall(r"^import (cudf|torch|jax)\b", code, flags=re.M):
            pytest.importorskip(lib)  # GPU machines without cuDF skip that block, cleanly
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "a README example should print what it shows"


def test_readme_has_the_two_setup_commands_first():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    assert 'pip install . && gpuloss demo' in first
    assert 'pip install -e ".[test]" && python -m pytest -q' in first
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -q' in ci.splitlines()

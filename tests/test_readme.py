"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {})


def test_readme_demo_command_runs_with_the_quick_flag(tmp_path):
    """The fresh-machine demo command (its last step, in this environment) with --quick."""
    import json
    import shlex
    import subprocess
    import sys

    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    demo = next(block for block in bash if "torchattr demo" in block).strip()
    assert demo.startswith("python3 -m venv .venv") and "pip install torch==2.13.0" in demo
    command = shlex.split(demo.split("&&")[-1])
    assert command[:4] == ["python", "-m", "torchattr", "demo"]
    result = subprocess.run(
        [sys.executable, *command[1:], "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=README.parent,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "saliency" in json.dumps(metrics) and (tmp_path / "overlays").is_dir()

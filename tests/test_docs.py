"""The documentation site: its examples run, it builds with warnings as errors, and the parts
filled in from elsewhere (README sections, the metric directions) are there."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BLOCKS = [
    (page, index, block)
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_how_to_has_an_executed_example():
    pages = {page.relative_to(DOCS).as_posix() for page, _, _ in BLOCKS}
    for name in ("pyhealth", "monai", "huggingface", "lightning"):
        assert f"howto/{name}.md" in pages


@pytest.mark.parametrize(
    ("page", "index", "block"),
    BLOCKS,
    ids=[f"{p.relative_to(DOCS).as_posix()}-{i}" for p, i, _ in BLOCKS],
)
def test_docs_example_runs(page, index, block):
    if "from monai" in block:
        pytest.importorskip("monai")
    if "from transformers" in block:
        pytest.importorskip("transformers")
    exec(compile(block, f"{page.relative_to(ROOT)} example {index}", "exec"), {})


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page.relative_to(DOCS).as_posix() in nav, page


def test_getting_started_has_the_readme_commands():
    hooks = load_hooks()
    assert "<!-- readme: On a fresh machine -->" in (DOCS / "index.md").read_text()
    section = hooks.readme_section("On a fresh machine")
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(commands) == 2 and all(command in readme for command in commands)
    assert "torchattr demo" in commands[0] and "pytest" in commands[1]


def test_readme_sections_are_cut_at_their_end():
    hooks = load_hooks()
    tour = hooks.readme_section("A tour", alone=True)
    assert "ta.saliency" in tour and "ta.cam(" not in tour  # the CAM subsection is left out
    conventions = hooks.readme_section("Conventions")
    assert "**Targets.**" in conventions and "## Architecture" not in conventions
    with pytest.raises(ValueError, match="no section"):
        hooks.readme_section("No such section")


def test_directions_table_lists_every_metric():
    from torchattr.metrics import DIRECTIONS

    table = load_hooks().directions_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(DIRECTIONS)
    for name, direction in DIRECTIONS.items():
        assert f"| `{name}` | {direction.word} |" in table


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: broken links, missing pages or docstring warnings fail."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    for name in ("torchattr.saliency", "torchattr.cam.cam", "torchattr.metrics.road"):
        assert f'id="{name}"' in reference
    assert (tmp_path / "site" / "img" / "demo_overlay.png").is_file()
    assert not (tmp_path / "site" / "hooks.py").exists()

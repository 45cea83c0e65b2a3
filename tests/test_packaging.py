"""The wheel: built from this checkout, it carries the LICENSE and the metadata, and
``import torchattr`` works from it without any extra installed.

The wheel is built with ``pip wheel --no-deps --no-build-isolation`` (setuptools from the test
extra; no download). It is then unpacked, and a subprocess in isolated mode (``python -I``: no
current directory on the path, no ``PYTHON*`` variables) imports torchattr from the unpacked wheel
with the optional packages (matplotlib, Pillow, tqdm, the oracles, einops) made unimportable,
so an import of an extra at module level, or a file missing from the wheel, fails the test.
"""

from __future__ import annotations

import email
import importlib.util
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = [
    "matplotlib", "PIL", "tqdm", "captum", "transformers", "monai", "einops", "zennit", "scipy",
    "mkdocs", "pytest", "hypothesis",
]  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools (test extra) is needed to build the wheel without isolation")
    # Build from a copy of what the wheel is made of, so that no build/ or *.egg-info folder is
    # left in the checkout (nor a stale build/lib from an earlier build packaged).
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "torchattr", source / "torchattr",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deprecat" not in (result.stdout + result.stderr).lower()
    (built,) = out.glob("torchattr-*.whl")
    return built


def test_wheel_carries_the_license_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(license_file) == (ROOT / "LICENSE").read_bytes()
        (meta_file,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_file))
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in meta.get_all("License-File")
    assert "Integrated Gradients" in meta["Summary"] and "LRP" in meta["Summary"]
    requires = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in requires) == ["numpy", "torch"]
    for extra in ("test", "viz", "docs", "progress"):
        assert extra in meta.get_all("Provides-Extra")
    assert any(
        c.startswith("License") or c.startswith("Programming") for c in meta.get_all("Classifier")
    )
    for path in ("torchattr/py.typed", "torchattr/cam/formulas.py", "torchattr/lrp/api.py",
                 "torchattr/metrics/directions.py", "torchattr/cli/__init__.py"):  # fmt: skip
        assert path in names, path
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)


def test_import_without_extras_from_the_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        blocked = {EXTRAS!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ImportError(f"{{name}} is an extra, not installed here")
                return None

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(target)!r})
        import torch
        import torchattr as ta
        assert ta.__file__.startswith({str(target)!r}), ta.__file__
        for name in ("metrics", "viz", "io", "data", "cli"):
            getattr(ta, name)
        import torchattr.cam.formulas, torchattr.lrp.rules
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
        maps = ta.saliency(model, torch.rand(2, 3, 2, 2), target=1)
        assert maps.shape == (2, 2, 2)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
        assert not loaded, loaded
        print("ok", ta.__version__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")

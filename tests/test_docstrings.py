"""Every public name has a docstring with a formula or a definition and an example.

Public names: ``torchattr.__all__`` and the ``__all__`` of the public subpackages: the modules
that docs/reference.md renders (``PACKAGES``). A function, class or module needs a
summary line (its definition), an ``Example::`` block (or doctest) and, for the attribution
methods and metrics, a formula: a double-backquoted expression with an operator or a shape.
Data (tuples, dicts, type aliases) need a mention ````NAME```` or ``:data:`NAME``` in their
module's docstring. The exemption list is ``EXEMPT`` (empty: keep it short).
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

# The modules of the API reference, listed once in docs/reference.md (``::: module`` lines).
REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
PACKAGES = re.findall(r"^::: (torchattr[\w.]*)$", REFERENCE.read_text(), flags=re.M)
# Names whose docstrings must carry a formula (the methods and the metrics).
FORMULA_PACKAGES = {"torchattr", "torchattr.cam", "torchattr.metrics"}
EXEMPT: set[str] = set()

FORMULA = re.compile(r"``[^`]*(=|\+|\*|/|\^|\bsum|\bmean|\bmax|\bmin|\||->|\[)[^`]*``")
EXAMPLE = re.compile(r"(^|\n)\s*Examples?(::|:)|>>>")


def public_names() -> list[tuple[str, str]]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [(package, name) for name in module.__all__]
    return names


def problems(package: str, name: str) -> list[str]:
    """What the docstring of ``package.name`` lacks (empty when it is complete)."""
    module = importlib.import_module(package)
    obj = getattr(module, name)
    if not (callable(obj) or isinstance(obj, types.ModuleType)):
        doc = module.__doc__ or ""
        mentioned = f"``{name}``" in doc or f":data:`{name}`" in doc
        return [] if mentioned else [f"data, not described in the docstring of {package}"]
    doc = inspect.getdoc(obj) or ""
    if not isinstance(obj, types.ModuleType) and doc == inspect.getdoc(type(obj)):
        doc = ""  # an instance that only inherits its type's docstring
    missing = []
    summary = doc.strip().splitlines()[0] if doc.strip() else ""
    if len(summary.split()) < 4:
        missing.append("a summary line (its definition)")
    if not EXAMPLE.search(doc):
        missing.append("an Example:: block")
    if package in FORMULA_PACKAGES and not FORMULA.search(doc):
        missing.append("a formula (``...`` with an operator or a shape)")
    return missing


def test_the_public_surface_is_listed():
    names = public_names()
    assert ("torchattr", "saliency") in names and ("torchattr.metrics", "road") in names
    assert {"torchattr", "torchattr.cam", "torchattr.viz", "torchattr.io"} <= set(PACKAGES)
    assert len(names) > 60


@pytest.mark.parametrize(("package", "name"), public_names())
def test_public_name_is_documented(package, name):
    if f"{package}.{name}" in EXEMPT:
        pytest.skip("documented exemption")
    assert problems(package, name) == [], f"{package}.{name}"


def test_the_checker_fails_on_bad_docstrings(monkeypatch):
    """The check itself can fail: a name without an example or formula is reported."""
    import torchattr

    def bare(x):
        """Does a thing to x."""

    monkeypatch.setattr(torchattr, "bare", bare, raising=False)
    assert problems("torchattr", "bare") == [
        "an Example:: block",
        "a formula (``...`` with an operator or a shape)",
    ]
    monkeypatch.setattr(torchattr, "LIST", (1, 2), raising=False)
    assert problems("torchattr", "LIST") != []

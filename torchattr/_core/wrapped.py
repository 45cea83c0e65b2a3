"""Wrapped models: ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``.

A wrapper forwards to the module it holds; attributions explain that module. :func:`unwrap`
returns it (with the attribute path of the wrapper, ``"module."`` or ``"_orig_mod."``), so that
layers and rule names resolve with or without the wrapper's prefix.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _wrapped(model: Any) -> tuple[nn.Module, str] | None:
    """The module a wrapper holds and its attribute name, or None for a plain model."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module, "module"
    inner = getattr(model, "_orig_mod", None)  # torch._dynamo's OptimizedModule
    if isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner, "_orig_mod"
    return None


def unwrap(model: Any) -> tuple[Any, str]:
    """``(inner model, prefix)``: the module inside any stack of wrappers and the dotted path to
    it (``""`` for a plain model, ``"module."`` for DataParallel/DDP, ``"_orig_mod."`` for a
    compiled module, concatenated for nested wrappers)."""
    prefix = ""
    while (found := _wrapped(model)) is not None:
        model, name = found
        prefix += name + "."
    return model, prefix


def strip_prefix(name: str, prefix: str) -> str:
    """``name`` without the wrapper parts of ``prefix`` it starts with (``"module.layer4"`` ->
    ``"layer4"`` for the prefix ``"module."``); other names are returned as they are."""
    for part in prefix.split(".")[:-1]:
        if name.startswith(part + "."):
            name = name[len(part) + 1 :]
    return name

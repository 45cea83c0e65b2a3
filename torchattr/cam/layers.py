"""Which modules a CAM explains: ``layer=`` resolved to submodules, FullGrad's bias layers."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from torch import nn

from torchattr._core.layers import layer_name
from torchattr._core.wrapped import strip_prefix, unwrap

__all__ = ["LayerArg", "bias_layers", "resolve_cam_layers"]

LayerArg = nn.Module | str | Sequence[nn.Module | str] | None
_BIAS_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)


def resolve_cam_layers(model: Any, layer: LayerArg) -> tuple[tuple[nn.Module, ...], list[str]]:
    """Modules (and names for messages) of ``layer``: a module, a dotted name or a list of them.

    Names of a wrapped model (DataParallel, DDP, ``torch.compile``) resolve with or without the
    wrapper's prefix (``"module.layer4"`` or ``"layer4"``). An unknown name raises a ValueError
    listing the closest submodule names (difflib). Definition: ``layer`` -> the tuple of
    ``model.get_submodule(name)`` (names stripped of a wrapper's prefix) and their names.

    Example::

        modules, names = resolve_cam_layers(model, ["layer3", "module.layer4"])
    """
    if layer is None:
        raise TypeError(
            "layer is required: pass the submodule (or its dotted name, e.g. 'layer4') whose "
            "activations explain the prediction"
        )
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not items:
        raise ValueError("layer is an empty list: expected at least one submodule")
    inner, prefix = unwrap(model)
    named = dict(inner.named_modules()) if isinstance(inner, nn.Module) else {}
    modules, names = [], []
    for item in items:
        if isinstance(item, str):
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"layer {item!r} is a name but model is a {type(model).__name__}, not an "
                    "nn.Module: pass the submodule itself"
                )
            found = item if item in named else strip_prefix(item, prefix)
            if found not in named or not found:
                raise ValueError(_unknown_layer(item, named))
            modules.append(named[found])
            names.append(repr(found))
        elif isinstance(item, nn.Module):
            modules.append(item)
            names.append(layer_name(inner, item))
        else:
            raise TypeError(
                f"layer must be an nn.Module, a dotted submodule name or a list of them, got "
                f"{type(item).__name__}"
            )
    return tuple(modules), names


def _unknown_layer(name: str, named: dict[str, nn.Module]) -> str:
    candidates = [n for n in named if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if close:
        hint = "close matches: " + ", ".join(repr(c) for c in close)
    else:
        top = [n for n in candidates if "." not in n][:10]
        hint = "top-level submodules: " + (", ".join(repr(t) for t in top) or "none")
    return f"layer {name!r} is not a submodule of the model; {hint}"


def bias_layers(model: Any, layer: LayerArg) -> tuple[tuple[nn.Module, ...], list[str]]:
    """FullGrad's layers: every Conv / BatchNorm module with a bias inside ``layer`` (or model)."""
    if layer is None:
        if not isinstance(model, nn.Module):
            raise TypeError("fullgrad with layer=None needs an nn.Module model")
        roots: tuple[nn.Module, ...] = (model,)
    else:
        roots, _ = resolve_cam_layers(model, layer)
    found: dict[int, nn.Module] = {}
    for root in roots:
        for m in root.modules():
            if _effective_bias_exists(m):
                found.setdefault(id(m), m)
    if not found:
        raise ValueError(
            "fullgrad found no Conv or BatchNorm layer with a bias in layer "
            f"{'(the model)' if layer is None else repr(layer)}: nothing to decompose"
        )
    modules = tuple(found.values())
    return modules, [layer_name(unwrap(model)[0], m) for m in modules]


def _effective_bias_exists(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.bias is not None or m.running_mean is not None
    return isinstance(m, _BIAS_LAYERS) and m.bias is not None

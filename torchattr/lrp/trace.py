"""Tracing a model with ``torch.fx`` (once per model structure, cached).

Modules LRP knows how to treat (layers, activations, pools, norms, attention: see
:data:`torchattr.lrp.ops.LEAF_MODULES`) stay single nodes; everything else, user modules and
``torch.nn`` containers alike, is traced through, so functional code (``x + y``, ``torch.cat``,
``F.relu``) appears in the graph.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import fx, nn

from torchattr.lrp.ops import LEAF_MODULES


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_MODULES)


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, fx.Graph]] = weakref.WeakKeyDictionary()


def structure(model: nn.Module) -> tuple[Any, ...]:
    """What a traced graph depends on: the forward methods and the module tree (not the weights)."""
    return tuple(
        (name, id(m), type(m), getattr(type(m), "forward", None))
        for name, m in model.named_modules()
    )


def trace(model: nn.Module) -> fx.Graph:
    """The model's graph (shared and cached: never modify it, copy it first).

    Raises a ``TypeError`` that says why when ``torch.fx`` cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"LRP needs an nn.Module (its graph is traced), got {type(model).__name__}")
    key = structure(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        graph = _Tracer().trace(model)
    except Exception as error:
        raise TypeError(
            f"LRP traces the model with torch.fx, and tracing {type(model).__name__} failed: "
            f"{type(error).__name__}: {error}. Typical causes: Python control flow on tensor "
            "values (`if x.sum() > 0`), or calls torch.fx cannot follow. Move such code into a "
            "submodule that receives a rule, or make it depend on shapes only."
        ) from error
    _CACHE[model] = (key, graph)
    return graph


def copy_graph(graph: fx.Graph) -> tuple[fx.Graph, dict[fx.Node, fx.Node]]:
    """A fresh copy of ``graph`` and the map from old to new nodes."""
    new = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    output = new.graph_copy(graph, mapping)
    new.output(output)
    return new, mapping


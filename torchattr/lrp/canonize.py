"""Graph passes that run before rules are assigned.

* :func:`merge_batchnorm`: a BatchNorm whose input is a dense or convolution layer used nowhere
  else is folded into that layer (the layer node is marked, the BatchNorm node removed). The
  merged weights are computed from the current parameters each time the graph runs; the model
  itself is never modified.
* :func:`annotate`: per node, which flat inputs it depends on, whether its value is known to be
  non-negative (after ReLU, softmax, ...: rules then skip the ``x-`` terms), and whether a dense
  or convolution layer is a *first layer* (no such layer between it and the inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from torchattr.lrp.affine import BATCHNORM, mergeable
from torchattr.lrp.ops import NONNEGATIVE, PRESERVES_NONNEGATIVE, function_kind, module_kind


def merge_batchnorm(graph: fx.Graph, modules: dict[str, nn.Module]) -> dict[str, str]:
    """Fold BatchNorm nodes into the layer before them; return ``{layer node: bn module name}``."""
    merged: dict[str, str] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BATCHNORM):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and len(source.users) == 1
            and len(node.args) == 1
            and not node.kwargs
            and source.name not in merged
            and mergeable(modules[source.target], modules[node.target])
        ):
            merged[source.name] = node.target
            node.replace_all_uses_with(source)
            graph.erase_node(node)
    return merged


@dataclass
class Annotations:
    """Facts about nodes, by node name."""

    depends: dict[str, frozenset[int]] = field(default_factory=dict)
    nonneg: dict[str, bool] = field(default_factory=dict)
    first: dict[str, bool] = field(default_factory=dict)
    layer_above: dict[str, bool] = field(default_factory=dict)


def kind_of(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The node's kind (see :mod:`torchattr.lrp.ops`); ``""`` for placeholders and constants."""
    if node.op == "call_module":
        return module_kind(modules[node.target])
    if node.op in ("call_function", "call_method"):
        return function_kind(node.target)
    return ""


def annotate(graph: fx.Graph, modules: dict[str, nn.Module], inputs: dict[str, int]) -> Annotations:
    """Dependencies on the flat inputs (``inputs``: placeholder name -> flat index), sign
    knowledge and first layers, in one pass in topological order."""
    facts = Annotations()
    for node in graph.nodes:
        sources = [a for a in node.all_input_nodes]
        depends = frozenset().union(*(facts.depends[s.name] for s in sources))
        if node.op == "placeholder" and node.name in inputs:
            depends = frozenset({inputs[node.name]})
        facts.depends[node.name] = depends
        kind = kind_of(node, modules)
        live = [s for s in sources if facts.depends[s.name]]
        above = any(facts.layer_above[s.name] for s in live)
        is_layer = kind in ("dense", "conv")
        facts.first[node.name] = is_layer and not above
        facts.layer_above[node.name] = above or is_layer
        facts.nonneg[node.name] = _nonnegative(node, modules, live, facts)
    return facts


_META_METHODS = {"size", "dim", "numel"}


def _nonnegative(
    node: fx.Node, modules: dict[str, nn.Module], live: list[fx.Node], facts: Annotations
) -> bool:
    """Whether the node's value is known to be >= 0 (integers from shapes count as such)."""
    sources = node.all_input_nodes
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return True
    inherits = bool(live) and all(facts.nonneg[s.name] for s in sources)
    if node.op == "call_module":
        module = modules[node.target]
        if type(module) in NONNEGATIVE:
            return True
        pooling = module_kind(module) == "route" or "AvgPool" in type(module).__name__
        return pooling and inherits
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target in NONNEGATIVE:
        return True
    return node.target in PRESERVES_NONNEGATIVE and inherits

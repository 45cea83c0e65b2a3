"""The rewrite: every node gets its rule, and the graph becomes the relevance program.

:func:`program` traces the model (cached), copies the graph, merges BatchNorm, annotates the nodes
and replaces each node that carries a rule by a ``call_function`` node whose target applies the
rule (a small closure). Running the resulting ``GraphModule`` gives the model's ordinary output;
one backward through it gives the relevance (see :mod:`torchattr.lrp.rules`).

Programs are cached per model, structure, composite and input layout. They hold no parameters:
each node reads the current (detached) weights of its module when it runs, through the
per-call context set by :func:`running`, so a cached program always explains the model as it is
now.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from torchattr._core.inputs import InputSpec
from torchattr.lrp import affine, attention
from torchattr.lrp.canonize import Annotations, annotate, kind_of, merge_batchnorm
from torchattr.lrp.composites import Composite, Site, default_rule
from torchattr.lrp.ops import DIVISIONS, PRODUCTS, describe
from torchattr.lrp.rules import Constant, Epsilon, Pass, RuleError, _Rule, identity
from torchattr.lrp.trace import copy_graph, structure, trace


@dataclass
class _Call:
    """What the nodes of a program need while it runs once."""

    model: nn.Module
    modules: dict[str, nn.Module]
    sinks: list[tuple[int, Tensor]] = field(default_factory=list)


_CALL: ContextVar[_Call | None] = ContextVar("torchattr_lrp_call", default=None)


@contextlib.contextmanager
def running(model: nn.Module) -> Iterator[_Call]:
    """Context in which a program of ``model`` runs; collects embedding outputs (``sinks``)."""
    call = _Call(model, dict(model.named_modules()))
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)


def _current() -> _Call:
    call = _CALL.get()
    if call is None:
        raise RuntimeError("an LRP program runs only inside torchattr.lrp")
    return call


@dataclass(frozen=True)
class Program:
    """The rewritten graph as a module, and the rule of every node (for inspection)."""

    module: fx.GraphModule
    plan: tuple[tuple[Site, _Rule | None], ...]


_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[Any, Program]] = weakref.WeakKeyDictionary()
_MAX_PROGRAMS = 8


def program(model: nn.Module, composite: Composite, spec: InputSpec, count: int) -> Program:
    """The relevance program of ``model`` under ``composite`` (cached)."""
    key = (structure(model), composite, spec, count)
    cache = _PROGRAMS.setdefault(model, {})
    try:
        hit = cache.get(key)
    except TypeError:  # a composite holding something unhashable: no caching
        return _build(model, composite, spec, count)
    if hit is None:
        hit = _build(model, composite, spec, count)
        if len(cache) >= _MAX_PROGRAMS:
            cache.pop(next(iter(cache)))
        cache[key] = hit
    return hit


def _build(model: nn.Module, composite: Composite, spec: InputSpec, count: int) -> Program:
    graph, _ = copy_graph(trace(model))
    modules = dict(model.named_modules())
    merged = merge_batchnorm(graph, modules)
    inputs = _input_slots(graph, spec, count)
    facts = annotate(graph, modules, inputs)
    plan = []
    for node in list(graph.nodes):
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            _rewrite(node, _attribute(node.target), ())
            continue
        site = _site(node, modules, facts)
        rule = composite.rule_for(site) or default_rule(site)
        plan.append((site, rule))
        handler = _handler(node, site, rule, composite, modules, merged, facts)
        if handler is not None:
            _rewrite(node, handler, node.args, node.kwargs)
    graph.lint()
    return Program(fx.GraphModule(nn.Module(), graph), tuple(plan))


def _input_slots(graph: fx.Graph, spec: InputSpec, count: int) -> dict[str, int]:
    """Placeholder name -> index of the flat input it receives."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if spec.kind == "dict":
        slots = {n.name: spec.keys.index(n.target) for n in placeholders if n.target in spec.keys}
        missing = set(spec.keys) - {n.target for n in placeholders}
        if missing:
            raise ValueError(
                f"inputs has keys {sorted(missing)} that the model's forward does not take "
                f"(its arguments: {[n.target for n in placeholders]})"
            )
        return slots
    if any(n.target.startswith("*") for n in placeholders[:count]):
        raise TypeError("LRP needs a forward with named arguments, not *args")
    return {n.name: i for i, n in enumerate(placeholders[:count])}


def _site(node: fx.Node, modules: dict[str, nn.Module], facts: Annotations) -> Site:
    kind = kind_of(node, modules)
    if node.op == "call_module":
        module = modules[node.target]
        return Site(node.target, kind, module, facts.first[node.name], describe(module))
    return Site(node.name, kind, None, facts.first[node.name], describe(node.target))


def _rewrite(node: fx.Node, target: Callable[..., Any], args: Any, kwargs: Any = None) -> None:
    node.op = "call_function"
    node.target = target
    node.args = tuple(args)
    node.kwargs = dict(kwargs or {})


def _attribute(path: str) -> Callable[[], Any]:
    def attribute() -> Any:
        value = _current().model
        for part in path.split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, Tensor) else value

    return attribute


# ----------------------------------------------------------------------------------------------
# node handlers

_INPLACE = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}  # fmt: skip
_DROPOUT_FUNCTIONS = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}
_DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_OPLIKE = ("op", "activation", "batchnorm", "route", "unknown", "norm", "softmax")


def _callable(node: fx.Node) -> Callable[..., Any]:
    """The node's operation, out of place, looked up when it runs (modules via the context)."""
    if node.op == "call_module":
        name = node.target

        def call_module(*args: Any, **kwargs: Any) -> Any:
            module = _current().modules[name]
            if getattr(module, "inplace", False):
                module = copy.copy(module)
                module.inplace = False
            return module(*args, **kwargs)

        return call_module
    if node.op == "call_method":
        method = node.target
        if method.endswith("_") and not method.endswith("__"):
            method = method[:-1]
        return lambda self, *args, **kwargs: getattr(self, method)(*args, **kwargs)
    function = _INPLACE.get(node.target, node.target)

    def call_function(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("inplace"):
            kwargs = {**kwargs, "inplace": False}
        return function(*args, **kwargs)

    return call_function


def _live(args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> list[int]:
    """Positions of positional tensor arguments that carry relevance."""
    live = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    others = [a for a in args if not isinstance(a, Tensor)]
    nested = any(t.requires_grad for t in _tensors((others, kwargs)))
    if nested:
        raise TypeError(
            f"LRP: relevance reaches node {site.name!r} ({site.target}) through a keyword or "
            "nested argument; rules need it as a positional tensor argument"
        )
    return live


def _no_rule_message(site: Site) -> str:
    return (
        f"LRP has no rule for node {site.name!r} ({site.target}, kind {site.kind!r}) and "
        f"relevance reaches it. Assign one by name, e.g. composite=ta.composites.by_name("
        f"{{{site.name!r}: ta.rules.Pass()}}) | ta.composites.EpsilonPlusFlat() (Pass for an "
        "element-wise function, Norm for a linear map without weights)"
    )


def _handler(
    node: fx.Node,
    site: Site,
    rule: _Rule | None,
    composite: Composite,
    modules: dict[str, nn.Module],
    merged: dict[str, str],
    facts: Annotations,
) -> Callable[..., Any] | None:
    """The function replacing ``node`` (None: the node stays as it is)."""
    kind = site.kind
    if kind in ("dense", "conv"):
        if rule is None:
            raise TypeError(
                f"LRP: the composite gives no rule to layer {site.name!r} ({site.target}); add "
                f"one, e.g. ta.composites.by_kind({{{kind!r}: ta.rules.Epsilon()}}) | composite"
            )
        return _layer_handler(node, site, rule, merged.get(node.name), facts)
    if kind == "embedding":
        return _embedding_handler(node, site, facts)
    if kind == "attention":
        return _attention_handler(node, site, composite, modules)
    if kind in ("norm", "softmax") and rule is None:
        return _norm_handler(node, site, modules) if kind == "norm" else _softmax_handler(node)
    if rule is None:
        if kind == "route":
            return _route_handler(node, modules)
        return _unsupported_handler(node, site)
    if kind in _OPLIKE:
        if not rule.accepts_ops or (
            kind in ("norm", "softmax") and not isinstance(rule, (Pass, Constant))
        ):
            raise TypeError(
                f"LRP: rule {rule!r} cannot be applied to node {site.name!r} ({site.target}, "
                f"kind {kind!r}); operations without weights take Pass, Norm or Epsilon"
                + (" (norms and softmax: Pass or Constant)" if kind in ("norm", "softmax") else "")
            )
        return _op_handler(node, site, rule, modules)
    raise AssertionError(kind)


def _route_handler(node: fx.Node, modules: dict[str, nn.Module]) -> Callable[..., Any] | None:
    """Routing ops keep their plain gradient; dropout is the identity (LRP explains inference)."""
    if node.op == "call_module":
        if isinstance(modules[node.target], _DROPOUT_MODULES):
            return lambda x, *args, **kwargs: x
        return _callable(node)
    if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
        return lambda x, *args, **kwargs: x
    return None


def _unsupported_handler(node: fx.Node, site: Site) -> Callable[..., Any]:
    call = _callable(node)

    def unsupported(*args: Any, **kwargs: Any) -> Any:
        if any(t.requires_grad for t in _tensors((args, kwargs))):
            raise TypeError(_no_rule_message(site))
        return call(*args, **kwargs)

    return unsupported


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _op_handler(
    node: fx.Node, site: Site, rule: _Rule, modules: dict[str, nn.Module]
) -> Callable[..., Any]:
    """A weight-free operation under ``rule`` (``Norm``, ``Epsilon`` or ``Pass``)."""
    call = _callable(node)
    if site.kind == "batchnorm":
        call = _batchnorm_eval(node.target)
    product = node.target in PRODUCTS
    division = node.target in DIVISIONS

    def op(*args: Any, **kwargs: Any) -> Any:
        live = _live(args, kwargs, site)
        if not live:
            return call(*args, **kwargs)
        if division and any(k > 0 for k in live):
            raise TypeError(
                f"LRP: node {site.name!r} ({site.target}) divides by a tensor that carries "
                "relevance; no rule covers x / f(x). Assign a rule to it by name (e.g. Pass)"
            )
        try:
            return rule.op(
                lambda *a: call(*a, **kwargs), list(args), live, len(live) if product else 1
            )
        except RuleError as error:
            raise TypeError(f"LRP: node {site.name!r} ({site.target}): {error}") from None

    return op


def _batchnorm_eval(name: str) -> Callable[..., Tensor]:
    """A BatchNorm module as its eval-mode map (running statistics), whatever its mode."""

    def batchnorm(x: Tensor) -> Tensor:
        bn = _current().modules[name]
        if bn.running_mean is None:
            return bn(x)
        return F.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )

    return batchnorm


def _layer_handler(
    node: fx.Node, site: Site, rule: _Rule, bn_name: str | None, facts: Annotations
) -> Callable[..., Any]:
    """A dense or convolution layer (module or functional) under its rule."""
    source = node.args[0] if node.args else node.kwargs.get("input")
    nonneg = isinstance(source, fx.Node) and facts.nonneg.get(source.name, False)
    if node.op == "call_module":
        name = node.target
        cached: dict[bool, tuple[Any, affine.Affine]] = {}

        def weights(module: nn.Module, bn: nn.Module | None) -> affine.Affine:
            """The layer's record (BatchNorm merged), rebuilt only when a parameter changed."""
            key = _versions(module, bn)
            hit = cached.get(bn is None)
            if hit is None or hit[0] != key:
                hit = cached[bn is None] = (key, affine.module_affine(module, bn))
            return hit[1]

        def layer(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if args or kwargs:
                raise TypeError(f"LRP: layer {name!r} called with extra arguments")
            modules = _current().modules
            module = modules[name]
            bn = None if bn_name is None else modules[bn_name]
            if bn is not None and isinstance(module, nn.Linear) and x.ndim != 2:
                out = _apply(rule, x, weights(module, None), nonneg)
                return identity(_batchnorm_eval(bn_name)(out.detach()), out)
            return _apply(rule, x, weights(module, bn), nonneg)

        return layer
    function = node.target

    def functional(
        input: Tensor,  # noqa: A002 (the argument's name in F.linear and F.conv*d)
        weight: Tensor,
        bias: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if weight.requires_grad or (bias is not None and bias.requires_grad):
            raise TypeError(
                f"LRP: the weight of {site.name!r} ({site.target}) depends on the inputs; "
                "only constant weights are supported"
            )
        bias = None if bias is None else bias.detach()
        if function is F.linear:
            layer = affine.dense(weight.detach(), bias)
        else:
            layer = affine.functional_conv(function, weight.detach(), bias, *args, **kwargs)
        return _apply(rule, input, layer, nonneg)

    return functional


def _versions(*modules: nn.Module | None) -> tuple[Any, ...]:
    """Identity and in-place version of every parameter and buffer of ``modules``: equal keys
    mean equal values (an optimiser step or ``load_state_dict`` bumps the version)."""
    return tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device)
        for m in modules
        if m is not None
        for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
    )


def _apply(rule: _Rule, x: Tensor, layer: affine.Affine, nonneg: bool) -> Tensor:
    if not x.requires_grad:
        with torch.no_grad():
            return layer.add_bias(layer.evaluate(x), layer.bias)
    return rule.layer(x, layer, nonneg)


def _embedding_handler(node: fx.Node, site: Site, facts: Annotations) -> Callable[..., Any]:
    """Relevance ends at an embedding of the ids of one input: its output becomes a leaf."""
    source = node.args[0] if node.args else node.kwargs.get("input")
    depends = facts.depends.get(source.name, frozenset()) if isinstance(source, fx.Node) else ()
    call = _callable(node)

    def embedding(*args: Any, **kwargs: Any) -> Tensor:
        with torch.no_grad():
            out = call(*args, **kwargs)
        if not depends:
            return out
        if len(depends) > 1:
            raise TypeError(
                f"LRP: the ids of embedding {site.name!r} depend on several inputs "
                f"({sorted(depends)}); relevance cannot be assigned to one of them"
            )
        leaf = out.detach().requires_grad_(True)
        _current().sinks.append((next(iter(depends)), leaf))
        return leaf

    return embedding


def _norm_handler(node: fx.Node, site: Site, modules: dict[str, nn.Module]) -> Callable[..., Any]:
    """LayerNorm / GroupNorm / RMSNorm / InstanceNorm with the AttnLRP rule."""
    call = _callable(node)
    module = modules.get(node.target) if node.op == "call_module" else None
    channel = None if module is None or isinstance(module, (nn.LayerNorm, nn.RMSNorm)) else 1
    if node.op != "call_module" and node.target in (F.group_norm, F.instance_norm):
        channel = 1

    def norm(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not x.requires_grad:
            return call(x, *args, **kwargs)
        with torch.no_grad():
            y = call(x, *args, **kwargs)
        if node.op == "call_module":
            beta = getattr(_current().modules[node.target], "bias", None)
        else:
            beta = kwargs.get("bias", args[2] if len(args) > 2 else None)
        return attention.norm_rule(y, x, beta, channel)

    return norm


def _softmax_handler(node: fx.Node) -> Callable[..., Any]:
    call = _callable(node)

    def softmax(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not x.requires_grad:
            return call(x, *args, **kwargs)
        return attention.softmax_rule(lambda t: call(t, *args, **kwargs), x)

    return softmax


def _attention_handler(
    node: fx.Node, site: Site, composite: Composite, modules: dict[str, nn.Module]
) -> Callable[..., Any]:
    """Attention written out (:mod:`torchattr.lrp.attention`); its projections and feed-forward
    layers take the composite's rules, looked up as ``<name>.in_proj``, ``<name>.linear1``, ..."""

    def rule_for(name: str, kind: str, module: nn.Module | None) -> _Rule | None:
        rule = composite.rule_for(Site(name, kind, module, False, kind))
        if kind == "softmax":  # None: the AttnLRP softmax rule
            return rule
        return rule or default_rule(Site(name, kind)) or Epsilon()

    if node.op != "call_module":
        rules = {
            "product": rule_for(f"{node.name}.product", "op", None),
            "softmax": rule_for(f"{node.name}.softmax", "softmax", None),
        }
        return lambda *args, **kwargs: attention.scaled_dot_product_attention(
            *args, **kwargs, rules=rules
        )
    name = node.target

    def attend(*args: Any, **kwargs: Any) -> Any:
        module = _current().modules[name]
        if not any(t.requires_grad for t in _tensors((args, kwargs))):
            with torch.no_grad():
                return module(*args, **kwargs)
        if isinstance(module, nn.TransformerEncoder):
            return attention.encoder(module, *args, **kwargs, rule_for=rule_for, name=name)
        if isinstance(module, nn.TransformerEncoderLayer):
            return attention.encoder_layer(module, *args, **kwargs, rule_for=rule_for, name=name)
        rules = {
            "in_proj": rule_for(f"{name}.in_proj", "dense", None),
            "out_proj": rule_for(f"{name}.out_proj", "dense", module.out_proj),
            "product": rule_for(f"{name}.product", "op", None),
            "softmax": rule_for(f"{name}.softmax", "softmax", None),
        }
        return attention.multihead_attention(module, *args, **kwargs, rules=rules)

    return attend



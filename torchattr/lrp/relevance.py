"""The relevance pass: the model's forward with every step replaced by its rule.

Each step the plan pass recorded (see :mod:`torchattr.lrp.capture`) is met again, in the same
order, and computed by its rule (:mod:`torchattr.lrp.rules`): the value is the operation's
ordinary output, the gradient is the rule's relevance. One backward through the outputs then
gives the relevance of the inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.weak import WeakIdKeyDictionary

from torchattr.lrp import affine, attention
from torchattr.lrp.capture import (
    Facts,
    LRPError,
    Nondeterministic,
    Step,
    _Capture,
    _Frame,
    batchnorm_parameters,
    checksum,
    detached,
    inference,
    leaves,
    map_leaves,
    take_value,
)
from torchattr.lrp.composites import Composite, Site, default_rule
from torchattr.lrp.ops import DIVISIONS, PRODUCTS, describe, op_name
from torchattr.lrp.rules import Constant, Epsilon, RuleError, _Rule, identity, stabilize


class Relevance(_Capture):
    """The forward under the rules; ``sinks`` collects embedding outputs (``(slot, leaf)``)."""

    def __init__(
        self,
        model: nn.Module,
        composite: Composite,
        prefix: str,
        steps: list[Step],
        diagnose: bool = False,
    ) -> None:
        super().__init__(model, composite, prefix)
        self.steps = steps
        self.sinks: list[tuple[int, Tensor]] = []
        self.stash: dict[int, Any] = {}  # BatchNorm step -> the merged layer's rule
        self.diagnose = diagnose
        self.inputs_seen: list[tuple[int, Tensor]] = []  # layer step -> its input's checksum

    # -- operations relevance does not reach

    def plain(self, func: Any, args: Any, kwargs: Any) -> Any:
        inside = bool(self.stack) and self.stack[-1].opaque is not None
        if not inside:
            for t in leaves((args, kwargs)):
                if (
                    isinstance(t, Tensor)
                    and t.requires_grad
                    and not isinstance(t, nn.Parameter)
                    and self.fact(t) is None
                ):
                    raise LRPError(
                        f"LRP lost track of relevance: {describe(func)} in {self.scope()} "
                        "receives a tensor computed from the inputs outside the operations LRP "
                        "sees (e.g. by a custom torch.autograd.Function). Give the enclosing "
                        "module one rule (ta.composites.by_name({'<module>': ta.rules.Pass()}))"
                    )
        with torch.no_grad():
            return func(*args, **inference(func, args, kwargs))

    # -- steps

    def _next(self, site: Site, name: str) -> Step:
        if self.index >= len(self.steps):
            raise Nondeterministic(
                f"LRP: the forward took another path than in the plan pass: an extra operation "
                f"{site.name!r} ({site.target}). The model's control flow depends on values or "
                "on random draws; LRP needs a deterministic inference forward"
            )
        step = self.steps[self.index]
        if step.site.name != site.name or step.name != name:
            raise Nondeterministic(
                f"LRP: the forward took another path than in the plan pass: operation "
                f"{site.name!r} ({site.target}) where {step.site.name!r} ran before. The "
                "model's control flow depends on values or on random draws; LRP needs a "
                "deterministic inference forward"
            )
        self.index += 1
        return step

    def step(self, func, name, kind, in_place, args, kwargs, live, first):  # type: ignore[no-untyped-def]
        site = self.site(name, kind, func, first)
        index = self.index
        step = self._next(site, name)
        if not torch.is_grad_enabled():
            raise LRPError(
                f"LRP: relevance reaches {site.name!r} ({site.target}) in {self.scope()} with "
                "gradients disabled (a custom torch.autograd.Function or torch.no_grad() in the "
                "model's forward). Give the enclosing module one rule, e.g. "
                "ta.composites.by_name({'<module path>': ta.rules.Pass()}) | composite"
            )
        self.raw = (args, kwargs)  # parameters as they are: layer records are cached on them
        args, kwargs = map_leaves(self._constant, (args, kwargs))
        kwargs = inference(func, args, kwargs)
        written = None
        if in_place and kind != "route" and args and isinstance(args[0], Tensor):
            # The rule works on a copy (tensors it saves for the backward must not change) and
            # its output is written into the tensor the operation modifies.
            written, args = args[0], (args[0].clone(), *args[1:])
        try:
            out = _HANDLERS[kind](self, func, name, in_place, args, kwargs, step, index)
        except RuleError as error:
            raise TypeError(f"LRP: {site.name!r} ({site.target}): {error}") from None
        if written is not None:
            out = written.copy_(out)
        if self.diagnose and kind != "batchnorm" and step.merge is None:
            self._compare(func, args, kwargs, out, site)
        self.mark(out, self.output_facts(name, kind, live))
        return out

    def _constant(self, t: Any) -> Any:
        """Tensors relevance does not reach enter the rules detached (parameters included)."""
        if isinstance(t, Tensor) and t.requires_grad and self.fact(t) is None:
            return t.detach()
        return t

    def _compare(self, func: Any, args: Any, kwargs: Any, out: Any, site: Site) -> None:
        with torch.no_grad():
            expected = func(*map_leaves(detached, args), **map_leaves(detached, kwargs))
        for got, want in zip(leaves(out), leaves(expected)):
            if isinstance(got, Tensor) and got.is_floating_point() and not close(got, want):
                raise LRPError(
                    f"LRP: the relevance program differs from the model at {site.name!r} "
                    f"({site.target}, kind {site.kind!r}) in {self.scope()}: max |difference| "
                    f"{(got.detach() - want).abs().max().item():.3g}"
                )

    def embedding(self, func: Any, args: Any, kwargs: Any, facts: Facts) -> Any:
        site = self.site("embedding", "embedding", func, False)
        self._next(site, "embedding")
        with torch.no_grad():
            out = func(*args, **kwargs)
        leaf = out.detach().requires_grad_(True)
        self.sinks.append((next(iter(facts.depends)), leaf))
        self.mark(leaf, Facts(facts.depends))
        return leaf

    def module_step(self, frame: _Frame, output: Any) -> Any:
        live = [t for t in leaves(frame.inputs) if self.fact(t) is not None]
        floats = [t for t in live if not self.fact(t).ids]
        if not floats or not isinstance(output, Tensor):
            return None
        site = self._module_site(frame)
        self._next(site, "module")
        x, rule = floats[0], frame.opaque
        y = output.detach()
        if isinstance(rule, Constant):
            out = y
        elif rule == "rmsnorm":  # y = gamma * x / rms with rms constant: diagonal, R_x = R_y
            bias = getattr(frame.module, "bias", None)
            out = identity(y, x) if bias is None else _shifted_identity(y, x, bias)
        else:  # Pass, and activations
            if y.shape != x.shape:
                raise TypeError(
                    f"LRP: Pass on module {frame.path!r} ({type(frame.module).__name__}) needs "
                    f"its output shape to equal its input shape, got {list(y.shape)} from "
                    f"{list(x.shape)}; use ta.rules.Constant() or rules inside it"
                )
            out = identity(y, x)
        facts = [self.fact(t) for t in floats]
        self.mark(out, Facts(frozenset().union(*(f.depends for f in facts)),
                             any(f.layered for f in facts)))  # fmt: skip
        return out


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the exactness checks for a floating dtype."""
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 3e-2)


def close(a: Tensor, b: Tensor) -> bool:
    """Equal up to the floating-point tolerance of the dtype (relative to the largest value)."""
    a, b = a.detach(), b.detach()
    if a.shape != b.shape:
        return False
    tol = tolerance(a.dtype)
    scale = b.abs().max() if b.numel() else torch.zeros(())
    nan = torch.isnan(a) != torch.isnan(b)
    diff = torch.nan_to_num((a - b).abs(), nan=0.0, posinf=0.0, neginf=0.0)
    return bool(not nan.any() and (diff.max() if diff.numel() else 0) <= tol * (scale + 1e-12))


def _shifted_identity(y: Tensor, x: Tensor, bias: Tensor) -> Tensor:
    """``y = gamma x / rms + bias``: the shift is a bias, ``R_x = (y - bias) / y * R_y``."""
    y = y.detach()
    return y + (x - x.detach()) * ((y - bias.detach()) / stabilize(y, 1e-6))


# ----------------------------------------------------------------------------------------------
# handlers by kind: (pass, func, name, in_place, args, kwargs, step, index) -> output

_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
            "feature_alpha_dropout"}  # fmt: skip


def _out_of_place(func: Any, name: str, in_place: bool, kwargs: dict[str, Any]) -> Any:
    """The out-of-place form of an in-place call (``x.add_`` -> ``Tensor.add``,
    ``F.relu(x, inplace=True)`` -> ``F.relu(x)``), as a function of the positional args."""
    if "inplace" in kwargs:
        kwargs = {**kwargs, "inplace": False}
        return lambda *a: func(*a, **kwargs)
    if in_place and not op_name(func)[1]:  # an `inplace` flag passed positionally, last
        return lambda *a: func(*a[:-1], False, **kwargs)
    if in_place:
        found = getattr(torch.Tensor, name, None) or getattr(torch, name, None)
        if found is None:
            raise LRPError(f"LRP: no out-of-place form of in-place {name!r}")
        func = found
    return lambda *a: func(*a, **kwargs)


def _live_positions(args: Any, kwargs: Any, step: Step) -> list[int]:
    live = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    others = [a for a in args if not isinstance(a, Tensor)]
    if any(isinstance(t, Tensor) and t.requires_grad for t in leaves((others, kwargs))):
        raise TypeError(
            f"LRP: relevance reaches {step.site.name!r} ({step.site.target}) through a keyword "
            "or nested argument; rules need it as a positional tensor argument"
        )
    return live


def _route(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    if name in _DROPOUT:
        return args[0] if args else kwargs["input"]
    if name in ("detach", "data"):
        return identity(args[0].detach(), args[0])
    return func(*args, **kwargs)


def _op(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    rule = step.rule
    if name == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
        args = (args[0], *args[1])
    args = list(args)
    live = _live_positions(args, kwargs, step)
    fn = _out_of_place(func, name, in_place, kwargs)
    if name in DIVISIONS and any(k > 0 for k in live):
        raise TypeError(
            f"LRP: {step.site.name!r} ({step.site.target}) divides by a tensor that carries "
            "relevance; no rule covers x / f(x). Assign a rule to it (or its module) by name"
        )
    if name == "rdiv":
        raise TypeError(
            f"LRP: {step.site.name!r} ({step.site.target}) divides by a tensor that carries "
            "relevance; no rule covers c / x. Assign a rule to it (or its module) by name"
        )
    factors = len(live) if name in PRODUCTS else 1
    if step.gated:  # x * gate: the gate is held constant, x receives the relevance
        for k in step.gated:
            args[k] = args[k].detach()
        live = [k for k in live if k not in step.gated]
        factors = 1
    return rule.op(fn, args, live, factors)


def _activation(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    args = list(args)
    live = _live_positions(args, kwargs, step)
    fn = _out_of_place(func, name, in_place, kwargs)
    return step.rule.op(fn, args, live, 1)


def _softmax(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    x, rest = args[0], args[1:]
    fn = _out_of_place(func, name, in_place, kwargs)
    if step.rule is None:
        return attention.softmax_rule(lambda t: fn(t, *rest), x)
    return step.rule.op(fn, list(args), [0], 1)


def _norm(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        y = func(*args, **kwargs)
    if step.rule is None:
        return attention.norm_rule(name, args, kwargs, y)
    return step.rule.op(lambda *a: func(*a, **kwargs), list(args), [0], 1)


def _batchnorm(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    if step.merged:
        return rel.stash.pop(index)(batchnorm_parameters(*rel.raw), take_value(step))
    fn = _out_of_place(func, name, in_place, kwargs)
    live = _live_positions(list(args), kwargs, step)
    return step.rule.op(fn, list(args), live, 1)


_LAYER_SIGNATURES = {
    "linear": ("input", "weight", "bias"),
    "addmm": ("input", "mat1", "mat2", "beta", "alpha"),
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv_transpose": (
        "input",
        "weight",
        "bias",
        "stride",
        "padding",
        "output_padding",
        "groups",
        "dilation",
    ),
}
_RECORDS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _versions(*tensors: Any) -> tuple[Any, ...]:
    """Identity and in-place version of each tensor: equal keys mean equal values (an optimiser
    step or ``load_state_dict`` bumps the version; the storages are kept alive with the record,
    so a new tensor cannot reuse an old address)."""
    return tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device) if isinstance(t, Tensor) else t
        for t in tensors
    )


def _layer(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    family = name.rstrip("123d").rstrip("_") if name.startswith("conv") else name
    family = "conv_transpose" if name.startswith("conv_transpose") else family
    bound = dict(zip(_LAYER_SIGNATURES[family], args))
    bound.update(kwargs)
    if family == "addmm":
        x, weight, bias = bound["mat1"], bound["mat2"], bound["input"]
        if bound.get("beta", 1) != 1 or bound.get("alpha", 1) != 1:
            raise TypeError(f"LRP: {step.site.name!r}: torch.addmm with beta/alpha != 1")
    else:
        x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
    if weight.requires_grad or (isinstance(bias, Tensor) and bias.requires_grad):
        raise TypeError(
            f"LRP: the weight of {step.site.name!r} ({step.site.target}) depends on the inputs; "
            "only constant weights are supported"
        )
    if not x.requires_grad:
        with torch.no_grad():
            return func(*args, **kwargs)
    config = tuple(
        (k, v) for k, v in bound.items() if k not in ("input", "weight", "bias", "mat1", "mat2")
    )
    raw = dict(zip(_LAYER_SIGNATURES[family], rel.raw[0]))
    raw.update(rel.raw[1])
    key = (raw["mat2"], raw["input"]) if family == "addmm" else (raw["weight"], raw.get("bias"))

    rel.inputs_seen.append((index, checksum(x)))

    def apply(bn: tuple[Any, ...] | None, z: Tensor | None) -> Tensor:
        layer = _record(name, family, weight, bias, config, bn, key)
        return step.rule.layer(x, layer, step.nonneg, z)

    if step.merge is None:
        return apply(None, take_value(step))  # the plan pass's output: not computed again
    # The layer's output feeds only its BatchNorm (checked by the plan pass): the BatchNorm
    # step computes the merged layer with its current statistics, and nothing reads this
    # output's values, so they are not computed (an uninitialised tensor of its shape stands
    # in; the exactness check at the output would see any use of it).
    rel.stash[step.merge] = apply
    return x.new_empty(step.shape)


def _record(
    name: str,
    family: str,
    weight: Tensor,
    bias: Tensor | None,
    config: Any,
    bn: Any,
    parameters: tuple[Any, Any],
) -> affine.Affine:
    """The layer's :class:`~torchattr.lrp.rules.Affine` record (BatchNorm merged), cached per
    weight parameter while the weights, bias, BatchNorm and call configuration are unchanged;
    computed weights (pruning, parametrisations) get a fresh record every call. ``parameters``:
    the weight and bias as the model passed them (``weight``, ``bias``: detached copies)."""
    parameter, raw_bias = parameters
    # Inference tensors have no version counter: their records are never cached.
    cacheable = (
        isinstance(parameter, nn.Parameter)
        and not parameter.is_inference()
        and (
            raw_bias is None or (isinstance(raw_bias, nn.Parameter) and not raw_bias.is_inference())
        )
        and not any(isinstance(t, Tensor) and t.is_inference() for t in bn or ())
    )
    key = (name, _versions(parameter, raw_bias, *(bn or ())), config) if cacheable else None
    if cacheable:
        hit = _RECORDS.get(parameter)
        if hit is not None and hit[0] == key:
            return hit[2]
    w, b = weight.detach(), None if bias is None else bias.detach()
    if bn is not None:
        w, b = affine.merge_batchnorm(w, b, bn, 1 if family == "conv_transpose" else 0)
    options = dict(config)
    if family == "linear":
        layer = affine.dense(w, b)
    elif family == "addmm":
        if bn is not None:
            raise AssertionError("addmm layers are never merged")
        layer = affine.addmm(w, b)
    elif family == "conv":
        layer = affine.functional_conv(getattr(F, name), w, b, **options)
    else:
        layer = affine.functional_conv_transpose(getattr(F, name), w, b, **options)
    if cacheable:
        storages = tuple(t.untyped_storage() for t in (weight, bias, *(bn or ()))
                         if isinstance(t, Tensor))  # fmt: skip
        _RECORDS[parameter] = (key, storages, layer)
    return layer


def _attention(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    site = step.site

    def rule_for(part: str, kind: str) -> _Rule | None:
        rule = rel.composite.rule_for(Site(f"{site.name}.{part}", kind, site.module, False, kind))
        if kind == "softmax":
            return rule  # None: the AttnLRP softmax rule
        return rule or default_rule(Site(f"{site.name}.{part}", kind)) or Epsilon()

    rules = {"product": rule_for("product", "op"), "softmax": rule_for("softmax", "softmax")}
    if name == "scaled_dot_product_attention":
        return attention.scaled_dot_product_attention(*args, **kwargs, rules=rules)
    rules["in_proj"] = rule_for("in_proj", "dense")
    rules["out_proj"] = rule_for("out_proj", "dense")
    return attention.multi_head_attention_forward(*args, **kwargs, rules=rules)


def _unknown(rel, func, name, in_place, args, kwargs, step, index):  # type: ignore[no-untyped-def]
    args = list(args)
    live = _live_positions(args, kwargs, step)
    fn = _out_of_place(func, name, in_place, kwargs)
    return step.rule.op(fn, args, live, 1)


_HANDLERS = {
    "route": _route,
    "op": _op,
    "activation": _activation,
    "softmax": _softmax,
    "norm": _norm,
    "batchnorm": _batchnorm,
    "dense": _layer,
    "conv": _layer,
    "attention": _attention,
    "unknown": _unknown,
}

__all__ = ["Relevance", "close"]

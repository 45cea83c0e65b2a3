"""Seeing the model's forward as it runs: torch operations, the module each belongs to, facts.

LRP needs the model's computation, operation by operation, with the module each operation
belongs to (rules are assigned by module type and name). It is captured by running the model's
own forward under a :class:`torch.overrides.TorchFunctionMode`, which sees every torch function,
tensor method and operator the forward calls. Hooks, pre-hooks, parametrisations, pruning,
control flow on shapes, ``len()``, einops and Hugging Face code therefore run exactly as they
do for the user; nothing is traced ahead of time and nothing on the model is changed.

Which module an operation belongs to is tracked by one pair of process-wide module hooks
(``register_module_forward_pre_hook`` / ``register_module_forward_hook``), registered while
an LRP pass runs in any thread and removed when the last one ends (module calls copy the hook
dictionaries before running them, so other threads never see a half-changed dictionary). They
do nothing unless the calling thread is inside an LRP pass (a ``ContextVar``), and nothing
while ``torch.compile`` traces: other threads and other code never see them act.

A call runs the forward twice (see :mod:`torchattr.lrp.api`):

1. the *plan* pass (:class:`Planner`): the plain forward, values only; it records every
   operation that relevance reaches (a *step*: name, module, kind, rule, facts), decides which
   BatchNorms fold into the layer before them, and gives the reference output;
2. the *relevance* pass (:class:`Relevance`): the same forward with each step replaced by its
   rule (same value, modified gradient); it checks that it meets the same steps in the same
   order.

Facts about tensors (which inputs they depend on, whether a dense or convolution layer lies
between them and the inputs, whether they are known to be non-negative or a gate in [0, 1])
are kept per tensor object for the duration of the call.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from torchattr.lrp.composites import Composite, Site, default_rule
from torchattr.lrp.ops import (
    GATES,
    NONNEGATIVE,
    PRESERVES_GATE,
    PRESERVES_NONNEGATIVE,
    describe,
    implied_module_rule,
    kind_of,
    op_name,
)
from torchattr.lrp.rules import Constant, Pass, _Rule


class LRPError(RuntimeError):
    """LRP cannot explain this model as it runs (the message names the operation and module).

    Raised when the rule pass's output differs from the model's output (``f_rules(x) != f(x)``:
    the relevance would explain another function), for operations LRP cannot follow
    (TorchScript, recurrent kernels) and for nondeterministic forwards; never a silent wrong map.

    Example::

        try:
            relevance = ta.lrp(model, x)
        except ta.LRPError as error:
            print(error)             # names the first operation that differs and its module
    """


class Nondeterministic(LRPError):
    """The two passes of one call disagree: a random draw, state the forward updates, or
    control flow on values that differ between them."""


class Escape(Exception):
    """Carries a TypeError out of an intercepted operation: torch turns a TypeError raised in a
    binary operator (``x + y``) into ``NotImplemented``, which would hide the message."""

    def __init__(self, error: TypeError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Facts:
    """What is known about a tensor that relevance reaches."""

    depends: frozenset[int]  # the flat inputs it depends on
    layered: bool = False  # a dense or convolution layer lies between it and the inputs
    nonneg: bool = False  # known to be >= 0
    gate: bool = False  # known to lie in [0, 1] (sigmoid, softmax): a product treats it as a gate
    ids: bool = False  # integer ids (they feed embeddings)


@dataclass
class Step:
    """One operation relevance reaches, as the plan pass saw it."""

    name: str  # operation name ("linear", "add", ...)
    site: Site
    rule: _Rule | None
    nonneg: bool = False  # its first relevance-carrying input is known to be >= 0
    gated: tuple[int, ...] = ()  # positions of gate factors (products)
    merge: int | None = None  # a layer: the BatchNorm step folded into it
    merged: bool = False  # a BatchNorm folded into the layer before it
    batchnorm: tuple[Any, ...] | None = None  # a BatchNorm's (mean, var, weight, bias, eps)
    candidate: int | None = None  # a BatchNorm: the layer step that may take it
    channels: int | None = None  # a layer: its output channels (for the merge check)
    shape: tuple[int, ...] = ()  # a layer: its output shape
    value: Tensor | None = None  # a layer's (or a merged BatchNorm's) output in the plan pass
    version: int | None = 0  # ``value._version`` then (an in-place change later makes it unusable)
    checksum: Tensor | None = None  # a layer: (sum, sum of |.|) of its input in the plan pass


@dataclass
class _Frame:
    module: nn.Module
    path: str
    counters: dict[str, int] = field(default_factory=dict)
    own: bool = False  # the module's own operation has been named (a Linear's linear)
    opaque: _Rule | str | None = None  # a whole-module rule: operations inside run plainly
    inputs: Any = None


# ----------------------------------------------------------------------------------------------
# module scopes: process-wide hooks, active only inside an LRP call of the calling thread

_CALL: ContextVar[_Capture | None] = ContextVar("torchattr_lrp_capture", default=None)
_INSTALL = threading.Lock()
_ACTIVE = 0  # LRP passes running in this process
_HANDLES: list[Any] = []


@contextmanager
def _module_hooks() -> Iterator[None]:
    """The process-wide module hooks, present while at least one LRP pass runs (any thread)."""
    global _ACTIVE
    with _INSTALL:
        if _ACTIVE == 0:
            _HANDLES[:] = [
                nn.modules.module.register_module_forward_pre_hook(_enter_module),
                nn.modules.module.register_module_forward_hook(_leave_module, always_call=True),
            ]
        _ACTIVE += 1
    try:
        yield
    finally:
        with _INSTALL:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                for handle in _HANDLES:
                    handle.remove()
                _HANDLES.clear()


def _enter_module(module: nn.Module, args: Any) -> None:
    if torch.compiler.is_compiling():  # another thread's torch.compile traces module calls
        return
    capture = _CALL.get()
    if capture is not None:
        with torch._C.DisableTorchFunction():  # LRP's own operations are not the model's
            capture.enter(module, args)


def _leave_module(module: nn.Module, args: Any, output: Any) -> Any:
    if torch.compiler.is_compiling():
        return None
    capture = _CALL.get()
    if capture is None:
        return None
    with torch._C.DisableTorchFunction():
        return capture.leave(module, output)


# ----------------------------------------------------------------------------------------------
# the shared machinery of both passes


_ATTRIBUTE = "_torchattr_lrp_facts"
_TOKENS = itertools.count()


_NESTED = (tuple, list, dict)


def leaves(tree: Any) -> list[Any]:
    """The leaves of nested tuples, lists and dicts (what operations take and return)."""
    if not isinstance(tree, _NESTED):
        return [tree]
    out: list[Any] = []
    for node in tree.values() if isinstance(tree, dict) else tree:
        if isinstance(node, _NESTED):
            out.extend(leaves(node))
        else:
            out.append(node)
    return out


def map_leaves(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``tree`` with ``fn`` applied to every leaf (tuples, lists and dicts rebuilt)."""
    if isinstance(tree, dict):
        return {k: map_leaves(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)) and not hasattr(tree, "_fields"):
        return type(tree)(map_leaves(fn, v) for v in tree)
    return fn(tree)


def detached(value: Any) -> Any:
    """A tensor detached; anything else as it is (for :func:`map_leaves`)."""
    return value.detach() if isinstance(value, Tensor) else value


def _is_float(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class _Capture(TorchFunctionMode):
    """Shared by both passes: module scopes, tensor facts, the walk over operations."""

    def __init__(self, model: nn.Module, composite: Composite, prefix: str) -> None:
        super().__init__()
        self.model = model
        self.composite = composite
        self.prefix = prefix
        self.paths = {id(m): name for name, m in model.named_modules()}
        self.stack: list[_Frame] = []
        self.token = next(_TOKENS)  # facts are stored on the tensors, tagged with this call
        self.index = 0  # steps met so far
        self.counters: dict[str, int] = {}

    # -- entering and leaving the pass

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _CALL.set(self)
        try:
            with _module_hooks(), self:
                yield
        except Escape as escape:
            raise escape.error from None
        finally:
            _CALL.reset(token)

    # -- module scopes

    def enter(self, module: nn.Module, args: Any) -> None:
        if self.stack and self.stack[-1].opaque is not None:  # inside a module under one rule
            self.stack.append(_Frame(module, self.stack[-1].path, opaque="inside"))
            return
        path = self.paths.get(id(module))
        if path is None:  # a module that is not a submodule (made in forward): named in its parent
            parent = self.stack[-1].path if self.stack else ""
            path = f"{parent}.{type(module).__name__}" if parent else type(module).__name__
        frame = _Frame(module, path)
        # Whole-module rules: for modules of other libraries and the user's (a torch.nn
        # layer's rule applies to its operation, named by the same path).
        if self._live(args) and not type(module).__module__.startswith("torch.nn"):
            rule = self.composite.rule_for(self._module_site(frame))
            frame.opaque = rule if rule is not None else implied_module_rule(module)
            if frame.opaque is not None:
                frame.inputs = args
        self.stack.append(frame)

    def leave(self, module: nn.Module, output: Any) -> Any:
        if not self.stack or self.stack[-1].module is not module:
            return None  # a module call that started before the pass (cannot happen)
        frame = self.stack.pop()
        if frame.opaque is None or frame.opaque == "inside":
            return None
        return self.module_step(frame, output)

    def _module_site(self, frame: _Frame) -> Site:
        return Site(
            frame.path, "module", frame.module, False, type(frame.module).__name__,
            self.prefix + frame.path if self.prefix else "",
        )  # fmt: skip

    def site(self, name: str, kind: str, func: Any, first: bool) -> Site:
        """The site of an operation: the first operation relevance reaches in a module without
        submodules is named by the module's path (``"features.0"``); others by ``<module
        path>.<operation>``, numbered from the second (``"layer1.0.add"``, ``"layer1.0.add_1"``).
        """
        frame = self.stack[-1] if self.stack else None
        module = None if frame is None else frame.module
        if (
            frame is not None
            and frame.path
            and not frame.own
            and next(iter(frame.module.children()), None) is None
        ):
            frame.own = True
            return self._named(frame.path, kind, module, first, func)
        counters = self.counters if frame is None else frame.counters
        count = counters.get(name, 0)
        counters[name] = count + 1
        label = name if count == 0 else f"{name}_{count}"
        path = "" if frame is None else frame.path
        return self._named(f"{path}.{label}" if path else label, kind, module, first, func)

    def _named(self, name: str, kind: str, module: Any, first: bool, func: Any) -> Site:
        alias = self.prefix + name if self.prefix else ""
        return Site(name, kind, module, first, describe(func), alias)

    def scope(self) -> str:
        """Where the forward is now, for messages."""
        if not self.stack or not self.stack[-1].path:
            return type(self.model).__name__
        frame = self.stack[-1]
        return f"{type(frame.module).__name__} {frame.path!r}"

    # -- facts

    def fact(self, t: Any) -> Facts | None:
        """The facts of a tensor relevance reaches in this call (None for any other object)."""
        found = getattr(t, _ATTRIBUTE, None) if isinstance(t, Tensor) else None
        return found[1] if found is not None and found[0] == self.token else None

    def set_fact(self, t: Tensor, facts: Facts) -> None:
        setattr(t, _ATTRIBUTE, (self.token, facts))

    def _live(self, tree: Any) -> bool:
        return any(self.fact(t) is not None for t in leaves(tree))

    def mark(self, tree: Any, facts: Facts) -> None:
        """Record ``facts`` for the floating tensors of ``tree`` (integer ones only when ids)."""
        for t in leaves(tree):
            if isinstance(t, Tensor) and (_is_float(t) or (facts.ids and t.dtype != torch.bool)):
                self.set_fact(t, facts)

    def output_facts(self, name: str, kind: str, live: list[Facts]) -> Facts:
        """Facts of an operation's outputs from those of its relevance-carrying inputs."""
        depends = frozenset().union(*(f.depends for f in live))
        layered = any(f.layered for f in live) or kind in ("dense", "conv")
        nonneg = name in NONNEGATIVE or (
            name in PRESERVES_NONNEGATIVE and all(f.nonneg for f in live)
        )
        gate = name in GATES or (name in PRESERVES_GATE and all(f.gate for f in live))
        return Facts(depends, layered, nonneg, gate)

    # -- the walk

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            return self.dispatch(func, args, kwargs or {})
        except TypeError as error:
            raise Escape(error) from None

    def dispatch(self, func: Any, args: Any, kwargs: Any) -> Any:
        """One intercepted operation: run it plainly, or as a step when relevance reaches it."""
        if self.stack and self.stack[-1].opaque is not None:
            return self.plain(func, args, kwargs)
        flat = leaves(args) + leaves(kwargs)
        live = [f for f in (self.fact(t) for t in flat) if f is not None]
        if not live:
            return self.plain(func, args, kwargs)
        if func is _ATEN_BATCH_NORM:  # exported programs: the functional form and argument order
            func, args, kwargs = _functional_batch_norm(*args, **kwargs)
        name, in_place = op_name(func)
        # F.relu(x, inplace=True), F.leaky_relu(x, 0.2, True): in place through an argument
        in_place = (
            in_place
            or kwargs.get("inplace") is True
            or (kind_of(name) == "activation" and len(args) > 1 and args[-1] is True)
        )
        if name not in _METADATA:
            self.seen(flat)
        kind = kind_of(name)
        floats = [f for f in live if not f.ids]
        if not floats:  # only integer ids: routing keeps them ids, anything else ends them
            if kind == "embedding":
                return self.embedding(func, args, kwargs, live[0])
            out = self.plain(func, args, kwargs)
            if kind == "route":
                self.mark(
                    out, replace(live[0], depends=frozenset().union(*(f.depends for f in live)))
                )
            return out
        if not isinstance(func, Callable) or _is_query(name):
            return self.plain(func, args, kwargs)
        first = kind in ("dense", "conv") and not any(f.layered for f in floats)
        return self.step(func, name, kind, in_place, args, kwargs, floats, first)

    # -- implemented by the passes

    def seen(self, flat: list[Any]) -> None:
        """An operation reads the values of the tensors in ``flat``."""

    def plain(self, func: Any, args: Any, kwargs: Any) -> Any:
        raise NotImplementedError

    def step(
        self,
        func: Any,
        name: str,
        kind: str,
        in_place: bool,
        args: Any,
        kwargs: Any,
        live: list[Facts],
        first: bool,
    ) -> Any:
        raise NotImplementedError

    def embedding(self, func: Any, args: Any, kwargs: Any, facts: Facts) -> Any:
        raise NotImplementedError

    def module_step(self, frame: _Frame, output: Any) -> Any:
        raise NotImplementedError


_QUERIES = {
    "size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "element_size", "item",
    "tolist", "len", "bool", "format", "repr", "hash", "shape", "dtype", "device", "ndim",
    "is_floating_point", "is_complex", "requires_grad", "grad_fn", "is_leaf", "grad", "layout",
    "storage_offset", "untyped_storage", "nelement", "ne", "eq", "lt", "le", "gt", "ge", "isnan",
    "isinf", "isfinite", "any", "all", "argmax", "argmin", "sign", "nonzero", "float_power_",
    "is_cuda", "is_sparse", "is_quantized", "is_meta", "names", "output_nr", "_version",
    "is_nested", "get_device", "is_inference", "new_empty", "new_zeros", "new_ones", "new_full",
    "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
    "randint_like", "bernoulli", "detach_", "ndimension", "count_nonzero", "equal", "allclose",
}  # fmt: skip


#: Operations that read only a tensor's metadata, not its values.
_METADATA = {
    "size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "element_size", "len",
    "shape", "dtype", "device", "ndim", "is_floating_point", "is_complex", "requires_grad",
    "grad_fn", "is_leaf", "grad", "layout", "storage_offset", "nelement", "is_cuda", "is_sparse",
    "is_quantized", "is_meta", "names", "output_nr", "_version", "is_nested", "get_device",
    "is_inference", "ndimension",
}  # fmt: skip


def _is_query(name: str) -> bool:
    """Operations whose result carries no relevance: shapes, comparisons, fresh tensors."""
    return name in _QUERIES


# ----------------------------------------------------------------------------------------------
# the plan pass


class Planner(_Capture):
    """The plain forward (values only, no autograd) that records the steps relevance reaches."""

    def __init__(self, model: nn.Module, composite: Composite, prefix: str) -> None:
        super().__init__(model, composite, prefix)
        self.steps: list[Step] = []
        self.producer: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> step index
        self.uses: list[int] = []

    def plain(self, func: Any, args: Any, kwargs: Any) -> Any:
        return func(*args, **inference(func, args, kwargs))

    def _record(self, step: Step, out: Any, facts: Facts) -> None:
        self.steps.append(step)
        self.uses.append(0)
        self.mark(out, facts)
        for t in leaves(out):
            if isinstance(t, Tensor):
                self.producer[t] = len(self.steps) - 1

    def seen(self, flat: list[Any]) -> None:
        for t in flat:
            i = self.producer.get(t) if isinstance(t, Tensor) else None
            if i is not None:
                self.uses[i] += 1

    def step(self, func, name, kind, in_place, args, kwargs, live, first):  # type: ignore[no-untyped-def]
        site = self.site(name, kind, func, first)
        rule = self.composite.rule_for(site) or default_rule(site)
        flat = leaves((args, kwargs))
        check_supported(site, kind, rule, name)
        first_live = next(t for t in flat if self.fact(t) is not None and not self.fact(t).ids)
        step = Step(name, site, rule, nonneg=self.fact(first_live).nonneg)
        if name in ("mul", "multiply"):
            step.gated = _gates(args, self.fact)
        out = self.plain(func, args, kwargs)
        if kind in ("dense", "conv") and isinstance(out, Tensor):
            step.shape = tuple(out.shape)
            step.value, step.version = out, _version(out)
            step.checksum = checksum(first_live)
            step.channels = out.shape[1] if out.ndim > 1 and kind == "conv" else out.shape[-1]
            if kind == "dense" and out.ndim != 2:
                step.channels = None  # BatchNorm1d over [B, C, L] does not fold into a linear
        if kind == "batchnorm":
            step.batchnorm = batchnorm_parameters(args, kwargs)
            source = self.producer.get(first_live)
            if (
                source is not None
                and step.batchnorm[0] is not None
                and self.steps[source].site.kind in ("dense", "conv")
                and self.steps[source].channels == step.batchnorm[0].shape[0]
                and self.steps[source].merge is None
                and first_live.ndim >= 2
            ):
                step.candidate = source
                step.value, step.version = out, _version(out)
        self._record(step, out, self.output_facts(name, kind, live))
        return out

    def embedding(self, func: Any, args: Any, kwargs: Any, facts: Facts) -> Any:
        name = "embedding"
        site = self.site(name, "embedding", func, False)
        leaves((args, kwargs))
        out = self.plain(func, args, kwargs)
        if len(facts.depends) > 1:
            raise LRPError(
                f"LRP: the ids of embedding {site.name!r} depend on several inputs "
                f"({sorted(facts.depends)}); relevance cannot be assigned to one of them"
            )
        self._record(Step(name, site, None), out, Facts(facts.depends))
        return out

    def module_step(self, frame: _Frame, output: Any) -> Any:
        site = self._module_site(frame)
        flat = leaves(frame.inputs)
        live = [f for f in (self.fact(t) for t in flat) if f is not None and not f.ids]
        if not live or not isinstance(output, Tensor):
            if frame.opaque in ("rmsnorm", "activation"):
                return None  # nothing to explain here: the module ran plainly
            raise LRPError(
                f"LRP: the rule for module {frame.path!r} ({type(frame.module).__name__}) needs "
                "one tensor output and a relevance-carrying tensor input"
            )
        rule = frame.opaque
        self.seen(flat)
        facts = Facts(frozenset().union(*(f.depends for f in live)), any(f.layered for f in live))
        self._record(Step("module", site, rule if isinstance(rule, _Rule) else None), output,
                     facts)  # fmt: skip
        return None

    def finish(self) -> list[Step]:
        """Confirm BatchNorm folds: the layer's output feeds only its BatchNorm."""
        for j, step in enumerate(self.steps):
            i = step.candidate
            if i is not None and self.uses[i] == 1:
                self.steps[i].merge = j
                self.steps[i].value = None  # the merged layer's value is the BatchNorm's
                step.merged = True
            elif step.site.kind == "batchnorm":
                step.value = None
        return self.steps


def take_value(step: Step) -> Tensor | None:
    """The plan pass's output of a step, once (None if the forward later changed it in place)."""
    value, step.value = step.value, None
    return value if value is not None and _version(value) == step.version else None


def _version(t: Tensor) -> int | None:
    return None if t.is_inference() else t._version


_ATEN_BATCH_NORM = torch.ops.aten.batch_norm.default


def _functional_batch_norm(
    x: Tensor,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool = True,
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``aten.batch_norm`` (an exported program's BatchNorm) as the ``F.batch_norm`` call it is."""
    del cudnn_enabled
    return (
        torch.nn.functional.batch_norm,
        (x, running_mean, running_var, weight, bias),
        {"training": training, "momentum": momentum, "eps": eps},
    )


def checksum(x: Tensor) -> Tensor:
    """``(sum x, sum |x|)`` in float64: compares a layer's input across the two passes."""
    x = x.detach()
    return torch.stack([x.sum(dtype=torch.float64), x.abs().sum(dtype=torch.float64)])


def _gates(args: Any, fact: Callable[[Any], Facts | None]) -> tuple[int, ...]:
    """Positions of gate factors in a product of two relevance-carrying factors."""
    facts = [fact(a) for a in args]
    live = [i for i, f in enumerate(facts) if f is not None]
    if len(live) != 2:
        return ()
    gates = tuple(i for i in live if facts[i].gate)
    return gates if len(gates) == 1 else ()


def batchnorm_parameters(args: Any, kwargs: Any) -> tuple[Any, ...]:
    """``(running_mean, running_var, weight, bias, eps)`` of an ``F.batch_norm`` call."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
             "eps")  # fmt: skip
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return (
        bound.get("running_mean"),
        bound.get("running_var"),
        bound.get("weight"),
        bound.get("bias"),
        bound.get("eps", 1e-5),
    )


_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
            "feature_alpha_dropout"}  # fmt: skip


def inference(func: Any, args: Any, kwargs: Any) -> Any:
    """The keyword arguments of a call as LRP explains it: the inference function (dropout
    off, BatchNorm with running statistics), whatever the modules' training flags."""
    name, _ = op_name(func)
    if name in _DROPOUT or name == "multi_head_attention_forward":
        return {**kwargs, "training": False}
    if name == "scaled_dot_product_attention":
        return {**kwargs, "dropout_p": 0.0}
    if name == "batch_norm":
        running = (args[1] if len(args) > 1 else kwargs.get("running_mean")) is not None
        if running:
            if len(args) > 5:
                raise LRPError("F.batch_norm called with `training` positionally: not supported")
            return {**kwargs, "training": False}
    return kwargs


def check_supported(site: Site, kind: str, rule: _Rule | None, name: str) -> None:
    """Refuse, before anything is computed, an operation that relevance reaches but that no rule
    covers, and rules that cannot apply to an operation's kind."""
    if kind in ("dense", "conv") and rule is None:
        raise TypeError(
            f"LRP: the composite gives no rule to layer {site.name!r} ({site.target}); add one, "
            f"e.g. ta.composites.by_kind({{{kind!r}: ta.rules.Epsilon()}}) | composite"
        )
    if kind == "unknown" and rule is None:
        raise TypeError(no_rule_message(site, name))
    if rule is None or kind in ("dense", "conv", "embedding", "attention", "route"):
        return
    if not rule.accepts_ops or (
        kind in ("norm", "softmax", "activation") and not isinstance(rule, (Pass, Constant))
    ):
        raise TypeError(
            f"LRP: rule {rule!r} cannot be applied to {site.name!r} ({site.target}, kind "
            f"{kind!r}); operations without weights take Pass, Norm or Epsilon"
            + (
                " (norms, softmax and activations: Pass or Constant)"
                if kind in ("norm", "softmax", "activation")
                else ""
            )
        )


_RECURRENT = {
    "lstm",
    "gru",
    "rnn_tanh",
    "rnn_relu",
    "lstm_cell",
    "gru_cell",
    "rnn_tanh_cell",
    "rnn_relu_cell",
    "_pack_padded_sequence",
}


def no_rule_message(site: Site, name: str) -> str:
    """The error for an operation without a rule, with a fix that is right for it."""
    module = site.module
    if name in _RECURRENT:
        return (
            f"LRP has no rule for the recurrent layer {site.name!r} ({site.target}): the gated "
            "LRP rules of Arras et al. (2017) are not implemented. Explain recurrent models "
            "with ta.integrated_gradients or ta.input_x_gradient, or give the layer "
            "ta.rules.Constant() by name if its relevance may be dropped"
        )
    where = ""
    fix = (
        f"Assign one by name, e.g. composite=ta.composites.by_name({{{site.name!r}: "
        "ta.rules.Pass()}) | ta.composites.EpsilonPlusFlat() if it is an element-wise function "
        "(same shape in and out), or Norm() if it is linear"
    )
    if module is not None:
        path = site.name.rsplit(".", 1)[0] if "." in site.name else ""
        where = f" inside {type(module).__name__} {path!r}" if path else ""
        if path:
            fix += (
                f"; or give the whole module one rule: ta.composites.by_name({{{path!r}: "
                "ta.rules.Pass()}) (relevance passes through it unchanged) or "
                "ta.rules.Constant() (none enters it)"
            )
    return (
        f"LRP has no rule for operation {site.name!r} ({site.target}){where} and relevance "
        f"reaches it. {fix}"
    )


__all__ = [
    "Facts",
    "LRPError",
    "Nondeterministic",
    "Planner",
    "Step",
    "detached",
    "leaves",
    "map_leaves",
]

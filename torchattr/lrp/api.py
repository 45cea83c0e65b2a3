"""``lrp``: Layer-wise Relevance Propagation on the model's forward as it runs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from torchattr._core.checks import check_gradient_inputs, in_training_mode, keywords
from torchattr._core.contexts import grad_context, normal_tensors
from torchattr._core.fallback import buffers_kept
from torchattr._core.inputs import (
    Inputs,
    InputsT,
    call_model,
    check_forward_kwargs,
    flatten,
    unflatten,
)
from torchattr._core.targets import (
    Target,
    _check_scores,
    logits_of,
    normalize_target,
    resolve_target,
    row_scores,
    target_range,
)
from torchattr._core.wrapped import unwrap
from torchattr.lrp.capture import (
    Facts,
    LRPError,
    Nondeterministic,
    Planner,
    Step,
    detached,
    leaves,
    map_leaves,
)
from torchattr.lrp.composites import Composite, Site, resolve
from torchattr.lrp.relevance import Relevance, close, tolerance
from torchattr.lrp.rules import _Rule

__all__ = ["Conservation", "lrp", "lrp_rules"]


@dataclass(frozen=True)
class Conservation:
    """Per sample: the total input relevance against the explained score it was seeded with.

    ``relevance`` and ``score`` are ``[B]`` (``[B, K]`` for K targets per sample). With biases
    and stabilisers at zero, rules that conserve give ``relevance == score``; the difference is
    what biases, stabilisers and non-conserving rules (Flat excepted, it conserves) absorbed.

    Example::

        relevance, report = ta.lrp(model, x, target=2, return_conservation=True)
        report.ratio                 # [B]: relevance / score, 1 where everything is conserved
    """

    relevance: Tensor
    score: Tensor

    @property
    def leak(self) -> Tensor:
        """``score - relevance``: relevance absorbed on the way to the inputs."""
        return self.score - self.relevance

    @property
    def ratio(self) -> Tensor:
        """``relevance / score`` (1 where everything arrived; NaN where the score is 0)."""
        return self.relevance / self.score

    def __str__(self) -> str:
        rows = [f"{'sample':>8}{'score':>14}{'relevance':>14}{'ratio':>10}"]
        flat_r, flat_s = self.relevance.reshape(-1), self.score.reshape(-1)
        for i, (r, s) in enumerate(zip(flat_r.tolist(), flat_s.tolist())):
            ratio = r / s if s != 0 else float("nan")
            rows.append(f"{i:>8}{s:>14.6g}{r:>14.6g}{ratio:>10.4f}")
        return "\n".join(rows)


@overload
def lrp(
    model: nn.Module,
    inputs: InputsT,
    target: Target = None,
    *,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    return_conservation: Literal[False] = False,
) -> InputsT: ...


@overload
def lrp(
    model: nn.Module,
    inputs: InputsT,
    target: Target = None,
    *,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    return_conservation: Literal[True],
) -> tuple[InputsT, Conservation]: ...


@keywords()
def lrp(
    model: nn.Module,
    inputs: Inputs,
    target: Target = None,
    *,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    return_conservation: bool = False,
) -> Any:
    """Layer-wise Relevance Propagation: relevance of every input feature for the target score.

    The relevance at the output is seeded with the explained score, ``R_out = s * onehot(t)``
    (``s`` = the target's logit), and sent back operation by operation with the composite's
    rules, so the input relevance sums to ``s`` up to what biases and stabilisers absorb.

    The model's own forward runs (twice): first plainly, recording every operation relevance
    reaches and the module it belongs to; then with each such operation replaced by its rule
    (same value, the rule's gradient), and one backward gives the relevance (see
    :mod:`torchattr.lrp.capture`). Hooks, pre-hooks, parametrisations, pruning, control flow on
    shapes, einops and Hugging Face code run as they are; BatchNorm is merged into the layer
    before it; the second forward's output is checked against the first on every call, and a
    difference raises an error naming the first operation that differs. LRP explains the
    model's inference function (dropout off, BatchNorm with running statistics), in the dtype of
    its parameters: an enclosing ``torch.autocast`` is switched off for the call (a rule needs
    each layer's exact output; cast the model itself, ``model.bfloat16()``, for half precision,
    which LRP runs as it is). Wrapped models
    (``nn.DataParallel``, DDP, ``torch.compile``) are unwrapped. The model is never modified.

    Args:
        model: an ``nn.Module`` (or a wrapper of one).
        inputs: ``[B, ...]`` tensor, tuple or dict of tensors (see the shared conventions);
            integer ids are attributed at the output of the embedding they feed, summed over
            the embedding dimension.
        target: None (argmax), int, ``[B]``, ``[B, K]`` (K classes per sample: one forward and
            one batched backward) or a callable ``output -> scores [B]``. Index targets select
            from the logits (a tensor output, a dict or ``ModelOutput``'s ``"logits"``, or a
            tuple's first element); a callable receives the whole output.
        composite: which rule goes where (:mod:`torchattr.lrp.composites`); None is
            ``EpsilonPlusFlat()``; a dict ``{module type | name glob | predicate: rule}`` is laid
            over ``EpsilonPlusFlat()``.
        forward_kwargs: extra keyword arguments for the model (attention masks, token type
            ids, integer tensors included), passed unchanged and never attributed.
        return_conservation: also return a :class:`Conservation` report.

    Returns:
        Relevance shaped like ``inputs`` (``[B, K, ...]`` per tensor for a ``[B, K]`` target;
        ``[B, L]`` for ids ``[B, L]``), float32 or wider; with ``return_conservation``,
        ``(relevance, report)``.

    Raises:
        TypeError: an operation relevance reaches has no rule (the message names it, its module
            and the composite entry that fixes it), or a rule does not fit its operation.
        LRPError: the relevance program differs from the model, or the forward takes another
            path in the second run (control flow on values, random draws).

    Example::

        relevance = ta.lrp(model, images, target=labels)                 # [B, C, H, W]
        relevance, report = ta.lrp(model, images, composite=ta.composites.EpsilonGammaBox(-3, 3),
                                   return_conservation=True)
        print(report)                                                    # per-sample sums
    """
    inner, prefix = unwrap(model)
    if not isinstance(inner, nn.Module):
        raise TypeError(f"LRP needs an nn.Module (or a wrapper of one), got {type(model).__name__}")
    tensors, spec = flatten(inputs)
    # Integer ids are allowed (they feed embeddings); float inputs must be finite.
    batch = check_gradient_inputs(tensors, spec, skip=[not t.is_floating_point() for t in tensors])
    device = tensors[0].device
    target = normalize_target(target, batch, device)
    known = target_range(target)
    composite = resolve(composite)
    # Never attributed: detached, so that a tensor that requires grad is not taken for relevance.
    extra = map_leaves(detached, check_forward_kwargs(forward_kwargs, spec, batch))
    if in_training_mode(inner) and not torch.compiler.is_compiling():
        warnings.warn(
            "model has modules in training mode; LRP explains its inference function "
            "(dropout off, BatchNorm with running statistics)",
            UserWarning,
            stacklevel=2,
        )
    # Rules need each layer's exact output: an enclosing autocast is switched off for the call.
    with (
        torch.autocast(device.type, enabled=False),
        buffers_kept(inner) as restore,
        grad_context(inner),
    ):
        tensors = normal_tensors(tensors)
        steps, reference = _plan(inner, composite, prefix, tensors, spec, extra)
        restore()
        try:
            grads, scores, sinks, float_slots, cotangent, multi = _relevance(
                inner, composite, prefix, steps, tensors, spec, extra, target, known, reference
            )
        except Nondeterministic as error:
            if not in_training_mode(inner):
                raise
            raise Nondeterministic(
                f"{error}. The model is in training mode: layers that draw random numbers there "
                "(stochastic depth, drop path, custom dropout) differ between the two passes; "
                "call model.eval() first"
            ) from None
    classes = cotangent if multi else None
    per_slot = _collect(tensors, float_slots, sinks, grads, classes)
    relevance = unflatten(per_slot, spec)
    if not return_conservation:
        return relevance
    dims_from = 2 if multi else 1
    total = sum(r.flatten(dims_from).sum(-1) for r in per_slot)
    return relevance, Conservation(total, scores.to(total.dtype))


def _facts(tensors: tuple[Tensor, ...]) -> list[Facts]:
    return [Facts(frozenset({i}), ids=not t.is_floating_point()) for i, t in enumerate(tensors)]


def _plan(
    model: nn.Module,
    composite: Composite,
    prefix: str,
    tensors: tuple[Tensor, ...],
    spec: Any,
    extra: dict[str, Any],
) -> tuple[list[Step], Any]:
    """The plain forward: the steps relevance reaches, and the model's output."""
    planner = Planner(model, composite, prefix)
    with torch.no_grad():
        copies = tuple(t.detach().clone() for t in tensors)
        for t, facts in zip(copies, _facts(tensors)):
            planner.set_fact(t, facts)
        with planner.active():
            output = call_model(model, copies, spec, extra)
    if not any(planner.fact(t) is not None for t in leaves(output)):
        raise LRPError(
            f"LRP saw no operation connecting the inputs to the output of "
            f"{type(model).__name__}: its forward runs code outside Python's view of torch "
            "(TorchScript, an exported program's C++ runtime, a C++ extension) or ignores the "
            "inputs. LRP needs the model as an nn.Module whose forward calls torch operations"
        )
    return planner.finish(), output


def _relevance(
    model: nn.Module,
    composite: Composite,
    prefix: str,
    steps: list[Step],
    tensors: tuple[Tensor, ...],
    spec: Any,
    extra: dict[str, Any],
    target: Target,
    known: Any,
    reference: Any,
) -> tuple[Any, ...]:
    """The forward under the rules, the exactness check, and the backward."""
    with torch.enable_grad():
        # _run_rules hands the model copies of these leaves (in-place operations on inputs)
        leaves = tuple(
            t.detach().requires_grad_(True) if t.is_floating_point() else t for t in tensors
        )
        output, run = _run_rules(model, composite, prefix, steps, leaves, spec, extra)
        _check_layer_inputs(run, steps, leaves[0].dtype)
        _check_exact(output, reference, lambda: _diagnose(
            model, composite, prefix, steps, leaves, spec, extra))  # fmt: skip
        logits = None if callable(target) else logits_of(output)
        target = resolve_target(target, logits if logits is not None else output, known)
        if callable(target):
            scores = target(output)
            _check_scores(scores, output)
        else:
            scores = row_scores(logits, target)
        multi = scores.ndim == 2
        seed = scores.detach()
        if multi:
            k = scores.shape[1]
            seed = torch.eye(k, dtype=seed.dtype, device=seed.device)[:, None, :] * seed[None]
        float_slots = [i for i, t in enumerate(leaves) if t.requires_grad]
        wrt = [leaves[i] for i in float_slots] + [leaf for _, leaf in run.sinks]
        if not wrt:
            raise ValueError("no input carries relevance: inputs must be float or feed embeddings")
        if scores.requires_grad:
            grads = torch.autograd.grad(
                scores, wrt, seed, allow_unused=True, is_grads_batched=multi
            )
        else:  # the rules let no relevance through (Constant), or the score ignores the inputs
            grads = (None,) * len(wrt)
    k = scores.shape[1] if multi else 0
    return grads, scores.detach(), run.sinks, float_slots, k, multi


def _run_rules(
    model: nn.Module,
    composite: Composite,
    prefix: str,
    steps: list[Step],
    leaves: tuple[Tensor, ...],
    spec: Any,
    extra: dict[str, Any],
    diagnose: bool = False,
) -> tuple[Any, Relevance]:
    run = Relevance(model, composite, prefix, steps, diagnose)
    # The model receives copies: an in-place operation on an input must not hit the leaves.
    copies = tuple(t.clone() if t.requires_grad else t for t in leaves)
    for t, facts in zip(copies, _facts(leaves)):
        run.set_fact(t, facts)
    with run.active():
        output = call_model(model, copies, spec, extra)
    if run.index != len(steps):
        missing = steps[run.index].site
        raise Nondeterministic(
            f"LRP: the forward took another path than in the plan pass: operation "
            f"{missing.name!r} ({missing.target}) did not run again. The model's control flow "
            "depends on values or on random draws; LRP needs a deterministic inference forward"
        )
    return output, run


def _check_layer_inputs(run: Relevance, steps: list[Step], dtype: torch.dtype) -> None:
    """Every layer received the same input in both passes (its rule takes its output from the
    plan pass): the first layer whose input differs is named (one device synchronisation)."""
    if not run.inputs_seen:
        return
    now = torch.stack([c for _, c in run.inputs_seen])
    before = torch.stack([steps[i].checksum for i, _ in run.inputs_seen])
    drift = ((now[:, 0] - before[:, 0]).abs() / (before[:, 1] + 1e-300)).tolist()
    tol = tolerance(dtype if dtype.is_floating_point else torch.float32)
    for (i, _), d in zip(run.inputs_seen, drift):
        if not d <= tol:
            site = steps[i].site
            raise Nondeterministic(
                f"LRP: the relevance program differs from the model before layer {site.name!r} "
                f"({site.target}): its input changed between the plain forward and the rules "
                f"(relative difference {d:.3g}). The model's forward is not deterministic "
                "(random draws, state updated by the forward) or an operation's rule changed "
                "its value"
            )


def _diagnose(*args: Any) -> None:
    """Run the rules again, comparing every step with the plain operation, to name the first
    that differs (called only when the outputs differ)."""
    with torch.enable_grad():
        _run_rules(*args, diagnose=True)


def _check_exact(output: Any, reference: Any, diagnose: Any) -> None:
    """The relevance program must reproduce the model's output (float tolerance)."""
    got = [t for t in tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()]
    want = [t for t in tree_leaves(reference) if isinstance(t, Tensor) and t.is_floating_point()]
    if len(got) == len(want) and all(close(a, b) for a, b in zip(got, want)):
        return
    diagnose()
    raise Nondeterministic(
        "LRP: the relevance program's output differs from the model's output, but no single "
        "operation differs from its plain value; the model is not deterministic between calls "
        "(random draws, state updated by the forward)"
    )


def _collect(
    tensors: tuple[Tensor, ...],
    float_slots: list[int],
    sinks: list[tuple[int, Tensor]],
    grads: tuple[Tensor | None, ...],
    classes: int | None,
) -> list[Tensor]:
    """Relevance per flat input: gradients of float inputs, embedding outputs summed per id.

    ``classes``: K when the gradients are K-batched (``[K, B, ...]``), else None.
    """
    lead = 0 if classes is None else 1
    found: dict[int, Tensor] = {}
    for slot, grad in zip(float_slots, grads):
        if grad is not None:
            found[slot] = grad
    for (slot, _), grad in zip(sinks, grads[len(float_slots) :]):
        if grad is None:
            continue
        dims = tensors[slot].ndim + lead
        per_id = grad.flatten(dims).sum(-1) if grad.ndim > dims else grad
        found[slot] = found[slot] + per_id if slot in found else per_id
    result = []
    for slot, t in enumerate(tensors):
        r = found.get(slot)
        if r is None:
            shape = t.shape if classes is None else (classes, *t.shape)
            dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
            r = torch.zeros(shape, dtype=dtype, device=t.device)
        r = r if classes is None else r.movedim(0, 1)
        result.append(r.detach().to(torch.promote_types(r.dtype, torch.float32)))
    return result


@keywords()
def lrp_rules(
    model: nn.Module,
    inputs: Inputs,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> list[tuple[Site, _Rule | None]]:
    """Which rule each operation relevance reaches gets under ``composite``, for ``inputs``.

    Runs the model's forward once (plainly, no gradients) and returns ``(site, rule)`` pairs in
    the order the operations ran; ``site.name`` is what ``by_name`` matches (a module's own
    operation: the module's path, e.g. ``"features.0"``; others ``"<module path>.<op>"``, e.g.
    ``"layer1.0.add"``). Routing operations (reshapes, max pooling, ...) show ``None``: they
    keep their plain gradient; so do norms and softmax under their AttnLRP rules, and a
    BatchNorm merged into the layer before it (that layer's rule covers both).

    Example::

        for site, rule in ta.lrp_rules(model, x):
            print(site.name, rule)   # "features.0 Flat()", "features.2 ZPlus()", ...
    """
    inner, prefix = unwrap(model)
    if not isinstance(inner, nn.Module):
        raise TypeError(f"LRP needs an nn.Module (or a wrapper of one), got {type(model).__name__}")
    tensors, spec = flatten(inputs)
    extra = check_forward_kwargs(forward_kwargs, spec)
    with buffers_kept(inner), grad_context(inner):
        tensors = normal_tensors(tensors)
        steps, _ = _plan(inner, resolve(composite), prefix, tensors, spec, extra)
    return [(step.site, None if step.merged else step.rule) for step in steps]

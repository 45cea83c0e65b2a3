"""``lrp``: Layer-wise Relevance Propagation on the model's traced graph."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.checks import check_gradient_inputs, in_training_mode
from torchattr._core.inputs import Inputs, call_model, flatten, unflatten
from torchattr._core.state import untouched
from torchattr._core.targets import (
    Target,
    normalize_target,
    output_cotangent,
    resolve_target,
    row_scores,
    target_range,
)
from torchattr.lrp.composites import Composite, Site, resolve
from torchattr.lrp.rules import _Rule
from torchattr.lrp.transform import program, running


@dataclass(frozen=True)
class Conservation:
    """Per sample: the total input relevance against the explained score it was seeded with.

    ``relevance`` and ``score`` are ``[B]`` (``[B, K]`` for K targets per sample). With biases
    and stabilisers at zero, rules that conserve give ``relevance == score``; the difference is
    what biases, stabilisers and non-conserving rules (Flat excepted, it conserves) absorbed.
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


def lrp(
    model: nn.Module,
    inputs: Inputs,
    target: Target = None,
    *,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    return_conservation: bool = False,
) -> Any:
    """Layer-wise Relevance Propagation: relevance of every input feature for the target score.

    The relevance at the output is seeded with the explained score, ``R_out = s * onehot(t)``
    (``s`` = the target's logit), and sent back layer by layer with the composite's rules, so
    the input relevance sums to ``s`` up to what biases and stabilisers absorb. The model is
    traced with ``torch.fx`` (cached), BatchNorm is merged into the layer before it, every sum
    gets the ``Norm`` rule, and each rule rewrites its node so that one ordinary backward through
    the rewritten graph gives the relevance (see :mod:`torchattr.lrp.rules`). LRP explains the
    model's inference function: dropout is the identity and BatchNorm uses its running
    statistics. The model is never modified.

    Args:
        model: an ``nn.Module`` that ``torch.fx`` can trace (no Python control flow on values).
        inputs: ``[B, ...]`` tensor, tuple or dict of tensors (see the shared conventions);
            integer ids are attributed at the output of the embedding they feed, summed over
            the embedding dimension.
        target: None (argmax), int, ``[B]``, ``[B, K]`` (K classes per sample: one forward and
            one batched backward) or a callable ``output -> scores [B]``.
        composite: which rule goes where (:mod:`torchattr.lrp.composites`); None is
            ``EpsilonPlusFlat()``; a dict ``{module type | name glob | predicate: rule}`` is laid
            over ``EpsilonPlusFlat()``.
        return_conservation: also return a :class:`Conservation` report.

    Returns:
        Relevance shaped like ``inputs`` (``[B, K, ...]`` per tensor for a ``[B, K]`` target;
        ``[B, L]`` for ids ``[B, L]``), in the inputs' floating dtype; with
        ``return_conservation``, ``(relevance, report)``.

    Example::

        relevance = ta.lrp(model, images, target=labels)                 # [B, C, H, W]
        relevance, report = ta.lrp(model, images, composite=ta.composites.EpsilonGammaBox(-3, 3),
                                   return_conservation=True)
        print(report)                                                    # per-sample sums
    """
    tensors, spec = flatten(inputs)
    # Integer ids are allowed (they feed embeddings); float inputs must be finite.
    batch = check_gradient_inputs(tensors, spec, skip=[not t.is_floating_point() for t in tensors])
    device = tensors[0].device
    target = normalize_target(target, batch, device)
    known = target_range(target)
    composite = resolve(composite)
    relevance_program = program(model, composite, spec, len(tensors))
    if in_training_mode(model) and not torch.compiler.is_compiling():
        import warnings

        warnings.warn(
            "model has modules in training mode; LRP explains its inference function "
            "(dropout off, BatchNorm with running statistics)",
            UserWarning,
            stacklevel=2,
        )
    with untouched(model), torch.enable_grad(), running(model) as call:
        leaves = tuple(
            t.detach().requires_grad_(True) if t.is_floating_point() else t for t in tensors
        )
        output = call_model(relevance_program.module, leaves, spec)
        target = resolve_target(target, output, known)
        cotangent, multi = output_cotangent(output, target)
        seed = cotangent * output.detach()
        float_slots = [i for i, t in enumerate(leaves) if t.requires_grad]
        wrt = [leaves[i] for i in float_slots] + [leaf for _, leaf in call.sinks]
        if not wrt:
            raise ValueError("no input carries relevance: inputs must be float or feed embeddings")
        grads = torch.autograd.grad(output, wrt, seed, allow_unused=True, is_grads_batched=multi)
        scores = row_scores(output.detach(), target)
    classes = cotangent.shape[0] if multi else None
    per_slot = _collect(tensors, float_slots, call.sinks, grads, classes)
    relevance = unflatten(per_slot, spec)
    if not return_conservation:
        return relevance
    dims_from = 2 if multi else 1
    total = sum(r.flatten(dims_from).sum(-1) for r in per_slot)
    return relevance, Conservation(total, scores.to(total.dtype))


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
        result.append((r if classes is None else r.movedim(0, 1)).detach())
    return result


def lrp_rules(
    model: nn.Module,
    composite: Composite | Mapping[Any, _Rule] | None = None,
    inputs: Inputs | None = None,
) -> list[tuple[Site, _Rule | None]]:
    """Which rule each node of ``model``'s graph gets under ``composite`` (nothing is run).

    Returns ``(site, rule)`` pairs in graph order; ``site.name`` is what ``by_name`` matches.
    Routing nodes (reshapes, max pooling, ...) show ``None``: they keep their plain gradient.
    ``inputs`` (optional) fixes the input layout (tensor / tuple / dict), as in :func:`lrp`.
    """
    if inputs is None:
        spec_inputs: Inputs = torch.zeros(1)
    else:
        spec_inputs = inputs
    tensors, spec = flatten(spec_inputs)
    return list(program(model, resolve(composite), spec, len(tensors)).plan)

"""The one gradient primitive every gradient method is built on.

``score_gradients`` runs the model once with ``torch.func.vjp`` and pulls back the cotangent that
selects each row's explained score: one forward, one backward (``vmap``-batched over K classes for
multi-target). ``torch.func`` transforms differentiate even inside ``torch.no_grad()`` (so the
kernels work when the caller disabled gradients) and trace under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import in_training_mode
from torchattr._core.chunking import row_ranges
from torchattr._core.inputs import InputSpec, call_model
from torchattr._core.targets import (
    Target,
    normalize_target,
    output_cotangent,
    resolve_target,
    row_scores,
)


def score_gradients(
    model: Callable[..., Any],
    tensors: tuple[Tensor, ...],
    spec: InputSpec,
    target: Target,
) -> tuple[tuple[Tensor, ...], Target, bool]:
    """``d s_n / d x_n`` for every row n and input tensor.

    Returns (gradients, resolved target, multi). Each gradient has its input's shape ``[N, ...]``,
    or ``[N, K, ...]`` when the target explains K classes per row.
    """

    def forward(*xs: Tensor) -> Any:
        return call_model(model, xs, spec)

    if in_training_mode(model):
        return _autograd_gradients(forward, tensors, target)
    # The enclosing no_grad stops autograd from recording a graph towards the parameters
    # (attributions are detached, and no memory is kept for a second backward); the
    # torch.func transform still differentiates with respect to the inputs.
    with torch.no_grad():
        output, pullback = torch.func.vjp(forward, *tensors)
        target = resolve_target(target, output)
        cotangent, multi = output_cotangent(output, target)
        if multi:
            grads = tuple(g.movedim(0, 1) for g in torch.func.vmap(pullback)(cotangent))
        else:
            grads = tuple(pullback(cotangent))
    return grads, target, multi


def _autograd_gradients(
    forward: Callable[..., Any], tensors: tuple[Tensor, ...], target: Target
) -> tuple[tuple[Tensor, ...], Target, bool]:
    """The same pull-back through plain autograd, for models in training mode.

    ``torch.func`` refuses the in-place running-statistics update of batch norm in training mode;
    autograd allows it (and :func:`~torchattr._core.state.untouched` restores the buffers).
    """
    with torch.enable_grad():
        xs = tuple(t.detach().requires_grad_(True) for t in tensors)
        output = forward(*xs)
        target = resolve_target(target, output)
        cotangent, multi = output_cotangent(output, target)
        leaves, _spec = torch.utils._pytree.tree_flatten(output)
        seeds = torch.utils._pytree.tree_flatten(cotangent)[0]
        grads = torch.autograd.grad(leaves, xs, seeds, is_grads_batched=multi, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads))
    if multi:
        grads = tuple(g.movedim(0, 1) for g in grads)
    return grads, target, multi


def forward_scores(
    model: Callable[..., Any],
    tensors: tuple[Tensor, ...],
    spec: InputSpec,
    target: Target,
    chunk_size: int | None = None,
) -> tuple[Tensor, Target]:
    """Explained scores ``[B]`` (or ``[B, K]``) without gradients, and the resolved target.

    Resolves ``None`` to the argmax of these outputs, so that every perturbed copy of a sample
    explains the class predicted for the sample itself.
    """
    batch = tensors[0].shape[0]
    scores, targets = [], []
    with torch.no_grad():
        for start, stop in row_ranges(batch, chunk_size):
            output = call_model(model, tuple(t[start:stop] for t in tensors), spec)
            part = target[start:stop] if isinstance(target, Tensor) else target
            part = resolve_target(part, output)
            scores.append(row_scores(output, part))
            targets.append(part)
    resolved = target if callable(target) else torch.cat(targets)
    return torch.cat(scores), resolved


def prepare(
    model: Callable[..., Any], inputs: Any, target: Target
) -> tuple[tuple[Tensor, ...], InputSpec, int, Target]:
    """Shared preamble of gradient methods: flatten and check inputs, normalise the target."""
    from torchattr._core.checks import check_gradient_inputs, warn_if_training
    from torchattr._core.inputs import flatten

    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model)}")
    tensors, spec = flatten(inputs)
    batch = check_gradient_inputs(tensors, spec)
    target = normalize_target(target, batch, tensors[0].device)
    warn_if_training(model)
    return tensors, spec, batch, target


def accumulation_dtype(t: Tensor) -> torch.dtype:
    """At least float32, whatever the input dtype."""
    return torch.promote_types(t.dtype, torch.float32)

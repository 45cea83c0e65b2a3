"""The one gradient primitive every gradient method is built on.

``score_gradients`` runs the model once with ``torch.func.vjp`` and pulls back the cotangent that
selects each row's explained score: one forward, one backward (K backward passes over the same
saved forward for K classes per row). ``torch.func`` transforms differentiate even inside
``torch.no_grad()`` (so the kernels work when the caller disabled gradients) and trace under
``torch.compile``.

Outside ``torch.compile`` the same pull-back may run through plain ``torch.autograd.grad`` instead
(:func:`use_autograd`): for one cotangent per row, where it is cheaper, and for models
``torch.func`` refuses (RNN kernels, packed sequences, in-place buffer updates, DDP), which fall
back automatically on the refusals listed in :mod:`torchattr._core.fallback` and only on those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_gradient_inputs,
    in_training_mode,
    tracing,
    warn_if_training,
)
from torchattr._core.chunking import row_ranges
from torchattr._core.contexts import normal_tensor, normal_tensors
from torchattr._core.fallback import (
    is_func_failure,
    needs_autograd,
    remember_autograd,
)
from torchattr._core.inputs import (
    InputSpec,
    Rows,
    call_model,
    check_forward_kwargs,
    flatten,
    kwargs_rows,
)
from torchattr._core.layers import Layers, check_ids, hooked, padding_masks, resolve_layers
from torchattr._core.targets import (
    Target,
    normalize_target,
    output_cotangent,
    resolve_target,
    row_scores,
    target_range,
)


@dataclass(frozen=True)
class Problem:
    """What a method explains: the model, the user's flat inputs, and the attributed slots.

    The *primals* are what gradients are taken with respect to: the input itself for a continuous
    slot, the layer's output for a slot with a layer (see :mod:`torchattr._core.layers`).
    """

    model: Callable[..., Any]
    tensors: tuple[Tensor, ...]
    spec: InputSpec
    layers: Layers
    training: bool = False  # a mode-dependent submodule is in training mode: use autograd
    target_range: tuple[int, int] | None = None  # (min, max) of an index target, read once
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # forward_kwargs, passed through

    def kwargs_for(self, rows: Rows) -> dict[str, Any]:
        """``forward_kwargs`` for a model call on ``rows`` (see :func:`kwargs_rows`)."""
        return kwargs_rows(self.kwargs, self.batch, rows)

    @property
    def batch(self) -> int:
        return self.tensors[0].shape[0]

    @property
    def layered(self) -> bool:
        return any(layer is not None for layer in self.layers)

    def masks(self, mask: Any) -> tuple[Tensor | None, ...]:
        """Padding masks per slot (see :func:`~torchattr._core.layers.padding_masks`)."""
        return padding_masks(mask, self.spec, self.tensors, self.layers)

    def forward(self, sample: Tensor | None = None) -> Callable[..., Any]:
        """The model as a function of primal rows; ``sample`` [N] names each row's sample."""
        kwargs = self.kwargs_for(sample)
        if not self.layered:
            return lambda *primals: call_model(self.model, primals, self.spec, kwargs)

        def forward(*primals: Tensor) -> Any:
            args = tuple(
                p if layer is None else (t if sample is None else t[sample])
                for p, t, layer in zip(primals, self.tensors, self.layers)
            )
            with hooked(self.model, self.layers, primals):
                return call_model(self.model, args, self.spec, kwargs)

        return forward

    def primals(self, chunk_size: int | None = None) -> tuple[tuple[Tensor, ...], Any]:
        """The primals at the inputs (layer outputs captured by a forward), and that output."""
        if not self.layered:
            return self.tensors, None
        captured, outputs = [], []
        with torch.no_grad():
            for start, stop in row_ranges(self.batch, chunk_size):
                rows = tuple(t[start:stop] for t in self.tensors)
                with hooked(self.model, self.layers) as grabbed:
                    outputs.append(
                        call_model(self.model, rows, self.spec, self.kwargs_for(slice(start, stop)))
                    )
                captured.append(grabbed)
        primals = tuple(
            t if layer is None else torch.cat([c[i] for c in captured])
            for i, (t, layer) in enumerate(zip(self.tensors, self.layers))
        )
        return primals, outputs


def score_gradients(
    problem: Problem,
    primals: tuple[Tensor, ...],
    target: Target,
    sample: Tensor | None = None,
    scale: Tensor | None = None,
    return_scores: bool = False,
) -> tuple[Any, ...]:
    """``d s_n / d p_n`` for every row n and primal (input or layer output).

    ``primals`` are rows of the samples ``sample`` (None: one row per sample, in order). With
    ``scale`` [N] the result is ``scale_n * d s_n / d p_n``: the output cotangent is scaled
    before the (linear) backward, which costs nothing. Returns (gradients, resolved target,
    multi), and with ``return_scores`` also the explained scores ``s_n`` ``[N]`` (``[N, K]``)
    that the same forward computed (unscaled, detached): no second forward for them. Each
    gradient has its primal's shape ``[N, ...]``, or ``[N, K, ...]`` when the target explains
    K classes per row.
    """
    forward = problem.forward(sample)
    args = (forward, primals, target, problem.target_range, scale)
    if tracing():
        out = _func_gradients(*args)
    elif use_autograd(problem, primals, target):
        out = _autograd_gradients(*args)
    else:
        try:
            # torch.func refuses an in-place write to a buffer before it happens, so a refused
            # attempt leaves the buffers as they were; the methods put back what autograd
            # changes (core.fallback.buffers_kept around the whole call).
            out = _func_gradients(*args)
        except RuntimeError as error:
            if not is_func_failure(error):
                raise
            remember_autograd(problem.model, str(error))
            out = _autograd_gradients(*args)
    return out if return_scores else out[:3]


def input_gradients(
    problem: Problem, target: Target
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Target, bool]:
    """Gradients at the inputs themselves: (primals, gradients, resolved target, multi).

    Without a layer this is :func:`score_gradients` at the inputs. With layers, the layers'
    outputs (the primals) are captured inside the one forward that is differentiated: each
    layer's output is replaced by a detached copy that requires grad, and plain autograd pulls
    the cotangents back to those leaves (K backward passes over that forward for ``[B, K]``).
    One forward in all, where :meth:`Problem.primals` followed by :func:`score_gradients` costs
    a capture forward more. The leaves hold exactly the values the capture forward records, so
    the results are the same. Under ``torch.compile`` tracing or inference mode (``torch.func``
    is used there, see :func:`use_autograd`) the capture forward is kept.
    """
    if not problem.layered or tracing() or torch.is_inference_mode_enabled():
        primals, _ = problem.primals()
        grads, target, multi = score_gradients(problem, primals, target)
        return primals, grads, target, multi

    leaves: dict[int, Tensor] = {}

    def leaf(slot: int, output: Tensor) -> Tensor:
        leaves[slot] = output.detach().clone().requires_grad_(True)
        # the model continues on a copy: an in-place op after the layer (ReLU(inplace=True))
        # may rewrite it, never the leaf that holds the primal
        return leaves[slot].clone()

    with torch.enable_grad():
        args = tuple(
            t if layer is not None else t.detach().requires_grad_(True)
            for t, layer in zip(problem.tensors, problem.layers)
        )
        with hooked(problem.model, problem.layers, leaf):
            output = call_model(problem.model, args, problem.spec, problem.kwargs_for(None))
        primals = tuple(leaves.get(slot, a) for slot, a in enumerate(args))
        grads, target, multi, _ = _autograd_pullback(
            output, primals, target, problem.target_range, None
        )
    return tuple(p.detach() for p in primals), grads, target, multi


def use_autograd(problem: Problem, primals: tuple[Tensor, ...], target: Target) -> bool:
    """Plain autograd instead of ``torch.func`` (outside ``torch.compile`` tracing only).

    Autograd when the model needs it (training mode, or ``torch.func`` failed on its structure
    before: see :mod:`torchattr._core.fallback`), and whenever one cotangent per row is pulled
    back (an index target ``[B]`` / int / None, or a callable): there autograd computes the same
    thing with a smaller fixed cost per operation. ``[B, K]`` targets keep ``torch.func``
    (its pull-back runs K times over one saved forward, see :func:`_func_gradients`), and so
    does inference mode (inference tensors cannot enter an autograd graph; ``torch.func``
    differentiates them).
    """
    if problem.training or needs_autograd(problem.model):
        return True
    if torch.is_inference_mode_enabled() or any(p.is_inference() for p in primals):
        return False
    return not (isinstance(target, Tensor) and target.ndim == 2)


def _func_gradients(
    forward: Callable[..., Any],
    primals: tuple[Tensor, ...],
    target: Target,
    target_range: tuple[int, int] | None,
    scale: Tensor | None,
) -> tuple[tuple[Tensor, ...], Target, bool, Tensor]:
    """The pull-back through ``torch.func.vjp`` (``vmap`` over K cotangents when multi)."""
    # The enclosing no_grad stops autograd from recording a graph towards the parameters
    # (attributions are detached, and no memory is kept for a second backward); the
    # torch.func transform still differentiates with respect to the inputs.
    with torch.no_grad():
        output, pullback = torch.func.vjp(forward, *primals)
        target = resolve_target(target, output, target_range)
        cotangent, multi = output_cotangent(output, target, scale)
        # retain_graph=False frees each saved activation as soon as the backward used it.
        if multi and tracing():
            pulled = torch.func.vmap(lambda c: pullback(c, retain_graph=False))(cotangent)
            grads = tuple(g.movedim(0, 1) for g in pulled)
        elif multi:
            grads = _pull_each(pullback, cotangent)
        else:
            grads = tuple(pullback(cotangent, retain_graph=False))
        scores = row_scores(output, target)
    return grads, target, multi, scores


def _pull_each(pullback: Callable[..., Any], cotangent: Any) -> tuple[Tensor, ...]:
    """K cotangents (a leading K on every leaf) pulled back one after the other through the
    same saved forward (``retain_graph`` until the last), stacked as ``[N, K, ...]``.

    One forward and K backward passes: the limit for K classes. ``vmap`` over the pull-back
    (kept while ``torch.compile`` traces) measured at that limit on a CNN but 1.15x-1.28x it on
    ``TransformerEncoder`` models on CPU, whose attention backward has no batching rule (a slow
    fallback); ``benchmarks/bench_targets.py``.
    """
    leaves, tree = torch.utils._pytree.tree_flatten(cotangent)
    k = next(leaf.shape[0] for leaf in leaves if isinstance(leaf, Tensor))
    rows = []
    for i in range(k):
        seed = [leaf[i] if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        rows.append(
            pullback(torch.utils._pytree.tree_unflatten(seed, tree), retain_graph=i < k - 1)
        )
    return tuple(torch.stack(parts, 1) for parts in zip(*rows))


def _autograd_gradients(
    forward: Callable[..., Any],
    tensors: tuple[Tensor, ...],
    target: Target,
    target_range: tuple[int, int] | None,
    scale: Tensor | None,
) -> tuple[tuple[Tensor, ...], Target, bool, Tensor]:
    """The same pull-back through plain autograd.

    Used for models in training mode (``torch.func`` refuses batch norm's in-place statistics
    update), for models ``torch.func`` cannot run (see :mod:`torchattr._core.fallback`), and for
    one cotangent per row, where it is faster (see :func:`_autograd_pullback`).
    """
    with torch.inference_mode(False), torch.enable_grad():
        # inference tensors cannot require grad: a normal copy of them enters the graph
        xs = tuple(
            (t.clone() if t.is_inference() else t).detach().requires_grad_(True) for t in tensors
        )
        return _autograd_pullback(forward(*xs), xs, target, target_range, scale)


def _autograd_pullback(
    output: Any,
    xs: tuple[Tensor, ...],
    target: Target,
    target_range: tuple[int, int] | None,
    scale: Tensor | None,
) -> tuple[tuple[Tensor, ...], Target, bool, Tensor]:
    """Pull the target's cotangent of ``output`` back to the leaves ``xs`` (grad enabled).

    ``[K, N, ...]`` cotangents go through K backward passes over the one graph (:func:`_pull`).
    Returns (gradients, resolved target, multi, detached scores).
    """
    target = resolve_target(target, output, target_range)
    cotangent, multi = output_cotangent(output, target, scale)
    pairs = [
        (leaf, seed)
        for leaf, seed in zip(
            torch.utils._pytree.tree_leaves(output), torch.utils._pytree.tree_leaves(cotangent)
        )
        if isinstance(leaf, Tensor) and leaf.requires_grad
    ]
    grads = _pull([p for p, _ in pairs], xs, [s for _, s in pairs], multi)
    with torch.no_grad():
        scores = row_scores(output, target).detach()
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads))
    if multi:
        grads = tuple(g.movedim(0, 1) for g in grads)
    return grads, target, multi, scores


def _pull(
    leaves: list[Tensor], xs: tuple[Tensor, ...], seeds: list[Tensor], multi: bool
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` of ``leaves`` with ``seeds`` ([K, ...] each when ``multi``).

    K seeds are pulled back one after the other through the same saved forward
    (``retain_graph`` until the last): one forward and K backward passes, whatever the model
    (autograd's batched backward, ``is_grads_batched``, measured 1.1x-1.4x that limit on CPU
    on a CNN and a ``TransformerEncoder``, and it has no batching rule for RNN kernels).
    """
    if not multi:
        return torch.autograd.grad(leaves, xs, seeds, allow_unused=True)
    k = seeds[0].shape[0]
    rows = [
        torch.autograd.grad(
            leaves, xs, [s[i] for s in seeds], allow_unused=True, retain_graph=i < k - 1
        )
        for i in range(k)
    ]
    return tuple(
        None
        if all(r[j] is None for r in rows)
        else torch.stack([torch.zeros_like(x) if r[j] is None else r[j] for r in rows])
        for j, x in enumerate(xs)
    )


def forward_scores(
    problem: Problem,
    primals: tuple[Tensor, ...],
    target: Target,
    chunk_size: int | None = None,
    outputs: list[Any] | None = None,
) -> tuple[Tensor, Target]:
    """Explained scores ``[B]`` (or ``[B, K]``) at one primal row per sample, and the target.

    Resolves ``None`` to the argmax of these outputs, so that every perturbed copy of a sample
    explains the class predicted for the sample itself. ``outputs``: the model's outputs for
    these rows, per chunk, when a forward already produced them (:meth:`Problem.primals`).
    """
    scores, targets = [], []
    with torch.no_grad():
        for i, (start, stop) in enumerate(row_ranges(problem.batch, chunk_size)):
            if outputs is not None:
                output = outputs[i]
            else:
                sample = torch.arange(start, stop, device=primals[0].device)
                output = problem.forward(sample)(*(p[start:stop] for p in primals))
            part = target[start:stop] if isinstance(target, Tensor) else target
            part = resolve_target(part, output, problem.target_range)
            scores.append(row_scores(output, part))
            targets.append(part)
    resolved = target if callable(target) else torch.cat(targets)
    return torch.cat(scores), resolved


def prepare(
    model: Callable[..., Any],
    inputs: Any,
    target: Target,
    layer: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Problem, Target]:
    """Shared preamble of gradient methods: flatten and check inputs, layers, the target and
    ``forward_kwargs`` (passed to every model call, per-sample tensors following their rows)."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model)}")
    tensors, spec = flatten(inputs)
    tensors = normal_tensors(tensors)  # inputs made under torch.inference_mode() (a copy)
    layers = resolve_layers(layer, spec, len(tensors))
    names = spec.names()
    check_ids(tensors, names, layers)
    batch = check_gradient_inputs(tensors, spec, skip=[layer is not None for layer in layers])
    target = normal_tensor(normalize_target(target, batch, tensors[0].device))
    training = in_training_mode(model)
    warn_if_training(training)
    kwargs = check_forward_kwargs(forward_kwargs, spec)
    problem = Problem(model, tensors, spec, layers, training, target_range(target), kwargs)
    return problem, target


def accumulation_dtype(t: Tensor) -> torch.dtype:
    """At least float32, whatever the input dtype."""
    return torch.promote_types(t.dtype, torch.float32)

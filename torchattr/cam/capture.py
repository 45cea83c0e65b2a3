"""Capturing one layer's activations and their gradients with call-scoped forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.chunking import row_ranges
from torchattr._core.contexts import call_hooks
from torchattr._core.grad import Problem
from torchattr._core.inputs import call_model
from torchattr._core.targets import Target, output_cotangent, resolve_target
from torchattr.cam.grids import Reshape, Space, as_grid, check_map_dims

__all__ = ["activations_and_gradients", "capture_outputs", "tapped"]


@contextmanager
def tapped(
    layers: Sequence[nn.Module], names: Sequence[str], record: bool = False
) -> Iterator[tuple[list[Any], list[int]]]:
    """Forward hooks on ``layers`` for one model call; yields (captured outputs, call counts).

    ``record=False``: each output is captured as a copy, so that an in-place op after the layer
    (``ReLU(inplace=True)``) cannot rewrite it. ``record=True``: autograd starts recording at the
    first hooked layer (the call runs under ``torch.no_grad()``, whose exit restores the mode),
    each output ``z`` is captured as the tensor to differentiate with respect to (a leaf if
    nothing before it is recorded) and ``z.clone()`` goes on through the model, so in-place ops
    downstream neither rewrite ``z`` nor hit a leaf. Nothing before the layer is recorded,
    nested and chained layers all get their gradient. The hooks act only in this call's thread /
    context (:func:`~torchattr._core.contexts.call_hooks`) and are removed on exit.
    """
    captured: list[Any] = [None] * len(layers)
    calls = [0] * len(layers)

    def make_hook(slot: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            calls[slot] += 1
            if calls[slot] > 1:
                raise ValueError(
                    f"layer {names[slot]} runs more than once in one forward (a module reused, "
                    "like one activation shared by several blocks?): pick a module that runs "
                    "once, e.g. the block that contains it"
                )
            if not isinstance(output, Tensor) or not output.is_floating_point():
                captured[slot] = output  # refused with its shape or type after the call
                return None
            if not record:
                captured[slot] = output.detach().clone()
                return None
            torch.set_grad_enabled(True)
            z = output if output.requires_grad else output.detach().requires_grad_(True)
            captured[slot] = z
            return z.clone()

        return hook

    with call_hooks([(layer, make_hook(i)) for i, layer in enumerate(layers)]):
        yield captured, calls


def _never_called(calls: Sequence[int], names: Sequence[str]) -> None:
    for count, name in zip(calls, names):
        if count == 0:
            raise ValueError(
                f"layer {name} was never called by the model's forward: pass a submodule that "
                "the forward actually uses"
            )


def _check_output(out: Any, rows: int, name: str, space: Space, reshape: Reshape) -> None:
    """The layer output is a float ``[B, C, *s]`` (or tokens) with the output's spatial dims."""
    grid = as_grid(out, rows, name, space, reshape)
    if not grid.is_floating_point():
        raise ValueError(f"layer {name} output has dtype {grid.dtype}: expected floating point")
    check_map_dims(grid, name, space)


def activations_and_gradients(
    problem: Problem,
    layers: Sequence[nn.Module],
    names: Sequence[str],
    target: Target,
    chunk: int,
    space: Space | None = None,
    reshape: Reshape = None,
    input_gradient: bool = False,
) -> tuple[list[Tensor | None], list[Tensor | None], bool]:
    """Activations ``A_l [B, ...]`` and gradients ``G_l = d s / d A_l`` (``[B, (K,) ...]``).

    One forward and one backward per chunk of rows, recorded from the first hooked layer on
    (see :func:`tapped`) and pulled back with ``torch.autograd.grad`` (``is_grads_batched``
    over K classes). With ``space`` every layer must have run and have a map-shaped output;
    without it (FullGrad) a layer that did not run gives None. With ``input_gradient`` the
    image input is differentiated too and its gradient is appended to the gradients.
    """
    acts: list[list[Any]] = [[] for _ in layers]
    grads: list[list[Any]] = [[] for _ in range(len(layers) + input_gradient)]
    multi = False
    for start, stop in row_ranges(problem.batch, chunk):
        rows = tuple(t[start:stop] for t in problem.tensors)
        if input_gradient:
            rows = (rows[0].detach().requires_grad_(True), *rows[1:])
        with torch.no_grad(), tapped(layers, names, record=True) as (captured, calls):
            if input_gradient:
                torch.set_grad_enabled(True)
            output = call_model(
                problem.model, rows, problem.spec, problem.kwargs_for(slice(start, stop))
            )
        if space is not None:
            _never_called(calls, names)
            for out, name in zip(captured, names):
                _check_output(out, stop - start, name, space, reshape)
        part = target[start:stop] if isinstance(target, Tensor) else target
        part = resolve_target(part, output, problem.target_range)
        cotangent, multi = output_cotangent(output, part)
        pairs = [
            (leaf, seed)
            for leaf, seed in zip(
                torch.utils._pytree.tree_leaves(output), torch.utils._pytree.tree_leaves(cotangent)
            )
            if isinstance(leaf, Tensor) and leaf.requires_grad
        ]
        wrt = [a for a in captured if isinstance(a, Tensor) and a.requires_grad]
        wrt += [rows[0]] if input_gradient else []
        pulled: Sequence[Tensor | None] = [None] * len(wrt)
        if pairs and wrt:
            pulled = torch.autograd.grad(
                [p for p, _ in pairs],
                wrt,
                [s for _, s in pairs],
                is_grads_batched=multi,
                allow_unused=True,
            )
        by_id = {id(x): g for x, g in zip(wrt, pulled)}
        k = torch.utils._pytree.tree_leaves(cotangent)[0].shape[0] if multi else 0
        for store, a in zip(acts, captured):
            store.append(a.detach() if isinstance(a, Tensor) else a)
        sources = [*captured, rows[0]] if input_gradient else captured
        for store, x in zip(grads, sources):
            store.append(_gradient_of(x, by_id, k))
        del output, captured, pulled, by_id, pairs, wrt, cotangent
    return [_join(parts) for parts in acts], [_join(parts) for parts in grads], multi


def _gradient_of(x: Any, by_id: dict[int, Tensor | None], k: int) -> Any:
    """The gradient of ``x``, ``[N, ...]`` (``[N, K, ...]`` when ``k``); zeros if unused."""
    if not isinstance(x, Tensor):
        return None
    g = by_id.get(id(x))
    if g is None:
        shape = (x.shape[0], k, *x.shape[1:]) if k else x.shape
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    return (g.movedim(0, 1) if k else g).detach()


def _join(parts: list[Any]) -> Any:
    if len(parts) == 1 or not all(isinstance(p, Tensor) for p in parts):
        return parts[0]
    return torch.cat(parts)


def capture_outputs(
    problem: Problem, layers: Sequence[nn.Module], names: Sequence[str], chunk: int
) -> tuple[list[Tensor], list[Any]]:
    """Layer outputs ``[B, ...]`` (copies) and the model outputs of the clean batch, by chunks."""
    acts: list[list[Any]] = [[] for _ in layers]
    outputs = []
    with torch.no_grad():
        for start, stop in row_ranges(problem.batch, chunk):
            rows = tuple(t[start:stop] for t in problem.tensors)
            with tapped(layers, names) as (captured, calls):
                outputs.append(
                    call_model(
                        problem.model, rows, problem.spec, problem.kwargs_for(slice(start, stop))
                    )
                )
            _never_called(calls, names)
            for store, a in zip(acts, captured):
                store.append(a)
    return [_join(parts) for parts in acts], outputs

"""Target conventions: which scalar score of each row is explained.

``target`` may be

* ``None``: the argmax of the model's output per sample (the logit of single-logit models);
* an ``int`` (numpy integers too): that class for every sample;
* a LongTensor ``[B]`` (or a list / numpy integer array): one class per sample;
* a LongTensor ``[B, K]``: K classes per sample; results gain a class dimension, ``[B, K, ...]``,
  computed from one forward pass and K backward passes over it (``vmap`` under ``torch.compile``);
* a callable mapping the model output to scores ``[N]`` (or ``[N, K]``). It is applied to enlarged
  batches of perturbed copies too, so it must act row by row.

Single-logit models (output ``[B]`` or ``[B, 1]``) have one score per sample, the logit itself:
``None`` and ``0`` explain it. To explain the negative class of a binary model, pass
``target=lambda out: -out.reshape(-1)``.

The explained score of row n is ``s_n = output[n, t_n]``. Gradients of ``sum_n s_n`` with respect
to the inputs equal ``d s_n / d x_n`` row by row as long as the model treats samples
independently (eval mode).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr._core.checks import tracing

Target = None | int | Tensor | Callable[[Any], Tensor]


def normalize_target(target: Target, batch: int, device: torch.device) -> Target:
    """Check the target's type and shape before any model call.

    Returns None, a callable, or a LongTensor of shape ``[B]`` or ``[B, K]`` on ``device``.
    """
    if target is None or callable(target):
        return target
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be None, an int, a LongTensor or a callable, got a bool")
    if isinstance(target, numbers.Integral):  # int, np.int64, ...
        return torch.full((batch,), int(target), dtype=torch.long, device=device)
    if isinstance(target, (list, tuple, np.ndarray, np.generic)):
        target = torch.as_tensor(np.asarray(target))
    if not isinstance(target, Tensor):
        raise TypeError(
            f"target must be None, an int, a LongTensor [B] or [B, K], or a callable, "
            f"got {type(target).__name__}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = target.to(device=device, dtype=torch.long)
    if target.ndim == 0:
        return target.expand(batch)
    if target.ndim > 2 or target.shape[0] != batch:
        raise ValueError(
            f"target has shape {list(target.shape)}: expected [B] or [B, K] with B = {batch}"
        )
    return target


def logits_of(output: Any) -> Tensor:
    """The tensor an index target selects from: the output itself, its ``"logits"`` entry (dicts,
    Hugging Face ``ModelOutput``), or the first element of a tuple/list output.

    Raises a ``ValueError`` naming the output's structure when there is no such tensor (pass a
    callable target then: it receives the whole output).
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get("logits") if "logits" in output else getattr(output, "logits", None)
        if isinstance(found, Tensor):
            return found
        raise ValueError(
            f"model output is a {type(output).__name__} with keys {list(output.keys())} and no "
            "'logits' tensor: index targets need logits; pass a callable target that maps the "
            "output to [B] scores"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"model output is a {type(output).__name__}: index targets need a logits tensor [B, C], "
        "a dict with 'logits', or a tuple whose first element is the logits; pass a callable "
        "target that maps the output to [B] scores"
    )


def num_classes(output: Any, target: Target) -> int:
    """Validate the output shape for index targets; return its number of classes (1 for a logit).

    Index targets select from :func:`logits_of` the output (a tensor, a ``"logits"`` entry or a
    tuple's first element).
    """
    if callable(target):
        return 0
    logits = logits_of(output)
    if logits.ndim not in (1, 2):
        raise ValueError(
            f"model output has shape {list(logits.shape)}: expected [B, C], [B] or [B, 1] "
            "logits; pass a callable target that maps the output to [B] scores"
        )
    return 1 if logits.ndim == 1 else logits.shape[1]


def target_range(target: Target) -> tuple[int, int] | None:
    """``(min, max)`` of an index target, read from the device once, before any model call."""
    if not isinstance(target, Tensor) or tracing() or target.numel() == 0:
        return None
    low, high = torch.stack([target.min(), target.max()]).tolist()
    return low, high


def resolve_target(
    target: Target, output: Any, known_range: tuple[int, int] | None = None
) -> Target:
    """Turn ``None`` into per-row classes and check index targets against ``output``.

    ``target`` is already normalised to the rows of ``output``. ``known_range`` is the target's
    ``(min, max)`` when already read (see :func:`target_range`): the check then needs no device
    synchronisation between the forward and the backward. Returns a callable or a LongTensor
    ``[N]`` / ``[N, K]``.
    """
    classes = num_classes(output, target)
    if callable(target):
        return target
    if target is None:
        logits = logits_of(output)
        if classes == 1:
            return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return logits.detach().argmax(dim=1)
    bounds = known_range if known_range is not None else target_range(target)
    if bounds is not None:
        low, high = bounds
        if low < 0 or high >= classes:
            hint = " (single-logit model: use None or 0, or a callable)" if classes == 1 else ""
            raise ValueError(
                f"target holds class {low if low < 0 else high}, out of range for a model "
                f"output with {classes} classes: expected 0 <= target < {classes}{hint}"
            )
    return target


def row_scores(output: Any, target: Target) -> Tensor:
    """Explained scores ``[N]`` (or ``[N, K]``) of a resolved target."""
    if callable(target):
        return _check_scores(target(output), output)
    output = logits_of(output)
    if output.ndim == 1 or output.shape[1] == 1:
        logit = output.reshape(-1)
        return logit[:, None].expand(-1, target.shape[1]) if target.ndim == 2 else logit
    if target.ndim == 2:
        return output.gather(1, target)
    return output.gather(1, target[:, None])[:, 0]


def output_cotangent(output: Any, target: Target, scale: Tensor | None = None) -> tuple[Any, bool]:
    """Cotangent of the output that back-propagates ``sum_n scale_n s_n``; and whether it is
    K-batched (a leading dimension K on every leaf).

    The cotangent is a pytree shaped like ``output``. Index targets give one-hot rows (``[N, C]``,
    or ``[K, N, C]`` for multi-target) on the logits (:func:`logits_of`) and zeros on every other
    leaf. A callable target's cotangent is its own vector-Jacobian product with ``scale`` (ones
    when None), so that any differentiable function of any output pytree (0-d leaves such as a
    loss included) can be explained. ``scale [N]`` weights the rows (quadrature weights).
    """
    if callable(target):
        scores, score_vjp = torch.func.vjp(target, output)
        scores = _check_scores(scores, output)
        if scores.ndim == 1:
            seed = torch.ones_like(scores) if scale is None else _per_row(scale, scores, 0)
            return score_vjp(seed)[0], False
        n, k = scores.shape
        eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
        seeds = eye[:, None, :].expand(k, n, k)
        if scale is not None:
            seeds = seeds * scale.to(scores.dtype)[None, :, None]
        return torch.func.vmap(score_vjp)(seeds)[0], True
    logits = logits_of(output)
    multi = target.ndim == 2
    if logits.ndim == 1 or logits.shape[1] == 1:
        ones = torch.ones_like(logits)
        seed = ones.expand(target.shape[1], *logits.shape) if multi else ones
    else:
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        seed = onehot.movedim(1, 0) if multi else onehot
    if scale is not None:
        seed = seed * _per_row(scale, seed, 1 if multi else 0)
    if logits is output:
        return seed, multi
    leaves, tree = torch.utils._pytree.tree_flatten(output)
    seeds = [seed if leaf is logits else _zero_seed(leaf, seed, multi) for leaf in leaves]
    return torch.utils._pytree.tree_unflatten(seeds, tree), multi


def _zero_seed(leaf: Any, seed: Tensor, multi: bool) -> Any:
    """The cotangent of an output leaf no score depends on: zeros (K-batched when ``multi``)."""
    if not isinstance(leaf, Tensor):
        return None
    zeros = torch.zeros_like(leaf)
    return zeros.expand(seed.shape[0], *leaf.shape) if multi else zeros


def _per_row(scale: Tensor, like: Tensor, dim: int) -> Tensor:
    """``scale [N]`` shaped to multiply the rows (dimension ``dim``) of ``like``."""
    shape = [1] * like.ndim
    shape[dim] = -1
    return scale.to(like.dtype).reshape(shape)


def _check_scores(scores: Any, output: Any) -> Tensor:
    rows = _rows(output)
    if not isinstance(scores, Tensor) or scores.ndim not in (1, 2) or scores.shape[0] != rows:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"callable target returned {shape}: expected scores [N] (or [N, K]) with N = {rows}, "
            "one per row of the model output"
        )
    return scores


def _rows(output: Any) -> int:
    """Rows of an output pytree: the leading size of its first tensor leaf that is not 0-d
    (a dict output may start with a scalar loss)."""
    leaves = [
        x for x in torch.utils._pytree.tree_leaves(output) if isinstance(x, Tensor) and x.ndim
    ]
    return leaves[0].shape[0] if leaves else -1

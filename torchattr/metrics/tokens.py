"""Faithfulness of token and code attributions (ERASER, DeYoung et al. 2020).

* :func:`comprehensiveness`: the score drop when the top ``p`` of the tokens (by attribution)
  are replaced by a baseline id; higher is better (the rationale was needed);
* :func:`sufficiency`: the score drop when only the top ``p`` are kept (the other real tokens
  replaced); lower is better (the rationale alone suffices).

Both are computed for several fractions ``p`` and summarised, as in ERASER, by the area over
the perturbation curve ``AOPC = mean_p drop(p)``. Inputs are integer ids ``[B, L]`` (or a dict
of model inputs with the attributed entry named by ``key``, e.g. EHR codes next to lab values),
with an optional ``mask`` of the real (non-padding) tokens; padding is never chosen, replaced or
counted. The model conventions are those of the other model-scoring metrics: ``target=None`` is
the class predicted on the clean inputs, copies go through the model ``chunk_size`` rows at a
time (copy-major), ``forward_kwargs`` (and a dict's other entries) follow their sample, and the
model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import check_finite
from torchattr._core.progress import Progress, check_progress
from torchattr._core.state import untouched
from torchattr._core.targets import Target
from torchattr.metrics._copies import score_copies
from torchattr.metrics._shared import _check_chunk_size, _check_fractions, _scoring

__all__ = ["TokenCurves", "comprehensiveness", "sufficiency"]

TokenInputs = Tensor | Mapping[str, Tensor]


@dataclass(frozen=True)
class TokenCurves:
    """Score drops of :func:`comprehensiveness` / :func:`sufficiency`.

    Attributes:
        fractions: the fractions ``p`` of each sample's real tokens, in order (``K`` of them).
        drops: ``[K, B]``, ``f(x) - f(x_p)`` for each fraction and sample.
        aopc: ``[B]``, ``drops.mean(0)`` (ERASER's area over the perturbation curve).
        tokens: ``[K, B]`` long, the number of tokens chosen, ``ceil(p n_b)``.

    Example::

        drops = ta.metrics.comprehensiveness(model, ids, scores)
        drops.aopc                   # [B]: higher is better
    """

    fractions: tuple[float, ...]
    drops: Tensor
    aopc: Tensor
    tokens: Tensor


def comprehensiveness(
    model: Callable[..., Any],
    inputs: TokenInputs,
    attributions: Tensor | Mapping[str, Tensor],
    target: Target = None,
    *,
    key: str | None = None,
    fractions: Sequence[float] | float = (0.01, 0.05, 0.1, 0.2, 0.5),
    baseline: int = 0,
    mask: Tensor | None = None,
    score: str = "softmax",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> TokenCurves:
    """Comprehensiveness (DeYoung et al. 2020, ERASER): removing the top tokens, per fraction.

        ``comp_p(x) = f(x) - f(x \\ r_p)``,   ``AOPC = mean_p comp_p``

    where ``r_p`` are the ``k_b = ceil(p n_b)`` real tokens of sample ``b`` (``n_b`` of them)
    with the largest attributions (ties: the earlier position first), "removed" by replacing
    their ids with ``baseline`` (a pad, ``[MASK]`` or unknown-code id; the sequence keeps its
    length), and ``f`` the model's score for the target. Higher is better. Costs ``K B`` model
    rows for ``K`` fractions.

    Args:
        model: maps ids ``[N, L]`` (or the dict's entries, as keyword arguments) to outputs
            ``[N, classes]`` (or ``[N]``).
        inputs: integer ids ``[B, L]``, or a dict of model inputs whose entry ``key`` holds them
            (the other entries go with their samples, unchanged).
        attributions: ``[B, L]`` token attributions, or ``[B, L, ...]`` (e.g. per embedding
            dimension, summed over the trailing dimensions); a dict of them is read at ``key``.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        key: the attributed entry of dict inputs (required for them, not allowed otherwise).
        fractions: fractions ``p`` in (0, 1) of each sample's real tokens (default ERASER's
            1, 5, 10, 20, 50 %).
        baseline: the id replacing removed tokens.
        mask: ``[B, L]`` bool or 0/1 integers, True/1 for real tokens (default: all real).
            Padding positions are never replaced; pass the model's own attention mask in
            ``forward_kwargs`` as usual.
        score: ``"softmax"`` (default, as ERASER), ``"sigmoid"`` or ``"logit"``.
        chunk_size: rows per model call (default B).
        forward_kwargs: keyword arguments passed to every model call (tensors with leading
            dimension B follow their sample).
        progress: True for a tqdm bar or a callable ``(done, total)`` (``total = K B``).

    Returns:
        :class:`TokenCurves` with ``drops [K, B]`` and ``aopc [B]``.

    Example::

        curves = comprehensiveness(model, ids, attributions, mask=ids != pad, baseline=pad,
                                   forward_kwargs={"attention_mask": ids != pad})
    """
    return _token_curves(
        "comprehensiveness", model, inputs, attributions, target, key, fractions, baseline,
        mask, score, chunk_size, forward_kwargs, progress,
    )  # fmt: skip


def sufficiency(
    model: Callable[..., Any],
    inputs: TokenInputs,
    attributions: Tensor | Mapping[str, Tensor],
    target: Target = None,
    *,
    key: str | None = None,
    fractions: Sequence[float] | float = (0.01, 0.05, 0.1, 0.2, 0.5),
    baseline: int = 0,
    mask: Tensor | None = None,
    score: str = "softmax",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> TokenCurves:
    """Sufficiency (DeYoung et al. 2020, ERASER): keeping only the top tokens, per fraction.

        ``suff_p(x) = f(x) - f(r_p)``,   ``AOPC = mean_p suff_p``

    where ``r_p`` keeps the ``k_b = ceil(p n_b)`` real tokens with the largest attributions
    (ties: the earlier position first) and replaces every other real token by ``baseline``
    (padding stays as it is). Lower is better (may be negative: the rationale alone scores
    higher). Arguments and result as :func:`comprehensiveness`.

    Example::

        curves = sufficiency(model, {"codes": codes, "labs": labs}, phi, key="codes",
                             mask=codes != 0, baseline=0)
    """
    return _token_curves(
        "sufficiency", model, inputs, attributions, target, key, fractions, baseline, mask,
        score, chunk_size, forward_kwargs, progress,
    )  # fmt: skip


def _token_curves(
    kind: str,
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Target,
    key: str | None,
    fractions: Any,
    baseline: Any,
    mask: Any,
    score: str,
    chunk_size: int | None,
    forward_kwargs: Any,
    progress: Progress,
) -> TokenCurves:
    """The drops ``[K, B]`` of removing (comprehensiveness) or keeping (sufficiency) the top
    ``ceil(p n_b)`` real tokens, for each fraction ``p``."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model)}")
    ids, call, extra = _split_inputs(model, inputs, key, forward_kwargs)
    phi = _token_attributions(attributions, ids, key)
    real = _check_token_mask(mask, ids)
    fractions = _check_fractions(fractions)
    if isinstance(baseline, bool) or not isinstance(baseline, int):
        raise TypeError(f"baseline must be an int token id, got {baseline!r}")
    check_progress(progress)
    batch = ids.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    counts = real.sum(dim=1)
    empty = counts == 0
    if bool(empty.any()):
        raise ValueError(
            f"mask has no real token in sample(s) {empty.nonzero()[:, 0].tolist()}: nothing to rank"
        )
    # rank[b, l]: position of token l in sample b's decreasing order (padding last)
    keys = torch.where(real, phi, -torch.inf)
    order = keys.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    chosen = torch.stack([torch.ceil(p * counts.double()).long() for p in fractions])  # [K, B]
    fill = torch.tensor(baseline, dtype=ids.dtype, device=ids.device)

    def make(copies: slice, samples: slice) -> Tensor:
        top = rank[samples].unsqueeze(0) < chosen[copies, samples].unsqueeze(-1)  # [nc, ns, L]
        replace = top if kind == "comprehensiveness" else real[samples] & ~top
        return torch.where(replace, fill, ids[samples])

    guard = untouched(model, gradients=False) if isinstance(model, torch.nn.Module) else None
    with guard or nullcontext(), _scoring(call, ids, target, score, chunk_size, extra) as scorer:
        scores = score_copies(scorer, batch, len(fractions), make, chunk_size, progress, kind)
    drops = scorer.clean.unsqueeze(0) - scores
    return TokenCurves(fractions, drops, drops.mean(dim=0), chosen)


def _split_inputs(
    model: Callable[..., Any], inputs: Any, key: str | None, forward_kwargs: Any
) -> tuple[Tensor, Callable[..., Any], dict[str, Any] | None]:
    """The attributed ids ``[B, L]``, the model as a function of them, and the keyword arguments
    of every call (``forward_kwargs`` plus a dict's other entries)."""
    if isinstance(inputs, Tensor):
        if key is not None:
            raise ValueError(f"key={key!r} names an entry of dict inputs, but inputs is a tensor")
        return _check_ids(inputs, "inputs"), model, forward_kwargs
    if not isinstance(inputs, Mapping):
        raise TypeError(
            "inputs must be integer ids [B, L] or a dict of model inputs, got "
            f"{type(inputs).__name__}"
        )
    if key is None or key not in inputs:
        raise ValueError(
            f"key must name the attributed entry of dict inputs {sorted(inputs)}, got {key!r}"
        )
    ids = _check_ids(inputs[key], f"inputs[{key!r}]")
    if not (forward_kwargs is None or isinstance(forward_kwargs, Mapping)):
        raise TypeError(
            "forward_kwargs must be a dict of keyword arguments for the model, got "
            f"{type(forward_kwargs).__name__}"
        )
    extra = dict(forward_kwargs or {})
    both = sorted(set(extra) & set(inputs))
    if both:
        raise ValueError(f"forward_kwargs and inputs both name {both}: a keyword is passed once")
    for name, value in inputs.items():
        if name != key:
            if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != ids.shape[0]):
                raise ValueError(
                    f"inputs[{name!r}] has shape {list(value.shape)}: expected [B, ...] with "
                    f"B = {ids.shape[0]}"
                )
            extra[name] = value

    def call(rows: Tensor, **kwargs: Any) -> Any:
        return model(**{key: rows}, **kwargs)

    return ids, call, extra


def _check_ids(ids: Any, name: str) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a tensor of integer ids [B, L], got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} has dtype {ids.dtype}: expected integer token ids")
    if ids.ndim != 2 or min(ids.shape) == 0:
        raise ValueError(f"{name} has shape {list(ids.shape)}: expected non-empty ids [B, L]")
    return ids.detach()


def _token_attributions(attributions: Any, ids: Tensor, key: str | None) -> Tensor:
    """Attributions per token ``[B, L]`` (trailing dimensions summed), float, finite."""
    name = "attributions"
    if isinstance(attributions, Mapping):
        if key is None or key not in attributions:
            raise ValueError(
                f"attributions is a dict {sorted(attributions)}: key must name its entry for "
                f"the attributed ids, got {key!r}"
            )
        attributions, name = attributions[key], f"attributions[{key!r}]"
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a tensor [B, L, ...], got {type(attributions).__name__}")
    if not attributions.is_floating_point():
        raise TypeError(f"{name} has dtype {attributions.dtype}: expected floating point")
    if attributions.shape[:2] != ids.shape:
        raise ValueError(
            f"{name} has shape {list(attributions.shape)} but the ids have {list(ids.shape)}: "
            "expected [B, L] or [B, L, ...]"
        )
    phi = attributions.detach().to(ids.device)
    check_finite([phi], [name])
    return phi.flatten(2).sum(dim=2) if phi.ndim > 2 else phi


def _check_token_mask(mask: Any, ids: Tensor) -> Tensor:
    """Real tokens ``[B, L]`` bool (all of them for None)."""
    if mask is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        kind = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool or 0/1 integer tensor [B, L], got {kind}")
    if mask.shape != ids.shape:
        raise ValueError(
            f"mask has shape {list(mask.shape)} but the ids have {list(ids.shape)}: expected [B, L]"
        )
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask holds values other than 0 and 1: expected True/1 = real token")
        mask = mask != 0
    return mask.to(ids.device)

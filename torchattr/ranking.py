"""Readable rankings of code and token attributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["top_codes"]


def top_codes(
    attributions: Tensor,
    ids: Tensor,
    vocabulary: Mapping[int, str] | Sequence[str] | None = None,
    *,
    k: int = 5,
    mask: Tensor | int | None = None,
    absolute: bool = False,
    with_ids: bool = False,
) -> list[list[tuple[Any, ...]]]:
    """Top-k codes per sample with their scores, from per-position attributions.

    ``attributions`` and ``ids`` are ``[B, L]`` (e.g. the output of ``integrated_gradients(...,
    layer=embedding)`` and its input). A code that occurs several times in a sample scores the sum
    of its positions. Positions where ``mask`` is False (or that hold the padding id ``mask``) are
    left out. Codes are ranked by score, highest first (by ``|score|`` with ``absolute=True``) and
    named through ``vocabulary`` (a mapping or sequence from id to name; the id itself otherwise).

    Returns a list of B lists of ``(name, score)`` pairs, at most k each (``(id, name, score)``
    triples with ``with_ids=True``, e.g. to find where a known code ranks).

    Example::

        ranking = ta.top_codes(scores, codes, vocab, k=3, mask=PAD)
        # [[("I50.9 heart failure", 0.82), ("E11.9 type 2 diabetes", 0.31), ...], ...]
    """
    if attributions.shape != ids.shape:
        raise ValueError(
            f"attributions has shape {list(attributions.shape)} but ids has {list(ids.shape)}: "
            "expected the same [B, L] shape (sum embedding dimensions first)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if mask is None:
        keep = torch.ones_like(ids, dtype=torch.bool)
    elif isinstance(mask, int):
        keep = ids != mask
    else:
        keep = mask.to(torch.bool)
    rankings = []
    for scores, codes, kept in zip(attributions.detach().cpu(), ids.cpu(), keep.cpu()):
        unique, inverse = torch.unique(codes[kept], return_inverse=True)
        totals = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, scores[kept])
        order = (totals.abs() if absolute else totals).argsort(descending=True, stable=True)[:k]
        entries = [
            (int(unique[i]), _name(vocabulary, int(unique[i])), float(totals[i])) for i in order
        ]
        rankings.append([e if with_ids else e[1:] for e in entries])
    return rankings


def _name(vocabulary: Mapping[int, str] | Sequence[str] | None, code: int) -> str:
    if vocabulary is None:
        return str(code)
    try:
        return str(vocabulary[code])
    except (KeyError, IndexError):
        return str(code)

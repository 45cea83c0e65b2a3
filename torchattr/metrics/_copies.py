"""Scoring ``copies x B`` perturbed copies of a batch, ``chunk_size`` rows per model call
(shared by :mod:`~torchattr.metrics.faithfulness` and :mod:`~torchattr.metrics.tokens`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchattr._core.chunking import build_rows, row_index, row_ranges
from torchattr._core.progress import Progress, reported
from torchattr.metrics._shared import _Scorer


def score_copies(
    scorer: _Scorer,
    batch: int,
    copies: int,
    make: Callable[[slice, slice], Tensor],
    chunk_size: int,
    progress: Progress,
    description: str,
) -> Tensor:
    """Scores ``[copies, B]`` of the copies ``make(copies, samples) -> [nc, ns, ...]``.

    Rows are laid out copy-major (row ``r`` is copy ``r // B`` of sample ``r % B``) and go
    through the model ``chunk_size`` rows at a time; ``progress`` hears the rows done.
    """
    device = scorer.clean.device
    out = torch.empty(copies * batch, dtype=scorer.clean.dtype, device=device)
    rows = copies * batch
    for start, stop in reported(row_ranges(rows, chunk_size), progress, rows, description):
        _, sample = row_index(start, stop, batch, device)
        out[start:stop] = scorer(build_rows(start, stop, batch, make), sample).to(out.dtype)
    return out.reshape(copies, batch)

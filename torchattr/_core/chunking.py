"""Bounded runs of rows.

Methods that evaluate many perturbed copies of a batch (Riemann steps, noise samples) lay them out
as ``rows = copies x B`` rows, copy-major: row ``r`` is copy ``r // B`` of sample ``r % B``. The
model sees at most ``chunk_size`` rows per call; results are accumulated per sample, so they do not
depend on ``chunk_size`` beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def row_ranges(n_rows: int, chunk_size: int | None) -> Iterator[tuple[int, int]]:
    """Half-open ranges ``[start, stop)`` covering ``range(n_rows)`` in runs of ``chunk_size``."""
    step = n_rows if chunk_size is None else chunk_size
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def row_index(start: int, stop: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(copy index, sample index) of rows ``start..stop-1`` in the copy-major layout."""
    rows = torch.arange(start, stop, device=device)
    return rows // batch, rows % batch


def add_rows(acc: Tensor, sample: Tensor, values: Tensor) -> None:
    """``acc[b] += sum of values over the rows of sample b`` (in place, acc's dtype)."""
    acc.index_add_(0, sample, values.to(acc.dtype))

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


def add_rows(acc: Tensor, start: int, values: Tensor) -> None:
    """Add rows ``start..start+len(values)-1`` (copy-major) into their samples: ``acc[b] += v``.

    ``acc`` is ``[B, ...]``. Whole copies are summed through a ``[copies, B, ...]`` view, partial
    copies through slices: deterministic, and free of scatter kernels (which ``torch.compile``'s
    CPU backend miscompiles after a ``torch.func.vjp``).
    """
    batch, count = acc.shape[0], values.shape[0]
    values = values.to(acc.dtype)
    pos = 0
    while pos < count:
        sample = (start + pos) % batch
        whole = (count - pos) // batch if sample == 0 else 0
        if whole:
            acc += values[pos : pos + whole * batch].unflatten(0, (whole, batch)).sum(0)
            pos += whole * batch
        else:
            take = min(batch - sample, count - pos)
            acc[sample : sample + take] += values[pos : pos + take]
            pos += take

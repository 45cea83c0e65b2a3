"""Bounded runs of rows.

Methods that evaluate many perturbed copies of a batch (Riemann steps, noise samples) lay them out
as ``rows = copies x B`` rows, copy-major: row ``r`` is copy ``r // B`` of sample ``r % B``. The
model sees at most ``chunk_size`` rows per call; results are accumulated per sample, so they do not
depend on ``chunk_size`` beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from torchattr._core.checks import check_generator, tracing
from torchattr._core.memory import PeakMeter, default_budget
from torchattr._core.progress import Progress, reporting


def row_ranges(n_rows: int, chunk_size: int | None) -> Iterator[tuple[int, int]]:
    """Half-open ranges ``[start, stop)`` covering ``range(n_rows)`` in runs of ``chunk_size``."""
    step = n_rows if chunk_size is None else chunk_size
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def row_index(start: int, stop: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(copy index, sample index) of rows ``start..stop-1`` in the copy-major layout."""
    rows = torch.arange(start, stop, device=device)
    return rows // batch, rows % batch


def segments(start: int, stop: int, batch: int) -> list[tuple[slice, slice]]:
    """Rows ``start..stop-1`` as rectangles ``(copies, samples)``, in row order.

    A rectangle is a run of whole copies (all B samples) or a part of one copy; its rows are the
    rectangle flattened copy-major. Building rows and summing them per sample through these
    views needs no gather or scatter kernels (``torch.compile``'s CPU backend miscompiles the
    scatter after a ``torch.func.vjp``; gathers from expanded baselines are slow).
    """
    out = []
    row = start
    while row < stop:
        copy, sample = divmod(row, batch)
        whole = (stop - row) // batch if sample == 0 else 0
        if whole:
            out.append((slice(copy, copy + whole), slice(0, batch)))
            row += whole * batch
        else:
            take = min(batch - sample, stop - row)
            out.append((slice(copy, copy + 1), slice(sample, sample + take)))
            row += take
    return out


def build_rows(start: int, stop: int, batch: int, make: Callable[[slice, slice], Tensor]) -> Tensor:
    """Rows ``start..stop-1`` from ``make(copies, samples) -> [n_copies, n_samples, ...]``."""
    parts = [make(c, s).flatten(0, 1) for c, s in segments(start, stop, batch)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def add_rows(acc: Tensor, start: int, values: Tensor) -> None:
    """Add rows ``start..start+len(values)-1`` into their samples: ``acc[b] += v`` (in place)."""
    batch = acc.shape[0]
    pos = 0
    for copies, samples in segments(start, start + values.shape[0], batch):
        n_copies, n_samples = copies.stop - copies.start, samples.stop - samples.start
        block = values[pos : pos + n_copies * n_samples].unflatten(0, (n_copies, n_samples))
        acc[samples] += block.sum(0).to(acc.dtype)
        pos += n_copies * n_samples


def draw(
    sampler: Callable[..., Tensor],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """``sampler(shape)`` (``torch.randn``, ``torch.rand``) from ``generator``, on ``device``.

    The draws are made on the generator's device (``device`` without one) and moved, so a seeded
    CPU generator gives the same numbers whatever device the inputs live on.
    """
    check_generator(generator)
    where = device if generator is None else generator.device
    return sampler(shape, generator=generator, device=where, dtype=dtype).to(device)


class CopyDraws:
    """Random draws ``[B, ...]`` for copies 0, 1, 2, ..., taken from the generator in copy order.

    Rows are visited in increasing order, so each copy's draw is made once, in the same order
    whatever the chunking: results do not depend on ``batch_size``.
    """

    def __init__(self, draw: Callable[[], Tensor]) -> None:
        self._draw = draw
        self._copy = -1
        self._value: Tensor | None = None

    def __call__(self, copy: int) -> Tensor:
        if copy < self._copy:
            raise RuntimeError("copies must be visited in increasing order")
        while self._copy < copy:
            self._value = self._draw()
            self._copy += 1
        return self._value


def stack_draws(draws: CopyDraws, copies: slice, samples: slice) -> Tensor:
    """``[n_copies, n_samples, ...]`` draws of a rectangle of rows (for ``build_rows``)."""
    return torch.stack([draws(c)[samples] for c in range(copies.start, copies.stop)])


ChunkSize = int | str | None  # rows per model call, "auto", or None (all at once)
PROBE_ROWS = 4  # rows of the first measured chunk of chunk_size="auto" (the second has twice)


def run_chunks(
    n_rows: int,
    chunk_size: ChunkSize,
    body: Callable[[int, int], None],
    *,
    device: torch.device,
    memory_budget: int | None = None,
    progress: Progress = False,
    description: str = "rows",
) -> ChunkSize:
    """Call ``body(start, stop)`` for ranges covering ``range(n_rows)`` in order; report progress.

    An int or None chunks as :func:`row_ranges`. ``"auto"`` keeps the peak memory of a chunk
    under ``memory_budget`` bytes (None: :func:`~torchattr._core.memory.default_budget`): the
    first chunk (``r1 = PROBE_ROWS`` rows) and the second (``r2 = 2 r1``) run under a
    :class:`~torchattr._core.memory.PeakMeter` measuring peaks ``p1, p2``; with the per-row cost
    ``c = (p2 - p1) / (r2 - r1)`` and the fixed cost ``f = p1 - c r1`` (:func:`rows_within`) the
    remaining chunks get ``floor((budget - f) / c)`` rows (at least 1). The measured chunks are
    part of the run, so nothing is computed twice. While ``torch.compile`` traces, ``"auto"``
    means one chunk. ``progress`` (see :mod:`torchattr._core.progress`) counts rows.

    Returns the rows per chunk it settled on (an int, None for one chunk, or ``"auto"`` when
    the rows were too few to measure), so that a caller
    running several rounds of rows (``steps="auto"`` of IG) measures ``"auto"`` once.
    """
    with reporting(progress, n_rows, description) as report:
        if chunk_size != "auto" or tracing():
            fixed = None if chunk_size == "auto" else chunk_size
            for start, stop in row_ranges(n_rows, fixed):
                body(start, stop)
                report(stop)
            return fixed
        budget = default_budget(device) if memory_budget is None else memory_budget
        measured: list[tuple[int, int]] = []
        start = 0
        for rows in (PROBE_ROWS, 2 * PROBE_ROWS):
            if start == n_rows:
                return "auto"  # too few rows to measure: the next round measures again
            stop = min(n_rows, start + rows)
            with PeakMeter() as meter:
                body(start, stop)
            measured.append((stop - start, meter.peak))
            report(stop)
            start = stop
        size = rows_within(budget, measured)
        for begin in range(start, n_rows, size):
            stop = min(begin + size, n_rows)
            body(begin, stop)
            report(stop)
        return size


def rows_within(budget: int, measured: list[tuple[int, int]]) -> int:
    """Rows per chunk whose predicted peak ``f + c * rows`` stays within ``budget`` bytes.

    ``measured``: ``(rows, peak bytes)`` of two chunks; the line through them gives the per-row
    cost ``c`` and the fixed cost ``f``. When the two do not give a positive slope (equal rows,
    noise), ``c`` is the larger peak per row and ``f = 0`` (an over-estimate: chunks stay under).
    """
    (r1, p1), (r2, p2) = measured
    if r2 > r1 and p2 > p1:
        per_row = (p2 - p1) / (r2 - r1)
        fixed = max(0.0, p1 - per_row * r1)
    else:
        per_row, fixed = max(p1 / r1, p2 / r2, 1.0), 0.0
    return max(1, int((budget - fixed) // per_row))

"""Shared engine of the path methods (:mod:`torchattr.paths`).

A path method integrates the gradient of the explained score ``s`` along a path ``p(a)`` from a
start ``p(0)`` (a baseline) to the inputs ``p(1) = x``:

    ``A = sum_k g_k * (p(a_{k+1}) - p(a_k))``,   ``g_k = d s / d p`` at ``p((a_k + a_{k+1}) / 2)``

(the midpoint rule on each chord of the path, knots ``a_k = k / n``), so that
``sum(A) ~ s(x) - s(p(0))`` (completeness) with an error O(1/n^2) for smooth models. All
``n x B`` gradient points of a fixed path go through the model in ``chunk_size`` rows, copy-major
(:mod:`torchattr._core.chunking`). The IDGI correction (:func:`idgi_correction`) replaces
``g_k * dp_k`` by ``g_k^2 / |g_k|^2 * (s(p_{k+1}) - s(p_k))``, with ``g_k`` at the knot ``p_k``
(Yang et al.): gradients and scores then come from the same ``n x B`` forwards.

Paths are functions ``point(slot, alphas, samples) -> [n, b, ...]``: the primal of input slot
``slot`` at path positions ``alphas`` (floats in [0, 1]) for the samples ``samples``. This module
also holds the baseline parsing of the path methods (the same conventions as
:func:`torchattr.integrated_gradients`), the Gaussian scale space of Blur IG and the adaptive
path of Guided IG, so that every method in :mod:`torchattr.paths` is written on one plumbing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.checks import check_finite
from torchattr._core.chunking import add_rows, build_rows, row_index, row_ranges, run_chunks
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import (
    Problem,
    accumulation_dtype,
    forward_scores,
    prepare,
    score_gradients,
)
from torchattr._core.inputs import InputSpec, unflatten
from torchattr._core.layers import check_ids, collapse
from torchattr._core.progress import Progress, reporting
from torchattr._core.state import untouched
from torchattr._core.targets import Target, resolve_target, row_scores

Point = Callable[[int, Sequence[float], slice], Tensor]
Rows = Callable[[int, int], tuple[Tensor, ...]]
Weigh = Callable[[int, int, tuple[Tensor, ...], bool], tuple[Tensor, ...]]


# --------------------------------------------------------------------------------------------
# Integration over rows
# --------------------------------------------------------------------------------------------


def integrate(
    problem: Problem,
    target: Target,
    copies: int,
    rows_of: Rows,
    weigh: Weigh,
    *,
    chunk_size: int | str | None,
    memory_budget: int | None,
    progress: Progress,
    description: str,
    with_scores: bool = False,
) -> tuple[list[Tensor], bool]:
    """``sum_c weigh(rows of copy c)`` per sample: ``[B, ...]`` per primal (``[B, K, ...]``).

    ``rows_of(start, stop)`` gives the primal rows ``start..stop-1`` of the ``copies x B``
    copy-major layout; their gradients ``g`` (one forward, one backward per chunk) go to
    ``weigh(start, stop, g, multi)``, whose rows are summed into their samples in at least
    float32. With ``with_scores`` the rows' explained scores, computed by the same forward,
    are passed too: ``weigh(start, stop, g, multi, scores)``. Chunks come in row order.
    Returns (sums, multi).
    """
    batch, device = problem.batch, problem.tensors[0].device
    sums: list[Tensor] = []
    multi = False

    def chunk(start: int, stop: int) -> None:
        nonlocal multi
        _, sample = row_index(start, stop, batch, device)
        rows_target = target[sample] if isinstance(target, Tensor) else target
        grads, _, multi, scores = score_gradients(
            problem, rows_of(start, stop), rows_target, sample, return_scores=True
        )
        parts = (
            weigh(start, stop, grads, multi, scores)
            if with_scores
            else weigh(start, stop, grads, multi)
        )
        if not sums:
            sums.extend(
                p.new_zeros((batch, *p.shape[1:]), dtype=accumulation_dtype(p)) for p in parts
            )
        for acc, part in zip(sums, parts):
            add_rows(acc, start, part)

    run_chunks(
        copies * batch,
        chunk_size,
        chunk,
        device=device,
        memory_budget=memory_budget,
        progress=progress,
        description=description,
    )
    return sums, multi


def score_rows(
    problem: Problem, target: Target, copies: int, rows_of: Rows, chunk_size: int | None
) -> Tensor:
    """Explained scores ``[copies, B]`` (``[copies, B, K]``) of ``copies x B`` rows, forward only.

    ``target`` is resolved already (a LongTensor ``[B]`` / ``[B, K]`` or a callable).
    """
    batch, device = problem.batch, problem.tensors[0].device
    scores = []
    with torch.no_grad():
        for start, stop in row_ranges(copies * batch, chunk_size):
            _, sample = row_index(start, stop, batch, device)
            output = problem.forward(sample)(*rows_of(start, stop))
            part = target[sample] if isinstance(target, Tensor) else target
            scores.append(row_scores(output, resolve_target(part, output, problem.target_range)))
    out = torch.cat(scores)
    return out.reshape(copies, batch, *out.shape[1:])


def point_rows(point: Point, alphas: Sequence[float], n_slots: int, batch: int) -> Rows:
    """Rows of the path positions ``alphas`` (copy c at ``alphas[c]``) of every slot."""

    def rows_of(start: int, stop: int) -> tuple[Tensor, ...]:
        return tuple(
            build_rows(start, stop, batch, lambda c, s, i=i: point(i, alphas[c], s))
            for i in range(n_slots)
        )

    return rows_of


def fixed_path(
    problem: Problem,
    target: Target,
    point: Point,
    steps: int,
    *,
    idgi: bool,
    chunk_size: int | str | None,
    memory_budget: int | None,
    progress: Progress,
    description: str,
    masks: Sequence[Tensor | None] = (),
    end_scores: Tensor | None = None,
) -> tuple[list[Tensor], bool]:
    """Attributions along ``point`` with ``steps`` chords (see the module docstring).

    Gradients at the chord midpoints ``(k + 1/2) / n``. With ``idgi``, IDGI as Yang et al.
    define it (Algorithm 1, and their reference code): gradients and scores at the same path
    points, the knots ``a_k = k / n``, and on each chord the gradient of its left knot,

        ``A = sum_{k<n} g(p_k)^2 / |g(p_k)|^2 * (s(p_{k+1}) - s(p_k))``;

    the scores ``s(p_k)`` (k < n) come from the forward of the gradient pass itself and
    ``s(p_n) = s(x)`` is ``end_scores`` ``[B(, K)]``: ``n x B`` rows of forward and backward in
    all, no forward-only pass. ``masks`` (per slot, None or bool ``[B, L]``): padded positions
    of layered slots, left out of the IDGI correction (they do not move, and get zero).
    Returns (sums per primal, multi).
    """
    n_slots, batch = len(problem.tensors), problem.batch
    if idgi:
        if end_scores is None:
            raise ValueError("fixed_path(idgi=True) needs end_scores, the scores at the inputs")
        return _idgi_path(
            problem,
            target,
            point_rows(point, [k / steps for k in range(steps)], n_slots, batch),
            steps,
            end_scores,
            masks,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            progress=progress,
            description=description,
        )
    knots = [k / steps for k in range(steps + 1)]
    mids = [(k + 0.5) / steps for k in range(steps)]
    starts, ends = knots[:-1], knots[1:]

    def weigh(start: int, stop: int, grads: tuple[Tensor, ...], multi: bool) -> tuple[Tensor, ...]:
        chords = tuple(
            build_rows(
                start,
                stop,
                batch,
                lambda c, s, i=i: point(i, ends[c], s) - point(i, starts[c], s),
            )
            for i in range(n_slots)
        )
        return tuple(chord_times(d, g, multi) for d, g in zip(chords, grads))

    return integrate(
        problem,
        target,
        steps,
        point_rows(point, mids, n_slots, batch),
        weigh,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        progress=progress,
        description=description,
    )


def _idgi_path(
    problem: Problem,
    target: Target,
    rows_of: Rows,
    steps: int,
    end_scores: Tensor,
    masks: Sequence[Tensor | None],
    **run: Any,
) -> tuple[list[Tensor], bool]:
    """IDGI over the knot rows ``rows_of`` (copy k at ``p_k``, k < n) in one gradient pass.

    Row ``(k, b)`` carries ``u_k = g_k^2 / |g_k|^2`` (:func:`important_directions`) and
    ``s_k``; the chord k - 1 of sample b is credited ``u_{k-1} (s_k - s_{k-1})`` when row
    ``(k, b)`` arrives (the rows come in order; a chunk's first rows find their predecessor in
    a ``[B, ...]`` buffer of each sample's last row), and the last chord
    ``u_{n-1} (s(x) - s_{n-1})`` after the pass.
    """
    batch = problem.batch
    pending: list[Tensor] = []  # per primal: u of each sample's last row; then its score

    def weigh(
        start: int, stop: int, grads: tuple[Tensor, ...], multi: bool, scores: Tensor
    ) -> tuple[Tensor, ...]:
        step, sample = row_index(start, stop, batch, scores.device)
        units = important_directions(unmasked(grads, masks, sample, multi), multi)
        scores = scores.to(units[0].dtype)
        if not pending:
            pending.extend(u.new_zeros((batch, *u.shape[1:])) for u in units)
            pending.append(scores.new_zeros((batch, *scores.shape[1:])))
        n = stop - start
        m = min(batch, n)
        *previous, before = (
            torch.cat([p[sample[:m]], q[: n - m]]) for p, q in zip(pending, (*units, scores))
        )
        change = torch.where((step == 0).reshape(-1, *(1,) * (scores.ndim - 1)), 0, scores - before)
        lead = scores.ndim
        parts = tuple(
            torch.where(
                (step == 0).reshape(-1, *(1,) * (u.ndim - 1)),
                0,
                u * change.reshape(change.shape + (1,) * (u.ndim - lead)),
            )
            for u in previous
        )
        for p, q in zip(pending, (*units, scores)):
            p[sample[n - m :]] = q[n - m :]
        return parts

    sums, multi = integrate(problem, target, steps, rows_of, weigh, with_scores=True, **run)
    *last, before = pending
    change = end_scores.to(before.dtype) - before
    lead = change.ndim
    for acc, u in zip(sums, last):
        acc += u * change.reshape(change.shape + (1,) * (u.ndim - lead))
    return sums, multi


def chord_times(diff: Tensor, grad: Tensor, multi: bool) -> Tensor:
    """``diff * grad`` in at least float32; ``diff`` [N, ...] against ``grad`` [N, K, ...]."""
    dtype = accumulation_dtype(grad)
    return (diff.unsqueeze(1) if multi else diff).to(dtype) * grad.to(dtype)


def unmasked(
    grads: Sequence[Tensor], masks: Sequence[Tensor | None], sample: Tensor, multi: bool
) -> tuple[Tensor, ...]:
    """``grads`` with the rows' padded positions (``masks[i][sample]`` False) set to zero."""
    out = []
    for i, g in enumerate(grads):
        mask = masks[i] if i < len(masks) else None
        if mask is None:
            out.append(g)
            continue
        keep = mask[sample].unsqueeze(1) if multi else mask[sample]
        out.append(g * keep.reshape(keep.shape + (1,) * (g.ndim - keep.ndim)))
    return tuple(out)


def important_directions(grads: Sequence[Tensor], multi: bool = False) -> tuple[Tensor, ...]:
    """IDGI's weights ``u = g^2 / sum(g^2)`` per row, the sum over every feature of every primal.

    Shapes: ``grads`` [N, ...] each (``[N, K, ...]`` when ``multi``); results shaped like
    ``grads``, in at least float32, summing to 1 per row. A row whose gradient is zero everywhere
    gets zero weights; NaN stays NaN.
    """
    lead = 2 if multi else 1
    dtype = accumulation_dtype(grads[0])
    squares = [g.to(dtype).square() for g in grads]
    norm = sum(s.flatten(lead).sum(-1) for s in squares)
    # NaN stays NaN: only an exactly zero gradient gets the factor 0
    factor = torch.where(norm == 0, 0, 1 / torch.where(norm == 0, 1, norm))
    return tuple(s * factor.reshape(factor.shape + (1,) * (s.ndim - lead)) for s in squares)


def idgi_correction(
    grads: Sequence[Tensor], change: Tensor, multi: bool = False
) -> tuple[Tensor, ...]:
    """IDGI (Yang, Wang, Bilen 2023): each path segment's score change along its gradient.

    ``A_k = g_k^2 / sum(g_k^2) * (s(p_{k+1}) - s(p_k))`` per row, with the sum over every feature
    of every primal (all slots; :func:`important_directions`). Shapes: ``grads`` [N, ...] each
    (``[N, K, ...]`` when ``multi``), ``change`` [N] (``[N, K]``); results shaped like ``grads``,
    in at least float32. The features of a row sum to its ``change`` up to rounding; a row whose
    gradient is zero everywhere gets zero (its score change then shows in the completeness delta).
    """
    units = important_directions(grads, multi)
    change = change.to(units[0].dtype)
    return tuple(u * change.reshape(change.shape + (1,) * (u.ndim - change.ndim)) for u in units)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def straight_path(starts: Sequence[Tensor], ends: Sequence[Tensor]) -> Point:
    """``p(a) = x' + a (x - x')`` per slot."""

    def point(slot: int, alphas: Sequence[float], samples: slice) -> Tensor:
        start, end = starts[slot][samples], ends[slot][samples]
        a = torch.tensor(list(alphas), dtype=end.dtype, device=end.device)
        return torch.addcmul(start.unsqueeze(0), a.reshape((-1,) + (1,) * end.ndim), (end - start))

    return point


def blur_sigmas(alphas: Sequence[float], max_sigma: float) -> list[float]:
    """``sigma(a) = max_sigma * sqrt(1 - a)``: uniform steps in the heat equation's time
    ``t = sigma^2 / 2`` (Xu et al. 2020), from ``max_sigma`` at ``a = 0`` to 0 at ``a = 1``."""
    return [max_sigma * math.sqrt(max(0.0, 1.0 - a)) for a in alphas]


def blur_path(ends: Sequence[Tensor], max_sigma: float) -> Point:
    """``p(a) = G_{sigma(a)} * x``: the inputs blurred over their last two dimensions, zero
    outside the image (as the authors' reference, ``gaussian_filter(mode="constant")``), so
    that the path starts near black: the blur takes the information away."""

    def point(slot: int, alphas: Sequence[float], samples: slice) -> Tensor:
        x = ends[slot][samples]
        sigmas = blur_sigmas(alphas, max_sigma)
        return torch.stack([gaussian_blur(x, s, mode="constant") for s in sigmas])

    return point


def gaussian_blur(
    x: Tensor, sigma: float, dims: tuple[int, int] = (-2, -1), mode: str = "reflect"
) -> Tensor:
    """``x`` convolved with a Gaussian of standard deviation ``sigma`` (pixels) over ``dims``.

    Separable: ``M_H x M_W^T`` with :func:`blur_matrix` (kernel truncated at 4 sigma, any
    radius), the boundary as ``scipy.ndimage.gaussian_filter``'s ``mode``: ``"reflect"`` (every
    row of ``M`` sums to 1, so a constant image is unchanged) or ``"constant"`` (zero outside,
    so a strong blur fades to 0). ``sigma = 0``: ``x`` itself.
    """
    if sigma == 0:
        return x
    out = x
    for dim in dims:
        matrix = blur_matrix(x.shape[dim], sigma, mode).to(device=x.device, dtype=x.dtype)
        out = torch.movedim(torch.movedim(out, dim, -1) @ matrix.T, -1, dim)
    return out


@lru_cache(maxsize=256)
def blur_matrix(size: int, sigma: float, mode: str = "reflect") -> Tensor:
    """``[size, size]`` float64 matrix of a 1-D Gaussian filter.

    ``M[i, r(i + j)] += w_j``, ``w_j ~ exp(-j^2 / (2 sigma^2))`` for ``|j| <= int(4 sigma + 0.5)``
    normalised to sum 1; ``mode="reflect"``: ``r`` reflects about the half-sample edges
    (``d c b a | a b c d | d c b a``); ``mode="constant"``: taps outside ``[0, size)`` read 0
    and are dropped.
    """
    if mode not in ("reflect", "constant"):
        raise ValueError(f"mode must be 'reflect' or 'constant', got {mode!r}")
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    weights = weights / weights.sum()
    rows = torch.arange(size).unsqueeze(1)
    taps = rows + torch.arange(-radius, radius + 1)
    tap_weights = weights.expand(size, -1).contiguous()
    if mode == "constant":
        tap_weights = torch.where((taps >= 0) & (taps < size), tap_weights, 0.0)
        columns = taps.clamp(0, size - 1)
    else:
        columns = taps % (2 * size)
        columns = torch.where(columns >= size, 2 * size - 1 - columns, columns)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.scatter_add_(1, columns, tap_weights)
    return matrix


# --------------------------------------------------------------------------------------------
# Guided IG's adaptive path
# --------------------------------------------------------------------------------------------


def guided_path(
    problem: Problem,
    target: Target,
    starts: Sequence[Tensor],
    ends: Sequence[Tensor],
    *,
    steps: int,
    fraction: float,
    max_dist: float,
    idgi: bool,
    chunk_size: int | None,
    progress: Progress = False,
    masks: Sequence[Tensor | None] = (),
    end_scores: Tensor | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Guided IG (Kapishnikov et al. 2021) for all samples at once.

    The state ``p`` starts at the baseline. At step k (``a = (k + 1) / n``) the gradient
    ``g = d s / d p`` is taken once at the current state, then :func:`guided_step` moves the
    features with the smallest ``|g|`` first until the L1 distance to the input is
    ``(1 - a) |x - x'|_1``; the move ``dp`` is credited ``g * dp``, or with ``idgi``
    :func:`idgi_correction` of ``g`` and the score change ``s(p_{k+1}) - s(p_k)``: ``s(p_k)``
    comes from the forward of step k's gradient pass, and ``s(p_n) = s(x)`` is ``end_scores``
    ``[B]`` (the scores at the inputs), so IDGI adds no forward pass. The last step ends at the
    input. Bookkeeping is per
    sample in float64 over the features of all slots; each step's gradient is one B-row forward
    and backward (``chunk_size`` rows per call). ``target`` is resolved (one class per row).
    ``masks``: padded positions, left out of the IDGI correction (see :func:`fixed_path`).
    Returns (attributions per primal ``[B, ...]`` in float64, the final state per primal).
    """
    batch = problem.batch
    shapes = [t.shape for t in ends]
    dtypes = [t.dtype for t in ends]
    base, inputs = _flat(starts), _flat(ends)
    state = base.clone()
    attribution = torch.zeros_like(state)

    def primals(flat: Tensor) -> tuple[Tensor, ...]:
        return _unflat(flat, shapes, dtypes)

    if idgi and end_scores is None:
        raise ValueError("guided_path(idgi=True) needs end_scores, the scores at the inputs")
    previous, before_score = attribution, base.new_zeros(batch)  # the last step's g and s(p_k)
    with reporting(progress, steps * batch, "guided integrated gradients") as report:
        for step in range(steps):
            grads, scores = _state_gradients(problem, target, primals(state), chunk_size)
            if idgi:
                grads = unmasked(grads, masks, torch.arange(batch, device=base.device), False)
            g = torch.cat([t.reshape(batch, -1).double() for t in grads], 1)
            before = state
            state = guided_step(state, base, inputs, g, (step + 1) / steps, fraction, max_dist)
            if step == steps - 1:
                state = inputs.clone()
            if idgi:
                # the chord from p_step to p_{step+1}: its end's score is the next pass's
                if step > 0:
                    change = (scores - before_score).double()
                    attribution += idgi_correction((previous,), change)[0]
                previous, before_score = g, scores
            else:
                attribution += (state - before) * g
            report((step + 1) * batch)
    if idgi:
        change = end_scores.to(before_score.dtype) - before_score
        attribution += idgi_correction((previous,), change.double())[0]
    doubles = [torch.float64] * len(shapes)
    return list(_unflat(attribution, shapes, doubles)), list(primals(state))


def guided_step(
    state: Tensor,
    base: Tensor,
    inputs: Tensor,
    grad: Tensor,
    alpha: float,
    fraction: float,
    max_dist: float,
) -> Tensor:
    """One step of Guided IG on ``[B, F]`` float64 states; returns the new state.

    With ``diff = x - x'``, ``low = a - max_dist`` and ``high = a + max_dist`` (clipped to
    [0, 1]): features whose position ``(p - x') / diff`` is behind ``low`` are pulled up to it;
    then, until ``|p - x|_1 = (1 - a) |diff|_1``, the features with ``|g|`` at most the
    ``fraction`` lower quantile (among those not yet at ``x' + high diff``) move to
    ``x' + high diff``, or the part ``gamma = (|p - x|_1 - target) / |p_S - x_S^high|_1`` of the
    way when that is enough. As the PAIR saliency description (Kapishnikov et al. 2021), per
    sample and batched.
    """
    diff = inputs - base
    total = diff.abs().sum(1)
    low, high = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_low = base + low * diff
    x_high = inputs if high == 1.0 else base + high * diff
    goal = total * (1 - alpha)
    kth = int(fraction * (state.shape[1] - 1)) + 1  # numpy's quantile(..., method="lower")
    tolerance = 1e-9 * torch.clamp(total, min=1.0)
    nonzero = diff != 0
    active = torch.ones(state.shape[0], dtype=torch.bool, device=state.device)
    magnitude = grad.abs()
    for _ in range(state.shape[1] + 2):  # a pass moves >= 1 feature to x_high or ends
        position = torch.where(nonzero, (state - base) / torch.where(nonzero, diff, 1), high)
        state = torch.where((position < low) & active[:, None], x_low, state)
        distance = (state - inputs).abs().sum(1)
        active = active & (distance > goal + tolerance)  # never moves back
        if not active.any():
            break
        free = torch.where(state == x_high, math.inf, magnitude)
        threshold = free.kthvalue(kth, dim=1).values
        chosen = (free <= threshold[:, None]) & (free != math.inf) & active[:, None]
        room = ((state - x_high).abs() * chosen).sum(1)
        gamma = (distance - goal) / torch.where(room > 0, room, 1)
        whole = chosen & (gamma > 1)[:, None]
        part = chosen & (gamma <= 1)[:, None]
        state = torch.where(whole, x_high, state)
        state = torch.where(part, state + gamma[:, None] * (x_high - state), state)
        active = active & (gamma > 1) & (room > 0)
        if not active.any():
            break
    return state


def _state_gradients(
    problem: Problem, target: Target, state: tuple[Tensor, ...], chunk_size: int | None
) -> tuple[tuple[Tensor, ...], Tensor]:
    """``d s / d p`` at one row per sample, ``chunk_size`` rows per call; one class per row.

    Returns (gradients per primal, the scores ``[B]`` of the same forward)."""
    parts, scores = [], []
    for start, stop in row_ranges(problem.batch, chunk_size):
        sample = torch.arange(start, stop, device=state[0].device)
        rows_target = target[start:stop] if isinstance(target, Tensor) else target
        grads, _, multi, part = score_gradients(
            problem, tuple(p[start:stop] for p in state), rows_target, sample, return_scores=True
        )
        if multi:
            raise ValueError(
                "guided integrated gradients follows one class's gradient: a callable target "
                "returning [N, K] scores is not supported; pass a [B, K] index target or call "
                "once per class"
            )
        parts.append(grads)
        scores.append(part)
    return tuple(torch.cat(g) for g in zip(*parts)), torch.cat(scores)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    """``[B, F]`` float64: the features of every slot of each sample, concatenated."""
    return torch.cat([t.reshape(t.shape[0], -1).double() for t in tensors], 1)


def _unflat(
    flat: Tensor, shapes: Sequence[torch.Size], dtypes: Sequence[torch.dtype]
) -> tuple[Tensor, ...]:
    """Inverse of :func:`_flat`."""
    out, at = [], 0
    for shape, dtype in zip(shapes, dtypes):
        size = math.prod(shape[1:])
        out.append(flat[:, at : at + size].reshape(shape).to(dtype))
        at += size
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The methods' shared body
# --------------------------------------------------------------------------------------------


def run_path(
    model: Callable[..., Any],
    inputs: Any,
    target: Target,
    *,
    path: str,
    baseline: Any = None,
    steps: int,
    max_sigma: float = 0.0,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    idgi: bool = False,
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
) -> Any:
    """Prepare, run one path method (``path``: "straight", "blur" or "guided") and hand back.

    Arguments are checked by the public functions. Returns the attributions in the inputs'
    structure (layered slots summed over the embedding), and with ``return_delta`` the
    completeness delta ``sum(A) - (s(x) - s(p(0)))`` ``[B]`` (``[B, K]``).
    """
    problem, target = prepare(model, inputs, target, layer, forward_kwargs)
    if path == "blur":
        _check_blurrable(problem)
    rows = None if chunk_size == "auto" else chunk_size
    masks = problem.masks(mask)
    with untouched(model, problem.layers), buffers_kept(model):
        ends, end_outputs = problem.primals(rows)
        if path == "blur":
            point = blur_path(ends, max_sigma)
            starts = tuple(point(i, [0.0], slice(None))[0] for i in range(len(ends)))
        else:
            parts, ids = baseline_ids(baseline, problem)
            starts = path_starts(parts, ids, problem, ends, masks, rows)
            point = straight_path(starts, ends)
        end_scores = None
        if target is None or return_delta or idgi or path == "guided":
            end_scores, target = forward_scores(problem, ends, target, rows, end_outputs)
        if path == "guided":

            def walk(explained: Target, scores: Any) -> list[Tensor]:
                return guided_path(
                    problem,
                    explained,
                    starts,
                    ends,
                    steps=steps,
                    fraction=fraction,
                    max_dist=max_dist,
                    idgi=idgi,
                    chunk_size=rows,
                    progress=progress,
                    masks=masks,
                    end_scores=scores,
                )[0]

            if isinstance(target, Tensor) and target.ndim == 2:  # K classes: K paths
                per_class = [walk(t, end_scores[:, k]) for k, t in enumerate(target.unbind(1))]
                sums, multi = [torch.stack(c, 1) for c in zip(*per_class)], True
            else:
                sums, multi = walk(target, end_scores), False
        else:
            sums, multi = fixed_path(
                problem,
                target,
                point,
                steps,
                idgi=idgi,
                chunk_size=chunk_size,
                memory_budget=memory_budget,
                progress=progress,
                description="blur integrated gradients" if path == "blur" else "idgi",
                masks=masks,
                end_scores=end_scores,
            )
        if return_delta:
            start_scores, _ = forward_scores(problem, starts, target, rows)
    attributions = [a.to(accumulation_dtype(e)) for a, e in zip(sums, ends)]
    result = finish(problem, attributions, multi)
    if not return_delta:
        return result
    return result, completeness_delta(attributions, end_scores, start_scores, multi)


def finish(problem: Problem, attributions: Sequence[Tensor], multi: bool) -> Any:
    """Attributions in the inputs' structure, detached; layered slots summed over the
    embedding dimension (:func:`~torchattr._core.layers.collapse`)."""
    return unflatten(
        [
            (a if layer is None else collapse(a, ids, multi)).detach()
            for a, ids, layer in zip(attributions, problem.tensors, problem.layers)
        ],
        problem.spec,
    )


def completeness_delta(
    attributions: Sequence[Tensor], end_scores: Tensor, start_scores: Tensor, multi: bool
) -> Tensor:
    """``sum(A) - (s(x) - s(x'))`` per sample ``[B]`` (per sample and class ``[B, K]``)."""
    keep = 2 if multi else 1
    total = sum(a.flatten(keep).sum(-1) for a in attributions)
    return (total - (end_scores - start_scores).to(total.dtype)).detach()


def _check_blurrable(problem: Problem) -> None:
    """Blur IG blurs the last two (spatial) dimensions of continuous inputs only."""
    for name, t, layer in zip(problem.spec.names(), problem.tensors, problem.layers):
        if layer is not None:
            raise ValueError(
                f"blur integrated gradients blurs images: {name} has a layer, and blurring an "
                "embedding has no meaning; use idgi(method='ig') or integrated_gradients"
            )
        if t.ndim < 4:  # [B, C, L] signals would be blurred across their channels
            raise ValueError(
                f"{name} has shape {list(t.shape)}: blur integrated gradients needs images with "
                "two spatial dimensions after the channels, [B, C, H, W]"
            )


# --------------------------------------------------------------------------------------------
# Baselines of the path methods (the conventions of integrated_gradients)
# --------------------------------------------------------------------------------------------


def baseline_ids(baseline: Any, problem: Problem) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Split ``baseline`` per slot; turn id baselines of layered slots into checked id tensors.

    Returns (parts, ids): ``ids[i]`` is an id tensor shaped like input i where slot i has a layer
    and an id baseline (an int or an integer tensor), else None. Runs no model.
    """
    names = [f"baseline for {n}" for n in problem.spec.names()]
    parts = _baseline_parts(baseline, problem.spec, len(problem.tensors))
    ids = tuple(
        _id_baseline(p, t, name) if layer is not None and _is_ids(p) else None
        for p, t, name, layer in zip(parts, problem.tensors, names, problem.layers)
    )
    check_ids(
        [i for i in ids if i is not None],
        [n for n, i in zip(names, ids) if i is not None],
        [layer for layer, i in zip(problem.layers, ids) if i is not None],
    )
    return parts, ids


def path_starts(
    parts: tuple[Any, ...],
    ids: tuple[Any, ...],
    problem: Problem,
    ends: tuple[Tensor, ...],
    masks: tuple[Tensor | None, ...],
    chunk_size: int | None = None,
) -> tuple[Tensor, ...]:
    """The path's start for every primal ``ends[i]``, broadcast to its shape.

    Continuous inputs: None (zeros), a number or a broadcastable tensor. Layered inputs: None (the
    zero embedding), ids (see :func:`baseline_ids`), or a float tensor broadcastable to the
    embedding; masked positions start at their own embedding.
    """
    names = [f"baseline for {n}" for n in problem.spec.names()]
    embedded: tuple[Tensor | None, ...] = (None,) * len(ends)
    if any(i is not None for i in ids):
        embedded = _embed(problem, ids, chunk_size)
    starts = []
    for i, (part, end, name, mask) in enumerate(zip(parts, ends, names, masks)):
        start = embedded[i] if ids[i] is not None else _one_baseline(part, end, name)
        if mask is not None:
            keep = mask.reshape(mask.shape + (1,) * (end.ndim - mask.ndim))
            start = torch.where(keep, start, end)
        starts.append(start)
    check_finite(starts, names)
    return tuple(starts)


def _embed(
    problem: Problem, ids: tuple[Tensor | None, ...], chunk_size: int | None
) -> tuple[Tensor | None, ...]:
    """Layer outputs for the baseline ids of the slots that have them.

    ``nn.Embedding`` layers are called on the ids directly (a baseline of all-PAD ids may be
    something the whole model cannot run, e.g. a fully masked attention); other layers are
    captured from one forward of the model on the baseline ids.
    """
    slots = [i is not None for i in ids]
    if all(isinstance(problem.layers[s], nn.Embedding) for s, flag in enumerate(slots) if flag):
        with torch.no_grad():
            return tuple(None if t is None else layer(t) for t, layer in zip(ids, problem.layers))
    inputs = tuple(t if i is None else i for t, i in zip(problem.tensors, ids))
    return replace(problem, tensors=inputs).primals(chunk_size)[0]


def _baseline_parts(baseline: Any, spec: InputSpec, n: int) -> tuple[Any, ...]:
    if baseline is None:
        return (None,) * n
    if spec.kind == "tensor" and isinstance(baseline, (int, float, Tensor)):
        return (baseline,)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return (baseline,) * n
    if spec.kind == "dict" and isinstance(baseline, Mapping):
        unknown = sorted(set(baseline) - set(spec.keys))
        if unknown:
            raise ValueError(
                f"baseline has keys {unknown} that are not in inputs {list(spec.keys)}"
            )
        return tuple(baseline.get(k) for k in spec.keys)
    if spec.kind == "tuple" and isinstance(baseline, (tuple, list)):
        if len(baseline) != n:
            raise ValueError(f"baseline has {len(baseline)} entries but inputs has {n}")
        return tuple(baseline)
    raise TypeError(
        f"baseline must be None, a number or a tensor for tensor inputs, and a {spec.kind} "
        f"of those (or one number) for {spec.kind} inputs; got {type(baseline).__name__}"
    )


def _is_ids(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, Tensor) and not (value.is_floating_point() or value.is_complex())


def _id_baseline(value: Any, ids: Tensor, name: str) -> Tensor:
    if isinstance(value, int):
        return torch.full_like(ids, value)
    return broadcast(value, ids, name, "the ids' shape")


def _one_baseline(value: Any, x: Tensor, name: str) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=x.dtype, device=x.device).expand(x.shape)
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be None, a number or a tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value}: expected a finite number")
        return torch.full((), value, dtype=x.dtype, device=x.device).expand(x.shape)
    return broadcast(value, x, name, "the input's shape")


def broadcast(value: Tensor, like: Tensor, name: str, what: str) -> Tensor:
    """``value`` in ``like``'s dtype and device, broadcast (a view) to its shape, or an error."""
    try:
        return torch.broadcast_to(value.to(device=like.device, dtype=like.dtype), like.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {list(value.shape)}, not broadcastable to {what} {list(like.shape)}"
        ) from None


def check_unit(value: Any, name: str) -> float:
    """A number in (0, 1], as a float (Guided IG's ``fraction`` and ``max_dist``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(value).__name__}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)

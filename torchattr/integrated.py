"""Integrated Gradients (Sundararajan, Taly, Yan 2017) with exact quadrature rules.

``IG_i(x) = (x_i - x'_i) * integral_0^1 d s(x' + a (x - x')) / d x_i da``, approximated by
``(x - x') * sum_k w_k * grad s(x' + a_k (x - x'))``. All ``steps x B`` path points go through the
model as one enlarged batch (copy-major rows, at most ``chunk_size`` per call), with one backward.
``steps="auto"`` refines nested rules per sample until the completeness error meets a tolerance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Literal, overload

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_choice,
    check_chunk_size,
    check_positive_int,
    check_scale,
    keywords,
    tracing,
)
from torchattr._core.chunking import add_rows, build_rows, row_index, run_chunks
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import (
    Problem,
    accumulation_dtype,
    forward_scores,
    prepare,
    score_gradients,
)
from torchattr._core.inputs import Inputs, InputsT, unflatten
from torchattr._core.layers import collapse
from torchattr._core.memory import check_memory_budget
from torchattr._core.paths import baseline_ids, path_starts
from torchattr._core.progress import Progress, check_progress
from torchattr._core.state import untouched
from torchattr._core.targets import Target

__all__ = ["METHODS", "Baseline", "integrated_gradients", "quadrature"]

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
AUTO_TOLERANCE = 0.01  # steps="auto": default relative completeness error
AUTO_MAX_STEPS = 255  # steps="auto": default most path points per sample (nested level 7)
Baseline = Any  # None | float | Tensor, or a tuple / dict of them matching the inputs


def quadrature(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (float64, ``[steps]`` each) of a rule on [0, 1].

    ==================  ============================  =================================
    method              a_k                           w_k
    ==================  ============================  =================================
    riemann_left        k/n, k = 0..n-1               1/n
    riemann_right       k/n, k = 1..n                 1/n
    riemann_middle      (k + 1/2)/n, k = 0..n-1       1/n
    riemann_trapezoid   k/(n-1), k = 0..n-1           1/(n-1), both ends halved
    gausslegendre       (1 + t_k)/2                   v_k / 2   (Legendre nodes t_k, weights v_k)
    ==================  ============================  =================================

    Every rule's weights sum to 1. Gauss-Legendre nodes come from Newton's iteration on the
    Legendre polynomial in float64 (O(steps^2); 4000 steps in about a second), and from the
    Jacobi matrix's eigenvalues (Golub-Welsch) while ``torch.compile`` traces.

    Example::

        nodes, weights = ta.quadrature("riemann_left", 4)   # [0, .25, .5, .75], [.25] * 4
    """
    check_choice(method, "method", METHODS)
    n = check_positive_int(steps, "steps", minimum=2 if method == "riemann_trapezoid" else 1)
    # torch.compile traces the rule itself (dynamo does not honour lru_cache wrappers)
    rule = _rule.__wrapped__ if tracing() else _rule
    nodes, weights = rule(method, n)
    return nodes.clone(), weights.clone()


@lru_cache(maxsize=64)
def _rule(method: str, n: int) -> tuple[Tensor, Tensor]:
    k = torch.arange(n, dtype=torch.float64)
    if method == "gausslegendre":
        nodes, weights = _golub_welsch(n) if tracing() else _legendre_newton(n)
        return (1 + nodes) / 2, weights / 2
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / n, torch.full((n,), 1 / n, dtype=torch.float64)


def _legendre_newton(n: int, iterations: int = 4) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes ``t_k`` (ascending) and weights ``v_k`` on [-1, 1], float64.

    Newton's iteration ``t <- t - P_n(t) / P_n'(t)`` from Tricomi's estimates
    ``cos(pi (k - 1/4) / (n + 1/2))``, all nodes at once; ``P_n`` by the three-term recurrence
    ``j P_j = (2j - 1) t P_{j-1} - (j - 1) P_{j-2}``, ``P_n' = n (t P_n - P_{n-1}) / (t^2 - 1)``,
    ``v_k = 2 / ((1 - t_k^2) P_n'(t_k)^2)``. O(n^2) (4000 nodes: about 1 s), agrees with
    ``numpy.polynomial.legendre.leggauss`` to 1e-15 in the nodes.
    """
    k = torch.arange(1, n + 1, dtype=torch.float64)
    t = torch.cos(math.pi * (k - 0.25) / (n + 0.5))
    for _ in range(iterations):
        p_n, derivative = _legendre(n, t)
        t = t - p_n / derivative
    _, derivative = _legendre(n, t)
    weights = 2 / ((1 - t * t) * derivative * derivative)
    return t.flip(0), weights.flip(0)


def _legendre(n: int, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(P_n(t), P_n'(t))`` by the three-term recurrence."""
    previous, current = torch.ones_like(t), t
    for j in range(2, n + 1):
        previous, current = current, ((2 * j - 1) * t * current - (j - 1) * previous) / j
    if n == 1:
        previous = torch.ones_like(t)
    return current, n * (t * current - previous) / (t * t - 1)


def _golub_welsch(n: int) -> tuple[Tensor, Tensor]:
    """The same rule from the eigen-decomposition of the Jacobi matrix (O(n^3)); used while
    ``torch.compile`` traces, where the Newton loop would be unrolled ``n x iterations`` times."""
    i = torch.arange(1, n, dtype=torch.float64)
    off = i / torch.sqrt(4 * i * i - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2 * vectors[0].square()


@overload
def integrated_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    baseline: Baseline = None,
    steps: int | Literal["auto"] = 50,
    method: str = "gausslegendre",
    chunk_size: int | str | None = "auto",
    return_delta: Literal[False] = False,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
    tolerance: float | None = None,
    max_steps: int | None = None,
) -> InputsT: ...


@overload
def integrated_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    baseline: Baseline = None,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | str | None = "auto",
    return_delta: Literal[True],
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
    tolerance: None = None,
    max_steps: None = None,
) -> tuple[InputsT, Tensor]: ...


@overload
def integrated_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    baseline: Baseline = None,
    steps: Literal["auto"],
    method: str = "gausslegendre",
    chunk_size: int | str | None = "auto",
    return_delta: Literal[True],
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
    tolerance: float | None = None,
    max_steps: int | None = None,
) -> tuple[InputsT, Convergence]: ...


@keywords()
def integrated_gradients(
    model: Callable[..., Any],
    inputs: Inputs,
    target: Target = None,
    *,
    baseline: Baseline = None,
    steps: int | Literal["auto"] = 50,
    method: str = "gausslegendre",
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
    tolerance: float | None = None,
    max_steps: int | None = None,
) -> Any:
    """Integrated Gradients along the straight path from ``baseline`` to ``inputs``.

    ``IG(x) = (x - x') * sum_k w_k * d s / d x (x' + a_k (x - x'))`` with the nodes and weights of
    :func:`quadrature`. Shapes: attributions are shaped like the inputs (``[B, K, ...]`` for a
    ``[B, K]`` target), in at least float32; tuple and dict inputs give a tuple / dict.

    The signature is every method's, ``(model, inputs, target=None, *, ...)``: ``baseline`` is
    keyword-only (``ta.integrated_gradients(model, x, labels)`` explains ``labels``).
    ``baseline``: None (zeros), a number, or a tensor broadcastable to the input; for tuple / dict
    inputs a tuple / dict of those (or one number for all). ``forward_kwargs``: keyword arguments
    passed to every model call and never attributed (an integer ``attention_mask``); tensors with
    leading dimension B follow their sample through the ``steps x B`` rows and the chunks
    (Captum's ``additional_forward_args``). ``target=None`` explains the class
    predicted for ``x``. ``chunk_size`` bounds the number of (sample, step) rows per model call;
    the result does not depend on it beyond float rounding. The default ``"auto"`` measures the
    peak memory of the first two chunks (4 and 8 rows) and sizes the rest to stay under
    ``memory_budget`` bytes (default 128 MiB on CPU, half the free memory on CUDA; see
    *Conventions > Chunking* in the docs); None sends all ``steps x B`` rows at once.
    ``progress``: True for a tqdm bar (when installed and stderr is a terminal) or a callable
    ``(done, total)`` called after each chunk with the rows done. ``return_delta=True`` also
    returns the convergence delta ``[B]`` (``[B, K]``): ``sum of attributions - (s(x) - s(x'))``,
    from two extra B-row forwards.

    ``steps="auto"`` controls the error instead of fixing the steps: per sample, nested rules
    (:func:`nested_rule`) are refined until the relative completeness error
    ``|sum(attributions) - (s(x) - s(x'))| / |s(x) - s(x')|`` is at most ``tolerance`` (default
    0.01), with at most ``max_steps`` path points per sample (default 255). Converged samples get
    no more points; each round's new points of all unconverged samples go through the model
    together, ``chunk_size`` rows per call, and every earlier evaluation is reused. Samples that
    do not reach the tolerance (non-smooth paths, NaN, a tolerance below float rounding) keep
    the last rule's attributions and are named in a :class:`NotConvergedWarning`. With
    ``return_delta=True`` the second result is a :class:`Convergence` (per sample ``delta``,
    relative ``error``, ``points`` used, ``converged``, ``level``) instead of the delta tensor.
    ``method`` does not apply; not available while ``torch.compile`` traces. The completeness
    error is the criterion, so a coarse rule whose errors cancel in the sum can stop a sample
    early (on rough ReLU paths some samples stop at the midpoint); lower ``tolerance`` for more
    points. ``progress`` reports each refinement round separately. Memory: one accumulator per
    remaining level (at most 8 for ``max_steps=255``), each shaped like the inputs.

    Discrete inputs (codes, tokens) are attributed through their embedding: with
    ``layer=model.embedding`` the path runs in embedding space, ``e' + a (e - e')`` with
    ``e = E[ids]``, and the attribution ``(e - e') * sum_k w_k d s / d e`` is summed over the
    embedding dimension, so ids ``[B, L]`` get scores ``[B, L]`` (layers whose output does not
    start with the input's shape keep the layer's shape). For dict inputs ``layer`` is a dict
    from keys to layers; inputs without one are continuous. Baselines of a layered input: None
    (the zero embedding), an int or an integer tensor of ids (e.g. PAD or UNK, embedded through
    the same model), or a float tensor broadcastable to the embedding. ``mask``: a bool tensor
    shaped like the ids (False = padding) or a padding id, or a dict of those: padded positions
    keep their embedding along the whole path and get exactly zero attribution. The layer's
    output is replaced through a forward hook for the duration of the call; the layer must run
    once per forward.

    Example::

        attributions, delta = ta.integrated_gradients(model, images, target=labels,
                                                      steps=32, return_delta=True)
        per_token = ta.integrated_gradients(classifier, tokens, layer=classifier.embedding,
                                            baseline=pad_id, mask=pad_id)     # [B, L]
    """
    if isinstance(target, float) or (
        isinstance(target, Tensor) and (target.is_floating_point() or target.is_complex())
    ):
        raise TypeError(
            "target must hold integer class indices, got a "
            f"{type(target).__name__} of dtype {getattr(target, 'dtype', 'float')}. The baseline "
            "is keyword-only: integrated_gradients(model, inputs, target, baseline=...)"
        )
    auto = isinstance(steps, str)
    if auto:
        tolerance, max_steps = _check_auto(steps, method, tolerance, max_steps)
    elif tolerance is not None or max_steps is not None:
        raise ValueError(
            "tolerance= and max_steps= apply to steps='auto' only; with a fixed number of "
            f"steps ({steps}) the error is not controlled (return_delta=True reports it)"
        )
    else:
        alphas, weights = quadrature(method, steps)
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    check_progress(progress)
    # B-row passes (layer outputs, scores at the ends) have no backward: auto chunks them as one
    rows = None if chunk_size == "auto" else chunk_size
    problem, target = prepare(model, inputs, target, layer, forward_kwargs)
    device = problem.tensors[0].device
    masks = problem.masks(mask)
    parts, ids = baseline_ids(baseline, problem)
    with untouched(model, problem.layers), buffers_kept(model):
        ends, end_outputs = problem.primals(rows)
        starts = path_starts(parts, ids, problem, ends, masks, rows)
        diffs = tuple(x - b for x, b in zip(ends, starts))
        if auto:
            end_scores, target = forward_scores(problem, ends, target, rows, end_outputs)
            start_scores, _ = forward_scores(problem, starts, target, rows)
            sums, multi, report = _auto_integrated(
                problem,
                starts,
                diffs,
                target,
                end_scores - start_scores,
                tolerance=tolerance,
                max_steps=max_steps,
                chunk_size=chunk_size,
                memory_budget=memory_budget,
                progress=progress,
            )
        else:
            if target is None or return_delta:
                end_scores, target = forward_scores(problem, ends, target, rows, end_outputs)
            sums, multi = _fixed_integrated(
                problem,
                starts,
                diffs,
                target,
                (alphas.to(device), weights.to(device)),
                chunk_size=chunk_size,
                memory_budget=memory_budget,
                progress=progress,
            )
            if return_delta:
                start_scores, _ = forward_scores(problem, starts, target, rows)
        attributions = [(d.unsqueeze(1) if multi else d) * acc for d, acc in zip(diffs, sums)]
    result = unflatten(
        [
            (a if layer is None else collapse(a, ids, multi)).detach()
            for a, ids, layer in zip(attributions, problem.tensors, problem.layers)
        ],
        problem.spec,
    )
    if not return_delta:
        return result
    if auto:
        return result, report
    keep = 2 if multi else 1
    total = sum(a.flatten(keep).sum(-1) for a in attributions)
    return result, (total - (end_scores - start_scores).to(total.dtype)).detach()


def _fixed_integrated(
    problem: Problem,
    starts: tuple[Tensor, ...],
    diffs: tuple[Tensor, ...],
    target: Target,
    rule: tuple[Tensor, Tensor],
    *,
    chunk_size: Any,
    memory_budget: int | None,
    progress: Progress,
) -> tuple[list[Tensor], bool]:
    """``sum_k w_k d s / d p (start + a_k diff)`` per sample and slot, and multi.

    The ``steps x B`` rows (copy-major) go through the model in chunks; the quadrature weight
    scales each row's output cotangent (free), and the rows are summed into their samples.
    """
    alphas, weights = rule
    batch, device = problem.batch, alphas.device
    sums: list[Tensor] | None = None
    multi = False

    def chunk(start: int, stop: int) -> None:
        nonlocal sums, multi
        step, sample = row_index(start, stop, batch, device)
        points = tuple(
            build_rows(start, stop, batch, partial(_path_points, alphas, b, d))
            for b, d in zip(starts, diffs)
        )
        rows_target = target[sample] if isinstance(target, Tensor) else target
        grads, _, multi = score_gradients(problem, points, rows_target, sample, scale=weights[step])
        if sums is None:
            sums = [g.new_zeros((batch, *g.shape[1:]), dtype=accumulation_dtype(g)) for g in grads]
        for acc, g in zip(sums, grads):
            add_rows(acc, start, g)

    run_chunks(
        len(alphas) * batch,
        chunk_size,
        chunk,
        device=device,
        memory_budget=memory_budget,
        progress=progress,
        description="integrated gradients",
    )
    assert sums is not None
    return sums, multi


def _check_auto(
    steps: str, method: str, tolerance: float | None, max_steps: int | None
) -> tuple[float, int]:
    """Arguments of ``steps="auto"``: (tolerance, max_steps) with their defaults, or an error."""
    if steps != "auto":
        raise ValueError(f"steps must be a positive int or 'auto', got {steps!r}")
    if method != "gausslegendre":
        raise ValueError(
            f"method={method!r} does not apply to steps='auto', which refines nested Fejer "
            "rules per sample (see torchattr.integrated.nested_rule); leave method at its default"
        )
    if tracing():
        raise ValueError(
            "steps='auto' refines per sample with data-dependent rounds, which torch.compile "
            "cannot trace; pass a fixed number of steps inside compiled code"
        )
    tolerance = check_scale(AUTO_TOLERANCE if tolerance is None else tolerance, "tolerance")
    if tolerance == 0:
        raise ValueError("tolerance must be > 0 (a relative completeness error, e.g. 0.01)")
    max_steps = check_positive_int(AUTO_MAX_STEPS if max_steps is None else max_steps, "max_steps")
    return tolerance, max_steps


def _path_points(
    alphas: Tensor, start: Tensor, diff: Tensor, copies: slice, samples: slice
) -> Tensor:
    """``start + a_k * diff`` for the steps ``copies`` and samples ``samples``: [k, b, ...]."""
    a = alphas[copies].to(diff.dtype).reshape((-1,) + (1,) * diff.ndim)
    return torch.addcmul(start[samples].unsqueeze(0), a, diff[samples].unsqueeze(0))


# ---------------------------------------------------------------------------------------------
# steps="auto": error-controlled IG on nested Fejer rules, refined per sample


@dataclass(frozen=True)
class Convergence:
    """What ``integrated_gradients(..., steps="auto", return_delta=True)`` reports per sample.

    ``delta``: ``sum of attributions - (s(x) - s(x'))``, ``[B]`` (``[B, K]`` for a ``[B, K]``
    target), the same quantity as the fixed-step delta. ``error``: the relative completeness
    error ``|delta| / |s(x) - s(x')|`` (0 when both are 0, inf when only ``s(x) - s(x')`` is;
    NaN stays NaN). ``points``: path points evaluated for the sample, ``[B]`` (int64; each is one
    forward and backward row). ``converged``: ``error <= tolerance`` for every class of the sample,
    ``[B]`` bool. ``level``: the nested rule the attribution comes from, ``[B]`` (level ``L`` has
    ``2**(L + 1) - 1`` points). ``tolerance``: the requested relative error.
    """

    delta: Tensor
    error: Tensor
    points: Tensor
    converged: Tensor
    level: Tensor
    tolerance: float


class NotConvergedWarning(UserWarning):
    """``steps="auto"`` stopped at ``max_steps`` before some samples met the tolerance."""


def nested_rule(level: int) -> tuple[Tensor, Tensor]:
    """Fejer's second rule on [0, 1] with ``n = 2**(level + 1) - 1`` nodes, in nesting order.

    With ``N = 2**(level + 1)`` and ``theta_k = k pi / N`` (k = 1..N-1) the nodes are
    ``a_k = (1 + cos theta_k) / 2`` and the weights (positive, summing to 1)
    ``w_k = (2 sin theta_k / N) sum_{j=1}^{N/2} sin((2j - 1) theta_k) / (2j - 1)``.
    The rule is interpolatory and symmetric: exact for polynomials of degree ``n`` in ``a``
    (accuracy close to Gauss-Legendre's for smooth integrands). Level ``L``'s nodes contain
    level ``L - 1``'s (``k`` even), so refining reuses every evaluation: nodes are ordered by the
    level that introduced them (level 0: the midpoint, then 2, 4, 8, ... new nodes), and the
    first ``2**L - 1`` of them are level ``L - 1``'s. float64, ``[n]`` each.
    """
    check_positive_int(level + 1, "level + 1")
    thetas = torch.cat([_new_angles(j) for j in range(level + 1)])
    n = 2 ** (level + 1)
    j = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    series = (torch.sin(thetas[:, None] * (2 * j - 1)) / (2 * j - 1)).sum(1)
    return (1 + torch.cos(thetas)) / 2, 2 * torch.sin(thetas) / n * series


def _new_angles(level: int) -> Tensor:
    """Angles ``k pi / 2**(level + 1)`` with k odd: the nodes level ``level`` adds."""
    n = 2 ** (level + 1)
    return torch.arange(1, n, 2, dtype=torch.float64) * math.pi / n


def max_level(max_steps: int) -> int:
    """The highest nested level whose ``2**(L + 1) - 1`` points fit in ``max_steps``."""
    return max(0, (max_steps + 1).bit_length() - 2)


def relative_error(delta: Tensor, change: Tensor) -> Tensor:
    """``|delta| / |change|``, with 0 / 0 = 0 and x / 0 = inf (x != 0); NaN stays NaN."""
    ratio = delta.abs() / change.abs()
    return torch.where((change == 0) & (delta == 0), torch.zeros_like(ratio), ratio)


def _auto_integrated(
    problem: Problem,
    starts: tuple[Tensor, ...],
    diffs: tuple[Tensor, ...],
    target: Target,
    change: Tensor,
    *,
    tolerance: float,
    max_steps: int,
    chunk_size: Any,
    memory_budget: int | None,
    progress: Progress,
) -> tuple[list[Tensor], Tensor, Convergence]:
    """Per-sample error-controlled IG: returns (weighted gradient sums per slot, multi, report).

    Round ``L`` evaluates the ``2**L`` nodes that level ``L`` of :func:`nested_rule` adds, for
    the samples still unconverged only, all of them in one run of rows (node-major, at most
    ``chunk_size`` per model call). Every gradient is added, with its weight in each level
    ``L' >= L``, into one accumulator per level ``[B, ...]`` (a node's weight changes with the
    level), so a sample's level-``L`` rule uses all its earlier evaluations. After the round the
    completeness error ``|sum(attr_L) - change| / |change|`` of those samples decides who goes on.
    """
    batch, device = problem.batch, change.device
    top = max_level(max_steps)
    nodes, _ = nested_rule(top)
    nodes = nodes.to(device)
    weights = [nested_rule(level)[1].to(device) for level in range(top + 1)]
    accs: dict[int, list[Tensor]] = {}
    finals: list[Tensor] | None = None
    multi = isinstance(target, Tensor) and target.ndim == 2
    delta = torch.zeros_like(change, dtype=torch.promote_types(change.dtype, torch.float32))
    error = torch.full_like(delta, math.nan)
    points = torch.zeros(batch, dtype=torch.long, device=device)
    levels = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)
    for level in range(top + 1):
        first, count = 2**level - 1, 2**level  # this level's nodes: nodes[first : first + count]
        node = torch.arange(first, first + count, device=device).repeat_interleave(len(active))
        sample = active.repeat(count)

        def chunk(
            start: int, stop: int, node: Tensor = node, sample: Tensor = sample, level: int = level
        ) -> None:
            nonlocal multi
            s, k = sample[start:stop], node[start:stop]
            a = nodes[k]
            rows = tuple(
                torch.addcmul(b[s], a.to(d.dtype).reshape((-1,) + (1,) * (d.ndim - 1)), d[s])
                for b, d in zip(starts, diffs)
            )
            rows_target = target[s] if isinstance(target, Tensor) else target
            grads, _, multi = score_gradients(problem, rows, rows_target, s)
            for later in range(level, top + 1):
                if later not in accs:
                    accs[later] = [
                        g.new_zeros((batch, *g.shape[1:]), dtype=accumulation_dtype(g))
                        for g in grads
                    ]
                w = weights[later][k].to(accs[later][0].dtype)
                for acc, g in zip(accs[later], grads):
                    acc.index_add_(0, s, g.to(acc.dtype) * w.reshape((-1,) + (1,) * (g.ndim - 1)))

        chunk_size = run_chunks(
            len(sample),
            chunk_size,
            chunk,
            device=device,
            memory_budget=memory_budget,
            progress=progress,
            description=f"integrated gradients (auto, level {level})",
        )
        current = accs.pop(level)
        if finals is None:
            finals = [torch.zeros_like(acc) for acc in current]
        total = sum(
            ((d.unsqueeze(1) if multi else d)[active] * acc[active])
            .flatten(2 if multi else 1)
            .sum(-1)
            for d, acc in zip(diffs, current)
        )
        level_delta = total - change[active].to(total.dtype)
        level_error = relative_error(level_delta, change[active].to(total.dtype))
        for final, acc in zip(finals, current):
            final[active] = acc[active]
        delta[active], error[active] = level_delta.to(delta.dtype), level_error.to(error.dtype)
        points[active] += count
        levels[active] = level
        done = level_error <= tolerance
        if multi:
            done = done.all(1)
        active = active[~done]
        if len(active) == 0:
            break
    converged = error <= tolerance
    report = Convergence(
        delta=delta,
        error=error,
        points=points,
        converged=converged.all(1) if multi else converged,
        level=levels,
        tolerance=tolerance,
    )
    if len(active):
        worst = error[active].amax(1) if multi else error[active]
        listed = ", ".join(f"{i} ({e:.3g})" for i, e in zip(active.tolist(), worst.tolist()))
        warnings.warn(
            f"integrated_gradients(steps='auto'): {len(active)} of {batch} samples did not reach "
            f"the relative completeness error tolerance={tolerance:g} within max_steps="
            f"{max_steps} path points; sample (error): {listed}. Their attributions come from "
            "the last rule tried: raise max_steps, or expect a non-smooth path (ReLU kinks) "
            "or a tolerance below the float rounding of the scores",
            NotConvergedWarning,
            stacklevel=3,
        )
    return finals, multi, report

"""Integrated Gradients (Sundararajan, Taly, Yan 2017) with exact quadrature rules.

``IG_i(x) = (x_i - x'_i) * integral_0^1 d s(x' + a (x - x')) / d x_i da``, approximated by
``(x - x') * sum_k w_k * grad s(x' + a_k (x - x'))``. All ``steps x B`` path points go through the
model as one enlarged batch (copy-major rows, at most ``chunk_size`` per call), with one backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_choice,
    check_chunk_size,
    check_finite,
    check_positive_int,
)
from torchattr._core.chunking import add_rows, row_index, row_ranges
from torchattr._core.grad import accumulation_dtype, forward_scores, prepare, score_gradients
from torchattr._core.inputs import Inputs, InputSpec, unflatten
from torchattr._core.state import untouched
from torchattr._core.targets import Target

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
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

    Every rule's weights sum to 1. Gauss-Legendre nodes are the eigenvalues of the Jacobi matrix
    (Golub-Welsch), computed with torch so that the rule traces under ``torch.compile``.
    """
    check_choice(method, "method", METHODS)
    n = check_positive_int(steps, "steps", minimum=2 if method == "riemann_trapezoid" else 1)
    k = torch.arange(n, dtype=torch.float64)
    if method == "gausslegendre":
        i = torch.arange(1, n, dtype=torch.float64)
        off = i / torch.sqrt(4 * i * i - 1)
        jacobi = torch.diag(off, 1) + torch.diag(off, -1)
        nodes, vectors = torch.linalg.eigh(jacobi)
        return (1 + nodes) / 2, vectors[0].square()
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / n, torch.full((n,), 1 / n, dtype=torch.float64)


def integrated_gradients(
    model: Callable[..., Any],
    inputs: Inputs,
    baseline: Baseline = None,
    target: Target = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    return_delta: bool = False,
) -> Any:
    """Integrated Gradients along the straight path from ``baseline`` to ``inputs``.

    ``IG(x) = (x - x') * sum_k w_k * d s / d x (x' + a_k (x - x'))`` with the nodes and weights of
    :func:`quadrature`. Shapes: attributions are shaped like the inputs (``[B, K, ...]`` for a
    ``[B, K]`` target), in at least float32; tuple and dict inputs give a tuple / dict.

    ``baseline``: None (zeros), a number, or a tensor broadcastable to the input; for tuple / dict
    inputs a tuple / dict of those (or one number for all). ``target=None`` explains the class
    predicted for ``x``. ``chunk_size`` bounds the number of (sample, step) rows per model call;
    the result does not depend on it. ``return_delta=True`` also returns the convergence delta
    ``[B]`` (``[B, K]``): ``sum of attributions - (s(x) - s(x'))``, from two extra B-row forwards.

    Example::

        attributions, delta = ta.integrated_gradients(model, images, target=labels,
                                                      steps=32, return_delta=True)
    """
    alphas, weights = quadrature(method, steps)
    chunk_size = check_chunk_size(chunk_size)
    tensors, spec, batch, target = prepare(model, inputs, target)
    baselines = expand_baselines(baseline, tensors, spec)
    device = tensors[0].device
    alphas, weights = alphas.to(device), weights.to(device)
    diffs = tuple(x - b for x, b in zip(tensors, baselines))
    sums: list[Tensor] | None = None
    multi = False
    with untouched(model):
        if target is None or return_delta:
            input_scores, target = forward_scores(model, tensors, spec, target, chunk_size)
        for start, stop in row_ranges(steps * batch, chunk_size):
            step, sample = row_index(start, stop, batch, device)
            points = tuple(
                b[sample] + _per_row(alphas[step], d).to(d.dtype) * d[sample]
                for b, d in zip(baselines, diffs)
            )
            rows_target = target[sample] if isinstance(target, Tensor) else target
            grads, _, multi = score_gradients(model, points, spec, rows_target)
            if sums is None:
                sums = [
                    g.new_zeros((batch, *g.shape[1:]), dtype=accumulation_dtype(g)) for g in grads
                ]
            for acc, g in zip(sums, grads):
                add_rows(acc, start, g.to(acc.dtype) * _per_row(weights[step], g).to(acc.dtype))
        attributions = [(d.unsqueeze(1) if multi else d) * acc for d, acc in zip(diffs, sums)]
        if not return_delta:
            return unflatten(attributions, spec)
        baseline_scores, _ = forward_scores(model, baselines, spec, target, chunk_size)
    keep = 2 if multi else 1
    total = sum(a.flatten(keep).sum(-1) for a in attributions)
    delta = total - (input_scores - baseline_scores).to(total.dtype)
    return unflatten(attributions, spec), delta


def expand_baselines(
    baseline: Baseline, tensors: tuple[Tensor, ...], spec: InputSpec
) -> tuple[Tensor, ...]:
    """One baseline tensor per input, broadcast (as a view) to the input's shape and dtype."""
    names = spec.names()
    if baseline is None or (isinstance(baseline, (int, float, Tensor)) and spec.kind == "tensor"):
        parts: tuple[Any, ...] = (baseline,)
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        parts = (baseline,) * len(tensors)
    elif spec.kind == "dict" and isinstance(baseline, Mapping):
        unknown = sorted(set(baseline) - set(spec.keys))
        if unknown:
            raise ValueError(
                f"baseline has keys {unknown} that are not in inputs {list(spec.keys)}"
            )
        parts = tuple(baseline.get(k) for k in spec.keys)
    elif spec.kind == "tuple" and isinstance(baseline, (tuple, list)):
        if len(baseline) != len(tensors):
            raise ValueError(f"baseline has {len(baseline)} entries but inputs has {len(tensors)}")
        parts = tuple(baseline)
    else:
        raise TypeError(
            f"baseline must be None, a number or a tensor for tensor inputs, and a {spec.kind} "
            f"of those (or one number) for {spec.kind} inputs; got {type(baseline).__name__}"
        )
    if baseline is None:
        parts = (None,) * len(tensors)
    out = tuple(_one_baseline(p, x, f"baseline for {n}") for p, x, n in zip(parts, tensors, names))
    check_finite(out, [f"baseline for {n}" for n in names])
    return out


def _one_baseline(value: Any, x: Tensor, name: str) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=x.dtype, device=x.device).expand(x.shape)
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be None, a number or a tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value}: expected a finite number")
        return torch.full((), value, dtype=x.dtype, device=x.device).expand(x.shape)
    try:
        return torch.broadcast_to(value.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {list(value.shape)}, not broadcastable to the input's shape "
            f"{list(x.shape)}"
        ) from None


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-row scalars ``[N]`` to broadcast against ``like`` ``[N, ...]``."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))

"""Gradient saliency, input x gradient and the SmoothGrad family.

All three are one forward and one backward of the (possibly enlarged) batch (one batched
vector-Jacobian product); nothing else costs time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_choice,
    check_chunk_size,
    check_positive_int,
    check_scale,
    keywords,
)
from torchattr._core.chunking import (
    CopyDraws,
    add_rows,
    build_rows,
    draw,
    row_index,
    run_chunks,
)
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import (
    Problem,
    accumulation_dtype,
    forward_scores,
    input_gradients,
    prepare,
    score_gradients,
)
from torchattr._core.inputs import InputsT, unflatten
from torchattr._core.layers import apply_mask, collapse, embedding_dims
from torchattr._core.memory import check_memory_budget
from torchattr._core.progress import Progress, check_progress
from torchattr._core.state import untouched
from torchattr._core.targets import Target

__all__ = [
    "REDUCTIONS",
    "SMOOTHGRAD_KINDS",
    "input_x_gradient",
    "reduce_channels",
    "saliency",
    "smoothgrad",
]

REDUCTIONS = ("max", "sum", "mean", None)
_REDUCERS = {
    "max": lambda g, dims: g.amax(dim=dims),
    "sum": lambda g, dims: g.sum(dim=dims),
    "mean": lambda g, dims: g.mean(dim=dims),
}
SMOOTHGRAD_KINDS = ("smoothgrad", "square", "var")


@keywords()
def saliency(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    abs: bool = True,  # noqa: A002 - the documented keyword
    reduce: str | None = "max",
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> InputsT:
    """Gradient saliency (Simonyan et al. 2013): ``max_c |d s / d x[c, ...]|``.

    ``s`` is each sample's explained score (see *Conventions > Targets* in the docs). With the
    defaults an image batch ``[B, C, H, W]`` gives ``[B, H, W]``: the absolute gradient, maximised
    over the channel dimension (dim 1). ``reduce`` may be ``"sum"``, ``"mean"`` or ``None`` (keep
    the full gradient, ``[B, C, H, W]``); ``abs=False`` keeps signs (then ``"max"`` is the largest
    signed gradient). Inputs without a channel dimension (``[B, F]``) are never reduced. A
    ``[B, K]`` target gives ``[B, K, H, W]``. Tuple and dict inputs give a tuple / dict.

    With ``layer=embedding`` the gradient is taken with respect to the layer's output and reduced
    over the embedding dimension instead: ids ``[B, L]`` give ``[B, L]``; ``mask`` (a bool tensor
    shaped like the ids, or a padding id) zeroes padded positions. See
    :func:`torchattr.integrated_gradients` for ``layer`` and ``mask``.

    ``forward_kwargs``: keyword arguments passed to every model call, never attributed (e.g. an
    integer ``attention_mask``); tensors with leading dimension B follow their samples.
    Results are detached, in at least float32.

    Cost: one forward and one backward (K backward passes for a ``[B, K]`` target), also with
    ``layer=``: the layer's output is captured inside the forward that is differentiated.

    Example::

        maps = ta.saliency(model, images)            # [B, H, W]
        grads = ta.saliency(model, images, 3, abs=False, reduce=None)   # [B, C, H, W]
    """
    check_choice(reduce, "reduce", REDUCTIONS)
    problem, _, grads, multi, masks = _gradients_once(
        model, inputs, target, layer, mask, forward_kwargs
    )
    maps = []
    for g, ids, layer_, keep in zip(grads, problem.tensors, problem.layers, masks):
        g = g.detach().to(accumulation_dtype(g))
        if layer_ is not None and embedding_dims(g, ids, multi):
            g = g.abs() if abs else g
            g = g if reduce is None else _REDUCERS[reduce](g, embedding_dims(g, ids, multi))
        else:
            g = reduce_channels(g, abs=abs, reduce=reduce, channel_dim=2 if multi else 1)
        maps.append(apply_mask(g, keep, multi))
    return unflatten(maps, problem.spec)


@keywords()
def input_x_gradient(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> InputsT:
    """Input times gradient: ``x * d s / d x``, shaped like the inputs (``[B, K, ...]`` for K).

    With ``layer=embedding``: ``sum_d e_d * d s / d e_d`` per id (``e`` the layer's output), shaped
    like the ids; ``mask`` zeroes padded positions (see :func:`torchattr.integrated_gradients`).
    ``forward_kwargs``: passed to the model, never attributed (see :func:`saliency`).

    Example::

        attributions = ta.input_x_gradient(model, images, target=labels)   # [B, C, H, W]
    """
    problem, primals, grads, multi, masks = _gradients_once(
        model, inputs, target, layer, mask, forward_kwargs
    )
    out = []
    for p, g, ids, layer_, keep in zip(primals, grads, problem.tensors, problem.layers, masks):
        dtype = accumulation_dtype(g)
        product = (p.detach().unsqueeze(1) if multi else p.detach()).to(dtype) * g.to(dtype)
        if layer_ is not None:
            product = collapse(product, ids, multi)
        out.append(apply_mask(product, keep, multi))
    return unflatten(out, problem.spec)


def _gradients_once(
    model: Callable[..., Any],
    inputs: Any,
    target: Target,
    layer: Any,
    mask: Any,
    forward_kwargs: Mapping[str, Any] | None,
) -> tuple[Problem, tuple[Tensor, ...], tuple[Tensor, ...], bool, tuple[Tensor | None, ...]]:
    """One forward and backward at the inputs: (problem, primals, gradients, multi, masks).

    With ``layer=`` the primals (the layer's outputs) come from that same forward
    (:func:`~torchattr._core.grad.input_gradients`)."""
    problem, target = prepare(model, inputs, target, layer, forward_kwargs)
    masks = problem.masks(mask)
    with untouched(model, problem.layers), buffers_kept(model):
        primals, grads, _, multi = input_gradients(problem, target)
    return problem, primals, grads, multi, masks


@keywords()
def smoothgrad(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    samples: int = 20,
    noise: float = 0.1,
    sigma: float | None = None,
    kind: str = "smoothgrad",
    chunk_size: int | str | None = "auto",
    generator: torch.Generator | None = None,
    absolute_noise: bool | None = None,
    layer: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
) -> InputsT:
    """SmoothGrad (Smilkov et al. 2017) and its square and variance variants.

    With ``g_i = d s / d x`` at ``x + eps_i``, ``eps_i ~ N(0, sigma^2)``, ``i = 1..n``:

    * ``kind="smoothgrad"``: ``mean_i g_i``;
    * ``kind="square"``: ``mean_i g_i^2`` (SmoothGrad-squared);
    * ``kind="var"``: ``mean_i g_i^2 - (mean_i g_i)^2`` (VarGrad, population variance).

    ``sigma = noise * (max(x_b) - min(x_b))`` per sample and input tensor, as in the SmoothGrad
    paper (``noise`` is a noise *level*, a fraction of the value range); pass ``sigma=`` to give
    the standard deviation itself, in the inputs' units (as ``sigma`` means in the metrics;
    Captum's ``stdevs``). ``absolute_noise=True`` (deprecated) is ``sigma=noise``. Noise
    sample i (i = 0..n-1) draws ``randn(x.shape, generator)`` for each input tensor in order,
    sample after sample (reproducible with a seeded ``generator``), when the chunk that needs it
    comes: memory stays bounded by ``chunk_size``. The ``samples x B`` noisy copies go through the
    model as one enlarged batch, at most ``chunk_size`` rows per call (the default ``"auto"``
    keeps each chunk's measured peak memory under ``memory_budget`` bytes, see
    :func:`torchattr.integrated_gradients`; ``progress``: True or a callable ``(done, total)``
    called with the rows done after each chunk). ``target=None`` explains
    the class predicted for the clean input. The output is shaped like the inputs
    (``[B, K, ...]`` for a ``[B, K]`` target), in at least float32.

    With ``layer=embedding`` the noise is added to the layer's output (sigma relative to its
    range) and the statistics of ``d s / d e`` come back in the layer's shape (``[B, L, D]``).
    ``forward_kwargs``: passed to the model, never attributed; per-sample tensors follow their
    sample into the noisy copies.

    Example::

        maps = ta.smoothgrad(model, images, samples=50, noise=0.15).abs().amax(1)   # [B, H, W]
    """
    samples = check_positive_int(samples, "samples")
    check_choice(kind, "kind", SMOOTHGRAD_KINDS)
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    check_progress(progress)
    noise = check_scale(noise, "noise")
    if absolute_noise is not None:
        warnings.warn(
            "smoothgrad(): absolute_noise is deprecated and will be removed in the next release; "
            "pass sigma=<standard deviation> instead",
            DeprecationWarning,
            stacklevel=3,
        )
        if absolute_noise and sigma is None:
            sigma = noise
    absolute = sigma is not None
    level = check_scale(sigma, "sigma") if absolute else noise
    problem, target = prepare(model, inputs, target, layer, forward_kwargs)
    batch, device = problem.batch, problem.tensors[0].device
    rows = None if chunk_size == "auto" else chunk_size  # B-row passes without a backward
    sums: list[Tensor] | None = None
    squares: list[Tensor] | None = None
    with untouched(model, problem.layers), buffers_kept(model):
        tensors, outputs = problem.primals(rows)
        sigmas = [noise_scale(x, level, absolute) for x in tensors]
        copy_noise = CopyDraws(
            lambda: tuple(
                draw(torch.randn, tuple(x.shape), x.dtype, x.device, generator) for x in tensors
            )
        )
        if target is None:
            _, target = forward_scores(problem, tensors, None, rows, outputs)

        def chunk(start: int, stop: int) -> None:
            nonlocal sums, squares
            _, sample = row_index(start, stop, batch, device)
            first = start // batch
            chunk_noise = [copy_noise(c) for c in range(first, (stop - 1) // batch + 1)]
            noisy = tuple(
                build_rows(
                    start, stop, batch, partial(_noisy_copies, x, sigma, chunk_noise, first, i)
                )
                for i, (x, sigma) in enumerate(zip(tensors, sigmas))
            )
            rows_target = target[sample] if isinstance(target, Tensor) else target
            grads, _, _ = score_gradients(problem, noisy, rows_target, sample)
            if sums is None:
                sums = [_zeros(batch, g, accumulation_dtype(g)) for g in grads]
                squares = [_zeros(batch, g, torch.float64) for g in grads]
            for acc, sq, g in zip(sums, squares, grads):
                add_rows(acc, start, g)
                if kind != "smoothgrad":
                    add_rows(sq, start, g.double().square())

        run_chunks(
            samples * batch,
            chunk_size,
            chunk,
            device=device,
            memory_budget=memory_budget,
            progress=progress,
            description="smoothgrad",
        )
    means = [acc / samples for acc in sums]
    if kind == "smoothgrad":
        result = means
    elif kind == "square":
        result = [(sq / samples).to(m.dtype) for sq, m in zip(squares, means)]
    else:
        result = [
            (sq / samples - (acc.double() / samples).square()).clamp_min(0).to(m.dtype)
            for sq, acc, m in zip(squares, sums, means)
        ]
    return unflatten([r.detach() for r in result], problem.spec)


def reduce_channels(
    gradient: Tensor,
    *,
    abs: bool = True,  # noqa: A002 - the keyword of saliency
    reduce: str | None = "max",
    channel_dim: int = 1,
) -> Tensor:
    """Optionally take ``|.|`` and reduce the channel dimension (``max``, ``sum`` or ``mean``).

    A tensor with nothing after its channel dimension (``[B, F]``) is returned unreduced.
    ``[B, C, H, W] -> [B, H, W]``, e.g. ``max_c |g[:, c]|`` for ``reduce="max"``, ``abs=True``.

    Example::

        maps = ta.reduce_channels(gradients, reduce="sum", abs=False)   # [B, H, W]
    """
    if abs:
        gradient = gradient.abs()
    if reduce is None or gradient.ndim < channel_dim + 2:
        return gradient
    if reduce == "max":
        return gradient.amax(dim=channel_dim)
    if reduce == "sum":
        return gradient.sum(dim=channel_dim)
    return gradient.mean(dim=channel_dim)


def noise_scale(x: Tensor, noise: float, absolute: bool = False) -> Tensor:
    """Per-sample noise standard deviation, ``[B, 1, ...]``: ``noise * (max x_b - min x_b)``."""
    if absolute:
        return torch.full(
            (x.shape[0],) + (1,) * (x.ndim - 1), float(noise), dtype=x.dtype, device=x.device
        )
    flat = x.detach().reshape(x.shape[0], -1)
    spread = flat.amax(dim=1) - flat.amin(dim=1)
    return (noise * spread).reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _noisy_copies(
    x: Tensor,
    sigma: Tensor,
    noise: list[tuple[Tensor, ...]],
    first: int,
    slot: int,
    copies: slice,
    samples: slice,
) -> Tensor:
    """``x + sigma * eps`` for the noise samples ``copies`` of the samples ``samples``.

    ``noise[c - first][slot]`` is the draw ``[B, ...]`` of noise sample ``c`` for this input.
    """
    eps = torch.stack([noise[c - first][slot][samples] for c in range(copies.start, copies.stop)])
    return torch.addcmul(x[samples], sigma[samples], eps)


def _zeros(batch: int, rows_like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros((batch, *rows_like.shape[1:]), dtype=dtype, device=rows_like.device)

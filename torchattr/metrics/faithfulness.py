"""Faithfulness and axiomatic metrics: does the model's score follow the attributions?

* :func:`completeness` (axiomatic; Sundararajan et al. 2017):
  ``|sum Phi - (f(x) - f(baseline))|``, lower is better;
* :func:`monotonicity` (Arya et al. 2019, AIX360): from the baseline, features put back in
  increasing order of attribution raise the score at every step; True is better;
* :func:`sensitivity_n` (Ancona et al. 2018): the correlation between the attributions' sum
  over random subsets of ``n`` features and the score drop when they are removed, for several
  ``n``; higher is better;
* :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhay et al. 2018,
  Grad-CAM++): the score of the image masked by the explanation map; lower drop and more
  increases are better;
* :func:`input_invariance` (Kindermans et al. 2019): attributions of a model at ``x`` and of its
  copy whose first layer absorbs a constant input shift, at ``x + shift``; 0 is invariant.

The model-scoring metrics follow the conventions of :mod:`torchattr.metrics.robustness`:
``target=None`` is the class predicted on the clean inputs, copies go through the model
``chunk_size`` rows at a time (copy-major), ``forward_kwargs`` follow their sample, and the
model is left as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.checks import check_finite, check_positive_int, keywords
from torchattr._core.chunking import row_ranges
from torchattr._core.inputs import Inputs
from torchattr._core.progress import Progress, check_progress
from torchattr._core.state import untouched
from torchattr._core.targets import Target, logits_of, normalize_target
from torchattr.metrics._copies import score_copies
from torchattr.metrics._shared import _check_chunk_size, _scoring, pack_inputs
from torchattr.metrics.robustness import (
    _check_attributions,
    _check_baseline,
    _check_inputs,
    _explained,
    _result_dtype,
    _rows_of,
    faithfulness_correlation,
)

__all__ = [
    "average_drop",
    "completeness",
    "increase_in_confidence",
    "input_invariance",
    "monotonicity",
    "sensitivity_n",
]


@keywords()
def completeness(
    model: Callable[..., Any],
    inputs: Inputs,
    attributions: Inputs,
    target: Target = None,
    *,
    baseline: float | Tensor = 0.0,
    score: str = "logit",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Completeness error (the completeness axiom, Sundararajan et al. 2017), per sample ``[B]``.

        ``E(x) = |sum_i Phi_i(x) - (f(x) - f(baseline))|``

    with ``f`` the model's score for the target. Integrated Gradients satisfies the axiom up to
    its Riemann error, input x gradient of a linear model with a zero baseline exactly; lower is
    better (0: the attributions account for the whole score difference).

    Args:
        model: maps rows ``[N, ...]`` to outputs ``[N, classes]`` (or ``[N]``).
        inputs: ``[B, ...]``, floating point.
        attributions: shaped like the inputs, or ``[B, H, W]`` maps of ``[B, C, H, W]`` inputs.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        baseline: a number or a tensor broadcastable to the inputs: the reference point the
            attributions were computed against.
        score: ``"logit"`` (default), ``"softmax"`` or ``"sigmoid"``.
        chunk_size: rows per model call (default B).
        forward_kwargs: keyword arguments passed to every model call (tensors with leading
            dimension B follow their sample).

    Returns:
        ``[B]``, non-negative, float32 (float64 for float64 attributions).

    Example::

        err = completeness(model, images, ta.integrated_gradients(model, images, steps=64))
    """
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    phi = _check_attributions(attributions, x, packed)
    reference = _check_baseline(baseline, x, packed)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    with _scoring(model, x, target, score, chunk_size, forward_kwargs, packed) as scorer:
        base = score_copies(
            scorer, batch, 1, lambda c, s: reference[s].unsqueeze(0), chunk_size, False, ""
        )[0]
    total = phi.flatten(1).sum(dim=1).double()
    return (total - (scorer.clean - base).double()).abs().to(_result_dtype(phi))


@keywords()
def monotonicity(
    model: Callable[..., Any],
    inputs: Inputs,
    attributions: Inputs,
    target: Target = None,
    *,
    features_per_step: int = 1,
    baseline: float | Tensor = 0.0,
    score: str = "softmax",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor:
    """Monotonicity (Arya et al. 2019, AIX360's ``monotonicity_metric``), per sample: ``[B]`` bool.

    Start from the baseline and put the sample's features back ``features_per_step`` at a time
    in increasing order of attribution (ties: earlier feature first, a stable sort), scoring
    after each step: ``s_k = f(x_[first k steps put back])`` for ``k = 1 .. K``,
    ``K = ceil(F / features_per_step)``. The attributions are monotonic when

        ``s_1 <= s_2 <= ... <= s_K``

    (every step raises the score: features that matter more are added later and add more).
    True is better. A feature is an element of the attributions (a pixel, all its channels, for
    ``[B, H, W]`` maps of ``[B, C, H, W]`` inputs). Costs ``K B`` model rows.

    Args:
        model: maps rows ``[N, ...]`` to outputs ``[N, classes]`` (or ``[N]``).
        inputs: ``[B, ...]``, floating point.
        attributions: shaped like the inputs, or ``[B, H, W]`` maps of ``[B, C, H, W]`` inputs.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        features_per_step: features put back per step.
        baseline: a number or a tensor broadcastable to the inputs (the starting point).
        score: ``"softmax"`` (default, as AIX360), ``"sigmoid"`` or ``"logit"``.
        chunk_size: rows per model call (default B).
        forward_kwargs: keyword arguments passed to every model call.
        progress: True for a tqdm bar or a callable ``(done, total)`` (``total = K B``).

    Returns:
        ``[B]``, bool.

    Example::

        ok = monotonicity(model, images, maps, features_per_step=64)
    """
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    phi = _check_attributions(attributions, x, packed)
    fill = _check_baseline(baseline, x, packed)
    step = check_positive_int(features_per_step, "features_per_step")
    check_progress(progress)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    features = phi[0].numel()
    steps = -(-features // step)
    # rank[b, i]: the position of feature i in sample b's increasing order
    order = phi.flatten(1).argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(features, device=x.device).expand_as(order)
    )

    def make(copies: slice, samples: slice) -> Tensor:
        k = torch.arange(copies.start + 1, copies.stop + 1, device=x.device) * step
        back = rank[samples].unsqueeze(0) < k.view(-1, 1, 1)  # [nc, ns, F]
        back = back.reshape(*back.shape[:2], *phi.shape[1:])
        return torch.where(back, x[samples], fill[samples])

    with _scoring(model, x, target, score, chunk_size, forward_kwargs, packed) as scorer:
        curve = score_copies(scorer, batch, steps, make, chunk_size, progress, "monotonicity")
    return (curve.diff(dim=0) >= 0).all(dim=0)


@keywords()
def sensitivity_n(
    model: Callable[..., Any],
    inputs: Inputs,
    attributions: Inputs,
    target: Target = None,
    *,
    n: Sequence[int] | int = (1, 2, 4, 8),
    runs: int = 100,
    baseline: float | Tensor = 0.0,
    score: str = "logit",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor:
    """Sensitivity-n (Ancona et al. 2018), per subset size and sample: ``[len(n), B]`` in [-1, 1].

        ``S_n(x) = corr_S( sum_{i in S} Phi_i , f(x) - f(x_[x_S = baseline]) )``,  ``|S| = n``

    the Pearson correlation over ``runs`` random subsets ``S`` of ``n`` features between the
    attributions' sum and the score drop when the subset is set to the baseline, for each ``n``
    (row ``j`` of the result is ``n[j]``). An attribution satisfies sensitivity-n when
    ``S_n = 1``: input x gradient (= Integrated Gradients) of a linear model with a zero
    baseline does for every ``n``. For each ``n`` this is
    :func:`~torchattr.metrics.faithfulness_correlation` with ``subset_size=n`` (same draws for
    the same generator state); NaN where the sums or the drops do not vary (e.g. ``n = F``).

    Args:
        model, inputs, attributions, target, baseline, score, chunk_size, forward_kwargs:
            as :func:`~torchattr.metrics.faithfulness_correlation`.
        n: subset sizes (each in ``1 .. F``).
        runs: subsets per size (>= 2).
        generator: draws the subsets, sizes in order.
        progress: True for a tqdm bar or a callable ``(done, total)``, per size.

    Returns:
        ``[len(n), B]``, float32 (float64 for float64 attributions).

    Example::

        s = sensitivity_n(model, images, ta.input_x_gradient(model, images), n=(1, 10, 100))
    """
    if isinstance(n, int) and not isinstance(n, bool):
        n = (n,)
    if not isinstance(n, Sequence) or isinstance(n, str) or not n:
        raise TypeError(f"n must be a positive int or a non-empty sequence of them, got {n!r}")
    sizes = [check_positive_int(size, "n") for size in n]
    return torch.stack(
        [
            faithfulness_correlation(
                model,
                inputs,
                attributions,
                target,
                subset_size=size,
                runs=runs,
                baseline=baseline,
                chunk_size=chunk_size,
                generator=generator,
                score=score,
                forward_kwargs=forward_kwargs,
                progress=progress,
            )
            for size in sizes
        ]
    )


@keywords()
def average_drop(
    model: Callable[..., Any],
    inputs: Inputs,
    saliency: Inputs,
    target: Target = None,
    *,
    score: str = "softmax",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Drop in confidence (Chattopadhay et al. 2018, Grad-CAM++), per sample: ``[B]`` percent.

        ``drop = 100 max(0, Y - O) / Y``,   ``O = f(x * E / max E)``

    with ``Y = f(x)`` the score for the target on the image and ``O`` the score on the image
    multiplied by its explanation map ``E`` scaled to a maximum of 1 (the paper's "explanation
    map as a mask"). The paper's Average Drop is the mean over images. Lower is better; NaN
    where ``Y <= 0`` (use ``score="softmax"``, the default and the paper's choice).

    Args:
        model: maps rows ``[N, ...]`` to outputs ``[N, classes]`` (or ``[N]``).
        inputs: ``[B, ...]``, floating point.
        saliency: non-negative maps shaped like the inputs, or ``[B, H, W]`` maps of
            ``[B, C, H, W]`` inputs (shared by the channels), each with a positive maximum.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        score: ``"softmax"`` (default), ``"sigmoid"`` or ``"logit"``.
        chunk_size: rows per model call (default B).
        forward_kwargs: keyword arguments passed to every model call.

    Returns:
        ``[B]``, in [0, 100] (float32, float64 for float64 maps).

    Example::

        drop = average_drop(model, images, ta.cam(model, images, layer="layer4")).mean()
    """
    clean, masked, dtype = _masked_scores(
        model, inputs, saliency, target, score, chunk_size, forward_kwargs
    )
    drop = 100 * (clean - masked).clamp_min(0) / torch.where(clean > 0, clean, 1)
    return torch.where(clean > 0, drop, torch.nan).to(dtype)


@keywords()
def increase_in_confidence(
    model: Callable[..., Any],
    inputs: Inputs,
    saliency: Inputs,
    target: Target = None,
    *,
    score: str = "softmax",
    chunk_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Increase in confidence (Chattopadhay et al. 2018, Grad-CAM++), per sample: ``[B]`` bool.

        ``O > Y``,   ``O = f(x * E / max E)``,  ``Y = f(x)``

    (see :func:`average_drop`): whether the image masked by its explanation map scores higher
    than the image. The paper reports the percentage of images where it does
    (``100 * result.float().mean()``); higher is better.

    Args:
        model, inputs, saliency, target, score, chunk_size, forward_kwargs: as
            :func:`average_drop`.

    Returns:
        ``[B]``, bool.

    Example::

        share = ta.metrics.increase_in_confidence(model, images, maps).float().mean()
    """
    clean, masked, _ = _masked_scores(
        model, inputs, saliency, target, score, chunk_size, forward_kwargs
    )
    return masked > clean


def _masked_scores(
    model: Callable[..., Any],
    inputs: Inputs,
    saliency: Inputs,
    target: Target,
    score: str,
    chunk_size: int | None,
    forward_kwargs: Mapping[str, Any] | None,
) -> tuple[Tensor, Tensor, torch.dtype]:
    """Scores ``Y [B]`` of the inputs and ``O [B]`` of the inputs times their scaled maps."""
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    maps = _check_attributions(saliency, x, packed)
    if bool((maps < 0).any()):
        raise ValueError(
            "saliency has negative values: the explanation map is used as a mask in [0, 1] "
            "(take .clamp_min(0) first)"
        )
    peak = maps.flatten(1).amax(dim=1)
    if bool((peak == 0).any()):
        raise ValueError(
            f"saliency is zero everywhere in sample(s) {(peak == 0).nonzero()[:, 0].tolist()}: "
            "the map cannot be scaled to a mask"
        )
    scale = (maps / peak.view(-1, *[1] * (maps.ndim - 1))).to(x.dtype)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    with _scoring(model, x, target, score, chunk_size, forward_kwargs, packed) as scorer:
        masked = score_copies(
            scorer, batch, 1, lambda c, s: (x[s] * scale[s]).unsqueeze(0), chunk_size, False, ""
        )[0]
    return scorer.clean.double(), masked.double(), _result_dtype(maps)


ShiftExplain = Callable[[Callable[..., Any], Tensor, Any], Tensor]
_SHIFTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@keywords()
def input_invariance(
    explain: ShiftExplain,
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    shift: float | Tensor,
    layer: str,
    chunk_size: int | None = None,
    rtol: float = 1e-5,
) -> Tensor:
    """Input invariance (Kindermans et al. 2019), per sample: ``[B]``, 0 = invariant.

    A copy ``g`` of the model takes inputs shifted by a constant ``m`` and undoes the shift in
    its first layer's bias, so that ``g(x + m) = f(x)`` for every ``x``:

        ``b_g = b_f - W m``   (``nn.Linear``: ``W @ m``; ``nn.ConvNd`` without padding, ``m``
        constant per channel: ``b_g[o] = b_f[o] - sum_{c, k} W[o, c, k] m_c``)

    The two models are the same function of the original data, so an input-invariant method
    explains them alike. The result is the relative change

        ``||Phi(g, x + m) - Phi(f, x)|| / ||Phi(f, x)||``

    (Frobenius norm over one sample; 0 where both are 0, ``inf`` where only ``Phi(f, x)`` is).
    The gradient is invariant (0), input x gradient and Integrated Gradients with a zero
    baseline are not. The user's model is not modified: ``g`` is a deep copy. The copy is
    checked to reproduce the model's outputs (``g(x + m) = f(x)`` within ``rtol`` of the
    outputs' scale); a ``layer`` that is not applied first to the inputs is refused by name.

    Args:
        explain: ``explain(model, x, target) -> Phi`` for rows ``x [N, ...]`` (called with the
            model and with its shifted copy), e.g.
            ``lambda m, x, t: ta.saliency(m, x, target=t, abs=False, reduce=None)``.
        model: an ``nn.Module`` whose submodule ``layer`` first receives the inputs.
        inputs: ``[B, ...]``, floating point.
        target: passed to ``explain`` (row by row for a LongTensor ``[B]``).
        shift: the constant ``m``: a number, or a tensor broadcastable to one sample
            (``inputs.shape[1:]``); constant over space for a convolution.
        layer: the name of the first layer (``dict(model.named_modules())`` key), an
            ``nn.Linear`` (fed the flattened sample) or an ``nn.ConvNd`` with zero padding.
        chunk_size: rows per ``explain`` call (default B).
        rtol: tolerance of the check that the copy reproduces the model's outputs.

    Returns:
        ``[B]``, float32 (float64 for float64 explanations).

    Example::

        gap = input_invariance(
            lambda m, x, t: ta.input_x_gradient(m, x, target=t), model, images,
            shift=-0.5, layer="conv1",
        )
    """
    if not callable(explain):
        raise TypeError(f"explain must be callable (model, x, target) -> Phi, got {explain!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (it is copied), got {type(model).__name__}")
    x = _check_inputs(inputs)
    m = _check_shift(shift, x)
    shifted = _shifted_copy(model, layer, m)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    target = normalize_target(target, batch, x.device)
    with torch.no_grad(), untouched(model, gradients=False):
        before, after = model(x), shifted(x + m)
    _check_same_outputs(before, after, rtol, layer)
    gaps = []
    for a, b in row_ranges(batch, chunk_size):
        rows = _rows_of(target, slice(a, b))
        phi = _explained(lambda r, t: explain(model, r, t), x[a:b], rows, b - a)
        moved = _explained(lambda r, t: explain(shifted, r, t), x[a:b] + m, rows, b - a)
        if moved.shape != phi.shape:
            raise ValueError(
                f"explain returned {list(moved.shape)} for the shifted model but "
                f"{list(phi.shape)} for the model: explanations must keep their shape"
            )
        change = (moved - phi).flatten(1).norm(dim=1)
        size = phi.flatten(1).norm(dim=1)
        ratio = change / torch.where(size > 0, size, 1)
        gaps.append(torch.where(size > 0, ratio, torch.where(change > 0, torch.inf, 0.0)))
    return torch.cat(gaps)


def _check_shift(shift: Any, x: Tensor) -> Tensor:
    """The shift broadcast to one sample, ``x.shape[1:]``."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float, Tensor)):
        raise TypeError(f"shift must be a number or a tensor, got {type(shift).__name__}")
    m = torch.as_tensor(shift).detach().to(device=x.device, dtype=x.dtype)
    check_finite([m], ["shift"])
    try:
        return torch.broadcast_to(m, x.shape[1:]).clone()
    except RuntimeError:
        raise ValueError(
            f"shift has shape {list(m.shape)}: expected a number or a tensor broadcastable to "
            f"one sample, {list(x.shape[1:])}"
        ) from None


def _shifted_copy(model: nn.Module, layer: Any, m: Tensor) -> nn.Module:
    """A deep copy of ``model`` whose ``layer`` subtracts ``W m`` from its bias."""
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules:
        names = [n for n, mod in modules.items() if isinstance(mod, _SHIFTABLE)]
        raise ValueError(
            f"layer must name a Linear or Conv layer of the model {names}, got {layer!r}"
        )
    first = modules[layer]
    if not isinstance(first, _SHIFTABLE):
        raise TypeError(
            f"layer {layer!r} is a {type(first).__name__}: the shift is compensated in an "
            "nn.Linear or nn.ConvNd"
        )
    weight = first.weight.detach()
    if isinstance(first, nn.Linear):
        if m.numel() != first.in_features:
            raise ValueError(
                f"layer {layer!r} has {first.in_features} input features but one sample has "
                f"{m.numel()}: it must be the first layer, fed the flattened sample"
            )
        delta = weight @ m.reshape(-1).to(weight.dtype)
    else:
        padding = first.padding
        pads = padding == "same" or (isinstance(padding, tuple) and any(p != 0 for p in padding))
        if pads:
            raise ValueError(
                f"layer {layer!r} pads its input: padding is not shifted, so no bias can "
                "compensate the shift at the borders; use a layer without padding"
            )
        if m.ndim < 1 or m.shape[0] != first.in_channels:
            raise ValueError(
                f"layer {layer!r} has {first.in_channels} input channels but one sample has "
                f"shape {list(m.shape)}"
            )
        per_channel = m.reshape(m.shape[0], -1)[:, 0]
        if not bool((m.reshape(m.shape[0], -1) == per_channel[:, None]).all()):
            raise ValueError("shift must be constant over space for a convolution")
        groups, out = first.groups, first.out_channels
        summed = weight.flatten(2).sum(dim=2)  # [out, in / groups]
        s = per_channel.to(weight.dtype).reshape(groups, -1).repeat_interleave(out // groups, 0)
        delta = (summed * s).sum(dim=1)
    shifted = copy.deepcopy(model)
    target = dict(shifted.named_modules())[layer]
    with torch.no_grad():
        if target.bias is None:
            target.bias = nn.Parameter(-delta.clone(), requires_grad=target.weight.requires_grad)
        else:
            target.bias.sub_(delta.to(target.bias.dtype))
    return shifted


def _check_same_outputs(before: Any, after: Any, rtol: float, layer: str) -> None:
    """Refuse a copy whose outputs on the shifted inputs are not the model's."""
    before, after = logits_of(before), logits_of(after)
    scale = before.detach().abs().max().clamp_min(1e-12)
    error = (after.detach() - before.detach()).abs().max()
    if not bool(error <= rtol * scale):
        raise ValueError(
            f"the copy with the shift compensated in layer {layer!r} does not reproduce the "
            f"model's outputs (max error {float(error):.3g}, outputs up to {float(scale):.3g}): "
            "layer must be the first layer applied to the inputs"
        )

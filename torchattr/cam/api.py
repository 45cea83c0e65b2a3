"""``cam``: the shared path of the twelve CAM methods (formulas: :mod:`torchattr.cam.formulas`).

Activations and gradients are captured with forward hooks that exist for the
duration of the call only and act in that call only (other threads' forwards of the same model do
not see them); everything stays a tensor on the model's device. A wrapped model (DataParallel,
DDP, ``torch.compile``) is explained through the module it holds, called directly. The gradient
methods run one forward in which autograd records from the first hooked layer on (nothing before
it is kept for the backward) and one ``torch.autograd.grad`` down to the layer's output, batched
over K classes with ``is_grads_batched``; no parameter gradient is computed.

Vision transformers: a layer output ``[B, N, D]`` for an image input ``[B, C, H, W]`` is read as
tokens and turned into a grid ``[B, D, h, w]`` (channels = the embedding). The automatic rule
drops the first token (the class token) when the remaining ``N - 1`` tokens tile a grid with the
image's aspect ratio (``h / w = H / W``), else keeps all ``N`` tokens when they do; otherwise pass
``reshape=(h, w)`` (the first ``N - h w`` tokens are dropped) or a callable that maps a layer
output ``[N_rows, ...]`` to ``[N_rows, C, h, w]`` (applied to activations and gradients alike),
e.g. ``reshape=lambda t: t.permute(0, 3, 1, 2)`` for channels-last outputs ``[B, h, w, C]``
(Swin), which would otherwise be read as channels-first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchattr._core.checks import check_choice, check_positive_int, keywords
from torchattr._core.chunking import row_ranges
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import Problem, accumulation_dtype, forward_scores, prepare
from torchattr._core.inputs import Inputs, call_model
from torchattr._core.layers import hooked
from torchattr._core.progress import Progress, check_progress, reporting
from torchattr._core.state import untouched
from torchattr._core.targets import Target, row_scores
from torchattr._core.wrapped import unwrap
from torchattr.cam.capture import activations_and_gradients, capture_outputs
from torchattr.cam.formulas import (
    GRADIENT_MAPS,
    METHODS,
    ablationcam_weights,
    combine,
    effective_bias,
    eigencam_map,
    fullgrad_term,
    normalise,
    randomcam_weights,
    scorecam_weights,
    upsample,
    weighted_sum,
)
from torchattr.cam.grids import (
    Reshape,
    Space,
    as_grid,
    check_grid,
    check_map_dims,
    is_tokens,
    spatial,
)
from torchattr.cam.layers import LayerArg, bias_layers, resolve_cam_layers

__all__ = ["cam"]


@overload
def cam(
    model: Callable[..., Any],
    inputs: Inputs,
    target: Target = None,
    *,
    layer: LayerArg,
    method: str = "gradcam",
    size: int | Sequence[int] | None = None,
    chunk_size: int | None = None,
    reshape: Reshape = None,
    return_raw: Literal[False] = False,
    generator: torch.Generator | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor: ...


@overload
def cam(
    model: Callable[..., Any],
    inputs: Inputs,
    target: Target = None,
    *,
    layer: LayerArg,
    method: str = "gradcam",
    size: int | Sequence[int] | None = None,
    chunk_size: int | None = None,
    reshape: Reshape = None,
    return_raw: Literal[True],
    generator: torch.Generator | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor | list[Tensor]]: ...


@keywords(renamed={"batch_size": "chunk_size"})
def cam(
    model: Callable[..., Any],
    inputs: Inputs,
    target: Target = None,
    *,
    layer: LayerArg,
    method: str = "gradcam",
    size: int | Sequence[int] | None = None,
    chunk_size: int | None = None,
    reshape: Reshape = None,
    return_raw: bool = False,
    generator: torch.Generator | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor | tuple[Tensor, Tensor | list[Tensor]]:
    """Class activation map of ``layer`` for each sample's explained score, ``[B, H, W]`` in [0, 1].

    ``method`` is one of ``gradcam`` (default), ``hirescam``, ``gradcam_elementwise``,
    ``gradcam++``, ``xgradcam``, ``layercam``, ``eigencam``, ``eigengradcam``, ``scorecam``,
    ``ablationcam``, ``fullgrad``, ``randomcam``; the formulas are in :mod:`torchattr.cam.formulas`.

    Args:
        model: an ``nn.Module`` (or a callable whose forward runs ``layer``).
        inputs: images ``[B, C, H, W]`` (``[B, C, L]`` signals and ``[B, C, D, H, W]`` volumes
            work the same way); tuple / dict inputs: the first tensor is the image that sets
            the output size and that Score-CAM masks and FullGrad differentiates.
        target: ``None`` (argmax per sample), an int, a LongTensor ``[B]`` (one class per
            sample), ``[B, K]`` (maps ``[B, K, H, W]``) or a callable (see
            *Conventions > Targets* in the docs).
        layer: a submodule, its dotted name (``"layer4"``, ``"features.28"``; for a wrapped
            model with or without ``"module."`` / ``"_orig_mod."``) or a list of them (their
            maps are averaged). Its output must be ``[B, C, h, w]`` (or tokens
            ``[B, N, D]``, see ``reshape``) and it must run once per forward. For ``fullgrad``
            it selects where the bias layers are searched (``None``: the whole model).
        size: the output size (an int or ``(H, W)``); default: the input's spatial size.
        chunk_size: at most this many rows per model call (the ``B * C`` masked copies of
            Score-CAM and Ablation-CAM; the B rows of the others). ``None``: B. (``batch_size``
            is its deprecated former name.)
        reshape: how a token output ``[B, N, D]`` becomes a grid: ``None`` (automatic, see the
            module docstring), ``(h, w)`` or a callable ``[N, ...] -> [N, C, h, w]``.
        return_raw: also return the raw map: before relu, normalisation and upsampling
            (``[B, h, w]``, ``[B, K, h, w]``; a list with one per layer for several layers;
            ``fullgrad``: the sum of its terms at the output size).
        generator: random weights of ``randomcam``.
        forward_kwargs: keyword arguments passed to every model call, never explained (an
            attention mask); tensors with leading dimension B follow their sample into chunks
            and the masked / ablated copies.
        progress: ``scorecam`` / ``ablationcam``: True for a tqdm bar (when installed and
            stderr is a terminal) or a callable ``(done, total)`` called after each model call
            with the masked rows done (``total``: ``B * C`` summed over the layers).

    Returns:
        ``maps [B, H, W]`` (``[B, K, H, W]`` for a ``[B, K]`` target), at least float32; with
        ``return_raw=True`` the pair ``(maps, raw)``. ``eigencam`` does not depend on the
        target (its K maps are the same map); ``randomcam`` draws weights per sample and class.

    Cost: gradient methods: one forward and one backward of the batch, the backward only from
    the output down to the layer (autograd records from the layer on); ``fullgrad``: one
    forward and one backward down to the input; ``eigencam`` / ``randomcam``: one forward;
    ``scorecam`` / ``ablationcam``: one forward plus forwards of ``B * C`` rows, at most
    ``chunk_size`` per call. ``eigen*``: one batched SVD of ``[B, h w, C]``.

    Example::

        maps = ta.cam(model, images, labels, layer="layer4")                  # [B, H, W]
        maps, raw = ta.cam(model, images, layer=model.layer4, method="gradcam++",
                           return_raw=True)                                    # raw [B, h, w]
        vit_maps = ta.cam(vit, images, layer=vit.blocks[-1].norm1, method="layercam")
    """
    check_choice(method, "method", METHODS)
    check_progress(progress)
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    if not isinstance(return_raw, bool):
        raise TypeError(f"return_raw must be a bool, got {type(return_raw).__name__}")
    if reshape is not None and not callable(reshape):
        reshape = check_grid(reshape)
    if method == "fullgrad":
        layers, names = bias_layers(model, layer)
    else:
        layers, names = resolve_cam_layers(model, layer)
    # A wrapper (DataParallel, DDP, torch.compile) forwards to the module it holds: explain that
    # module directly (eager, one device), so that the hooks act on the modules that run.
    model, _ = unwrap(model)
    problem, target = prepare(model, inputs, target, forward_kwargs=forward_kwargs)
    image = problem.tensors[0]
    space = spatial(image, size)
    chunk = chunk_size or problem.batch
    with untouched(model, layers), buffers_kept(model):
        if method == "fullgrad":
            return _fullgrad(problem, layers, names, target, space, chunk, return_raw)
        if method in GRADIENT_MAPS:
            acts, grads, multi = activations_and_gradients(
                problem, layers, names, target, chunk, space, reshape
            )
            lows = [
                _gradient_map(method, a, g, multi, name, space, reshape)
                for a, g, name in zip(acts, grads, names)
            ]
        else:
            lows, multi = _forward_maps(
                method, problem, layers, names, target, space, chunk, reshape, generator, progress
            )
    maps = combine(lows, space.size)
    raws = [low.to(maps.dtype) for low in lows]
    if not multi:
        maps, raws = maps[:, 0], [r[:, 0] for r in raws]
    if return_raw:
        return maps, (raws[0] if len(raws) == 1 else raws)
    return maps


# --------------------------------------------------------------------------------------------
# Per-method maps
# --------------------------------------------------------------------------------------------


def _gradient_map(
    method: str,
    raw_acts: Tensor,
    raw_grads: Tensor,
    multi: bool,
    name: str,
    space: Space,
    reshape: Reshape,
) -> Tensor:
    """Low-resolution map ``[B, K, *s]`` of a gradient method from raw layer tensors."""
    batch = raw_acts.shape[0]
    dtype = accumulation_dtype(raw_acts)
    acts = as_grid(raw_acts, batch, name, space, reshape).to(dtype)
    k = raw_grads.shape[1] if multi else 1
    flat = raw_grads.flatten(0, 1) if multi else raw_grads
    grads = as_grid(flat, batch * k, name, space, reshape, "gradient").to(dtype)
    spatial = acts.shape[2:]
    a = acts.flatten(2).unsqueeze(1)
    g = grads.flatten(2).reshape(batch, k, *a.shape[2:])
    return GRADIENT_MAPS[method](a, g).reshape(batch, k, *spatial)


def _forward_maps(
    method: str,
    problem: Problem,
    layers: Sequence[nn.Module],
    names: Sequence[str],
    target: Target,
    space: Space,
    chunk: int,
    reshape: Reshape,
    generator: torch.Generator | None,
    progress: Progress = False,
) -> tuple[list[Tensor], bool]:
    """Low-resolution maps ``[B, K, *s]`` of the methods without gradients."""
    if method == "ablationcam" and callable(reshape):
        raise ValueError(
            "ablationcam zeroes one channel of the layer's own output, which a callable "
            "reshape hides: pass reshape=None or (h, w) (tokens), or use another method"
        )
    raw, outputs = capture_outputs(problem, layers, names, chunk)
    base, target = forward_scores(problem, problem.tensors, target, chunk, outputs)
    multi = base.ndim == 2
    k = base.shape[1] if multi else 1
    lows = []
    grids = []
    for name, r in zip(names, raw):
        grid = as_grid(r, problem.batch, name, space, reshape)
        check_map_dims(grid, name, space)
        grids.append(grid)
    # Score-/Ablation-CAM run B * C masked rows per layer (C: the grid's channels)
    masked_rows = [g.shape[0] * g.shape[1] for g in grids]
    total = sum(masked_rows) if method in ("scorecam", "ablationcam") else 0
    with reporting(progress, total, method) as report:
        for layer, name, r, grid, offset in zip(layers, names, raw, grids, _offsets(masked_rows)):
            acts = grid.to(accumulation_dtype(grid))
            spatial = acts.shape[2:]
            a = acts.flatten(2).unsqueeze(1)
            b, c = acts.shape[:2]
            done = partial(_shifted, report, offset)
            if method == "eigencam":
                low = eigencam_map(a).expand(b, k, -1)
            elif method == "randomcam":
                low = weighted_sum(randomcam_weights((b, k, c), a, generator), a)
            elif method == "scorecam":
                scores = _masked_scores(problem, acts, target, space, chunk, name, done)
                low = weighted_sum(scorecam_weights(scores.reshape(b, c, k).to(a.dtype)), a)
            else:
                tokens = is_tokens(r, space, reshape)
                scores = _ablated_scores(problem, layer, r, tokens, target, chunk, done)
                base_ = base.reshape(b, k).to(a.dtype)
                weights = ablationcam_weights(base_, scores.reshape(b, c, k).to(a.dtype))
                low = weighted_sum(weights, a)
            lows.append(low.reshape(b, k, *spatial))
    return lows, multi


def _offsets(sizes: Sequence[int]) -> list[int]:
    """Start of each part when parts of ``sizes`` are laid end to end."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _shifted(report: Callable[[int], None], offset: int, done: int) -> None:
    report(offset + done)


def _masked_scores(
    problem: Problem,
    acts: Tensor,
    target: Target,
    space: Space,
    chunk: int,
    name: str,
    done: Callable[[int], None] = lambda rows: None,
) -> Tensor:
    """Scores ``[B * C]`` (or ``[B * C, K]``) of the image times each channel's mask.

    Row ``r`` is sample ``r // C`` masked by ``minmax(upsample(A_{r % C}))`` (upsampled to the
    image's size); at most ``chunk`` rows per model call; masks are built per chunk.
    """
    image = problem.tensors[0]
    if space.image is None or len(space.image) != acts.ndim - 2:
        raise ValueError(
            f"scorecam masks the image input with the maps of layer {name}, "
            f"{list(acts.shape[2:])}, but inputs has shape {list(image.shape)}"
        )
    b, c = acts.shape[:2]
    flat = acts.flatten(0, 1).unsqueeze(1)
    scores = []
    with torch.no_grad():
        for start, stop in row_ranges(b * c, chunk):
            sample = torch.arange(start, stop, device=image.device) // c
            masks = normalise(upsample(flat[start:stop], space.image))
            masked = image[sample] * masks.to(image.dtype)
            rows = (masked, *(t[sample] for t in problem.tensors[1:]))
            output = call_model(problem.model, rows, problem.spec, problem.kwargs_for(sample))
            part = target[sample] if isinstance(target, Tensor) else target
            scores.append(row_scores(output, part))
            done(stop)
    return torch.cat(scores)


def _ablated_scores(
    problem: Problem,
    layer: nn.Module,
    raw: Tensor,
    tokens: bool,
    target: Target,
    chunk: int,
    done: Callable[[int], None] = lambda rows: None,
) -> Tensor:
    """Scores ``[B * C]`` (or ``[B * C, K]``) with channel ``r % C`` of sample ``r // C`` zeroed.

    The layer's output is replaced (core ``hooked``) by the clean activations with one channel
    zeroed: dim 1 of a channels-first output, the last dim of tokens ``[B, N, D]``.
    """
    device = raw.device
    channels = raw.shape[-1] if tokens else raw.shape[1]
    b = raw.shape[0]
    scores = []
    with torch.no_grad():
        for start, stop in row_ranges(b * channels, chunk):
            index = torch.arange(start, stop, device=device)
            sample, channel = index // channels, index % channels
            keep = 1 - F.one_hot(channel, channels).to(raw.dtype)
            shape = [stop - start] + [1] * (raw.ndim - 1)
            if tokens:
                shape[-1] = channels
            else:
                shape[1] = channels
            replacement = raw[sample] * keep.reshape(shape)
            rows = tuple(t[sample] for t in problem.tensors)
            with hooked(problem.model, (layer,), [replacement]):
                output = call_model(problem.model, rows, problem.spec, problem.kwargs_for(sample))
            part = target[sample] if isinstance(target, Tensor) else target
            scores.append(row_scores(output, part))
            done(stop)
    return torch.cat(scores)


def _fullgrad(
    problem: Problem,
    layers: tuple[nn.Module, ...],
    names: list[str],
    target: Target,
    space: Space,
    chunk: int,
    return_raw: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """FullGrad (Srinivas & Fleuret 2019) over the bias layers ``layers`` (see the module doc)."""
    image = problem.tensors[0]
    if space.image is None:
        raise ValueError(f"fullgrad needs an image input, got shape {list(image.shape)}")
    acts, grads, multi = activations_and_gradients(
        problem, layers, names, target, chunk, input_gradient=True
    )
    dtype = accumulation_dtype(image)
    x_grad = grads[-1].to(dtype)
    x = (image.unsqueeze(1) if multi else image).to(dtype)
    total = fullgrad_term(x * x_grad, multi, space.size)
    for module, a, g in zip(layers, acts, grads[:-1]):
        if not isinstance(a, Tensor) or a.ndim != image.ndim:
            continue  # not called, or not a spatial map [B, C, *s] (e.g. BatchNorm1d in a head)
        bias = effective_bias(module).to(dtype)
        shape = [1] * (g.ndim)
        shape[2 if multi else 1] = -1
        total = total + fullgrad_term(bias.reshape(shape) * g.to(dtype), multi, space.size)
    maps = normalise(total)
    raw = total
    if not multi:
        maps, raw = maps[:, 0], raw[:, 0]
    return (maps, raw) if return_raw else maps

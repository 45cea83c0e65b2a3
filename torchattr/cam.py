"""The CAM family: class activation maps from one layer's activations (and their gradients).

``A`` are the activations of the chosen layer, ``[B, C, h, w]`` (C channels on an h x w grid);
``G = d s / d A`` the gradient of each sample's explained score (same shape). Every method below
computes a low-resolution map ``cam [B, h, w]`` as a pure function of ``A`` and ``G`` (or of
extra forward passes); the shared path then makes it non-negative, upsamples it to the input's
size and rescales each sample to ``[0, 1]``:

=======================  =========================================================================
method                   low-resolution map (sums over h, w written ``sum_hw``; k = channel)
=======================  =========================================================================
gradcam                  ``w_k = mean_hw G_k``; ``cam = sum_k w_k A_k``
hirescam                 ``cam = sum_k G_k * A_k``
gradcam_elementwise      ``cam = sum_k relu(G_k * A_k)``
gradcam++                ``a = G^2 / (2 G^2 + sum_hw(A_k) G^3 + 1e-6)`` (0 where G = 0);
                         ``w_k = sum_hw relu(G_k) a_k``; ``cam = sum_k w_k A_k``
xgradcam                 ``w_k = sum_hw (G_k A_k) / (sum_hw A_k + 1e-7)``; ``cam = sum_k w_k A_k``
layercam                 ``cam = sum_k relu(G_k) * A_k``
eigencam                 ``M = A`` as ``[hw, C]``, centred per channel; ``cam = M v_1`` (first right
                         singular vector), signed so that it correlates positively with
                         ``sum_k M_k``; no gradient
eigengradcam             the same with ``M = G * A``
scorecam                 ``w = softmax_k s(x * m_k)``, ``m_k = minmax(upsample(A_k))``;
                         ``cam = sum_k w_k A_k``; no gradient, ``B * C`` masked forwards
ablationcam              ``w_k = (s - s_k) / s``, ``s_k`` the score with channel k of the layer's
                         output zeroed; ``cam = sum_k w_k A_k``; ``B * C`` forwards
fullgrad                 ``psi(|x * d s / d x|) + sum_l psi(|b_l * d s / d z_l|)`` over the Conv and
                         BatchNorm layers ``z_l`` with bias ``b_l`` (BatchNorm: ``beta - mu gamma /
                         sqrt(var + eps)``); ``psi``: min-max per sample, channel sum, upsample
randomcam                ``w_k ~ U(-1, 1)``; ``cam = sum_k w_k A_k`` (a sanity baseline)
=======================  =========================================================================

The map returned is ``minmax(upsample(relu(cam)))`` per sample (bilinear, ``align_corners=False``;
linear / trilinear for 1-D / 3-D layers), in ``[0, 1]``. Several layers average their maps and
rescale the mean. Activations and gradients are captured with forward hooks that exist for the
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

import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchattr._core.checks import check_choice, check_positive_int, keywords
from torchattr._core.chunking import row_ranges
from torchattr._core.contexts import call_hooks
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import Problem, accumulation_dtype, forward_scores, prepare
from torchattr._core.inputs import Inputs, call_model
from torchattr._core.layers import hooked, layer_name
from torchattr._core.progress import Progress, check_progress, reporting
from torchattr._core.state import untouched
from torchattr._core.targets import Target, output_cotangent, resolve_target, row_scores
from torchattr._core.wrapped import strip_prefix, unwrap

METHODS = (
    "gradcam",
    "hirescam",
    "gradcam_elementwise",
    "gradcam++",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "fullgrad",
    "randomcam",
)
LayerArg = nn.Module | str | Sequence[nn.Module | str] | None
Reshape = tuple[int, ...] | Callable[[Tensor], Tensor] | None
_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_BIAS_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------------------------
# The weightings: pure functions of A [B, 1, C, n] and G [B, K, C, n] -> cam [B, K, n]
# (n = h * w positions; K explained scores per sample, 1 unless the target is [B, K])
# --------------------------------------------------------------------------------------------


def weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``cam = sum_k w_k A_k``: weights ``[B, K, C]``, activations ``[B, 1, C, n]``.

    Returns ``[B, K, n]`` (one batched matrix product).
    """
    return (weights.unsqueeze(-2) @ acts).squeeze(-2)


def gradcam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_hw G_k``, ``cam = sum_k w_k A_k``."""
    return weighted_sum(grads.mean(dim=-1), acts)


def hirescam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``cam = sum_k G_k * A_k`` (no spatial averaging)."""
    return (grads * acts).sum(dim=2)


def gradcam_elementwise_map(acts: Tensor, grads: Tensor) -> Tensor:
    """Element-wise Grad-CAM: ``cam = sum_k relu(G_k * A_k)``."""
    return (grads * acts).relu().sum(dim=2)


def gradcampp_map(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018), with the usual exponential-free closed form.

    ``a = G^2 / (2 G^2 + sum_hw(A_k) G^3 + 1e-6)`` (0 where ``G = 0``),
    ``w_k = sum_hw relu(G_k) a_k``, ``cam = sum_k w_k A_k``.
    """
    g2 = grads.square()
    alpha = g2 / (2 * g2 + acts.sum(dim=-1, keepdim=True) * g2 * grads + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return weighted_sum((grads.relu() * alpha).sum(dim=-1), acts)


def xgradcam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_hw(G_k A_k) / (sum_hw A_k + 1e-7)``."""
    weights = (grads * acts).sum(dim=-1) / (acts.sum(dim=-1) + 1e-7)
    return weighted_sum(weights, acts)


def layercam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``cam = sum_k relu(G_k) * A_k``."""
    return (grads.relu() * acts).sum(dim=2)


def eigen_projection(matrices: Tensor) -> Tensor:
    """Projection of matrices ``[N, n, C]`` on their first principal component: ``[N, n]``.

    ``M`` is centred per column (channel) over the n positions; the projection is ``M v_1 =
    u_1 s_1`` (first singular triplet, one batched ``torch.linalg.svd``). Its sign is chosen so
    that it correlates positively with the channel sum ``M 1`` (SVD signs are arbitrary).
    """
    centred = matrices - matrices.mean(dim=-2, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    projection = u[..., 0] * s[..., :1]
    sign = torch.sign((projection * centred.sum(dim=-1)).sum(dim=-1, keepdim=True))
    return projection * torch.where(sign == 0, torch.ones_like(sign), sign)


def eigencam_map(acts: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): first principal component of ``A``, ``[B, 1, n]``."""
    return eigen_projection(acts[:, 0].transpose(-1, -2)).unsqueeze(1)


def eigengradcam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """Eigen-Grad-CAM: the first principal component of ``G * A``, ``[B, K, n]``."""
    product = grads * acts
    b, k, c, n = product.shape
    return eigen_projection(product.reshape(b * k, c, n).transpose(-1, -2)).reshape(b, k, n)


GRADIENT_MAPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": gradcam_map,
    "hirescam": hirescam_map,
    "gradcam_elementwise": gradcam_elementwise_map,
    "gradcam++": gradcampp_map,
    "xgradcam": xgradcam_map,
    "layercam": layercam_map,
    "eigengradcam": eigengradcam_map,
}


def scorecam_weights(scores: Tensor) -> Tensor:
    """Score-CAM (Wang et al. 2020): ``softmax_k`` of masked scores, ``[B, C, K] -> [B, K, C]``."""
    return scores.softmax(dim=1).transpose(1, 2)


def ablationcam_weights(base: Tensor, ablated: Tensor) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020): ``w_k = (s - s_k) / s``.

    ``base`` = s ``[B, K]``, ``ablated`` = s_k ``[B, C, K]``; weights ``[B, K, C]``.
    """
    return ((base.unsqueeze(1) - ablated) / base.unsqueeze(1)).transpose(1, 2)


def randomcam_weights(
    shape: tuple[int, int, int], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Random-CAM: ``w ~ U(-1, 1)`` of ``shape = (B, K, C)`` (drawn on the generator's device)."""
    device = like.device if generator is None else generator.device
    draw = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return (2 * draw - 1).to(like.device)


# --------------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------------


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
    ``ablationcam``, ``fullgrad``, ``randomcam``; the formulas are in :mod:`torchattr.cam`.

    Args:
        model: an ``nn.Module`` (or a callable whose forward runs ``layer``).
        inputs: images ``[B, C, H, W]`` (``[B, C, L]`` signals and ``[B, C, D, H, W]`` volumes
            work the same way); tuple / dict inputs: the first tensor is the image that sets
            the output size and that Score-CAM masks and FullGrad differentiates.
        target: ``None`` (argmax per sample), an int, a LongTensor ``[B]`` (one class per
            sample), ``[B, K]`` (maps ``[B, K, H, W]``) or a callable (see
            :mod:`torchattr._core.targets`).
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
        reshape = _check_grid(reshape)
    if method == "fullgrad":
        layers, names = _bias_layers(model, layer)
    else:
        layers, names = resolve_cam_layers(model, layer)
    # A wrapper (DataParallel, DDP, torch.compile) forwards to the module it holds: explain that
    # module directly (eager, one device), so that the hooks act on the modules that run.
    model, _ = unwrap(model)
    problem, target = prepare(model, inputs, target, forward_kwargs=forward_kwargs)
    image = problem.tensors[0]
    space = _spatial(image, size)
    chunk = chunk_size or problem.batch
    with untouched(model, layers), buffers_kept(model):
        if method == "fullgrad":
            return _fullgrad(problem, layers, names, target, space, chunk, return_raw)
        if method in GRADIENT_MAPS:
            acts, grads, multi = _activations_and_gradients(
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
    maps = _combine(lows, space.size)
    raws = [low.to(maps.dtype) for low in lows]
    if not multi:
        maps, raws = maps[:, 0], [r[:, 0] for r in raws]
    if return_raw:
        return maps, (raws[0] if len(raws) == 1 else raws)
    return maps


# --------------------------------------------------------------------------------------------
# Layers, sizes and grids
# --------------------------------------------------------------------------------------------


def resolve_cam_layers(model: Any, layer: LayerArg) -> tuple[tuple[nn.Module, ...], list[str]]:
    """Modules (and names for messages) of ``layer``: a module, a dotted name or a list of them.

    Names of a wrapped model (DataParallel, DDP, ``torch.compile``) resolve with or without the
    wrapper's prefix (``"module.layer4"`` or ``"layer4"``). An unknown name raises a ValueError
    listing the closest submodule names (difflib).
    """
    if layer is None:
        raise TypeError(
            "layer is required: pass the submodule (or its dotted name, e.g. 'layer4') whose "
            "activations explain the prediction"
        )
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not items:
        raise ValueError("layer is an empty list: expected at least one submodule")
    inner, prefix = unwrap(model)
    named = dict(inner.named_modules()) if isinstance(inner, nn.Module) else {}
    modules, names = [], []
    for item in items:
        if isinstance(item, str):
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"layer {item!r} is a name but model is a {type(model).__name__}, not an "
                    "nn.Module: pass the submodule itself"
                )
            found = item if item in named else strip_prefix(item, prefix)
            if found not in named or not found:
                raise ValueError(_unknown_layer(item, named))
            modules.append(named[found])
            names.append(repr(found))
        elif isinstance(item, nn.Module):
            modules.append(item)
            names.append(layer_name(inner, item))
        else:
            raise TypeError(
                f"layer must be an nn.Module, a dotted submodule name or a list of them, got "
                f"{type(item).__name__}"
            )
    return tuple(modules), names


def _unknown_layer(name: str, named: dict[str, nn.Module]) -> str:
    candidates = [n for n in named if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if close:
        hint = "close matches: " + ", ".join(repr(c) for c in close)
    else:
        top = [n for n in candidates if "." not in n][:10]
        hint = "top-level submodules: " + (", ".join(repr(t) for t in top) or "none")
    return f"layer {name!r} is not a submodule of the model; {hint}"


def _bias_layers(model: Any, layer: LayerArg) -> tuple[tuple[nn.Module, ...], list[str]]:
    """FullGrad's layers: every Conv / BatchNorm module with a bias inside ``layer`` (or model)."""
    if layer is None:
        if not isinstance(model, nn.Module):
            raise TypeError("fullgrad with layer=None needs an nn.Module model")
        roots: tuple[nn.Module, ...] = (model,)
    else:
        roots, _ = resolve_cam_layers(model, layer)
    found: dict[int, nn.Module] = {}
    for root in roots:
        for m in root.modules():
            if _effective_bias_exists(m):
                found.setdefault(id(m), m)
    if not found:
        raise ValueError(
            "fullgrad found no Conv or BatchNorm layer with a bias in layer "
            f"{'(the model)' if layer is None else repr(layer)}: nothing to decompose"
        )
    modules = tuple(found.values())
    return modules, [layer_name(unwrap(model)[0], m) for m in modules]


def _effective_bias_exists(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.bias is not None or m.running_mean is not None
    return isinstance(m, _BIAS_LAYERS) and m.bias is not None


def _effective_bias(m: nn.Module) -> Tensor:
    """The bias a layer adds per channel; BatchNorm (eval): ``beta - mu gamma / sqrt(var+eps)``."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = m.bias if m.bias is not None else m.running_mean
        bias = m.bias if m.bias is not None else torch.zeros_like(ref)
        if m.running_mean is None:
            return bias.detach()
        gamma = m.weight if m.weight is not None else torch.ones_like(ref)
        return (bias - m.running_mean * gamma / torch.sqrt(m.running_var + m.eps)).detach()
    return m.bias.detach()


@dataclass(frozen=True)
class _Space:
    """Where maps live: the spatial size of the image input (None: not an image) and the output."""

    image: tuple[int, ...] | None
    size: tuple[int, ...]

    @property
    def dims(self) -> int:
        return len(self.size)


def _spatial(image: Tensor, size: int | Sequence[int] | None) -> _Space:
    own = tuple(image.shape[2:]) if 3 <= image.ndim <= 5 else None
    if size is None:
        if own is None:
            raise ValueError(
                f"inputs has shape {list(image.shape)}: expected images [B, C, H, W] (or "
                "[B, C, L], [B, C, D, H, W]); pass size= to choose the map's size"
            )
        return _Space(own, own)
    dims = len(own) if own is not None else 2
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,) * dims
    if (
        not isinstance(size, Sequence)
        or not 1 <= len(size) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be a positive int or a tuple of 1-3 of them, got {size!r}")
    return _Space(own, tuple(size))


def _check_grid(reshape: Any) -> tuple[int, ...]:
    if (
        not isinstance(reshape, (tuple, list))
        or not 1 <= len(reshape) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in reshape)
    ):
        raise TypeError(
            f"reshape must be None, a grid (h, w) of positive ints or a callable, got {reshape!r}"
        )
    return tuple(reshape)


def token_grid(tokens: int, aspect: tuple[int, ...]) -> tuple[int, tuple[int, int]] | None:
    """(tokens dropped, (h, w)) for ``tokens`` tokens and an image of spatial size ``aspect``.

    Drops the first token (a class token) if the other ``tokens - 1`` tile an ``h x w`` grid with
    ``h / w = H / W``; else keeps all of them if they do; else None.
    """
    if len(aspect) != 2:
        return None
    height, width = aspect
    for dropped in (1, 0):
        n = tokens - dropped
        if n <= 0:
            continue
        h = round(math.sqrt(n * height / width))
        if h > 0 and n % h == 0 and h * width == (n // h) * height:
            return dropped, (h, n // h)
    return None


def _grid(
    x: Any, rows: int, name: str, space: _Space, reshape: Reshape, what: str = "output"
) -> Tensor:
    """A layer output ``[rows, ...]`` as a channels-first grid ``[rows, C, *s]``."""
    if not isinstance(x, Tensor):
        raise ValueError(
            f"layer {name} returned a {type(x).__name__}, not a Tensor: pick a submodule whose "
            "output is the feature map [B, C, h, w] (or tokens [B, N, D])"
        )
    if callable(reshape):
        y = reshape(x)
        if not isinstance(y, Tensor) or y.ndim < 3 or y.shape[0] != rows:
            got = _shape_text(y, rows) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"reshape turned the {what} of layer {name}, {_shape_text(x, rows)}, into "
                f"{got}: expected [B, C, h, w]"
            )
        return y
    if x.ndim < 3 or x.shape[0] != rows:
        raise ValueError(
            f"layer {name} {what} has shape {_shape_text(x, rows)}: expected [B, C, ...] "
            "(channels, then spatial dims) or tokens [B, N, D]; pass reshape= (a callable) to "
            "turn other layouts into [B, C, h, w]"
        )
    if reshape is not None and x.ndim != 3:
        raise ValueError(
            f"reshape={reshape} turns tokens [B, N, D] into a grid, but layer {name} {what} has "
            f"shape {_shape_text(x, rows)}: pass reshape=None (or a callable)"
        )
    if not _is_tokens(x, space, reshape):
        return x
    n = x.shape[1]
    if reshape is not None:
        grid, dropped = reshape, n - math.prod(reshape)
        if dropped < 0:
            raise ValueError(
                f"reshape={reshape} needs {math.prod(reshape)} tokens but layer {name} {what} "
                f"has {n}, shape {_shape_text(x, rows)}"
            )
    else:
        found = token_grid(n, space.image or space.size)
        if found is None:
            raise ValueError(
                f"layer {name} {what} has shape {_shape_text(x, rows)}, read as tokens "
                f"[B, N, D], but neither N = {n} nor N - 1 tokens tile a grid with the input's "
                f"aspect {space.image or space.size}; pass reshape=(h, w) (the first N - h*w "
                "tokens are dropped) or a callable"
            )
        dropped, grid = found
    return x[:, dropped:].transpose(1, 2).reshape(rows, x.shape[2], *grid)


def _shape_text(x: Tensor, rows: int) -> str:
    """``[B, 5]`` when the first dim is the batch, else the literal shape and a remark."""
    if x.ndim and x.shape[0] == rows:
        return "[" + ", ".join(["B", *(str(d) for d in x.shape[1:])]) + "]"
    return f"{list(x.shape)} (the batch, {rows} rows here, is not its first dim)"


def _is_tokens(x: Tensor, space: _Space, reshape: Reshape) -> bool:
    """A 3-D output is tokens ``[B, N, D]`` for a 2-D (or larger) map or with a grid reshape."""
    return not callable(reshape) and x.ndim == 3 and (reshape is not None or space.dims >= 2)


def _check_map_dims(grid: Tensor, name: str, space: _Space) -> None:
    if grid.ndim - 2 != space.dims:
        raise ValueError(
            f"layer {name} gives a map with {grid.ndim - 2} spatial dims {list(grid.shape[2:])} "
            f"but the output size {space.size} has {space.dims}: pass size= with "
            f"{grid.ndim - 2} entries or a layer with {space.dims} spatial dims"
        )


# --------------------------------------------------------------------------------------------
# Capturing activations and gradients
# --------------------------------------------------------------------------------------------


@contextmanager
def _tapped(
    layers: Sequence[nn.Module], names: Sequence[str], record: bool = False
) -> Iterator[tuple[list[Any], list[int]]]:
    """Forward hooks on ``layers`` for one model call; yields (captured outputs, call counts).

    ``record=False``: each output is captured as a copy, so that an in-place op after the layer
    (``ReLU(inplace=True)``) cannot rewrite it. ``record=True``: autograd starts recording at the
    first hooked layer (the call runs under ``torch.no_grad()``, whose exit restores the mode),
    each output ``z`` is captured as the tensor to differentiate with respect to (a leaf if
    nothing before it is recorded) and ``z.clone()`` goes on through the model, so in-place ops
    downstream neither rewrite ``z`` nor hit a leaf. Nothing before the layer is recorded,
    nested and chained layers all get their gradient. The hooks act only in this call's thread /
    context (:func:`~torchattr._core.contexts.call_hooks`) and are removed on exit.
    """
    captured: list[Any] = [None] * len(layers)
    calls = [0] * len(layers)

    def make_hook(slot: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            calls[slot] += 1
            if calls[slot] > 1:
                raise ValueError(
                    f"layer {names[slot]} runs more than once in one forward (a module reused, "
                    "like one activation shared by several blocks?): pick a module that runs "
                    "once, e.g. the block that contains it"
                )
            if not isinstance(output, Tensor) or not output.is_floating_point():
                captured[slot] = output  # refused with its shape or type after the call
                return None
            if not record:
                captured[slot] = output.detach().clone()
                return None
            torch.set_grad_enabled(True)
            z = output if output.requires_grad else output.detach().requires_grad_(True)
            captured[slot] = z
            return z.clone()

        return hook

    with call_hooks([(layer, make_hook(i)) for i, layer in enumerate(layers)]):
        yield captured, calls


def _never_called(calls: Sequence[int], names: Sequence[str]) -> None:
    for count, name in zip(calls, names):
        if count == 0:
            raise ValueError(
                f"layer {name} was never called by the model's forward: pass a submodule that "
                "the forward actually uses"
            )


def _check_output(out: Any, rows: int, name: str, space: _Space, reshape: Reshape) -> None:
    """The layer output is a float ``[B, C, *s]`` (or tokens) with the output's spatial dims."""
    grid = _grid(out, rows, name, space, reshape)
    if not grid.is_floating_point():
        raise ValueError(f"layer {name} output has dtype {grid.dtype}: expected floating point")
    _check_map_dims(grid, name, space)


def _activations_and_gradients(
    problem: Problem,
    layers: Sequence[nn.Module],
    names: Sequence[str],
    target: Target,
    chunk: int,
    space: _Space | None = None,
    reshape: Reshape = None,
    input_gradient: bool = False,
) -> tuple[list[Tensor | None], list[Tensor | None], bool]:
    """Activations ``A_l [B, ...]`` and gradients ``G_l = d s / d A_l`` (``[B, (K,) ...]``).

    One forward and one backward per chunk of rows, recorded from the first hooked layer on
    (see :func:`_tapped`) and pulled back with ``torch.autograd.grad`` (``is_grads_batched``
    over K classes). With ``space`` every layer must have run and have a map-shaped output;
    without it (FullGrad) a layer that did not run gives None. With ``input_gradient`` the
    image input is differentiated too and its gradient is appended to the gradients.
    """
    acts: list[list[Any]] = [[] for _ in layers]
    grads: list[list[Any]] = [[] for _ in range(len(layers) + input_gradient)]
    multi = False
    for start, stop in row_ranges(problem.batch, chunk):
        rows = tuple(t[start:stop] for t in problem.tensors)
        if input_gradient:
            rows = (rows[0].detach().requires_grad_(True), *rows[1:])
        with torch.no_grad(), _tapped(layers, names, record=True) as (captured, calls):
            if input_gradient:
                torch.set_grad_enabled(True)
            output = call_model(
                problem.model, rows, problem.spec, problem.kwargs_for(slice(start, stop))
            )
        if space is not None:
            _never_called(calls, names)
            for out, name in zip(captured, names):
                _check_output(out, stop - start, name, space, reshape)
        part = target[start:stop] if isinstance(target, Tensor) else target
        part = resolve_target(part, output, problem.target_range)
        cotangent, multi = output_cotangent(output, part)
        pairs = [
            (leaf, seed)
            for leaf, seed in zip(
                torch.utils._pytree.tree_leaves(output), torch.utils._pytree.tree_leaves(cotangent)
            )
            if isinstance(leaf, Tensor) and leaf.requires_grad
        ]
        wrt = [a for a in captured if isinstance(a, Tensor) and a.requires_grad]
        wrt += [rows[0]] if input_gradient else []
        pulled: Sequence[Tensor | None] = [None] * len(wrt)
        if pairs and wrt:
            pulled = torch.autograd.grad(
                [p for p, _ in pairs],
                wrt,
                [s for _, s in pairs],
                is_grads_batched=multi,
                allow_unused=True,
            )
        by_id = {id(x): g for x, g in zip(wrt, pulled)}
        k = torch.utils._pytree.tree_leaves(cotangent)[0].shape[0] if multi else 0
        for store, a in zip(acts, captured):
            store.append(a.detach() if isinstance(a, Tensor) else a)
        sources = [*captured, rows[0]] if input_gradient else captured
        for store, x in zip(grads, sources):
            store.append(_gradient_of(x, by_id, k))
        del output, captured, pulled, by_id, pairs, wrt, cotangent
    return [_join(parts) for parts in acts], [_join(parts) for parts in grads], multi


def _gradient_of(x: Any, by_id: dict[int, Tensor | None], k: int) -> Any:
    """The gradient of ``x``, ``[N, ...]`` (``[N, K, ...]`` when ``k``); zeros if unused."""
    if not isinstance(x, Tensor):
        return None
    g = by_id.get(id(x))
    if g is None:
        shape = (x.shape[0], k, *x.shape[1:]) if k else x.shape
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    return (g.movedim(0, 1) if k else g).detach()


def _join(parts: list[Any]) -> Any:
    if len(parts) == 1 or not all(isinstance(p, Tensor) for p in parts):
        return parts[0]
    return torch.cat(parts)


def _capture(
    problem: Problem, layers: Sequence[nn.Module], names: Sequence[str], chunk: int
) -> tuple[list[Tensor], list[Any]]:
    """Layer outputs ``[B, ...]`` (copies) and the model outputs of the clean batch, by chunks."""
    acts: list[list[Any]] = [[] for _ in layers]
    outputs = []
    with torch.no_grad():
        for start, stop in row_ranges(problem.batch, chunk):
            rows = tuple(t[start:stop] for t in problem.tensors)
            with _tapped(layers, names) as (captured, calls):
                outputs.append(
                    call_model(
                        problem.model, rows, problem.spec, problem.kwargs_for(slice(start, stop))
                    )
                )
            _never_called(calls, names)
            for store, a in zip(acts, captured):
                store.append(a)
    return [_join(parts) for parts in acts], outputs


# --------------------------------------------------------------------------------------------
# Per-method maps
# --------------------------------------------------------------------------------------------


def _gradient_map(
    method: str,
    raw_acts: Tensor,
    raw_grads: Tensor,
    multi: bool,
    name: str,
    space: _Space,
    reshape: Reshape,
) -> Tensor:
    """Low-resolution map ``[B, K, *s]`` of a gradient method from raw layer tensors."""
    batch = raw_acts.shape[0]
    dtype = accumulation_dtype(raw_acts)
    acts = _grid(raw_acts, batch, name, space, reshape).to(dtype)
    k = raw_grads.shape[1] if multi else 1
    flat = raw_grads.flatten(0, 1) if multi else raw_grads
    grads = _grid(flat, batch * k, name, space, reshape, "gradient").to(dtype)
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
    space: _Space,
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
    raw, outputs = _capture(problem, layers, names, chunk)
    base, target = forward_scores(problem, problem.tensors, target, chunk, outputs)
    multi = base.ndim == 2
    k = base.shape[1] if multi else 1
    lows = []
    grids = []
    for name, r in zip(names, raw):
        grid = _grid(r, problem.batch, name, space, reshape)
        _check_map_dims(grid, name, space)
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
                tokens = _is_tokens(r, space, reshape)
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
    space: _Space,
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
            masks = _normalise(_upsample(flat[start:stop], space.image))
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
    space: _Space,
    chunk: int,
    return_raw: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """FullGrad (Srinivas & Fleuret 2019) over the bias layers ``layers`` (see the module doc)."""
    image = problem.tensors[0]
    if space.image is None:
        raise ValueError(f"fullgrad needs an image input, got shape {list(image.shape)}")
    acts, grads, multi = _activations_and_gradients(
        problem, layers, names, target, chunk, input_gradient=True
    )
    dtype = accumulation_dtype(image)
    x_grad = grads[-1].to(dtype)
    x = (image.unsqueeze(1) if multi else image).to(dtype)
    total = _bias_term(x * x_grad, multi, space.size)
    for module, a, g in zip(layers, acts, grads[:-1]):
        if not isinstance(a, Tensor) or a.ndim != image.ndim:
            continue  # not called, or not a spatial map [B, C, *s] (e.g. BatchNorm1d in a head)
        bias = _effective_bias(module).to(dtype)
        shape = [1] * (g.ndim)
        shape[2 if multi else 1] = -1
        total = total + _bias_term(bias.reshape(shape) * g.to(dtype), multi, space.size)
    maps = _normalise(total)
    raw = total
    if not multi:
        maps, raw = maps[:, 0], raw[:, 0]
    return (maps, raw) if return_raw else maps


def _bias_term(product: Tensor, multi: bool, size: tuple[int, ...]) -> Tensor:
    """``psi(|v|)``: min-max per sample over channels and positions, channel sum, upsampled.

    ``[B, (K,) C, *s] -> [B, K, *size]``. Min-max is affine per sample, so the channel sum comes
    before the (linear) upsampling, which is the same as upsampling every channel.
    """
    v = product.abs() if multi else product.abs().unsqueeze(1)
    b, k, c = v.shape[:3]
    flat = v.reshape(b, k, -1)
    low, high = flat.amin(dim=-1), flat.amax(dim=-1)
    span = high - low
    summed = (flat.reshape(b, k, c, -1).sum(dim=2) - c * low.unsqueeze(-1)) / torch.where(
        span > 0, span, torch.ones_like(span)
    ).unsqueeze(-1)
    return _upsample(summed.reshape(b, k, *v.shape[3:]), size)


# --------------------------------------------------------------------------------------------
# The shared tail: relu, upsample, normalise, average layers
# --------------------------------------------------------------------------------------------


def _upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """``[B, K, *s] -> [B, K, *size]``: (bi/tri)linear, ``align_corners=False``."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode=_MODES[len(size)], align_corners=False)


def _normalise(maps: Tensor) -> Tensor:
    """Min-max to ``[0, 1]`` per ``[b, k]`` map; a constant map becomes 0."""
    flat = maps.flatten(2)
    low = flat.amin(dim=-1)
    span = flat.amax(dim=-1) - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    shape = (*maps.shape[:2], *([1] * (maps.ndim - 2)))
    return (maps - low.reshape(shape)) / span.reshape(shape)


def _combine(lows: Sequence[Tensor], size: tuple[int, ...]) -> Tensor:
    """``minmax(upsample(relu(cam)))`` per layer; several layers: min-max of their mean."""
    maps = [_normalise(_upsample(low.relu(), size)) for low in lows]
    if len(maps) == 1:
        return maps[0]
    return _normalise(torch.stack(maps).mean(dim=0))

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
linear / trilinear for 1-D / 3-D layers), in ``[0, 1]``. Several layers average
their maps and rescale the mean (:func:`combine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchattr._core.checks import check_generator

__all__ = [
    "GRADIENT_MAPS",
    "METHODS",
    "ablationcam_weights",
    "combine",
    "effective_bias",
    "eigen_projection",
    "eigencam_map",
    "eigengradcam_map",
    "fullgrad_term",
    "gradcam_elementwise_map",
    "gradcam_map",
    "gradcampp_map",
    "hirescam_map",
    "layercam_map",
    "normalise",
    "randomcam_weights",
    "scorecam_weights",
    "upsample",
    "weighted_sum",
    "xgradcam_map",
]

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

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


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
    check_generator(generator)
    device = like.device if generator is None else generator.device
    draw = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return (2 * draw - 1).to(like.device)


# --------------------------------------------------------------------------------------------
# The shared tail: relu, upsample, normalise, average layers
# --------------------------------------------------------------------------------------------


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """``[B, K, *s] -> [B, K, *size]``: (bi/tri)linear, ``align_corners=False``."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode=_MODES[len(size)], align_corners=False)


def normalise(maps: Tensor) -> Tensor:
    """Min-max to ``[0, 1]`` per ``[b, k]`` map; a constant map becomes 0."""
    flat = maps.flatten(2)
    low = flat.amin(dim=-1)
    span = flat.amax(dim=-1) - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    shape = (*maps.shape[:2], *([1] * (maps.ndim - 2)))
    return (maps - low.reshape(shape)) / span.reshape(shape)


def combine(lows: Sequence[Tensor], size: tuple[int, ...]) -> Tensor:
    """``minmax(upsample(relu(cam)))`` per layer; several layers: min-max of their mean."""
    maps = [normalise(upsample(low.relu(), size)) for low in lows]
    if len(maps) == 1:
        return maps[0]
    return normalise(torch.stack(maps).mean(dim=0))


def fullgrad_term(product: Tensor, multi: bool, size: tuple[int, ...]) -> Tensor:
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
    return upsample(summed.reshape(b, k, *v.shape[3:]), size)


def effective_bias(m: nn.Module) -> Tensor:
    """The bias a layer adds per channel; BatchNorm (eval): ``beta - mu gamma / sqrt(var+eps)``."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = m.bias if m.bias is not None else m.running_mean
        bias = m.bias if m.bias is not None else torch.zeros_like(ref)
        if m.running_mean is None:
            return bias.detach()
        gamma = m.weight if m.weight is not None else torch.ones_like(ref)
        return (bias - m.running_mean * gamma / torch.sqrt(m.running_var + m.eps)).detach()
    return m.bias.detach()

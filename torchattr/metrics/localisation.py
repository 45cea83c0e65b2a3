"""Localisation metrics: how much of a saliency map lies inside the ground-truth boxes.

Boxes are XYXY pixel coordinates with exclusive ends: a box ``(x1, y1, x2, y2)`` covers
``M[y1:y2, x1:x2]``. Coordinates outside the image are clipped to it (``0 <= x <= W``,
``0 <= y <= H``), unlike Python slicing, where negative numbers would wrap around.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

Boxes = Tensor | Sequence[Any]  # a bool mask [B, H, W], or B per-image [N_i, 4] boxes


def boxes_to_mask(
    boxes: Sequence[Any], height: int, width: int, device: torch.device | str | None = None
) -> Tensor:
    """Union of each image's boxes as a bool mask ``[B, H, W]``.

    ``boxes`` holds one entry per image: a ``[N_i, 4]`` tensor (or nested list) of integer XYXY
    coordinates with exclusive ends; ``N_i = 0`` (an empty list or a ``[0, 4]`` tensor) gives an
    all-False mask. ``M_b[y, x] = 1`` iff ``x1 <= x < x2`` and ``y1 <= y < y2`` for some box of
    image b. Built with a 2-D difference array (two cumulative sums), so the cost is
    ``O(B H W + sum_i N_i)`` whatever the box sizes. ``device`` defaults to the first tensor's
    device (CPU for lists).

    Example::

        mask = boxes_to_mask([torch.tensor([[1, 2, 4, 5]]), []], 8, 8)   # [2, 8, 8]
        mask[0].sum()   # 9 pixels: rows 2..4, columns 1..3
    """
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence):
        raise TypeError(
            "boxes must be a list with one [N_i, 4] box tensor per image, "
            f"got {type(boxes).__name__}"
        )
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if device is None:
        device = next((b.device for b in boxes if isinstance(b, Tensor)), torch.device("cpu"))
    per_image = [_image_boxes(b, i, device) for i, b in enumerate(boxes)]
    batch = len(per_image)
    if batch == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=device)
    counts = torch.tensor([len(b) for b in per_image], device=device)
    coords = torch.cat(per_image)  # [sum N_i, 4]
    image = torch.repeat_interleave(torch.arange(batch, device=device), counts)
    x1, x2 = coords[:, 0].clamp(0, width), coords[:, 2].clamp(0, width)
    y1, y2 = coords[:, 1].clamp(0, height), coords[:, 3].clamp(0, height)
    diff = torch.zeros((batch, height + 1, width + 1), dtype=torch.int32, device=device)
    ones = torch.ones(len(coords), dtype=torch.int32, device=device)
    for ys, xs, sign in ((y1, x1, 1), (y1, x2, -1), (y2, x1, -1), (y2, x2, 1)):
        diff.index_put_((image, ys, xs), sign * ones, accumulate=True)
    cover = diff.cumsum(1).cumsum(2)[:, :height, :width]
    return cover > 0


def proportional_energy(saliency: Tensor, boxes: Boxes) -> Tensor:
    """Share of each map's mass inside the boxes: ``PE_b = sum(S_b * M_b) / sum(S_b)``, ``[B]``.

    ``PE_b = 0`` when ``sum(S_b) = 0``. A map spread uniformly scores the boxes' area fraction
    ``sum(M_b) / (H W)``; a map entirely inside the boxes scores 1; an image without boxes
    scores 0.

    Args:
        saliency: non-negative maps ``[B, H, W]``, or ``[B, C, H, W]`` (summed over the channels
            first).
        boxes: a bool mask ``[B, H, W]``, or a list of B per-image ``[N_i, 4]`` XYXY boxes with
            exclusive ends (see :func:`boxes_to_mask`); an image may have none.

    Returns:
        ``[B]`` in [0, 1], on the saliency's device, float32 (float64 for float64 maps).

    Example::

        pe = proportional_energy(ta.saliency(model, images), boxes)   # [B]
    """
    maps = _saliency_maps(saliency)
    batch, height, width = maps.shape
    if isinstance(boxes, Tensor):
        mask = _check_mask(boxes, batch, height, width).to(maps.device)
    else:
        if not isinstance(boxes, Sequence) or isinstance(boxes, (str, bytes)):
            raise TypeError(
                "boxes must be a bool mask [B, H, W] or a list of per-image [N_i, 4] boxes, "
                f"got {type(boxes).__name__}"
            )
        if len(boxes) != batch:
            raise ValueError(f"boxes has {len(boxes)} entries but saliency has batch size {batch}")
        mask = boxes_to_mask(boxes, height, width, device=maps.device)
    inside = (maps * mask).sum(dim=(1, 2))
    total = maps.sum(dim=(1, 2))
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), 0)


def _saliency_maps(saliency: Tensor) -> Tensor:
    """Validate and channel-sum the maps: ``[B, H, W]`` in at least float32."""
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a tensor, got {type(saliency).__name__}")
    if saliency.dtype == torch.bool or saliency.is_complex():
        raise TypeError(f"saliency must hold real numbers, got dtype {saliency.dtype}")
    if saliency.ndim not in (3, 4):
        raise ValueError(
            f"saliency has shape {list(saliency.shape)}: expected [B, H, W] or [B, C, H, W] "
            "(add a batch dimension with .unsqueeze(0) for a single map)"
        )
    maps = saliency.detach()
    if maps.dtype != torch.float64:
        maps = maps.float()
    if maps.ndim == 4:
        maps = maps.sum(dim=1)
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("saliency contains NaN or inf values")
        if bool((maps < 0).any()):
            raise ValueError(
                "saliency has negative values: proportional energy needs a non-negative map "
                "(take .abs() or .clamp_min(0) first)"
            )
    return maps


def _check_mask(mask: Tensor, batch: int, height: int, width: int) -> Tensor:
    if mask.dtype != torch.bool:
        raise TypeError(
            f"a box mask must be a bool tensor, got dtype {mask.dtype} (use mask.bool(), or pass "
            "a list of per-image [N_i, 4] boxes)"
        )
    if tuple(mask.shape) != (batch, height, width):
        raise ValueError(
            f"box mask has shape {list(mask.shape)}: expected [B, H, W] = "
            f"{[batch, height, width]}, matching the saliency maps"
        )
    return mask


def _image_boxes(value: Any, index: int, device: torch.device | str) -> Tensor:
    """One image's boxes as a long ``[N, 4]`` tensor on ``device``, validated."""
    name = f"boxes[{index}]"
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be an [N, 4] tensor or nested list of numbers") from None
    if t.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.long, device=device)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} has shape {list(t.shape)}: expected [N, 4] XYXY boxes")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} has dtype {t.dtype}: expected integer pixel coordinates")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name} has fractional coordinates: expected integer pixels")
    t = t.long()
    if bool((t[:, 2] < t[:, 0]).any() | (t[:, 3] < t[:, 1]).any()):
        raise ValueError(f"{name} has a box with x2 < x1 or y2 < y1: expected XYXY order")
    return t

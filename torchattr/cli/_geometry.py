"""Between an image and the model input: padding to a square, and maps carried both ways.

``--pad square`` pads an image ``[C, H, W]`` with zeros (black, in pixel units, before
``--mean`` / ``--std``) to ``S x S``, ``S = max(H, W)``, centred (``top = (S - H) // 2``,
``left = (S - W) // 2``), before ``--resize``; a non-square X-ray is then scaled, not
distorted. A map made at the model's input size ``h x w`` is carried back to the image by
resizing it to ``S x S`` (bilinear) and cropping the padding (:func:`map_to_image`); without
padding it is resized to ``H x W``. :func:`map_to_input` is the way there (for ROAD): a map of
the image's size padded with zeros and resized to the model input.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

PADS = ("square",)


def square_padding(size: tuple[int, int]) -> tuple[int, int, int]:
    """``(S, top, left)`` of centring an ``H x W`` image in an ``S x S`` square."""
    height, width = size
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def pad_square(image: Tensor) -> Tensor:
    """``[..., H, W]`` -> ``[..., S, S]``, zeros around the image, centred."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    side, top, left = square_padding((height, width))
    if side == height == width:
        return image
    return F.pad(image, (left, side - width - left, top, side - height - top))


def _resize(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(saliency.shape[-2:]) == tuple(size):
        return saliency
    return F.interpolate(
        saliency[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )[0, 0]


def map_to_image(saliency: Tensor, size: tuple[int, int], pad: str | None = None) -> Tensor:
    """A map ``[h, w]`` (the model input's size) carried back to the image's ``(H, W)``.

    Without padding: bilinear resize to ``(H, W)``. With ``pad="square"``: resize to
    ``S x S`` and crop ``[top : top + H, left : left + W]`` (:func:`square_padding`).
    """
    if pad is None:
        return _resize(saliency, size)
    side, top, left = square_padding(size)
    square = _resize(saliency, (side, side))
    return square[top : top + size[0], left : left + size[1]]


def map_to_input(saliency: Tensor, size: tuple[int, int], pad: str | None = None) -> Tensor:
    """A map ``[H, W]`` of the image carried to the model input's ``size``: padded with zeros
    to a square when ``pad="square"``, then resized (bilinear)."""
    if pad is not None:
        saliency = pad_square(saliency)
    return _resize(saliency, size)


def is_finite(values: Tensor) -> bool:
    """Whether every value is finite."""
    return bool(torch.isfinite(values).all())

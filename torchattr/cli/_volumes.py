"""Volumes through the commands: maps ``[D, H, W]``, NIfTI outputs, voxel masks, 3-D views.

A volume is an input read as ``[C, D, H, W]`` (a multi-frame DICOM file, a 3-D NIfTI file; see
:mod:`torchattr.cli._data.medical`); the model takes ``[B, C, D, H, W]``. What differs from
2-D images, and lives here:

* :func:`finish_map`: a raw map ``[d, h, w]`` (or ``[h, w]``) as stored: brought to the
  input's size (trilinear / bilinear) and min-max normalised over the *whole* volume,
  ``(S - min S) / (max S - min S)`` (not slice by slice, so slices stay comparable);
* :func:`save_outputs`: the ``.npy`` map and, for a NIfTI input, ``<name>.nii.gz`` with the
  input's affine and voxel layout (written first, so a complete ``.npy`` implies its NIfTI);
* :func:`mask_localisation`: the four localisation metrics against a voxel (or pixel) mask;
* :func:`volume_view`: orthogonal mid-slices and maximum-intensity projections with the map
  and the mask outline, as one RGB picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from torchattr import metrics
from torchattr.cli._data.base import ImageSet
from torchattr.cli._data.masks import check_mask_size, read_mask
from torchattr.cli._data.medical import nifti_map_bytes
from torchattr.io import normalize_map, save_map, write_atomic

MASK_COLOR = (0, 255, 0)


def is_volume(size: Sequence[int] | None) -> bool:
    """Whether a spatial size is a volume's ``(D, H, W)``."""
    return size is not None and len(size) == 3


def finish_map(raw: Tensor, size: Sequence[int]) -> Tensor:
    """A map as stored: ``raw`` ``[d, h, w]`` resized to ``size = (D, H, W)`` (trilinear;
    ``[h, w]`` bilinear), then ``(S - min S) / (max S - min S)`` over all its voxels, ``[D, H, W]``
    float32 in [0, 1] (a constant map becomes zeros)."""
    size = tuple(int(s) for s in size)
    if tuple(raw.shape) != size:
        mode = "trilinear" if len(size) == 3 else "bilinear"
        raw = F.interpolate(raw[None, None].float(), size=size, mode=mode, align_corners=False)[
            0, 0
        ]
    return normalize_map(raw.reshape(1, -1)).reshape(size)


def map_stem(file_name: str) -> str | None:
    """The image name of a map file ``<name>.npy`` or ``<name>.nii.gz`` (else None)."""
    for suffix in (".npy", ".nii.gz"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return None


def save_outputs(images: ImageSet, folder: Path, name: str, saliency: Tensor) -> Path:
    """Write ``folder/<name>.npy`` and, for a NIfTI input, ``folder/<name>.nii.gz`` first."""
    space = images.nifti_space(name)
    if space is not None:
        affine, stored_shape = space
        data = nifti_map_bytes(saliency.detach().cpu().numpy(), affine, stored_shape)
        write_atomic(folder / f"{name}.nii.gz", data)
    return save_map(folder / f"{name}.npy", saliency)


def mask_localisation(saliency: Tensor, mask: Tensor, tolerance: float) -> dict[str, Any]:
    """The localisation metrics of one map against one mask (same shape, ``[H, W]`` or
    ``[D, H, W]``); ``boxes`` is 1 for a non-empty mask, and an empty one gives ``None``s.

    The library's metrics take the voxel mask as they take a pixel mask
    (:mod:`torchattr.metrics.localisation`): proportional energy, saliency focus and relevance
    rank accuracy over the voxels, and the pointing game counts a maximum as a hit when its
    Euclidean distance in voxels to the mask is at most ``tolerance``.
    """
    if not bool(mask.any()):
        return localisation_scores(saliency, None, tolerance, 0)
    return localisation_scores(saliency, mask[None], tolerance, 1)


def localisation_scores(
    saliency: Tensor, truth: Any, tolerance: float, count: int
) -> dict[str, Any]:
    """``{"boxes": count, metric: value}`` of the four localisation metrics of one map
    (``[H, W]`` or ``[D, H, W]``) against ``truth`` (a ``[1, ...]`` mask or a list of one box
    tensor, as :mod:`torchattr.metrics.localisation` takes it); ``None`` values when
    ``count`` is 0 (no ground truth)."""
    names = ("proportional_energy", "saliency_focus", "pointing_game", "relevance_rank_accuracy")
    if count == 0:
        return {"boxes": 0, **{name: None for name in names}}
    maps = saliency[None]
    return {
        "boxes": count,
        "proportional_energy": float(metrics.proportional_energy(maps, truth)[0]),
        "saliency_focus": float(metrics.saliency_focus(maps, truth)[0]),
        "pointing_game": float(metrics.pointing_game(maps, truth, tolerance=tolerance)[0]),
        "relevance_rank_accuracy": float(metrics.relevance_rank_accuracy(maps, truth)[0]),
    }


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def volume_view(
    viz: Any,
    pixels: Tensor,
    saliency: Any,
    mask: Tensor | None,
    *,
    cmap: str,
    alpha: float,
    threshold: float,
) -> np.ndarray:
    """One RGB ``uint8`` picture of a volume ``[C, D, H, W]`` and its map ``[D, H, W]``.

    Four panels side by side, each :func:`torchattr.viz.overlay` of the image and the map on
    one plane, with the mask's outline (its voxels that have a background 4-neighbour in the
    plane) drawn in green: the axial mid-slice ``z = D // 2`` ``[H, W]``, the coronal
    ``y = H // 2`` ``[D, W]``, the sagittal ``x = W // 2`` ``[D, H]``, and the maximum-intensity
    projections along ``D`` of the image, the map and the mask ``[H, W]``. The image is scaled
    to [0, 1] over the whole volume first (when it is not already), so panels share one grey
    scale. Panels are on the voxel grid (no spacing correction).
    """
    volume = pixels[:3] if pixels.shape[0] >= 3 else pixels[:1]
    volume = volume.float()
    low, high = float(volume.min()), float(volume.max())
    if low < 0 or high > 1:
        volume = (volume - low) / (high - low) if high > low else torch.zeros_like(volume)
    # One cut for the whole volume (viz.cut_volume), then every panel shows its non-zero voxels.
    heat = torch.as_tensor(viz.cut_volume(np.asarray(saliency), threshold), dtype=torch.float32)
    threshold = 0.0
    depth, height, width = heat.shape
    planes = [
        (volume[:, depth // 2], heat[depth // 2], None if mask is None else mask[depth // 2]),
        (
            volume[:, :, height // 2],
            heat[:, height // 2],
            None if mask is None else mask[:, height // 2],
        ),
        (
            volume[..., width // 2],
            heat[..., width // 2],
            None if mask is None else mask[..., width // 2],
        ),
        (volume.amax(dim=1), heat.amax(dim=0), None if mask is None else mask.any(dim=0)),
    ]
    panels = []
    for image, plane, region in planes:
        picture = viz.overlay(image, plane, cmap=cmap, alpha=alpha, threshold=threshold)
        panels.append(draw_outline(picture, region) if region is not None else picture)
    return side_by_side(panels)


def draw_outline(picture: np.ndarray, mask: Tensor | np.ndarray) -> np.ndarray:
    """``picture`` ``[H, W, 3]`` with the outline of ``mask`` ``[H, W]`` in green: the mask
    pixels with a 4-neighbour outside it (or on the border)."""
    region = np.asarray(mask, dtype=bool)
    padded = np.pad(region, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & region
    out = picture.copy()
    out[region & ~inner] = MASK_COLOR
    return out


def side_by_side(panels: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """RGB panels in one row, top-aligned on a white background, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for panel in panels:
        out[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return out


def mask_row(
    masks: dict[str, Path], name: str, saliency: Tensor, tolerance: float
) -> dict[str, Any]:
    """The localisation metrics of image ``name``'s map against its ``--masks`` file (an image
    without a mask file, or with an empty mask, gets ``None``s)."""
    if name not in masks:
        return mask_localisation(saliency, torch.zeros(saliency.shape, dtype=torch.bool), 0)
    mask = check_mask_size(read_mask(masks[name]), saliency.shape, masks[name])
    return mask_localisation(saliency, mask, tolerance)


def view_mask(masks: dict[str, Path], name: str, size: Sequence[int] | None) -> Tensor | None:
    """Image ``name``'s ``--masks`` foreground for ``view`` (None without a mask file)."""
    if name not in masks or size is None:
        return None
    return check_mask_size(read_mask(masks[name]), size, masks[name])

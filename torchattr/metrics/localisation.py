"""Localisation metrics: how well a saliency map agrees with the ground-truth boxes.

``S`` is a non-negative map ``[H, W]`` (channels summed), ``M`` the union of the image's boxes as a
bool mask ``[H, W]``. Every metric returns one value per image, ``[B]``:

* :func:`proportional_energy`: ``sum(S * M) / sum(S)``, the share of the map's mass in the boxes;
* :func:`saliency_focus`: ``sum(S * M) / sum(M)``, the mean saliency inside the boxes;
* :func:`pointing_game`: whether the map's maximum lies in the boxes (within a tolerance; the
  share of its maxima that do, with ties);
* :func:`relevance_rank_accuracy`: ``|top-K(S) & M| / |M|`` with ``K = |M|``.

Ties are resolved the same way everywhere: by their expected value under a random order of the
tied pixels. The pointing game of a map with several equal maxima is the fraction of them that
lie in (or near) the boxes, and relevance rank accuracy counts the pixels tied at the K-th value
in proportion to their share inside the boxes. Neither depends on where the tied pixels lie or
on the pixel order, and a flat map scores chance (the boxes' area fraction, for a constant map),
not a hit. (Counting a plateau as a hit if *any* of its pixels touches the boxes would let a
constant map, or a map that is zero over most of the boxes, score perfectly.) See
:data:`torchattr.metrics.DIRECTIONS` for every metric's direction and caveats.

Boxes are XYXY pixel coordinates with exclusive ends: a box ``(x1, y1, x2, y2)`` covers
``M[y1:y2, x1:x2]``. Coordinates outside the image are clipped to it (``0 <= x <= W``,
``0 <= y <= H``), unlike Python slicing, where negative numbers would wrap around. Every metric
also takes the mask itself, a bool tensor ``[B, H, W]``. An image without boxes (an empty mask)
scores 0 / is not a hit, and so does an all-zero map.

Volumes work the same way, voxel for pixel: maps ``[B, D, H, W]`` (or ``[B, C, D, H, W]``,
channels summed) with a voxel mask ``[B, D, H, W]`` or XYZXYZ boxes ``(x1, y1, z1, x2, y2, z2)``
(``[N_i, 6]``, exclusive ends, covering ``M[z1:z2, y1:y2, x1:x2]``; MONAI's ``xyzxyz`` mode);
distances (the pointing game's tolerance) are Euclidean in voxels. A 4-D map is a volume when
its mask is 4-D or its boxes have 6 columns, else an image with channels: 3-D is a matter of
shapes. A volume of depth 1 scores exactly as the image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Boxes",
    "boxes_to_mask",
    "pointing_game",
    "proportional_energy",
    "relevance_rank_accuracy",
    "saliency_focus",
    "summed_maps",
]

Boxes = Tensor | Sequence[Any]  # a bool mask [B, (D,) H, W], or B per-image [N_i, 4 or 6] boxes


def boxes_to_mask(
    boxes: Sequence[Any],
    height: int,
    width: int,
    device: torch.device | str | None = None,
    *,
    depth: int | None = None,
) -> Tensor:
    """Union of each image's boxes as a bool mask ``[B, H, W]`` (``[B, D, H, W]`` with depth).

    ``boxes`` holds one entry per image: a ``[N_i, 4]`` tensor (or nested list) of integer XYXY
    coordinates with exclusive ends; ``N_i = 0`` (an empty list or a ``[0, 4]`` tensor) gives an
    all-False mask. ``M_b[y, x] = 1`` iff ``x1 <= x < x2`` and ``y1 <= y < y2`` for some box of
    image b. With ``depth`` (volumes), boxes are ``[N_i, 6]`` XYZXYZ ``(x1, y1, z1, x2, y2,
    z2)``, ``M_b[z, y, x] = 1`` iff also ``z1 <= z < z2``. Built with a difference array (one
    cumulative sum per dimension), so the cost is ``O(B |S| + sum_i N_i)`` whatever the box
    sizes. ``device`` defaults to the first tensor's device (CPU for lists).

    Example::

        mask = boxes_to_mask([torch.tensor([[1, 2, 4, 5]]), []], 8, 8)   # [2, 8, 8]
        mask[0].sum()   # 9 pixels: rows 2..4, columns 1..3
        boxes_to_mask([[[1, 2, 0, 4, 5, 2]]], 8, 8, depth=3).sum()   # 18 voxels
    """
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence):
        raise TypeError(
            "boxes must be a list with one [N_i, 4] box tensor per image, "
            f"got {type(boxes).__name__}"
        )
    sizes = (
        {"height": height, "width": width}
        if depth is None
        else {"depth": depth, "height": height, "width": width}
    )
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if device is None:
        device = next((b.device for b in boxes if isinstance(b, Tensor)), torch.device("cpu"))
    dims = len(sizes)
    per_image = [_image_boxes(b, i, device, dims) for i, b in enumerate(boxes)]
    batch = len(per_image)
    shape = tuple(sizes.values())  # (D,) H, W
    if batch == 0:
        return torch.zeros((0, *shape), dtype=torch.bool, device=device)
    counts = torch.tensor([len(b) for b in per_image], device=device)
    coords = torch.cat(per_image)  # [sum N_i, 2 dims], x first
    image = torch.repeat_interleave(torch.arange(batch, device=device), counts)
    # Per axis in (D,) H, W order: the start and stop columns (x is column 0, y 1, z 2).
    bounds = [
        (coords[:, a].clamp(0, n), coords[:, a + dims].clamp(0, n))
        for a, n in zip(reversed(range(dims)), shape)
    ]
    diff = torch.zeros((batch, *(n + 1 for n in shape)), dtype=torch.int32, device=device)
    ones = torch.ones(len(coords), dtype=torch.int32, device=device)
    for corner in itertools.product((0, 1), repeat=dims):
        index = tuple(pair[end] for pair, end in zip(bounds, corner))
        sign = -1 if sum(corner) % 2 else 1
        diff.index_put_((image, *index), sign * ones, accumulate=True)
    cover = diff
    for axis in range(1, dims + 1):
        cover = cover.cumsum(axis)
    return cover[(slice(None), *(slice(0, n) for n in shape))] > 0


def proportional_energy(saliency: Tensor, boxes: Boxes) -> Tensor:
    """Share of each map's mass inside the boxes: ``PE_b = sum(S_b * M_b) / sum(S_b)``, ``[B]``.

    ``PE_b = 0`` when ``sum(S_b) = 0``. A map spread uniformly scores the boxes' area fraction
    ``sum(M_b) / (H W)``; a map entirely inside the boxes scores 1; an image without boxes
    scores 0.

    Args:
        saliency: non-negative maps ``[B, H, W]``, or ``[B, C, H, W]`` (summed over the channels
            first).
        boxes: a bool mask ``[B, H, W]``, or a list of B per-image ``[N_i, 4]`` XYXY boxes with
            exclusive ends, clipped to the image (see :func:`boxes_to_mask`); an image may have
            none.

    Returns:
        ``[B]`` in [0, 1], on the saliency's device, float32 (float64 for float64 maps).

    Example::

        pe = proportional_energy(ta.saliency(model, images), boxes)   # [B]
    """
    maps, mask = _maps_and_mask(saliency, boxes)
    inside = (maps * mask).flatten(1).sum(dim=1)
    return _ratio(inside, maps.flatten(1).sum(dim=1))


def saliency_focus(saliency: Tensor, boxes: Boxes) -> Tensor:
    """Average saliency focus: the mean saliency inside the boxes, ``sum(S_b * M_b) / sum(M_b)``.

    ``[B]``, 0 for an image without boxes. Unlike :func:`proportional_energy` it is not
    normalised by the map's mass: it reads in the map's units (for maps scaled to [0, 1], a
    value in [0, 1]; 1 when the map is 1 everywhere in the boxes).

    Caution: higher is better only between maps of comparable scale and spread. It rewards
    diffuse maps: a map of ones everywhere scores 1, uniform noise in [0, 1] scores 0.5, and a
    sharp map scaled to max 1 typically scores less, however well it points at the boxes. Use
    :func:`proportional_energy` (mass share) or :func:`relevance_rank_accuracy` to rank methods.

    Args:
        saliency: non-negative maps ``[B, H, W]`` or ``[B, C, H, W]`` (channels summed).
        boxes: a bool mask ``[B, H, W]`` or a list of B per-image ``[N_i, 4]`` XYXY boxes,
            clipped to the image (see :func:`boxes_to_mask`).

    Returns:
        ``[B]``, float32 (float64 for float64 maps).

    Example::

        focus = saliency_focus(maps / maps.amax(dim=(1, 2), keepdim=True), boxes)   # [B]
    """
    maps, mask = _maps_and_mask(saliency, boxes)
    inside = (maps * mask).flatten(1).sum(dim=1)
    return _ratio(inside, mask.flatten(1).sum(dim=1).to(maps.dtype))


def pointing_game(saliency: Tensor, boxes: Boxes, tolerance: float = 0) -> Tensor:
    """Pointing game (Zhang et al. 2016): is each map's maximum in or near the boxes? ``[B]``.

    The points of map b are its maxima ``P_b = {p : S_b[p] = max S_b}``. A point ``p`` is a
    hit iff some pixel ``q`` of ``M_b`` has ``||p - q||_2 <= tolerance`` (Euclidean distance in
    pixels; ``tolerance=0``: ``p`` lies in ``M_b``; 15 px is a common choice), and the result is
    the fraction of the points that are hits,

        ``PG_b = |{p in P_b : d(p, M_b) <= tolerance}| / |P_b|``,

    1 or 0 for a map with a single maximum, and for a plateau of equal maxima the probability of
    a hit when the tie is broken at random (a plateau of 9 maxima, 3 of them in the box: 1/3),
    whatever the position of the plateau or the pixel order; consistent with
    :func:`relevance_rank_accuracy`'s ties. An image without boxes scores 0 (some
    implementations count an empty mask as a hit), and so does an all-zero map, which points
    nowhere.

    Args:
        saliency: non-negative maps ``[B, H, W]`` or ``[B, C, H, W]`` (channels summed).
        boxes: a bool mask ``[B, H, W]`` or a list of B per-image ``[N_i, 4]`` XYXY boxes,
            clipped to the image (see :func:`boxes_to_mask`).
        tolerance: a non-negative distance in pixels.

    Returns:
        ``[B]`` in [0, 1], float32 (float64 for float64 maps); ``hits.mean()`` is the pointing
        accuracy.

    Example::

        hits = pointing_game(maps, boxes, tolerance=15)   # [B] bool
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"tolerance must be a number of pixels, got {type(tolerance).__name__}")
    if not tolerance >= 0 or tolerance == float("inf"):
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    maps, mask = _maps_and_mask(saliency, boxes)
    peak = maps.flatten(1).amax(dim=1)  # [B]
    maxima = maps == peak.view(-1, *([1] * (maps.ndim - 1)))
    near = mask if tolerance == 0 else squared_distances(mask) <= float(tolerance) ** 2
    hits = (maxima & near).flatten(1).sum(dim=1).to(maps.dtype)
    share = hits / maxima.flatten(1).sum(dim=1).to(maps.dtype)  # >= 1 maximum per map
    return torch.where(peak > 0, share, 0)


def squared_distances(mask: Tensor) -> Tensor:
    """Squared Euclidean distance ``[B, *S]`` of every pixel (voxel) to the nearest True one of
    ``mask [B, *S]`` (``S = (H, W)`` or ``(D, H, W)``; ``inf`` for an empty mask), exact, in
    float64.

    Separable: ``G_0 = 0`` on the mask and ``inf`` elsewhere, then one pass per axis,
    ``G_a(.., t, ..) = min_{t'} G_{a-1}(.., t', ..) + (t - t')^2``; ``O(|S| sum(S))`` per image,
    in slabs that bound the memory to ~16M values.
    """
    out = []
    for image in mask:  # one image at a time
        dist = torch.where(image, 0.0, torch.inf).to(torch.float64)
        for axis in range(image.ndim):
            dist = _min_plus(dist, axis)
        out.append(dist)
    if not out:
        return torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    return torch.stack(out)


def _min_plus(dist: Tensor, axis: int) -> Tensor:
    """``out[.., t, ..] = min_{t'} dist[.., t', ..] + (t - t')^2`` along ``axis``."""
    moved = dist.movedim(axis, 0)  # [n, *rest]
    n = moved.shape[0]
    rest = moved.shape[1:]
    flat = moved.reshape(n, -1)  # [t', r]
    t = torch.arange(n, device=dist.device, dtype=torch.float64)
    square = (t[:, None] - t[None, :]) ** 2  # [t, t']
    slab = max(1, (1 << 24) // max(1, n * n))
    parts = [
        (flat[None, :, a : a + slab] + square[:, :, None]).amin(dim=1)
        for a in range(0, flat.shape[1], slab)
    ]
    return torch.cat(parts, dim=1).reshape(n, *rest).movedim(0, axis)


def relevance_rank_accuracy(saliency: Tensor, boxes: Boxes) -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022): ``|top-K(S_b) & M_b| / |M_b|``, ``K = |M_b|``.

    The share of the K most salient pixels that lie in the boxes, K being the boxes' area
    (their union): 1 when the boxes hold the K highest values. ``[B]``, 0 for an image without
    boxes and for an all-zero map.

    Ties at the K-th value are split evenly instead of by pixel position, as in
    :func:`pointing_game` (the expected value under a random order of the ties): if ``g``
    pixels are above the K-th largest value ``v`` and ``t`` pixels equal it, ``t_M`` of them in
    the boxes, the top K holds the ``g`` and ``K - g`` of the tied pixels, and counts
    ``|{S > v} & M| + (K - g) * t_M / t`` hits. The result does not depend on where the tied
    pixels lie; a constant map scores the boxes' area fraction ``K / (H W)``.

    Args:
        saliency: non-negative maps ``[B, H, W]`` or ``[B, C, H, W]`` (channels summed).
        boxes: a bool mask ``[B, H, W]`` or a list of B per-image ``[N_i, 4]`` XYXY boxes,
            clipped to the image (see :func:`boxes_to_mask`).

    Returns:
        ``[B]`` in [0, 1], float32 (float64 for float64 maps).

    Example::

        rra = relevance_rank_accuracy(maps, boxes)   # [B]
    """
    maps, mask = _maps_and_mask(saliency, boxes)
    flat, inside = maps.flatten(1), mask.flatten(1)
    k = inside.sum(dim=1)  # [B]
    ordered = flat.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp_min(0)[:, None])  # the K-th largest value, [B, 1]
    above, tied = flat > kth, flat == kth
    hits_above = (above & inside).sum(dim=1).to(maps.dtype)
    n_above = above.sum(dim=1).to(maps.dtype)
    share_tied = (tied & inside).sum(dim=1).to(maps.dtype) / tied.sum(dim=1).clamp_min(1)
    hits = hits_above + (k.to(maps.dtype) - n_above) * share_tied
    valid = (k > 0) & (flat.amax(dim=1) > 0)
    return torch.where(valid, hits / k.clamp_min(1).to(maps.dtype), 0)


def _maps_and_mask(saliency: Tensor, boxes: Boxes) -> tuple[Tensor, Tensor]:
    """Validated maps ``[B, *S]`` (channels summed) and the bool box mask ``[B, *S]``.

    A 4-D map is a volume ``[B, D, H, W]`` when the mask is 4-D or the boxes have 6 columns,
    else an image with channels ``[B, C, H, W]``.
    """
    if not isinstance(boxes, Tensor) and (
        not isinstance(boxes, Sequence) or isinstance(boxes, (str, bytes))
    ):
        raise TypeError(
            "boxes must be a bool mask [B, (D,) H, W] or a list of per-image [N_i, 4] (images) "
            f"or [N_i, 6] (volumes) boxes, got {type(boxes).__name__}"
        )
    maps = _saliency_maps(saliency, _spatial_dims(saliency, boxes))
    batch, *shape = maps.shape
    if isinstance(boxes, Tensor):
        return maps, _check_mask(boxes, batch, shape).to(maps.device)
    if len(boxes) != batch:
        raise ValueError(f"boxes has {len(boxes)} entries but saliency has batch size {batch}")
    *depth, height, width = shape
    mask = boxes_to_mask(
        boxes, height, width, device=maps.device, depth=depth[0] if depth else None
    )
    return maps, mask


def _spatial_dims(saliency: Any, boxes: Boxes) -> int | None:
    """2 or 3 for 4-D saliency (from the mask's rank or the boxes' columns), else None."""
    if not isinstance(saliency, Tensor) or saliency.ndim != 4:
        return None
    if isinstance(boxes, Tensor):
        return 3 if boxes.ndim == 4 else 2
    for entry in boxes:
        columns = entry.shape[-1] if isinstance(entry, Tensor) else _columns(entry)
        if columns in (4, 6) and (not isinstance(entry, Tensor) or entry.numel() > 0):
            return 3 if columns == 6 else 2
    return 2


def _columns(entry: Any) -> int | None:
    """The length of the first box of a nested-list entry (None if it has none)."""
    if isinstance(entry, Sequence) and entry and isinstance(entry[0], Sequence):
        return len(entry[0])
    return None


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, 0 where the denominator is 0."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), 0)


def summed_maps(saliency: Any, dims: int | None = None) -> Tensor:
    """Type- and shape-checked maps, channels summed: ``[B, *S]`` in at least float32.

    ``dims`` is the number of spatial dimensions, 2 (``S = (H, W)``) or 3 (``S = (D, H, W)``):
    ``[B, *S]`` maps are taken as they are and ``[B, C, *S]`` maps summed over ``C``. With
    ``dims=None``, ``[B, H, W]`` and ``[B, C, H, W]`` are images and ``[B, C, D, H, W]`` volumes
    (a ``[B, D, H, W]`` volume map needs ``dims=3``, or its box mask, to tell it from channels).
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a tensor, got {type(saliency).__name__}")
    if saliency.dtype == torch.bool or saliency.is_complex():
        raise TypeError(f"saliency must hold real numbers, got dtype {saliency.dtype}")
    allowed = {None: (3, 4, 5), 2: (3, 4), 3: (4, 5)}[dims]
    if saliency.ndim not in allowed:
        expected = {
            None: "[B, H, W], [B, C, H, W] or [B, C, D, H, W]",
            2: "[B, H, W] or [B, C, H, W]",
            3: "[B, D, H, W] or [B, C, D, H, W]",
        }[dims]
        raise ValueError(
            f"saliency has shape {list(saliency.shape)}: expected {expected} (add a batch "
            "dimension with .unsqueeze(0) for a single map)"
        )
    maps = saliency.detach()
    maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
    spatial = 2 if dims is None and maps.ndim < 5 else (dims or 3)
    return maps.sum(dim=1) if maps.ndim == spatial + 2 else maps


def _saliency_maps(saliency: Tensor, dims: int | None = None) -> Tensor:
    """Validate and channel-sum the maps: ``[B, *S]``, finite and non-negative."""
    maps = summed_maps(saliency, dims)
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("saliency contains NaN or inf values")
        if bool((maps < 0).any()):
            raise ValueError(
                "saliency has negative values: localisation metrics need a non-negative map "
                "(take .abs() or .clamp_min(0) first)"
            )
    return maps


def _check_mask(mask: Tensor, batch: int, shape: Sequence[int]) -> Tensor:
    layout = "[B, H, W]" if len(shape) == 2 else "[B, D, H, W]"
    if mask.dtype != torch.bool:
        raise TypeError(
            f"a box mask must be a bool tensor, got dtype {mask.dtype} (use mask.bool(), or pass "
            "a list of per-image boxes)"
        )
    if tuple(mask.shape) != (batch, *shape):
        raise ValueError(
            f"box mask has shape {list(mask.shape)}: expected {layout} = "
            f"{[batch, *shape]}, matching the saliency maps"
        )
    return mask


def _image_boxes(value: Any, index: int, device: torch.device | str, dims: int = 2) -> Tensor:
    """One image's boxes as a long ``[N, 2 dims]`` tensor on ``device``, validated."""
    name = f"boxes[{index}]"
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be an [N, 4] tensor or nested list of numbers") from None
    columns, layout = (4, "XYXY") if dims == 2 else (6, "XYZXYZ")
    if t.numel() == 0:
        return torch.zeros((0, columns), dtype=torch.long, device=device)
    if t.ndim != 2 or t.shape[1] != columns:
        raise ValueError(
            f"{name} has shape {list(t.shape)}: expected [N, {columns}] {layout} boxes"
        )
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} has dtype {t.dtype}: expected integer pixel coordinates")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name} has fractional coordinates: expected integer pixels")
    t = t.long()
    if bool((t[:, dims:] < t[:, :dims]).any()):
        raise ValueError(
            f"{name} has a box with x2 < x1, y2 < y1 or z2 < z1: expected {layout} order"
        )
    return t

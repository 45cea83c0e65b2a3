"""Looking at attribution maps: normalisation, colormaps, overlays, grids, figures, PNG files.

* :func:`normalize`: maps (any layout, torch or numpy) to ``[0, 1]`` (or ``[-1, 1]`` signed),
  channels reduced, one scale per map;
* :func:`colorize`, :func:`to_rgb`, :func:`draw_boxes`, :func:`overlay`: RGB ``uint8``
  ``[H, W, 3]`` pictures, made with numpy alone (the built-in ``"jet"`` and ``"gray"`` colormaps
  need no matplotlib);
* :func:`grid`: several pictures side by side in one array (labels need Pillow);
* :func:`plot_attributions`: a matplotlib figure, the image then one overlay per method;
* :func:`save_png`: an array (via Pillow) or a figure (via ``savefig``), written atomically.

``MODES``: the normalisation modes of :func:`normalize` (``minmax``, ``abs``, ``percentile``);
``BUILTIN_CMAPS``: the colormaps that need no matplotlib (``jet``, ``gray``).

The viewing convention of the clinical pipeline (see ``metrics.md``): hide the pixels below
``0.2 * max`` of the map, blend the colormap 50/50 over the image where the map is shown, draw
the ground-truth boxes, save a PNG::

    picture = overlay(image, saliency, threshold=0.2, alpha=0.5, boxes=boxes)   # uint8 [H, W, 3]
    save_png("overlays/img_0007.png", picture)

matplotlib and Pillow are optional (``pip install "torchattr[viz]"``) and are imported inside the
functions that need them, never when this module is imported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr._core.checks import check_choice
from torchattr.io import write_atomic

__all__ = [
    "BUILTIN_CMAPS",
    "MODES",
    "colorize",
    "colormap",
    "draw_boxes",
    "grid",
    "normalize",
    "overlay",
    "plot_attributions",
    "save_png",
    "to_rgb",
]

PathLike = str | os.PathLike[str]
Array = Tensor | np.ndarray

MODES = ("minmax", "abs", "percentile")
BUILTIN_CMAPS = ("jet", "gray")
LUT_SIZE = 256  # entries of every colormap's lookup table, as in matplotlib
INSTALL_HINT = 'pip install "torchattr[viz]"'

# matplotlib's "jet" (LinearSegmentedColormap segment data: (x, value) knots per channel).
_JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


# Normalisation


def normalize(
    attribution: Array,
    mode: str = "minmax",
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    signed: bool = False,
    batched: bool = False,
) -> Array:
    """Scale attribution maps for display, one scale per map: ``[0, 1]``, or ``[-1, 1]`` signed.

    Layouts: ``[H, W]`` (one map), ``[C, H, W]`` (one image's channels), ``[B, C, H, W]`` (a
    batch); ``batched=True`` reads a 3-D input as ``[B, H, W]`` instead (e.g. ``ta.saliency``
    or ``ta.cam`` output). Channels are reduced first, giving ``[H, W]`` or ``[B, H, W]``:
    ``R = max_c |A_c|`` (as :func:`torchattr.reduce_channels`, the saliency convention), or
    ``R = sum_c A_c`` when ``signed=True`` (a pixel's net contribution). Without channels
    ``R = A``. Then, per map:

    * ``"minmax"``: ``(R - min R) / (max R - min R)``;
    * ``"abs"``: ``|R| / max |R|``;
    * ``"percentile"``: ``|R|`` clipped to its ``percentiles = (lo, hi)`` (linear interpolation,
      as :func:`numpy.percentile`), then min-max scaled: outliers no longer flatten the rest.
      A map whose non-zero pixels are fewer than ``100 - hi`` percent clips to zeros;
    * ``signed=True`` (``"minmax"`` or ``"percentile"``) keeps the sign: ``R / max |R|``, or
      ``clip(R / q, -1, 1)`` with ``q`` the ``hi`` percentile of ``|R|`` (``lo`` is unused).

    A constant map (after the channel reduction) becomes zeros in every mode: it ranks no pixel
    above another.

    Args:
        attribution: a real tensor or numpy array, finite.
        mode: ``"minmax"``, ``"abs"`` or ``"percentile"``.
        percentiles: ``(lo, hi)`` with ``0 <= lo < hi <= 100``.
        signed: keep the sign (result in ``[-1, 1]``); not with ``mode="abs"``.
        batched: read a 3-D input as ``[B, H, W]`` rather than ``[C, H, W]``.

    Returns:
        The same kind as the input (tensor on its device, or numpy array), ``[H, W]`` or
        ``[B, H, W]``, float64 for float64 input, else float32.

    Example::

        maps = normalize(ta.integrated_gradients(model, images), "percentile")   # [B, H, W]
        heat = normalize(ta.saliency(model, images), batched=True)              # [B, H, W]
        signed = normalize(ta.input_x_gradient(model, images)[0], signed=True)  # [H, W]
    """
    as_numpy = isinstance(attribution, np.ndarray)
    values = _real_tensor(attribution, "attribution")
    check_choice(mode, "mode", MODES)
    for name, flag in (("signed", signed), ("batched", batched)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if signed and mode == "abs":
        raise ValueError("mode='abs' discards the sign: signed=True needs 'minmax' or 'percentile'")
    low, high = _check_percentiles(percentiles)
    if values.ndim not in (2, 3, 4) or values.numel() == 0:
        raise ValueError(
            f"attribution has shape {list(values.shape)}: expected [H, W], [C, H, W], "
            "[B, C, H, W] or, with batched=True, [B, H, W], not empty"
        )
    if not torch.isfinite(values).all():
        raise ValueError("attribution holds NaN or infinite values")
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.detach().to(dtype)
    maps = values
    if values.ndim == 4 or (values.ndim == 3 and not batched):  # reduce the channels
        maps = values.sum(dim=-3) if signed else values.abs().amax(dim=-3)
    out_shape = maps.shape
    flat = maps.reshape(-1, out_shape[-2] * out_shape[-1])
    constant = (flat.amax(dim=1) == flat.amin(dim=1))[:, None]
    if signed:
        magnitude = flat.abs()
        scale = magnitude.amax(dim=1) if mode == "minmax" else _percentile(magnitude, high)
        scale = scale[:, None]
        result = (flat / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-1, 1)
    elif mode == "abs":
        flat = flat.abs()
        result = flat / flat.amax(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    elif mode == "percentile":
        flat = flat.abs()
        lower, upper = _percentile(flat, low)[:, None], _percentile(flat, high)[:, None]
        result = _minmax_rows(torch.minimum(torch.maximum(flat, lower), upper))
    else:
        result = _minmax_rows(flat)
    result = torch.where(constant, torch.zeros_like(result), result).reshape(out_shape)
    return result.cpu().numpy() if as_numpy else result


def _percentile(rows: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile of each row ``[N, M] -> [N]`` (numpy's linear interpolation)."""
    ordered = rows.sort(dim=1).values
    position = q / 100 * (rows.shape[1] - 1)
    below, above = math.floor(position), math.ceil(position)
    fraction = position - below
    return ordered[:, below] + fraction * (ordered[:, above] - ordered[:, below])


def _minmax_rows(rows: Tensor) -> Tensor:
    low = rows.amin(dim=1, keepdim=True)
    span = rows.amax(dim=1, keepdim=True) - low
    scaled = (rows - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled)).clamp(0, 1)


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise TypeError(f"percentiles must be two numbers (lo, hi), got {percentiles!r}") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles!r}")
    return low, high


def _real_tensor(value: Any, name: str) -> Tensor:
    """A tensor view of a real tensor or numpy array (integers become float32)."""
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor or a numpy array, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value if value.is_floating_point() else value.float()


def _numpy(value: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a real tensor or array (CPU, detached)."""
    return _real_tensor(value, name).detach().to("cpu", torch.float64).numpy()


# Colours


def colormap(cmap: str = "jet") -> np.ndarray:
    """The colormap's lookup table: float64 ``[256, 3]`` RGB in [0, 1], from low to high.

    ``"jet"`` and ``"gray"`` are built in (the same tables as matplotlib's, so pictures do not
    depend on whether matplotlib is installed); any other name is looked up in
    ``matplotlib.colormaps`` (``"plasma"``, ``"viridis"``, ``"inferno"``, ...), which needs the
    ``viz`` extra.

    Example::

        colormap("jet")[-1]    # [0.5, 0, 0]: dark red
    """
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name, got {type(cmap).__name__}")
    points = np.linspace(0.0, 1.0, LUT_SIZE)
    if cmap == "gray":
        return np.repeat(points[:, None], 3, axis=1)
    if cmap == "jet":
        return np.stack([_segment_lut(points, knots) for knots in _JET], axis=1)
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            f"cmap {cmap!r} needs matplotlib ({INSTALL_HINT}); built in without it: "
            + ", ".join(repr(c) for c in BUILTIN_CMAPS)
        ) from None
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown cmap {cmap!r}: expected a matplotlib colormap name, e.g. 'jet'")
    return np.asarray(matplotlib.colormaps[cmap].resampled(LUT_SIZE)(points), np.float64)[:, :3]


def _segment_lut(points: np.ndarray, knots: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Piecewise-linear channel through ``knots`` at ``points``, computed as matplotlib does."""
    x, y = (np.array(column) for column in zip(*knots, strict=True))
    x, points = x * (len(points) - 1), points * (len(points) - 1)
    ind = np.searchsorted(x, points)[1:-1]
    distance = (points[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    inner = distance * (y[ind] - y[ind - 1]) + y[ind - 1]
    return np.clip(np.concatenate([y[:1], inner, y[-1:]]), 0.0, 1.0)


def colorize(values: Array, cmap: str = "jet") -> np.ndarray:
    """Colour values in [0, 1] with a colormap: ``[...] -> uint8 [..., 3]``.

    ``v`` takes entry ``min(floor(256 v), 255)`` of :func:`colormap` (as matplotlib does);
    values outside [0, 1] are clipped.

    Example::

        picture = colorize(normalize(ta.saliency(model, images)[0]))   # uint8 [H, W, 3]
    """
    data = _numpy(values, "values")
    if not np.isfinite(data).all():
        raise ValueError("values hold NaN or infinite values")
    return _to_uint8(colormap(cmap)[_lut_index(data)] * 255)


def _lut_index(values: np.ndarray) -> np.ndarray:
    """Lookup-table entries of values in [0, 1]: ``min(floor(256 v), 255)``."""
    return np.minimum(np.floor(np.clip(values, 0, 1) * LUT_SIZE), LUT_SIZE - 1).astype(np.intp)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


# Pictures


def to_rgb(image: Array, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as an RGB ``uint8`` array ``[H, W, 3]`` (grey levels repeated over R, G, B).

    Layouts: ``[H, W]``, ``[1, H, W]``, ``[H, W, 1]``, ``[3, H, W]``, ``[H, W, 3]``. When both
    channel positions fit (a ``3 x 3 x 3`` image), ``size = (H, W)`` decides, then channels first.
    Values: ``uint8`` as they are; other real numbers in [0, 1] are scaled by 255, anything else
    is min-max scaled to [0, 1] first (a constant image becomes black).

    Example::

        to_rgb(images[0])   # [1, 64, 64] float in [0, 1] -> uint8 [64, 64, 3]
    """
    is_uint8 = (isinstance(image, np.ndarray) and image.dtype == np.uint8) or (
        isinstance(image, Tensor) and image.dtype == torch.uint8
    )
    data = _numpy(image, "image")
    layout = _layout(data.shape, size)
    if layout == "chw":
        data = np.moveaxis(data, 0, -1)
    elif layout == "hw":
        data = data[..., None]
    if not np.isfinite(data).all():
        raise ValueError("image holds NaN or infinite values")
    if not is_uint8:
        if data.size and (data.min() < 0 or data.max() > 1):
            low, high = data.min(), data.max()
            data = (data - low) / (high - low) if high > low else np.zeros_like(data)
        data = data * 255
    return np.repeat(_to_uint8(data), 3 // data.shape[-1], axis=-1)


def _layout(shape: tuple[int, ...], size: tuple[int, int] | None) -> str:
    """``"hw"``, ``"chw"`` or ``"hwc"``: how an image's dimensions are laid out."""
    if len(shape) == 2:
        candidates = [("hw", shape)]
    elif len(shape) == 3:
        candidates = [("chw", shape[1:])] if shape[0] in (1, 3) else []
        candidates += [("hwc", shape[:2])] if shape[2] in (1, 3) else []
    else:
        candidates = []
    if not candidates:
        raise ValueError(
            f"image has shape {list(shape)}: expected [H, W], [1, H, W], [3, H, W], [H, W, 1] "
            "or [H, W, 3]"
        )
    fitting = [name for name, spatial in candidates if size is None or spatial == tuple(size)]
    if not fitting:
        raise ValueError(
            f"image has shape {list(shape)} but saliency has {list(size or ())}: "
            "the map must have the image's H x W"
        )
    return fitting[0]


def draw_boxes(
    image: np.ndarray, boxes: Any, *, color: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """Draw boxes as 1-pixel rectangle outlines on a copy of an RGB ``uint8`` ``[H, W, 3]`` image.

    ``boxes``: XYXY pixel coordinates with exclusive ends (``M[y1:y2, x1:x2]`` is the box, as in
    :mod:`torchattr.metrics`), a ``[N, 4]`` (or ``[4]``) tensor / array / nested list, possibly
    empty. Fractional coordinates widen the box to whole pixels (``floor`` the starts, ``ceil``
    the ends); boxes are clipped to the image, and one that ends up empty is not drawn. The
    outline is the box's own border pixels: rows ``y1`` and ``y2 - 1``, columns ``x1`` and
    ``x2 - 1``.

    Example::

        framed = draw_boxes(to_rgb(image), torch.tensor([[10, 12, 20, 18]]))
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("image must be a uint8 numpy array [H, W, 3] (see to_rgb)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image has shape {list(image.shape)}: expected [H, W, 3]")
    rgb = _check_color(color, "color")
    out = image.copy()
    height, width = image.shape[:2]
    for x1, y1, x2, y2 in _check_boxes(boxes):
        x1, x2 = max(math.floor(x1), 0), min(math.ceil(x2), width)
        y1, y2 = max(math.floor(y1), 0), min(math.ceil(y2), height)
        if x2 <= x1 or y2 <= y1:
            continue
        out[[y1, y2 - 1], x1:x2] = rgb
        out[y1:y2, [x1, x2 - 1]] = rgb
    return out


def _check_boxes(boxes: Any) -> np.ndarray:
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu().numpy()
    try:
        data = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"boxes must be XYXY numbers [N, 4], got {type(boxes).__name__}") from None
    if data.size == 0:
        return data.reshape(0, 4)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[1] != 4:
        raise ValueError(f"boxes has shape {list(np.shape(boxes))}: expected XYXY boxes [N, 4]")
    if not np.isfinite(data).all():
        raise ValueError("boxes hold NaN or infinite values")
    return data


def _check_color(color: Any, name: str) -> np.ndarray:
    try:
        values = [int(c) for c in color]
        ok = len(values) == 3 and all(0 <= c <= 255 and c == v for c, v in zip(values, color))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be three integers (R, G, B) in 0..255, got {color!r}")
    return np.array(values, dtype=np.uint8)


def overlay(
    image: Array,
    saliency: Array,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    boxes: Any = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """Blend a colour-mapped saliency map over an image: RGB ``uint8`` ``[H, W, 3]``.

    ``out = (1 - alpha) * image + alpha * 255 * cmap(S)`` (rounded) where the map is shown,
    ``out = image`` elsewhere (the image's own pixels, exactly). Without ``threshold`` the map is
    shown everywhere; with ``threshold = t`` only where ``S > 0`` and ``S >= t * max S`` (the
    pipeline's convention: ``t = 0.2``). Boxes are drawn last (see :func:`draw_boxes`).

    Args:
        image: ``[H, W]``, ``[1, H, W]``, ``[H, W, 1]``, ``[3, H, W]`` or ``[H, W, 3]``; ``uint8``
            or real numbers in [0, 1] (min-max scaled to [0, 1] if outside; see :func:`to_rgb`).
        saliency: ``[H, W]``, the image's size. Values in [0, 1] are used as they are; a map
            outside [0, 1] is min-max scaled to [0, 1] first (use :func:`normalize` to choose
            the scaling, e.g. percentile clipping).
        cmap: ``"jet"``, ``"gray"`` (built in) or a matplotlib colormap name.
        alpha: the map's weight in [0, 1].
        threshold: ``None`` or a fraction of the map's maximum in [0, 1].
        boxes: ``None`` or XYXY pixel boxes ``[N, 4]`` (ends exclusive), drawn in ``box_color``.

    Example::

        picture = overlay(images[0], maps[0], threshold=0.2, boxes=boxes[0])   # [H, W, 3] uint8
    """
    heat = _numpy(saliency, "saliency")
    if heat.ndim != 2:
        raise ValueError(f"saliency has shape {list(heat.shape)}: expected one map [H, W]")
    if not np.isfinite(heat).all():
        raise ValueError("saliency holds NaN or infinite values")
    base = to_rgb(image, size=heat.shape)
    alpha = _check_fraction(alpha, "alpha")
    if heat.size and (heat.min() < 0 or heat.max() > 1):
        heat = normalize(heat)
    colours = colormap(cmap)[_lut_index(heat)]
    blended = _to_uint8((1 - alpha) * base + alpha * 255 * colours)
    if threshold is not None:
        threshold = _check_fraction(threshold, "threshold")
        shown = (heat > 0) & (heat >= threshold * heat.max(initial=0.0))
        blended = np.where(shown[..., None], blended, base)
    if boxes is not None:
        blended = draw_boxes(blended, boxes, color=box_color)
    return blended


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def grid(
    images: Sequence[np.ndarray],
    *,
    ncols: int | None = None,
    pad: int = 2,
    scale: int = 1,
    labels: Sequence[str] | None = None,
    label_height: int = 14,
    fill: int = 255,
) -> np.ndarray:
    """Tile same-sized pictures into one RGB ``uint8`` array, row by row.

    Each picture ``[H, W, 3]`` (or grey ``[H, W]``) is enlarged ``scale`` times (nearest
    neighbour) and placed in a cell, ``ncols`` cells per row (default: all in one row), ``pad``
    pixels of ``fill`` between and around the cells. With ``labels`` (one per picture; needs
    Pillow) each cell gets a ``label_height``-pixel strip on top holding its label in black.
    Result: ``[rows * (scale H + label) + (rows + 1) pad, ncols * scale W + (ncols + 1) pad, 3]``.

    Example::

        panels = [to_rgb(image)] + [overlay(image, m, threshold=0.2) for m in maps]
        save_png("comparison.png", grid(panels, scale=4, labels=["image", *names]))
    """
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence) or not images:
        raise TypeError("images must be a non-empty list of uint8 arrays [H, W, 3] or [H, W]")
    cells = []
    for i, picture in enumerate(images):
        if not isinstance(picture, np.ndarray) or picture.dtype != np.uint8:
            raise TypeError(f"images[{i}] must be a uint8 numpy array, got {_describe(picture)}")
        if picture.ndim == 2:
            picture = np.repeat(picture[..., None], 3, axis=-1)
        if picture.ndim != 3 or picture.shape[2] != 3:
            raise ValueError(
                f"images[{i}] has shape {list(picture.shape)}: expected [H, W, 3] or [H, W]"
            )
        if cells and picture.shape != cells[0].shape:
            raise ValueError(
                f"images[{i}] has shape {list(picture.shape)} but images[0] has "
                f"{list(cells[0].shape)}: the pictures of a grid must have one size"
            )
        cells.append(picture)
    count = len(cells)
    ncols = count if ncols is None else _check_int(ncols, "ncols", 1)
    pad, scale = _check_int(pad, "pad", 0), _check_int(scale, "scale", 1)
    fill = _check_int(fill, "fill", 0)
    if fill > 255:
        raise ValueError(f"fill must be a grey level in 0..255, got {fill}")
    if labels is not None:
        if isinstance(labels, str) or len(labels) != count:
            raise ValueError(f"labels must be {count} strings, one per picture, got {labels!r}")
        label_height = _check_int(label_height, "label_height", 1)
    strip = label_height if labels is not None else 0
    ncols = min(ncols, count)
    rows = -(-count // ncols)
    height, width = cells[0].shape[0] * scale, cells[0].shape[1] * scale
    out = np.full(
        (rows * (height + strip) + (rows + 1) * pad, ncols * width + (ncols + 1) * pad, 3),
        fill,
        dtype=np.uint8,
    )
    for i, picture in enumerate(cells):
        top = pad + (i // ncols) * (height + strip + pad)
        left = pad + (i % ncols) * (width + pad)
        if labels is not None:
            out[top : top + strip, left : left + width] = _label(str(labels[i]), width, strip, fill)
        big = picture.repeat(scale, axis=0).repeat(scale, axis=1)
        out[top + strip : top + strip + height, left : left + width] = big
    return out


def _label(text: str, width: int, height: int, fill: int) -> np.ndarray:
    """``text`` in black on a ``fill`` strip ``[height, width, 3]`` (Pillow's default font)."""
    image_module, draw_module, font_module = _pillow()
    strip = image_module.new("RGB", (width, height), (fill, fill, fill))
    draw_module.Draw(strip).text((2, 1), text, fill=(0, 0, 0), font=font_module.load_default())
    return np.asarray(strip, dtype=np.uint8)


def _pillow() -> tuple[Any, Any, Any]:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError(f"writing PNG files and labels needs Pillow: {INSTALL_HINT}") from None
    return Image, ImageDraw, ImageFont


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _describe(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return type(value).__name__ + (f" of dtype {dtype}" if dtype is not None else "")


# Figures and files


def plot_attributions(
    image: Array,
    maps: Mapping[str, Array],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    boxes: Any = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
    image_title: str = "image",
    title: str | None = None,
    ncols: int | None = None,
    panel_size: float = 2.5,
) -> Any:
    """A matplotlib ``Figure``: the image, then one :func:`overlay` per method, titled by name.

    Panels go row by row, ``ncols`` per row (default: all in one row); there is one axes per
    panel (``1 + len(maps)``), without ticks. Each map is ``[H, W]`` (passed to
    :func:`overlay`, which min-max scales a map outside [0, 1]) or ``[C, H, W]`` (reduced with
    ``normalize(map, "abs")``). ``boxes`` are drawn on every panel. The figure is made without
    ``pyplot`` (nothing is shown or kept in a global registry): save it with :func:`save_png`.
    Needs matplotlib (``pip install "torchattr[viz]"``).

    Example::

        fig = plot_attributions(images[0], {"saliency": sal[0], "IG": ig[0]}, boxes=boxes[0],
                                threshold=0.2)
        save_png("comparison.png", fig)
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plot_attributions needs matplotlib: {INSTALL_HINT}") from None
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a non-empty dict {name: map}")
    size = panel_size
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"panel_size must be a positive number of inches, got {panel_size!r}")
    panels = [(image_title, to_rgb(image))]
    for name, one_map in maps.items():
        data = _numpy(one_map, f"maps[{name!r}]")
        if data.ndim == 3:
            data = normalize(data, "abs")
        elif data.ndim != 2:
            raise ValueError(
                f"maps[{name!r}] has shape {list(data.shape)}: expected [H, W] or [C, H, W]"
            )
        try:
            picture = overlay(
                image, data, cmap=cmap, alpha=alpha, threshold=threshold, box_color=box_color
            )
        except ValueError as error:
            raise ValueError(f"maps[{name!r}]: {error}") from None
        panels.append((str(name), picture))
    if boxes is not None:
        panels = [(name, draw_boxes(p, boxes, color=box_color)) for name, p in panels]
    ncols = len(panels) if ncols is None else min(_check_int(ncols, "ncols", 1), len(panels))
    rows = -(-len(panels) // ncols)
    figure = Figure(
        figsize=(size * ncols, size * rows + (0.4 if title else 0)), layout="constrained"
    )
    for i, (name, picture) in enumerate(panels):
        axes = figure.add_subplot(rows, ncols, i + 1)
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(name)
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure


def save_png(path: PathLike, image: Any, *, dpi: float | None = None) -> Path:
    """Write a picture or a matplotlib figure as a PNG file, atomically; return the final path.

    ``image``: a ``uint8`` array (or tensor) ``[H, W]`` (grey), ``[H, W, 3]`` (RGB) or
    ``[H, W, 4]`` (RGBA), written with Pillow; or a matplotlib ``Figure`` (anything with
    ``savefig``), written with ``savefig(format="png", dpi=dpi)``. The data go to a temporary
    file in the destination folder, which then replaces ``path`` (``os.replace``); missing parent
    folders are created and a ``.png`` suffix is appended when missing.

    Example::

        save_png("overlays/img_0007.png", overlay(image, saliency, threshold=0.2))
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        target = target.with_name(target.name + ".png")
    if hasattr(image, "savefig"):
        options: dict[str, Any] = {"format": "png"}
        if dpi is not None:
            options["dpi"] = dpi
        return write_atomic(target, lambda handle: image.savefig(handle, **options))
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"image must be a uint8 array or a Figure, got {_describe(image)}")
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 array or a Figure, got {_describe(image)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(
            f"image has shape {list(image.shape)}: expected [H, W], [H, W, 3] or [H, W, 4]"
        )
    pil_image = _pillow()[0].fromarray(np.ascontiguousarray(image))
    return write_atomic(target, lambda handle: pil_image.save(handle, format="PNG"))

"""Pixels -> model inputs (:class:`Preprocess`, recorded in ``run.json``) and maps back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from torchattr.cli._common import CommandError
from torchattr.cli._geometry import pad_square


@dataclass(frozen=True)
class Preprocess:
    """Pixel images ``[C, H, W]`` (volumes ``[C, D, H, W]``) -> model inputs: RGB, resize,
    ``(x - mean) / std``.

    ``window`` is how DICOM / NIfTI intensities became pixels (``--window``; applied by the
    reader, recorded here so that maps made with another window are not mixed); ``None`` is
    ``auto`` and is left out of the record. ``resize`` applies to 2-D images only: volumes are
    given to the model at their own size.
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    grayscale_to_rgb: bool = False
    window: str | tuple[float, float] | None = None
    pad: str | None = None  # "square": zero-pad to a centred square before resizing

    @classmethod
    def from_args(cls, args: Any, saved: dict[str, Any] | None = None) -> Preprocess:
        """From the command line; options not given fall back to ``saved`` (a run.json record)."""
        saved = saved or {}

        def pick(name: str) -> Any:
            value = getattr(args, name, None)
            return saved.get(name) if value is None else value

        resize, mean, std = pick("resize"), pick("mean"), pick("std")
        for option, values in (("--mean", mean), ("--std", std)):
            if values is not None and not all(math.isfinite(v) for v in values):
                raise CommandError(f"{option} must hold finite numbers, got {values}")
        if std is not None and any(v <= 0 for v in std):
            raise CommandError(f"--std must hold numbers > 0, got {list(std)}")
        return cls(
            resize=tuple(resize) if resize is not None else None,
            mean=tuple(float(v) for v in mean) if mean is not None else None,
            std=tuple(float(v) for v in std) if std is not None else None,
            grayscale_to_rgb=bool(pick("grayscale_to_rgb")),
            window=_window(pick("window")),
            pad=pick("pad"),
        )

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "resize": list(self.resize) if self.resize else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "grayscale_to_rgb": self.grayscale_to_rgb,
        }
        if self.pad:  # absent when off: older records match
            record["pad"] = self.pad
        if self.window is not None:
            record["window"] = self.window if isinstance(self.window, str) else list(self.window)
        return record

    def __call__(self, image: Tensor) -> Tensor:
        """``[C, H, W]`` pixels -> ``[C', H', W']`` model input (float32); volumes
        ``[C, D, H, W]`` -> ``[C', D, H, W]``."""
        if self.grayscale_to_rgb and image.shape[0] == 1:
            image = image.expand(3, *image.shape[1:])
        if (self.resize is not None or self.pad is not None) and image.ndim != 3:
            raise CommandError(
                f"--resize and --pad apply to 2-D images, and DATA holds volumes "
                f"({list(image.shape[1:])}): volumes are given to the model at their own size"
            )
        if self.pad is not None:
            image = pad_square(image)
        if self.resize is not None and tuple(image.shape[-2:]) != self.resize:
            image = F.interpolate(
                image[None], size=self.resize, mode="bilinear", align_corners=False, antialias=True
            )[0]
        if self.mean is not None or self.std is not None:
            channels = image.shape[0]
            spatial = image.ndim - 1
            mean = self._per_channel(self.mean, 0.0, channels, "--mean", spatial)
            std = self._per_channel(self.std, 1.0, channels, "--std", spatial)
            image = (image - mean) / std
        return image.contiguous()

    def baseline(self, value: float, channels: int, spatial: int = 2) -> Tensor:
        """The model input of a constant pixel image ``value``: ``[1, C, 1, 1]`` (``spatial``
        singleton dimensions after C: 3 for volumes)."""
        mean = self._per_channel(self.mean, 0.0, channels, "--mean", spatial)
        std = self._per_channel(self.std, 1.0, channels, "--std", spatial)
        return ((value - mean) / std)[None]

    @staticmethod
    def _per_channel(
        values: tuple[float, ...] | None,
        default: float,
        channels: int,
        option: str,
        spatial: int = 2,
    ) -> Tensor:
        if values is None:
            values = (default,)
        if len(values) not in (1, channels):
            raise CommandError(
                f"{option} has {len(values)} values but the images have {channels} channel(s) "
                "(after --grayscale-to-rgb): give one value or one per channel"
            )
        return torch.tensor(values, dtype=torch.float32).reshape(-1, *(1,) * spatial)


def _window(value: Any) -> str | tuple[float, float] | None:
    """``--window`` as given or as recorded (a list); ``auto`` is the default, ``None``."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        return value
    center, width = value
    return (float(center), float(width))


def resize_map(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    """A map ``[h, w]`` brought to ``size = (H, W)`` (bilinear; unchanged when equal)."""
    if tuple(saliency.shape[-2:]) == tuple(size):
        return saliency
    return F.interpolate(
        saliency[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]

"""Reading and preprocessing images in batches (in DataLoader workers with ``--workers``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchattr.cli._data.base import ImageError, ImageSet, Size
from torchattr.cli._data.preprocess import Preprocess


@dataclass
class Item:
    """One image as read for a command: its model input, its pixels, or why it failed."""

    name: str
    size: Size | None = None  # the original H x W (volumes: D x H x W)
    input: Tensor | None = None  # preprocessed [C', H', W'] (volumes: [C', D, H, W])
    pixels: Tensor | None = None  # as read, [C, H, W] / [C, D, H, W] (only when asked for)
    error: str | None = None


class _Reading(torch.utils.data.Dataset):
    """Reads and preprocesses ``names[i]`` (in a DataLoader worker when ``--workers`` > 0)."""

    def __init__(
        self,
        images: ImageSet,
        names: Sequence[str],
        preprocess: Preprocess | None,
        keep_pixels: bool,
    ) -> None:
        self.images = images
        self.names = list(names)
        self.preprocess = preprocess
        self.keep_pixels = keep_pixels

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Item:
        name = self.names[index]
        try:
            pixels = self.images.load(name)
        except ImageError as error:
            return Item(name, error=str(error))
        size = tuple(int(s) for s in pixels.shape[1:])
        model_input = self.preprocess(pixels) if self.preprocess is not None else None
        return Item(name, size, model_input, pixels if self.keep_pixels else None)


def read_batches(
    images: ImageSet,
    names: Sequence[str],
    preprocess: Preprocess | None,
    batch_size: int,
    workers: int = 0,
    keep_pixels: bool = False,
) -> Any:
    """Batches (lists of :class:`Item`) of ``names`` in order, read by ``workers`` processes."""
    return torch.utils.data.DataLoader(
        _Reading(images, names, preprocess, keep_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=list,
    )

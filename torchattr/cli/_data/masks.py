"""Ground-truth label masks: one file per image in a folder (``--masks FOLDER``).

A mask is named after its image (``<name>.png`` / ``.tif`` / ``.bmp``, ``<name>.nii`` /
``.nii.gz``, or ``<name>.npy``) and has the image's size: ``[H, W]`` for an image, ``[D, H, W]``
for a volume (a NIfTI mask in the same voxel layout as its NIfTI volume, see ``medical``). Its
foreground, the ground truth of the localisation metrics, is every pixel or voxel with a label
``> 0`` (all labels of a segmentation together). Masks are read when used (:meth:`Masks.load`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr.cli._common import CommandError, shorten
from torchattr.cli._data import medical
from torchattr.cli._data.base import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    describe_error,
    file_stem,
    file_suffix,
)

MASK_SUFFIXES = (*IMAGE_SUFFIXES, *NIFTI_SUFFIXES, ".npy")


class Masks:
    """The label masks of a folder: ``names`` (sorted) and ``load(name)`` -> bool tensor."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files: dict[str, Path] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if file_suffix(entry) not in MASK_SUFFIXES:
                continue
            stem = file_stem(entry)
            if stem in files:
                raise CommandError(
                    f"--masks {folder}: two masks are named {stem!r} ({files[stem].name} and "
                    f"{entry.name})"
                )
            files[stem] = entry
        if not files:
            raise CommandError(
                f"--masks {folder}: no masks found (expected files ending in "
                f"{', '.join(MASK_SUFFIXES)})"
            )
        self.files = files
        self.names = sorted(files)

    def load(self, name: str) -> Tensor:
        """The foreground ``labels > 0`` of ``name``'s mask, bool ``[H, W]`` or ``[D, H, W]``."""
        return read_mask(self.files[name])


def read_mask(path: Path) -> Tensor:
    """The foreground ``labels > 0`` of the mask file ``path``, bool ``[H, W]`` or ``[D, H, W]``."""
    try:
        labels = _labels(path)
    except CommandError:
        raise
    except Exception as error:
        raise CommandError(
            f"--masks {path}: cannot read the mask ({describe_error(error)})"
        ) from None
    if labels.ndim not in (2, 3) or labels.size == 0:
        raise CommandError(
            f"--masks {path}: shape {list(labels.shape)}; expected a label map [H, W] or [D, H, W]"
        )
    if not np.isfinite(labels).all():
        raise CommandError(f"--masks {path}: holds NaN or inf values")
    return torch.from_numpy(np.ascontiguousarray(labels > 0))


def _labels(path: Path) -> np.ndarray:
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return medical.read_nifti(path, None)[0].numpy()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.dtype == np.bool_:
            return array.astype(np.uint8)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise CommandError(f"--masks {path}: dtype {array.dtype}; expected labels")
        return array
    try:
        from PIL import Image
    except ImportError:
        raise CommandError("reading PNG / TIFF masks needs Pillow: pip install Pillow") from None
    with Image.open(path) as image:
        if image.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
            raise CommandError(
                f"--masks {path}: a {image.mode} image; expected a one-channel label map "
                "(0 = background)"
            )
        return np.asarray(image)


def load_masks(folder: str | os.PathLike[str]) -> Masks:
    """The masks in ``folder`` (see the module doc)."""
    path = Path(folder)
    if not path.is_dir():
        raise CommandError(f"--masks {path}: no such folder")
    return Masks(path)


def check_mask_names(
    masks: Masks, names: Sequence[str], on_error: str, report: Any
) -> dict[str, Path]:
    """The mask files of images in the data set; masks of unknown images stop or are dropped."""
    known = set(names)
    unknown = [n for n in masks.names if n not in known]
    if unknown:
        message = (
            f"--masks {masks.folder} holds {len(unknown)} mask(s) of images that are not in "
            f"DATA: {shorten(unknown)}"
        )
        if on_error == "stop":
            raise CommandError(message + " (check the names, or pass --on-error skip to ignore)")
        report.warn(message + "; ignored")
    return {n: masks.files[n] for n in masks.names if n in known}


def check_mask_size(mask: Tensor, size: Sequence[int], path: Path) -> Tensor:
    """The mask, if it has its image's size; else a one-line error naming both."""
    if tuple(mask.shape) != tuple(size):
        raise CommandError(
            f"--masks {path}: shape {list(mask.shape)} but its image is {list(size)}; a mask "
            "must have its image's size"
        )
    return mask

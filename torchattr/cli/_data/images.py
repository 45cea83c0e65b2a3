"""Folders of image files: PNG, JPEG, BMP, TIFF (Pillow), DICOM and NIfTI (see ``medical``).

* :func:`open_images`: a folder of image files or a tensor file (``.pt`` / ``.pth`` / ``.npy``,
  see ``tensors``) as an :class:`~torchattr.cli._data.base.ImageSet`;
* :class:`FolderImages`: the files directly inside a folder, name = file name without its format
  suffix; each file is an image ``[C, H, W]`` or (multi-frame DICOM, 3-D NIfTI) a volume
  ``[C, D, H, W]``;
* :func:`check_uniform_size`, :func:`check_uniform_channels`: what must agree to batch them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr.cli._common import CommandError
from torchattr.cli._data import medical
from torchattr.cli._data.base import (
    DATA_SUFFIXES,
    NIFTI_SUFFIXES,
    TENSOR_SUFFIXES,
    ImageError,
    ImageSet,
    Size,
    describe_error,
    file_stem,
    file_suffix,
    size_text,
)
from torchattr.cli._data.tensors import TensorImages

_GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def open_images(
    data: str | os.PathLike[str],
    names_file: str | None = None,
    window: medical.Window | None = None,
) -> ImageSet:
    """The image set at ``data``: a folder of image files or a tensor file.

    ``window`` (``--window``) sets how DICOM and NIfTI intensities become pixel values (see
    :mod:`torchattr.cli._data.medical`).
    """
    path = Path(data)
    if not path.exists():
        raise CommandError(f"DATA {path}: no such file or folder")
    if path.is_dir():
        if names_file is not None:
            raise CommandError("--names applies to tensor DATA only (a folder names its images)")
        return FolderImages(path, window)
    if path.suffix.lower() in TENSOR_SUFFIXES:
        return TensorImages(path, names_file)
    if file_suffix(path) in DATA_SUFFIXES:
        raise CommandError(
            f"DATA {path}: a single image file; pass the folder that holds it (every file of "
            "the folder is read)"
        )
    raise CommandError(
        f"DATA {path}: expected a folder of images or a tensor file ending in "
        f"{', '.join(TENSOR_SUFFIXES)}"
    )


class FolderImages(ImageSet):
    """The image files directly inside a folder (not its subfolders); name = file stem.

    Suffixes: ``.png .jpg .jpeg .bmp .tif .tiff`` (Pillow, pixels in [0, 1]), ``.dcm .dicom``
    (DICOM), ``.nii .nii.gz`` (NIfTI), and subfolders of ``.dcm`` slices (a DICOM series, one
    volume named after the subfolder); other files and folders are ignored. Headers are read
    once here (sizes, channels, NIfTI affines); pixels on :meth:`load`.
    """

    kind = "folder"

    def __init__(self, path: Path, window: medical.Window | None = None) -> None:
        super().__init__(path)
        self.window = window
        files: dict[str, Path] = {}
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if not medical.is_dicom_series(entry):
                    continue
            elif not entry.is_file() or file_suffix(entry) not in DATA_SUFFIXES:
                continue
            stem = entry.name if entry.is_dir() else file_stem(entry)
            if stem in files:
                raise CommandError(
                    f"DATA {path}: two images are named {stem!r} ({files[stem].name} "
                    f"and {entry.name}); maps are named after the image, so names must be unique"
                )
            files[stem] = entry
        if not files:
            raise CommandError(
                f"DATA {path}: no images found (expected files ending in "
                f"{', '.join(DATA_SUFFIXES)})"
            )
        self.files = files
        self.names = sorted(files)
        self.affines: dict[str, np.ndarray] = {}
        self.stored_shapes: dict[str, tuple[int, ...]] = {}
        for name in self.names:
            try:
                self.sizes[name], self.channels[name] = self._header(name)
            except CommandError:
                raise
            except Exception as error:
                self.sizes[name] = None
                self.header_errors[name] = describe_error(error)

    def _header(self, name: str) -> tuple[Size, int]:
        path = self.files[name]
        suffix = file_suffix(path)
        if path.is_dir():
            return medical.dicom_series_header(path)
        if suffix in NIFTI_SUFFIXES:
            size, channels, affine, shape = medical.nifti_header(path)
            self.affines[name], self.stored_shapes[name] = affine, shape
            return size, channels
        if medical.is_dicom(path):
            return medical.dicom_header(path)
        with _pillow().open(path) as image:
            width, height = image.size
            return (int(height), int(width)), 1 if image.mode in _GREY_MODES else 3

    def load(self, name: str) -> Tensor:
        path = self.files[name]
        suffix = file_suffix(path)
        if path.is_dir():
            return medical.read_dicom_series(path, self.window)
        if suffix in NIFTI_SUFFIXES:
            return medical.read_nifti(path, self.window)
        if medical.is_dicom(path):
            return medical.read_dicom(path, self.window)
        try:
            with _pillow().open(path) as image:
                image.load()
                pixels = _pixels(image)
        except Exception as error:
            raise ImageError(
                f"{path.name}: cannot read the image ({describe_error(error)})"
            ) from None
        tensor = torch.from_numpy(pixels)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def nifti_space(self, name: str) -> tuple[np.ndarray, tuple[int, ...]] | None:
        if name not in self.affines:
            return None
        return self.affines[name], self.stored_shapes[name]


def check_uniform_size(images: ImageSet, names: Sequence[str], resize: Any) -> None:
    """Without ``--resize``, every readable image must have the same size (they are batched)."""
    if resize is not None and not any(len(images.sizes.get(n) or ()) == 3 for n in names):
        return
    groups: dict[Size, list[str]] = {}
    for name in names:
        size = images.sizes.get(name)
        if size is not None:
            groups.setdefault(size, []).append(name)
    if len(groups) > 1:
        ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        listed = "; ".join(
            f"{size_text(size)}: {len(group)} image(s), e.g. {group[0]}"
            for size, group in ordered[:4]
        )
        if any(len(size) == 3 for size in groups):
            raise CommandError(
                f"DATA {images.path}: images and volumes have different sizes ({listed}); "
                "volumes are given to the model at their own size, so they must all have one "
                "size (resample them first)"
            )
        h, w = ordered[0][0]
        raise CommandError(
            f"DATA {images.path}: images have different sizes ({listed}); pass --resize H W "
            f"(e.g. --resize {h} {w}) to bring them to one size for the model (maps are saved at "
            "each image's own size)"
        )


def check_uniform_channels(images: ImageSet, names: Sequence[str], to_rgb: bool) -> None:
    """Grey and colour images cannot share a batch unless grey ones become RGB."""
    counts: dict[int, list[str]] = {}
    for name in names:
        if name in images.channels:
            channels = images.channels[name]
            counts.setdefault(3 if to_rgb and channels == 1 else channels, []).append(name)
    if len(counts) > 1:
        listed = "; ".join(
            f"{c} channel(s): {len(group)} image(s), e.g. {group[0]}"
            for c, group in sorted(counts.items())
        )
        raise CommandError(
            f"DATA {images.path}: images have different numbers of channels ({listed}); pass "
            "--grayscale-to-rgb to give grey images 3 channels"
        )


def _pixels(image: Any) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` float32 in [0, 1] from a Pillow image (alpha dropped)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise CommandError(
            "reading image files needs Pillow: pip install 'torchattr[viz]' (or Pillow), or pass "
            "the images as a .pt / .npy tensor"
        ) from None
    return Image

"""What every reader shares: the image-set interface, file kinds by suffix, error wording.

An :class:`ImageSet` names the images (or volumes) of one data set: ``names`` sorted,
``sizes[name]`` the spatial size (``(H, W)`` for an image, ``(D, H, W)`` for a volume, ``None``
when the header is unreadable), ``channels[name]``, and ``load(name)`` the pixels as float32
``[C, H, W]`` or ``[C, D, H, W]``, raising :class:`ImageError` for a file that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MEDICAL_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES
DATA_SUFFIXES = IMAGE_SUFFIXES + MEDICAL_SUFFIXES

Size = tuple[int, ...]  # (H, W) or (D, H, W)


class ImageError(Exception):
    """One image cannot be read (skipped with ``--on-error skip``)."""


class ImageSet:
    """Named images of one data set; ``names`` sorted, ``sizes[name]`` the spatial size.

    ``sizes[name]`` is ``(H, W)`` for an image, ``(D, H, W)`` for a volume, ``None`` when the
    file is unreadable. ``load(name)`` returns ``[C, H, W]`` (or ``[C, D, H, W]``) float32 pixel
    values (image files: in [0, 1]) or raises :class:`ImageError`. ``nifti_space(name)`` is the
    ``4 x 4`` voxel-to-world affine and stored array shape of a NIfTI input (``None`` for other
    inputs), so that its map can be written in the same space.
    """

    kind = "images"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: list[str] = []
        self.sizes: dict[str, Size | None] = {}
        self.channels: dict[str, int] = {}
        self.header_errors: dict[str, str] = {}

    def load(self, name: str) -> Tensor:
        raise NotImplementedError

    def nifti_space(self, name: str) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """``(affine, stored shape)`` of a NIfTI input ``name``, else None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "kind": self.kind, "images": len(self.names)}

    def unreadable_pixels_note(self) -> str:
        return ""


def file_suffix(path: Path) -> str:
    """The lower-case suffix that names the format: ``.nii.gz`` counts as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: Path) -> str:
    """The image name of a file: its name without the format suffix (``ct_01.nii.gz`` ->
    ``ct_01``)."""
    return path.name[: len(path.name) - len(file_suffix(path))]


def image_name(text: str) -> str:
    """A name as written in a boxes file: file names of known formats reduced to their stem."""
    name = text.strip()
    return file_stem(Path(name)) if file_suffix(Path(name)) in DATA_SUFFIXES else name


def size_text(size: Size) -> str:
    """``512x512`` or ``40x64x64`` (D x H x W)."""
    return "x".join(str(s) for s in size)


def describe_error(error: BaseException) -> str:
    """``Type: first line`` of an exception, for one-line messages."""
    text = str(error).strip().splitlines()
    first = text[0].split(". This is an internal miniz error")[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__

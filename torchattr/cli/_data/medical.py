"""DICOM and NIfTI files: pixels in model units, windowing, and NIfTI maps in the input's space.

Needs the optional extra ``torchattr[medical]`` (pydicom, nibabel); without it, reading such a
file stops with a one-line error naming the extra.

**DICOM** (``.dcm`` / ``.dicom``, one file per image; a multi-frame file is a volume
``[1, F, H, W]``, and so is a subfolder of single-slice files, a series, ordered by position:
:func:`read_dicom_series`). Stored values ``x`` become modality values
``m = slope * x + intercept`` (RescaleSlope / RescaleIntercept, or the file's modality LUT:
Hounsfield units for CT), then the window (``--window``):

* ``auto`` (default): the file's first WindowCenter / WindowWidth ``(c, w)`` if it has one,
  else the modality values as they are;
* ``C,W``: that window; ``none``: the modality values as they are.

The window is DICOM's VOI function (PS3.3 C.11.2.1.2), scaled to [0, 1]: LINEAR
``y = clip(((m - (c - 0.5)) / (w - 1) + 0.5), 0, 1)``, LINEAR_EXACT ``clip((m - c) / w + 0.5,
0, 1)``, SIGMOID ``1 / (1 + exp(-4 (m - c) / w))`` (VOILUTFunction of the file; an explicit
``--window`` uses LINEAR). MONOCHROME1 images (low values shown white) are inverted: ``1 - y``
when windowed, ``-m`` otherwise, so that larger values are always brighter. RGB files are scaled
by ``2^BitsStored - 1`` (no window); other colour encodings are refused.

**NIfTI** (``.nii`` / ``.nii.gz``, via nibabel, scl_slope / scl_inter applied): a 3-D array
indexed ``(i, j, k)`` becomes the volume ``[1, D, H, W] = [1, k, j, i]`` (D runs over the
slices along the third voxel axis); a 2-D one (or ``k = 1``) the image ``[1, j, i]``; a 4-D one
with one volume is squeezed, other 4-D files are refused. ``auto`` and ``none`` use the values as
stored, ``C,W`` the LINEAR_EXACT window. A map of a NIfTI input is written, in addition to the
``.npy``, as ``<name>.nii.gz`` with the input's affine and voxel layout (:func:`nifti_map_bytes`),
so it overlays the input in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import argparse
import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr.cli._common import CommandError
from torchattr.cli._data.base import DICOM_SUFFIXES, ImageError, Size, describe_error, file_suffix

Window = str | tuple[float, float]  # "auto", "none" or (center, width)
_EXTRA = "pip install 'torchattr[medical]'"


def parse_window(text: str) -> Window:
    """``--window``: ``auto``, ``none`` or ``CENTER,WIDTH`` (width > 0)."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return word
    parts = word.split(",")
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, none or CENTER,WIDTH (e.g. 40,400), got {text!r}"
        ) from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite center and a width > 0, got {text!r}")
    return (center, width)


def add_window_option(parser: Any) -> None:
    """Register ``--window`` (DICOM / NIfTI inputs)."""
    parser.add_argument(
        "--window",
        type=parse_window,
        default=None,
        metavar="auto|none|C,W",
        help="DICOM / NIfTI intensities: 'auto' (default: a DICOM file's own window, else the "
        "values as stored), 'none' (modality values, e.g. Hounsfield units) or CENTER,WIDTH "
        "(e.g. 40,400), mapped to [0, 1]",
    )


def pydicom_module() -> Any:
    try:
        import pydicom
    except ImportError:
        raise CommandError(f"reading DICOM files needs pydicom: {_EXTRA}") from None
    return pydicom


def nibabel_module() -> Any:
    try:
        import nibabel
    except ImportError:
        raise CommandError(f"reading or writing NIfTI files needs nibabel: {_EXTRA}") from None
    return nibabel


def is_dicom(path: Path) -> bool:
    return file_suffix(path) in DICOM_SUFFIXES


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------


def voi_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM's VOI LUT function on modality values, scaled to [0, 1] (see the module doc)."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"a LINEAR window needs a width >= 1, got {width}")
    if width == 1:  # the standard's limit: a threshold at c - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) DICOM number, or None."""
    if value is None:
        return None
    if hasattr(value, "__len__") and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def dicom_header(path: Path) -> tuple[Size, int]:
    """``(size, channels)`` of a DICOM file without reading its pixels."""
    dataset = pydicom_module().dcmread(path, stop_before_pixels=True)
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError("no image (Rows / Columns missing)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    size: Size = (int(dataset.Rows), int(dataset.Columns))
    return ((frames, *size) if frames > 1 else size), int(dataset.get("SamplesPerPixel", 1))


def read_dicom(path: Path, window: Window | None) -> Tensor:
    """Pixels ``[C, H, W]`` (multi-frame: ``[C, F, H, W]``) float32 of a DICOM file."""
    pydicom = pydicom_module()
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:
        raise ImageError(
            f"{path.name}: cannot read the DICOM file ({describe_error(error)})"
        ) from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ImageError(
            f"{path.name}: PhotometricInterpretation {photometric} is not supported (expected "
            "MONOCHROME1, MONOCHROME2 or RGB)"
        )
    try:
        stored = dataset.pixel_array
    except Exception as error:
        raise ImageError(
            f"{path.name}: cannot read the DICOM pixels ({describe_error(error)})"
        ) from None
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = _modality(dataset, stored)
        values = _dicom_window(values, dataset, window, inverted=photometric == "MONOCHROME1")
        pixels = values[None]  # [1, H, W] or [1, F, H, W]
    else:  # RGB
        bits = int(dataset.get("BitsStored", 8) or 8)
        pixels = np.moveaxis(stored.astype(np.float64) / (2.0**bits - 1), -1, 0)
    expected = 3 if frames == 1 else 4
    if pixels.ndim != expected:
        raise ImageError(
            f"{path.name}: pixel array of shape {list(stored.shape)} does not match "
            f"NumberOfFrames {frames}"
        )
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def _modality(dataset: Any, stored: np.ndarray) -> np.ndarray:
    """Modality values: the file's modality LUT, or ``RescaleSlope * x + RescaleIntercept``."""
    if "ModalityLUTSequence" in dataset:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def _dicom_window(
    values: np.ndarray, dataset: Any, window: Window | None, inverted: bool
) -> np.ndarray:
    if window == "none":
        center = width = None
        function = "LINEAR"
    elif isinstance(window, tuple):
        (center, width), function = window, "LINEAR"
    else:  # auto: the file's own window, if any
        center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR")
    if center is None or width is None or not width > 0:
        return -values if inverted else values
    windowed = voi_window(values, center, width, function)
    return 1.0 - windowed if inverted else windowed


def is_dicom_series(path: Path) -> bool:
    """Whether ``path`` is a folder holding DICOM files (a series, one slice per file)."""
    return path.is_dir() and any(_series_candidates(path))


def _series_candidates(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom(p)
    )


def series_order(folder: Path) -> tuple[list[Path], Any]:
    """The slice files of a DICOM series folder in spatial order, and the first slice's header.

    Slices are ordered by their position along the slice normal, ``ImagePositionPatient .
    (row x column)`` of ImageOrientationPatient, or else by InstanceNumber; every slice must be
    a single-frame monochrome image of one size, at distinct positions.
    """
    pydicom = pydicom_module()
    files = _series_candidates(folder)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    sizes = {(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for h in headers}
    if len(sizes) != 1 or min(next(iter(sizes))) == 0:
        raise ValueError(f"slices of different sizes {sorted(sizes)}: not one series")
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise ValueError("a multi-frame file among the slices: one series is one slice per file")
    if any("MONOCHROME" not in str(h.get("PhotometricInterpretation", "")) for h in headers):
        raise ValueError("a series of colour images: series must be monochrome")
    if all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers):
        orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        keys = [float(np.dot(np.asarray(h.ImagePositionPatient, float), normal)) for h in headers]
    elif all("InstanceNumber" in h for h in headers):
        keys = [float(h.InstanceNumber) for h in headers]
    else:
        raise ValueError("cannot order the slices: no ImagePositionPatient or InstanceNumber")
    if len(set(keys)) != len(keys):
        raise ValueError("two slices at the same position: not one series")
    order = sorted(range(len(files)), key=keys.__getitem__)
    return [files[i] for i in order], headers[order[0]]


def dicom_series_header(folder: Path) -> tuple[Size, int]:
    """``(size, channels)`` of a DICOM series folder: ``(slices, H, W)``, 1."""
    files, first = series_order(folder)
    return (len(files), int(first.Rows), int(first.Columns)), 1


def read_dicom_series(folder: Path, window: Window | None) -> Tensor:
    """A DICOM series folder as a volume ``[1, S, H, W]`` float32, slices in spatial order.

    Each slice goes through its own modality LUT; the window (``auto``: the first slice's
    WindowCenter / WindowWidth, LINEAR, for every slice) is the same for the whole volume.
    """
    try:
        files, first = series_order(folder)
    except CommandError:
        raise
    except Exception as error:
        raise ImageError(
            f"{folder.name}: not a readable DICOM series ({describe_error(error)})"
        ) from None
    if window is None or window == "auto":
        center, width = _first(first.get("WindowCenter")), _first(first.get("WindowWidth"))
        window = (center, width) if center is not None and width and width > 0 else "none"
    return torch.stack([read_dicom(path, window)[0] for path in files])[None]


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def nifti_header(path: Path) -> tuple[Size, int, np.ndarray, tuple[int, ...]]:
    """``(size, channels, affine, stored spatial shape)`` of a NIfTI file (pixels not read)."""
    image = nibabel_module().load(str(path))
    shape = tuple(int(s) for s in image.shape)
    spatial = _nifti_spatial(shape)
    size: Size = tuple(reversed(spatial)) if len(spatial) == 3 else (spatial[1], spatial[0])
    return size, 1, np.asarray(image.affine, dtype=np.float64), shape


def _nifti_spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(i, j, k)`` of a volume, ``(i, j)`` of an image; other layouts raise ValueError."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 3 and dims[2] == 1:
        dims.pop()
    if len(dims) not in (2, 3) or min(dims) == 0:
        raise ValueError(
            f"array of shape {list(shape)}: expected a 3-D volume (i, j, k) or a 2-D image; "
            "4-D files (time series, several volumes) are not supported"
        )
    return tuple(dims)


def read_nifti(path: Path, window: Window | None) -> Tensor:
    """Pixels ``[1, D, H, W]`` (``[1, H, W]`` for a 2-D file) float32 of a NIfTI file."""
    try:
        image = nibabel_module().load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float64))
        spatial = _nifti_spatial(tuple(data.shape))
    except CommandError:
        raise
    except Exception as error:
        raise ImageError(
            f"{path.name}: cannot read the NIfTI file ({describe_error(error)})"
        ) from None
    values = data.reshape(spatial).T  # (i, j, k) -> [k, j, i]; (i, j) -> [j, i]
    if not np.isfinite(values).all():
        raise ImageError(f"{path.name}: the NIfTI file holds NaN or inf values")
    if isinstance(window, tuple):
        values = voi_window(values, window[0], window[1], "LINEAR_EXACT")
    return torch.from_numpy(np.ascontiguousarray(values[None], dtype=np.float32))


def nifti_map_bytes(saliency: Any, affine: np.ndarray, stored_shape: tuple[int, ...]) -> bytes:
    """A map ``[D, H, W]`` (or ``[H, W]``) as gzip-compressed NIfTI-1 bytes in the input's space.

    The inverse of :func:`read_nifti`'s layout (``[k, j, i] -> (i, j, k)``, reshaped to the
    input's stored shape), float32, with the input's affine as both sform and qform; the gzip
    header carries no time stamp, so equal maps give equal files.
    """
    nibabel = nibabel_module()
    array = np.asarray(saliency, dtype=np.float32).T.reshape(stored_shape)
    image = nibabel.Nifti1Image(np.ascontiguousarray(array), affine)
    image.header.set_data_dtype(np.float32)
    return gzip.compress(image.to_bytes(), mtime=0)

"""DICOM and NIfTI files written by the tests (pydicom, nibabel), and a seeded 3-D model.

``volume_factory()`` is what ``cli_support.medical:volume_factory`` names on the command line:
the same seeded :class:`~torchattr.data.VolumeNet` every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchattr.data import VolumeNet

# (i, j, k) of the test volumes: read as [D, H, W] = [k, j, i] = [6, 8, 10]
SHAPE = (10, 8, 6)
# a rotation about z, anisotropic voxels (0.8, 1.2, 2.5 mm) and a translation
AFFINE = np.array(
    [
        [0.8 * np.cos(0.3), -1.2 * np.sin(0.3), 0.0, -12.5],
        [0.8 * np.sin(0.3), 1.2 * np.cos(0.3), 0.0, 30.0],
        [0.0, 0.0, 2.5, -7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
).astype(np.float32)  # NIfTI stores the sform in float32: this one round-trips exactly


def volume_factory() -> nn.Module:
    """The seeded 3-D CNN: ``[B, 1, D, H, W] -> [B, 2]``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VolumeNet(in_channels=1, classes=2).eval()


def cube(index: int) -> tuple[slice, slice, slice]:
    """The (i, j, k) slices of volume ``index``'s bright cube (3 x 3 x 2 voxels)."""
    i, j, k = 1 + (3 * index) % 6, 1 + (2 * index) % 4, 1 + index % 3
    return slice(i, i + 3), slice(j, j + 3), slice(k, k + 2)


def write_nifti_volumes(folder: Path, count: int = 3, gz: bool = True) -> dict[str, np.ndarray]:
    """``vol_0.nii.gz`` ... (float32 (i, j, k) with a bright cube, affine :data:`AFFINE`) and
    their masks in ``folder.parent / 'masks'``; returns ``{name: data (i, j, k)}``."""
    import nibabel

    folder.mkdir(parents=True, exist_ok=True)
    masks = folder.parent / f"{folder.name}_masks"
    masks.mkdir(exist_ok=True)
    g = np.random.default_rng(0)
    out = {}
    for index in range(count):
        name = f"vol_{index}"
        data = (g.random(SHAPE) * 100).astype(np.float32)
        data[cube(index)] += 400
        label = np.zeros(SHAPE, dtype=np.uint8)
        label[cube(index)] = 2
        suffix = ".nii.gz" if gz else ".nii"
        nibabel.save(nibabel.Nifti1Image(data, AFFINE), folder / f"{name}{suffix}")
        nibabel.save(nibabel.Nifti1Image(label, AFFINE), masks / f"{name}.nii.gz")
        out[name] = data
    return out


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    **attributes: object,
) -> Path:
    """A DICOM file of uint16 ``stored`` values ``[H, W]`` (or ``[F, H, W]``: multi-frame)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    if stored.ndim == 3:
        dataset.NumberOfFrames = int(stored.shape[0])
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope, dataset.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    for keyword, value in attributes.items():  # e.g. ImagePositionPatient=[0, 0, 2.5]
        setattr(dataset, keyword, value)
    dataset.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out by hand, scaled to [0, 1]."""
    out = np.empty_like(values, dtype=np.float64)
    low = values <= center - 0.5 - (width - 1) / 2
    high = values > center - 0.5 + (width - 1) / 2
    middle = ~(low | high)
    out[low], out[high] = 0.0, 1.0
    out[middle] = (values[middle] - (center - 0.5)) / (width - 1) + 0.5
    return out

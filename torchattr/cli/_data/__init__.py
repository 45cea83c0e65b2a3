"""Inputs of the commands, one module per kind of thing read.

* ``base``: the :class:`ImageSet` interface, file kinds by suffix, error wording;
* ``images``: :func:`open_images`, folders of PNG / JPEG / BMP / TIFF, DICOM and NIfTI files;
* ``tensors``: images stacked in a ``.pt`` / ``.npy`` tensor;
* ``medical``: DICOM (modality LUT, windowing, MONOCHROME1, multi-frame volumes) and NIfTI
  (affine kept, maps written back as NIfTI);
* ``preprocess``: :class:`Preprocess` (pixels -> model inputs) and :func:`resize_map`;
* ``models``: :func:`load_model` (TorchScript, torch.export, ``module:factory``);
* ``boxes``: ground-truth boxes (:func:`load_boxes`); ``masks``: voxel label masks
  (:func:`load_masks`);
* ``reading``: :func:`read_batches`, images read and preprocessed in batches.

Everything the user can get wrong raises :class:`~torchattr.cli._common.CommandError` with a
message naming the file and what was expected.
"""

from torchattr.cli._data.base import (
    DATA_SUFFIXES,
    IMAGE_SUFFIXES,
    MEDICAL_SUFFIXES,
    TENSOR_SUFFIXES,
    ImageError,
    ImageSet,
    Size,
)
from torchattr.cli._data.boxes import Box, check_box_extents, check_box_names, load_boxes
from torchattr.cli._data.images import (
    FolderImages,
    check_uniform_channels,
    check_uniform_size,
    open_images,
)
from torchattr.cli._data.masks import check_mask_names, load_masks
from torchattr.cli._data.medical import add_window_option, parse_window
from torchattr.cli._data.models import ExportedBatches, LoadedModel, load_model
from torchattr.cli._data.preprocess import Preprocess, resize_map
from torchattr.cli._data.reading import Item, read_batches
from torchattr.cli._data.tensors import TensorImages

__all__ = [
    "DATA_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MEDICAL_SUFFIXES",
    "TENSOR_SUFFIXES",
    "Box",
    "ExportedBatches",
    "FolderImages",
    "ImageError",
    "ImageSet",
    "Item",
    "LoadedModel",
    "Preprocess",
    "Size",
    "TensorImages",
    "add_window_option",
    "check_box_extents",
    "check_box_names",
    "check_mask_names",
    "check_uniform_channels",
    "check_uniform_size",
    "load_boxes",
    "load_masks",
    "load_model",
    "open_images",
    "parse_window",
    "read_batches",
    "resize_map",
]

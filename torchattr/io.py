"""Attribution maps on disk: per-sample normalisation and atomic ``.npy`` files.

Convention: one map per image, float32, the image's ``H x W``, values in [0, 1], saved as
``<image id>.npy``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PathLike = str | os.PathLike[str]


def normalize_map(maps: Tensor) -> Tensor:
    """Min-max normalise each map over its last two dimensions (H, W) to [0, 1].

    ``(S - min S) / (max S - min S)`` per map; a constant map becomes zeros. Works on ``[H, W]``,
    ``[B, H, W]``, ``[B, C, H, W]`` (each channel separately) and any other leading shape. The
    result has the input's shape and floating dtype (float32 for integer input), on its device.

    Example::

        maps = normalize_map(ta.saliency(model, images))   # [B, H, W] in [0, 1]
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a tensor, got {type(maps).__name__}")
    if maps.ndim < 2:
        raise ValueError(f"maps has shape {list(maps.shape)}: expected [..., H, W]")
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must hold real numbers, got dtype {maps.dtype}")
    values = maps.detach()
    if not values.is_floating_point():
        values = values.float()
    if values.numel() == 0:
        return values.clone()
    low = values.amin(dim=(-2, -1), keepdim=True)
    span = values.amax(dim=(-2, -1), keepdim=True) - low
    scaled = (values - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled)).clamp(0, 1)


def save_map(path: PathLike, array: Tensor | np.ndarray) -> Path:
    """Write ``array`` as a float32 ``.npy`` file, atomically; return the final path.

    The data go to a temporary file in the destination folder, which then replaces ``path``
    (``os.replace``): a reader never sees a half-written map, and an interrupted write leaves no
    file behind. A ``.npy`` suffix is appended when missing (as :func:`numpy.save` does); missing
    parent folders are created. Tensors are detached and copied to the CPU.

    Example::

        save_map("maps/saliency/img_0007.npy", normalize_map(maps)[0])   # [H, W] float32
    """
    if isinstance(array, Tensor):
        if array.is_complex() or array.dtype == torch.bool:
            raise TypeError(f"array must hold real numbers, got dtype {array.dtype}")
        data = array.detach().to("cpu", torch.float32).numpy()
    elif isinstance(array, np.ndarray):
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(f"array must hold real numbers, got dtype {array.dtype}")
        data = array.astype(np.float32)
    else:
        raise TypeError(f"array must be a tensor or a numpy array, got {type(array).__name__}")
    target = Path(path)
    if target.suffix != ".npy":
        target = target.with_name(target.name + ".npy")
    target.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666 honours the umask, unlike tempfile.mkstemp (always 0o600).
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(data))
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target

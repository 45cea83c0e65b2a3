"""Images or volumes stacked in one tensor file (``.pt`` / ``.pth`` / ``.npy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr.cli._common import CommandError, shorten
from torchattr.cli._data.base import ImageError, ImageSet, describe_error


class TensorImages(ImageSet):
    """Images stacked in one tensor file: ``[N, C, H, W]`` or ``[N, H, W]`` (one channel), or
    volumes ``[N, C, D, H, W]``.

    Integer tensors are scaled to [0, 1] (uint8 / 255, uint16 / 65535); floating-point ones are
    used as they are. ``.npy`` files are memory-mapped, so only the images used are read.
    """

    kind = "tensor"

    def __init__(self, path: Path, names_file: str | None = None) -> None:
        super().__init__(path)
        stored_names = None
        try:
            if path.suffix.lower() == ".npy":
                data: Any = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise CommandError(
                f"DATA {path}: cannot read the tensor file ({describe_error(error)})"
            ) from None
        if isinstance(data, dict):
            if "images" not in data:
                raise CommandError(
                    f"DATA {path}: a dict without an 'images' entry (keys: "
                    f"{shorten(sorted(map(str, data)))}); expected a tensor [N, C, H, W] or "
                    "{'images': tensor, 'names': [...]}"
                )
            stored_names = data.get("names")
            data = data["images"]
        if not isinstance(data, (Tensor, np.ndarray)):
            raise CommandError(
                f"DATA {path}: holds a {type(data).__name__}; expected a tensor [N, C, H, W] or "
                "[N, H, W]"
            )
        shape = tuple(data.shape)
        if len(shape) == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
            raise CommandError(
                f"DATA {path}: shape {list(shape)} looks channels-last [N, H, W, C]; expected "
                "[N, C, H, W] (np.moveaxis(images, -1, 1))"
            )
        if len(shape) not in (3, 4, 5) or min(shape) == 0:
            raise CommandError(
                f"DATA {path}: shape {list(shape)}; expected images [N, C, H, W] or [N, H, W], "
                "or volumes [N, C, D, H, W]"
            )
        dtype = str(data.dtype).replace("torch.", "")
        if dtype == "bool" or "complex" in dtype:
            raise CommandError(f"DATA {path}: dtype {dtype}; expected real pixel values")
        self.data = data
        self.names_file = str(Path(names_file).resolve()) if names_file is not None else None
        self.scale = {"uint8": 255.0, "uint16": 65535.0}.get(dtype, 1.0)
        count = shape[0]
        names = _tensor_names(path, count, names_file, stored_names)
        self.index = {name: i for i, name in enumerate(names)}
        self.names = sorted(names)
        spatial = tuple(int(s) for s in shape[2:]) if len(shape) == 5 else shape[-2:]
        self.sizes = {name: tuple(int(s) for s in spatial) for name in names}
        self.channels = {name: 1 if len(shape) == 3 else int(shape[1]) for name in names}

    def load(self, name: str) -> Tensor:
        row = self.data[self.index[name]]
        if isinstance(row, np.ndarray):  # a view of the memory map: read (and copy) it now
            image = torch.from_numpy(np.asarray(row, dtype=np.float32) / np.float32(self.scale))
        else:
            image = row.to(torch.float32) / self.scale
        if image.ndim == 2:
            image = image[None]
        if not bool(torch.isfinite(image).all()):
            raise ImageError(f"{name}: the tensor holds NaN or inf values")
        return image.clone()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shape": list(self.data.shape), "names": self.names_file}


def _tensor_names(path: Path, count: int, names_file: str | None, stored: Any) -> list[str]:
    if names_file is not None:
        source = Path(names_file)
        if not source.is_file():
            raise CommandError(f"--names {source}: no such file")
        names = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        where = f"--names {source}"
    elif stored is not None:
        if not isinstance(stored, (list, tuple)) or not all(isinstance(n, str) for n in stored):
            raise CommandError(f"DATA {path}: 'names' must be a list of strings")
        names, where = list(stored), f"DATA {path} 'names'"
    else:
        return [f"{path.stem}_{i:05d}" for i in range(count)]
    if len(names) != count:
        raise CommandError(f"{where} lists {len(names)} names for {count} images")
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if duplicates:
        raise CommandError(f"{where}: names must be unique; repeated: {shorten(duplicates)}")
    bad = [n for n in names if "/" in n or "\\" in n or n.startswith(".") or n in ("", "..")]
    if bad:
        raise CommandError(
            f"{where}: names become file names; not allowed: {shorten([repr(b) for b in bad])}"
        )
    return names

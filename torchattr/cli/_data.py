"""Inputs of the commands: image sets, preprocessing, models and ground-truth boxes.

* :func:`open_images`: a folder of images (PNG, JPEG, BMP, TIFF via Pillow) or a tensor file
  (``.pt`` / ``.pth`` / ``.npy``, ``[N, C, H, W]`` or ``[N, H, W]``) as an :class:`ImageSet`:
  sorted unique names, each image's size, and ``load(name) -> [C, H, W]`` float32 in pixel units.
* :class:`Preprocess`: RGB conversion, resizing and normalisation, recorded in ``run.json``.
* :func:`load_model`: a TorchScript file, a ``torch.export`` program (``.pt2``) or a
  ``package.module:factory`` returning an ``nn.Module``.
* :func:`load_boxes`: XYXY pixel boxes per image from JSON or CSV.

Everything the user can get wrong raises :class:`~torchattr.cli._common.CommandError` with a
message naming the file and what was expected.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchattr.cli._common import CommandError, shorten
from torchattr.cli._geometry import pad_square

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ImageError(Exception):
    """One image cannot be read (skipped with ``--on-error skip``)."""


# --------------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------------


class ImageSet:
    """Named images of one data set; ``names`` sorted, ``sizes[name] = (H, W)`` (None: unreadable).

    ``load(name)`` returns ``[C, H, W]`` float32 pixel values (files: in [0, 1]) or raises
    :class:`ImageError`.
    """

    kind = "images"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: list[str] = []
        self.sizes: dict[str, tuple[int, int] | None] = {}
        self.channels: dict[str, int] = {}
        self.header_errors: dict[str, str] = {}

    def load(self, name: str) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "kind": self.kind, "images": len(self.names)}

    def unreadable_pixels_note(self) -> str:
        return ""


class FolderImages(ImageSet):
    """The image files directly inside a folder (not its subfolders); name = file stem."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        image_module = _pillow()
        files: dict[str, Path] = {}
        for entry in sorted(path.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if entry.stem in files:
                raise CommandError(
                    f"DATA {path}: two images are named {entry.stem!r} ({files[entry.stem].name} "
                    f"and {entry.name}); maps are named after the image, so names must be unique"
                )
            files[entry.stem] = entry
        if not files:
            raise CommandError(
                f"DATA {path}: no images found (expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)})"
            )
        self.files = files
        self.names = sorted(files)
        for name in self.names:
            try:
                with image_module.open(files[name]) as image:
                    width, height = image.size
                    self.channels[name] = 1 if image.mode in _GREY_MODES else 3
                self.sizes[name] = (int(height), int(width))
            except Exception as error:
                self.sizes[name] = None
                self.header_errors[name] = _describe(error)

    def load(self, name: str) -> Tensor:
        path = self.files[name]
        try:
            with _pillow().open(path) as image:
                image.load()
                pixels = _pixels(image)
        except Exception as error:
            raise ImageError(f"{path.name}: cannot read the image ({_describe(error)})") from None
        tensor = torch.from_numpy(pixels)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


class TensorImages(ImageSet):
    """Images stacked in one tensor file: ``[N, C, H, W]`` or ``[N, H, W]`` (one channel).

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
                f"DATA {path}: cannot read the tensor file ({_describe(error)})"
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
        if len(shape) not in (3, 4) or min(shape) == 0:
            raise CommandError(
                f"DATA {path}: shape {list(shape)}; expected images [N, C, H, W] or [N, H, W]"
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
        self.sizes = {name: (int(shape[-2]), int(shape[-1])) for name in names}
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


def open_images(data: str | os.PathLike[str], names_file: str | None = None) -> ImageSet:
    """The image set at ``data``: a folder of image files or a tensor file."""
    path = Path(data)
    if not path.exists():
        raise CommandError(f"DATA {path}: no such file or folder")
    if path.is_dir():
        if names_file is not None:
            raise CommandError("--names applies to tensor DATA only (a folder names its images)")
        return FolderImages(path)
    if path.suffix.lower() in TENSOR_SUFFIXES:
        return TensorImages(path, names_file)
    raise CommandError(
        f"DATA {path}: expected a folder of images or a tensor file ending in "
        f"{', '.join(TENSOR_SUFFIXES)}"
    )


def check_uniform_size(images: ImageSet, names: Sequence[str], resize: Any) -> None:
    """Without ``--resize``, every readable image must have the same size (they are batched)."""
    if resize is not None:
        return
    groups: dict[tuple[int, int], list[str]] = {}
    for name in names:
        size = images.sizes.get(name)
        if size is not None:
            groups.setdefault(size, []).append(name)
    if len(groups) > 1:
        ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        listed = "; ".join(
            f"{h}x{w}: {len(group)} image(s), e.g. {group[0]}" for (h, w), group in ordered[:4]
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


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0].split(". This is an internal miniz error")[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Pixel images ``[C, H, W]`` -> model inputs: RGB, resize, ``(x - mean) / std``."""

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    grayscale_to_rgb: bool = False
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
            pad=pick("pad"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": list(self.resize) if self.resize else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "grayscale_to_rgb": self.grayscale_to_rgb,
            **({"pad": self.pad} if self.pad else {}),  # absent when off: older records match
        }

    def __call__(self, image: Tensor) -> Tensor:
        """``[C, H, W]`` pixels -> ``[C', H', W']`` model input (float32)."""
        if self.grayscale_to_rgb and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if self.pad is not None:
            image = pad_square(image)
        if self.resize is not None and tuple(image.shape[-2:]) != self.resize:
            image = F.interpolate(
                image[None], size=self.resize, mode="bilinear", align_corners=False, antialias=True
            )[0]
        if self.mean is not None or self.std is not None:
            channels = image.shape[0]
            mean = self._per_channel(self.mean, 0.0, channels, "--mean")
            std = self._per_channel(self.std, 1.0, channels, "--std")
            image = (image - mean) / std
        return image.contiguous()

    def baseline(self, value: float, channels: int) -> Tensor:
        """The model input of a constant pixel image ``value``: ``[1, C, 1, 1]``."""
        mean = self._per_channel(self.mean, 0.0, channels, "--mean")
        std = self._per_channel(self.std, 1.0, channels, "--std")
        return ((value - mean) / std)[None]

    @staticmethod
    def _per_channel(
        values: tuple[float, ...] | None, default: float, channels: int, option: str
    ) -> Tensor:
        if values is None:
            values = (default,)
        if len(values) not in (1, channels):
            raise CommandError(
                f"{option} has {len(values)} values but the images have {channels} channel(s) "
                "(after --grayscale-to-rgb): give one value or one per channel"
            )
        return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1)


def resize_map(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    """A map ``[h, w]`` brought to ``size = (H, W)`` (bilinear; unchanged when equal)."""
    if tuple(saliency.shape[-2:]) == tuple(size):
        return saliency
    return F.interpolate(
        saliency[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """The model, how it was loaded, and what it is known to accept."""

    module: nn.Module
    kind: str  # "torchscript", "export" or "factory"
    spec: str
    fingerprint: str
    input_shape: tuple[int | None, ...] | None = None  # exported programs: static dims
    hooks: bool = True  # whether forward hooks on its submodules fire (class activation maps)
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "sha256": self.fingerprint, **self.info}

    def check_input(self, shape: Sequence[int]) -> None:
        """Compare a model input ``[C, H, W]`` with an exported program's static dimensions."""
        if self.input_shape is None or len(self.input_shape) != len(shape) + 1:
            return
        expected = self.input_shape[1:]
        if any(e is not None and e != s for e, s in zip(expected, shape)):
            wanted = ["B"] + ["*" if e is None else e for e in expected]
            hint = "--resize / --grayscale-to-rgb"
            raise CommandError(
                f"MODEL {self.spec} takes inputs {wanted} but the preprocessed images are "
                f"{list(shape)}: adjust {hint}"
            )


def load_model(spec: str, device: torch.device) -> LoadedModel:
    """Load MODEL: a TorchScript file, a ``.pt2`` export, or ``package.module:factory``."""
    path = Path(spec)
    if path.is_file():
        kind = _archive_kind(path)
        if kind == "export" or (kind == "unknown" and path.suffix.lower() == ".pt2"):
            loaded = _load_export(path, spec)
        elif kind == "torchscript" or kind == "unknown":
            loaded = _load_torchscript(path, spec, device)
        else:
            raise CommandError(
                f"MODEL {spec}: a torch.save checkpoint (a pickled module or a state dict), not "
                f"a model file this command loads. {_SAVE_HINT}"
            )
    elif _FACTORY.match(spec):
        loaded = _load_factory(spec)
    elif path.exists():
        raise CommandError(f"MODEL {spec}: is a folder; expected a model file or module:factory")
    else:
        raise CommandError(
            f"MODEL {spec}: no such file, and not a 'package.module:factory' name (a TorchScript "
            "file, a torch.export .pt2 file, or a function returning an nn.Module)"
        )
    module = loaded.module
    try:
        module.to(device)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot move the model to {device} ({_describe(error)})"
        ) from None
    if loaded.kind == "export":
        for sub in module.modules():  # the graph is fixed: eval() is refused, the flag is moot
            sub.training = False
    else:
        module.eval()
    return loaded


def _archive_kind(path: Path) -> str:
    """``export``, ``torchscript``, ``checkpoint`` (torch.save) or ``unknown``, from the zip
    archive's entries (nothing is unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    tails = {entry.split("/", 1)[-1] for entry in entries}
    if "archive_format" in tails or any("/models/" in e for e in entries):
        return "export"
    if "constants.pkl" in tails or any(e.split("/")[1:2] == ["code"] for e in entries):
        return "torchscript"
    if "data.pkl" in tails:
        return "checkpoint"
    return "unknown"


_SAVE_HINT = (
    "Save the model with torch.jit.save(torch.jit.script(model), 'model.pt') or "
    "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), or pass "
    "'package.module:factory' (a function that builds the model and loads its weights)"
)


def _load_torchscript(path: Path, spec: str, device: torch.device) -> LoadedModel:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: not a readable TorchScript archive ({_describe(error)}). {_SAVE_HINT}"
        ) from None
    return LoadedModel(module, "torchscript", spec, _file_hash(path), hooks=False)


def _load_export(path: Path, spec: str) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot load the torch.export program ({_describe(error)})"
        ) from None
    module = program.module()
    shape, low, high = _export_input(program)
    if low is not None or high is not None:
        module = ExportedBatches(module, low or 1, high)
    info = {"batch_sizes": [low, high]} if (low or high) else {}
    return LoadedModel(module, "export", spec, _file_hash(path), shape, hooks=False, info=info)


def _export_input(program: Any) -> tuple[tuple[int | None, ...] | None, int | None, int | None]:
    """Static dims of the first user input, and the batch sizes the program accepts."""
    try:
        users = set(program.graph_signature.user_inputs)
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in users)
        dims = tuple(node.meta["val"].shape)
    except Exception:
        return None, None, None
    shape = tuple(d if isinstance(d, int) else None for d in dims)
    if not dims:
        return shape, None, None
    batch = dims[0]
    if isinstance(batch, int):
        return shape, batch, batch
    low = high = None
    try:
        ranges = program.range_constraints[batch.node.expr]
        low = int(ranges.lower) if ranges.lower.is_integer else None
        upper = ranges.upper
        high = int(upper) if upper.is_integer and upper.is_finite else None
    except Exception:
        pass
    if low is not None and low <= 1:
        low = None
    return shape, low, high


class ExportedBatches(nn.Module):
    """Runs an exported program on batches of the sizes it accepts: ``low <= n <= high``.

    Rows are split into chunks of at most ``high``; a chunk smaller than ``low`` is padded with
    copies of its last row, whose outputs are dropped. Differentiable (slices and ``cat``), so
    gradients of the real rows are those of the program.
    """

    def __init__(self, program: nn.Module, low: int, high: int | None) -> None:
        super().__init__()
        self.program = program
        self.low = low
        self.high = high

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.low <= n and (self.high is None or n <= self.high):
            return self.program(x)
        step = self.high or n
        outputs = []
        for start in range(0, n, step):
            chunk = x[start : start + step]
            rows = chunk.shape[0]
            if rows < self.low:
                pad = chunk[-1:].expand(self.low - rows, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            outputs.append(self.program(chunk)[:rows])
        return torch.cat(outputs)


def _load_factory(spec: str) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: modules next to the user
    try:
        owner: Any = importlib.import_module(module_name)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot import {module_name} ({_describe(error)})"
        ) from None
    factory = owner
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise CommandError(f"MODEL {spec}: {module_name} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise CommandError(f"MODEL {spec}: {attribute} is a {type(factory).__name__}, not callable")
    try:
        model = factory()
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: calling {attribute}() failed ({_describe(error)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise CommandError(
            f"MODEL {spec}: {attribute}() returned a {type(model).__name__}; expected an "
            "nn.Module (called with no arguments)"
        )
    return LoadedModel(model, "factory", spec, _state_hash(model), hooks=True)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_hash(model: nn.Module) -> str:
    """sha256 of the parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(f"{name}:{list(value.shape)}:{value.dtype}".encode())
        data = value.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int, str | None]
_NAME_KEYS = ("image", "name", "image_id", "id", "file", "filename")


def load_boxes(path: str | os.PathLike[str]) -> dict[str, list[Box]]:
    """Ground-truth boxes per image name: ``{name: [(x1, y1, x2, y2, label), ...]}``.

    Coordinates are XYXY pixels with exclusive ends (``M[y1:y2, x1:x2]``); fractional ones are
    widened to the pixels they touch (``floor`` x1/y1, ``ceil`` x2/y2). An image may be listed
    with no box (an explicitly negative image). Accepted layouts:

    * JSON ``{"img_1": [[x1, y1, x2, y2], ...], ...}``; a box may also be
      ``{"box": [x1, y1, x2, y2], "label": ...}`` or ``{"x1": .., "y1": .., "x2": .., "y2": ..}``;
    * JSON ``[{"image": "img_1", "x1": .., "y1": .., "x2": .., "y2": .., "label": ..}, ...]``;
    * CSV with columns ``image, x1, y1, x2, y2[, label]`` (a header row is optional; a row
      with empty coordinates lists an image without boxes). File names with an image suffix
      are reduced to their stem.
    """
    source = Path(path)
    if not source.is_file():
        raise CommandError(f"--boxes {source}: no such file")
    text = source.read_text(encoding="utf-8-sig")
    boxes: dict[str, list[Box]] = {}
    if source.suffix.lower() == ".json":
        _json_boxes(source, text, boxes)
    elif source.suffix.lower() in (".csv", ".txt", ".tsv"):
        _csv_boxes(source, text, boxes)
    else:
        raise CommandError(f"--boxes {source}: expected a .json or .csv file")
    return boxes


def _json_boxes(source: Path, text: str, boxes: dict[str, list[Box]]) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"--boxes {source}: not valid JSON ({error})") from None
    if isinstance(data, dict) and "boxes" in data and isinstance(data["boxes"], (dict, list)):
        data = data["boxes"]
    if isinstance(data, dict):
        for name, entries in data.items():
            where = f"--boxes {source}, image {name!r}"
            if not isinstance(entries, list):
                raise CommandError(f"{where}: expected a list of boxes, got {entries!r}")
            if len(entries) == 4 and all(_is_number(v) for v in entries):
                entries = [entries]  # a single box given flat
            image = boxes.setdefault(_image_name(name), [])
            for k, entry in enumerate(entries):
                image.append(_box(entry, f"{where}, box {k}"))
    elif isinstance(data, list):
        for k, record in enumerate(data):
            where = f"--boxes {source}, record {k}"
            if not isinstance(record, dict):
                raise CommandError(f"{where}: expected an object with image, x1, y1, x2, y2")
            key = next((key for key in _NAME_KEYS if key in record), None)
            if key is None:
                raise CommandError(f"{where}: no image name (keys: {', '.join(_NAME_KEYS)})")
            image = boxes.setdefault(_image_name(str(record[key])), [])
            coords = {k: v for k, v in record.items() if k != key}
            if any(k in coords for k in ("box", "bbox", "x1")):
                image.append(_box(coords, where))
    else:
        raise CommandError(f"--boxes {source}: expected a JSON object or list of records")


def _csv_boxes(source: Path, text: str, boxes: dict[str, list[Box]]) -> None:
    dialect = "excel-tab" if source.suffix.lower() == ".tsv" else "excel"
    rows = [row for row in csv.reader(text.splitlines(), dialect=dialect) if any(row)]
    if not rows:
        raise CommandError(f"--boxes {source}: the file is empty")
    columns = ["image", "x1", "y1", "x2", "y2", "label"]
    header = [c.strip().lower() for c in rows[0]]
    has_header = len(header) >= 2 and header[1] != "" and not _is_number(header[1])
    order = [0, 1, 2, 3, 4, 5]
    if has_header:
        name_key = next((k for k in _NAME_KEYS if k in header), None)
        missing = [c for c in ("x1", "y1", "x2", "y2") if c not in header]
        if name_key is None or missing:
            raise CommandError(
                f"--boxes {source}: header {rows[0]} needs columns image, x1, y1, x2, y2 "
                "(and optionally label)"
            )
        order = [header.index(name_key)] + [header.index(c) for c in ("x1", "y1", "x2", "y2")]
        order.append(header.index("label") if "label" in header else -1)
    for line, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        where = f"--boxes {source}, line {line}"
        cells = [row[i].strip() if 0 <= i < len(row) else "" for i in order]
        if cells[0] == "":
            raise CommandError(f"{where}: no image name in {row}")
        image = boxes.setdefault(_image_name(cells[0]), [])
        if all(c == "" for c in cells[1:5]):
            continue  # an image listed without boxes
        if any(c == "" for c in cells[1:5]):
            raise CommandError(f"{where}: expected {', '.join(columns[:5])}[, label], got {row}")
        image.append(_box(dict(zip(columns[1:], cells[1:])), where))


def _box(entry: Any, where: str) -> Box:
    label = None
    if isinstance(entry, dict):
        label = entry.get("label")
        if "box" in entry or "bbox" in entry:
            coords = entry.get("box", entry.get("bbox"))
        else:
            try:
                coords = [entry[k] for k in ("x1", "y1", "x2", "y2")]
            except KeyError:
                raise CommandError(f"{where}: expected x1, y1, x2, y2, got {entry}") from None
    else:
        coords = entry
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        raise CommandError(f"{where}: expected 4 coordinates x1, y1, x2, y2, got {coords!r}")
    try:
        values = [float(v) for v in coords]
    except (TypeError, ValueError):
        raise CommandError(f"{where}: coordinates must be numbers, got {list(coords)}") from None
    if not all(math.isfinite(v) for v in values):
        raise CommandError(f"{where}: coordinates must be finite, got {list(coords)}")
    x1, y1 = math.floor(values[0]), math.floor(values[1])
    x2, y2 = math.ceil(values[2]), math.ceil(values[3])
    if x2 < x1 or y2 < y1:
        raise CommandError(
            f"{where}: box {list(coords)} has x2 < x1 or y2 < y1; expected XYXY pixel corners "
            "(x1, y1, x2, y2), not x, y, width, height"
        )
    return (x1, y1, x2, y2, None if label in (None, "") else str(label))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _image_name(text: str) -> str:
    name = text.strip()
    suffix = Path(name).suffix.lower()
    return Path(name).stem if suffix in IMAGE_SUFFIXES else name


def check_box_names(
    boxes: dict[str, list[Box]], names: Sequence[str], source: str, on_error: str, report: Any
) -> dict[str, list[Box]]:
    """Boxes of images that are in the data set; unknown names stop or are dropped (warned)."""
    known = set(names)
    unknown = sorted(n for n in boxes if n not in known)
    if unknown:
        message = (
            f"--boxes {source} names {len(unknown)} image(s) that are not in DATA: "
            f"{shorten(unknown)}"
        )
        if on_error == "stop":
            raise CommandError(message + " (check the names, or pass --on-error skip to ignore)")
        report.warn(message + "; ignored")
    return {n: b for n, b in boxes.items() if n in known}


def check_box_extents(
    boxes: dict[str, list[Box]], sizes: dict[str, tuple[int, int] | None], report: Any
) -> None:
    """Warn about boxes entirely outside their image (coordinates of another image size?)."""
    outside = []
    for name, entries in boxes.items():
        size = sizes.get(name)
        if size is None:
            continue
        height, width = size
        for x1, y1, x2, y2, _ in entries:
            if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0 or x1 == x2 or y1 == y2:
                outside.append(f"{name} {[x1, y1, x2, y2]} in {height}x{width}")
    if outside:
        report.warn(
            f"{len(outside)} box(es) cover no pixel of their image (are the coordinates "
            f"in pixels of the original images?): {shorten(outside, 3)}"
        )


# --------------------------------------------------------------------------------------------
# Reading images in batches
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One image as read for a command: its model input, its pixels, or why it failed."""

    name: str
    size: tuple[int, int] | None = None  # the original H x W
    input: Tensor | None = None  # preprocessed [C', H', W']
    pixels: Tensor | None = None  # as read, [C, H, W] (only when asked for)
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
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
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

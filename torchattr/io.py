"""Attribution maps on disk: per-sample normalisation, atomic writes, reading maps back.

Convention: one map per image, float32, the image's ``H x W``, values in [0, 1], saved as
``<image id>.npy`` (:func:`save_map`); a folder of them reads back as ``{image id: map}``
(:func:`load_maps`). Every writer here is atomic: the data go to a hidden temporary file
``.<name>.<pid>.<random>.tmp`` in the destination folder, which then replaces the destination
(``os.replace``), so a reader (or a resumed run) never sees a half-written file, and an
interrupted write leaves at most such a temporary file, which the readers ignore. ``PathLike``:
a ``str`` or an ``os.PathLike[str]``, what every path argument accepts.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PathLike",
    "load_map",
    "load_maps",
    "map_names",
    "normalize_map",
    "save_json",
    "save_map",
    "write_atomic",
]

PathLike = str | os.PathLike[str]


def normalize_map(maps: Tensor) -> Tensor:
    """Min-max normalise each map over its last two dimensions (H, W) to [0, 1].

    ``(S - min S) / (max S - min S)`` per map; a constant map becomes zeros. A map holding NaN
    or inf raises ValueError (naming how many values and which maps): it has no range to scale,
    and zeros would hide the failure as a map "with no attribution". Works on ``[H, W]``,
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
    check_finite(values, "maps")
    low = values.amin(dim=(-2, -1), keepdim=True)
    span = values.amax(dim=(-2, -1), keepdim=True) - low
    scaled = (values - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled)).clamp(0, 1)


def check_finite(maps: Tensor, name: str = "maps") -> None:
    """Raise ValueError when ``maps [..., H, W]`` holds NaN or inf, naming the count and the
    first maps (leading indices) that do."""
    bad = ~torch.isfinite(maps)
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    where = ""
    if maps.ndim > 2:
        flat = bad.flatten(-2).any(-1).flatten()
        rows = flat.nonzero().flatten().tolist()
        shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        where = f" in {len(rows)} of {flat.numel()} maps (flat index {shown})"
    raise ValueError(
        f"{name} holds {count} NaN or inf value(s){where}: a map with non-finite values cannot "
        "be normalised (the model's output or gradients are not finite there)"
    )


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
    return write_atomic(target, lambda handle: np.save(handle, np.ascontiguousarray(data)))


def write_atomic(path: PathLike, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``content`` to ``path`` atomically; return the path.

    ``content`` is bytes, text (written as UTF-8) or a function that writes to the binary file
    handle it is given (``lambda f: np.save(f, array)``, ``lambda f: image.save(f, "PNG")``).
    The data go to a hidden temporary file in the destination folder (created when missing),
    which then replaces ``path`` with ``os.replace``: readers see the old file or the new one,
    never a part of it. On any error (``KeyboardInterrupt`` included) the temporary file is
    removed and the exception propagates; ``path`` is left as it was.

    Example::

        write_atomic("results/summary.md", "| method | mean |\\n")
    """
    target = Path(path)
    if isinstance(content, str):
        data: bytes | None = content.encode("utf-8")
    elif isinstance(content, (bytes, bytearray)):
        data = bytes(content)
    elif callable(content):
        data = None
    else:
        raise TypeError(
            "content must be bytes, str or a function of a file handle, "
            f"got {type(content).__name__}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666 honours the umask, unlike tempfile.mkstemp (always 0o600).
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if data is None:
                content(handle)  # type: ignore[operator]
            else:
                handle.write(data)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def save_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline), atomically; return the path.

    Non-finite floats are written as ``null`` (strict JSON has no NaN); numpy scalars and
    arrays and 0-d / small tensors are converted to Python numbers and lists first.

    Example::

        save_json("results/summary.json", {"method": "saliency", "mean": 0.42})
    """
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, text)


def load_map(path: PathLike) -> np.ndarray:
    """Read one saved map: a float32 ``[H, W]`` array (a volume's map: ``[D, H, W]``).

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a
    ``.npy`` array of shape ``[H, W]`` or ``[D, H, W]`` with real values (pickled objects are
    refused).

    Example::

        heat = load_map("maps/saliency/img_0007.npy")   # [H, W] float32 in [0, 1]
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no map file at {source}")
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{source} is not a readable .npy map: {error}") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{source} holds {type(array).__name__}: expected one [H, W] array")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{source} has dtype {array.dtype}: expected real numbers")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{source} has shape {list(array.shape)}: expected a map [H, W] or [D, H, W]"
        )
    return array.astype(np.float32, copy=False)


def map_names(folder: PathLike) -> list[str]:
    """Sorted image names (file stems) of the maps ``*.npy`` in ``folder`` (not recursive).

    Hidden files (names starting with ``.``, such as the temporary files of an interrupted
    write) are ignored.

    Example::

        names = map_names("maps/saliency")      # ["img_0001", "img_0002", ...]
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder of maps at {root}")
    return sorted(
        p.name[: -len(".npy")]
        for p in root.iterdir()
        if p.name.endswith(".npy") and not p.name.startswith(".") and p.is_file()
    )


def load_maps(folder: PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a folder of maps back: ``{image name: float32 [H, W] array}``, sorted by name.

    ``names=None`` reads every ``<name>.npy`` in ``folder`` (see :func:`map_names`); otherwise
    exactly the given names, in the given order, and a FileNotFoundError lists those missing.

    Example::

        maps = load_maps("out/integrated_gradients")            # {"img_00000": [H, W], ...}
        two = load_maps("out/saliency", ["img_00000", "img_00003"])
    """
    root = Path(folder)
    if names is None:
        wanted = map_names(root)
    else:
        if isinstance(names, str):
            raise TypeError("names must be an iterable of image names, got a str")
        wanted = list(names)
        missing = [n for n in wanted if not (root / f"{n}.npy").is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            shown = ", ".join(missing[:5]) + more
            raise FileNotFoundError(f"{len(missing)} map(s) missing in {root}: {shown}")
    return {name: load_map(root / f"{name}.npy") for name in wanted}


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy / torch values turned into Python ones and non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj

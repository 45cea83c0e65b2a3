"""Per-map dependency records: a map is trusted only if everything that made it is unchanged.

Each map ``OUT/<method>/<name>.npy`` written by ``generate`` has a record
``OUT/<method>/.records/<name>.json``::

    {"input": "<sha256 of the image file's bytes, or of the tensor row>",
     "model": "<the model's sha256>", "method": "integrated_gradients",
     "options": {...}, "target": "argmax", "preprocessing": {...},
     "torchattr": "0.1.0", "map": "<sha256 of the map file's bytes>"}

Writing order (:func:`begin_map`, then the map, then :func:`finish_record`): the old record is
removed *before* the map is replaced, and the new one written (atomically) *after* it. An
interruption anywhere leaves either a map with its own record or a map without one, which is
never trusted; so an interrupted ``--overwrite`` cannot leave a mix of old and new maps that a
resumed run would keep. :func:`verdict` compares a record with what the current run would
record and names the first difference (``changed input``, ``changed model``, ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchattr
from torchattr.io import save_json

RECORDS = ".records"
# The dependencies in the order their differences are reported, with the reason's words.
DEPENDENCIES = (
    ("input", "changed input"),
    ("model", "changed model"),
    ("method", "changed options"),
    ("options", "changed options"),
    ("target", "changed options"),
    ("preprocessing", "changed preprocessing"),
    ("torchattr", "changed torchattr version"),
)
MISSING = "missing record"
INCOMPLETE = "missing or incomplete map"
MODIFIED = "map changed after it was written"


MAP_SUFFIXES = (".npy", ".nii.gz", ".nii")


def record_path(map_path: Path) -> Path:
    """``<folder>/<name>.npy`` (or ``.nii.gz`` / ``.nii``) -> ``<folder>/.records/<name>.json``."""
    name = map_path.name
    suffix = next((s for s in MAP_SUFFIXES if name.endswith(s)), map_path.suffix)
    return map_path.parent / RECORDS / (name[: len(name) - len(suffix)] + ".json")


def dependencies(
    input_digest: str | None,
    model: str,
    method: str,
    options: dict[str, Any],
    target: Any,
    preprocessing: dict[str, Any],
) -> dict[str, Any]:
    """What one map depends on, as recorded (JSON-plain: lists, not tuples)."""
    record = {
        "input": input_digest,
        "model": model,
        "method": method,
        "options": options,
        "target": target,
        "preprocessing": preprocessing,
        "torchattr": torchattr.__version__,
    }
    return json.loads(json.dumps(record))


def read_record(map_path: Path) -> dict[str, Any] | None:
    """The record of a map, or None when it is missing or unreadable."""
    try:
        data = json.loads(record_path(map_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verdict(map_path: Path, wanted: dict[str, Any]) -> str | None:
    """None when the map at ``map_path`` can be kept, else why it must be recomputed.

    Kept only when its record exists, names every dependency in ``wanted`` with the same value,
    and was written for the very bytes now in the map file (``map``: their sha256; reading the
    maps back costs far less than computing them).
    """
    record = read_record(map_path)
    if record is None:
        return MISSING
    if wanted.get("input") is None:
        return "changed input"  # the input cannot be read now: nothing to compare with
    for key, reason in DEPENDENCIES:
        if record.get(key) != wanted.get(key):
            return reason
    try:
        digest = file_digest(map_path)
    except OSError:
        return INCOMPLETE
    return None if record.get("map") == digest else MODIFIED


def begin_map(map_path: Path) -> None:
    """Remove the map's record before its map is replaced (an interruption then leaves a map
    without a record: never trusted)."""
    record_path(map_path).unlink(missing_ok=True)


def finish_record(map_path: Path, wanted: dict[str, Any]) -> Path:
    """Write the record of a map just written (atomically, after the map)."""
    return save_json(record_path(map_path), {**wanted, "map": file_digest(map_path)})


def input_digest(images: Any, name: str) -> str | None:
    """sha256 of image ``name``'s content: the bytes of its file when it has one
    (``images.files[name]``), else of its pixels as loaded (``images.load(name)``: a tensor
    row, a volume); None when it cannot be read."""
    files = getattr(images, "files", None)
    path = files.get(name) if isinstance(files, dict) else None
    try:
        if isinstance(path, Path) and path.is_file():
            return file_digest(path)
        return tensor_digest(images.load(name))
    except Exception:  # an unreadable image: reported (or skipped) when it is read for the map
        return None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(values: torch.Tensor | np.ndarray) -> str:
    """sha256 of an array's shape, dtype and values (C order)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{list(array.shape)}:{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()

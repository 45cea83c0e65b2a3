"""Ground-truth boxes: XYXY pixel boxes per image name from JSON or CSV (:func:`load_boxes`)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchattr.cli._common import CommandError, shorten
from torchattr.cli._data.base import image_name

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
            image = boxes.setdefault(image_name(name), [])
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
            image = boxes.setdefault(image_name(str(record[key])), [])
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
        image = boxes.setdefault(image_name(cells[0]), [])
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
    boxes: dict[str, list[Box]], sizes: dict[str, tuple[int, ...] | None], report: Any
) -> None:
    """Warn about boxes entirely outside their image (coordinates of another image size?);
    boxes of a volume stop (they are 2-D: volumes take ``--masks``)."""
    outside = []
    for name, entries in boxes.items():
        size = sizes.get(name)
        if size is None:
            continue
        if len(size) == 3:
            raise CommandError(
                f"--boxes gives 2-D boxes, and {name} is a volume {list(size)}: give its ground "
                "truth as a voxel label mask with --masks FOLDER"
            )
        height, width = size
        for x1, y1, x2, y2, _ in entries:
            if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0 or x1 == x2 or y1 == y2:
                outside.append(f"{name} {[x1, y1, x2, y2]} in {height}x{width}")
    if outside:
        report.warn(
            f"{len(outside)} box(es) cover no pixel of their image (are the coordinates "
            f"in pixels of the original images?): {shorten(outside, 3)}"
        )

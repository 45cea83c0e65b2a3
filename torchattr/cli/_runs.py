"""``run.json``: what ``generate`` recorded about the maps of each method in an output folder.

Layout (one record per method folder, merged across runs)::

    {"torchattr": "0.1.0",
     "methods": {"saliency": {"model": {...}, "data": {...}, "preprocessing": {...},
                              "target": "argmax", "options": {...}, "maps": 120,
                              "written": 20, "kept": 100, "failed": [...], ...}}}

A resumed run must use the settings its maps were made with; :func:`settings_conflicts` names
the ones that differ.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import torchattr
from torchattr.cli._common import CommandError
from torchattr.io import save_json

RUN_FILE = "run.json"
# What must agree for maps of one folder to belong together (see settings_conflicts).
SETTINGS = ("model", "preprocessing", "target", "options")


def read_runs(out: Path) -> dict[str, Any]:
    """The ``run.json`` of ``out`` (an empty record when there is none)."""
    path = out / RUN_FILE
    if not path.is_file():
        return {"torchattr": torchattr.__version__, "methods": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(
            f"{path} is not readable JSON ({error}); move it away to continue"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise CommandError(f"{path} is not a torchattr run record; move it away to continue")
    return data


def method_record(maps: Path) -> dict[str, Any] | None:
    """The record of the maps folder ``maps`` (``<out>/<method>``) in ``<out>/run.json``."""
    maps = maps.resolve()
    path = maps.parent / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    record = data.get("methods", {}).get(maps.name) if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def settings_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two records' settings (empty: compatible)."""
    differences = []
    for key in SETTINGS:
        before, after = old.get(key), new.get(key)
        if key == "model" and isinstance(before, dict) and isinstance(after, dict):
            if before.get("sha256") != after.get("sha256"):
                differences.append(
                    f"model {before.get('spec')} (sha256 {str(before.get('sha256'))[:12]}) -> "
                    f"{after.get('spec')} (sha256 {str(after.get('sha256'))[:12]})"
                )
        elif _plain(before) != _plain(after):
            differences.append(f"{key} {json.dumps(before)} -> {json.dumps(after)}")
    return differences


def write_runs(out: Path, records: dict[str, dict[str, Any]]) -> Path:
    """Merge ``records`` into ``out/run.json`` (re-read first) and write it atomically."""
    data = read_runs(out)
    data["torchattr"] = torchattr.__version__
    data["updated"] = now()
    data["methods"].update(records)
    return save_json(out / RUN_FILE, data)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """JSON round trip, so that tuples and lists compare equal."""
    return json.loads(json.dumps(value))

"""``torchattr report RUN --out DIR``: a static HTML report of a run, for readers who look.

RUN is the output folder of ``torchattr demo`` (``manifest.json``, ``metrics.json``,
``images/``, ``maps/``), of ``torchattr demo --ehr`` (``ehr_summary.json``), of ``evaluate``
(``summary.json``, ``per_image.json``; its maps and images are read from where the summary
says), or of ``compare`` (``compare.json``: every compared ``evaluate`` result). DIR receives
``index.html`` and ``img/`` (PNG pictures): no server, no internet, no CDN; it opens from a file
or a shared folder and can be copied as a whole.

The page holds (see :mod:`torchattr.cli._report_html`):

* provenance: the model (spec, sha256), data, preprocessing, target, method options, the
  torchattr / torch versions and dates recorded by the run, and those of the report;
* the method-comparison table: every metric with its direction
  (:data:`torchattr.metrics.DIRECTIONS`), mean +- std and n per method, the best mean per
  column marked; columns can be hidden and rows filtered and sorted (a few lines of JavaScript);
* per-metric distributions (inline SVG histograms, one row per method);
* the gallery, one card per image: the image with the ground-truth outline, each method's
  overlay (``viridis``, shown where the map is at least ``--threshold`` of its maximum; the
  outline drawn just outside the region) with its colour bar, the model's score and target, and
  the metric values; ordered worst or best first by a chosen method and metric, filtered by
  method, paged (``--page-size`` cards); pictures are thumbnails (at most ``--thumbnail``
  pixels a side, the full-size picture linked when larger; small images are enlarged by a whole
  factor, nearest neighbour, before drawing, so that outlines stay one pixel thin), so 10 000
  images stay responsive.
  Volumes ``[D, H, W]`` show the axial, coronal and sagittal slices through the map's maximum
  and the maximum intensity projections (:func:`torchattr.viz.volume_panels`);
* failures and skipped images, with their errors.

Needs the ``viz`` extra (Pillow, for the PNG files); templating is the standard library's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchattr
from torchattr.cli import _report_html as html
from torchattr.cli._common import CommandError, Reporter, float_in, int_at_least
from torchattr.cli._data import ImageError
from torchattr.io import save_json, write_atomic
from torchattr.metrics.directions import direction

EVALUATE_METRICS = (
    "proportional_energy",
    "saliency_focus",
    "pointing_game",
    "relevance_rank_accuracy",
    "road_score",
)
DEMO_METRICS = ("proportional_energy", "saliency_focus", "pointing_game", "road")

Loader = Callable[[], Any]


@dataclass
class ImageEntry:
    """One image of the gallery: its pictures are made from ``image()`` and ``maps[method]()``."""

    id: str
    image: Loader | None = None  # -> [C, H, W], [H, W] or [D, H, W]; None: not available
    maps: dict[str, Loader] = field(default_factory=dict)  # method -> [H, W] or [D, H, W]
    boxes: list[list[float]] = field(default_factory=list)  # XYXY, ends exclusive
    target: str = ""
    score: float | None = None
    score_kind: str = ""  # softmax, sigmoid or logit: what ``score`` is ("" not recorded)
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)  # method -> metric


@dataclass
class Run:
    """What a report shows, read from a run folder by one of the ``_read_*`` functions."""

    kind: str
    title: str
    provenance: list[tuple[str, str]]
    methods: list[str]
    metrics: list[str]
    summary: dict[str, dict[str, dict[str, Any]]]  # method -> metric -> {mean, std, n}
    images: list[ImageEntry]
    references: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    std_kind: str = "sample"
    extra_sections: list[tuple[str, str, str]] = field(default_factory=list)  # title, html, id


def add_parser(subparsers: Any) -> None:
    """Register the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="a static HTML report of a demo, evaluate or compare run (index.html + images)",
        description="Write OUT/index.html and OUT/img/: provenance, a method-comparison table "
        "(direction, mean +- std, best marked), metric distributions and a gallery of overlays "
        "(worst and best first, filtered by method and metric, paged) of the run in RUN (a "
        "demo, evaluate or compare output folder). Self-contained: no server, no internet.",
    )
    parser.add_argument("run", metavar="RUN", type=Path, help="demo/evaluate/compare output")
    parser.add_argument("--out", "-o", type=Path, required=True, help="report folder")
    parser.add_argument(
        "--threshold",
        type=float_in(0, 1),
        default=0.2,
        help="overlays show the map where it is at least this fraction of its maximum "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--thumbnail",
        type=int_at_least(16),
        default=192,
        help="largest side of gallery pictures in pixels; larger ones are linked at full size "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--page-size",
        type=int_at_least(1),
        default=24,
        help="gallery cards per page (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``torchattr report``: returns the exit code."""
    report = Reporter("report")
    path = write_report(
        args.run,
        args.out,
        threshold=args.threshold,
        thumbnail=args.thumbnail,
        page_size=args.page_size,
    )
    report.result(f"wrote the report: {path}")
    return 0


def write_report(
    run_dir: Path,
    out: Path,
    *,
    threshold: float = 0.2,
    thumbnail: int = 192,
    page_size: int = 24,
) -> Path:
    """Read the run in ``run_dir``, write ``out/index.html`` and ``out/img/``; return the page.

    Raises :class:`~torchattr.cli._common.CommandError` when ``run_dir`` is not a run torchattr
    wrote, and ImportError without Pillow.
    """
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise CommandError(f"RUN {run_dir}: no such folder")
    loaded = read_run(run_dir)
    pictures = _pictures(loaded, out, threshold, thumbnail)
    page = html.page(
        loaded,
        pictures,
        threshold=threshold,
        page_size=page_size,
        generated=_report_provenance(),
    )
    save_json(out / "report.json", _record(loaded))
    return write_atomic(out / "index.html", page)


def read_run(run_dir: Path) -> Run:
    """The :class:`Run` of a demo, EHR demo, evaluate or compare output folder."""
    if (run_dir / "manifest.json").is_file() and (run_dir / "metrics.json").is_file():
        return _read_demo(run_dir)
    if (run_dir / "ehr_summary.json").is_file():
        return _read_ehr(run_dir)
    if (run_dir / "compare.json").is_file():
        return _read_compare(run_dir)
    if (run_dir / "summary.json").is_file():
        return _read_evaluate([run_dir], None)
    if (run_dir / "run.json").is_file():
        return _read_generate(run_dir)
    raise CommandError(
        f"RUN {run_dir} holds none of manifest.json + metrics.json (demo), ehr_summary.json "
        "(demo --ehr), compare.json (compare), summary.json (evaluate) or run.json (generate): "
        "expected the output folder of one of those commands"
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(f"{path} is not readable JSON ({error})") from None


# ------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------


def _read_demo(run_dir: Path) -> Run:
    manifest = _json(run_dir / "manifest.json")
    record = _json(run_dir / "metrics.json")
    methods = list(record["methods"])
    metrics = [m for m in DEMO_METRICS if m in record["methods"][methods[0]]]
    ids = list(record["images"])
    boxes = {entry["id"]: entry["boxes_xyxy"] for entry in manifest.get("images", [])}
    extra = {entry["id"]: entry for entry in manifest.get("images", [])}
    images = []
    for i, image_id in enumerate(ids):
        entry = ImageEntry(
            id=image_id,
            image=_npy_loader(run_dir / "images" / f"{image_id}.npy"),
            maps={m: _npy_loader(run_dir / "maps" / m / f"{image_id}.npy") for m in methods},
            boxes=boxes.get(image_id, []),
            target=str(manifest.get("target", "lesion (logit 0)")),
            score=extra.get(image_id, {}).get("score"),
            values={
                m: {k: record["methods"][m][k]["per_image"][i] for k in metrics} for m in methods
            },
        )
        images.append(entry)
    summary = {m: _stats(record["methods"][m], metrics, len(ids)) for m in methods}
    references = {
        f"{name} (reference)": _stats(values, metrics, len(ids))
        for name, values in record.get("reference", {}).items()
    }
    if "box_area_fraction" in record:
        area = record["box_area_fraction"]
        references["uniform map (box area)"] = {
            "proportional_energy": {"mean": area["mean"], "std": area["std"], "n": len(ids)}
        }
    settings = manifest.get("settings", {})
    accuracy = manifest.get("held_out_accuracy")
    provenance = [
        ("run", f"torchattr demo, {run_dir.resolve()}"),
        (
            "model",
            f"PhantomNet, trained {settings.get('epochs')} epoch(s) on {settings.get('n_train')} "
            f"phantoms (seed {settings.get('seed')}); weights sha256 "
            f"{manifest.get('model_sha256', 'not recorded')}",
        ),
        ("held-out accuracy", _accuracy_text(manifest)),
        (
            "data",
            f"{settings.get('n_test')} held-out lesion phantoms "
            f"{settings.get('size')}x{settings.get('size')}; {len(ids)} explained",
        ),
        ("preprocessing", "none (images in [0, 1], one channel)"),
        ("target", str(manifest.get("target", "lesion logit (class 0)"))),
        ("method options", _options_text(settings, manifest)),
        ("maps", "|A| maximised over channels (CAM maps as they come), min-max per image"),
        ("versions", _versions_text(manifest.get("versions"))),
        ("date", str(manifest.get("created", "not recorded"))),
    ]
    notes = []
    if accuracy is not None and manifest.get("above_chance") is False:
        notes.append("the model is not clearly above chance: its maps are not evidence")
    return Run(
        kind="demo",
        title="torchattr demo: attribution methods on lesion phantoms",
        provenance=provenance,
        methods=methods,
        metrics=metrics,
        summary=summary,
        images=images,
        references=references,
        std_kind="population",
        notes=notes,
    )


def _accuracy_text(manifest: dict[str, Any]) -> str:
    accuracy = manifest.get("held_out_accuracy")
    if accuracy is None:
        return "not recorded"
    text = f"{accuracy:.3f}"
    chance = manifest.get("chance")
    if isinstance(chance, dict):
        text += f" (chance {chance.get('accuracy', 0.5):g}; binomial p = {chance.get('p'):.2g})"
    return text


def _options_text(settings: dict[str, Any], manifest: dict[str, Any]) -> str:
    return (
        f"SmoothGrad {settings.get('smoothgrad_samples')} samples, noise "
        f"{settings.get('smoothgrad_noise')}; Integrated Gradients {settings.get('ig_steps')} "
        f"steps; CAM layer {manifest.get('cam_layer')}; ROAD fractions "
        f"{settings.get('road_fractions')}; pointing tolerance "
        f"{settings.get('pointing_tolerance')} px"
    )


def _versions_text(versions: Any) -> str:
    if not isinstance(versions, dict):
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _stats(entry: dict[str, Any], metrics: list[str], n: int) -> dict[str, dict[str, Any]]:
    result = {}
    for metric in metrics:
        if metric in entry:
            values = entry[metric]
            count = len(values.get("per_image", [])) or n
            result[metric] = {"mean": values["mean"], "std": values["std"], "n": count}
    return result


def _read_compare(run_dir: Path) -> Run:
    table = _json(run_dir / "compare.json")
    rows = table.get("methods") or []
    if not rows:
        raise CommandError(f"{run_dir / 'compare.json'} lists no compared results")
    paths = [Path(row["result"]) for row in rows]
    labels = [str(row.get("label") or row.get("method")) for row in rows]
    loaded = _read_evaluate(paths, labels)
    loaded.kind = "compare"
    loaded.title = f"torchattr compare: {len(rows)} methods"
    loaded.provenance.insert(0, ("run", f"torchattr compare, {run_dir.resolve()}"))
    loaded.notes += [str(w) for w in table.get("warnings", [])]
    return loaded


def _read_evaluate(paths: list[Path], labels: list[str] | None) -> Run:
    summaries = []
    for path in paths:
        if not (path / "summary.json").is_file():
            raise CommandError(f"{path}: no summary.json (an evaluate output folder expected)")
        summaries.append((_json(path / "summary.json"), _json(path / "per_image.json")))
    methods = labels or [str(s.get("method")) for s, _ in summaries]
    if len(set(methods)) != len(methods):
        methods = [f"{m} ({p.name})" for m, p in zip(methods, paths)]
    metrics = [
        m
        for m in EVALUATE_METRICS
        if any((s["metrics"].get(m) or {}).get("n") for s, _ in summaries)
    ]
    summary = {
        label: {
            m: {key: s["metrics"][m].get(key) for key in ("mean", "std", "n")}
            for m in metrics
            if m in s["metrics"]
        }
        for label, (s, _) in zip(methods, summaries)
    }
    first = summaries[0][0]
    data = _open_data((first.get("data") or {}).get("path"))
    box_notes: list[str] = []
    boxes = _read_boxes(first.get("boxes"), box_notes)
    entries: dict[str, ImageEntry] = {}
    failures = []
    for label, (s, rows) in zip(methods, summaries):
        maps_dir = Path(str(s.get("maps")))
        for row in rows.get("images", []):
            name = str(row["image"])
            entry = entries.get(name)
            if entry is None:
                entry = entries[name] = ImageEntry(
                    id=name,
                    image=None if data is None else _data_loader(data, name),
                    boxes=boxes.get(name, []),
                    target=str(row.get("target", s.get("target", ""))),
                    score=row.get("score"),
                    score_kind=str(row.get("score_kind") or ""),
                )
            entry.maps[label] = _npy_loader(maps_dir / f"{name}.npy")
            entry.values[label] = {m: row.get(m) for m in metrics}
        failures += [
            {"method": label, "image": str(f["image"]), "error": str(f["error"])}
            for f in s.get("skipped", [])
        ]
    notes = [str(n) for s, _ in summaries for n in s.get("notes", [])] + box_notes
    if data is None:
        notes.append("the images of the run are not readable from here: overlays show maps alone")
    model = first.get("model") or {}
    road = first.get("road")
    provenance = [
        ("run", f"torchattr evaluate, {', '.join(str(p.resolve()) for p in paths)}"),
        ("model", f"{model.get('spec', 'not recorded')} (sha256 {model.get('sha256', '-')})"),
        ("data", json.dumps(first.get("data"))),
        ("boxes", str(first.get("boxes"))),
        ("preprocessing", json.dumps(first.get("preprocessing"))),
        ("target", str(first.get("target"))),
        ("ROAD", json.dumps(road) if road else "not computed"),
        ("pointing game tolerance", f"{first.get('pointing_game_tolerance')} px"),
    ]
    for label, (s, _) in zip(methods, summaries):
        record = _generate_record(Path(str(s.get("maps"))))
        if record:
            provenance.append((f"method options: {label}", json.dumps(record.get("options"))))
    provenance += [
        ("versions", f"torchattr {_recorded_version(paths[0])}"),
        ("date", ", ".join(str(s.get("updated", "not recorded")) for s, _ in summaries)),
    ]
    return Run(
        kind="evaluate",
        title=f"torchattr evaluate: {', '.join(methods)}",
        provenance=provenance,
        methods=methods,
        metrics=metrics,
        summary=summary,
        images=sorted(entries.values(), key=lambda e: e.id),
        failures=failures,
        notes=notes,
    )


def _read_generate(run_dir: Path) -> Run:
    """A ``generate`` output folder: maps and provenance, no metrics (evaluate scores them)."""
    record = _json(run_dir / "run.json")
    methods = [m for m in record.get("methods", {}) if (run_dir / m).is_dir()]
    if not methods:
        raise CommandError(f"{run_dir / 'run.json'} lists no method folder of maps")
    first = record["methods"][methods[0]]
    data = _open_data((first.get("data") or {}).get("path"))
    entries: dict[str, ImageEntry] = {}
    failures = []
    for method in methods:
        for path in sorted((run_dir / method).glob("*.npy")):
            entry = entries.get(path.stem)
            if entry is None:
                entry = entries[path.stem] = ImageEntry(
                    id=path.stem,
                    image=None if data is None else _data_loader(data, path.stem),
                    target=str(record["methods"][method].get("target", "")),
                )
            entry.maps[method] = _npy_loader(path)
        failures += [
            {"method": method, "image": str(f["image"]), "error": str(f["error"])}
            for f in record["methods"][method].get("failed", [])
        ]
    model = first.get("model") or {}
    provenance = [
        ("run", f"torchattr generate, {run_dir.resolve()}"),
        ("model", f"{model.get('spec', 'not recorded')} (sha256 {model.get('sha256', '-')})"),
        ("data", json.dumps(first.get("data"))),
        ("preprocessing", json.dumps(first.get("preprocessing"))),
        ("target", str(first.get("target"))),
        *(
            (f"method options: {m}", json.dumps(record["methods"][m].get("options")))
            for m in methods
        ),
        ("versions", f"torchattr {record.get('torchattr', 'not recorded')}"),
        ("date", str(record.get("updated", "not recorded"))),
    ]
    notes = ["no metrics: score the maps with `torchattr evaluate`, then report its output"]
    if data is None:
        notes.append("the images of the run are not readable from here: overlays show maps alone")
    return Run(
        kind="generate",
        title=f"torchattr generate: {', '.join(methods)}",
        provenance=provenance,
        methods=methods,
        metrics=[],
        summary={m: {} for m in methods},
        images=sorted(entries.values(), key=lambda e: e.id),
        failures=failures,
        notes=notes,
    )


def _generate_record(maps_dir: Path) -> dict[str, Any] | None:
    from torchattr.cli._runs import method_record

    try:
        return method_record(maps_dir)
    except OSError:
        return None


def _recorded_version(path: Path) -> str:
    from torchattr.cli._runs import RUN_FILE

    for candidate in (path / RUN_FILE, path.parent / RUN_FILE):
        if candidate.is_file():
            try:
                return str(json.loads(candidate.read_text()).get("torchattr"))
            except (OSError, json.JSONDecodeError):
                break
    return "not recorded"


def _open_data(path: str | None) -> Any:
    if not path:
        return None
    from torchattr.cli._data import open_images

    try:
        return open_images(path)
    except (CommandError, OSError, ValueError):
        return None


def _data_loader(data: Any, name: str) -> Loader:
    return lambda: data.load(name)


def _read_boxes(path: str | None, notes: list[str]) -> dict[str, list[list[float]]]:
    """The run's ground-truth boxes by image; a note in ``notes`` when they cannot be read."""
    if not path:
        return {}
    if not Path(path).is_file():
        notes.append(f"the boxes file {path} is not readable from here: no outlines drawn")
        return {}
    from torchattr.cli._data import load_boxes

    try:
        loaded = load_boxes(path)
    except CommandError as error:
        notes.append(f"the boxes file {path} could not be read ({error}): no outlines drawn")
        return {}
    return {name: [list(_xyxy(b)) for b in boxes] for name, boxes in loaded.items()}


def _xyxy(box: Any) -> tuple[float, float, float, float]:
    """The coordinates of a ``load_boxes`` box ``(x1, y1, x2, y2, label)``."""
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


def _read_ehr(run_dir: Path) -> Run:
    """The EHR demo: no pictures; the planted code's rank and each patient's top codes."""
    summary = _json(run_dir / "ehr_summary.json")
    settings = summary.get("settings", {})
    planted = summary.get("planted_code", {})
    provenance = [
        ("run", f"torchattr demo --ehr, {run_dir.resolve()}"),
        (
            "model",
            f"EHRNet (embedding dim {settings.get('dim')}), trained {settings.get('epochs')} "
            f"epoch(s) on {settings.get('n_train')} synthetic patients (seed "
            f"{settings.get('seed')})",
        ),
        (
            "held-out accuracy",
            f"{summary.get('held_out_accuracy', float('nan')):.3f} (the true risk model: "
            f"{summary.get('true_risk_model_accuracy', float('nan')):.3f})",
        ),
        (
            "data",
            f"{settings.get('n_test')} held-out synthetic patients; planted code "
            f"{planted.get('name')}",
        ),
        ("target", "outcome logit"),
        (
            "method options",
            f"Integrated Gradients in embedding space, {settings.get('ig_steps')} steps; "
            "baseline UNK codes and the training mean of the labs",
        ),
        ("versions", _versions_text(summary.get("versions"))),
        ("date", str(summary.get("created", "not recorded"))),
    ]
    return Run(
        kind="ehr",
        title="torchattr demo --ehr: which codes drive the outcome?",
        provenance=provenance,
        methods=[],
        metrics=[],
        summary={},
        images=[],
        extra_sections=html.ehr_sections(summary),
    )


def _npy_loader(path: Path) -> Loader:
    def load() -> np.ndarray:
        array = np.load(path, allow_pickle=False)
        if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path}: expected a real [H, W] or [D, H, W] array")
        return array

    return load


# ------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------


@dataclass
class Pictures:
    """Paths (relative to the report) of every image's pictures, and what failed."""

    image: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # id -> panels
    maps: dict[str, dict[str, list[dict[str, str]]]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)


def _pictures(loaded: Run, out: Path, threshold: float, thumbnail: int) -> Pictures:
    from torchattr import viz

    result = Pictures()
    for i, entry in enumerate(loaded.images):
        folder = f"img/{i // 1000:03d}/{i:06d}"
        image = _load(entry.image, entry.id, "image", result.errors)
        maps = {m: _load(f, entry.id, m, result.errors) for m, f in entry.maps.items()}
        size = next((m.shape for m in maps.values() if m is not None), None)
        if image is not None and size is not None:
            image = _match_image(image, size)
        if size is not None and len(size) == 3:
            result.volumes.add(entry.id)
        if size is None and image is None:
            continue
        base = image if image is not None else np.zeros(size)
        scale, boxes = 1, entry.boxes
        if size is None or len(size) == 2:  # enlarge small pictures: thin outlines, visible maps
            shape = size if size is not None else base.shape[-2:]
            scale = max(1, min(8, thumbnail // max(shape)))
            base = _enlarge(viz.to_rgb(base, size=shape), scale)
            boxes = [[v * scale for v in box] for box in entry.boxes]
        panels_image = _image_panels(viz, base, boxes, size)
        result.image[entry.id] = _save_panels(out, f"{folder}/image", panels_image, thumbnail)
        result.maps[entry.id] = {}
        for k, (method, saliency) in enumerate(maps.items()):
            if saliency is None:
                continue
            try:
                if saliency.ndim == 2:
                    saliency = _enlarge(saliency, scale)
                panels = _map_panels(viz, base, saliency, boxes, threshold)
            except ValueError as error:
                result.errors.append({"method": method, "image": entry.id, "error": str(error)})
                continue
            result.maps[entry.id][method] = _save_panels(out, f"{folder}/m{k}", panels, thumbnail)
    return result


def _enlarge(picture: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel of ``[H, W, ...]`` repeated ``scale`` x ``scale`` times (nearest neighbour)."""
    return picture.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else picture


def _load(loader: Loader | None, image_id: str, what: str, errors: list[dict[str, str]]) -> Any:
    if loader is None:
        return None
    try:
        value = loader()
    except (OSError, ValueError, RuntimeError, ImageError) as error:  # listed, not fatal
        text = f"{type(error).__name__}: {error}"
        errors.append({"method": what, "image": image_id, "error": text})
        return None
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if not np.isfinite(array).all():
        errors.append({"method": what, "image": image_id, "error": "holds NaN or infinite values"})
        return None
    return array


def _match_image(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray | None:
    """The image in a layout the overlays accept for maps of ``size``, or None if it differs."""
    if len(size) == 3:
        squeezed = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        return squeezed if squeezed.shape == tuple(size) else None
    if image.shape[-2:] == tuple(size) and image.ndim in (2, 3):
        if image.ndim == 3 and image.shape[0] not in (1, 3):
            return None
        return image
    if image.ndim == 3 and image.shape[:2] == tuple(size) and image.shape[2] in (1, 3):
        return image
    return None


def _image_panels(
    viz: Any, image: np.ndarray, boxes: list[list[float]], size: tuple[int, ...] | None
) -> list[tuple[str, np.ndarray]]:
    if image.ndim == 3 and size is not None and len(size) == 3:
        panels = viz.volume_panels(image, np.zeros(image.shape), alpha=0.0)
        return list(panels.items())
    picture = viz.to_rgb(image)
    if boxes:
        picture = viz.draw_boxes(picture, boxes, outline="outside")
    return [("image", picture)]


def _map_panels(
    viz: Any, image: np.ndarray, saliency: np.ndarray, boxes: list[list[float]], threshold: float
) -> list[tuple[str, np.ndarray]]:
    if saliency.ndim == 3:
        volume = image if image.shape == saliency.shape else np.zeros(saliency.shape)
        return list(viz.volume_panels(volume, saliency, threshold=threshold).items())
    if image.shape[:2] != saliency.shape and image.shape[-2:] != saliency.shape:
        image = np.zeros(saliency.shape)
    picture = viz.overlay(
        image, saliency, threshold=threshold, boxes=boxes or None, outline="outside"
    )
    return [("overlay", picture)]


def _save_panels(
    out: Path, stem: str, panels: list[tuple[str, np.ndarray]], thumbnail: int
) -> list[dict[str, str]]:
    from torchattr import viz

    saved = []
    for j, (name, picture) in enumerate(panels):
        suffix = "" if len(panels) == 1 else f"_{j}"
        small = _thumbnail(picture, thumbnail)
        entry = {"name": name, "src": f"{stem}{suffix}.png"}
        viz.save_png(out / entry["src"], small)
        if small.shape != picture.shape:
            entry["full"] = f"{stem}{suffix}_full.png"
            viz.save_png(out / entry["full"], picture)
        saved.append(entry)
    return saved


def _thumbnail(picture: np.ndarray, largest: int) -> np.ndarray:
    height, width = picture.shape[:2]
    if max(height, width) <= largest:
        return picture
    from PIL import Image

    scale = largest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS))


# ------------------------------------------------------------------------------------------
# Provenance of the report, and its JSON record
# ------------------------------------------------------------------------------------------


def _report_provenance() -> list[tuple[str, str]]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return [
        (
            "report made with",
            f"torchattr {torchattr.__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}",
        ),
        ("report date", now),
    ]


def _record(loaded: Run) -> dict[str, Any]:
    """``report.json``: the numbers the page shows, for checks and other tools."""

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return {
        "kind": loaded.kind,
        "methods": loaded.methods,
        "metrics": loaded.metrics,
        "directions": {m: direction(m).word for m in loaded.metrics},
        "summary": {
            method: {m: {k: clean(v) for k, v in s.items()} for m, s in stats.items()}
            for method, stats in loaded.summary.items()
        },
        "images": [entry.id for entry in loaded.images],
        "failures": loaded.failures,
    }

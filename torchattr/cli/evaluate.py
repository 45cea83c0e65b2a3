"""``torchattr evaluate MODEL DATA MAPS --boxes FILE --out DIR``: scores of a folder of maps.

Per image (the map as saved: the image's own size, values in [0, 1]):

* localisation against the ground-truth boxes (images listed in ``--boxes`` with at least one
  box; the others get ``null`` and stay out of these statistics):
  :func:`~torchattr.metrics.proportional_energy`, :func:`~torchattr.metrics.saliency_focus`,
  :func:`~torchattr.metrics.pointing_game` (``--tolerance`` pixels),
  :func:`~torchattr.metrics.relevance_rank_accuracy`; or against label masks (``--masks``,
  foreground = label > 0; volumes ``[D, H, W]`` take masks only, see
  :func:`torchattr.cli._volumes.mask_localisation`);
* ROAD (:func:`~torchattr.metrics.road`, noisy linear imputation) of the class explained by
  ``generate``: MoRF and LeRF scores at ``--fractions`` percent (default 20 40 60 80) of the
  model input (the map resized to it when the preprocessing resizes), and
  ``road_score = mean_p (LeRF(1 - p) - MoRF(p)) / 2`` (:func:`~torchattr.metrics.road_summary`:
  both impute as many pixels, so a random map scores 0; the fractions must be symmetric). The
  tie-breaker and the noise of image ``name`` come from a generator seeded with
  ``derive_seed(--seed, "road/<name>")``, the same for MoRF and LeRF.

The preprocessing and target default to those ``generate`` recorded for MAPS in its ``run.json``.
MODEL must be the model that made the maps: its sha256 is compared with the one in ``run.json``
and in each map's record, and a different one is refused naming both hashes (unless
``--allow-model-mismatch``, then a warning). A map whose record names another input (sha256 of
the image file or tensor row) than DATA's image of that name is refused. Maps at the model
input's size (``--resize``, e.g. 512x512) are carried back to the image (resized; ``--pad
square`` undone by cropping).
Outputs in OUT: ``per_image.json`` / ``per_image.csv``, ``summary.json`` / ``summary.md`` (n,
mean, sample std, min, quartiles, max of every metric, and the mean ROAD curves), and
``histograms.png`` (with matplotlib). Each image's row records the explained class (``target``)
and the model's score of it on the clean image (``score``, as ``--score``: softmax probability,
sigmoid or logit, named in ``score_kind``; :func:`model_score`).
``--on-error skip``: an image that cannot be scored (unreadable image, no map, an unreadable, NaN
or wrongly sized map, a map whose record names another image) is left out, listed in
``summary.json`` (``skipped``) and the summary, and the command exits with 3 (partial). ``--out``
may not be, be inside or contain DATA or MAPS. Under ``torchrun`` each process scores the shard
``names[rank::world]``; rank 0 gathers the per-image results and writes everything.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr import metrics
from torchattr._core.targets import logits_of
from torchattr.cli import _dist, _volumes
from torchattr.cli._common import (
    EXIT_PARTIAL,
    CommandError,
    Reporter,
    add_common_options,
    add_preprocessing_options,
    float_in,
    int_at_least,
    plural,
    read_map,
    refuse_overlap,
    shorten,
    target_arg,
)
from torchattr.cli._data import (
    Box,
    LoadedModel,
    Preprocess,
    add_window_option,
    check_box_extents,
    check_box_names,
    check_mask_names,
    load_boxes,
    load_masks,
    load_model,
    open_images,
    read_batches,
)
from torchattr.cli._geometry import map_to_input
from torchattr.cli._progress import progress
from torchattr.cli._records import input_digest, read_record
from torchattr.cli._runs import method_record, now
from torchattr.data.seeding import derive_seed
from torchattr.io import map_names, save_json, write_atomic
from torchattr.metrics._shared import _scores, check_score
from torchattr.metrics.directions import Direction, direction

__all__ = ["add_parser", "run"]

LOCALISATION = (
    "proportional_energy",
    "saliency_focus",
    "pointing_game",
    "relevance_rank_accuracy",
)
STATISTICS = ("n", "mean", "std", "min", "q1", "median", "q3", "max")


def add_parser(subparsers: Any) -> None:
    """Register the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="localisation and ROAD scores of a folder of maps: per image and summary",
        description="Score the maps in MAPS (one <image name>.npy per image of DATA) against "
        "the --boxes (proportional energy, saliency focus, pointing game, relevance rank "
        "accuracy) and by ROAD with MODEL; write OUT/per_image.json and .csv, "
        "OUT/summary.json and .md (mean, std, quartiles) and OUT/histograms.png. Runs "
        "unchanged under torchrun.",
        epilog="Each image's row in per_image.json records the explained class (target) and "
        "the model's score of it on the clean image (score, as --score; score_kind names it). "
        "--on-error skip: an image that cannot be scored (unreadable image, no map, an "
        "unreadable, NaN or wrongly sized map, a map of another image) is left out, listed "
        "in summary.json ('skipped') and the summary, and the exit code is 3. --out may not "
        "be, be inside or contain DATA or MAPS. Exit codes: 0 done, 1 bad input, 2 bad "
        "options, 3 partial (--on-error skip left images out), 4 a file could not be written.",
    )
    parser.add_argument("model", metavar="MODEL", help="model file or package.module:factory")
    parser.add_argument("data", metavar="DATA", help="folder of images or tensor file")
    parser.add_argument("maps", metavar="MAPS", type=Path, help="folder of <image name>.npy maps")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--boxes",
        default=None,
        help="ground-truth boxes, JSON or CSV (image, x1, y1, x2, y2[, label]); without it only "
        "ROAD is computed",
    )
    parser.add_argument(
        "--masks",
        default=None,
        metavar="FOLDER",
        help="ground-truth label masks instead of --boxes: <image name>.png / .nii.gz / .npy "
        "with the image's (or volume's) size, foreground = label > 0",
    )
    parser.add_argument(
        "--target",
        type=target_arg,
        default=None,
        help="class whose score ROAD follows: 'argmax' or an index (default: as generate "
        "recorded in run.json, else argmax)",
    )
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float_in(0, 100, low_open=True),
        default=[20.0, 40.0, 60.0, 80.0],
        metavar="PERCENT",
        help="ROAD: percentages of pixels imputed (MoRF) / kept (LeRF) (default: 20 40 60 80)",
    )
    parser.add_argument(
        "--road-noise",
        type=float_in(0, 10),
        default=0.01,
        help="ROAD: sd of the noise added to imputed pixels, model-input units (default: 0.01)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int_at_least(1),
        default=None,
        help="ROAD: imputed copies per model call (default: --batch-size); results do not "
        "depend on it",
    )
    parser.add_argument(
        "--score",
        choices=("softmax", "sigmoid", "logit", "probability"),
        default="softmax",
        help="ROAD: the class's softmax probability, per-output sigmoid (multi-label models) or "
        "logit (default: softmax, as the ROAD paper; 'probability' is the deprecated name of "
        "'softmax')",
    )
    parser.add_argument(
        "--no-road", action="store_true", help="skip ROAD (localisation only; MODEL unused)"
    )
    parser.add_argument(
        "--tolerance",
        type=float_in(0, 1e6),
        default=15.0,
        help="pointing game: distance in pixels from the boxes that still counts as a hit "
        "(default: 15)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of ROAD's draws (default: 0)")
    parser.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="score maps with a MODEL other than the one generate recorded for them (its "
        "sha256 in run.json and the maps' records); refused by default, naming both hashes",
    )
    add_common_options(parser, distributed=True)
    add_preprocessing_options(parser, saved=True)
    add_window_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``torchattr evaluate``: returns the exit code."""
    dist = _dist.setup(args.device)
    try:
        return _evaluate(args, dist)
    finally:
        dist.close()


def _evaluate(args: argparse.Namespace, dist: _dist.Distributed) -> int:
    start = time.perf_counter()
    report = Reporter("evaluate", dist.rank, dist.world)
    maps_dir: Path = args.maps
    if args.no_road and args.boxes is None and args.masks is None:
        raise CommandError("nothing to evaluate: --no-road without --boxes or --masks")
    if args.boxes is not None and args.masks is not None:
        raise CommandError("--boxes and --masks: give one ground truth")
    if not maps_dir.is_dir():
        raise CommandError(f"MAPS {maps_dir}: no such folder")
    refuse_overlap(args.out, {"DATA": Path(args.data), "MAPS": maps_dir})
    record = method_record(maps_dir) or {}
    preprocess = Preprocess.from_args(args, record.get("preprocessing"))
    target = _target(args, record)
    if record:
        saved_target = record.get("target")
        if saved_target is not None and saved_target != ("argmax" if target is None else target):
            report.warn(
                f"--target {target} differs from the target the maps explain ({saved_target}, "
                "as recorded in run.json)"
            )
        if record.get("preprocessing") not in (None, preprocess.as_dict()):
            report.warn(
                "the preprocessing differs from the one the maps were generated with (run.json: "
                f"{record['preprocessing']}); ROAD then scores other inputs than were explained"
            )
    names_file = args.names
    saved_names = (record.get("data") or {}).get("names")
    if names_file is None and isinstance(saved_names, str) and Path(args.data).is_file():
        names_file = saved_names if Path(saved_names).is_file() else None  # as generate read it
    images = open_images(args.data, names_file, preprocess.window)
    names = _evaluated_names(images.names, map_names(maps_dir), maps_dir, args.on_error, report)
    unmapped = {
        n: f"{n}: no map {n}.npy in {maps_dir}" for n in images.names if n not in set(names)
    }
    boxes: dict[str, list[Box]] = {}
    if args.boxes is not None:
        boxes = check_box_names(
            load_boxes(args.boxes), images.names, args.boxes, args.on_error, report
        )
        check_box_extents(boxes, images.sizes, report)
    masks = {}
    if args.masks is not None:
        masks = check_mask_names(load_masks(args.masks), images.names, args.on_error, report)
    elif args.boxes is None:
        report.note("no --boxes: localisation metrics are not computed")
    fractions = tuple(p / 100 for p in args.fractions)
    if len(set(fractions)) != len(fractions):
        raise CommandError(f"--fractions has repeated values: {args.fractions}")
    if not args.no_road:
        try:
            metrics.paired_fractions(fractions)
        except ValueError as error:
            raise CommandError(f"--fractions {args.fractions}: {error}") from None
    loaded = None if args.no_road else load_model(args.model, dist.device)
    if loaded is not None:
        _check_model(loaded, record, maps_dir, args.allow_model_mismatch, report)

    shard = dist.shard(names)
    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with progress(len(shard), "evaluate", enabled=dist.rank == 0) as bar:
        for batch in read_batches(images, shard, preprocess, args.batch_size, args.workers):
            for item in batch:
                bar.update(1)
                if item.error is not None:
                    if args.on_error == "stop":
                        raise CommandError(f"{item.error}; stopped (or pass --on-error skip)")
                    report.warn(f"skipped {item.error}", local=True)
                    failed[item.name] = item.error
                    continue
                path = maps_dir / f"{item.name}.npy"
                try:
                    _check_map_input(path, images, item.name)
                    saliency = read_map(path, item.size, preprocess.as_dict())
                except CommandError as error:
                    if args.on_error == "stop":
                        raise CommandError(f"{error} (or pass --on-error skip)") from None
                    report.warn(f"skipped {item.name}: {error}", local=True)
                    failed[item.name] = str(error)
                    continue
                _check_map_model(path, loaded, args.allow_model_mismatch)
                row: dict[str, Any] = {"image": item.name}
                if args.boxes is not None:
                    row.update(localisation(saliency, boxes.get(item.name, []), args.tolerance))
                elif args.masks is not None:
                    row.update(_volumes.mask_row(masks, item.name, saliency, args.tolerance))
                if loaded is not None:
                    row.update(
                        road_scores(
                            loaded,
                            item.name,
                            item.input,
                            saliency,
                            target,
                            fractions,
                            args,
                            dist.device,
                            pad=preprocess.pad,
                        )
                    )
                    bad = nonfinite_scores(row)
                    if bad is not None:
                        message = f"{item.name}: {bad}"
                        if args.on_error == "stop":
                            raise CommandError(f"{message} (or pass --on-error skip)")
                        report.warn(f"skipped {message}", local=True)
                        failed[item.name] = message
                        continue
                results.append(row)

    everyone = dist.gather({"results": results, "failed": failed})
    if dist.rank == 0:
        rows = sorted((r for part in everyone for r in part["results"]), key=lambda r: r["image"])
        failures: dict[str, str] = dict(unmapped)
        for part in everyone:
            failures.update(part["failed"])
        config = {
            "maps": str(maps_dir.resolve()),
            "method": maps_dir.resolve().name,
            "data": images.describe(),
            "boxes": str(Path(args.boxes).resolve()) if args.boxes else None,
            "masks": str(Path(args.masks).resolve()) if args.masks else None,
            "model": loaded.describe() if loaded is not None else None,
            "preprocessing": preprocess.as_dict(),
            "target": "argmax" if target is None else target,
            "road": None
            if args.no_road
            else {
                "fractions": list(fractions),
                "noise": args.road_noise,
                "score": args.score,
                "seed": args.seed,
            },
            "pointing_game_tolerance": args.tolerance,
            "processes": dist.world,
        }
        _write(args.out, config, rows, failures, fractions, report, time.perf_counter() - start)
        if failures:
            return EXIT_PARTIAL
    return 0


def _mismatch(loaded: LoadedModel, saved: str, where: str) -> str:
    return (
        f"MODEL {loaded.spec} (sha256 {loaded.fingerprint}) is not the model that made {where} "
        f"(sha256 {saved}): ROAD would score another model's explanations. Pass the model that "
        "made the maps, or --allow-model-mismatch to score them anyway"
    )


def _check_model(
    loaded: LoadedModel,
    record: dict[str, Any],
    maps_dir: Path,
    allow: bool,
    report: Reporter,
) -> None:
    """The model must be the one ``run.json`` records for MAPS (unless ``allow``: a warning)."""
    saved = (record.get("model") or {}).get("sha256")
    if saved is None or saved == loaded.fingerprint:
        return
    message = _mismatch(loaded, saved, f"the maps in {maps_dir} (run.json)")
    if not allow:
        raise CommandError(message)
    report.warn(message.split(": ROAD")[0] + "; scoring anyway (--allow-model-mismatch)")


def _check_map_input(path: Path, images: Any, name: str) -> None:
    """A map's own record (written by generate), where there is one, must name this image's
    content (sha256 of its file or tensor row): maps of other images under the same names are
    refused."""
    record = read_record(path)
    saved_input = record.get("input") if record else None
    if saved_input is not None:
        digest = input_digest(images, name)
        if digest is not None and digest != saved_input:
            raise CommandError(
                f"{path} was made from another image than DATA's {name} (content sha256 "
                f"{saved_input[:12]}... in its record, {digest[:12]}... now): the maps belong to "
                "other data; regenerate them (generate recomputes maps whose input changed)"
            )


def _check_map_model(path: Path, loaded: LoadedModel | None, allow: bool) -> None:
    """A map's own record, where there is one, must name the model: a folder mixing maps of
    several models is refused even when run.json names the right one (``allow``: not
    checked)."""
    record = read_record(path)
    saved = record.get("model") if record else None
    if loaded is None or allow or saved is None or saved == loaded.fingerprint:
        return
    raise CommandError(_mismatch(loaded, saved, f"{path} (its record)"))


def _target(args: argparse.Namespace, record: dict[str, Any]) -> int | None:
    if args.target is not None:
        return args.target
    saved = record.get("target")
    return saved if isinstance(saved, int) and not isinstance(saved, bool) else None


def _evaluated_names(
    data_names: list[str], mapped: list[str], maps_dir: Path, on_error: str, report: Reporter
) -> list[str]:
    """Images of DATA that have a map; mismatches stop (or are warned about with skip)."""
    if not mapped:
        raise CommandError(f"MAPS {maps_dir}: no .npy maps")
    have = set(mapped)
    data = set(data_names)
    without_map = [n for n in data_names if n not in have]
    without_image = [n for n in mapped if n not in data]
    for missing, message in (
        (without_map, f"have no map in {maps_dir} (incomplete generate run?)"),
        (without_image, f"in {maps_dir} have no image in DATA"),
    ):
        if not missing:
            continue
        what = "image(s) of DATA" if missing is without_map else "map(s)"
        text = f"{len(missing)} {what} {message}: {shorten(missing)}"
        if on_error == "stop":
            raise CommandError(text + " (pass --on-error skip to evaluate the others)")
        report.warn(text + "; left out")
    names = [n for n in data_names if n in have]
    if not names:
        raise CommandError(f"no image of DATA has a map in {maps_dir}")
    return names


def localisation(saliency: Tensor, boxes: list[Box], tolerance: float) -> dict[str, Any]:
    """The four localisation metrics of one map ``[H, W]`` (``None`` without boxes)."""
    xyxy = [torch.tensor([list(b[:4]) for b in boxes], dtype=torch.long)] if boxes else None
    return _volumes.localisation_scores(saliency, xyxy, tolerance, len(boxes))


def road_scores(
    loaded: LoadedModel,
    name: str,
    model_input: Tensor,
    saliency: Tensor,
    target: int | None,
    fractions: tuple[float, ...],
    args: argparse.Namespace,
    device: torch.device,
    pad: str | None = None,
) -> dict[str, Any]:
    """ROAD of one image: the explained class, its clean score, MoRF / LeRF curves and score.

    The map ``[H, W]`` is carried to the model input (padded to a square with ``pad="square"``,
    then resized: :func:`~torchattr.cli._geometry.map_to_input`)."""
    loaded.check_input(tuple(model_input.shape))
    x = model_input[None].to(device)
    heat = map_to_input(saliency, tuple(model_input.shape[-2:]), pad)[None].to(device)
    try:
        with torch.no_grad():
            output = loaded.module(x)
        classes = 1 if output.ndim == 1 else output.shape[1]
        if target is not None and target >= classes:
            raise CommandError(
                f"target {target} is out of range: MODEL {loaded.spec} has {classes} output "
                f"class(es), so the target must be 0..{classes - 1}"
            )
        explained = int(output.argmax(dim=1)[0]) if target is None and classes > 1 else target or 0
        clean = model_score(output, explained, args.score)
        curves = {}
        seed = derive_seed(args.seed, f"road/{name}")
        for order in ("morf", "lerf"):  # the same draws for both: one tie-breaking order
            curves[order] = metrics.road(
                loaded.module,
                x,
                heat,
                explained,
                fractions=fractions,
                order=order,
                sigma=args.road_noise,
                generator=torch.Generator().manual_seed(seed),
                chunk_size=args.chunk_size or args.batch_size,
                score=args.score,
            )
    except CommandError:
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError) as error:
        text = str(error).strip().splitlines()
        raise CommandError(
            f"ROAD failed: {type(error).__name__}: {text[0] if text else ''}"
        ) from None
    summary = metrics.road_summary(curves["morf"], curves["lerf"], fractions)
    return {
        "target": explained,
        "score": clean,
        "score_kind": check_score(args.score, stacklevel=2),
        "road_morf": [float(v) for v in curves["morf"][0]],
        "road_lerf": [float(v) for v in curves["lerf"][0]],
        "road_score": float(summary.per_image[0]),
    }


def model_score(output: Any, target: int, score: str) -> float:
    """The model's score of class ``target`` for one image, from its output ``[1, C]`` (or a
    dict / tuple head, :func:`~torchattr._core.targets.logits_of`): ``"softmax"``
    ``exp(z_t) / sum_k exp(z_k)`` (a single logit: ``sigmoid(z)``), ``"sigmoid"``
    ``1 / (1 + exp(-z_t))``, ``"logit"`` ``z_t``; the same score ROAD's curves follow
    (:func:`torchattr.metrics.road`)."""
    kind = check_score(score, stacklevel=3)
    index = torch.tensor([target], device=logits_of(output).device)
    return float(_scores(output, index, kind)[0])


def nonfinite_scores(row: dict[str, Any]) -> str | None:
    """Why an image's ROAD results are not usable (the model's score, a MoRF / LeRF point or the
    ROAD score is NaN or inf: the model's output is not finite for this image or its imputed
    copies), or ``None``: such an image is a failure, never a NaN in the statistics."""
    values = [row.get("score"), *row.get("road_morf", []), *row.get("road_lerf", [])]
    values.append(row.get("road_score"))
    if all(v is None or math.isfinite(v) for v in values):
        return None
    return (
        f"the model's scores are NaN or inf (clean score {row.get('score')}): its output is not "
        "finite for this image or its ROAD copies; no ROAD score"
    )


# --------------------------------------------------------------------------------------------
# Statistics and files
# --------------------------------------------------------------------------------------------


def statistics(values: list[float]) -> dict[str, float | int | None]:
    """n, mean, sample standard deviation (n - 1), min, quartiles (linear), max."""
    data = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if data.size == 0:
        return {key: (0 if key == "n" else None) for key in STATISTICS}
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {
        "n": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else None,
        "min": float(data.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(data.max()),
    }


def summarise(
    rows: list[dict[str, Any]], fractions: tuple[float, ...] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Statistics of every metric over the images, and the mean ROAD curves."""
    table: dict[str, Any] = {}
    for name in (*LOCALISATION, "road_score"):
        if any(name in r for r in rows):
            table[name] = statistics([float(r[name]) for r in rows if r.get(name) is not None])
    road = None
    if fractions is not None and rows and "road_morf" in rows[0]:
        morf = np.asarray([r["road_morf"] for r in rows], dtype=np.float64)
        lerf = np.asarray([r["road_lerf"] for r in rows], dtype=np.float64)
        for k, p in enumerate(fractions):
            percent = _percent(p)
            table[f"road_morf_{percent}"] = statistics(morf[:, k].tolist())
            table[f"road_lerf_{percent}"] = statistics(lerf[:, k].tolist())
        partner = metrics.paired_fractions(fractions)  # LeRF(1 - p) for MoRF(p)
        road = {
            "fractions": list(fractions),
            "morf": morf.mean(axis=0).tolist(),
            "lerf": lerf.mean(axis=0).tolist(),
            "gap": ((lerf[:, partner] - morf) / 2).mean(axis=0).tolist(),
        }
    return table, road


def _percent(p: float) -> str:
    value = p * 100
    return f"{value:g}".replace(".", "_")


def _write(
    out: Path,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    failures: dict[str, str],
    fractions: tuple[float, ...],
    report: Reporter,
    seconds: float,
) -> None:
    road_fractions = None if config["road"] is None else fractions
    table, road = summarise(rows, road_fractions)
    with_boxes = sum(1 for r in rows if r.get("boxes"))
    counts = {
        "images": len(rows),
        "with_boxes": with_boxes,
        "skipped": len(failures),
    }
    notes = []
    if (config["boxes"] or config["masks"]) is not None and with_boxes < len(rows):
        notes.append(
            f"{len(rows) - with_boxes} image(s) have no box: localisation metrics are null for "
            "them and left out of their statistics"
        )
    if failures:
        notes.append(
            f"{plural(len(failures), 'image')} skipped (not scored; listed in summary.json "
            f"'skipped'): {shorten(sorted(failures))}; exit code 3 (partial)"
        )
    histogram = _histograms(out / "histograms.png", rows, table)
    if histogram is None and _has_matplotlib():
        notes.append("histograms.png not written: no metric has a value")
    elif histogram is None:
        notes.append("histograms.png not written: matplotlib is not installed")
    summary = {
        "command": "evaluate",
        "updated": now(),
        **config,
        "counts": counts,
        "metrics": table,
        "road_curves": road,
        "skipped": [{"image": n, "error": failures[n]} for n in sorted(failures)],
        "notes": notes,
    }
    save_json(out / "per_image.json", {"method": config["method"], "images": rows})
    write_atomic(out / "per_image.csv", _csv(rows, road_fractions))
    save_json(out / "summary.json", summary)
    markdown = _markdown(summary)
    write_atomic(out / "summary.md", markdown)
    for note in notes:
        if "skipped" in note:
            report.warn(note)
        else:
            report.note(note)
    report.result(markdown)
    files = "per_image.json, per_image.csv, summary.json, summary.md"
    files += ", histograms.png" if histogram else ""
    report.result(f"wrote {files} to {out} in {seconds:.1f} s")


def _csv(rows: list[dict[str, Any]], fractions: tuple[float, ...] | None) -> str:
    columns = ["image", "boxes", *LOCALISATION]
    if fractions is not None:
        columns += ["target", "score", "score_kind", "road_score"]
        columns += [f"road_morf_{_percent(p)}" for p in fractions]
        columns += [f"road_lerf_{_percent(p)}" for p in fractions]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        flat = dict(row)
        if fractions is not None:
            for k, p in enumerate(fractions):
                flat[f"road_morf_{_percent(p)}"] = row["road_morf"][k]
                flat[f"road_lerf_{_percent(p)}"] = row["road_lerf"][k]
        writer.writerow(["" if flat.get(c) is None else flat.get(c) for c in columns])
    return buffer.getvalue()


def _markdown(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    lines = [
        f"# Evaluation of {summary['method']} maps",
        "",
        f"- maps: `{summary['maps']}`",
        f"- images: {counts['images']} ({counts['with_boxes']} with boxes, "
        f"{counts['skipped']} skipped)",
        f"- target: {summary['target']}",
    ]
    if summary["model"] is not None:
        lines.append(f"- model: `{summary['model']['spec']}`")
    if summary["road"] is not None:
        road = summary["road"]
        lines.append(
            f"- ROAD: {road['score']} after noisy linear imputation (noise {road['noise']}), "
            f"seed {road['seed']}"
        )
    lines.append(f"- pointing game tolerance: {summary['pointing_game_tolerance']:g} px")
    lines += ["", "| metric | " + " | ".join(STATISTICS) + " |"]
    lines.append("|---" * (len(STATISTICS) + 1) + "|")
    for name, stats in summary["metrics"].items():
        cells = [_cell(stats[key]) for key in STATISTICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *_direction_lines(list(summary["metrics"]))]
    curves = summary["road_curves"]
    if curves is not None:
        lines += [
            "",
            "ROAD curves (mean over images; MoRF lower is better, LeRF higher is better; "
            "MoRF(p) imputes as many pixels as LeRF(1 - p), and the gap pairs them):",
            "",
            "| p | MoRF(p) | LeRF(p) | (LeRF(1 - p) - MoRF(p)) / 2 |",
            "|---|---|---|---|",
        ]
        for p, m, lv, g in zip(curves["fractions"], curves["morf"], curves["lerf"], curves["gap"]):
            lines.append(f"| {p:g} | {_cell(m)} | {_cell(lv)} | {_cell(g)} |")
    if summary["notes"]:
        lines += ["", *[f"Note: {note}" for note in summary["notes"]]]
    return "\n".join(lines) + "\n"


def metric_direction(name: str) -> Direction:
    """The direction of a summary column: a metric, or a ROAD curve column ``road_morf_20``."""
    for curve in ("road_morf", "road_lerf"):
        if name.startswith(f"{curve}_"):
            return direction(curve)
    return direction(name)


def _direction_lines(names: list[str]) -> list[str]:
    """Which way is better for each column (:data:`torchattr.metrics.DIRECTIONS`), and notes."""
    groups: dict[str, list[str]] = {"higher": [], "lower": []}
    for name in names:
        groups[metric_direction(name).word].append(name)
    lines = [
        f"{word.capitalize()} is better: {', '.join(group)}."
        for word, group in groups.items()
        if group
    ]
    lines += [
        f"Note: {name}: {direction(name).note}."
        for name in names
        if not name.startswith("road_") and metric_direction(name).caveat
    ]
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _histograms(path: Path, rows: list[dict[str, Any]], table: dict[str, Any]) -> Path | None:
    """One histogram per per-image metric in one figure (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from torchattr.viz import save_png

    shown = [n for n in (*LOCALISATION, "road_score") if table.get(n, {}).get("n")]
    if not shown:
        return None
    columns = min(3, len(shown))
    rows_count = -(-len(shown) // columns)
    figure = Figure(figsize=(4 * columns, 3 * rows_count), layout="constrained")
    for k, name in enumerate(shown):
        axes = figure.add_subplot(rows_count, columns, k + 1)
        values = [float(r[name]) for r in rows if r.get(name) is not None]
        if name == "pointing_game" and set(values) <= {0.0, 1.0}:
            axes.bar(["miss", "hit"], [values.count(0.0), values.count(1.0)], color="tab:blue")
        else:
            axes.hist(values, bins=min(20, max(5, len(values) // 2)), color="tab:blue")
            axes.axvline(float(np.mean(values)), color="tab:red", label="mean")
            axes.legend()
        word = metric_direction(name).word
        axes.set_title(f"{name} (n={len(values)}, {word} is better)", fontsize=9)
        axes.set_ylabel("images")
        axes.tick_params(axis="x", labelrotation=30)
    return save_png(path, figure)

"""``torchattr generate MODEL DATA --method ... --out DIR``: attribution maps of a data set.

For every image of DATA and every method, the map ``|A|`` maximised over the channels (CAM
maps as they come), resized back to the image's own ``H x W`` when ``--resize`` changed it,
min-max normalised to [0, 1], is saved as float32 ``OUT/<method>/<image name>.npy``
(:func:`torchattr.io.save_map`, atomic). ``OUT/run.json`` records the model (with its sha256),
the data, the preprocessing, the target and the options of each method, and the counts.

Resumable: a map already in ``OUT/<method>/`` is kept (unless ``--overwrite``) only when its
record ``OUT/<method>/.records/<name>.json`` (:mod:`torchattr.cli._records`) matches everything
the map depends on: the sha256 of its input file (or tensor row), the model's sha256, method,
options, target, preprocessing, torchattr version, and the map file's own sha256. Other maps
are recomputed, and the summary says how many and why. The record is removed before a map is
replaced and written after it, so an interrupted run (``--overwrite`` included) leaves no map
that a resumed run would wrongly keep. Leftover temporary files of an interrupted run are
ignored and removed. A resumed run must use the settings recorded in ``run.json`` for that
method. ``--out`` may not be, be inside or contain DATA.

A map with NaN or inf values (a model whose output or gradients are not finite for an image)
is never saved: ``--on-error stop`` stops naming the image; ``skip`` leaves the image without a
map (an older map of it is removed), lists it in ``run.json`` ("failed") and the summary, and
the command exits with 3 (partial), as it does for unreadable images skipped.

Under ``torchrun`` each process takes the shard ``names[rank::world]`` of the sorted image
names and its own GPU (see :mod:`torchattr.cli._dist`); rank 0 writes ``run.json``. Random
methods (SmoothGrad, Random-CAM) draw from a generator seeded per image (from ``--seed`` and
the image name), so a map does not depend on the batch or the process that made it. With
``--batch-size 1`` a distributed run writes byte-identical maps to a single-process run; with
larger batches the shards' batches hold other images, and maps agree to float rounding (~1e-7:
kernels round differently for different batch sizes).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import torchattr as ta
from torchattr.cam import METHODS as CAM_METHODS
from torchattr.cam import resolve_cam_layers
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
    refuse_overlap,
    shorten,
    target_arg,
)
from torchattr.cli._data import (
    ImageSet,
    Item,
    LoadedModel,
    Preprocess,
    add_window_option,
    check_uniform_channels,
    check_uniform_size,
    load_model,
    open_images,
    read_batches,
)
from torchattr.cli._geometry import map_to_image
from torchattr.cli._progress import progress
from torchattr.cli._records import (
    INCOMPLETE,
    RECORDS,
    begin_map,
    dependencies,
    finish_record,
    input_digest,
    record_path,
    verdict,
)
from torchattr.cli._runs import now, read_runs, settings_conflicts, write_runs
from torchattr.data.seeding import derive_seed
from torchattr.gradient import SMOOTHGRAD_KINDS
from torchattr.integrated import METHODS as IG_RULES
from torchattr.io import map_names, normalize_map

__all__ = ["add_parser", "run"]

METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "cam", "lrp")
RANDOM_CAMS = ("randomcam",)
MAP_CONVENTION = (
    "|A| max over channels (CAM: the CAM map), carried back to the image's H x W (resized; "
    "--pad square: resized to the square and cropped), min-max per image to [0, 1], float32 .npy"
)


def add_parser(subparsers: Any) -> None:
    """Register the ``generate`` subcommand."""
    parser = subparsers.add_parser(
        "generate",
        help="attribution maps of a data set, one .npy per image and method",
        description="Explain every image of DATA with MODEL and save one map per image and "
        "method as OUT/<method>/<image name>.npy (float32, the image's H x W, values in [0, 1]), "
        "plus OUT/run.json. Maps already there are kept (resume) unless --overwrite. Runs "
        "unchanged under torchrun, each process taking a disjoint shard of the images.",
        epilog="MODEL: a TorchScript file (torch.jit.save), a torch.export program (.pt2), or "
        "'package.module:factory' (a function called with no arguments returning an nn.Module; "
        "the current folder is importable). DATA: a folder of images (PNG, JPEG, BMP, TIFF, "
        "DICOM, NIfTI; name = file stem; a multi-frame DICOM or 3-D NIfTI is a volume, its map "
        "[D, H, W], and a NIfTI input's map is also written as <name>.nii.gz in its space) "
        "or a .pt / .npy tensor [N, C, H, W] or [N, H, W] (names "
        "<stem>_<index:05d>, or --names). Exit codes: 0 done, 1 bad input or a failed model "
        "call, 2 bad options, 3 partial (--on-error skip left images without a map), 4 a file "
        "could not be written, 130 interrupted (rerun the same command to resume).",
    )
    parser.add_argument("model", metavar="MODEL", help="model file or package.module:factory")
    parser.add_argument("data", metavar="DATA", help="folder of images or tensor file")
    parser.add_argument(
        "--method",
        "-m",
        action="extend",
        type=_method_list,
        required=True,
        metavar="METHOD[,METHOD...]",
        help="one or more (comma-separated or repeated) of: " + ", ".join(METHODS) + " (cam: "
        "--cam-method), or a CAM method by name (" + ", ".join(CAM_METHODS) + "); lrp needs "
        "a torch.export program or a factory model",
    )
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--target",
        type=target_arg,
        default=None,
        help="class explained: 'argmax' (default: each image's predicted class) or an index",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute maps that already exist"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of SmoothGrad / Random-CAM noise (default: 0)"
    )
    add_common_options(parser, distributed=True)
    add_preprocessing_options(parser)
    add_window_option(parser)
    group = parser.add_argument_group("method options")
    group.add_argument(
        "--steps", type=int_at_least(1), default=50, help="IG: path steps (default: 50)"
    )
    group.add_argument(
        "--ig-rule",
        choices=IG_RULES,
        default="gausslegendre",
        help="IG: quadrature rule (default: gausslegendre)",
    )
    group.add_argument(
        "--baseline",
        type=float,
        default=0.0,
        help="IG: baseline pixel value before --mean/--std normalisation (default: 0, black)",
    )
    group.add_argument(
        "--samples", type=int_at_least(1), default=20, help="SmoothGrad: samples (default: 20)"
    )
    group.add_argument(
        "--noise",
        type=float_in(0, 10),
        default=0.1,
        help="SmoothGrad: noise sd as a fraction of each image's value range (default: 0.1)",
    )
    group.add_argument(
        "--smoothgrad-kind",
        choices=SMOOTHGRAD_KINDS,
        default="smoothgrad",
        help="SmoothGrad: mean gradient, mean square, or variance (default: smoothgrad)",
    )
    group.add_argument(
        "--layer",
        action="append",
        default=None,
        metavar="NAME",
        help="CAM: dotted name of the layer whose activations explain the prediction (e.g. "
        "layer4); repeat to average several layers",
    )
    group.add_argument(
        "--cam-method",
        choices=CAM_METHODS,
        default="gradcam",
        help="CAM method of --method cam (default: gradcam)",
    )
    group.add_argument(
        "--chunk-size",
        type=int_at_least(1),
        default=None,
        help="rows per model call for IG / SmoothGrad copies and Score-/Ablation-CAM masks "
        "(default: all of a batch at once)",
    )
    parser.set_defaults(handler=run)


def _method_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in METHODS + CAM_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(unknown) or repr(text)}: choose from "
            + ", ".join(METHODS + CAM_METHODS)
        )
    return names


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass
class Method:
    """One requested method: its folder name, what it records, and how it computes maps."""

    name: str  # the folder: saliency, integrated_gradients, gradcam, ...
    kind: str  # saliency, input_x_gradient, smoothgrad, integrated_gradients, cam, lrp
    options: dict[str, Any] = field(default_factory=dict)


def resolve_methods(args: argparse.Namespace) -> list[Method]:
    """The requested methods, in order, without repeats; options recorded per method."""
    methods: dict[str, Method] = {}
    for requested in args.method:
        if requested == "lrp" and lrp_function() is None:
            raise CommandError(
                "--method lrp: this torchattr has no LRP (torchattr.lrp is missing); choose "
                "another method"
            )
        if requested in CAM_METHODS or requested == "cam":
            name = args.cam_method if requested == "cam" else requested
            if name != "fullgrad" and not args.layer:
                raise CommandError(
                    f"--method {requested} needs --layer NAME: the layer whose activations "
                    "explain the prediction (e.g. --layer layer4)"
                )
            options: dict[str, Any] = {"layer": args.layer, "cam_method": name}
            if name in RANDOM_CAMS:
                options["seed"] = args.seed
            methods.setdefault(name, Method(name, "cam", options))
        elif requested == "smoothgrad":
            options = {
                "samples": args.samples,
                "noise": args.noise,
                "kind": args.smoothgrad_kind,
                "seed": args.seed,
            }
            methods.setdefault(requested, Method(requested, requested, options))
        elif requested == "integrated_gradients":
            options = {"steps": args.steps, "rule": args.ig_rule, "baseline": args.baseline}
            methods.setdefault(requested, Method(requested, requested, options))
        else:
            methods.setdefault(requested, Method(requested, requested, {}))
    return list(methods.values())


def compute(
    method: Method,
    model: torch.nn.Module,
    inputs: Tensor,
    names: list[str],
    target: int | None,
    preprocess: Preprocess,
    chunk_size: int | None,
) -> Tensor:
    """Unnormalised maps ``[B, H', W']`` (float32, CPU) of one batch of model inputs."""
    options = method.options
    if method.kind == "saliency":
        maps = ta.saliency(model, inputs, target)
    elif method.kind == "input_x_gradient":
        maps = ta.reduce_channels(ta.input_x_gradient(model, inputs, target))
    elif method.kind == "integrated_gradients":
        baseline = preprocess.baseline(options["baseline"], inputs.shape[1], inputs.ndim - 2)
        baseline = baseline.to(inputs.device)
        attributions = ta.integrated_gradients(
            model,
            inputs,
            baseline=baseline,
            target=target,
            steps=options["steps"],
            method=options["rule"],
            chunk_size=chunk_size,
        )
        maps = ta.reduce_channels(attributions)
    elif method.kind == "smoothgrad":
        maps = torch.cat(
            [
                ta.reduce_channels(
                    ta.smoothgrad(
                        model,
                        inputs[i : i + 1],
                        target,
                        samples=options["samples"],
                        noise=options["noise"],
                        kind=options["kind"],
                        chunk_size=chunk_size,
                        generator=_generator(options["seed"], "smoothgrad", name),
                    )
                )
                for i, name in enumerate(names)
            ]
        )
    elif method.kind == "cam":
        layer = options["layer"]
        layer = None if not layer else layer if len(layer) > 1 else layer[0]
        kwargs: dict[str, Any] = {"layer": layer, "method": options["cam_method"]}
        if chunk_size is not None:
            kwargs["chunk_size"] = chunk_size
        if options["cam_method"] in RANDOM_CAMS:
            maps = torch.cat(
                [
                    ta.cam(
                        model,
                        inputs[i : i + 1],
                        target,
                        generator=_generator(options["seed"], options["cam_method"], name),
                        **kwargs,
                    )
                    for i, name in enumerate(names)
                ]
            )
        else:
            maps = ta.cam(model, inputs, target, **kwargs)
    else:  # lrp
        relevance = lrp_function()(model, inputs, target)
        maps = ta.reduce_channels(relevance) if relevance.ndim == inputs.ndim else relevance.abs()
    if maps.ndim != inputs.ndim - 1 or maps.shape[0] != inputs.shape[0]:
        expected = "[B, D, H, W]" if inputs.ndim == 5 else "[B, H, W]"
        raise CommandError(
            f"{method.name} gave maps of shape {list(maps.shape)} for inputs "
            f"{list(inputs.shape)}: expected {expected} (a multi-class target?)"
        )
    return maps.detach().to("cpu", torch.float32)


def lrp_function() -> Any:
    """``torchattr.lrp`` (the function), or None when this torchattr has no LRP."""
    candidate = getattr(ta, "lrp", None)
    if callable(candidate):
        return candidate
    try:
        from torchattr.lrp import lrp
    except ImportError:
        return None
    return lrp


def finish_map(raw: Tensor, size: tuple[int, ...], pad: str | None = None) -> Tensor:
    """A map as stored: carried back to the image's ``(H, W)`` (resized; with ``pad="square"``
    resized to the padded square and cropped, :func:`~torchattr.cli._geometry.map_to_image`),
    min-max normalised to [0, 1]; volumes ``(D, H, W)``: over the whole volume (see
    :func:`_volumes.finish_map`). Raises ValueError when it holds NaN or inf."""
    if _volumes.is_volume(size):
        return _volumes.finish_map(raw, size)
    return normalize_map(map_to_image(raw, size, pad))


def _generator(seed: int, stream: str, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, f"{stream}/{name}"))


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``torchattr generate``: returns the exit code."""
    dist = _dist.setup(args.device)
    try:
        return _generate(args, dist)
    finally:
        dist.close()


def _generate(args: argparse.Namespace, dist: _dist.Distributed) -> int:
    start = time.perf_counter()
    report = Reporter("generate", dist.rank, dist.world)
    methods = resolve_methods(args)
    refuse_overlap(args.out, {"DATA": Path(args.data)})
    preprocess = Preprocess.from_args(args)
    images = open_images(args.data, args.names, preprocess.window)
    names = images.names
    if args.on_error == "stop" and images.header_errors:
        bad = sorted(images.header_errors)
        raise CommandError(
            f"{plural(len(bad), 'image')} in DATA cannot be read: "
            f"{shorten([f'{n} ({images.header_errors[n]})' for n in bad], 3)} (fix or remove "
            "them, or pass --on-error skip)"
        )
    check_uniform_size(images, names, preprocess.resize)
    check_uniform_channels(images, names, preprocess.grayscale_to_rgb)
    loaded = load_model(args.model, dist.device)
    _check_cam_layers(methods, loaded)
    out: Path = args.out
    records = {m.name: _settings(m, loaded, images, preprocess, args.target) for m in methods}
    previous = read_runs(out)["methods"]
    if not args.overwrite:
        for method in methods:
            old = previous.get(method.name)
            has_maps = (out / method.name).is_dir() and bool(map_names(out / method.name))
            conflicts = settings_conflicts(old, records[method.name]) if old and has_maps else []
            if conflicts:
                raise CommandError(
                    f"{out / method.name} holds maps made with other settings: "
                    f"{'; '.join(conflicts)}. Use another --out, or --overwrite to replace them"
                )
    dist.barrier()  # every rank has read run.json before rank 0 may rewrite it

    shard = dist.shard(names)
    digests = {n: input_digest(images, n) for n in shard}
    wanted = {
        m.name: {n: _dependencies(records[m.name], digests[n]) for n in shard} for m in methods
    }
    todo: dict[str, list[str]] = {}
    kept: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    for method in methods:
        folder = out / method.name
        _remove_stale_temporaries(folder, set(shard), report)
        todo[method.name], reasons[method.name] = _stale(
            folder, shard, wanted[method.name], images, args.overwrite
        )
        kept[method.name] = len(shard) - len(todo[method.name])
    needed = sorted({n for missing in todo.values() for n in missing})
    if dist.world > 1:
        report.note(f"{dist.world} processes, {len(names)} images, about {len(shard)} per process")
    report.note(
        f"{len(names)} images, {len(methods)} method(s) on {dist.device}: "
        + ", ".join(f"{m.name} {len(todo[m.name])} to do" for m in methods)
        + (" (this process's shard)" if dist.world > 1 else "")
    )

    written = {m.name: 0 for m in methods}
    failed: dict[str, str] = {}
    nonfinite: dict[str, dict[str, str]] = {m.name: {} for m in methods}
    if needed:
        _probe(loaded, images, needed[0], preprocess, args.target, dist.device)
    if dist.rank == 0:  # the settings, before any map: a resumed run must match them
        write_runs(out, {m.name: {**records[m.name], "status": "running"} for m in methods})
    batches = read_batches(images, needed, preprocess, args.batch_size, args.workers)
    with progress(len(needed), "generate", enabled=dist.rank == 0) as bar:
        for batch in batches:
            good = _usable(batch, failed, args.on_error, report)
            for item in batch:
                if item.name in failed:  # no map of an image that failed: not even a stale one
                    for method in methods:
                        _discard(out / method.name / f"{item.name}.npy")
            if good:
                inputs = _stack(good, loaded).to(dist.device)
                for method in methods:
                    todo_here = set(todo[method.name])
                    rows = [i for i, item in enumerate(good) if item.name in todo_here]
                    if not rows:
                        continue
                    chosen = [good[i] for i in rows]
                    subset = inputs if len(rows) == len(good) else inputs[rows]
                    raw = _attribute(method, loaded, subset, chosen, args, preprocess)
                    for item, one in zip(chosen, raw):
                        path = out / method.name / f"{item.name}.npy"
                        finished = _finished(method, item, one, preprocess, args.on_error)
                        if finished is None:
                            _discard(path)
                            nonfinite[method.name][item.name] = (
                                f"{method.name} gave NaN or inf values (the model's output or "
                                "gradients are not finite for this image)"
                            )
                            report.warn(
                                f"skipped {item.name}: {nonfinite[method.name][item.name]}",
                                local=True,
                            )
                            continue
                        begin_map(path)
                        _volumes.save_outputs(images, out / method.name, item.name, finished)
                        finish_record(path, wanted[method.name][item.name])
                        written[method.name] += 1
            bar.update(len(batch))

    mine = {
        "written": written,
        "kept": kept,
        "failed": failed,
        "nonfinite": nonfinite,
        "reasons": reasons,
    }
    everyone = dist.gather(mine)
    if dist.rank == 0:
        partial = _finish(
            out, methods, records, everyone, names, dist, report, time.perf_counter() - start
        )
        return EXIT_PARTIAL if partial else 0
    return 0


def _dependencies(settings: dict[str, Any], digest: str | None) -> dict[str, Any]:
    """What one map of a method with run settings ``settings`` depends on."""
    return dependencies(
        digest,
        settings["model"]["sha256"],
        settings["method"],
        settings["options"],
        settings["target"],
        settings["preprocessing"],
    )


def _stale(
    folder: Path,
    shard: list[str],
    wanted: dict[str, dict[str, Any]],
    images: ImageSet,
    overwrite: bool,
) -> tuple[list[str], dict[str, int]]:
    """The images whose map must be (re)computed, and why existing maps are recomputed:
    ``{reason: count}`` (a map that was never written has no reason)."""
    todo: list[str] = []
    reasons: dict[str, int] = {}
    for name in shard:
        path = folder / f"{name}.npy"
        if not path.exists() and not record_path(path).exists():
            todo.append(name)
            continue
        if overwrite:
            reason: str | None = "--overwrite given"
        elif not _complete_map(path, images.sizes.get(name)):
            reason = INCOMPLETE
        else:
            reason = verdict(path, wanted[name])
        if reason is not None:
            todo.append(name)
            reasons[reason] = reasons.get(reason, 0) + 1
    return todo, reasons


def _finished(
    method: Method, item: Item, raw: Tensor, preprocess: Preprocess, on_error: str
) -> Tensor | None:
    """The map as stored, or None when it is not finite (with ``--on-error skip``)."""
    try:
        return finish_map(raw, item.size, preprocess.pad)
    except ValueError as error:
        if on_error == "skip":
            return None
        raise CommandError(
            f"{method.name} gave a map with NaN or inf values for image {item.name} ({error}); "
            "stopped: the model's output or gradients are not finite for this image (no map "
            "written for it; pass --on-error skip to go on without it)"
        ) from None


def _discard(path: Path) -> None:
    """Remove a map that must not be used any more (and its NIfTI twin), record first."""
    begin_map(path)
    path.unlink(missing_ok=True)
    path.with_name(path.name[: -len(".npy")] + ".nii.gz").unlink(missing_ok=True)


def _settings(
    method: Method,
    loaded: LoadedModel,
    images: ImageSet,
    preprocess: Preprocess,
    target: int | None,
) -> dict[str, Any]:
    return {
        "method": method.kind,
        "model": loaded.describe(),
        "data": images.describe(),
        "preprocessing": preprocess.as_dict(),
        "target": "argmax" if target is None else target,
        "options": method.options,
        "maps_are": MAP_CONVENTION,
    }


def _check_cam_layers(methods: list[Method], loaded: LoadedModel) -> None:
    if loaded.kind == "torchscript" and any(m.kind == "lrp" for m in methods):
        raise CommandError(
            "--method lrp: LRP runs the model's Python forward under its rules, and a "
            "TorchScript module runs in TorchScript's interpreter; load the model as a "
            "torch.export program (.pt2) or with 'package.module:factory'"
        )
    cams = [m for m in methods if m.kind == "cam"]
    if not cams:
        return
    if not loaded.hooks:
        what = "TorchScript modules" if loaded.kind == "torchscript" else "torch.export programs"
        raise CommandError(
            f"--method {cams[0].name}: class activation maps read a layer's activations "
            f"through forward hooks, which {what} do not run; load the model with "
            "'package.module:factory' for CAM methods"
        )
    for method in cams:
        if method.options["layer"]:
            try:
                resolve_cam_layers(loaded.module, method.options["layer"])
            except (ValueError, TypeError) as error:
                raise CommandError(f"--layer: {error}") from None


def _complete_map(path: Path, size: tuple[int, int] | None) -> bool:
    """Whether ``path`` is a whole float32 ``.npy`` map of shape ``size`` (header and length)."""
    if size is None:
        return False
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        return (
            tuple(shape) == tuple(size)
            and dtype == np.float32
            and not fortran
            and path.stat().st_size == expected
        )
    except (OSError, ValueError):
        return False


def _remove_stale_temporaries(folder: Path, names: set[str], report: Reporter) -> None:
    """Delete ``.<name>.npy.<pid>.<hex>.tmp`` files (and ``.nii.gz``, and
    ``.records/.<name>.json...tmp``) of dead processes for this shard's images."""
    removed = 0
    for where, suffix in ((folder, ".npy"), (folder / RECORDS, ".json")):
        if not where.is_dir():
            continue
        for entry in where.iterdir():
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            parts = entry.name[1 : -len(".tmp")].rsplit(".", 2)
            if len(parts) != 3:
                continue
            if suffix == ".json":
                stem = parts[0][: -len(suffix)] if parts[0].endswith(suffix) else None
            else:
                stem = _volumes.map_stem(parts[0])
            if stem is None or stem not in names:
                continue
            if parts[1].isdigit() and _alive(int(parts[1])):
                continue
            entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        report.note(f"removed {plural(removed, 'leftover temporary file')} in {folder}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _usable(batch: list[Item], failed: dict[str, str], on_error: str, report: Reporter) -> list:
    good = []
    for item in batch:
        if item.error is None:
            good.append(item)
            continue
        if on_error == "stop":
            raise CommandError(
                f"{item.error}; stopped (maps written so far are complete: rerun to resume, or "
                "pass --on-error skip)"
            )
        report.warn(f"skipped {item.error}", local=True)
        failed[item.name] = item.error
    return good


def _stack(items: list[Item], loaded: LoadedModel) -> Tensor:
    shapes = {tuple(item.input.shape) for item in items}
    if len(shapes) > 1:
        raise CommandError(
            f"images of one batch have different shapes after preprocessing "
            f"({', '.join(str(list(s)) for s in sorted(shapes))}); pass --resize H W "
            "(and --grayscale-to-rgb for mixed grey and colour images)"
        )
    loaded.check_input(next(iter(shapes)))
    return torch.stack([item.input for item in items])


def _probe(
    loaded: LoadedModel,
    images: ImageSet,
    name: str,
    preprocess: Preprocess,
    target: int | None,
    device: torch.device,
) -> None:
    """One forward of one image before any map is written: input shape, output, target range."""
    try:
        pixels = images.load(name)
    except Exception:  # an unreadable image is reported (or skipped) in the loop
        return
    model_input = preprocess(pixels)
    loaded.check_input(tuple(model_input.shape))
    try:
        with torch.no_grad():
            output = loaded.module(model_input[None].to(device))
    except Exception as error:
        raise CommandError(_model_failure(loaded, model_input.shape, error)) from None
    if not isinstance(output, Tensor) or output.ndim not in (1, 2):
        shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise CommandError(
            f"MODEL {loaded.spec} returns {shape} for one image: expected logits [B, classes] "
            "(or [B] for a single logit)"
        )
    classes = 1 if output.ndim == 1 else output.shape[1]
    if target is not None and target >= classes:
        raise CommandError(
            f"--target {target} is out of range: MODEL {loaded.spec} has {classes} output "
            f"class(es), so the target must be 0..{classes - 1}"
        )


def _model_failure(loaded: LoadedModel, shape: Any, error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    given = int(shape[0]) if len(shape) else None
    expected = first_conv_channels(loaded.module)
    if expected is not None and given is not None and expected != given:
        fix = (
            "--grayscale-to-rgb gives grey images 3 channels"
            if (given, expected) == (1, 3)
            else "convert the images to the model's channels"
        )
        hint = (
            f" (the model's first convolution takes {expected} channel(s) but the preprocessed "
            f"images have {given}: {fix})"
        )
    elif "channel" in first.lower():
        hint = (
            f" (the images' channels ({given}) do not fit the model: --grayscale-to-rgb gives "
            "grey images 3 channels)"
        )
    elif "size" in first.lower() or "shape" in first.lower() or "Guard" in first:
        hint = " (the model expects another image size? pass --resize H W)"
    else:
        hint = f" (the preprocessed images have {given} channel(s); does the model take that?)"
    return (
        f"MODEL {loaded.spec} failed on a preprocessed image of shape {list(shape)}: "
        f"{type(error).__name__}: {first}{hint}"
    )


def first_conv_channels(module: torch.nn.Module) -> int | None:
    """Input channels of the model's first convolution (its first parameter with 3 to 5
    dimensions, ``[out, in / groups, *kernel]``), where the parameters are visible (TorchScript
    and ``torch.export`` modules included); None when there is none."""
    try:
        for _, parameter in module.named_parameters():
            if 3 <= parameter.ndim <= 5:
                return int(parameter.shape[1])
            if parameter.ndim == 2:
                return None  # a linear layer comes first: no convolution to read
    except Exception:
        return None
    return None


def _attribute(
    method: Method,
    loaded: LoadedModel,
    inputs: Tensor,
    items: list[Item],
    args: argparse.Namespace,
    preprocess: Preprocess,
) -> Tensor:
    names = [item.name for item in items]
    try:
        return compute(
            method, loaded.module, inputs, names, args.target, preprocess, args.chunk_size
        )
    except CommandError:
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError) as error:
        text = str(error).strip().splitlines()
        first = text[0] if text else type(error).__name__
        raise CommandError(
            f"{method.name} failed on {shorten(names, 3)}: {type(error).__name__}: {first}"
        ) from None


def _finish(
    out: Path,
    methods: list[Method],
    records: dict[str, dict[str, Any]],
    everyone: list[dict[str, Any]],
    names: list[str],
    dist: _dist.Distributed,
    report: Reporter,
    seconds: float,
) -> bool:
    """Write run.json and the summary; True when the run is partial (images skipped)."""
    failed: dict[str, str] = {}
    for part in everyone:
        failed.update(part["failed"])
    final = {}
    lines = []
    partial = bool(failed)
    for method in methods:
        written = sum(part["written"][method.name] for part in everyone)
        kept = sum(part["kept"][method.name] for part in everyone)
        nonfinite: dict[str, str] = {}
        reasons: dict[str, int] = {}
        for part in everyone:
            nonfinite.update(part["nonfinite"][method.name])
            for reason, count in part["reasons"][method.name].items():
                reasons[reason] = reasons.get(reason, 0) + count
        recomputed = sum(reasons.values())
        count = written + kept  # maps of DATA's images now in the folder, over all processes
        errors = {**failed, **nonfinite}
        partial = partial or bool(nonfinite)
        final[method.name] = {
            **records[method.name],
            "status": "complete" if count == len(names) else "incomplete",
            "images": len(names),
            "maps": count,
            "written": written,
            "kept": kept,
            "recomputed": {"count": recomputed, "reasons": dict(sorted(reasons.items()))},
            "failed": [{"image": n, "error": errors[n]} for n in sorted(errors)],
            "processes": dist.world,
            "updated": now(),
        }
        lines.append(
            f"{method.name}: {count}/{len(names)} maps in {out / method.name} "
            f"({written} written, {kept} already there)"
        )
        if recomputed:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            lines.append(f"{method.name}: {plural(recomputed, 'map')} recomputed, not kept ({why})")
        if nonfinite:
            lines.append(
                f"{method.name}: {plural(len(nonfinite), 'image')} without a map (NaN or inf "
                f"values): {shorten(sorted(nonfinite))}"
            )
    path = write_runs(out, final)
    for line in lines:
        report.result(line)
    if failed:
        report.warn(
            f"{plural(len(failed), 'image')} skipped (unreadable): {shorten(sorted(failed))}; "
            f"listed in {path}"
        )
    if partial:
        report.warn(f"partial run: some images have no map (listed in {path}); exit code 3")
    report.result(f"wrote {path} in {seconds:.1f} s")
    return partial

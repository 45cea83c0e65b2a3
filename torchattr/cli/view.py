"""``torchattr view DATA MAPS... --out DIR``: maps laid over their images, as PNG files.

Each map of MAPS (a folder of ``<image name>.npy``, as written by ``generate``) is blended over
its image with :func:`torchattr.viz.overlay`: the pixels below ``--threshold`` times the map's
maximum are left as they are, the others get ``(1 - alpha) * image + alpha * cmap(map)``; the
``--boxes`` of the image are drawn on top. One folder of maps gives ``OUT/<image name>.png``;
several give ``OUT/<method>/<image name>.png`` each and, with matplotlib, a side-by-side figure
per image ``OUT/side_by_side/<image name>.png``. Images are shown as read (no resizing or
normalisation): maps have the image's own size, as ``generate`` saves them, or the model input's
size recorded in the maps' ``run.json`` (``--resize``, e.g. 512x512 maps of other tools), which
is carried back to the image (resized; with ``--pad square`` resized to the square and cropped).
Refused with one line: an ``--out`` that is, is inside or contains DATA or a MAPS folder, and a
map that is not readable, not finite or outside [0, 1].
``--masks`` outlines each image's label mask in green. A volume (``[D, H, W]`` map) is shown as
its axial, coronal and sagittal mid-slices and maximum-intensity projection side by side
(:func:`torchattr.cli._volumes.volume_view`); its map must have the volume's own size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchattr.cli import _volumes
from torchattr.cli._common import (
    ON_ERROR,
    CommandError,
    Reporter,
    float_in,
    int_at_least,
    plural,
    read_map,
    refuse_overlap,
    shorten,
)
from torchattr.cli._data import (
    add_window_option,
    check_box_extents,
    check_box_names,
    check_mask_names,
    load_boxes,
    load_masks,
    open_images,
    read_batches,
)
from torchattr.cli._geometry import PADS
from torchattr.cli._progress import progress
from torchattr.cli._runs import method_record
from torchattr.io import map_names

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register the ``view`` subcommand."""
    parser = subparsers.add_parser(
        "view",
        help="overlays of maps on their images, one PNG per image",
        description="Blend each map of MAPS over its image from DATA (colormap where the map "
        "is at least --threshold times its maximum, the image itself elsewhere), draw the "
        "--boxes, and save OUT/<image name>.png (several MAPS folders: OUT/<method>/<image "
        "name>.png and OUT/side_by_side/<image name>.png).",
    )
    parser.add_argument("data", metavar="DATA", help="folder of images or tensor file")
    parser.add_argument(
        "maps", metavar="MAPS", nargs="+", type=Path, help="folder(s) of <image name>.npy maps"
    )
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--boxes", default=None, help="ground-truth boxes, JSON or CSV (image, x1, y1, x2, y2)"
    )
    parser.add_argument(
        "--masks",
        default=None,
        metavar="FOLDER",
        help="ground-truth label masks (<image name>.png / .nii.gz / .npy), drawn as outlines",
    )
    parser.add_argument(
        "--threshold",
        type=float_in(0, 1),
        default=0.2,
        help="show the map where it is >= this fraction of its maximum (default: 0.2; 0 shows "
        "every non-zero pixel)",
    )
    parser.add_argument(
        "--cmap",
        default="viridis",
        help="colormap: viridis (perceptually uniform), RdBu_r, gray, jet (on request only: its "
        "bright bands invent edges), or a matplotlib name (default: viridis)",
    )
    parser.add_argument(
        "--alpha", type=float_in(0, 1), default=0.5, help="weight of the colours (default: 0.5)"
    )
    parser.add_argument(
        "--names", default=None, metavar="FILE", help="tensor DATA: image names, one per line"
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="stop",
        help="an unreadable image or a map without an image: stop (default) or skip it",
    )
    parser.add_argument(
        "--workers", type=int_at_least(0), default=0, help="image reading processes (default: 0)"
    )
    parser.add_argument(
        "--resize",
        nargs=2,
        type=int_at_least(1),
        metavar=("H", "W"),
        default=None,
        help="the model input's size: maps of this size are carried back to their image "
        "(default: as recorded in the maps' run.json)",
    )
    parser.add_argument(
        "--pad",
        choices=PADS,
        default=None,
        help="the images were padded to a square before --resize (default: as recorded in the "
        "maps' run.json)",
    )
    add_window_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``torchattr view``: returns the exit code."""
    from torchattr import viz

    report = Reporter("view")
    _check_cmap(args.cmap, viz)
    refuse_overlap(
        args.out,
        {"DATA": Path(args.data), **{f"MAPS {i + 1}": Path(m) for i, m in enumerate(args.maps)}},
    )
    images = open_images(args.data, args.names, args.window)
    folders = _map_folders(args.maps)
    preprocessing = {label: _geometry(args, folder) for label, folder in folders.items()}
    known = set(images.names)
    per_folder: dict[str, list[str]] = {}
    for label, folder in folders.items():
        names = map_names(folder)
        if not names:
            raise CommandError(f"MAPS {folder}: no .npy maps")
        unknown = [n for n in names if n not in known]
        if unknown:
            message = f"MAPS {folder} has maps of images not in DATA: {shorten(unknown)}"
            if args.on_error == "stop":
                raise CommandError(message + " (or pass --on-error skip)")
            report.warn(message + "; skipped")
        per_folder[label] = [n for n in names if n in known]
    wanted = sorted({n for names in per_folder.values() for n in names})
    boxes: dict[str, list[Any]] = {}
    if args.boxes is not None:
        boxes = check_box_names(
            load_boxes(args.boxes), images.names, args.boxes, args.on_error, report
        )
        check_box_extents(boxes, images.sizes, report)
    masks = {}
    if args.masks is not None:
        masks = check_mask_names(load_masks(args.masks), images.names, args.on_error, report)
    several = len(folders) > 1
    side_by_side = several and _has_matplotlib()
    if several and not side_by_side:
        report.note("matplotlib is not installed: no side-by-side figures (pip install matplotlib)")

    written, skipped = 0, []
    with progress(len(wanted), "view") as bar:
        for batch in read_batches(images, wanted, None, 16, args.workers, keep_pixels=True):
            for item in batch:
                bar.update(1)
                if item.error is not None:
                    if args.on_error == "stop":
                        raise CommandError(item.error)
                    report.warn(f"skipped {item.error}")
                    skipped.append(item.name)
                    continue
                image = _display(item.pixels)
                xyxy = [list(b[:4]) for b in boxes.get(item.name, [])]
                maps = {}
                for label, folder in folders.items():
                    if item.name not in per_folder[label]:
                        continue
                    saliency = read_map(
                        folder / f"{item.name}.npy", item.size, preprocessing[label]
                    ).numpy()
                    maps[label] = saliency
                    mask = _volumes.view_mask(masks, item.name, item.size)
                    if _volumes.is_volume(item.size):
                        picture = _volumes.volume_view(
                            viz,
                            item.pixels,
                            saliency,
                            mask,
                            cmap=args.cmap,
                            alpha=args.alpha,
                            threshold=args.threshold,
                        )
                    else:
                        picture = viz.overlay(
                            image,
                            saliency,
                            cmap=args.cmap,
                            alpha=args.alpha,
                            threshold=args.threshold,
                            boxes=xyxy or None,
                            outline="outside",
                        )
                        if mask is not None:
                            picture = _volumes.draw_outline(picture, mask)
                    target = args.out / label if several else args.out
                    viz.save_png(target / f"{item.name}.png", picture)
                    written += 1
                if side_by_side and len(maps) > 1 and not _volumes.is_volume(item.size):
                    figure = viz.plot_attributions(
                        image,
                        maps,
                        cmap=args.cmap,
                        alpha=args.alpha,
                        threshold=args.threshold,
                        boxes=xyxy or None,
                        title=item.name,
                    )
                    viz.save_png(args.out / "side_by_side" / f"{item.name}.png", figure)
    report.result(f"wrote {plural(written, 'overlay')} to {args.out}")
    if skipped:
        report.warn(f"{plural(len(skipped), 'image')} skipped (unreadable): {shorten(skipped)}")
    return 0


def _geometry(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``resize`` and ``pad`` of the maps in ``folder``: the options, else its run.json."""
    saved = (method_record(folder) or {}).get("preprocessing") or {}
    resize = args.resize if args.resize is not None else saved.get("resize")
    return {"resize": resize, "pad": args.pad if args.pad is not None else saved.get("pad")}


def _map_folders(paths: list[Path]) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for path in paths:
        if not path.is_dir():
            raise CommandError(f"MAPS {path}: no such folder")
        label = path.resolve().name
        if label in folders:
            raise CommandError(
                f"MAPS {path} and {folders[label]} have the same folder name {label!r}; "
                "overlays are filed by it"
            )
        folders[label] = path
    return folders


def _display(pixels: Any) -> Any:
    """Pixels ``[C, H, W]`` for display: grey or RGB (a 4th channel of a tensor is dropped)."""
    if pixels.shape[0] not in (1, 3):
        pixels = pixels[:3] if pixels.shape[0] > 3 else pixels[:1]
    return pixels


def _check_cmap(cmap: str, viz: Any) -> None:
    try:
        viz.colormap(cmap)
    except (ImportError, ValueError) as error:
        raise CommandError(f"--cmap: {error}") from None


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

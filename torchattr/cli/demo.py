"""``torchattr demo``: train a small CNN on lesion phantoms, explain it with every method, compare.

Steps: generate seeded phantoms (:func:`torchattr.data.make_phantoms`, lesion boxes known), train
:class:`torchattr.data.PhantomNet` on the CPU (Adam, binary cross-entropy), report the held-out
accuracy and test it against chance (one-sided binomial test; a model not clearly better than
chance, ``p >= 0.01``, is refused: its maps would explain nothing), explain the lesion logit of
held-out true positives with every method of :data:`METHODS` (saliency, input x gradient,
SmoothGrad, Integrated Gradients, Grad-CAM, Grad-CAM++, LayerCAM and Score-CAM of PhantomNet's
last conv block, LRP), score the maps against the boxes and by ROAD, and write::

    <out>/maps/<method>/<image id>.npy   one map per method and image: float32 [H, W] in [0, 1]
    <out>/images/<image id>.npy          the explained images: float32 [H, W] in [0, 1]
    <out>/overlays/<image id>.png        the image, then each method's overlay (5 per row)
    <out>/metrics.md, metrics.json       per method mean / std (and per image values in the JSON)
    <out>/methods.png                    bar chart comparing the methods (needs matplotlib)
    <out>/manifest.json                  settings, accuracy, explained images and their boxes
    <out>/report/index.html              the HTML report (:mod:`torchattr.cli.report`)

``<out>/maps`` follows the command line's convention for a folder of maps (``MAPS/<method>/<image
id>.npy``: one folder per method, one ``.npy`` per image). Each map is ``|A|`` maximised over the
channels (CAM maps as they come), min-max normalised per image. Overlays follow the pipeline's
viewing convention: the colormap (``viridis``) blended 50/50 over the image where the map is at
least 0.2 of its maximum, the lesion box outlined just outside the box so that no map pixel is
hidden. They and the report need Pillow and the plot needs matplotlib (``pip install
"torchattr[viz]"``); when one is missing, that output is skipped with a note, and the rest is
written.

Metrics (:mod:`torchattr.metrics`; higher is better for each): proportional energy (share of the
map's mass inside the lesion box; a uniform map scores the box's area fraction), saliency focus
(mean map value inside the box), pointing game (the map's maximum inside the box, or within
``pointing_tolerance`` pixels of it) and ROAD ``(LeRF(1 - p) - MoRF(p)) / 2`` of the lesion
probability (noisy linear imputation of 10% to 90% of the pixels; 20%, 50%, 80% with
``--quick``). A map of uniform random noise is scored the same way as a reference.

Adding a method is one entry in :data:`METHODS`: a function ``(model, images [K, 1, H, W],
config) -> maps [K, H, W]`` (any scale). It is then run, saved, drawn and scored like the others.

The demo runs on one CPU thread (restored afterwards): about 12 s for the defaults, 6 s with
``--quick`` (which trains enough to beat chance clearly: held-out accuracy 1.0 on 64 images for
seeds 0, 1 and 2), on the 2-core development machine.

Everything is seeded: the same options give the same files. Each random stream (training and
held-out data, model initialisation, shuffling, SmoothGrad noise, ROAD draws, the random
reference) has its own seed derived from ``--seed`` (:func:`torchattr.data.derive_seed`). The
caller's global random state is left as it was (the model is initialised inside
``torch.random.fork_rng``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr import metrics, viz
from torchattr.cli import _runs, demo_ehr
from torchattr.cli._common import CommandError, int_at_least, one_thread
from torchattr.cli._data.models import state_hash
from torchattr.data import PhantomNet, derive_seed, make_phantoms
from torchattr.io import normalize_map, save_map
from torchattr.metrics.perturbation import FRACTIONS

__all__ = ["DemoConfig", "add_parser", "run", "run_demo"]

Log = Callable[[str], None]
Method = Callable[[nn.Module, Tensor, "DemoConfig"], Tensor]
CAM_LAYER = "features"  # PhantomNet's last conv block (conv -> BatchNorm -> ReLU), H/4 x W/4


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (defaults: the full demo, about 12 s on one CPU thread)."""

    out: Path = Path("torchattr_demo")
    seed: int = 0
    epochs: int = 4
    n_train: int = 600
    n_test: int = 200
    n_explain: int = 16
    size: int = 64
    batch_size: int = 16
    lr: float = 2e-3
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.1
    ig_steps: int = 16
    pointing_tolerance: float = 0.0  # pixels: a hit is a maximum inside the lesion box
    road_fractions: tuple[float, ...] = FRACTIONS  # of the pixels imputed by ROAD
    overlay_scale: int = 3  # overlay grids enlarge each 64 x 64 panel 3 times


# Enough to beat chance clearly in a few seconds (held-out accuracy 1.0 for seeds 0, 1, 2).
QUICK = {
    "epochs": 4,
    "n_train": 160,
    "n_test": 64,
    "n_explain": 4,
    "batch_size": 8,
    "lr": 5e-3,
    "smoothgrad_samples": 4,
    "ig_steps": 4,
    "road_fractions": (0.2, 0.5, 0.8),
}


def _smoothgrad(model: nn.Module, images: Tensor, config: DemoConfig) -> Tensor:
    noise = torch.Generator().manual_seed(_seed(config, "smoothgrad"))
    return ta.reduce_channels(
        ta.smoothgrad(
            model,
            images,
            samples=config.smoothgrad_samples,
            noise=config.smoothgrad_noise,
            generator=noise,
        )
    )


def _cam(method: str) -> Method:
    return lambda model, images, config: ta.cam(model, images, layer=CAM_LAYER, method=method)


# name -> maps [K, H, W] of the lesion logit (any scale; normalised per image afterwards).
METHODS: dict[str, Method] = {
    "saliency": lambda model, images, config: ta.saliency(model, images),
    "input_x_gradient": lambda model, images, config: ta.reduce_channels(
        ta.input_x_gradient(model, images)
    ),
    "smoothgrad": _smoothgrad,
    "integrated_gradients": lambda model, images, config: ta.reduce_channels(
        ta.integrated_gradients(model, images, steps=config.ig_steps)
    ),
    "gradcam": _cam("gradcam"),
    "gradcam++": _cam("gradcam++"),
    "layercam": _cam("layercam"),
    "scorecam": _cam("scorecam"),
}
if hasattr(ta, "lrp"):  # layer-wise relevance propagation, relevance shaped like the input
    METHODS["lrp"] = lambda model, images, config: ta.reduce_channels(ta.lrp(model, images))

# metric -> its label in tables and plots (higher is better for each; see describe_metrics)
METRICS = {
    "proportional_energy": "proportional energy",
    "saliency_focus": "saliency focus",
    "pointing_game": "pointing game",
    "road": "ROAD",
}
REFERENCE = "random"  # uniform noise maps, scored like the methods
TARGET = "lesion logit (output 0)"
CHANCE = 0.5  # held-out sets are half positive
CHANCE_P = 0.01  # maps are scored only when P(accuracy this high | chance) is below this
THRESHOLD = 0.2  # overlays show the map where it is at least this fraction of its maximum


def describe_metrics(config: DemoConfig) -> dict[str, str]:
    """What each metric of :data:`METRICS` measures, with this run's settings."""
    tolerance = config.pointing_tolerance
    where = "inside" if tolerance == 0 else f"within {tolerance:g} px of"
    fractions = ", ".join(f"{100 * p:g}%" for p in config.road_fractions)
    return {
        "proportional_energy": "share of the map's mass inside the lesion box (a uniform map "
        "scores the box's area fraction)",
        "saliency_focus": "mean map value inside the lesion box; not normalised by the map's "
        "mass, so diffuse maps (random noise too) score high",
        "pointing_game": f"hit rate: the map's maximum lies {where} the lesion box",
        "road": "ROAD (LeRF(1 - p) - MoRF(p)) / 2 of the lesion probability, averaged over noisy "
        f"linear imputation of {fractions} of the pixels",
    }


def add_parser(subparsers: Any) -> None:
    """Register the ``demo`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "demo",
        help="train a small CNN on lesion phantoms, explain it with every method, compare them",
        description="Train a small CNN on lesion phantoms, explain held-out true positives with "
        "every attribution method, save the maps, overlays, a metrics table (proportional "
        "energy, saliency focus, pointing game, ROAD) and a plot comparing the methods.",
    )
    parser.add_argument(
        "--out", type=Path, default=DemoConfig.out, help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DemoConfig.seed,
        help="seed of data, model and noise (default: %(default)s)",
    )
    for name, what, minimum in (
        ("epochs", "training epochs", 1),
        ("n-train", "training images", 1),
        ("n-test", "held-out images, half of them positive", 2),
        ("n-explain", "held-out true positives to explain", 1),
    ):
        default = getattr(DemoConfig, name.replace("-", "_"))
        parser.add_argument(
            f"--{name}",
            type=int_at_least(minimum),
            default=None,
            help=f"{what} (default: {default}, {QUICK[name.replace('-', '_')]} with --quick)",
        )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller settings, a few seconds, still training the model well beyond chance",
    )
    parser.add_argument(
        "--ehr",
        action="store_true",
        help="run the EHR demo instead: synthetic patients' condition / procedure codes and labs, "
        "Integrated Gradients through the code embeddings, rank of the planted code "
        "(the options above apply, with the EHR demo's own defaults)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo (the EHR demo with ``--ehr``) from parsed arguments; return the exit code."""
    if getattr(args, "ehr", False):
        return demo_ehr.run(args)
    run_demo(config_from_args(args))
    return 0


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """Defaults, then the ``--quick`` preset, then the options given explicitly."""
    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("epochs", "n_train", "n_test", "n_explain"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return DemoConfig(out=args.out, seed=args.seed, **settings)


def run_demo(config: DemoConfig, log: Log = print) -> dict[str, Any]:
    """Run every step of the demo; print progress, the table and the outputs; return the manifest.

    The manifest dict (also written as ``manifest.json``) holds the settings, the accuracy, the
    explained images with their boxes, the methods, the output paths relative to ``config.out``
    and the mean of every metric per method.

    Runs on one CPU thread (restored afterwards): the model and images are so small that
    intra-op threads gain little on an idle machine and cost 10x and more on a busy one.
    """
    with one_thread():
        return _run_demo(config, log)


def _run_demo(config: DemoConfig, log: Log) -> dict[str, Any]:
    start = time.perf_counter()
    steps = 6
    log(
        f"[1/{steps}] generating {config.n_train} training and {config.n_test} held-out phantoms "
        f"({config.size}x{config.size}, seed {config.seed})"
    )
    train_x, train_y, _ = make_phantoms(config.n_train, config.size, seed=_seed(config, "train"))
    test_x, test_y, test_boxes = make_phantoms(
        config.n_test, config.size, seed=_seed(config, "test")
    )

    log(f"[2/{steps}] training PhantomNet for {config.epochs} epoch(s) on the CPU")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config, "model"))
        model = PhantomNet()
    shuffle = torch.Generator().manual_seed(_seed(config, "shuffle"))
    train(model, train_x, train_y, config, shuffle, log)
    model.eval()

    predicted = predict(model, test_x)
    correct = int((predicted == test_y).sum())
    accuracy = correct / config.n_test
    p_value = chance_p_value(correct, config.n_test)
    log(
        f"[3/{steps}] held-out accuracy: {accuracy:.3f} ({correct}/{config.n_test}); chance is "
        f"{CHANCE:g}, binomial p = {p_value:.2g}"
    )
    if p_value >= CHANCE_P:
        raise CommandError(
            f"the model is not clearly better than chance (held-out accuracy {accuracy:.3f}, "
            f"binomial p = {p_value:.2g} >= {CHANCE_P:g}): its maps would explain nothing, so "
            "they are not scored; train longer (--epochs, --n-train) or try another --seed"
        )
    log(f"      the model beats chance clearly (p < {CHANCE_P:g}): its maps are worth scoring")

    chosen, all_true = choose_explained(predicted, test_y, config.n_explain)
    if len(chosen) == 0:
        raise ValueError(f"the {config.n_test} held-out images hold no lesion: raise n_test")
    what = "true positives" if all_true else "positives (no true positives: model undertrained)"
    log(
        f"[4/{steps}] explaining the lesion logit of {len(chosen)} held-out {what} with "
        f"{len(METHODS)} methods"
    )
    images = test_x[chosen]
    with torch.no_grad():
        probabilities = torch.sigmoid(model(images)[:, 0]).tolist()
    boxes = [test_boxes[i] for i in chosen.tolist()]
    ids = [f"phantom_{i:05d}" for i in chosen.tolist()]
    maps, seconds = attribution_maps(model, images, config, log)

    log(f"[5/{steps}] scoring the maps against the lesion boxes and by ROAD")
    reference = torch.rand(images[:, 0].shape, generator=_generator(config, REFERENCE))
    scores = {name: score_maps(model, images, boxes, m, config) for name, m in maps.items()}
    reference_scores = score_maps(model, images, boxes, reference, config)
    area = metrics.boxes_to_mask(boxes, config.size, config.size).float().mean(dim=(1, 2))

    log(f"[6/{steps}] writing maps, overlays, metrics and the plot to {config.out}")
    outputs = write_outputs(
        config, images, boxes, ids, maps, scores, reference_scores, area, accuracy, log
    )
    manifest = build_manifest(config, accuracy, ids, boxes, area, scores, all_true, outputs)
    manifest["chance"] = {"accuracy": CHANCE, "p": p_value, "correct": correct}
    manifest["model_sha256"] = state_hash(model)  # of the trained weights
    for entry, probability in zip(manifest["images"], probabilities, strict=True):
        entry["score"] = probability
    (config.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report_path = write_demo_report(config.out, log)
    if report_path is not None:
        outputs["report"] = str(report_path.relative_to(config.out))

    log("")
    log(format_table(scores, reference_scores, area, seconds))
    log("")
    log(format_outputs(config.out, outputs, len(ids), len(maps)))
    if report_path is not None:
        log(f"\nreport: {report_path.resolve()}  (open it in a browser)")
    log(f"\ndone in {time.perf_counter() - start:.1f} s")
    return manifest


def chance_p_value(correct: int, total: int, chance: float = CHANCE) -> float:
    """One-sided binomial test: ``P(X >= correct)`` for ``X ~ Binomial(total, chance)``.

    ``sum_{k >= correct} C(total, k) chance^k (1 - chance)^(total - k)``, exact.
    """
    return min(
        1.0,
        sum(
            math.comb(total, k) * chance**k * (1 - chance) ** (total - k)
            for k in range(correct, total + 1)
        ),
    )


def write_demo_report(out: Path, log: Log = print) -> Path | None:
    """The HTML report of the demo at ``<out>/report/index.html`` (None without Pillow)."""
    if not _importable("PIL"):
        log(f"      note: Pillow is not installed, no HTML report ({viz.INSTALL_HINT})")
        return None
    from torchattr.cli.report import write_report

    return write_report(out, out / "report", threshold=THRESHOLD)


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    config: DemoConfig,
    generator: torch.Generator,
    log: Log = print,
) -> None:
    """Adam on ``binary_cross_entropy_with_logits``, mini-batches shuffled by ``generator``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    targets = labels.float()
    model.train()
    for epoch in range(config.epochs):
        tick = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for batch in order.split(config.batch_size):
            logits = model(images[batch])[:, 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        log(
            f"      epoch {epoch + 1}/{config.epochs}: loss {total / len(images):.4f} "
            f"({time.perf_counter() - tick:.1f} s)"
        )


def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted labels ``[N]`` (1 where the lesion logit is positive), without gradients."""
    with torch.no_grad():
        logits = torch.cat([model(chunk)[:, 0] for chunk in images.split(batch_size)])
    return (logits > 0).long()


def choose_explained(predicted: Tensor, labels: Tensor, limit: int) -> tuple[Tensor, bool]:
    """Indices of up to ``limit`` true positives; all positives when there are no true positives.

    Returns the indices ``[K]`` and whether they are all true positives.
    """
    true_positives = torch.nonzero((predicted == 1) & (labels == 1))[:, 0]
    if len(true_positives) > 0:
        return true_positives[:limit], True
    return torch.nonzero(labels == 1)[:limit, 0], False


def attribution_maps(
    model: nn.Module, images: Tensor, config: DemoConfig, log: Log = print
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Every method's maps of the lesion logit, ``[K, H, W]`` each, and its time in seconds.

    Each map is what the :data:`METHODS` entry returns (``|A|`` maximised over the channels, or
    the CAM map), min-max normalised per image to [0, 1].
    """
    maps, seconds = {}, {}
    for name, method in METHODS.items():
        tick = time.perf_counter()
        maps[name] = normalize_map(method(model, images, config)).float()
        seconds[name] = time.perf_counter() - tick
        log(f"      {name}: {seconds[name]:.2f} s")
    return maps, seconds


def score_maps(
    model: nn.Module, images: Tensor, boxes: list[Tensor], maps: Tensor, config: DemoConfig
) -> dict[str, Tensor]:
    """Per image ``[K]``: every metric of :data:`METRICS`, plus the ROAD curves ``[K, P]``.

    ROAD draws come from one generator seeded the same way for every method, so all methods
    see the same tie-breaker and imputation noise.
    """
    generator = _generator(config, "road")
    road = {
        order: metrics.road(
            model,
            images,
            maps,
            fractions=config.road_fractions,
            order=order,
            score="softmax",
            generator=generator,
        )
        for order in ("morf", "lerf")
    }
    hits = metrics.pointing_game(maps, boxes, tolerance=config.pointing_tolerance)
    return {
        "proportional_energy": metrics.proportional_energy(maps, boxes),
        "saliency_focus": metrics.saliency_focus(maps, boxes),
        "pointing_game": hits.float(),
        "road": metrics.road_summary(road["morf"], road["lerf"], config.road_fractions).per_image,
        "road_morf": road["morf"],
        "road_lerf": road["lerf"],
    }


def write_outputs(
    config: DemoConfig,
    images: Tensor,
    boxes: list[Tensor],
    ids: list[str],
    maps: dict[str, Tensor],
    scores: dict[str, dict[str, Tensor]],
    reference: dict[str, Tensor],
    area: Tensor,
    accuracy: float,
    log: Log = print,
) -> dict[str, str]:
    """Write the maps, overlay grids, metrics and plot; return ``{output: path relative to out}``.

    Overlays are skipped without Pillow and the plot without matplotlib, each with a note.
    """
    out = config.out
    for name, method_maps in maps.items():
        for image_id, one_map in zip(ids, method_maps, strict=True):
            save_map(out / "maps" / name / f"{image_id}.npy", one_map)
    for image_id, image in zip(ids, images, strict=True):
        save_map(out / "images" / f"{image_id}.npy", image[0])
    outputs = {"maps": "maps/<method>/<image id>.npy", "images": "images/<image id>.npy"}

    record = metrics_record(ids, scores, reference, area, config)
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "metrics.md").write_text(metrics_markdown(record, accuracy, config))
    outputs.update({"metrics_json": "metrics.json", "metrics_md": "metrics.md"})

    if _importable("PIL"):
        for i, image_id in enumerate(ids):
            viz.save_png(
                out / "overlays" / f"{image_id}.png",
                overlay_grid(
                    images[i],
                    boxes[i],
                    {name: method_maps[i] for name, method_maps in maps.items()},
                    config.overlay_scale,
                ),
            )
        outputs["overlays"] = "overlays/<image id>.png"
    else:
        log(f"      note: Pillow is not installed, no overlays ({viz.INSTALL_HINT})")

    if _importable("matplotlib"):
        viz.save_png(out / "methods.png", plot_methods(record), dpi=100)
        outputs["plot"] = "methods.png"
    else:
        log(f"      note: matplotlib is not installed, no methods.png ({viz.INSTALL_HINT})")
    return outputs


def overlay_grid(image: Tensor, boxes: Tensor, maps: dict[str, Tensor], scale: int) -> np.ndarray:
    """The image with its boxes, then each map's overlay, 5 per row; labelled, ``uint8``.

    The image and the maps are enlarged ``scale`` times (nearest neighbour) first, so that the
    boxes are 1-pixel outlines at the enlarged size, drawn just outside the box (no map pixel
    is hidden). Overlays blend ``viridis`` 50/50 where the map is at least :data:`THRESHOLD`
    of its maximum. Labels are the methods' display names.
    """

    def enlarge(values: Tensor) -> Tensor:
        return values.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)

    big, big_boxes = enlarge(image), boxes * scale
    panels = [viz.draw_boxes(viz.to_rgb(big), big_boxes, outline="outside")]
    panels += [
        viz.overlay(
            big, enlarge(m), threshold=THRESHOLD, alpha=0.5, boxes=big_boxes, outline="outside"
        )
        for m in maps.values()
    ]
    labels = ["image", *(viz.display_name(name) for name in maps)]
    return viz.grid(panels, ncols=5, pad=4, labels=labels, label_height=18)


def metrics_record(
    ids: list[str],
    scores: dict[str, dict[str, Tensor]],
    reference: dict[str, Tensor],
    area: Tensor,
    config: DemoConfig,
) -> dict[str, Any]:
    """The JSON-ready metrics: per method and metric ``mean``, ``std`` and ``per_image`` values.

    ``std`` is the population standard deviation over the images. ``methods[m]["road_curves"]``
    holds the mean MoRF and LeRF scores per fraction; ``reference`` holds the random maps'
    scores and ``box_area_fraction`` what a uniform map's proportional energy would be.
    """

    def stats(values: Tensor) -> dict[str, Any]:
        values = values.double()
        return {
            "mean": values.mean().item(),
            "std": values.std(correction=0).item(),
            "per_image": values.tolist(),
        }

    def entry(per_image: dict[str, Tensor]) -> dict[str, Any]:
        record = {metric: stats(per_image[metric]) for metric in METRICS}
        record["road_curves"] = {
            "morf": per_image["road_morf"].double().mean(dim=0).tolist(),
            "lerf": per_image["road_lerf"].double().mean(dim=0).tolist(),
        }
        return record

    return {
        "images": ids,
        "metrics": describe_metrics(config),
        "road_fractions": list(config.road_fractions),
        "methods": {name: entry(per_image) for name, per_image in scores.items()},
        "reference": {REFERENCE: entry(reference)},
        "box_area_fraction": stats(area),
    }


def metrics_markdown(record: dict[str, Any], accuracy: float, config: DemoConfig) -> str:
    """``metrics.md``: the table of mean +- std per method, the reference rows and a legend."""
    count = len(record["images"])
    header = ["method", *METRICS.values()]
    lines = [
        "# torchattr demo: attribution methods on lesion phantoms",
        "",
        f"PhantomNet (held-out accuracy {accuracy:.3f}), lesion logit of {count} held-out "
        f"images, seed {config.seed}. Mean ± std over the images; higher is better everywhere.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    rows = [
        *record["methods"].items(),
        (f"{REFERENCE} (reference)", record["reference"][REFERENCE]),
    ]
    for name, entry in rows:
        cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    area = record["box_area_fraction"]
    blank = " | ".join("" for _ in list(METRICS)[1:])
    lines.append(f"| uniform map (box area) | {area['mean']:.4f} ± {area['std']:.4f} | {blank} |")
    lines += [
        "",
        *(f"- **{METRICS[m]}**: {text}" for m, text in record["metrics"].items()),
    ]
    lines += [
        "",
        "Maps: `maps/<method>/<image id>.npy`; overlays: `overlays/<image id>.png`; per image "
        "values: `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def plot_methods(record: dict[str, Any]) -> Any:
    """A matplotlib ``Figure``: one panel per metric, a bar per method (mean +- std).

    The random reference is a dashed red line (and the box area fraction, what a uniform map
    scores, a dotted grey one for proportional energy); pointing-game bars (hit rates) have no
    error bar. One legend below the panels. Needs matplotlib.
    """
    from matplotlib.figure import Figure

    names = list(record["methods"])
    positions = np.arange(len(names))
    figure = Figure(figsize=(3.2 * len(METRICS), 0.35 * len(names) + 1.8), layout="constrained")
    for i, metric in enumerate(METRICS):
        axes = figure.add_subplot(1, len(METRICS), i + 1)
        means = [record["methods"][n][metric]["mean"] for n in names]
        stds = [record["methods"][n][metric]["std"] for n in names]
        errors = None if metric == "pointing_game" else stds
        axes.barh(positions, means, xerr=errors, color="tab:blue", ecolor="0.4", capsize=2)
        reference = record["reference"][REFERENCE][metric]["mean"]
        axes.axvline(reference, color="tab:red", linestyle="--", label=f"{REFERENCE} maps")
        if metric == "proportional_energy":
            area = record["box_area_fraction"]["mean"]
            axes.axvline(area, color="0.3", linestyle=":", label="uniform map (box area)")
        axes.set_yticks(positions, names if i == 0 else [])
        axes.invert_yaxis()
        axes.set_title(_panel_title(metric), fontsize=10)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    count = len(record["images"])
    figure.suptitle(f"{count} phantoms, mean ± std over the images", fontsize=10)
    return figure


def _panel_title(metric: str) -> str:
    """The metric's label, its direction and caveat (:data:`torchattr.metrics.DIRECTIONS`)."""
    way = metrics.direction(metric)
    caveat = f"; {way.caveat}" if way.caveat else ""
    return f"{METRICS[metric]}\n({way.word} is better{caveat})"


def format_table(
    scores: dict[str, dict[str, Tensor]],
    reference: dict[str, Tensor],
    area: Tensor,
    seconds: dict[str, float],
) -> str:
    """Mean of every metric per method, the references and each method's time."""
    columns = [
        ("energy", "proportional_energy"),
        ("focus", "saliency_focus"),
        ("pointing", "pointing_game"),
        ("ROAD", "road"),
    ]
    lines = [
        "mean over the explained images (higher is better)",
        f"{'method':<24}" + "".join(f"{c:>10}" for c, _ in columns) + f"{'time s':>9}",
    ]
    for name, values in scores.items():
        cells = "".join(f"{values[m].mean().item():>10.3f}" for _, m in columns)
        lines.append(f"{name:<24}{cells}{seconds[name]:>9.2f}")
    cells = "".join(f"{reference[m].mean().item():>10.3f}" for _, m in columns)
    lines.append(f"{REFERENCE + ' (reference)':<24}{cells}")
    lines.append(f"{'uniform map (box area)':<24}{area.mean().item():>10.4f}")
    return "\n".join(lines)


def format_outputs(out: Path, outputs: dict[str, str], images: int, methods: int) -> str:
    """Where everything went, one line per output."""
    what = {
        "maps": f"{images * methods} maps ({images} images x {methods} methods), float32 [H, W] "
        "in [0, 1]",
        "images": f"{images} explained images, float32 [H, W] in [0, 1]",
        "overlays": f"{images} grids: the image, then every method's overlay (viridis, shown "
        f"where the map is >= {100 * THRESHOLD:g} % of its maximum); lesion boxes outlined in "
        "green just outside the box",
        "report": "HTML report: provenance, table, distributions, gallery (open in a browser)",
        "metrics_md": "metrics table (mean ± std per method)",
        "metrics_json": "metrics per method: mean, std and per image values",
        "plot": "bar chart comparing the methods",
        "manifest": "settings, accuracy, explained images and their boxes",
    }
    listed = {**outputs, "manifest": "manifest.json"}
    lines = [f"outputs in {out}/"]
    lines += [f"  {path:<30} {what[key]}" for key, path in listed.items()]
    return "\n".join(lines)


def build_manifest(
    config: DemoConfig,
    accuracy: float,
    ids: list[str],
    boxes: list[Tensor],
    area: Tensor,
    scores: dict[str, dict[str, Tensor]],
    all_true_positives: bool,
    outputs: dict[str, str],
) -> dict[str, Any]:
    """JSON-ready record of the run: settings, accuracy, outputs, images and boxes, means."""
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
    }
    images = [
        {"id": image_id, "boxes_xyxy": box.tolist(), "area_fraction": area[i].item()}
        for i, (image_id, box) in enumerate(zip(ids, boxes, strict=True))
    ]
    return {
        "created": _runs.now(),
        "versions": {
            "torchattr": ta.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "target": TARGET,
        "settings": settings,
        "held_out_accuracy": accuracy,
        "all_true_positives": all_true_positives,
        "methods": list(scores),
        "cam_layer": CAM_LAYER,
        "outputs": outputs,
        "mean": {
            name: {metric: values[metric].mean().item() for metric in METRICS}
            for name, values in scores.items()
        },
        "images": images,
    }


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _seed(config: DemoConfig, stream: str) -> int:
    return derive_seed(config.seed, stream)


def _generator(config: DemoConfig, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(config, stream))

"""``torchattr demo``: train a small CNN on lesion phantoms, explain it, score the maps.

Steps: generate seeded phantoms (:func:`torchattr.data.make_phantoms`), train
:class:`torchattr.data.PhantomNet` on the CPU (Adam, binary cross-entropy), report the held-out
accuracy, then explain the lesion logit of held-out true positives with saliency, SmoothGrad and
Integrated Gradients. Every map is reduced to ``[H, W]`` (absolute value, max over channels),
min-max normalised to [0, 1] and saved as float32 ``<out>/<method>/<image id>.npy``; a
``manifest.json`` records the settings, the boxes and the scores. The table compares each
method's mean proportional energy inside the lesion box with the box's area fraction, which is
what a uniform map would score.

Everything is seeded: the same options give the same numbers. Each random stream (training and
held-out data, model initialisation, shuffling, SmoothGrad noise) has its own seed derived from
``--seed`` (:func:`torchattr.data.derive_seed`). The caller's global random state is left as it
was (the model is initialised inside ``torch.random.fork_rng``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr.cli import demo_ehr
from torchattr.data import PhantomNet, derive_seed, make_phantoms
from torchattr.io import normalize_map, save_map
from torchattr.metrics import boxes_to_mask, proportional_energy

Log = Callable[[str], None]
METHODS = ("saliency", "smoothgrad", "integrated_gradients")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (defaults: the full demo, well under a minute on 2 CPU cores)."""

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


QUICK = {
    "epochs": 1,
    "n_train": 96,
    "n_test": 32,
    "n_explain": 4,
    "smoothgrad_samples": 4,
    "ig_steps": 4,
}


def add_parser(subparsers: Any) -> None:
    """Register the ``demo`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "demo",
        help="train a small CNN on lesion phantoms and score saliency maps against the boxes",
        description="Train a small CNN on lesion phantoms, explain true positives with saliency, "
        "SmoothGrad and Integrated Gradients, save the maps and score them against the boxes.",
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
            type=_int_at_least(minimum),
            default=None,
            help=f"{what} (default: {default}, {QUICK[name.replace('-', '_')]} with --quick)",
        )
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings for a smoke test (a few seconds)"
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
    """Run every step of the demo; print progress and the table; return the manifest dict."""
    start = time.perf_counter()
    log(
        f"[1/5] generating {config.n_train} training and {config.n_test} held-out phantoms "
        f"({config.size}x{config.size}, seed {config.seed})"
    )
    train_x, train_y, _ = make_phantoms(config.n_train, config.size, seed=_seed(config, "train"))
    test_x, test_y, test_boxes = make_phantoms(
        config.n_test, config.size, seed=_seed(config, "test")
    )

    log(f"[2/5] training PhantomNet for {config.epochs} epoch(s) on the CPU")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config, "model"))
        model = PhantomNet()
    shuffle = torch.Generator().manual_seed(_seed(config, "shuffle"))
    train(model, train_x, train_y, config, shuffle, log)
    model.eval()

    predicted = predict(model, test_x)
    accuracy = (predicted == test_y).float().mean().item()
    log(
        f"[3/5] held-out accuracy: {accuracy:.3f} ({int((predicted == test_y).sum())}/"
        f"{config.n_test})"
    )

    chosen, all_true = choose_explained(predicted, test_y, config.n_explain)
    if len(chosen) == 0:
        raise ValueError(f"the {config.n_test} held-out images hold no lesion: raise n_test")
    what = "true positives" if all_true else "positives (no true positives: model undertrained)"
    log(f"[4/5] explaining the lesion logit of {len(chosen)} held-out {what}")
    images = test_x[chosen]
    boxes = [test_boxes[i] for i in chosen.tolist()]
    maps = attribution_maps(model, images, config, log)

    ids = [f"phantom_{i:05d}" for i in chosen.tolist()]
    for method, method_maps in maps.items():
        for image_id, one_map in zip(ids, method_maps, strict=True):
            save_map(config.out / method / f"{image_id}.npy", one_map)
    mask = boxes_to_mask(boxes, config.size, config.size)
    area = mask.float().mean(dim=(1, 2))
    energy = {method: proportional_energy(m, mask) for method, m in maps.items()}
    manifest = build_manifest(config, accuracy, ids, boxes, area, energy, all_true)
    (config.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(
        f"[5/5] wrote {len(ids) * len(maps)} maps ({len(ids)} images x {len(maps)} methods) "
        f"and manifest.json to {config.out}"
    )

    log("")
    log(format_table(energy, area))
    log(f"\ndone in {time.perf_counter() - start:.1f} s")
    return manifest


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
) -> dict[str, Tensor]:
    """Saliency, SmoothGrad and IG maps of the lesion logit, ``[K, H, W]`` each, in [0, 1].

    Each map is ``|A|`` maximised over the channels, then min-max normalised per image.
    """
    noise = torch.Generator().manual_seed(_seed(config, "smoothgrad"))
    compute = {  # each gives |A| maximised over the channels, [K, H, W]
        "saliency": lambda: ta.saliency(model, images),
        "smoothgrad": lambda: ta.reduce_channels(
            ta.smoothgrad(
                model,
                images,
                samples=config.smoothgrad_samples,
                noise=config.smoothgrad_noise,
                generator=noise,
            )
        ),
        "integrated_gradients": lambda: ta.reduce_channels(
            ta.integrated_gradients(model, images, steps=config.ig_steps)
        ),
    }
    maps = {}
    for method in METHODS:
        tick = time.perf_counter()
        maps[method] = normalize_map(compute[method]())
        log(f"      {method}: {time.perf_counter() - tick:.2f} s")
    return maps


def format_table(energy: dict[str, Tensor], area: Tensor) -> str:
    """Mean / median proportional energy per method and the uniform-map reference."""
    reference = area.mean().item()
    lines = [
        "proportional energy inside the lesion box (higher is better)",
        f"{'method':<24}{'mean':>8}{'median':>9}{'x uniform':>11}",
    ]
    for method, values in energy.items():
        mean = values.mean().item()
        ratio = mean / reference if reference > 0 else float("nan")
        lines.append(f"{method:<24}{mean:>8.3f}{values.median().item():>9.3f}{ratio:>11.1f}")
    lines.append(
        f"{'uniform map (box area)':<24}{reference:>8.4f}{area.median().item():>9.4f}{1.0:>11.1f}"
    )
    return "\n".join(lines)


def build_manifest(
    config: DemoConfig,
    accuracy: float,
    ids: list[str],
    boxes: list[Tensor],
    area: Tensor,
    energy: dict[str, Tensor],
    all_true_positives: bool,
) -> dict[str, Any]:
    """JSON-ready record of the run: settings, accuracy, and per image its box and scores."""
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
    }
    images = [
        {
            "id": image_id,
            "boxes_xyxy": box.tolist(),
            "area_fraction": area[i].item(),
            "proportional_energy": {m: values[i].item() for m, values in energy.items()},
        }
        for i, (image_id, box) in enumerate(zip(ids, boxes, strict=True))
    ]
    return {
        "settings": settings,
        "held_out_accuracy": accuracy,
        "all_true_positives": all_true_positives,
        "methods": list(energy),
        "mean_proportional_energy": {m: v.mean().item() for m, v in energy.items()},
        "mean_area_fraction": area.mean().item(),
        "images": images,
    }


def _seed(config: DemoConfig, stream: str) -> int:
    return derive_seed(config.seed, stream)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    return parse

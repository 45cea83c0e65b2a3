"""Model-parameter randomisation side by side: torchattr against Quantus' MPRT.

Both contenders run the same test -- the same model, images, targets and explanation function
(torchattr's gradient saliency, ``|grad|`` max over channels, for both), every layer with
parameters randomised from the output down, cascading or independent, Spearman's rank
correlation of the absolute explanations per sample and layer -- and differ in the harness:

* ``torchattr``: :func:`torchattr.metrics.model_randomisation` (one deep copy, re-initialised
  in place, similarities as batched torch ops on the explanations' device);
* ``quantus``: ``quantus.MPRT`` (numpy round trips, per-batch ``scipy.stats.spearmanr`` of the
  ``[2B, 2B]`` correlation matrix, the original explanation computed twice).

The weights drawn differ (Quantus seeds every layer with ``seed + 1``, torchattr draws a seed
per layer from ``generator``), so the similarities are not equal; below the table the script
checks that both randomise the same layers in the same order, that the two Spearman
implementations agree on the same pairs of explanations, and prints the mean similarity of the
top layers for both.

    PYTHONPATH=.:/path/to/quantus/site python -m benchmarks.bench_sanity --batch 8 --size 64

Quantus is optional (not a dependency): without it only torchattr is timed. Quantus 0.6 imports
zennit when it is installed, which needs torchvision; the script hides zennit from Quantus.
Options: ``--device``, ``--model resnet18|small``, ``--batch`` (8), ``--size`` (64), ``--order``
(cascading), ``--repeats`` (1), ``--threads``, ``--seed``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import torchattr
from benchmarks._common import parse, parser
from benchmarks.models import build
from torchattr.metrics import model_randomisation
from torchattr.metrics.sanity import spearman


def explain(model: torch.nn.Module, inputs: Tensor, target: Any) -> Tensor:
    """The explanation both contenders test: gradient saliency ``[B, H, W]``."""
    return torchattr.saliency(model, inputs, target)


def quantus_explain(model: torch.nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> Any:
    """:func:`explain` behind Quantus' numpy interface."""
    device = next(model.parameters()).device
    x = torch.as_tensor(inputs, device=device)
    t = torch.as_tensor(targets, device=device).long()
    return explain(model, x, t).cpu().numpy()


def import_quantus() -> Any:
    """``quantus``, or None when it is not installed (zennit hidden from its import)."""
    if importlib.util.find_spec("quantus") is None:
        return None
    find_spec = importlib.util.find_spec

    def hide_zennit(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name.split(".")[0] == "zennit" else find_spec(name, *args, **kwargs)

    importlib.util.find_spec = hide_zennit
    try:
        import quantus
    finally:
        importlib.util.find_spec = find_spec
    return quantus


def run_torchattr(model, images, target, order, seed):
    return model_randomisation(
        explain,
        model,
        images,
        target,
        order=order,
        similarity="spearman",
        generator=torch.Generator().manual_seed(seed),
    )


def run_quantus(quantus, model, images, target, order, seed):
    metric = quantus.MPRT(
        layer_order="top_down" if order == "cascading" else "independent",
        seed=seed,
        disable_warnings=True,
        display_progressbar=False,
    )
    return metric(
        model=model,
        x_batch=images.cpu().numpy(),
        y_batch=target.cpu().numpy(),
        a_batch=None,
        explain_func=quantus_explain,
        device=str(images.device),
        batch_size=images.shape[0],
    )


def timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    model = build(args.model, device)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    with torch.no_grad():
        target = model(images).argmax(1)
    quantus = import_quantus()
    if quantus is None:
        print("quantus is not installed: timing torchattr only", file=sys.stderr)
    # warm-up of both on one image (first calls: allocator, kernels, lazy imports)
    run_torchattr(model, images[:1], target[:1], args.order, args.seed)
    if quantus is not None:
        run_quantus(quantus, model, images[:1], target[:1], args.order, args.seed)
    ours_t, theirs_t, ours, theirs = [], [], None, None
    for r in range(args.repeats):
        contenders = ["torchattr", "quantus"] if r % 2 == 0 else ["quantus", "torchattr"]
        for name in contenders:
            if name == "torchattr":
                t, ours = timed(lambda: run_torchattr(model, images, target, args.order, args.seed))
                ours_t.append(t)
            elif quantus is not None:
                t, theirs = timed(
                    lambda: run_quantus(quantus, model, images, target, args.order, args.seed)
                )
                theirs_t.append(t)
    layers = len(ours.layers)
    lines = [
        f"model-parameter randomisation ({args.order}), {layers} layers, batch {args.batch} of "
        f"3x{args.size}x{args.size}, {args.model} on {args.device}, gradient saliency, Spearman",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
        + (f", quantus {quantus.__version__}" if quantus is not None else ""),
        "",
        "| contender | total s | ms / explanation | speed-up vs Quantus |",
        "|---|---|---|---|",
    ]
    ours_s = float(np.median(ours_t))
    theirs_s = float(np.median(theirs_t)) if theirs_t else None
    explanations = (layers + 1) * args.batch
    for name, s in (("torchattr", ours_s), ("Quantus MPRT", theirs_s)):
        if s is None:
            continue
        up = f"{theirs_s / s:.2f}x" if theirs_s else "-"
        lines.append(f"| {name} | {s:.2f} | {1000 * s / explanations:.1f} | {up} |")
    if theirs is not None:
        names = [k for k in theirs if k != "original"]
        # Quantus runs independent randomisation bottom-up: the same layers, in reverse
        same = names == list(ours.layers if args.order == "cascading" else ours.layers[::-1])
        # the two Spearman implementations on the same pairs: the explanations of the target
        # and of the next class, absolute values as MPRT compares them
        other = explain(model, images, (target + 1) % 1000 if args.model == "resnet18" else 0)
        pair = (ours.original.flatten(1).abs(), other.flatten(1).abs())
        q = quantus.functions.similarity_func.correlation_spearman(
            pair[0].double().cpu().numpy(), pair[1].double().cpu().numpy(), batched=True
        )
        diff = float(np.abs(spearman(*pair).cpu().numpy() - q).max())
        top = min(3, layers)
        ours_mean = ours.similarity["spearman"][:top].mean(1).tolist()
        theirs_mean = [float(np.mean(theirs[k])) for k in ours.layers[:top] if k in theirs]
        lines += [
            "",
            f"same layers in the same order: {same} ({len(names)} vs {layers})",
            f"max |Spearman difference| on the same pairs: {diff:.1e}",
            "mean similarity of the top layers (different random weights): torchattr "
            + ", ".join(f"{v:.3f}" for v in ours_mean)
            + "; Quantus "
            + ", ".join(f"{v:.3f}" for v in theirs_mean),
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser(
        None,
        __doc__.split("\n\n")[0],
        batch=8,
        size=64,
        repeats=1,
        warmup=None,
        device="auto",
        markdown=False,
    )
    p.add_argument("--model", default="resnet18", choices=("resnet18", "small"))
    p.add_argument("--order", default="cascading", choices=("cascading", "independent"))
    return parse(p, argv)


if __name__ == "__main__":
    print(run(parse_args()))

"""ROAD side by side: torchattr's batched solver against a per-image CPU sparse solve.

Both contenders run the same ROAD evaluation -- the same model, images, maps, fractions and
removal masks (:func:`torchattr.metrics.road_masks`), MoRF and LeRF -- and differ only in how
they solve the noisy linear imputation systems:

* ``torchattr``: :func:`torchattr.metrics.road`, which imputes ``chunk_size`` copies at a time
  on the inputs' device (multigrid-preconditioned conjugate gradients on all images and
  channels together) and scores them with the model;
* ``scipy``: the reference implementation's scheme, one ``scipy.sparse.linalg.spsolve`` per
  image and fraction on the CPU (the system assembled with vectorised numpy, images copied to the
  host and back), the imputed copies of each fraction then scored with the same model in
  batches of B.

The table gives the median over ``--repeats`` interleaved rounds of each contender's wall time
for the whole evaluation (``total``: both orders, all fractions, B images), split into the
imputation and the model; for torchattr the imputations are timed again on their own (the same
calls :func:`~torchattr.metrics.road` makes) and ``model = total - impute``. ``ms / copy`` is the
total over the ``2 P B`` imputed copies. Below the table: the largest difference between the
two contenders' imputed images and between their scores, computed without noise on the first
``--check`` images, so that the comparison is known to be like for like.

    PYTHONPATH=. python -m benchmarks.bench_road --batch 4 --size 64 --threads 1   # a small CPU
    PYTHONPATH=. python -m benchmarks.bench_road --device cuda                      # 32 x 224

Options: ``--device``, ``--model resnet18|small``, ``--batch`` (32), ``--size`` (224),
``--fractions`` (0.1 0.2 0.3 0.4 0.5 0.7 0.9), ``--maps smooth|saliency`` (blob-like random
maps, the hard case, or gradient saliency of the model), ``--noise`` (0.01), ``--contenders``,
``--skip-scipy``, ``--repeats`` (1), ``--warmup`` (1), ``--check`` (2), ``--threads``, ``--seed``.

scipy is only needed for the ``scipy`` contender (``--skip-scipy`` runs without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import torchattr
from benchmarks._common import parse, parser
from benchmarks.models import build
from torchattr.metrics import gaussian_blur, noisy_linear_impute, road, road_masks
from torchattr.metrics.perturbation import FRACTIONS, ORDERS

NEIGHBOURS = [
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
]


# --------------------------------------------------------------------------------------------
# The baseline: one sparse direct solve per image on the CPU
# --------------------------------------------------------------------------------------------


def spsolve_impute(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Linear imputation of one image ``[C, H, W]`` (float64) at ``hole [H, W]`` by spsolve.

    The system of the reference implementation: for every hole pixel i,
    ``sum_j w_ij x_i - sum_{j in hole} w_ij x_j = sum_{j kept} w_ij x_j`` over the in-image
    neighbours j, assembled in COO form with numpy and solved for all channels at once.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    flat = image.reshape(channels, -1)
    unknown = np.flatnonzero(hole.reshape(-1))
    if unknown.size == 0:
        return image.copy()
    variable = np.full(height * width, -1, dtype=np.int64)
    variable[unknown] = np.arange(unknown.size)
    ys, xs = np.divmod(unknown, width)
    rows, cols, vals = [], [], []
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    for (dy, dx), w in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        diagonal[inside] += w
        eq = np.flatnonzero(inside)
        neighbour = ny[inside] * width + nx[inside]
        masked = variable[neighbour] >= 0
        rows.append(eq[masked])
        cols.append(variable[neighbour[masked]])
        vals.append(np.full(int(masked.sum()), -w))
        np.add.at(rhs, eq[~masked], w * flat[:, neighbour[~masked]].T)
    index = np.arange(unknown.size)
    matrix = sp.csc_matrix(
        (
            np.concatenate([diagonal, *vals]),
            (np.concatenate([index, *rows]), np.concatenate([index, *cols])),
        ),
        shape=(unknown.size, unknown.size),
    )
    solution = spsolve(matrix, rhs).reshape(unknown.size, channels)
    out = flat.copy()
    out[:, unknown] = solution.T
    return out.reshape(channels, height, width)


def spsolve_road(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor,
    target: Tensor,
    noise: float,
    rng: np.random.Generator,
    clock: dict[str, float],
) -> Tensor:
    """ROAD scores ``[B, P]`` with per-image CPU solves; ``masks [B, P, H, W]``."""
    batch, fractions = masks.shape[:2]
    scores = torch.zeros(batch, fractions)
    for j in range(fractions):
        start = time.perf_counter()
        host = images.detach().cpu().double().numpy()
        holes = masks[:, j].cpu().numpy()
        filled = np.stack([spsolve_impute(host[b], holes[b]) for b in range(batch)])
        filled += noise * rng.standard_normal(filled.shape) * holes[:, None]
        rows = torch.from_numpy(filled).to(device=images.device, dtype=images.dtype)
        middle = _sync(images.device)
        with torch.no_grad():
            out = model(rows)
        scores[:, j] = out.gather(1, target[:, None])[:, 0].cpu()
        end = _sync(images.device)
        clock["impute"] += middle - start
        clock["model"] += end - middle
    return scores


# --------------------------------------------------------------------------------------------
# Running both
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def smooth_maps(batch: int, size: int, device: torch.device, seed: int) -> Tensor:
    """Blob-like saliency maps: uniform noise averaged over a window of about size / 7 pixels.

    Their top and bottom fractions are large connected regions, the hardest imputation systems
    (gradient maps, speckled, give small scattered holes that every solver handles quickly).
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 1, size, size, generator=g)
    k = max(3, size // 7) | 1
    return torch.nn.functional.avg_pool2d(noise, k, 1, k // 2, count_include_pad=False)[:, 0].to(
        device
    )


def torchattr_road(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    fractions: tuple[float, ...],
    noise: float,
    seed: int,
) -> dict[str, float]:
    """One torchattr ROAD run (MoRF and LeRF): total time, and the imputations timed alone."""
    device = images.device
    start = _sync(device)
    for order in ORDERS:
        generator = torch.Generator(device=device).manual_seed(seed)
        road(
            model,
            images,
            maps,
            target,
            fractions=fractions,
            order=order,
            sigma=noise,
            generator=generator,
        )
    total = _sync(device) - start
    # the split: the same imputations (B copies at a time, as road runs them) without the model
    start = _sync(device)
    for order in ORDERS:
        masks = road_masks(maps, fractions, order, torch.Generator(device=device).manual_seed(seed))
        for j in range(len(fractions)):
            noisy_linear_impute(images, masks[:, j], sigma=noise)
    impute = _sync(device) - start
    return {"total": total, "impute": impute, "model": max(total - impute, 0.0)}


def scipy_road(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    fractions: tuple[float, ...],
    noise: float,
    seed: int,
) -> dict[str, float]:
    """One baseline ROAD run (MoRF and LeRF) with the same masks."""
    device = images.device
    clock = {"impute": 0.0, "model": 0.0}
    rng = np.random.default_rng(seed)
    start = _sync(device)
    for order in ORDERS:
        masks = road_masks(maps, fractions, order, torch.Generator(device=device).manual_seed(seed))
        spsolve_road(model, images, masks, target, noise, rng, clock)
    return {"total": _sync(device) - start, **clock}


CONTENDERS = {"torchattr": torchattr_road, "scipy": scipy_road}
NAMES = {"torchattr": "torchattr", "scipy": "scipy spsolve"}


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Time the contenders in interleaved rounds; return median times and the agreement."""
    device = torch.device(args.device)
    model = build(args.model, device)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    images = gaussian_blur(images, 5, 1.0)  # some spatial structure
    if args.maps == "smooth":
        maps = smooth_maps(args.batch, args.size, device, args.seed + 1)
    else:
        maps = torchattr.saliency(model, images)
    with torch.no_grad():
        target = model(images).argmax(1)
    fractions = tuple(args.fractions)
    contenders = list(args.contenders)
    if "scipy" in contenders and importlib.util.find_spec("scipy") is None:
        print("scipy is not installed: skipping the scipy contender", file=sys.stderr)
        contenders.remove("scipy")
    for _ in range(args.warmup):  # first calls (allocator, kernels) on a small problem
        for name in contenders:
            CONTENDERS[name](model, images[:1], maps[:1], target[:1], fractions[:1], 0.0, 0)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for round_ in range(args.repeats):
        shift = round_ % max(len(contenders), 1)
        for name in contenders[shift:] + contenders[:shift]:
            times[name].append(
                CONTENDERS[name](model, images, maps, target, fractions, args.noise, args.seed)
            )
    results = []
    for name in contenders:
        runs = sorted(times[name], key=lambda t: t["total"])
        results.append({"name": NAMES[name], **runs[len(runs) // 2]})
    agreement = check(model, images, maps, target, fractions, args) if "scipy" in contenders else {}
    return results, agreement


def check(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    fractions: tuple[float, ...],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Noise-free agreement of the two on the first ``--check`` images (MoRF and LeRF)."""
    n = min(args.check, images.shape[0])
    if n == 0:
        return {}
    diff_image = diff_score = 0.0
    for order in ("morf", "lerf"):
        masks = road_masks(maps[:n], fractions, order, torch.Generator().manual_seed(0))
        ours = road(
            model,
            images[:n],
            maps[:n],
            target[:n],
            fractions=fractions,
            order=order,
            sigma=0.0,
            generator=torch.Generator().manual_seed(0),
        )
        theirs = spsolve_road(
            model,
            images[:n],
            masks,
            target[:n],
            0.0,
            np.random.default_rng(0),
            {"impute": 0.0, "model": 0.0},
        )
        diff_score = max(diff_score, float((ours.cpu() - theirs).abs().max()))
        for j in range(len(fractions)):
            a = noisy_linear_impute(images[:n], masks[:, j], sigma=0.0).double().cpu().numpy()
            b = np.stack(
                [
                    spsolve_impute(images[i].double().cpu().numpy(), masks[i, j].cpu().numpy())
                    for i in range(n)
                ]
            )
            diff_image = max(diff_image, float(np.abs(a - b).max()))
    return {"image": diff_image, "score": diff_score}


def report(
    results: list[dict[str, Any]], agreement: dict[str, float], args: argparse.Namespace
) -> str:
    copies = 2 * len(args.fractions) * args.batch
    size = f"3x{args.size}x{args.size}"
    lines = [
        f"ROAD, {len(args.fractions)} fractions x (MoRF + LeRF), batch {args.batch} of {size}, "
        f"{args.model} on {args.device} ({copies} imputed copies), maps: {args.maps}",
        f"torch {torch.__version__}, torchattr {torchattr.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}",
        "",
        "| contender | impute s | model s | total s | ms / copy | speed-up vs scipy |",
        "|---|---|---|---|---|---|",
    ]
    baseline = next((r["total"] for r in results if r["name"] == NAMES["scipy"]), None)
    for r in results:
        speedup = f"{baseline / r['total']:.2f}x" if baseline else "-"
        lines.append(
            f"| {r['name']} | {r['impute']:.2f} | {r['model']:.2f} | {r['total']:.2f} | "
            f"{1000 * r['total'] / copies:.1f} | {speedup} |"
        )
    if agreement:
        lines += [
            "",
            f"noise-free agreement on {min(args.check, args.batch)} images: "
            f"max |imputed difference| {agreement['image']:.1e}, "
            f"max |score difference| {agreement['score']:.1e}",
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser(
        None, __doc__.split("\n\n")[0], batch=32, size=224, repeats=1, device="auto", markdown=False
    )
    p.add_argument("--model", default="resnet18", choices=("resnet18", "small"))
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--maps", default="smooth", choices=("smooth", "saliency"))
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument(
        "--contenders", nargs="+", default=["torchattr", "scipy"], choices=("torchattr", "scipy")
    )
    p.add_argument("--skip-scipy", action="store_true", help="time torchattr only")
    p.add_argument("--check", type=int, default=2, help="images compared without noise (0: none)")
    args = parse(p, argv)
    if args.skip_scipy:
        args.contenders = [c for c in args.contenders if c != "scipy"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results, agreement = run(args)
    print(report(results, agreement, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

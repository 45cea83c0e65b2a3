"""Error-controlled IG: model rows and time to reach a completeness tolerance, vs Captum.

For every sample b of a batch the goal is ``|delta_b| <= tolerance * |s(x_b) - s(x'_b)|`` with
``delta_b = sum(attributions_b) - (s(x_b) - s(x'_b))`` (default tolerance 1 %).

* ``torchattr``: one call ``ta.integrated_gradients(model, x, t, steps="auto",
  tolerance=tol, return_delta=True)``: nested Fejer rules refined per sample
  (``torchattr.integrated.nested_rule``), only unconverged samples get new points.
* ``captum``: ``IntegratedGradients`` (``LayerIntegratedGradients`` through the embedding for the
  transformer) with ``method="gausslegendre"``; ``n_steps`` is doubled from 1 until every sample
  meets the tolerance (``return_convergence_delta=True``). Its cost is counted at that smallest
  ``n_steps`` only, as if the user had guessed it right (the search itself is reported apart).

Columns: ``path rows`` (path points through forward + backward: ``sum_b points_b`` for
torchattr, ``n_steps * B`` for Captum), ``model rows`` (every row the model's forward saw,
counted by a forward hook: path rows plus the forward-only end-point rows), ``ms`` (median wall
time of one call, interleaved with the other contender), the ratios torchattr / Captum, the
largest per-sample relative error reached, and the points per sample (min / mean / max).

``PYTHONPATH=. python -m benchmarks.bench_ig_auto --threads 1`` (~5 min on 2 busy CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import torchattr as ta
from benchmarks.models import build, token_batch, unk_baseline
from benchmarks.timing import device_name, time_interleaved


class RowCounter:
    """Counts the rows (leading size of the first input) of every forward of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.rows += args[0].shape[0]

    def reset(self) -> None:
        self.rows = 0

    def close(self) -> None:
        self.handle.remove()


def workload(name: str, batch: int, size: int, seed: int) -> dict[str, Any]:
    """Model, inputs, baseline, targets and the keyword arguments of both libraries."""
    if name == "resnet18":
        model = build("resnet18", seed=seed)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
        baseline: Tensor = torch.zeros_like(x)
        ours: dict[str, Any] = {"baseline": baseline}
    elif name == "transformer":
        model = build("transformer", seed=seed)
        x = token_batch(batch, size, seed=seed)
        baseline = unk_baseline(x)
        ours = {"baseline": baseline, "layer": model.embedding}
    else:
        raise ValueError(f"unknown model {name!r}: expected resnet18 or transformer")
    with torch.no_grad():
        t = model(x).argmax(1)
    return {"name": name, "model": model, "x": x, "baseline": baseline, "t": t, "ours": ours}


def captum_call(work: dict[str, Any], steps: int) -> Callable[[], tuple[Tensor, Tensor]]:
    """Captum's IG (or layer IG) at ``steps`` Gauss-Legendre steps, with its delta."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    model = work["model"]
    if work["name"] == "transformer":
        explainer: Any = LayerIntegratedGradients(model, model.embedding)
    else:
        explainer = IntegratedGradients(model)

    def run() -> tuple[Tensor, Tensor]:
        return explainer.attribute(
            work["x"],
            baselines=work["baseline"],
            target=work["t"],
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=None,
            return_convergence_delta=True,
        )

    return run


def score_change(work: dict[str, Any]) -> Tensor:
    """``s(x) - s(x')`` per sample, for the relative errors of Captum's deltas."""
    model, t = work["model"], work["t"][:, None]
    with torch.no_grad():
        return model(work["x"]).gather(1, t)[:, 0] - model(work["baseline"]).gather(1, t)[:, 0]


def captum_search(work: dict[str, Any], tolerance: float, limit: int) -> tuple[int, float, int]:
    """Smallest power-of-two ``n_steps`` meeting the tolerance for every sample (or ``limit``);
    (n_steps, largest relative error there, path rows spent by the whole search)."""
    change = score_change(work).abs().double()
    steps, spent = 1, 0
    while True:
        _, delta = captum_call(work, steps)()
        spent += steps * len(change)
        worst = (delta.detach().abs().double() / change).max().item()
        if worst <= tolerance or steps >= limit:
            return steps, worst, spent
        steps *= 2


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    work = workload(name, args.batch, args.size, args.seed)
    model = work["model"]
    ours = work["ours"]

    def torchattr_call() -> tuple[Any, Any]:
        return ta.integrated_gradients(
            model,
            work["x"],
            work["t"],
            steps="auto",
            tolerance=args.tolerance,
            max_steps=args.max_steps,
            chunk_size=None,
            return_delta=True,
            **ours,
        )

    steps, captum_error, search_rows = captum_search(work, args.tolerance, args.max_steps)
    counter = RowCounter(model)
    _, report = torchattr_call()
    ta_rows = counter.rows
    counter.reset()
    captum_fn = captum_call(work, steps)
    captum_fn()
    captum_rows = counter.rows
    counter.close()
    times = time_interleaved(
        {"torchattr": torchattr_call, "captum": captum_fn},
        torch.device("cpu"),
        repeats=args.repeats,
        warmup=0,
    )
    points = report.points.double()
    return {
        "model": name,
        "ta_path": int(report.points.sum()),
        "ta_rows": ta_rows,
        "ta_ms": 1e3 * statistics.median(times["torchattr"]),
        "ta_error": report.error.max().item(),
        "ta_converged": bool(report.converged.all()),
        "points": (points.min().item(), points.mean().item(), points.max().item()),
        "captum_steps": steps,
        "captum_path": steps * args.batch,
        "captum_rows": captum_rows,
        "captum_ms": 1e3 * statistics.median(times["captum"]),
        "captum_error": captum_error,
        "search_rows": search_rows,
    }


def format_table(results: list[dict[str, Any]], tolerance: float) -> str:
    head = (
        "| model | contender | path rows | model rows | ms | rows ta/captum | time ta/captum "
        "| max rel err | points/sample min/mean/max |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        lo, mean, hi = r["points"]
        rows_ratio = r["ta_path"] / r["captum_path"]
        time_ratio = r["ta_ms"] / r["captum_ms"]
        lines.append(
            f"| {r['model']} | torchattr auto | {r['ta_path']} | {r['ta_rows']} | "
            f"{r['ta_ms']:.0f} | {rows_ratio:.2f} | {time_ratio:.2f} | {r['ta_error']:.2e}"
            f"{'' if r['ta_converged'] else ' (NOT converged)'} | "
            f"{lo:.0f} / {mean:.1f} / {hi:.0f} |"
        )
        lines.append(
            f"| {r['model']} | captum GL n={r['captum_steps']} | {r['captum_path']} | "
            f"{r['captum_rows']} | {r['captum_ms']:.0f} | | | {r['captum_error']:.2e} | "
            f"search: {r['search_rows']} path rows |"
        )
    verdict = [
        f"{r['model']}: rows {r['ta_path'] / r['captum_path']:.2f}x (target <= 0.5), time "
        f"{r['ta_ms'] / r['captum_ms']:.2f}x (target <= 0.6): "
        + (
            "met"
            if r["ta_path"] <= 0.5 * r["captum_path"] and r["ta_ms"] <= 0.6 * r["captum_ms"]
            else "NOT met"
        )
        for r in results
    ]
    return "\n".join([*lines, "", *verdict, f"(tolerance {tolerance:g})"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,transformer")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side / sequence length")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--max-steps", type=int, default=255)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {device_name(torch.device('cpu'))}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, size {args.size}"
    )
    results = [run_model(name, args) for name in args.models.split(",")]
    print(format_table(results, args.tolerance))
    return 0


if __name__ == "__main__":
    sys.exit(main())

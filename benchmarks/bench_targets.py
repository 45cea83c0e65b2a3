"""K classes per sample: a ``[B, K]`` target against K separate calls, the limit and Captum.

A ``[B, K]`` target should cost one forward and K backward passes ("the limit"). For each model
and method the script times, interleaved round by round:

* ``torchattr [B,K]``: one call with the ``[B, K]`` target;
* ``vmap``: the same call on the previous path (``torch.func.vjp``, ``vmap`` over the K
  cotangents), for comparison;
* ``capture``: for ``layer=`` (saliency, input x gradient), the same call on the previous
  ``layer=`` path: one forward capturing the layer's output, then the pull-back's forward
  (now the output is captured inside the forward that is differentiated);
* ``K calls``: K torchattr calls, one class each;
* ``limit``: plain autograd, one forward of the B rows (B * steps for IG) and K
  ``torch.autograd.grad(..., retain_graph=True)`` pull-backs of one-hot cotangents over it;
* ``captum loop``: Captum's per-class loop (``Saliency`` / ``InputXGradient`` /
  ``IntegratedGradients``, or their ``Layer*`` twins through the transformer's embedding).

Models: ``small`` (CNN of ``benchmarks.models``, 3x32x32), ``transformer`` (the
``nn.TransformerEncoder`` text classifier, ids ``[B, 64]``, attributed through its embedding:
saliency and input x gradient capture the embedding's output inside their one forward; IG
captures it by one forward of B rows before its ``steps x B`` rows) and
``encoder`` (its encoder and head on float features ``[B, 64, 128]``, no layer).
Columns: median ms, and the ratios to the limit (target: torchattr within 1.1x) and to K calls.

``PYTHONPATH=. python -m benchmarks.bench_targets --threads 1`` (~3 min on 2 busy CPU cores).
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
import torchattr.gradient as gradient_module
from benchmarks.models import build, token_batch, unk_baseline
from benchmarks.timing import device_name, time_interleaved
from torchattr._core import grad as core_grad

METHODS = ("saliency", "input_x_gradient", "integrated_gradients")


def workload(name: str, batch: int, k: int, seed: int) -> dict[str, Any]:
    if name == "small":
        model = build("small", seed=seed)
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        return {"model": model, "x": x, "layer": None, "baseline": torch.zeros_like(x)}
    if name == "transformer":
        model = build("transformer", seed=seed)
        ids = token_batch(batch, 64, seed=seed)
        return {"model": model, "x": ids, "layer": model.embedding, "baseline": unk_baseline(ids)}
    if name == "encoder":
        model = FloatEncoder(build("transformer", seed=seed)).eval()
        h = torch.randn(batch, 64, 128, generator=torch.Generator().manual_seed(seed))
        return {"model": model, "x": h, "layer": None, "baseline": torch.zeros_like(h)}
    raise ValueError(f"unknown model {name!r}")


def torchattr_call(work: dict[str, Any], method: str, target: Tensor, steps: int) -> Callable:
    kwargs: dict[str, Any] = {}
    if work["layer"] is not None:
        kwargs["layer"] = work["layer"]
    if method == "integrated_gradients":
        kwargs.update(steps=steps, baseline=work["baseline"], chunk_size=None)
    fn = getattr(ta, method)
    return lambda: fn(work["model"], work["x"], target, **kwargs)


def vmap_path(fn: Callable) -> Callable:
    """``fn`` with ``[B, K]`` targets on the previous path: ``torch.func.vjp`` and ``vmap`` over
    the K cotangents (what torchattr did before the K pull-backs over one saved forward)."""
    current = core_grad._pull_each

    def batched(pullback: Callable, cotangent: Any) -> tuple[Tensor, ...]:
        pulled = torch.func.vmap(lambda c: pullback(c, retain_graph=False))(cotangent)
        return tuple(g.movedim(0, 1) for g in pulled)

    def run() -> Any:
        core_grad._pull_each = batched
        try:
            return fn()
        finally:
            core_grad._pull_each = current

    return run


def capture_path(fn: Callable) -> Callable:
    """``fn`` on the previous ``layer=`` path of saliency / input x gradient: a forward that
    captures the layer's output, then :func:`score_gradients` (a second forward) at it."""
    current = gradient_module.input_gradients

    def two_forwards(problem: Any, target: Any) -> tuple[Any, ...]:
        primals, _ = problem.primals()
        grads, target, multi = core_grad.score_gradients(problem, primals, target)
        return primals, grads, target, multi

    def run() -> Any:
        gradient_module.input_gradients = two_forwards
        try:
            return fn()
        finally:
            gradient_module.input_gradients = current

    return run


class FloatEncoder(nn.Module):
    """The benchmark transformer's encoder and head on float token features ``[B, L, 128]``
    (no embedding, no padding): an ``nn.TransformerEncoder`` classifier on continuous inputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, h: Tensor) -> Tensor:
        return self.inner.head(self.inner.encoder(h).mean(1))


def limit_call(work: dict[str, Any], method: str, targets: Tensor, steps: int) -> Callable:
    """One forward of the rows, K retained pull-backs (plain autograd)."""
    model, x, layer = work["model"], work["x"], work["layer"]
    copies = steps if method == "integrated_gradients" else 1
    k = targets.shape[1]

    def run() -> list[Tensor]:
        if layer is None:
            leaf = x.repeat(copies, *([1] * (x.ndim - 1))).requires_grad_()
            out = model(leaf)
        else:
            ids = x.repeat(copies, 1)
            with torch.no_grad():
                embedded = layer(ids)
            leaf = embedded.requires_grad_()
            handle = layer.register_forward_hook(lambda m, i, o: leaf)
            try:
                out = model(ids)
            finally:
                handle.remove()
        t = targets.repeat(copies, 1)
        onehot = torch.nn.functional.one_hot(t, out.shape[1]).to(out.dtype)
        return [
            torch.autograd.grad(out, leaf, onehot[:, j], retain_graph=j < k - 1)[0]
            for j in range(k)
        ]

    return run


def captum_call(work: dict[str, Any], method: str, targets: Tensor, steps: int) -> Callable:
    from captum import attr

    model, layer = work["model"], work["layer"]
    if layer is None:
        explainer = {
            "saliency": attr.Saliency,
            "input_x_gradient": attr.InputXGradient,
            "integrated_gradients": attr.IntegratedGradients,
        }[method](model)
    else:
        explainer = {
            "saliency": lambda m: attr.LayerGradientXActivation(m, layer, multiply_by_inputs=False),
            "input_x_gradient": lambda m: attr.LayerGradientXActivation(m, layer),
            "integrated_gradients": lambda m: attr.LayerIntegratedGradients(m, layer),
        }[method](model)
    kwargs: dict[str, Any] = {}
    if method == "integrated_gradients":
        kwargs.update(n_steps=steps, baselines=work["baseline"], method="gausslegendre")

    def run() -> list[Tensor]:
        return [
            explainer.attribute(work["x"], target=targets[:, j], **kwargs)
            for j in range(targets.shape[1])
        ]

    return run


def run(args: argparse.Namespace) -> list[list[str]]:
    rows = []
    for name in args.models.split(","):
        work = workload(name, args.batch, args.k, args.seed)
        targets = torch.arange(args.k).expand(args.batch, args.k).contiguous()
        for method in args.methods.split(","):
            ours = torchattr_call(work, method, targets, args.steps)
            separate = [
                torchattr_call(work, method, targets[:, j], args.steps) for j in range(args.k)
            ]
            fns = {
                "multi": ours,
                "vmap": vmap_path(ours),
                "K calls": lambda separate=separate: [f() for f in separate],
                "limit": limit_call(work, method, targets, args.steps),
            }
            if work["layer"] is not None and method != "integrated_gradients":
                fns["capture"] = capture_path(ours)
            if not args.no_captum:
                fns["captum"] = captum_call(work, method, targets, args.steps)
            times = time_interleaved(fns, torch.device("cpu"), args.repeats, warmup=1)
            ms = {key: 1e3 * statistics.median(v) for key, v in times.items()}
            rows.append(
                [
                    name,
                    method,
                    f"{ms['multi']:.0f}",
                    f"{ms['vmap']:.0f}",
                    f"{ms['K calls']:.0f}",
                    f"{ms['limit']:.0f}",
                    f"{ms['captum']:.0f}" if "captum" in ms else "-",
                    f"{ms['multi'] / ms['limit']:.2f}",
                    f"{ms['vmap'] / ms['limit']:.2f}",
                    f"{ms['capture'] / ms['limit']:.2f}" if "capture" in ms else "-",
                    f"{ms['multi'] / ms['K calls']:.2f}",
                    f"{ms['multi'] / ms['captum']:.2f}" if "captum" in ms else "-",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="small,encoder,transformer")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="IG steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-captum", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {device_name(torch.device('cpu'))}, "
        f"{torch.get_num_threads()} threads, B={args.batch}, K={args.k}"
    )
    rows = run(args)
    head = [
        "model",
        "method",
        "[B,K] ms",
        "[B,K] vmap ms",
        "K calls ms",
        "limit ms",
        "captum ms",
        "/limit",
        "vmap/limit",
        "capture/limit",
        "/K calls",
        "/captum",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

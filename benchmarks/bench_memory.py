"""Peak memory and time of a default Integrated Gradients call, against Captum and a step loop.

Contenders, for the same inputs, targets, Gauss-Legendre rule and number of steps S:

* ``torchattr``: ``ta.integrated_gradients`` with its defaults (``chunk_size="auto"``: the first
  two chunks are measured and the rest sized to stay under the default memory budget);
* ``captum``: ``IntegratedGradients`` (``LayerIntegratedGradients`` for the transformer) with
  ``internal_batch_size=None``, all ``S x B`` rows in one batch;
* ``loop``: the PyHealth-style step loop, one forward and one backward of the B rows per step,
  gradients accumulated (for the transformer the embedding's output is replaced by the path
  point through a forward hook).

Peak: on CPU the largest sum of live tensor bytes created during the call
(:class:`torchattr._core.memory.PeakMeter`, a ``TorchDispatchMode`` that sees every allocation,
also autograd's saved tensors); on CUDA ``torch.cuda.max_memory_allocated`` over the call. Time:
the minimum of ``--repeats`` interleaved calls. ``rel err``: max |x - captum| / max |captum|.

    PYTHONPATH=. python -m benchmarks.bench_memory --threads 1              # ~2-4 min, 2 cores
    PYTHONPATH=. python -m benchmarks.bench_memory --models transformer --markdown
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

import torchattr as ta
from benchmarks._common import parse, parser
from benchmarks.models import build, token_batch, unk_baseline
from torchattr._core.memory import PeakMeter

Fn = Callable[[], Tensor]


def step_loop_ig(model: nn.Module, x: Tensor, t: Tensor, steps: int) -> Tensor:
    """IG from baseline 0 by one forward + backward of the B rows per quadrature node."""
    nodes, weights = ta.quadrature("gausslegendre", steps)
    total = torch.zeros_like(x)
    for a, w in zip(nodes.tolist(), weights.tolist()):
        point = (a * x).detach().requires_grad_()
        score = model(point).gather(1, t[:, None]).sum()
        (grad,) = torch.autograd.grad(score, point)
        total += w * grad
    return x * total


def step_loop_layer_ig(
    model: nn.Module, layer: nn.Module, ids: Tensor, baseline: Tensor, t: Tensor, steps: int
) -> Tensor:
    """Embedding-space IG, one forward + backward of the B rows per node (a hook sets the point)."""
    nodes, weights = ta.quadrature("gausslegendre", steps)
    with torch.no_grad():
        end, start = layer(ids), layer(baseline)
    total = torch.zeros_like(end)
    for a, w in zip(nodes.tolist(), weights.tolist()):
        point = (start + a * (end - start)).detach().requires_grad_()
        handle = layer.register_forward_hook(lambda module, args, output, p=point: p)
        try:
            score = model(ids).gather(1, t[:, None]).sum()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(score, point)
        total += w * grad
    return ((end - start) * total).sum(-1)


def contenders(
    name: str, batch: int, steps: int, size: int, budget: int | None = None
) -> dict[str, Fn]:
    """``{contender: fn}`` for one model; every fn returns the attributions it computed."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    if name == "transformer":
        model = build("transformer")
        ids = token_batch(batch, size)
        t = torch.arange(batch) % 4
        baseline = unk_baseline(ids)
        layer = model.embedding
        lig = LayerIntegratedGradients(model, layer)
        return {
            "torchattr": lambda: ta.integrated_gradients(
                model,
                ids,
                target=t,
                baseline=baseline,
                steps=steps,
                layer=layer,
                memory_budget=budget,
            ),
            "captum": lambda: lig.attribute(
                ids,
                baselines=baseline,
                target=t,
                n_steps=steps,
                method="gausslegendre",
                internal_batch_size=None,
            ).sum(-1),
            "loop": lambda: step_loop_layer_ig(model, layer, ids, baseline, t, steps),
        }
    model = build(name)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.arange(batch) % 10
    ig = IntegratedGradients(model)
    return {
        "torchattr": lambda: ta.integrated_gradients(
            model, x, target=t, steps=steps, memory_budget=budget
        ),
        "captum": lambda: ig.attribute(
            x, target=t, n_steps=steps, method="gausslegendre", internal_batch_size=None
        ),
        "loop": lambda: step_loop_ig(model, x, t, steps),
    }


def peak_bytes(fn: Fn, device: torch.device) -> tuple[int, Tensor]:
    """Peak bytes of tensors allocated during ``fn()`` (see the module docstring); its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, out
    with PeakMeter() as meter:
        out = fn()
    return meter.peak, out


def measure(fns: dict[str, Fn], repeats: int, device: torch.device) -> dict[str, dict]:
    results = {}
    for lib, fn in fns.items():
        peak, out = peak_bytes(fn, device)  # also the warm-up
        results[lib] = {"peak": peak, "out": out.detach(), "times": []}
    for _ in range(repeats):
        for lib, fn in fns.items():
            start = time.perf_counter()
            fn()
            results[lib]["times"].append(time.perf_counter() - start)
    return results


def table(rows: list[list[str]], markdown: bool) -> str:
    header = [
        "model", "rows", "contender", "peak MiB", "ms", "peak / captum", "time / captum", "rel err"
    ]  # fmt: skip
    lines = [header, *rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        None,
        __doc__.splitlines()[0],
        batch=None,
        size=None,
        repeats=3,
        warmup=None,
        device=None,
        batch_help="default 4 (images), 16 (tokens)",
        size_help="default 128 (images), 64 (L)",
    )
    p.add_argument("--models", default="resnet18,transformer")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument(
        "--budget", type=float, default=None, help="memory_budget in MiB (default: the library's)"
    )
    args = parse(p, argv)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}")
    rows = []
    for name in args.models.split(","):
        batch = args.batch or (16 if name == "transformer" else 4)
        size = args.size or (64 if name == "transformer" else 128)
        budget = None if args.budget is None else int(args.budget * 2**20)
        fns = contenders(name, batch, args.steps, size, budget)
        results = measure(fns, args.repeats, device)
        ref = results["captum"]
        scale = ref["out"].abs().max().item()
        for lib, r in results.items():
            ms = min(r["times"]) * 1e3
            err = (r["out"] - ref["out"]).abs().max().item() / scale
            rows.append(
                [
                    name,
                    str(batch * args.steps),
                    lib,
                    f"{r['peak'] / 2**20:.0f}",
                    f"{ms:.0f}",
                    f"{r['peak'] / ref['peak']:.2f}",
                    f"{ms / (min(ref['times']) * 1e3):.2f}",
                    f"{err:.1e}",
                ]
            )
        print(f"  {name}: done", flush=True)
    print(table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

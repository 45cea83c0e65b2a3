"""Path methods side by side: cost against the bare forward+backward of the same rows and
against Captum's GradientShap.

For one image model and batch, with ``n`` points per sample (``--points``):

* ``bare``: one forward and one backward (plain autograd, input gradient only) of ``n x B`` rows
  at once: the work every method below cannot avoid;
* ``expected_gradients`` (``n`` reference draws) and Captum's ``GradientShap``
  (``n_samples=n``, ``stdevs=0``: the same estimator) over a reference set of 16 images;
* ``blur_integrated_gradients`` (``n`` steps), ``integrated_gradients`` (``n`` midpoints),
  ``idgi`` on the straight path (``n`` steps: ``n x B`` gradient rows whose forwards also give
  the knots' scores, and B forward rows at the inputs), and ``guided_integrated_gradients``
  (``n`` sequential steps of B rows) with its ``idgi``;
* ``idgi (ig) + knot pass``: ``idgi`` plus the ``(n + 1) x B`` forward-only rows of the knots'
  scores that it evaluated before they came from its gradient pass (the previous cost).

All calls send every row at once (``chunk_size=None``, ``internal_batch_size`` unset) and are
timed interleaved (:func:`benchmarks.timing.time_interleaved`); the table gives the median per
call and its ratio to ``bare`` (and, for expected gradients, to Captum), measured in one run.

    PYTHONPATH=. python -m benchmarks.bench_paths --threads 1                  # small CNN, 32 x 32
    PYTHONPATH=. python -m benchmarks.bench_paths --model resnet18 --size 64 --batch 16
    PYTHONPATH=. python -m benchmarks.bench_paths --device cuda --model resnet18 --size 224

Options: ``--device``, ``--model small|resnet18``, ``--batch`` (4), ``--size`` (32),
``--points`` (16), ``--repeats`` (5), ``--warmup`` (1), ``--threads``, ``--seed``,
``--markdown``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from torch import Tensor

import torchattr as ta
from benchmarks.models import build
from benchmarks.timing import device_name, time_interleaved


def bare(model: torch.nn.Module, x: Tensor, t: Tensor, points: int) -> Tensor:
    """Input gradient of ``n x B`` rows (each sample ``points`` times): one forward and backward."""
    rows = x.repeat(points, *([1] * (x.ndim - 1))).detach().requires_grad_()
    score = model(rows).gather(1, t.repeat(points)[:, None]).sum()
    return torch.autograd.grad(score, rows)[0]


def knot_pass(model: torch.nn.Module, x: Tensor, t: Tensor, points: int) -> Tensor:
    """The scores of ``(n + 1) x B`` straight-path rows, forward only (IDGI's former extra pass)."""
    alphas = torch.linspace(0, 1, points + 1, device=x.device)
    rows = (alphas.view(-1, 1, 1, 1, 1) * x).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        return model(rows).gather(1, t.repeat(points + 1)[:, None])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="small", choices=["small", "resnet18"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from captum.attr import GradientShap

    device = torch.device(args.device)
    model = build(args.model, device, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (3, args.size, args.size)
    x = torch.rand((args.batch, *shape), generator=gen).to(device)
    refs = torch.rand((16, *shape), generator=gen).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    n = args.points
    fns = {
        "bare": lambda: bare(model, x, t, n),
        "expected_gradients": lambda: ta.expected_gradients(
            model, x, t, references=refs, samples=n, chunk_size=None
        ),
        "captum GradientShap": lambda: GradientShap(model).attribute(
            x, baselines=refs, target=t, n_samples=n
        ),
        "blur_integrated_gradients": lambda: ta.blur_integrated_gradients(
            model, x, t, max_sigma=args.size / 4, steps=n, chunk_size=None
        ),
        "integrated_gradients": lambda: ta.integrated_gradients(
            model, x, t, steps=n, method="riemann_middle", chunk_size=None
        ),
        "idgi (ig)": lambda: ta.idgi(model, x, t, steps=n, chunk_size=None),
        "idgi (ig) + knot pass": lambda: (
            ta.idgi(model, x, t, steps=n, chunk_size=None),
            knot_pass(model, x, t, n),
        ),
        "guided_integrated_gradients": lambda: ta.guided_integrated_gradients(
            model, x, t, steps=n, chunk_size=None
        ),
        "idgi (guided)": lambda: ta.idgi(model, x, t, method="guided", steps=n, chunk_size=None),
    }
    times = time_interleaved(fns, device, args.repeats, args.warmup)
    median = {k: statistics.median(v) for k, v in times.items()}
    head = ["method", "ms / call", "x bare", "x Captum GradientShap"]
    rows = []
    for name, sec in median.items():
        vs_captum = (
            sec / median["captum GradientShap"]
            if name in ("expected_gradients", "captum GradientShap")
            else None
        )
        rows.append(
            [
                name,
                f"{1000 * sec:.1f}",
                f"{sec / median['bare']:.2f}",
                "" if vs_captum is None else f"{vs_captum:.2f}",
            ]
        )
    title = (
        f"{args.model} {args.size}x{args.size}, B = {args.batch}, n = {n} points per sample, "
        f"{device_name(device)}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(title)
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

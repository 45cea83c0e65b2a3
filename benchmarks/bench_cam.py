"""Time every CAM method on a ResNet-18-sized network, beside one forward + backward.

Every method explains the same seeded batch ``x [B, 3, S, S]`` with the same per-sample targets
``t [B]`` at the same layer (default ``stages.3``, the last stage: ``[B, 512, S/32, S/32]``).
Reference rows give the floor:

* ``forward``: one forward of the B rows without gradients;
* ``forward + backward``: one forward and one backward of the B rows with plain autograd, the
  gradient of ``sum_b s_b`` with respect to the layer's output (what every gradient CAM needs),
  ``torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), A)``; the ratio column divides
  by its time;
* ``forward + input backward``: the same down to the input ``x`` (what FullGrad needs);
* ``forward of B * C rows`` (with scorecam / ablationcam): the extra forwards those two need;

and, with ``--captum``, Captum's ``LayerGradCam`` (plus ``LayerAttribution.interpolate`` and
a per-sample min-max, the work ``ta.cam(method="gradcam")`` does).

Usage (from the repository root)::

    python benchmarks/bench_cam.py --device cpu --batch 2 --size 64 --repeats 3 --threads 2
    python benchmarks/bench_cam.py --device cuda --batch 16 --size 224 --repeats 10 --captum

Score-CAM and Ablation-CAM run ``B * C`` extra forward rows (``C = 512`` at ``stages.3``);
``--rows`` bounds the rows per model call (default 256).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `torchattr` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchattr as ta
from benchmarks._common import comma_list, parse, parser
from benchmarks.models import build, parameter_count
from benchmarks.timing import device_name, peak_mib, time_interleaved
from torchattr.cam import METHODS

Fn = Callable[[], object]


def forward_backward(model: torch.nn.Module, layer: torch.nn.Module, x: Tensor, t: Tensor) -> Fn:
    """One forward and one backward to the layer's output with plain autograd."""

    def run() -> Tensor:
        captured = []
        handle = layer.register_forward_hook(lambda m, a, out: captured.append(out))
        try:
            with torch.enable_grad():
                score = model(x).gather(1, t[:, None]).sum()
        finally:
            handle.remove()
        return torch.autograd.grad(score, captured[0])[0]

    return run


def forward_input_backward(model: torch.nn.Module, x: Tensor, t: Tensor) -> Fn:
    """One forward and one backward down to the input (FullGrad's floor)."""

    def run() -> Tensor:
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(model(xr).gather(1, t[:, None]).sum(), xr)[0]

    return run


def many_rows_forward(model: torch.nn.Module, x: Tensor, copies: int, rows: int) -> Fn:
    """Forwards of ``B * copies`` rows (each image ``copies`` times), ``rows`` per call: the
    floor of Score-CAM and Ablation-CAM."""
    total = x.shape[0] * copies

    def run() -> None:
        with torch.no_grad():
            for start in range(0, total, rows):
                index = torch.arange(start, min(start + rows, total), device=x.device) // copies
                model(x[index])

    return run


def captum_gradcam(model: torch.nn.Module, layer: torch.nn.Module, x: Tensor, t: Tensor) -> Fn:
    """Captum's LayerGradCam, upsampled and min-max normalised like ``ta.cam``."""
    from captum.attr import LayerAttribution, LayerGradCam

    gc = LayerGradCam(model, layer)

    def run() -> Tensor:
        low = gc.attribute(x, target=t, relu_attributions=True)
        up = LayerAttribution.interpolate(low, tuple(x.shape[2:]), interpolate_mode="bilinear")
        flat = up.flatten(1)
        lo, hi = flat.amin(1), flat.amax(1)
        return ((flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]).view_as(up)

    return run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser(
        "python benchmarks/bench_cam.py",
        "Time every ta.cam method on ResNet-18 beside one forward + backward.",
        batch=16,
        size=224,
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated ta.cam methods")
    p.add_argument("--layer", default="stages.3", help="CAM layer (default stages.3)")
    p.add_argument(
        "--rows",
        type=int,
        default=256,
        help="rows per model call of scorecam / ablationcam (chunk_size; default 256)",
    )
    p.add_argument("--captum", action="store_true", help="also time Captum's LayerGradCam")
    args = parse(p, argv)
    comma_list(p, args.methods, METHODS, "method")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Time the methods and print the table; return the exit status."""
    args = parse_args(argv)
    device = torch.device(args.device)
    model = build("resnet18", device, seed=args.seed)
    layer = model.get_submodule(args.layer)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    t = torch.randint(1000, (args.batch,), generator=gen).to(device)
    with torch.no_grad():
        channels = _layer_channels(model, layer, x[:1])
    print(
        f"torch {torch.__version__}, torchattr {ta.__version__}, python "
        f"{platform.python_version()}; device {args.device} ({device_name(device)}), torch "
        f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )
    print(
        f"ResNet-18 ({parameter_count(model) / 1e6:.1f} M parameters), x {list(x.shape)}, "
        f"layer {args.layer!r} ({channels} channels), repeats {args.repeats} (interleaved), "
        f"warm-up {args.warmup}, scorecam/ablationcam rows per call {args.rows}",
        flush=True,
    )

    fns: dict[str, Fn] = {}
    work: dict[str, str] = {}

    def forward() -> Tensor:
        with torch.no_grad():
            return model(x)

    b = args.batch
    fns["forward"], work["forward"] = forward, f"{b} rows"
    fns["forward + backward"] = forward_backward(model, layer, x, t)
    work["forward + backward"] = f"{b} rows, to the layer"
    fns["forward + input backward"] = forward_input_backward(model, x, t)
    work["forward + input backward"] = f"{b} rows, to the input"
    methods = [m for m in args.methods.split(",") if m]
    if {"scorecam", "ablationcam"} & set(methods):
        name = "forward of B * C rows"
        fns[name] = many_rows_forward(model, x, channels, args.rows)
        work[name] = f"{b * channels} rows, {args.rows} per call"
    if args.captum:
        fns["captum LayerGradCam"] = captum_gradcam(model, layer, x, t)
        work["captum LayerGradCam"] = f"{b} rows, fwd + bwd"
    for method in methods:
        kwargs: dict[str, object] = {"layer": args.layer, "method": method}
        if method in ("scorecam", "ablationcam"):
            kwargs["chunk_size"] = args.rows
            work[method] = f"{b} + {b * channels} rows fwd"
        elif method in ("eigencam", "randomcam"):
            work[method] = f"{b} rows fwd"
        else:
            work[method] = f"{b} rows, fwd + bwd"
        if method == "fullgrad":
            kwargs["layer"] = None
            work[method] += " (all BN layers)"
        if method == "randomcam":
            kwargs["generator"] = torch.Generator(device=device).manual_seed(0)

        def run(kwargs: dict[str, object] = kwargs) -> Tensor:
            return ta.cam(model, x, t, **kwargs)  # type: ignore[arg-type]

        fns[method] = run

    times = time_interleaved(fns, device, args.repeats, args.warmup)
    rows = [
        (name, work[name], statistics.median(ts), min(ts), peak_mib(fns[name], device))
        for name, ts in times.items()
    ]
    print()
    print(format_table(rows, args.markdown, device.type == "cuda"))
    print()
    print(
        "ms: median and minimum wall time of one call over interleaved rounds; / fwd+bwd: the "
        "minimum over that of one forward + backward of the same batch (plain autograd, "
        "gradient at the layer's output)."
    )
    return 0


def _layer_channels(model: torch.nn.Module, layer: torch.nn.Module, x: Tensor) -> int:
    out = []
    handle = layer.register_forward_hook(lambda m, a, o: out.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0].shape[1]


def format_table(
    rows: list[tuple[str, str, float, float, float | None]], markdown: bool, cuda: bool
) -> str:
    """The results as an aligned text table or a markdown table.

    ``rows``: (method, work, median s, min s, peak MiB); the second row is the forward +
    backward that the ratio column divides by (minimum by minimum: robust on a busy machine).
    """
    header = ["method", "work", "median ms", "min ms", "/ fwd+bwd"]
    header += ["peak MiB"] if cuda else []
    floor = rows[1][3]
    body = []
    for name, work, median, best, mib in rows:
        row = [name, work, f"{1000 * median:.1f}", f"{1000 * best:.1f}", f"{best / floor:.2f}"]
        if cuda:
            row.append("-" if mib is None else f"{mib:.0f}")
        body.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells)

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


if __name__ == "__main__":
    sys.exit(main())

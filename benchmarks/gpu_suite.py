"""One command, one table: torchattr against its peers and the bare forward+backward, on a GPU.

Runs, for each model and method, every contender on the same seeded batch ``x [B, 3, S, S]``
and the same explicit targets ``t [B]`` (the model's own predictions, computed once), and prints
one markdown table of median wall times, ratios and peak memory:

=========== ====================================================================================
method      contenders (a peer appears where it is installed: ``captum``, ``zennit``,
            ``pytorch_grad_cam``)
=========== ====================================================================================
saliency    ``ta.saliency``; Captum ``Saliency`` (abs, max over channels); bare = forward +
            backward of the B rows (input gradient only, ``compare.bare_input_gradient``)
ig          ``ta.integrated_gradients(steps=S, method="gausslegendre")``; Captum
            ``IntegratedGradients`` with the same rule; bare = forward + backward of the B*S rows.
            All three in row chunks of ``--chunk`` rows (Captum's ``internal_batch_size``)
ig_auto     ``ta.integrated_gradients(steps="auto", tolerance=0.01)`` (error-controlled steps,
            where this torchattr has them; else the row says why); bare as for ``ig``
smoothgrad  ``ta.smoothgrad(samples=N)``; Captum ``NoiseTunnel(Saliency)`` with N samples;
            bare = forward + backward of the B*N rows
gradcam     ``ta.cam(method="gradcam")`` on the last stage; pytorch-grad-cam ``GradCAM``; Captum
            ``LayerGradCam`` (+ upsampling); bare = forward + backward of the B rows
scorecam    ``ta.cam(method="scorecam")``; pytorch-grad-cam ``ScoreCAM``; bare = forward of the
            B*K masked rows (K channels of the layer), no backward. On ``--scorecam-batch`` images
lrp         ``ta.lrp`` (EpsilonPlusFlat on the CNN, AttnLRP's defaults on the ViT); Zennit
            ``Gradient`` + EpsilonPlusFlat + BatchNorm canonizer (CNN); bare as for saliency
road        ``ta.metrics.road`` (MoRF at 0.1..0.9, noisy linear imputation, batched CG);
            pytorch-grad-cam ``ROADMostRelevantFirst`` per fraction; bare = forward of the B*9 rows
=========== ====================================================================================

Variants: ``eager`` (every method); ``bf16`` (the same calls under ``torch.autocast(bfloat16)``:
saliency, ig, smoothgrad, gradcam, lrp); ``compiled`` (``--compile``, saliency and ig:
torchattr as ``torch.compile`` of its whole call, peers and bare calling a compiled frozen copy
of the model); ``cuda-graph`` (``--cuda-graphs``, CUDA only, saliency: bare captured in a CUDA
graph, torchattr through ``torch.compile(mode="reduce-overhead")``).

Models: ``resnet50`` (:class:`benchmarks.models.ResNet50`, 25.6 M parameters) at ``--size``
(224) and ``vit`` (a ViT-B/16 from a Hugging Face config, random weights, 12 layers; nothing
downloaded) at 224. ``--quick`` is a smoke run that fits a CPU: ResNet-50 at base width 16 and a
2-layer ViT of width 64, 32x32 images, B = 2, few steps, one timed call; ``tests/test_gpu_suite.py``
runs it in CI so that the script works the first time a GPU is lent.

Columns: ``ms`` (median over ``--repeats`` interleaved calls after ``--warmup``), ``x bare`` (time
over the bare forward+backward of the same rows), ``x torchattr`` (a peer's time over
torchattr's: > 1 means torchattr is faster), ``peak MiB`` (CUDA ``max_memory_allocated`` above the
start of the call; ``-`` on CPU), ``check`` (``max |peer - torchattr| / max |torchattr|`` where the
two compute the same quantity). A contender that raised says ``error: ...`` (first line) and the
run goes on. ``--budget SECONDS`` (default 420) skips what is left once the budget is spent, and
says so, so that the whole suite stays under 8 minutes on one H100/H200-class GPU.

Usage (from the repository root)::

    PYTHONPATH=. python -m benchmarks.gpu_suite                         # CUDA, full sizes
    PYTHONPATH=. python -m benchmarks.gpu_suite --compile --cuda-graphs
    PYTHONPATH=. python -m benchmarks.gpu_suite --device cpu --quick    # smoke run (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `torchattr` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchattr as ta
from benchmarks.compare import bare_input_gradient, cuda_graphed, max_relative_error
from benchmarks.models import ViT, build
from benchmarks.timing import device_name, peak_mib, synchronize, time_interleaved

Fn = Callable[[], object]
METHODS = ("saliency", "ig", "ig_auto", "smoothgrad", "gradcam", "scorecam", "lrp", "road")
MODELS = ("resnet50", "vit")
BF16_METHODS = ("saliency", "ig", "smoothgrad", "gradcam", "lrp")
COMPILE_METHODS = ("saliency", "ig")
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def build_model(name: str, quick: bool, size: int, device: torch.device) -> nn.Module:
    """``resnet50`` or ``vit``, seeded, in eval mode; the small variants with ``quick``."""
    if name == "resnet50":
        return build("resnet50", device, width=16 if quick else 64)
    torch.manual_seed(0)
    if quick:
        return ViT(image_size=size, hidden=64, layers=2, heads=4, mlp=128).to(device).eval()
    return ViT(image_size=size).to(device).eval()


def cam_layer(name: str, model: nn.Module) -> nn.Module:
    """The layer Grad-CAM and Score-CAM weigh: ResNet-50's last stage, the ViT's last block."""
    return model.stages[-1] if name == "resnet50" else model.cam_layer


def vit_reshape(grid: int) -> Callable[[Tensor], Tensor]:
    """Tokens ``[B, 1 + g*g, D]`` -> channel maps ``[B, D, g, g]`` (class token dropped)."""

    def reshape(tokens: Tensor) -> Tensor:
        if isinstance(tokens, tuple):
            tokens = tokens[0]
        b, _, d = tokens.shape
        return tokens[:, 1:].reshape(b, grid, grid, d).permute(0, 3, 1, 2)

    return reshape


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


@dataclass
class Setting:
    """What every contender of one table row group shares."""

    name: str  # model name
    model: nn.Module
    x: Tensor
    t: Tensor
    steps: int
    samples: int
    chunk: int
    scorecam_batch: int


def bare_chunks(model: Callable[[Tensor], Tensor], rows: Tensor, t: Tensor, chunk: int) -> Fn:
    """Forward + backward of ``rows`` in chunks of ``chunk`` rows (the floor of a path method)."""

    def run() -> list[Tensor]:
        return [
            bare_input_gradient(model, r, tt)
            for r, tt in zip(rows.split(chunk), t.split(chunk), strict=True)
        ]

    return run


def forward_only(model: Callable[[Tensor], Tensor], rows: Tensor, chunk: int) -> Fn:
    """Forward of ``rows`` in chunks, no gradient (the floor of Score-CAM and ROAD)."""

    def run() -> list[Tensor]:
        with torch.no_grad():
            return [model(r) for r in rows.split(chunk)]

    return run


def has(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def contenders(method: str, s: Setting) -> dict[str, Fn]:
    """``{contender: zero-argument callable}`` for ``method`` on setting ``s``."""
    model, x, t = s.model, s.x, s.t
    fns: dict[str, Fn] = {}
    b = x.shape[0]
    if method == "saliency":
        fns["torchattr"] = lambda: ta.saliency(model, x, t)
        if has("captum"):
            from captum.attr import Saliency

            sal, xc = Saliency(model), x.detach().clone().requires_grad_()
            fns["captum"] = lambda: sal.attribute(xc, target=t, abs=True).amax(dim=1)
        fns["bare"] = lambda: bare_input_gradient(model, x, t)
    elif method in ("ig", "ig_auto"):
        steps: int | str = s.steps if method == "ig" else "auto"
        extra = {} if method == "ig" else {"tolerance": 0.01}
        fns["torchattr"] = lambda: ta.integrated_gradients(
            model, x, target=t, steps=steps, method="gausslegendre", chunk_size=s.chunk, **extra
        )
        if method == "ig" and has("captum"):
            from captum.attr import IntegratedGradients

            ig = IntegratedGradients(model)
            fns["captum"] = lambda: ig.attribute(
                x, target=t, n_steps=s.steps, method="gausslegendre", internal_batch_size=s.chunk
            )
        rows = x.repeat(s.steps, 1, 1, 1)
        fns["bare"] = bare_chunks(model, rows, t.repeat(s.steps), s.chunk)
    elif method == "smoothgrad":
        fns["torchattr"] = lambda: ta.smoothgrad(
            model, x, t, samples=s.samples, noise=0.15, chunk_size=s.chunk
        )
        if has("captum"):
            from captum.attr import NoiseTunnel, Saliency

            nt = NoiseTunnel(Saliency(model))
            std = 0.15 * float(x.max() - x.min())
            fns["captum"] = lambda: nt.attribute(
                x, target=t, nt_type="smoothgrad", nt_samples=s.samples, stdevs=std,
                nt_samples_batch_size=max(1, s.chunk // b), abs=False,
            )  # fmt: skip
        rows = x.repeat(s.samples, 1, 1, 1)
        fns["bare"] = bare_chunks(model, rows, t.repeat(s.samples), s.chunk)
    elif method in ("gradcam", "scorecam"):
        layer = cam_layer(s.name, model)
        reshape = vit_reshape(model.grid) if s.name == "vit" else None
        xs, ts = (x, t) if method == "gradcam" else (x[: s.scorecam_batch], t[: s.scorecam_batch])
        fns["torchattr"] = lambda: ta.cam(
            model, xs, ts, layer=layer, method=method, reshape=reshape, chunk_size=s.chunk
        )
        if has("pytorch_grad_cam"):
            fns["grad-cam"] = gradcam_library(method, model, layer, xs, ts, reshape, s.chunk)
        if method == "gradcam":
            if has("captum") and reshape is None:
                from captum.attr import LayerAttribution, LayerGradCam

                lgc = LayerGradCam(model, layer)
                fns["captum"] = lambda: LayerAttribution.interpolate(
                    lgc.attribute(x, target=t, relu_attributions=True), x.shape[-2:], "bilinear"
                )
            fns["bare"] = lambda: bare_input_gradient(model, x, t)
        else:
            with torch.no_grad():
                captured: list[Tensor] = []
                handle = layer.register_forward_hook(lambda m, a, o: captured.append(o))
                model(xs[:1])
                handle.remove()
            out = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
            k = out.shape[-1] if reshape is not None else out.shape[1]
            rows = xs.repeat(k, 1, 1, 1)
            fns["bare"] = forward_only(model, rows, s.chunk)
    elif method == "lrp":
        fns["torchattr"] = lambda: ta.lrp(model, x, t)
        if s.name == "resnet50":
            zennit = zennit_attributor(model, x, t)
            if zennit is not None:
                fns["zennit"] = zennit
        fns["bare"] = lambda: bare_input_gradient(model, x, t)
    elif method == "road":
        maps = ta.saliency(model, x, t).detach()
        gen = torch.Generator(device=x.device)
        fns["torchattr"] = lambda: ta.metrics.road(
            model, x, maps, t, fractions=ROAD_FRACTIONS, chunk_size=s.chunk,
            generator=gen.manual_seed(0),
        )  # fmt: skip
        if has("pytorch_grad_cam"):
            fns["grad-cam"] = gradcam_road(model, x, t, maps)
        rows = x.repeat(len(ROAD_FRACTIONS), 1, 1, 1)
        fns["bare"] = forward_only(model, rows, s.chunk)
    else:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    return fns


def gradcam_library(
    method: str,
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    t: Tensor,
    reshape: Callable[[Tensor], Tensor] | None,
    chunk: int,
) -> Fn:
    """pytorch-grad-cam's ``GradCAM`` / ``ScoreCAM`` on the same layer and targets."""
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kind = GradCAM if method == "gradcam" else ScoreCAM
    explainer = kind(model=model, target_layers=[layer], reshape_transform=reshape)
    if method == "scorecam":
        explainer.batch_size = chunk
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    return lambda: explainer(input_tensor=x, targets=targets)


def gradcam_road(model: nn.Module, x: Tensor, t: Tensor, maps: Tensor) -> Fn:
    """pytorch-grad-cam's ROAD (MoRF), one call per fraction, as its users run it."""
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cams = maps.cpu().numpy()
    targets = [ClassifierOutputTarget(int(c)) for c in t]

    def run() -> list[object]:
        return [
            ROADMostRelevantFirst(percentile=int(100 * p))(x, cams, targets, model)
            for p in ROAD_FRACTIONS
        ]

    return run


def zennit_attributor(model: nn.Module, x: Tensor, t: Tensor) -> Fn | None:
    """Zennit's ``Gradient`` attributor with EpsilonPlusFlat and the BatchNorm canonizer."""
    from benchmarks.bench_lrp import import_zennit, zennit_composite

    zennit, _ = import_zennit()
    if zennit is None:
        return None
    from zennit.attribution import Gradient

    copy_ = copy.deepcopy(model)
    attributor = Gradient(copy_, zennit_composite("EpsilonPlusFlat"))
    attributor.__enter__()  # hooks stay on for the run: Zennit's fastest use
    onehot = torch.nn.functional.one_hot(t, num_classes=copy_(x[:1]).shape[1]).to(x.dtype)
    return lambda: attributor(x, lambda out: out * onehot)[1]


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def autocast_bf16(device: torch.device) -> Iterator[None]:
    """``torch.autocast(device.type, bfloat16)``."""
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def under(ctx: Callable[[], contextlib.AbstractContextManager], fn: Fn) -> Fn:
    """``fn`` run inside a fresh ``ctx()`` on every call."""

    def run() -> object:
        with ctx():
            return fn()

    return run


def compiled_variant(method: str, s: Setting) -> dict[str, Fn]:
    """torchattr as ``torch.compile`` of its whole call; peers and bare on a compiled copy."""
    frozen = torch.compile(copy.deepcopy(s.model).requires_grad_(False))
    peers = contenders(method, Setting(**{**s.__dict__, "model": frozen}))
    model, x, t = s.model, s.x, s.t
    if method == "saliency":

        def run(x: Tensor, t: Tensor) -> Tensor:
            return ta.saliency(model, x, t)
    else:

        def run(x: Tensor, t: Tensor) -> Tensor:
            return ta.integrated_gradients(
                model, x, target=t, steps=s.steps, method="gausslegendre", chunk_size=s.chunk
            )

    compiled = torch.compile(run)
    others = {k: v for k, v in peers.items() if k != "torchattr"}
    return {"torchattr": lambda: compiled(x, t), **others}


def cuda_graph_variant(s: Setting) -> dict[str, Fn]:
    """Saliency: bare replayed from a CUDA graph, torchattr via inductor's CUDA graphs."""
    model, x, t = s.model, s.x, s.t
    frozen = copy.deepcopy(model).requires_grad_(False)
    compiled = torch.compile(lambda x, t: ta.saliency(model, x, t), mode="reduce-overhead")
    return {
        "torchattr": lambda: compiled(x, t),
        "bare": cuda_graphed(lambda: bare_input_gradient(frozen, x, t)),
    }


# --------------------------------------------------------------------------------------------
# Running and the table
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    method: str
    variant: str
    contender: str
    ms: float | None = None
    peak: float | None = None
    check: float | None = None
    note: str = ""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, shortened for a table cell."""
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return text[:90]


def measure(
    fns: dict[str, Fn], device: torch.device, repeats: int, warmup: int
) -> dict[str, tuple[float | None, float | None, object, str]]:
    """``{name: (median ms, peak MiB, one output, error)}``; a raising contender is dropped."""
    outputs: dict[str, object] = {}
    results: dict[str, tuple[float | None, float | None, object, str]] = {}
    working: dict[str, Fn] = {}
    for name, fn in fns.items():
        try:
            outputs[name] = fn()
            synchronize(device)
            working[name] = fn
        except Exception as exc:  # reported in the table, the run goes on
            results[name] = (None, None, None, first_line(exc))
    if working:
        times = time_interleaved(working, device, repeats, max(0, warmup - 1))
        for name, fn in working.items():
            ts = sorted(times[name])
            results[name] = (1e3 * ts[len(ts) // 2], peak_mib(fn, device), outputs[name], "")
    return {name: results[name] for name in fns}


def as_tensor(out: object) -> Tensor | None:
    """The attribution tensor of a contender's output (first element of a tuple), else None."""
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, Tensor):
        return out
    try:
        import numpy as np

        if isinstance(out, np.ndarray):
            return torch.from_numpy(out)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return None


CHECKED = {"saliency", "ig", "gradcam"}


def unit_range(maps: Tensor) -> Tensor:
    """Each map min-max scaled to [0, 1] (all-equal maps to 0)."""
    flat = maps.detach().cpu().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(maps.shape)


def rows_of(
    model: str, method: str, variant: str, results: dict[str, tuple], check: bool
) -> list[Row]:
    """Table rows of one (model, method, variant), with the check against torchattr's output."""
    ours = as_tensor(results.get("torchattr", (None, None, None, ""))[2])
    rows = []
    for name, (ms, peak, out, err) in results.items():
        row = Row(model, method, variant, name, ms, peak, note=err)
        theirs = as_tensor(out)
        if check and name not in ("torchattr", "bare") and ours is not None and theirs is not None:
            with contextlib.suppress(RuntimeError):
                a, b = theirs.reshape(ours.shape).float(), ours.float()
                if method == "gradcam":  # torchattr's maps are in [0, 1]: compare shapes
                    a, b = unit_range(a), unit_range(b)
                row.check = max_relative_error(a, b)
        rows.append(row)
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    """The markdown table: one line per contender, ratios within its (model, method, variant)."""
    head = "| model | method | variant | contender | ms | x bare | x torchattr | peak MiB | check |"
    lines = [head, "|" + "---|" * 9]
    groups: dict[tuple[str, str, str], dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.model, r.method, r.variant), {})[r.contender] = r
    for r in rows:
        g = groups[(r.model, r.method, r.variant)]
        bare, ours = g.get("bare"), g.get("torchattr")
        x_bare = r.ms / bare.ms if r.ms and bare and bare.ms and r.contender != "bare" else None
        x_ours = (
            r.ms / ours.ms
            if r.ms and ours and ours.ms and r.contender not in ("torchattr", "bare")
            else None
        )
        ms = fmt(r.ms, ".2f") if r.ms is not None else (r.note or "-")
        lines.append(
            f"| {r.model} | {r.method} | {r.variant} | {r.contender} | {ms} | {fmt(x_bare, '.2f')}"
            f" | {fmt(x_ours, '.2f')} | {fmt(r.peak, '.0f')} | {fmt(r.check, '.1e')} |"
        )
    return "\n".join(lines)


def variants_of(
    method: str, s: Setting, args: argparse.Namespace, device: torch.device
) -> list[tuple[str, Callable[[], dict[str, Fn]]]]:
    """``[(variant, make contenders)]`` that apply to ``method`` with these options."""
    out: list[tuple[str, Callable[[], dict[str, Fn]]]] = [("eager", lambda: contenders(method, s))]
    if method in BF16_METHODS and not args.no_bf16:

        def bf16() -> dict[str, Fn]:
            fns = contenders(method, s)
            return {k: under(lambda: autocast_bf16(device), f) for k, f in fns.items()}

        out.append(("bf16", bf16))
    if args.compile and method in COMPILE_METHODS:
        out.append(("compiled", lambda: compiled_variant(method, s)))
    if args.cuda_graphs and method == "saliency":
        out.append(("cuda-graph", lambda: cuda_graph_variant(s)))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small models and sizes (CPU smoke run)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch", type=int, default=None, help="images per call (32; quick: 2)")
    p.add_argument("--size", type=int, default=None, help="image side (224; quick: 32)")
    p.add_argument("--steps", type=int, default=None, help="IG steps (16; quick: 4)")
    p.add_argument("--samples", type=int, default=None, help="SmoothGrad samples (16; quick: 2)")
    p.add_argument("--chunk", type=int, default=None, help="rows per model call (256; quick: 8)")
    p.add_argument("--scorecam-batch", type=int, default=None, help="images for Score-CAM (2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (10; quick: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (2; quick: 1)")
    p.add_argument("--compile", action="store_true", help="also torch.compile variants")
    p.add_argument("--cuda-graphs", action="store_true", help="also CUDA-graph variants (CUDA)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variants")
    p.add_argument("--budget", type=float, default=420.0, help="seconds before the rest is skipped")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "batch": (32, 2), "size": (224, 32), "steps": (16, 4), "samples": (16, 2),
        "chunk": (256, 8), "scorecam_batch": (2, 1), "repeats": (10, 1), "warmup": (2, 1),
    }  # fmt: skip
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}: expected some of {', '.join(MODELS)}")
    for m in args.methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}: expected some of {', '.join(METHODS)}")
    if args.cuda_graphs and not args.device.startswith("cuda"):
        p.error("--cuda-graphs needs --device cuda")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    print(
        f"# torchattr {ta.__version__} GPU suite on {device_name(device)} "
        f"(torch {torch.__version__})"
        f"\nB = {args.batch}, {args.size}x{args.size}, IG steps {args.steps}, SmoothGrad samples "
        f"{args.samples}, {args.chunk} rows per call, median of {args.repeats} after "
        f"{args.warmup} warm-up{' (quick)' if args.quick else ''}\n",
        flush=True,
    )
    rows: list[Row] = []
    skipped: list[str] = []
    for name in args.models:
        model = build_model(name, args.quick, args.size, device)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).clamp(-3, 3).to(device)
        with torch.no_grad():
            t = model(x).argmax(1)
        s = Setting(name, model, x, t, args.steps, args.samples, args.chunk, args.scorecam_batch)
        for method in args.methods:
            variants = variants_of(method, s, args, device)
            for variant, make in variants:
                if time.perf_counter() - start > args.budget:
                    skipped.append(f"{name}/{method}/{variant}")
                    continue
                try:
                    fns = make()
                except Exception as exc:  # a peer failed to set up
                    rows.append(Row(name, method, variant, "setup", note=first_line(exc)))
                    continue
                results = measure(fns, device, args.repeats, args.warmup)
                rows += rows_of(name, method, variant, results, check=method in CHECKED)
                print(f"  {name} {method} {variant}: done", file=sys.stderr, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(rows))
    if skipped:
        print(f"\nskipped (budget of {args.budget:.0f} s spent): {', '.join(skipped)}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Side-by-side timing of torchattr, Captum and the bare autograd cost, in one run.

For every model and method the script times three callables that do the same work:

* ``torchattr``: ``ta.saliency(model, x, t)``,
  ``ta.integrated_gradients(model, x, target=t, steps=S, method="gausslegendre")`` or, for token
  ids through the embedding layer, ``ta.integrated_gradients(model, ids, baseline=unk, target=t,
  steps=S, method="gausslegendre", layer=model.embedding)``;
* ``captum``: ``Saliency(model).attribute(x, target=t, abs=True).amax(1)``,
  ``IntegratedGradients(model).attribute(x, target=t, n_steps=S, method="gausslegendre",
  internal_batch_size=None)`` or ``LayerIntegratedGradients(model, model.embedding).attribute(ids,
  baselines=unk, target=t, n_steps=S, method="gausslegendre", internal_batch_size=None).sum(-1)``;
* ``bare``: one forward and one backward of a batch of the same size (B rows for saliency, B*S rows
  for IG) giving the input gradient with plain autograd,
  ``torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)``; for ``ig_embedding`` the
  gradient with respect to the embedding output ``[B*S, L, D]``, a leaf swapped in by a forward
  hook.

It prints the median wall time of each, the ratios torchattr/bare and torchattr/captum, the
largest relative difference between the torchattr and Captum attributions and, on CUDA, the peak
memory of each call. Run ``python -m benchmarks.compare --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import torchattr as ta
from benchmarks._common import parse, parser
from benchmarks.models import (
    IMAGE_MODELS,
    MODELS,
    PAD,
    TEXT_MODELS,
    build,
    parameter_count,
    token_batch,
    unk_baseline,
)
from benchmarks.timing import device_name, peak_mib, synchronize, time_interleaved

IMAGE_METHODS = ("saliency", "ig")
TEXT_METHODS = ("ig_embedding",)
METHODS = IMAGE_METHODS + TEXT_METHODS
LIBRARIES = ("torchattr", "captum", "bare")
DEFAULT_SIZES = {"small": 32, "resnet18": 64, "transformer": 64}  # image side / sequence length
DEFAULT_BATCH = {"small": 4, "resnet18": 4, "transformer": 16}
Fn = Callable[[], Tensor]


# --------------------------------------------------------------------------------------------
# The three callables of one (model, method) entry
# --------------------------------------------------------------------------------------------


def bare_input_gradient(model: Callable[[Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
    """Input gradient of ``sum_n model(x)[n, t_n]``: one forward, one backward, plain autograd.

    ``torch.autograd.grad`` with respect to ``x`` only (like Captum, and like torchattr's
    ``torch.func.vjp``) so that no parameter gradient is computed.
    """
    x = x.detach().requires_grad_()
    score = model(x).gather(1, t[:, None]).sum()
    return torch.autograd.grad(score, x)[0]


def applies(model_name: str, method: str) -> bool:
    """Whether ``method`` runs on model ``model_name`` (image methods on image models, etc.)."""
    if model_name in TEXT_MODELS:
        return method in TEXT_METHODS
    return method in IMAGE_METHODS


def bare_embedding_gradient(
    model: Callable[[Tensor], Tensor], layer: nn.Module, ids: Tensor, t: Tensor, emb: Tensor
) -> Tensor:
    """Gradient of ``sum_n model(ids)[n, t_n]`` with respect to ``layer``'s output, set to ``emb``.

    A forward hook replaces the layer's output by a leaf (a detached ``emb`` that requires grad),
    as torchattr and Captum do with their path points; one forward, one backward, plain autograd.
    """
    leaf = emb.detach().requires_grad_()
    handle = layer.register_forward_hook(lambda module, args, output: leaf)
    try:
        score = model(ids).gather(1, t[:, None]).sum()
    finally:
        handle.remove()
    return torch.autograd.grad(score, leaf)[0]


def make_callables(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    method: str,
    steps: int = 50,
    libraries: Sequence[str] = LIBRARIES,
) -> dict[str, Fn]:
    """Zero-argument callables ``{library: fn}`` for ``method`` (one of :data:`METHODS`).

    ``model`` is called as is (pass a compiled module to time compiled Captum / bare). For
    ``ig_embedding`` ``x`` holds token ids ``[B, L]``, the layer is ``model.embedding`` and the
    baseline is UNK at every real token, PAD kept. Every callable returns its attribution (or, for
    ``bare``, the input gradient of the enlarged batch).
    """
    fns: dict[str, Fn] = {}
    if method == "saliency":
        if "torchattr" in libraries:
            fns["torchattr"] = lambda: ta.saliency(model, x, t)
        if "captum" in libraries:
            from captum.attr import Saliency

            sal = Saliency(model)
            # A leaf that already requires grad: Captum would otherwise set the flag and warn.
            xc = x.detach().clone().requires_grad_()
            fns["captum"] = lambda: sal.attribute(xc, target=t, abs=True).amax(dim=1)
        if "bare" in libraries:
            fns["bare"] = lambda: bare_input_gradient(model, x, t)
    elif method == "ig":
        if "torchattr" in libraries:
            fns["torchattr"] = lambda: ta.integrated_gradients(
                model, x, target=t, steps=steps, method="gausslegendre"
            )
        if "captum" in libraries:
            from captum.attr import IntegratedGradients

            ig = IntegratedGradients(model)
            fns["captum"] = lambda: ig.attribute(
                x, target=t, n_steps=steps, method="gausslegendre", internal_batch_size=None
            )
        if "bare" in libraries:
            rows = x.repeat(steps, *([1] * (x.ndim - 1)))
            rows_t = t.repeat(steps)
            fns["bare"] = lambda: bare_input_gradient(model, rows, rows_t)
    elif method == "ig_embedding":
        layer = model.embedding
        baseline = unk_baseline(x)
        if "torchattr" in libraries:
            fns["torchattr"] = lambda: ta.integrated_gradients(
                model,
                x,
                baseline=baseline,
                target=t,
                steps=steps,
                method="gausslegendre",
                layer=layer,
            )
        if "captum" in libraries:
            from captum.attr import LayerIntegratedGradients

            lig = LayerIntegratedGradients(model, layer)
            fns["captum"] = lambda: lig.attribute(
                x,
                baselines=baseline,
                target=t,
                n_steps=steps,
                method="gausslegendre",
                internal_batch_size=None,
            ).sum(-1)
        if "bare" in libraries:
            rows = x.repeat(steps, 1)
            rows_t = t.repeat(steps)
            with torch.no_grad():  # the path points' stand-in: B*S embedded rows [B*S, L, D]
                emb = layer(rows)
            fns["bare"] = lambda: bare_embedding_gradient(model, layer, rows, rows_t, emb)
    else:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    return fns


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters do not require grad (same weights, eval mode)."""
    return copy.deepcopy(model).requires_grad_(False)


def compiled_torchattr(
    model: nn.Module, x: Tensor, t: Tensor, method: str, steps: int, mode: str | None = None
) -> Fn:
    """``torch.compile`` of the whole torchattr call (model, checks and quadrature included)."""
    if method == "saliency":

        def run(x: Tensor, t: Tensor) -> Tensor:
            return ta.saliency(model, x, t)

    elif method == "ig_embedding":
        baseline = unk_baseline(x)

        def run(x: Tensor, t: Tensor) -> Tensor:
            return ta.integrated_gradients(
                model,
                x,
                baseline=baseline,
                target=t,
                steps=steps,
                method="gausslegendre",
                layer=model.embedding,
            )

    else:

        def run(x: Tensor, t: Tensor) -> Tensor:
            return ta.integrated_gradients(model, x, target=t, steps=steps, method="gausslegendre")

    compiled = torch.compile(run, mode=mode)
    return lambda: compiled(x, t)


def cuda_graphed(fn: Fn, warmup: int = 3) -> Fn:
    """Capture ``fn`` (which must read only static tensors) in a CUDA graph; return its replay.

    Warm-up runs go on a side stream, as ``torch.cuda.graph`` requires. The replay returns the
    static output tensor of the capture, overwritten in place by every replay.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()

    def replay() -> Tensor:
        graph.replay()
        return static_out

    return replay


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def max_relative_error(a: Tensor, b: Tensor) -> float:
    """``max |a - b| / max |b|`` (0 when both are zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------
# Entries and the table
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One table row: a model, a method, a variant (eager / compiled / cuda-graph)."""

    model: str
    method: str
    variant: str
    rows: int
    times: dict[str, float] = field(default_factory=dict)  # library -> median seconds
    peaks: dict[str, float] = field(default_factory=dict)  # library -> MiB
    errors: dict[str, str] = field(default_factory=dict)  # library -> short error
    rel_err: float | None = None


def run_entry(
    entry: Entry,
    fns: dict[str, Fn],
    device: torch.device,
    repeats: int,
    warmup: int,
    failures: list[str],
    stat: str = "median",
) -> None:
    """Check, time and (on CUDA) measure the memory of ``fns``; fill ``entry``.

    ``stat`` ("median" or "min") reduces the repeats to the time shown.

    A callable that raises (say, under ``torch.compile``) is dropped from the entry; its error is
    recorded in ``entry.errors`` and the full traceback appended to ``failures``.
    """
    results: dict[str, Tensor] = {}
    for name in list(fns):
        try:
            results[name] = fns[name]()
            synchronize(device)
        except Exception as exc:
            entry.errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
            failures.append(
                f"[{entry.model} / {entry.method} / {entry.variant} / {name}]\n"
                + "".join(traceback.format_exception(exc))
            )
            del fns[name]
    if "torchattr" in results and "captum" in results:
        entry.rel_err = max_relative_error(results["torchattr"], results["captum"])
    del results
    times = time_interleaved(fns, device, repeats, warmup)
    reduce = min if stat == "min" else statistics.median
    entry.times = {name: reduce(ts) for name, ts in times.items()}
    if device.type == "cuda":
        entry.peaks = {name: peak_mib(fn, device) for name, fn in fns.items()}


def format_table(entries: list[Entry], markdown: bool, cuda: bool) -> str:
    """The results as an aligned text table or a markdown table."""
    header = [
        "model",
        "method",
        "variant",
        "rows",
        "torchattr ms",
        "captum ms",
        "bare ms",
        "ta/bare",
        "ta/captum",
        "max rel err",
    ]
    if cuda:
        header += ["ta MiB", "captum MiB", "bare MiB"]
    body = []
    for e in entries:

        def ms(lib: str, e: Entry = e) -> str:
            if lib in e.errors:
                return "error"
            return f"{1000 * e.times[lib]:.1f}" if lib in e.times else "-"

        def ratio(lib: str, e: Entry = e) -> str:
            if "torchattr" in e.times and lib in e.times:
                return f"{e.times['torchattr'] / e.times[lib]:.2f}"
            return "-"

        row = [
            e.model,
            e.method,
            e.variant,
            str(e.rows),
            ms("torchattr"),
            ms("captum"),
            ms("bare"),
            ratio("bare"),
            ratio("captum"),
            "-" if e.rel_err is None else f"{e.rel_err:.1e}",
        ]
        if cuda:
            row += [f"{e.peaks[lib]:.0f}" if lib in e.peaks else "-" for lib in LIBRARIES]
        body.append(row)
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells)

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser(
        "python -m benchmarks.compare",
        "Time torchattr against Captum and bare autograd, side by side.",
        batch=None,
        size=None,
        batch_help="samples B (default: 4 for the image models, 16 for the transformer)",
        size_help="image side (small, resnet18) or sequence length (transformer) for every model "
        "(default: small 32, resnet18 64, transformer 64)",
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, of {','.join(MODELS)} (default: all)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated, of {','.join(METHODS)} (default: all); saliency and ig run on "
        "the image models, ig_embedding on the transformer",
    )
    p.add_argument("--steps", type=int, default=50, help="IG steps S (default 50)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the head (default: small 10, resnet18 1000, transformer 4)",
    )
    p.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic of the repeats shown (min is robust on a busy machine)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile'd versions (torchattr: the whole call; "
        "captum and bare: the compiled model, parameters frozen)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time saliency captured in CUDA graphs (CUDA only)",
    )
    args = parse(p, argv)
    if args.cuda_graphs and args.device != "cuda":
        p.error("--cuda-graphs needs --device cuda")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table; return the exit status."""
    args = parse_args(argv)
    device = torch.device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: expected one of {', '.join(METHODS)}")
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}: expected one of {', '.join(MODELS)}")
    if not any(applies(name, method) for name in models for method in methods):
        raise SystemExit(
            f"no method of {methods} applies to the models {models}: saliency and ig run on "
            f"{', '.join(IMAGE_MODELS)}, ig_embedding on {', '.join(TEXT_MODELS)}"
        )
    try:
        import captum

        captum_version = captum.__version__
    except ImportError:
        raise SystemExit("captum is not installed: pip install captum") from None

    print(
        f"torch {torch.__version__}, captum {captum_version}, torchattr {ta.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"device: {args.device} ({device_name(device)}), torch threads: "
        f"{torch.get_num_threads()}, cpus: {os.cpu_count()}"
    )
    print(
        f"IG steps {args.steps} (gausslegendre), repeats {args.repeats} "
        f"({args.stat}), warm-up {args.warmup}, seed {args.seed}"
    )

    entries: list[Entry] = []
    failures: list[str] = []
    for name in models:
        model_methods = [m for m in methods if applies(name, m)]
        if not model_methods:
            continue
        model = build(name, device, num_classes=args.num_classes, seed=args.seed)
        batch = args.batch or DEFAULT_BATCH[name]
        x, t, described = workload(name, model, batch, args.size, args.seed, device)
        print(
            f"model {name}: {parameter_count(model) / 1e6:.2f} M parameters, {described}",
            flush=True,
        )
        # A frozen copy: under torch.compile, AOTAutograd's backward computes the gradient of
        # every input that requires grad, parameters included, even when autograd.grad asks for
        # x only (~1.5x the eager cost on ResNet-18); torchattr's vjp differentiates x only.
        compiled_model = torch.compile(frozen_copy(model)) if args.compile else None
        for method in model_methods:
            rows = batch * (1 if method == "saliency" else args.steps)
            for variant, factory in variant_factories(model, compiled_model, x, t, method, args):
                entry = Entry(name, method, variant, rows)
                start = time.perf_counter()
                run_entry(entry, factory(), device, args.repeats, args.warmup, failures, args.stat)
                print(
                    f"  {name} {method} {variant}: done in {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                entries.append(entry)
        if args.compile:
            torch._dynamo.reset()

    print()
    print(format_table(entries, args.markdown, device.type == "cuda"))
    print()
    print(
        f"ms: {args.stat} wall time of one call; bare: forward + input-gradient backward of "
        "the same rows with plain autograd; max rel err: max|torchattr - captum| / max|captum|."
    )
    for f in failures:
        print("\nFAILED " + f, file=sys.stderr)
    return 0


def workload(
    name: str, model: nn.Module, batch: int, size: int | None, seed: int, device: torch.device
) -> tuple[Tensor, Tensor, str]:
    """Seeded inputs and explicit targets of model ``name``, and a line describing them.

    Image models: ``x`` ``[B, 3, size, size]`` from a normal distribution. The transformer: token
    ids ``[B, size]`` with trailing padding (:func:`~benchmarks.models.token_batch`).
    """
    size = size or DEFAULT_SIZES[name]
    gen = torch.Generator().manual_seed(seed)
    if name in TEXT_MODELS:
        x = token_batch(batch, size, seed=seed).to(device)
        with torch.no_grad():
            out_classes = model(x[:1]).shape[1]
        pads = (x == PAD).sum(1)
        text = (
            f"token ids {list(x.shape)} ({int(pads.min())}..{int(pads.max())} trailing PAD per "
            f"row, baseline UNK), {out_classes} classes"
        )
    else:
        with torch.no_grad():
            out_classes = model(torch.zeros(1, 3, size, size, device=device)).shape[1]
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        text = f"input {list(x.shape)}, {out_classes} classes"
    t = torch.randint(out_classes, (batch,), generator=gen).to(device)
    return x, t, text


def variant_factories(
    model: nn.Module,
    compiled_model: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    t: Tensor,
    method: str,
    args: argparse.Namespace,
) -> list[tuple[str, Callable[[], dict[str, Fn]]]]:
    """``(variant, factory)`` pairs; each factory builds that variant's ``{library: fn}``.

    ``eager`` always; ``compiled`` with ``--compile`` (torchattr: ``torch.compile`` of the whole
    call; Captum and bare: the same code on ``compiled_model``, a compiled frozen copy); and
    ``cuda-graph`` for saliency with ``--cuda-graphs``.
    """
    steps = args.steps

    def eager() -> dict[str, Fn]:
        return make_callables(model, x, t, method, steps)

    def compiled() -> dict[str, Fn]:
        assert compiled_model is not None
        fns = {"torchattr": compiled_torchattr(model, x, t, method, steps)}
        fns.update(make_callables(compiled_model, x, t, method, steps, ("captum", "bare")))
        return fns

    def graphed() -> dict[str, Fn]:
        # torchattr's argument checks read tensor values on the host (a synchronisation, which a
        # manual capture forbids); torch.compile skips them while tracing, so torchattr goes
        # through inductor's CUDA graphs ("reduce-overhead"); Captum and bare are captured as is.
        fns = {"torchattr": compiled_torchattr(model, x, t, method, steps, "reduce-overhead")}
        for lib, fn in make_callables(model, x, t, method, steps, ("captum", "bare")).items():
            try:
                fns[lib] = cuda_graphed(fn)
            except Exception as exc:
                fns[lib] = _raiser(exc)
        return fns

    variants: list[tuple[str, Callable[[], dict[str, Fn]]]] = [("eager", eager)]
    if args.compile:
        variants.append(("compiled", compiled))
    if args.cuda_graphs and method == "saliency":
        variants.append(("cuda-graph", graphed))
    return variants


def _raiser(exc: BaseException) -> Fn:
    """A callable that re-raises ``exc`` (a capture failure shows up as that entry's error)."""

    def fail() -> Tensor:
        raise exc

    return fail


if __name__ == "__main__":
    sys.exit(main())

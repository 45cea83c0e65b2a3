"""Time ``ta.lrp`` beside one forward + backward, Zennit and Captum, on ResNet-18 and VGG-16.

Every contender explains the same seeded batch ``x [B, 3, S, S]`` (standard normal, clipped to
``[-3, 3]`` so that ``EpsilonGammaBox(-3, 3)``'s box holds every input) for the same explicit
targets ``t [B]`` (the model's own predictions on ``x``, computed once beforehand), seeding the
relevance with the target logit, ``R_out = logit * onehot(t)``:

* ``bare``: one forward and one backward with plain autograd, the gradient of the target logits'
  sum with respect to the input: ``torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)``
  (:func:`benchmarks.compare.bare_input_gradient`). The model's parameters require grad, as in a
  user's model, but only ``x``'s gradient is asked for, so no weight-gradient convolution runs;
* ``torchattr <composite>``: ``ta.lrp(model, x, t, composite=C)`` for ``EpsilonPlusFlat``,
  ``EpsilonAlpha2Beta1``, ``EpsilonGammaBox(-3, 3)`` and ``Epsilon`` (every convolution and dense
  layer ``Epsilon(1e-9)``: Captum's LRP rules, so that the two can be compared);
* ``zennit <composite>`` (where ``import zennit`` works): Zennit's ``Gradient`` attributor with
  the same composite plus the ``SequentialMergeBatchNorm`` canonizer, registered once on a copy of
  the model (hooks stay on between calls, Zennit's fastest use); the timed call is
  ``attributor(x, lambda out: out * onehot(t))``;
* ``captum LRP``: ``captum.attr.LRP(copy).attribute(x, target=t)`` (its default rules:
  ``EpsilonRule(1e-9)`` everywhere). Captum supports only models made of the modules it knows
  (no ``nn.Identity``, no functional ``+``); elsewhere the row says ``unsupported: <reason>``.

Models (``--models``): ``resnet18`` (:mod:`benchmarks.models`: BasicBlocks with a functional
residual add, BatchNorm, 11.7 M parameters), ``vgg16`` (:class:`VGG16`, torchvision's layout
written out, no BatchNorm, 138.4 M parameters) and ``vgg16_bn`` (the same with BatchNorm).

Columns: the median wall time of one warm call (interleaved rounds, as in ``compare.py``), the
cold time (one call on a fresh copy of the model, measured after the timed calls so that kernel
and allocator caches are warm: torchattr traces the model and builds its cached relevance
program, Zennit applies its canonizer and registers its hooks, Captum attaches its rules; what a
user pays once per model, or per ``with`` block for Zennit; the process's very first ``ta.lrp``
call, imports included, is printed on its own line), the ratios to ``bare`` and to
Zennit with the same composite (and, for ``torchattr Epsilon``, to Captum), peak memory on CUDA
and a check: for torchattr the mean conservation ratio (input relevance / explained score, from
``return_conservation=True``), for Zennit and Captum ``max |theirs - ours| / max |ours|`` against
torchattr's relevance for the same rules.

Usage (from the repository root)::

    PYTHONPATH=. python -m benchmarks.bench_lrp                  # CPU defaults, B = 2, 64x64
    PYTHONPATH=. python -m benchmarks.bench_lrp --threads 1 --profile   # steadier, + profiles
    PYTHONPATH=. python -m benchmarks.bench_lrp --device cuda --batch 16 --size 224 --repeats 20

The VGG-16 is held up to seven times at once (the model, a copy per Zennit composite, one for
Captum, one for the cold call): about 4 GB.

Zennit does not need to be installed in the project's environment: a scratch environment that
has it (``pip install --no-deps zennit``; its torchvision canonizers are stubbed out when
torchvision is absent) runs the same command with its own interpreter.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import re
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `torchattr` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchattr as ta
from benchmarks._common import comma_list, parse, parser
from benchmarks.compare import bare_input_gradient, max_relative_error
from benchmarks.models import ViT, _randomize_batchnorm, build, parameter_count
from benchmarks.timing import device_name, peak_mib, synchronize, time_interleaved

Fn = Callable[[], Tensor]
MODELS = ("resnet18", "vgg16", "vgg16_bn", "vit")
ALIASES = {"vgg": "vgg16", "vgg_bn": "vgg16_bn", "resnet": "resnet18"}
DEFAULT_MODELS = ("resnet18", "vgg16")
COMPOSITES = ("EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox", "Epsilon")
BOX = (-3.0, 3.0)  # EpsilonGammaBox bounds; the inputs are clipped to them
CAPTUM_EPSILON = 1e-9  # captum.attr's EpsilonRule default
#: (model, library) pairs whose rules are not torchattr's: Zennit hooks modules only, so on the
#: ResNet the functional residual adds and the global mean get the plain gradient, not ``Norm``.
RULES_DIFFER = {("resnet18", "zennit")}
TARGET_BARE = 2.0  # the target: EpsilonPlusFlat within 2x one forward + backward


# --------------------------------------------------------------------------------------------
# VGG-16 (torchvision's layout, written out: torchvision is not a dependency)
# --------------------------------------------------------------------------------------------

VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 as torchvision lays it out (configuration D; ``batch_norm``: ``vgg16_bn``).

    ``features``: 13 conv3x3 (padding 1) - [BatchNorm] - ReLU layers, 5 max pools;
    ``avgpool``: ``AdaptiveAvgPool2d(7)``; ``classifier``: 25088 -> 4096 -> 4096 -> classes with
    ReLU and Dropout (identity in eval mode). 138.4 M parameters with 1000 classes. The ReLUs are
    not in place (Captum's LRP hooks them with full backward hooks, which in-place outputs break).
    Any input side >= 32 works.
    """

    def __init__(self, num_classes: int = 1000, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(cin, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]``."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


VIT_IMAGE = 64
VIT_LAYERS = 4


def build_model(
    name: str, device: str | torch.device = "cpu", *, num_classes: int = 1000, seed: int = 0
) -> nn.Module:
    """``resnet18`` (:mod:`benchmarks.models`), ``vgg16`` or ``vgg16_bn``, seeded, in eval mode.

    The VGGs get torchvision's initialisation (zero biases); ``vgg16_bn`` also non-trivial
    BatchNorm statistics, like the models of :mod:`benchmarks.models`.
    """
    name = ALIASES.get(name, name)
    if name == "resnet18":
        return build("resnet18", device, num_classes=num_classes, seed=seed)
    if name == "vit":
        torch.manual_seed(seed)
        # ViT-B/16 with VIT_LAYERS layers instead of 12 (CPU); AttnLRP's rules
        return ViT(VIT_IMAGE, layers=VIT_LAYERS, num_classes=num_classes).to(device).eval()
    if name not in ("vgg16", "vgg16_bn"):
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = VGG16(num_classes, batch_norm=name == "vgg16_bn")
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.to(device).eval()


def workload(
    model: nn.Module, batch: int, size: int, seed: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Seeded images ``[B, 3, S, S]`` (normal, clipped to :data:`BOX`) and the predicted classes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen).clamp(*BOX).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    return x, t


# --------------------------------------------------------------------------------------------
# Contenders: a factory builds the timed callable (and a clean-up) from a model
# --------------------------------------------------------------------------------------------


def torchattr_composite(name: str) -> Any:
    """The torchattr composite called ``name`` (:data:`COMPOSITES`)."""
    c = ta.composites
    if name == "EpsilonPlusFlat":
        return c.EpsilonPlusFlat()
    if name == "EpsilonAlpha2Beta1":
        return c.EpsilonAlpha2Beta1()
    if name == "EpsilonGammaBox":
        return c.EpsilonGammaBox(*BOX)
    if name == "Epsilon":
        rule = ta.rules.Epsilon(CAPTUM_EPSILON)
        return c.by_kind({"conv": rule, "dense": rule})
    raise ValueError(f"unknown composite {name!r}: expected one of {', '.join(COMPOSITES)}")


def import_zennit() -> tuple[types.ModuleType | None, str]:
    """``(zennit, version)``, or ``(None, why)``.

    Zennit's package ``__init__`` imports its torchvision canonizers; without torchvision a stub
    ``zennit.torchvision`` is registered first (nothing here uses them), as in the test suite.
    """
    if importlib.util.find_spec("zennit") is None:
        return None, "Zennit not installed"
    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("zennit.torchvision", types.ModuleType("zennit.torchvision"))
    try:
        import zennit
        from zennit import attribution, canonizers, composites, rules  # noqa: F401
        from zennit import types as ztypes  # noqa: F401
    except Exception as exc:  # an incompatible version: say why, time the rest
        return None, f"Zennit not importable: {type(exc).__name__}: {exc}"
    version = getattr(zennit, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("zennit")
    return zennit, version


def zennit_composite(name: str) -> Any:
    """Zennit's composite ``name`` with the ``SequentialMergeBatchNorm`` canonizer (fresh)."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit import types as ztypes
    from zennit.canonizers import SequentialMergeBatchNorm

    canonizers = [SequentialMergeBatchNorm()]
    if name == "EpsilonPlusFlat":
        return zc.EpsilonPlusFlat(canonizers=canonizers)
    if name == "EpsilonAlpha2Beta1":
        return zc.EpsilonAlpha2Beta1(canonizers=canonizers)
    if name == "EpsilonGammaBox":
        return zc.EpsilonGammaBox(low=BOX[0], high=BOX[1], canonizers=canonizers)
    if name == "Epsilon":
        layer_map = [*zc.layer_map_base(), (ztypes.Linear, zr.Epsilon(epsilon=CAPTUM_EPSILON))]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    raise ValueError(f"unknown composite {name!r}: expected one of {', '.join(COMPOSITES)}")


Factory = Callable[[nn.Module], tuple[Fn, Callable[[], None]]]


def _nothing() -> None:
    return None


def bare_factory(x: Tensor, t: Tensor) -> Factory:
    """One forward + input-gradient backward with plain autograd."""
    return lambda model: ((lambda: bare_input_gradient(model, x, t)), _nothing)


def torchattr_factory(x: Tensor, t: Tensor, composite: str) -> Factory:
    """``ta.lrp`` with the named composite (built once: the program cache is keyed by it)."""
    c = torchattr_composite(composite)
    return lambda model: ((lambda: ta.lrp(model, x, t, composite=c)), _nothing)


def zennit_factory(x: Tensor, t: Tensor, composite: str, classes: int) -> Factory:
    """Zennit's ``Gradient`` with the composite registered on ``model`` (until the clean-up)."""
    from zennit.attribution import Gradient

    onehot = torch.nn.functional.one_hot(t, classes).to(x.dtype)

    def make(model: nn.Module) -> tuple[Fn, Callable[[], None]]:
        attributor = Gradient(model=model, composite=zennit_composite(composite))
        attributor.__enter__()  # canonizer applied, hooks registered

        def run() -> Tensor:
            _, relevance = attributor(x.detach(), lambda out: out * onehot)
            return relevance

        return run, lambda: attributor.__exit__(None, None, None)

    return make


def captum_factory(x: Tensor, t: Tensor) -> Factory:
    """``captum.attr.LRP`` with its default rules."""
    from captum.attr import LRP

    xc = x.detach().clone().requires_grad_()  # a leaf that requires grad: no warning

    def make(model: nn.Module) -> tuple[Fn, Callable[[], None]]:
        lrp = LRP(model)
        return (lambda: lrp.attribute(xc, target=t)), _nothing

    return make


@dataclass
class Contender:
    """One table row."""

    name: str  # "bare", "torchattr EpsilonPlusFlat", "zennit ...", "captum LRP"
    library: str  # bare / torchattr / zennit / captum
    composite: str | None
    factory: Factory
    own_copy: bool  # hooks or rules attached to the model: needs a private copy
    fn: Fn | None = None
    close: Callable[[], None] = _nothing
    cold: float | None = None  # seconds
    median: float | None = None
    peak: float | None = None
    check: str = "-"
    error: str | None = None
    result: Tensor | None = field(default=None, repr=False)


def contenders(
    x: Tensor,
    t: Tensor,
    composites: Sequence[str],
    classes: int,
    zennit: bool,
    captum: bool,
) -> list[Contender]:
    """The rows of one model, in table order."""
    rows = [Contender("bare", "bare", None, bare_factory(x, t), own_copy=False)]
    for c in composites:
        rows.append(Contender(f"torchattr {c}", "torchattr", c, torchattr_factory(x, t, c), False))
    if zennit:
        for c in composites:
            factory = zennit_factory(x, t, c, classes)
            rows.append(Contender(f"zennit {c}", "zennit", c, factory, own_copy=True))
    if captum:
        rows.append(Contender("captum LRP", "captum", "Epsilon", captum_factory(x, t), True))
    return rows


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def short_error(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    first = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", first)  # <class 'a.b.C'> -> C
    return f"{type(exc).__name__}: {first[:90]}"


def measure_cold(row: Contender, model: nn.Module, device: torch.device) -> None:
    """Seconds of one call on a fresh copy of ``model``, the factory's set-up included."""
    fresh = copy.deepcopy(model)
    synchronize(device)
    start = time.perf_counter()
    fn, close = row.factory(fresh)
    try:
        fn()
        synchronize(device)
        row.cold = time.perf_counter() - start
    finally:
        close()
        del fresh


def prepare(
    rows: list[Contender], model: nn.Module, device: torch.device, failures: list[str], tag: str
) -> None:
    """Set up the timed callable and run it once (its result is kept for the checks)."""
    for row in rows:
        try:
            row.fn, row.close = row.factory(copy.deepcopy(model) if row.own_copy else model)
            row.result = row.fn().detach()
            synchronize(device)
        except Exception as exc:
            row.error = ("unsupported: " if row.library == "captum" else "error: ") + short_error(
                exc
            )
            row.fn = None
            failures.append(f"[{tag} / {row.name}]\n" + "".join(traceback.format_exception(exc)))


def fill_checks(
    rows: list[Contender], model: nn.Module, x: Tensor, t: Tensor, failures: list[str], tag: str
) -> None:
    """Conservation of torchattr; difference of Zennit and Captum to torchattr's same rules."""
    ours = {r.composite: r.result for r in rows if r.library == "torchattr" and r.fn is not None}
    for row in rows:
        if row.fn is None or row.result is None:
            continue
        if row.library == "torchattr":
            try:
                c = torchattr_composite(str(row.composite))
                _, report = ta.lrp(model, x, t, composite=c, return_conservation=True)
                ratio = report.ratio.double()
                low, high = ratio.min().item(), ratio.max().item()
                row.check = f"R/s {ratio.mean().item():.3g} ({low:.2g}..{high:.2g})"
            except Exception as exc:
                row.check = "error"
                failures.append(
                    f"[{tag} / {row.name} check]\n" + "".join(traceback.format_exception(exc))
                )
        elif row.library in ("zennit", "captum") and ours.get(row.composite) is not None:
            row.check = f"diff {max_relative_error(row.result, ours[row.composite]):.1e}"
            if (tag, row.library) in RULES_DIFFER:
                row.check += " *"


def run_model(
    rows: list[Contender],
    model: nn.Module,
    device: torch.device,
    repeats: int,
    warmup: int,
    failures: list[str],
    tag: str,
) -> None:
    """Time the rows that work, interleaved (median); peak memory on CUDA; then the cold calls.

    The cold calls come last, once kernel and allocator caches are warm for these shapes, so
    that ``cold - median`` is what a new model costs (tracing, program build, hook set-up).
    """
    fns = {r.name: r.fn for r in rows if r.fn is not None}
    times = time_interleaved(fns, device, repeats, warmup)  # type: ignore[arg-type]
    for row in rows:
        if row.name in times:
            row.median = statistics.median(times[row.name])
            if device.type == "cuda":
                row.peak = peak_mib(row.fn, device)  # type: ignore[arg-type]
    for row in rows:
        if row.name not in times:
            continue
        try:
            measure_cold(row, model, device)
        except Exception as exc:
            failures.append(
                f"[{tag} / {row.name} cold]\n" + "".join(traceback.format_exception(exc))
            )


def profile_hint(fn: Fn, device: torch.device, top: int = 12) -> str:
    """torch.profiler's top operators (by self time) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass
class ModelResult:
    """All rows of one model."""

    model: str
    rows: list[Contender]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


LEFT = ("model", "contender", "check")  # left-aligned columns


def format_table(results: list[ModelResult], markdown: bool, cuda: bool) -> str:
    """The results as an aligned text table or a markdown table."""
    header = ["model", "contender", "median ms", "cold ms", "/bare", "/zennit", "/captum"]
    if cuda:
        header.append("peak MiB")
    header.append("check")
    body: list[list[str]] = []
    for res in results:
        bare = next((r.median for r in res.rows if r.library == "bare"), None)
        zen = {r.composite: r.median for r in res.rows if r.library == "zennit"}
        cap = next((r.median for r in res.rows if r.library == "captum"), None)
        for r in res.rows:
            if r.error is not None:
                row = [res.model, r.name, r.error, "-", "-", "-", "-"]
                row += ["-"] if cuda else []
                body.append([*row, "-"])
                continue
            ta_row = r.library == "torchattr"
            row = [
                res.model,
                r.name,
                "-" if r.median is None else f"{1000 * r.median:.1f}",
                "-" if r.cold is None else f"{1000 * r.cold:.0f}",
                "-" if r.library == "bare" else _ratio(r.median, bare),
                _ratio(r.median, zen.get(r.composite)) if ta_row else "-",
                _ratio(r.median, cap) if ta_row and r.composite == "Epsilon" else "-",
            ]
            if cuda:
                row.append("-" if r.peak is None else f"{r.peak:.0f}")
            body.append([*row, r.check])
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if h in LEFT else "---:" for h in header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    error_cells = {(i, 2) for i, r in enumerate(body) if not r[2][:1].isdigit() and r[2] != "-"}
    widths = [
        max([len(header[j])] + [len(r[j]) for i, r in enumerate(body) if (i, j) not in error_cells])
        for j in range(len(header))
    ]

    def fmt(r: list[str], i: int = -1) -> str:
        if (i, 2) in error_cells:  # an error message runs over the number columns
            return "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]])
        cells = [
            c.ljust(w) if j < 2 or j == len(r) - 1 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(r, i) for i, r in enumerate(body)]
    return "\n".join(lines)


def verdicts(results: list[ModelResult]) -> list[str]:
    """One line per model on the issue's targets, and every torchattr row above 2x bare."""
    lines = []
    for res in results:
        by_name = {r.name: r for r in res.rows}
        bare = by_name["bare"].median
        flat = by_name.get("torchattr EpsilonPlusFlat")
        zen = by_name.get("zennit EpsilonPlusFlat")
        if flat is not None and flat.median is not None and bare:
            ratio = flat.median / bare
            text = (
                f"{res.model}: torchattr EpsilonPlusFlat = {ratio:.2f}x bare "
                f"(target <= {TARGET_BARE:g}x: {'met' if ratio <= TARGET_BARE else 'NOT met'})"
            )
            if zen is not None and zen.median is not None:
                vs = flat.median / zen.median
                text += f", {vs:.2f}x Zennit (target < 1: {'met' if vs < 1 else 'NOT met'})"
            lines.append(text)
        slow = [
            f"{r.composite} {r.median / bare:.2f}x"
            for r in res.rows
            if r.library == "torchattr"
            and r.median is not None
            and bare
            and r.median > TARGET_BARE * bare
        ]
        if slow:
            lines.append(f"  above {TARGET_BARE:g}x bare on {res.model}: " + ", ".join(slow))
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser(
        "python -m benchmarks.bench_lrp",
        "Time ta.lrp beside one forward + backward, Zennit and Captum.",
        batch=2,
        size=64,
        size_help="image side S (default 64; >= 32)",
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, of {','.join(MODELS)} ('vgg' = vgg16; default "
        f"{','.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--composites",
        default=",".join(COMPOSITES),
        help=f"comma-separated, of {','.join(COMPOSITES)} (default: all; Epsilon is Captum's "
        "rules, Epsilon(1e-9) on every layer)",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    p.add_argument("--no-zennit", action="store_true", help="leave Zennit out")
    p.add_argument("--no-captum", action="store_true", help="leave Captum out")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler's top operators of every torchattr row above 2x bare",
    )
    args = parse(p, argv)
    models = ",".join(ALIASES.get(m.strip(), m.strip()) for m in args.models.split(","))
    args.models = comma_list(p, models, MODELS, "model")
    args.composites = comma_list(p, args.composites, COMPOSITES, "composite")
    if args.size < 32:
        p.error("--size must be at least 32 (five 2x2 max pools in VGG, stride 32 in ResNet)")
    return args


def first_call_in_process(device: torch.device) -> float:
    """Seconds of the process's first ``ta.lrp`` call (a tiny model): lazy imports and set-up."""
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    tiny = tiny.to(device)
    x = torch.zeros(1, 3, 8, 8, device=device)
    tiny(x)  # materialise the lazy layer
    tiny.eval()
    synchronize(device)
    start = time.perf_counter()
    ta.lrp(tiny, x, 0)
    synchronize(device)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; return the exit status."""
    args = parse_args(argv)
    device = torch.device(args.device)

    zennit, zennit_note = (None, "left out (--no-zennit)") if args.no_zennit else import_zennit()
    captum_note = "left out (--no-captum)"
    if not args.no_captum:
        try:
            import captum

            captum_note = captum.__version__
        except ImportError:
            captum_note = "not installed"
    use_captum = captum_note not in ("not installed", "left out (--no-captum)")
    print(
        f"torch {torch.__version__}, torchattr {ta.__version__}, "
        f"zennit {zennit_note if zennit is not None else '-'}, captum {captum_note}, "
        f"python {platform.python_version()}"
    )
    if zennit is None and not args.no_zennit:
        print(zennit_note)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"device: {args.device} ({device_name(device)}), torch threads: "
        f"{torch.get_num_threads()}, cpus: {os.cpu_count()}"
        + ("" if load is None else f", load average {load[0]:.1f}")
    )
    print(
        f"batch {args.batch}, size {args.size}, repeats {args.repeats} (median), warm-up "
        f"{args.warmup} (+1 check call), seed {args.seed}; composites {', '.join(args.composites)}"
    )
    first = first_call_in_process(device)
    print(f"first ta.lrp call in this process (tiny model: imports, set-up): {1000 * first:.0f} ms")

    results: list[ModelResult] = []
    failures: list[str] = []
    profiles: list[str] = []
    for name in args.models:
        start = time.perf_counter()
        model = build_model(name, device, num_classes=args.num_classes, seed=args.seed)
        x, t = workload(model, args.batch, args.size, args.seed, device)
        print(
            f"model {name}: {parameter_count(model) / 1e6:.1f} M parameters, input "
            f"{list(x.shape)}, targets = predictions {t.tolist()[:8]}"
            + (" ..." if len(t) > 8 else ""),
            flush=True,
        )
        rows = contenders(x, t, args.composites, args.num_classes, zennit is not None, use_captum)
        prepare(rows, model, device, failures, name)
        fill_checks(rows, model, x, t, failures, name)
        run_model(rows, model, device, args.repeats, args.warmup, failures, name)
        results.append(ModelResult(name, rows))
        if args.profile:
            bare = rows[0].median
            for r in rows:
                if r.library == "torchattr" and r.median and bare and r.median > TARGET_BARE * bare:
                    assert r.fn is not None
                    profiles.append(f"{name} / {r.name}:\n{profile_hint(r.fn, device)}")
        for r in rows:
            r.close()
            r.fn = None
            r.result = None
        print(f"  {name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        del model, rows
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print(format_table(results, args.markdown, device.type == "cuda"))
    print()
    print(
        "median ms: one warm call; cold ms: one call on a fresh copy of the model (torchattr: "
        "trace + program build; zennit: canonizer + hooks registered and removed; captum: rules "
        "attached); /bare, /zennit (same composite), /captum: time ratios (< 1: faster); check: "
        "torchattr's input relevance / explained score per sample, mean (min..max); "
        "zennit / captum: max|theirs - torchattr's same rules| / max|torchattr's|."
    )
    if "resnet18" in args.models and zennit is not None:
        print(
            "*: not like for like. Zennit's rules attach to modules only, so on resnet18 the "
            "functional residual adds and the global mean get the plain gradient, where "
            "torchattr applies Norm (Zennit's ResNet canonizer handles torchvision's blocks only)."
        )
    if "vgg16_bn" in args.models and zennit is not None:
        print(
            "vgg16_bn: Zennit's canonizer leaves each merged BatchNorm computing y / sqrt(1 + eps) "
            "(eps = 1e-5) instead of y, so its diff there is ~1e-4 in float64 too. Captum keeps "
            "BatchNorm as a layer with its own Epsilon rule, which composes with the convolution's "
            "to torchattr's merged layer up to the stabiliser."
        )
    for line in verdicts(results):
        print(line)
    for text in profiles:
        print("\nPROFILE " + text)
    for f in failures:
        print("\nFAILED " + f, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Randomisation sanity checks (Adebayo et al. 2018; Sixt et al. 2020).

An explanation that does not change when the model's weights are replaced by random ones (or
when a random other class is explained) cannot be explaining the model. Each check explains a
*changed* model or class and compares it, sample by sample, with the original explanation:

* :func:`model_randomisation` (model-parameter randomisation, "MPRT"): layer by layer from the
  output down, either cascading (every layer above and including the current one random) or
  independent (only the current layer random);
* :func:`random_logit`: the explanation of a random other class;
* :func:`data_randomisation` (Adebayo et al.'s data randomisation test): the explanation of a
  model trained on permuted labels (:func:`permuted_labels`), which the user trains.

Lower similarity is better: a similarity near 1 for every layer flags an explanation that
ignores the model (an edge detector, the input itself). Similarities:

* ``"spearman"``: Spearman's rank correlation of ``|Phi|`` (all features of one sample);
* ``"spearman_signed"``: the same on the signed attributions;
* ``"ssim"``: the structural similarity (Wang et al. 2004) of the 2-D maps ``|Phi|`` summed
  over channels, each scaled to ``[0, 1]`` by its maximum (data range 1);
* ``"hog"``: Pearson's correlation of the histograms of oriented gradients (:func:`hog`, Dalal
  and Triggs 2005) of the same scaled maps, as Adebayo et al. compare explanations.

The user's model is never called, written or explained: the checks work on a deep copy
(``copy.deepcopy`` of the module inside any DataParallel / DDP / compile wrapper), which is
re-initialised in place. The copy keeps the model's hooks (they may be part of its function),
so a hook's function is called with the copy's modules. Layers are re-initialised by their own
``reset_parameters()`` under a seed drawn from ``generator`` (the global random state is forked
and restored).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from torchattr._core.checks import check_choice, check_generator, keywords
from torchattr._core.state import untouched
from torchattr._core.targets import Target, logits_of, normalize_target, resolve_target
from torchattr._core.wrapped import strip_prefix, unwrap

__all__ = [
    "ORDERS",
    "SIMILARITIES",
    "DataRandomisation",
    "RandomLogit",
    "Randomisation",
    "data_randomisation",
    "hog",
    "model_randomisation",
    "permuted_labels",
    "random_logit",
    "spearman",
    "ssim",
]

SIMILARITIES = ("spearman", "spearman_signed", "ssim", "hog")
ORDERS = ("cascading", "independent")

ModelExplain = Callable[[nn.Module, Tensor, Any], Tensor]


class Randomisation(NamedTuple):
    """Result of :func:`model_randomisation`: per-layer similarities to the original maps.

    ``layers``: the randomised layers, in the order they were randomised (top to bottom);
    ``similarity``: one ``[L, B]`` tensor per similarity name, row ``l`` comparing the
    explanation after randomising ``layers[l]`` with the original one;
    ``original``: the original explanations ``[B, ...]``.

    Example::

        out = ta.metrics.model_randomisation(explain, model, images)
        dict(zip(out.layers, out.similarity["ssim"].mean(1).tolist()))
    """

    layers: tuple[str, ...]
    similarity: dict[str, Tensor]
    original: Tensor


class DataRandomisation(NamedTuple):
    """Result of :func:`data_randomisation`: one ``[B]`` similarity per name, the explanations
    of the trained model and of the model trained on permuted labels, and the classes
    explained (``[B]``).

    Example::

        out = ta.metrics.data_randomisation(explain, model, model_on_permuted_labels, images)
        out.similarity["spearman"].mean()      # near 0 for a method that depends on the labels
    """

    similarity: dict[str, Tensor]
    original: Tensor
    randomised: Tensor
    classes: Tensor


class RandomLogit(NamedTuple):
    """Result of :func:`random_logit`: the classes explained instead (``[B]``), one ``[B]``
    similarity per name, and the original explanations.

    Example::

        out = ta.metrics.random_logit(explain, model, images, labels)
        out.similarity["spearman"]   # [B]: lower is better
    """

    classes: Tensor
    similarity: dict[str, Tensor]
    original: Tensor


# --- similarities -------------------------------------------------------------------------


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0 .. N-1`` of each row of ``values [B, N]``, ties given their average rank
    (``(first + last) / 2`` of the positions they share), as :func:`scipy.stats.rankdata`
    minus 1."""
    ordered = values.sort(dim=1).values
    lower = torch.searchsorted(ordered, values.contiguous(), right=False)
    upper = torch.searchsorted(ordered, values.contiguous(), right=True)
    return (lower + upper - 1).to(torch.promote_types(values.dtype, torch.float32)) / 2


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of ``a, b [B, N]``: ``[B]``.

        ``r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2)``

    NaN where a row is constant (the correlation is undefined; never reported as 0).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / ((a * a).sum(dim=1) * (b * b).sum(dim=1)).sqrt()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of the samples of ``a, b [B, ...]``: ``[B]``.

    Pearson's correlation of the average ranks of all features of a sample (ties share their
    mean rank, as in :func:`scipy.stats.spearmanr`); NaN where a sample is constant.
    """
    a, b = _same_shape(a, b)
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: Any) -> Tensor:
    """Normalised 1-D Gaussian ``w_i = exp(-(i - c)^2 / (2 sigma^2)) / Z``, ``c = (size-1)/2``:
    ``[size]``."""
    i = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(i * i) / (2 * sigma * sigma))
    return w / w.sum()


def ssim(
    a: Tensor, b: Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of maps ``a, b [B, H, W]``: ``[B]``.

        ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``

    with local means, variances and covariance weighted by a ``window x window`` Gaussian of
    standard deviation ``sigma`` (separable, normalised), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``, ``L = data_range``; averaged over the positions where the window lies
    inside the map ("valid"). The window shrinks to the largest odd size that fits maps smaller
    than ``window``. 1 for identical maps.
    """
    a, b = _same_shape(a, b)
    if a.ndim != 3:
        raise ValueError(f"ssim needs maps [B, H, W], got shape {list(a.shape)}")
    size = min(window, a.shape[1], a.shape[2])
    size -= 1 - size % 2  # largest odd size that fits
    w = gaussian_window(size, sigma, a.dtype, a.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: Tensor) -> Tensor:  # [B, H, W] -> [B, H - size + 1, W - size + 1]
        x = x.unsqueeze(1)
        x = nn.functional.conv2d(x, w.view(1, 1, size, 1))
        return nn.functional.conv2d(x, w.view(1, 1, 1, size))[:, 0]

    # moments of the maps less their means (exact shift invariance, less cancellation)
    mean_a, mean_b = a.mean(dim=(1, 2), keepdim=True), b.mean(dim=(1, 2), keepdim=True)
    a, b = a - mean_a, b - mean_b
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    mu_a, mu_b = mu_a + mean_a, mu_b + mean_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1)


def hog(
    maps: Tensor,
    *,
    orientations: int = 9,
    cell: int = 8,
    block: int = 3,
) -> Tensor:
    """Histograms of oriented gradients (Dalal and Triggs 2005) of maps ``[B, H, W]``:
    ``[B, R, C, block, block, orientations]`` (flatten for the feature vector), as
    ``skimage.feature.hog(map, orientations, (cell, cell), (block, block), "L2-Hys")``.

    1. Gradients by central differences, zero on the border rows / columns:
       ``g_y[i, j] = S[i + 1, j] - S[i - 1, j]``, ``g_x[i, j] = S[i, j + 1] - S[i, j - 1]``.
    2. Magnitude ``m = sqrt(g_x^2 + g_y^2)``, unsigned orientation
       ``theta = degrees(atan2(g_y, g_x)) mod 180``, bin ``k`` for
       ``k 180 / n <= theta < (k + 1) 180 / n`` (``n = orientations``; hard binning).
    3. Cells of ``cell x cell`` pixels (``floor(H / cell) x floor(W / cell)`` of them; the
       remaining rows and columns are dropped): ``h[cell, k] = mean over the cell of m * [bin =
       k]``.
    4. Blocks of ``block x block`` cells, every cell position (stride one cell): ``R = H_c -
       block + 1`` rows and ``C = W_c - block + 1`` columns of blocks; each block vector ``v``
       normalised by L2-Hys: ``v / sqrt(|v|^2 + eps^2)``, clipped at 0.2, normalised again
       (``eps = 1e-5``).

    Maps need at least ``block * cell`` pixels in each direction.
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"hog needs maps [B, H, W], got {shape}")
    for name, value in (("orientations", orientations), ("cell", cell), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    batch, height, width = maps.shape
    rows, cols = height // cell, width // cell
    if rows < block or cols < block:
        raise ValueError(
            f"hog of maps {height} x {width} needs at least block * cell = {block * cell} pixels "
            f"in each direction (cell={cell}, block={block}): use smaller cells or "
            "similarity=('spearman', 'ssim')"
        )
    x = maps.to(torch.promote_types(maps.dtype, torch.float32))
    g_y = torch.zeros_like(x)
    g_x = torch.zeros_like(x)
    g_y[:, 1:-1] = x[:, 2:] - x[:, :-2]
    g_x[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = torch.hypot(g_x, g_y)
    theta = torch.rad2deg(torch.atan2(g_y, g_x)) % 180
    step = 180.0 / orientations
    edges = torch.tensor(
        [step * (k + 1) for k in range(orientations - 1)], dtype=x.dtype, device=x.device
    )
    bins = (theta[..., None] >= edges).sum(dim=-1)  # [B, H, W]
    votes = nn.functional.one_hot(bins, orientations).to(x.dtype) * magnitude[..., None]
    votes = votes[:, : rows * cell, : cols * cell]
    cells = votes.reshape(batch, rows, cell, cols, cell, orientations).mean(dim=(2, 4))
    blocks = cells.unfold(1, block, 1).unfold(2, block, 1)  # [B, R, C, n, block, block]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)  # [B, R, C, block, block, n]
    eps2 = 1e-5**2
    energy = (blocks * blocks).sum(dim=(3, 4, 5), keepdim=True)
    blocks = (blocks / torch.sqrt(energy + eps2)).clamp_max(0.2)
    energy = (blocks * blocks).sum(dim=(3, 4, 5), keepdim=True)
    return blocks / torch.sqrt(energy + eps2)


def _same_shape(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"explanations differ in shape: {list(a.shape)} and {list(b.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.detach().to(dtype), b.detach().to(dtype)


def _ssim_maps(phi: Tensor, name: str = "ssim") -> Tensor:
    """``|Phi|`` summed over channels (``[B, C, H, W]`` or ``[B, H, W]``), scaled to [0, 1]
    by each map's maximum (an all-zero map stays 0)."""
    if phi.ndim not in (3, 4):
        raise ValueError(
            f"similarity {name!r} needs 2-D maps [B, H, W] or [B, C, H, W], the explanation has "
            f"shape {list(phi.shape)}: use similarity=('spearman',)"
        )
    maps = phi.abs()
    maps = maps.sum(dim=1) if maps.ndim == 4 else maps
    top = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return maps / torch.where(top > 0, top, 1)


def similarities(original: Tensor, changed: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """``{name: [B]}``: each similarity of ``changed`` to ``original`` (both ``[B, ...]``);
    NaN for a sample whose explanations hold NaN or inf (never a number ranked from them)."""
    original, changed = _same_shape(original, changed)
    finite = torch.isfinite(original).flatten(1).all(1) & torch.isfinite(changed).flatten(1).all(1)
    if not bool(finite.all()):
        keep = finite.view(-1, *([1] * (original.ndim - 1)))
        values = {
            name: value.masked_fill(~finite, math.nan)
            for name, value in similarities(
                original.where(keep, 0), changed.where(keep, 0), names
            ).items()
        }
        return values
    out = {}
    for name in names:
        if name == "spearman":
            out[name] = spearman(original.abs(), changed.abs())
        elif name == "spearman_signed":
            out[name] = spearman(original, changed)
        elif name == "hog":
            features = [hog(_ssim_maps(phi, name)).flatten(1) for phi in (original, changed)]
            out[name] = pearson(*features)
        else:
            out[name] = ssim(_ssim_maps(original), _ssim_maps(changed))
    return out


def _check_similarity(similarity: Any) -> tuple[str, ...]:
    names = (similarity,) if isinstance(similarity, str) else similarity
    if not isinstance(names, Sequence) or not names:
        raise TypeError(f"similarity must be a name or a sequence of names, got {similarity!r}")
    for name in names:
        check_choice(name, "similarity", SIMILARITIES)
    return tuple(dict.fromkeys(names))


# --- randomising a copy -----------------------------------------------------------------------


def _copy_of(model: Any) -> tuple[nn.Module, str]:
    """A deep copy of the module inside any wrapper, and the wrapper's prefix."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (its layers are randomised), got {type(model).__name__}"
        )
    inner, prefix = unwrap(model)
    try:
        return copy.deepcopy(inner), prefix
    except Exception as err:
        raise TypeError(
            f"model cannot be deep-copied ({type(err).__name__}: {err}); the randomisation "
            "checks randomise a copy and never the model itself"
        ) from err


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def default_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters themselves, from the output down (reversed
    registration order, as Adebayo et al. and Quantus)."""
    return [name for name, m in model.named_modules() if _owns_parameters(m)][::-1]


def _check_layers(layers: Any, model: nn.Module, prefix: str) -> list[str]:
    if layers is None:
        names = default_layers(model)
        if not names:
            raise ValueError("model has no parameters: there is nothing to randomise")
        return names
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a non-empty sequence of module names, got {layers!r}")
    modules = dict(model.named_modules())
    names = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"layers must hold module names (str), got {name!r}")
        short = strip_prefix(name, prefix)
        module = modules.get(short)
        if module is None or short == "":
            raise ValueError(f"layers: no submodule {name!r} in the model")
        if not any(True for _ in module.parameters()):
            raise ValueError(f"layers: {name!r} has no parameters to randomise")
        names.append(short)
    return names


def _seed(generator: torch.Generator | None) -> int:
    """A seed for one layer's re-initialisation, drawn from ``generator`` (global RNG if None)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=_device(generator)))


def _device(generator: torch.Generator | None) -> torch.device:
    check_generator(generator)
    return torch.device("cpu") if generator is None else generator.device


@torch.no_grad()
def randomise_layer(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule of ``module`` that holds parameters: by its own
    ``reset_parameters()`` where it has one, else each parameter ``p <- N(0, std(p)^2)``
    (``std(p)`` of its current values, 1 for a single or constant value). The global random
    state is seeded with ``seed`` inside :func:`torch.random.fork_rng` and restored after."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in module.modules():
            if not _owns_parameters(m):
                continue
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in m.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 and math.isfinite(std) else 1.0)


def _state(module: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Every parameter and buffer of ``module`` with a copy of its values."""
    tensors = [*module.parameters(), *module.buffers()]
    return [(t, t.detach().clone()) for t in tensors]


@torch.no_grad()
def _restore(saved: list[tuple[Tensor, Tensor]]) -> None:
    for t, values in saved:
        t.copy_(values)


# --- explaining -------------------------------------------------------------------------------


def _explained(explain: ModelExplain, model: nn.Module, inputs: Tensor, target: Target) -> Tensor:
    phi = explain(model, inputs, target)
    if not isinstance(phi, Tensor):
        raise TypeError(
            f"explain must return a tensor of attributions [B, ...], got {type(phi).__name__}"
        )
    if phi.ndim == 0 or phi.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"explain returned shape {list(phi.shape)} for {inputs.shape[0]} samples: expected "
            "[B, ...]"
        )
    if phi.is_complex() or phi.dtype == torch.bool:
        raise TypeError(f"explain must return real attributions, got dtype {phi.dtype}")
    return phi.detach()


def _resolved_target(model: nn.Module, inputs: Tensor, target: Target) -> Target:
    """``target`` checked; None becomes the class the (unchanged copy of the) model predicts,
    so that every randomised model explains the same class."""
    target = normalize_target(target, inputs.shape[0], inputs.device)
    if target is None or isinstance(target, Tensor):
        with untouched(model, gradients=False), torch.no_grad():
            output = model(inputs)
        target = resolve_target(target, output)
    return target


def _check_common(explain: Any, inputs: Any) -> Tensor:
    if not callable(explain):
        raise TypeError(
            f"explain must be callable (model, inputs, target) -> attributions, got "
            f"{type(explain).__name__}"
        )
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor [B, ...], got {type(inputs).__name__}")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs has shape {list(inputs.shape)}: expected a batch [B, ...]")
    return inputs.detach()


@keywords()
def model_randomisation(
    explain: ModelExplain,
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    order: str = "cascading",
    layers: Sequence[str] | None = None,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
    generator: torch.Generator | None = None,
) -> Randomisation:
    """Model-parameter randomisation test (Adebayo et al. 2018), per layer and sample.

    For each layer ``l`` of ``layers`` in order (default: every module holding parameters,
    from the output down), explain a randomised copy of the model and compare with the original
    explanation ``Phi``:

        ``S[l, b] = sim(Phi_b, Phi_b^(l))``

    where ``Phi^(l)`` explains the copy with layers ``1..l`` re-initialised (``"cascading"``:
    the re-initialisations accumulate) or only layer ``l`` (``"independent"``: the others keep
    their trained values). ``sim`` is each name of ``similarity`` (see the module docstring);
    a sanity-passing explanation has low similarity once the top layers are random, one that
    ignores the model keeps 1.

    Args:
        explain: ``explain(model, inputs, target) -> Phi [B, ...]``, called with a copy of the
            model, e.g. ``lambda m, x, t: ta.saliency(m, x, t)``.
        model: an ``nn.Module`` (wrappers are unwrapped); never called or changed: a deep copy
            is explained and randomised (memory: one more model).
        inputs: ``[B, ...]`` as ``explain`` takes them.
        target: as in the methods; ``None`` is the class the trained model predicts, held for
            every randomised model (a callable target is passed through).
        order: ``"cascading"`` or ``"independent"``.
        layers: module names (with or without a wrapper's ``"module."`` prefix) in the order to
            randomise them; a module with submodules is randomised as a whole.
        similarity: names among ``"spearman"``, ``"spearman_signed"``, ``"ssim"``, ``"hog"``
            (the last two for 2-D maps; ``"hog"`` with the defaults of :func:`hog` needs maps
            of at least 24 x 24).
        generator: draws one seed per layer for its re-initialisation (global RNG if None).

    Returns:
        :class:`Randomisation`: ``layers``, ``similarity {name: [L, B]}``, ``original``.
        NaN where a similarity is undefined (a constant explanation for Spearman).

    Example::

        out = model_randomisation(lambda m, x, t: ta.saliency(m, x, t), model, images)
        out.similarity["spearman"].mean(1)  # [L]: falls as layers are randomised
    """
    x = _check_common(explain, inputs)
    check_choice(order, "order", ORDERS)
    names = _check_similarity(similarity)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    copied, prefix = _copy_of(model)
    chosen = _check_layers(layers, copied, prefix)
    target = _resolved_target(copied, x, target)
    original = _explained(explain, copied, x, target)
    modules = dict(copied.named_modules())
    rows: dict[str, list[Tensor]] = {name: [] for name in names}
    for layer in chosen:
        module = modules[layer]
        saved = _state(module) if order == "independent" else None
        randomise_layer(module, _seed(generator))
        changed = _explained(explain, copied, x, target)
        for name, value in similarities(original, changed, names).items():
            rows[name].append(value)
        if saved is not None:
            _restore(saved)
    return Randomisation(
        tuple(chosen), {name: torch.stack(v) for name, v in rows.items()}, original
    )


@keywords()
def random_logit(
    explain: ModelExplain,
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
    generator: torch.Generator | None = None,
) -> RandomLogit:
    """Random-logit test (Sixt et al. 2020): the similarity of the explanation of a random
    other class to that of the target, per sample: ``{name: [B]}``.

    Each sample's other class is drawn uniformly from the ``C - 1`` classes other than its
    target (``C`` read from the model's output). Lower is better: an explanation that does not
    depend on the class scores 1.

    Args:
        explain, model, inputs, similarity: as in :func:`model_randomisation` (a deep copy of
            the model is explained).
        target: class indices ``[B]`` or an int; None: the predicted class.
        generator: draws the other classes (global RNG if None).

    Example::

        out = random_logit(lambda m, x, t: ta.saliency(m, x, t), model, images, labels)
        out.classes, out.similarity["ssim"]   # [B] other classes, [B] similarities
    """
    x = _check_common(explain, inputs)
    names = _check_similarity(similarity)
    copied, _ = _copy_of(model)
    target = normalize_target(target, x.shape[0], x.device)
    if callable(target) or (isinstance(target, Tensor) and target.ndim != 1):
        raise ValueError("random_logit needs one class index per sample: target None, int or [B]")
    with untouched(copied, gradients=False), torch.no_grad():
        output = copied(x)
    target = resolve_target(target, output)
    classes = logits_of(output).shape[-1]
    if logits_of(output).ndim != 2 or classes < 2:
        raise ValueError(
            f"random_logit needs [B, C] outputs with C >= 2 classes, got "
            f"{list(logits_of(output).shape)}"
        )
    shift = torch.randint(
        1, classes, (x.shape[0],), generator=generator, device=_device(generator)
    ).to(target.device)
    other = (target + shift) % classes  # uniform over the C - 1 other classes
    original = _explained(explain, copied, x, target)
    changed = _explained(explain, copied, x, other)
    return RandomLogit(other, similarities(original, changed, names), original)


def permuted_labels(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The training labels of the data randomisation test: ``labels[pi]`` for a uniform random
    permutation ``pi`` (so the class frequencies are kept and the labels carry no information
    about the inputs). ``labels``: ``[N]`` (or ``[N, ...]``, permuted along the first
    dimension); the permutation is drawn from ``generator`` (global RNG if None).

    Example::

        shuffled = permuted_labels(train_labels, torch.Generator().manual_seed(0))
        random_model = my_training_loop(train_images, shuffled)   # the user's own training
    """
    if not isinstance(labels, Tensor) or labels.ndim == 0:
        raise TypeError(f"labels must be a tensor [N, ...], got {type(labels).__name__}")
    order = torch.randperm(labels.shape[0], generator=generator, device=_device(generator))
    return labels[order.to(labels.device)]


@keywords()
def data_randomisation(
    explain: ModelExplain,
    model: nn.Module,
    randomised_model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
) -> DataRandomisation:
    """Data randomisation test (Adebayo et al. 2018): the similarity of the explanations of a
    model and of the same architecture trained on permuted labels, per sample: ``{name: [B]}``.

        ``S[b] = sim(Phi_b(model), Phi_b(randomised_model))``

    A model trained on permuted labels can only memorise them: an explanation that still looks
    the same (high similarity) does not depend on the relation between inputs and labels that
    the model learned. Lower is better.

    torchattr does not train: training is the user's (same architecture, data, schedule and
    number of steps, only the labels replaced by :func:`permuted_labels`; Adebayo et al. train
    until the random labels are fit, the training accuracy being well above chance). Both
    models are deep-copied before they are explained, so neither is changed.

    Args:
        explain: ``explain(model, inputs, target) -> Phi [B, ...]``, as in
            :func:`model_randomisation`.
        model: the model trained on the true labels.
        randomised_model: the model trained on permuted labels; its outputs must have the
            model's shape.
        inputs: ``[B, ...]``, held-out samples as ``explain`` takes them.
        target: class indices ``[B]`` or an int, explained in both models; None: the class the
            trained model predicts (the label-permuted model's own prediction is arbitrary).
        similarity: names among ``"spearman"``, ``"spearman_signed"``, ``"ssim"``, ``"hog"``.

    Returns:
        :class:`DataRandomisation`: ``similarity {name: [B]}``, ``original``, ``randomised``
        explanations and the ``classes [B]`` explained. NaN where a similarity is undefined.

    Example::

        out = data_randomisation(lambda m, x, t: ta.saliency(m, x, t), model, random_model, x)
        out.similarity["spearman"].mean()   # near 1: the explanation ignores what was learned
    """
    x = _check_common(explain, inputs)
    names = _check_similarity(similarity)
    trained, _ = _copy_of(model)
    randomised, _ = _copy_of(randomised_model)
    target = normalize_target(target, x.shape[0], x.device)
    if callable(target) or (isinstance(target, Tensor) and target.ndim != 1):
        raise ValueError(
            "data_randomisation explains one class index per sample: target None, int or [B]"
        )
    with torch.no_grad():
        with untouched(trained, gradients=False):
            output = trained(x)
        with untouched(randomised, gradients=False):
            other = randomised(x)
    if logits_of(output).shape != logits_of(other).shape:
        raise ValueError(
            f"randomised_model outputs {list(logits_of(other).shape)} but model "
            f"{list(logits_of(output).shape)}: expected the same architecture and classes"
        )
    classes = resolve_target(target, output)
    original = _explained(explain, trained, x, classes)
    changed = _explained(explain, randomised, x, classes)
    return DataRandomisation(similarities(original, changed, names), original, changed, classes)

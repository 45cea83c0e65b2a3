"""Robustness and faithfulness of explanations, from perturbed copies of the inputs.

* :func:`max_sensitivity` (Yeh et al. 2019): how much an explanation changes under small
  uniform perturbations of the input, relative to its size (lower is better);
* :func:`infidelity` (Yeh et al. 2019): how far the attributions' prediction of the score drop
  under random perturbations is from the real drop (lower is better);
* :func:`faithfulness_correlation` (Bhatt et al. 2020): the correlation, over random subsets of
  features, between the attributions' sum and the score drop when the subset is removed
  (higher is better).

As in :mod:`torchattr.metrics.perturbation`, the ``samples x B`` perturbed copies are laid out
copy-major and go through the model (or the explanation) ``chunk_size`` rows at a time; the
random draws are made per copy, in copy order, so the results do not depend on ``chunk_size``.
Scores follow the target conventions (*Conventions > Targets* in the docs), ``target=None`` being
the class predicted on the clean inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import check_finite, check_positive_int, check_scale, keywords
from torchattr._core.chunking import CopyDraws, build_rows, row_index, row_ranges, stack_draws
from torchattr._core.inputs import Inputs, flatten
from torchattr._core.progress import Progress, check_progress, reported
from torchattr._core.targets import Target, normalize_target
from torchattr.metrics._shared import (
    Packed,
    _check_chunk_size,
    _rand,
    _randn,
    _scoring,
    check_score,
    pack_inputs,
)

__all__ = ["faithfulness_correlation", "infidelity", "max_sensitivity"]

Explain = Callable[[Any, Any], Any]


@keywords(renamed={"batch_size": "chunk_size"})
def max_sensitivity(
    explain: Explain,
    inputs: Inputs,
    *,
    target: Target = None,
    radius: float = 0.02,
    samples: int = 10,
    perturbation: Callable[[Any, torch.Generator | None], Any] | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress = False,
) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019) of an explanation, per sample: ``[B]``.

        ``SENS_max(x) = max_s ||Phi(x + delta_s) - Phi(x)|| / ||Phi(x)||``

    over ``samples`` perturbations ``delta_s`` drawn uniformly from the ball
    ``||delta||_inf <= radius`` (``delta = radius * (2 U - 1)``, ``U ~ U[0, 1)`` elementwise,
    one ``[B, ...]`` draw per sample, in order), or ``perturbation(inputs, generator)`` called
    once per sample, with ``||.||`` the Frobenius norm over all dimensions of one sample's
    explanation (over all its entries for tuple / dict explanations, as Captum's
    ``sensitivity_max``). 0 for an explanation that does not move; where
    ``Phi(x) = 0`` the ratio is 0 if the perturbed explanations are 0 too and ``inf`` if not.

    Args:
        explain: ``explain(x, target) -> Phi`` for rows ``x [N, ...]`` and their targets
            (``target[rows]`` for a LongTensor target, else ``target`` itself), returning
            explanations ``[N, ...]``; e.g. ``functools.partial(ta.saliency, model)`` or
            ``lambda x, t: ta.integrated_gradients(model, x, target=t)``. It is called on at
            most ``chunk_size`` rows at a time.
        inputs: ``[B, ...]``, floating point; or a tuple / dict of such tensors (each
            perturbed, given to ``explain`` in the same structure, which may return a tensor or
            a tuple / dict of explanations ``[N, ...]``). The default draw of tuple / dict
            inputs is one ``[B, F]`` draw over the entries flattened and concatenated.
        target: passed to ``explain`` (row by row for a LongTensor ``[B]``). ``None`` lets
            ``explain`` decide: torchattr's methods then explain each perturbed copy's own
            predicted class; pass ``model(inputs).argmax(1)`` to hold the clean prediction.
        radius: half-width of the uniform perturbation, in the inputs' units.
        samples: number of perturbations.
        perturbation: None (the uniform draw above) or ``perturbation(inputs, generator) ->
            delta`` in the inputs' structure and shapes, called once per sample (``radius``
            is then unused).
        chunk_size: rows per ``explain`` call (default B).
        generator: draws the perturbations (on its device).
        progress: True for a tqdm bar (when installed and stderr is a terminal) or a callable
            ``(done, total)`` called after each ``explain`` call with the perturbed rows done
            (``total = samples B``).

    Returns:
        ``[B]``, float32 (float64 for float64 explanations).

    Example::

        sens = max_sensitivity(functools.partial(ta.saliency, model), images, radius=0.02)
    """
    if not callable(explain):
        raise TypeError(f"explain must be callable (x, target) -> Phi, got {type(explain)}")
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    _check_number(radius, "radius", positive=True)
    _check_perturbation(perturbation)
    if packed is not None:
        explain = _packed_explain(explain, packed)
    samples = check_positive_int(samples, "samples")
    check_progress(progress)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)
    target = normalize_target(target, batch, x.device)  # None and callables pass through
    clean = torch.cat(
        [
            _explained(explain, x[a:b], _rows_of(target, slice(a, b)), b - a)
            for a, b in row_ranges(batch, chunk_size)
        ]
    )
    clean_norm = clean.flatten(1).norm(dim=1)

    def draw() -> Tensor:
        if perturbation is None:
            return radius * (2 * _rand(tuple(x.shape), x.dtype, x.device, generator) - 1)
        return _perturbation(perturbation, x, packed, generator)

    draws = CopyDraws(draw)
    worst = torch.zeros(batch, dtype=clean_norm.dtype, device=x.device)
    rows = samples * batch
    ranges = reported(row_ranges(rows, chunk_size), progress, rows, "max-sensitivity")
    for start, stop in ranges:
        _, sample = row_index(start, stop, batch, x.device)
        noisy = build_rows(start, stop, batch, lambda c, s: x[s] + stack_draws(draws, c, s))
        moved = _explained(explain, noisy, _rows_of(target, sample), stop - start)
        if moved.shape[1:] != clean.shape[1:]:
            raise ValueError(
                f"explain returned {list(moved.shape)} for perturbed rows but {list(clean.shape)} "
                "for the inputs: explanations must keep their shape"
            )
        change = (moved - clean[sample]).flatten(1).norm(dim=1).to(worst.dtype)
        worst.scatter_reduce_(0, sample, change, reduce="amax")
    ratio = worst / torch.where(clean_norm > 0, clean_norm, 1)
    return torch.where(clean_norm > 0, ratio, torch.where(worst > 0, torch.inf, 0.0))


@keywords(renamed={"noise": "sigma", "batch_size": "chunk_size"})
def infidelity(
    model: Callable[..., Any],
    inputs: Inputs,
    attributions: Inputs,
    target: Target = None,
    *,
    samples: int = 10,
    sigma: float = 0.1,
    perturbation: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
    normalize: bool = False,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    score: str = "logit",
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor:
    """Infidelity (Yeh et al. 2019), per sample: ``[B]``.

        ``INFD(Phi, f, x) = mean_s (sum(Phi * I_s) - (f(x) - f(x - I_s)))^2``

    over ``samples`` perturbations ``I_s``: by default ``sigma * N(0, 1)`` elementwise (one
    ``[B, ...]`` draw per sample, in order), or ``perturbation(inputs, generator)`` called once
    per sample and returning ``I [B, ...]`` shaped like the inputs (in their structure). ``f``
    is the model's score for the target (``score="logit"``, the default: the output;
    ``"softmax"``: after a softmax over the classes, a sigmoid for one logit; ``"sigmoid"``:
    after a sigmoid per output; ``"probability"`` is the deprecated name of ``"softmax"``). 0
    means the attributions predict every score drop exactly: the gradient of a linear model has
    infidelity 0 under any perturbation.

    With ``normalize=True`` the attributions are first rescaled by the best factor
    ``beta = mean_s(a_s b_s) / mean_s(a_s^2)`` (``a_s = sum(Phi * I_s)``, ``b_s`` the drop), as
    Captum's ``normalize``: the score then ignores the attributions' scale.

    Args:
        model: maps rows ``[N, ...]`` to outputs ``[N, classes]`` (or ``[N]``).
        inputs: ``[B, ...]``, floating point; or a tuple (positional arguments) or dict (keyword
            arguments) of such tensors, as Captum's ``infidelity``: every entry is perturbed,
            and sums run over all entries. The default draw of tuple / dict inputs is one
            ``[B, F]`` draw over the entries flattened and concatenated.
        attributions: shaped like the inputs, or ``[B, H, W]`` maps of ``[B, C, H, W]`` inputs
            (then shared by the channels: ``sum(Phi * I) = sum_{c,h,w} Phi_hw I_chw``); for
            tuple / dict inputs the same structure, each entry shaped like its input.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        samples, sigma, perturbation: the perturbations, see above (``sigma``: a standard
            deviation in the inputs' units; ``noise`` is its deprecated former name).
        chunk_size: rows per model call (default B).
        forward_kwargs: keyword arguments passed to every model call (tensors with leading
            dimension B follow their sample into the perturbed copies).
        generator: draws the default perturbations and is passed to ``perturbation``.
        progress: True for a tqdm bar (when installed and stderr is a terminal) or a callable
            ``(done, total)`` called after each model call with the perturbed rows done
            (``total = samples B``).

    Returns:
        ``[B]``, non-negative.

    Example::

        infd = infidelity(model, images, ta.saliency(model, images, abs=False, reduce=None))
    """
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    phi = _check_attributions(attributions, x, packed)
    samples = check_positive_int(samples, "samples")
    check_progress(progress)
    sigma = check_scale(sigma, "sigma")
    if sigma == 0:
        raise ValueError("sigma must be > 0, got 0")
    _check_perturbation(perturbation)
    batch = x.shape[0]
    chunk_size = _check_chunk_size(chunk_size, batch)

    def draw() -> Tensor:
        if perturbation is None:
            return sigma * _randn(tuple(x.shape), x.dtype, x.device, generator)
        return _perturbation(perturbation, x, packed, generator)

    draws = CopyDraws(draw)
    predicted = torch.zeros(samples * batch, dtype=torch.float64, device=x.device)
    drop = torch.zeros_like(predicted)
    score = check_score(score)
    with _scoring(model, x, target, score, chunk_size, forward_kwargs, packed) as scorer:
        rows = samples * batch
        for start, stop in reported(row_ranges(rows, chunk_size), progress, rows, "infidelity"):
            _, sample = row_index(start, stop, batch, x.device)
            shift = build_rows(start, stop, batch, lambda c, s: stack_draws(draws, c, s))
            predicted[start:stop] = (phi[sample] * shift).flatten(1).sum(dim=1).double()
            drop[start:stop] = (scorer.clean[sample] - scorer(x[sample] - shift, sample)).double()
    a, b = predicted.reshape(samples, batch), drop.reshape(samples, batch)
    if normalize:
        energy = (a * a).mean(dim=0)
        beta = torch.where(energy > 0, (a * b).mean(dim=0) / torch.where(energy > 0, energy, 1), 0)
        a = beta * a
    return ((a - b) ** 2).mean(dim=0).to(_result_dtype(phi))


@keywords(renamed={"batch_size": "chunk_size"})
def faithfulness_correlation(
    model: Callable[..., Any],
    inputs: Inputs,
    attributions: Inputs,
    target: Target = None,
    *,
    subset_size: int | None = None,
    runs: int = 100,
    baseline: float | Tensor = 0.0,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    score: str = "logit",
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), per sample: ``[B]`` in [-1, 1].

        ``mu_F = corr_S( sum_{i in S} Phi_i , f(x) - f(x_[x_S = baseline]) )``

    the Pearson correlation over ``runs`` random subsets ``S`` of ``subset_size`` features
    (drawn uniformly without replacement, independently per sample and run) between the
    attributions' sum over the subset and the score drop when the subset is set to the
    baseline. A feature is an element of the attributions: with maps ``[B, H, W]`` of
    ``[B, C, H, W]`` inputs, a pixel (all its channels). Input x gradient of a linear model with
    a zero baseline scores exactly 1. NaN where the attribution sums or the drops do not vary.

    Args:
        model: maps rows ``[N, ...]`` to outputs ``[N, classes]`` (or ``[N]``).
        inputs: ``[B, ...]``, floating point; or a tuple / dict of such tensors, whose
            elements together are the features (subsets drawn across all entries).
        attributions: shaped like the inputs, or ``[B, H, W]`` maps of ``[B, C, H, W]`` inputs;
            for tuple / dict inputs the same structure, each entry shaped like its input.
        target: None (the class predicted on the clean inputs), an int, a LongTensor ``[B]`` or
            a callable.
        subset_size: features per subset (default: 10% of them, at least 1).
        runs: number of subsets (>= 2).
        baseline: the value removed features take: a number, or a tensor broadcastable to the
            inputs (tuple / dict inputs: a number, or that structure of tensors each
            broadcastable to its entry).
        chunk_size: rows per model call (default B).
        generator: draws the subsets: ``rand([B, F])`` per run, the subset being the
            ``subset_size`` largest draws.
        score: ``"logit"`` (the default), ``"softmax"`` or ``"sigmoid"`` (per output); see
            :func:`~torchattr.metrics.infidelity`.
        forward_kwargs: keyword arguments passed to every model call (see :func:`infidelity`).
        progress: True for a tqdm bar (when installed and stderr is a terminal) or a callable
            ``(done, total)`` called after each model call with the rows done
            (``total = runs B``).

    Returns:
        ``[B]``, float32 (float64 for float64 attributions).

    Example::

        mu = faithfulness_correlation(model, images, ta.input_x_gradient(model, images))
    """
    x, packed = pack_inputs(inputs)
    x = _check_inputs(x)
    phi = _check_attributions(attributions, x, packed)
    runs = check_positive_int(runs, "runs", minimum=2)
    check_progress(progress)
    batch = x.shape[0]
    features = phi[0].numel()
    if subset_size is None:
        subset_size = max(1, round(0.1 * features))
    subset_size = check_positive_int(subset_size, "subset_size")
    if subset_size > features:
        raise ValueError(
            f"subset_size is {subset_size} but the attributions have {features} features per sample"
        )
    fill = _check_baseline(baseline, x, packed)
    chunk_size = _check_chunk_size(chunk_size, batch)

    def draw() -> Tensor:
        keys = _rand((batch, features), torch.float32, x.device, generator)
        chosen = keys.topk(subset_size, dim=1).indices
        return torch.zeros(batch, features, dtype=torch.bool, device=x.device).scatter_(
            1, chosen, True
        )

    draws = CopyDraws(draw)
    summed = torch.zeros(runs * batch, dtype=torch.float64, device=x.device)
    drop = torch.zeros_like(summed)
    score = check_score(score)
    with _scoring(model, x, target, score, chunk_size, forward_kwargs, packed) as scorer:
        rows = runs * batch
        ranges = reported(row_ranges(rows, chunk_size), progress, rows, "faithfulness")
        for start, stop in ranges:
            _, sample = row_index(start, stop, batch, x.device)
            subset = build_rows(start, stop, batch, lambda c, s: stack_draws(draws, c, s))
            subset = subset.reshape(stop - start, *phi.shape[1:])
            summed[start:stop] = (phi[sample] * subset).flatten(1).sum(dim=1).double()
            removed = torch.where(subset, fill[sample], x[sample])
            drop[start:stop] = (scorer.clean[sample] - scorer(removed, sample)).double()
    return _pearson(summed.reshape(runs, batch), drop.reshape(runs, batch)).to(_result_dtype(phi))


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation over dim 0 of ``[R, B]`` pairs; NaN where either does not vary."""
    a = a - a.mean(dim=0)
    b = b - b.mean(dim=0)
    scale = (a * a).sum(dim=0).sqrt() * (b * b).sum(dim=0).sqrt()
    return torch.where(scale > 0, (a * b).sum(dim=0) / torch.where(scale > 0, scale, 1), torch.nan)


def _explained(explain: Explain, rows: Tensor, target: Any, n: int) -> Tensor:
    """``explain(rows, target)``, checked to be ``[n, ...]``, detached, in at least float32."""
    out = explain(rows, target)
    if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != n:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"explain returned {shape}: expected explanations [N, ...] with N = {n}")
    out = out.detach()
    return out.to(torch.promote_types(out.dtype, torch.float32))


def _rows_of(target: Target, rows: Tensor | slice) -> Target:
    """The target of some rows: indexed for a tensor target, else as it is."""
    return target[rows] if isinstance(target, Tensor) else target


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor [B, ...], got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs has shape {list(inputs.shape)}: expected a batch [B, ...]")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs has dtype {inputs.dtype}: expected floating point")
    check_finite([inputs], ["inputs"])
    return inputs.detach()


def _check_perturbation(perturbation: Any) -> None:
    if perturbation is not None and not callable(perturbation):
        raise TypeError(
            f"perturbation must be callable (inputs, generator) -> I, got {perturbation!r}"
        )


def _perturbation(
    perturbation: Callable[..., Any], x: Tensor, packed: Packed | None, generator: Any
) -> Tensor:
    """``perturbation(inputs, generator)``, checked to be shaped like the inputs (in their
    structure for tuple / dict inputs), as a tensor shaped like ``x`` (packed)."""
    out = perturbation(x if packed is None else packed.structured(x), generator)
    if packed is not None:
        out = packed.pack(out, "the perturbation", x.dtype)
    elif not isinstance(out, Tensor) or out.shape != x.shape:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"perturbation returned {shape}: expected a tensor shaped like inputs, {list(x.shape)}"
        )
    out = out.to(device=x.device, dtype=x.dtype)
    check_finite([out], ["the perturbation"])
    return out


def _packed_explain(explain: Explain, packed: Packed) -> Explain:
    """``explain`` on packed rows: the rows in the user's structure, the explanations (a tensor,
    tuple or dict of ``[N, ...]``) flattened per row and concatenated, ``[N, G]``."""

    def packed_explain(rows: Tensor, target: Any) -> Tensor:
        out = explain(packed.structured(rows), target)
        if isinstance(out, Tensor):
            return out
        tensors, spec = flatten(out, "the explanations")
        for label, t in zip(spec.names(), tensors):
            if t.ndim == 0 or t.shape[0] != rows.shape[0]:
                raise ValueError(
                    f"explain returned {label.replace('inputs', 'explanations', 1)} of shape "
                    f"{list(t.shape)}: expected [N, ...] with N = {rows.shape[0]}"
                )
        dtype = torch.float32
        for t in tensors:
            dtype = torch.promote_types(dtype, t.dtype)
        return torch.cat([t.reshape(t.shape[0], -1).to(dtype) for t in tensors], dim=1)

    return packed_explain


def _check_attributions(attributions: Any, inputs: Tensor, packed: Packed | None = None) -> Tensor:
    """Attributions broadcastable to the inputs: their shape, or ``[B, 1, ...]`` for maps; for
    packed tuple / dict inputs, the same structure and shapes, packed ``[B, F]``."""
    if packed is not None:
        tensors, _ = flatten(attributions, "attributions")
        dtype = torch.float32
        for t in tensors:
            if t.is_floating_point():
                dtype = torch.promote_types(dtype, t.dtype)
        phi = packed.pack(attributions, "attributions", dtype).to(inputs.device)
        check_finite([phi], ["attributions"])
        return phi
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
    if not attributions.is_floating_point():
        raise TypeError(f"attributions has dtype {attributions.dtype}: expected floating point")
    phi = attributions.detach().to(inputs.device)
    phi = phi.to(torch.promote_types(phi.dtype, torch.float32))
    check_finite([phi], ["attributions"])
    if phi.shape == inputs.shape:
        return phi
    if inputs.ndim >= 3 and phi.shape == (inputs.shape[0], *inputs.shape[2:]):
        return phi.unsqueeze(1)
    raise ValueError(
        f"attributions has shape {list(attributions.shape)} but inputs has "
        f"{list(inputs.shape)}: expected the inputs' shape, or [B, H, W] maps of [B, C, H, W] "
        "inputs"
    )


def _check_baseline(baseline: Any, inputs: Tensor, packed: Packed | None = None) -> Tensor:
    if isinstance(baseline, bool):
        raise TypeError("baseline must be a number or a tensor, got a bool")
    if isinstance(baseline, (int, float)):
        baseline = torch.tensor(float(baseline))
    elif packed is not None:
        out = packed.pack(baseline, "baseline", inputs.dtype, broadcast=True).to(inputs.device)
        check_finite([out], ["baseline"])
        return out
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
    baseline = baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
    check_finite([baseline], ["baseline"])
    try:
        return torch.broadcast_to(baseline, inputs.shape)
    except RuntimeError:
        raise ValueError(
            f"baseline has shape {list(baseline.shape)}: expected a tensor broadcastable to "
            f"inputs {list(inputs.shape)}"
        ) from None


def _check_number(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name} must be a number, got {value!r}")
    if positive and not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _result_dtype(phi: Tensor) -> torch.dtype:
    return torch.float64 if phi.dtype == torch.float64 else torch.float32

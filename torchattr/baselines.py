"""Baselines for the path methods: small pure functions returning a tensor shaped like the inputs.

Pass the result as ``baseline=`` (``integrated_gradients``, ``guided_integrated_gradients``,
``idgi``) or, stacked, as ``references=`` (``expected_gradients``)::

    base = ta.baselines.blurred(images, sigma=10)
    attributions = ta.integrated_gradients(model, images, labels, baseline=base)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import check_finite, check_scale
from torchattr._core.chunking import draw
from torchattr._core.paths import gaussian_blur

__all__ = ["black", "blurred", "training_mean", "uniform_noise", "zeros"]


def zeros(inputs: Tensor) -> Tensor:
    """All zeros, shaped like ``inputs`` (the black image of normalised-to-[0, 1] inputs).

    Example::

        attributions = ta.integrated_gradients(model, x, baseline=ta.baselines.zeros(x))
    """
    return torch.zeros_like(_tensor(inputs, "inputs"))


def black(inputs: Tensor, value: float = 0.0) -> Tensor:
    """The constant ``value`` everywhere (black: the smallest pixel value, 0 for [0, 1] images;
    for mean/std-normalised images pass ``value=-mean/std`` per channel as a tensor via
    ``torch.full_like`` instead).

    Example::

        base = ta.baselines.black(x, value=-1.0)       # images scaled to [-1, 1]
    """
    x = _tensor(inputs, "inputs")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"value must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"value is {value}: expected a finite number")
    return torch.full_like(x, float(value))


def blurred(inputs: Tensor, sigma: float = 10.0) -> Tensor:
    """``inputs`` blurred by a Gaussian of standard deviation ``sigma`` pixels over the last two
    dimensions (``[B, C, H, W]``), reflecting edges; the start of Blur IG's path.

    Example::

        base = ta.baselines.blurred(images, sigma=10)  # [B, C, H, W], like images
    """
    x = _tensor(inputs, "inputs")
    sigma = check_scale(sigma, "sigma")
    if x.ndim < 4:  # [B, C, L] signals would be blurred across their channels
        raise ValueError(
            f"inputs has shape {list(x.shape)}: blurring needs images [B, C, H, W] (two spatial "
            "dimensions after the channels)"
        )
    return gaussian_blur(x.detach(), sigma).clone()  # never a view of the inputs (sigma = 0)


def uniform_noise(
    inputs: Tensor,
    low: float = 0.0,
    high: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Independent ``U(low, high)`` values shaped like ``inputs`` (drawn on the generator's
    device and moved, so a seeded CPU generator gives the same numbers on every device).

    Example::

        base = ta.baselines.uniform_noise(x, generator=torch.Generator().manual_seed(0))
    """
    x = _tensor(inputs, "inputs")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"uniform_noise needs finite low < high, got low={low}, high={high}")
    u = draw(torch.rand, tuple(x.shape), x.dtype, x.device, generator)
    return low + (high - low) * u


def training_mean(inputs: Tensor, data: Tensor | Iterable[Any]) -> Tensor:
    """The mean training sample, broadcast to ``inputs``' shape.

    ``data``: a tensor ``[N, ...]`` of training samples, or an iterable of batches (a
    ``DataLoader``) yielding tensors ``[n, ...]`` or tuples / lists / dicts whose first entry
    (``"inputs"``/``"image"`` key, else the first value) is that tensor. The mean is accumulated
    in float64 (one pass, any number of batches) and returned in ``inputs``' dtype and device.

    Example::

        base = ta.baselines.training_mean(x, train_loader)   # [B, ...], every row the mean
    """
    x = _tensor(inputs, "inputs")
    total: Tensor | None = None
    count = 0
    batches = [data] if isinstance(data, Tensor) else data
    for batch in batches:
        batch = _first_tensor(batch)
        if batch.ndim != x.ndim or batch.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"training data has samples of shape {list(batch.shape[1:])}: expected "
                f"{list(x.shape[1:])} (one sample of inputs)"
            )
        part = batch.detach().to(torch.float64).sum(0)
        total = part if total is None else total + part.to(total.device)
        count += batch.shape[0]
    if total is None or count == 0:
        raise ValueError("training data is empty: expected at least one sample")
    mean = (total / count).to(device=x.device, dtype=x.dtype)
    check_finite([mean], ["training mean"])
    return mean.expand(x.shape).clone()


def _first_tensor(batch: Any) -> Tensor:
    if isinstance(batch, dict):
        for key in ("inputs", "image", "images", "x"):
            if key in batch:
                return _tensor(batch[key], f"training batch[{key!r}]")
        batch = next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    return _tensor(batch, "training batch")


def _tensor(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {value.dtype}")
    return value

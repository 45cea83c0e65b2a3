"""Blur Integrated Gradients (Xu, Venugopalan, Sundararajan 2020)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchattr._core.checks import (
    check_chunk_size,
    check_positive_int,
    check_scale,
    keywords,
)
from torchattr._core.inputs import InputsT
from torchattr._core.memory import check_memory_budget
from torchattr._core.paths import run_path
from torchattr._core.progress import Progress, check_progress
from torchattr._core.targets import Target


@keywords()
def blur_integrated_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    max_sigma: float = 50.0,
    steps: int = 64,
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
) -> Any:
    """Blur IG: the path integral of the gradient through Gaussian scale space.

    The path ``p(a) = G_{sigma(a)} * x``, ``sigma(a) = max_sigma sqrt(1 - a)`` (uniform in the
    heat equation's time), runs from the blurred image (``a = 0``, ``sigma = max_sigma``
    pixels) to ``x`` (``a = 1``). With knots ``a_k = k / n``:

        ``A = sum_k d s / d x (p((a_k + a_{k+1}) / 2)) * (p(a_{k+1}) - p(a_k))``

    so ``sum(A) ~ s(x) - s(G_{max_sigma} * x)`` (completeness for the path's endpoints, error
    O(1/n^2) for smooth models). The blur acts on the last two dimensions of ``[B, C, H, W]``
    images, zero outside the image as the authors' reference (``scipy.ndimage.gaussian_filter``
    with ``mode="constant"``), so ``p(0)`` is near black; inputs with fewer than 4 dimensions
    (a ``[B, C, L]`` signal would be blurred across its channels) and ``layer=`` are refused.
    Shapes: like the inputs (``[B, K, ...]`` for a ``[B, K]`` target), in at least float32.
    The ``n x B`` midpoints go through the model in ``chunk_size`` rows. ``return_delta=True``
    also returns ``sum(A) - (s(x) - s(p(0)))`` ``[B]`` (``[B, K]``).

    Example::

        attributions, delta = ta.blur_integrated_gradients(model, images, labels,
                                                           max_sigma=20, return_delta=True)
    """
    max_sigma = check_scale(max_sigma, "max_sigma")
    if max_sigma == 0:
        raise ValueError("max_sigma must be > 0: a path from x to x has no length")
    steps = check_positive_int(steps, "steps")
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    check_progress(progress)
    return run_path(
        model,
        inputs,
        target,
        path="blur",
        steps=steps,
        max_sigma=max_sigma,
        chunk_size=chunk_size,
        return_delta=return_delta,
        forward_kwargs=forward_kwargs,
        progress=progress,
        memory_budget=memory_budget,
    )

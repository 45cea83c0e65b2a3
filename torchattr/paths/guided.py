"""Guided Integrated Gradients (Kapishnikov, Venugopalan, Avci, Wedin, Terry, Birdal 2021)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchattr._core.checks import check_chunk_size, check_positive_int, keywords
from torchattr._core.inputs import InputsT
from torchattr._core.paths import check_unit, run_path
from torchattr._core.progress import Progress, check_progress
from torchattr._core.targets import Target


@keywords()
def guided_integrated_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    baseline: Any = None,
    steps: int = 128,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Any:
    """Guided IG: an adaptive path that first moves the features with the smallest ``|gradient|``.

    From the baseline ``x'``, step k (``a = (k + 1) / n``) takes the gradient ``g_k`` at the
    current point ``p_k`` once and moves features towards ``x`` until ``|p - x|_1 =
    (1 - a) |x - x'|_1``: each pass moves the ``fraction`` of not-yet-moved features with the
    smallest ``|g_k|``, and no feature strays more than ``max_dist`` (in units of a) from the
    straight line's position. ``A = sum_k g_k * (p_{k+1} - p_k)``, so ``sum(A) ~ s(x) - s(x')``
    (the path starts at ``x'`` and its last step ends at ``x``). Follows the PAIR saliency
    algorithm description; samples move independently (per-sample quantiles and distances),
    batched: each step is one forward and backward of the B samples (``chunk_size`` rows per
    call; ``"auto"`` and None: all at once). The steps are sequential: ``steps`` B-row passes.

    ``baseline``, ``layer``, ``mask`` and ``forward_kwargs`` as in
    :func:`torchattr.integrated_gradients` (with ``layer=`` the path runs in embedding space and
    each id gets the sum over its embedding; masked positions never move and get zero). A
    ``[B, K]`` target runs the K class paths one after another (the path depends on the class)
    and gives ``[B, K, ...]``. ``return_delta=True`` also returns
    ``sum(A) - (s(x) - s(x'))`` ``[B]`` (``[B, K]``).

    Example::

        attributions = ta.guided_integrated_gradients(model, images, labels, steps=64)
    """
    steps = check_positive_int(steps, "steps")
    fraction, max_dist = check_unit(fraction, "fraction"), check_unit(max_dist, "max_dist")
    chunk_size = check_chunk_size(chunk_size)
    check_progress(progress)
    return run_path(
        model,
        inputs,
        target,
        path="guided",
        baseline=baseline,
        steps=steps,
        fraction=fraction,
        max_dist=max_dist,
        chunk_size=chunk_size,
        return_delta=return_delta,
        layer=layer,
        mask=mask,
        forward_kwargs=forward_kwargs,
        progress=progress,
    )

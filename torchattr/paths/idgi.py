"""IDGI: Important Direction Gradient Integration (Yang, Wang, Bilen 2023)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchattr._core.checks import (
    check_choice,
    check_chunk_size,
    check_positive_int,
    check_scale,
    keywords,
)
from torchattr._core.inputs import InputsT
from torchattr._core.memory import check_memory_budget
from torchattr._core.paths import check_unit, run_path
from torchattr._core.progress import Progress, check_progress
from torchattr._core.targets import Target

METHODS = ("ig", "blur", "guided")
_STEPS = {"ig": 64, "blur": 64, "guided": 128}
_PATH = {"ig": "straight", "blur": "blur", "guided": "guided"}


@keywords()
def idgi(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    method: str = "ig",
    baseline: Any = None,
    steps: int | None = None,
    max_sigma: float | None = None,
    fraction: float | None = None,
    max_dist: float | None = None,
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    layer: Any = None,
    mask: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
) -> Any:
    """IDGI on a path method: each segment's score change, along its gradient's direction only.

    For the path points ``p_0 = x' .. p_n = x`` of ``method`` (``"ig"``: the straight line at
    ``a_k = k / n``; ``"blur"``: Blur IG's scale space at the same ``a_k``; ``"guided"``: Guided
    IG's adaptive path) and ``g_k = d s / d p`` at the knot ``p_k``, as Yang et al. define it
    (their Algorithm 1 and reference code take gradients and scores at the same path points, the
    gradient of each segment at its left end):

        ``A = sum_{k<n} g_k^2 / |g_k|^2 * (s(p_{k+1}) - s(p_k))``

    (:func:`torchattr._core.paths.idgi_correction`; ``|g_k|^2`` sums over every feature of every
    input). Each segment contributes exactly its score change, so ``sum(A) = s(x) - s(x')`` up
    to float rounding, whatever ``steps``; the correction removes the gradient components
    orthogonal to the score's change (noise that IG multiplies by the path direction). A segment
    whose gradient is zero everywhere gets zero (its score change then shows in the delta). Cost:
    ``n x B`` rows of forward and backward, as the method's own: the scores ``s(p_k)`` come from
    the forwards of the gradient pass, and ``s(x)`` from the one forward at the inputs that
    resolves the target.

    ``steps``: default 64 (ig, blur) and 128 (guided). ``max_sigma`` (blur, default 50),
    ``fraction`` and ``max_dist`` (guided, defaults 0.25 and 0.02) are the options of
    :func:`torchattr.blur_integrated_gradients` and :func:`torchattr.guided_integrated_gradients`
    and are refused for other methods; ``baseline``, ``layer`` and ``mask`` apply to "ig" and
    "guided" (see :func:`torchattr.integrated_gradients`); ``memory_budget`` to "ig" and "blur"
    (Guided IG runs B rows per step). Shapes as the method's;
    ``return_delta=True`` also returns ``sum(A) - (s(x) - s(p_0))`` ``[B]`` (``[B, K]``).

    Example::

        attributions = ta.idgi(model, images, labels, method="ig", steps=32)
    """
    check_choice(method, "method", METHODS)
    for name, value, owner in (
        ("max_sigma", max_sigma, "blur"),
        ("fraction", fraction, "guided"),
        ("max_dist", max_dist, "guided"),
    ):
        if value is not None and method != owner:
            raise ValueError(f"{name} is an option of method={owner!r}, not of method={method!r}")
    if method == "guided" and memory_budget is not None:
        raise ValueError(
            "memory_budget does not apply to method='guided': its path takes B rows per step, "
            "one step after another (guided_integrated_gradients has no memory_budget either)"
        )
    if method == "blur" and (baseline is not None or layer is not None or mask is not None):
        raise ValueError(
            "method='blur' starts from the blurred input: baseline, layer and mask do not apply"
        )
    steps = _STEPS[method] if steps is None else check_positive_int(steps, "steps")
    max_sigma = 50.0 if max_sigma is None else check_scale(max_sigma, "max_sigma")
    if method == "blur" and max_sigma == 0:
        raise ValueError("max_sigma must be > 0: a path from x to x has no length")
    fraction = 0.25 if fraction is None else check_unit(fraction, "fraction")
    max_dist = 0.02 if max_dist is None else check_unit(max_dist, "max_dist")
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    check_progress(progress)
    return run_path(
        model,
        inputs,
        target,
        path=_PATH[method],
        baseline=baseline,
        steps=steps,
        max_sigma=max_sigma,
        fraction=fraction,
        max_dist=max_dist,
        idgi=True,
        chunk_size=chunk_size,
        return_delta=return_delta,
        layer=layer,
        mask=mask,
        forward_kwargs=forward_kwargs,
        progress=progress,
        memory_budget=memory_budget,
    )

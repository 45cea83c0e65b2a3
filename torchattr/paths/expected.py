"""Expected Gradients (Erion, Janizek, Sturmfels, Lundberg, Lee 2021).

``EG(x) = E_{x' ~ D, a ~ U(0, 1)} [(x - x') * d s / d x (x' + a (x - x'))]``, estimated from
``n`` draws per sample of a reference ``x'`` (uniformly from the reference set) and an ``a``:
Integrated Gradients averaged over baselines, with one random point per baseline. Captum's
``GradientShap`` (``stdevs=0``) computes the same estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_chunk_size,
    check_finite,
    check_generator,
    check_positive_int,
    keywords,
)
from torchattr._core.chunking import build_rows, draw
from torchattr._core.fallback import buffers_kept
from torchattr._core.grad import forward_scores, prepare
from torchattr._core.inputs import InputSpec, InputsT
from torchattr._core.memory import check_memory_budget
from torchattr._core.paths import (
    chord_times,
    completeness_delta,
    finish,
    integrate,
    score_rows,
)
from torchattr._core.progress import Progress, check_progress
from torchattr._core.state import untouched
from torchattr._core.targets import Target


@keywords()
def expected_gradients(
    model: Callable[..., Any],
    inputs: InputsT,
    target: Target = None,
    *,
    references: Any,
    samples: int = 32,
    generator: torch.Generator | None = None,
    chunk_size: int | str | None = "auto",
    return_delta: bool = False,
    layer: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
    memory_budget: int | None = None,
) -> Any:
    """Expected Gradients: IG averaged over baselines drawn from ``references``.

    ``EG(x_b) = 1/n sum_j (x_b - r_{i_jb}) * d s / d x (r_{i_jb} + a_jb (x_b - r_{i_jb}))``
    with ``i_jb`` uniform over the references and ``a_jb ~ U(0, 1)``, ``j = 1..n`` (``samples``).
    Draws: ``randint(R, [n, B])`` then ``rand([n, B])`` (float64) from ``generator``, so a
    seeded generator reproduces the result whatever ``chunk_size``. ``references``: a tensor
    ``[R, ...]`` shaped like one sample of the inputs (a training subset; see
    :mod:`torchattr.baselines`), or a tuple / dict of those (same R) for tuple / dict inputs.

    Shapes: attributions shaped like the inputs (``[B, K, ...]`` for a ``[B, K]`` target), in at
    least float32. The ``n x B`` points go through the model in ``chunk_size`` rows (one forward
    and one backward each; ``"auto"``: see :func:`torchattr.integrated_gradients`).
    ``return_delta=True`` also returns ``sum(EG) - (s(x) - mean_j s(r_{i_jb}))`` ``[B]``
    (``[B, K]``), from ``n x B`` more forward-only rows: completeness holds in expectation only,
    so this delta shrinks like ``1 / sqrt(n)``. ``target=None`` explains the class predicted for
    ``x``; ``forward_kwargs`` follow their samples. ``layer=`` is refused: interpolating between
    an input's embedding and a reference's needs the references' embeddings per sample, use
    ``ta.integrated_gradients(..., layer=...)`` with one baseline instead.

    Example::

        background = train_images[:100]                       # [100, C, H, W]
        attributions = ta.expected_gradients(model, images, labels, references=background,
                                             samples=64, generator=torch.Generator().manual_seed(0))
    """
    if layer is not None:
        raise ValueError(
            "expected_gradients does not take layer=: its baselines are reference inputs, and "
            "interpolating embeddings between an input and a reference is not supported; use "
            "integrated_gradients(..., layer=...) or idgi(..., layer=...) with one baseline"
        )
    samples = check_positive_int(samples, "samples")
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    check_progress(progress)
    problem, target = prepare(model, inputs, target, None, forward_kwargs)
    refs = check_references(references, problem.tensors, problem.spec)
    batch, device = problem.batch, problem.tensors[0].device
    index, alphas = draw_references(refs[0].shape[0], samples, batch, generator, device)
    rows = None if chunk_size == "auto" else chunk_size
    xs = problem.tensors

    def reference_rows(start: int, stop: int) -> tuple[Tensor, ...]:
        return tuple(build_rows(start, stop, batch, lambda c, s, r=r: r[index[c, s]]) for r in refs)

    def rows_of(start: int, stop: int) -> tuple[Tensor, ...]:
        return tuple(
            build_rows(
                start,
                stop,
                batch,
                lambda c, s, x=x, r=r: _between(r[index[c, s]], x[s], alphas[c, s]),
            )
            for x, r in zip(xs, refs)
        )

    def weigh(start: int, stop: int, grads: tuple[Tensor, ...], multi: bool) -> tuple[Tensor, ...]:
        chords = tuple(
            build_rows(start, stop, batch, lambda c, s, x=x, r=r: (x[s] - r[index[c, s]]) / samples)
            for x, r in zip(xs, refs)
        )
        return tuple(chord_times(d, g, multi) for d, g in zip(chords, grads))

    with untouched(model, problem.layers), buffers_kept(model):
        if target is None or return_delta:
            end_scores, target = forward_scores(problem, xs, target, rows)
        sums, multi = integrate(
            problem,
            target,
            samples,
            rows_of,
            weigh,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            progress=progress,
            description="expected gradients",
        )
        if return_delta:
            # forward-only rows: B per call under "auto" (a B-row forward never needs more
            # memory than the gradient chunks measured against memory_budget)
            forward_rows = batch if chunk_size == "auto" else chunk_size
            start_scores = score_rows(problem, target, samples, reference_rows, forward_rows)
            start_scores = start_scores.mean(0)
    result = finish(problem, sums, multi)
    if not return_delta:
        return result
    return result, completeness_delta(sums, end_scores, start_scores, multi)


def draw_references(
    count: int, samples: int, batch: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(reference index ``[n, B]`` uniform in ``0..R-1``, ``a`` ``[n, B]`` float64 in [0, 1))."""
    check_generator(generator)
    where = device if generator is None else generator.device
    index = torch.randint(count, (samples, batch), generator=generator, device=where)
    alphas = draw(torch.rand, (samples, batch), torch.float64, device, generator)
    return index.to(device), alphas


def check_references(
    references: Any, tensors: tuple[Tensor, ...], spec: InputSpec
) -> tuple[Tensor, ...]:
    """One reference tensor ``[R, ...]`` per input, in its dtype and device, or a clear error."""
    names = spec.names()
    if isinstance(references, Tensor):
        parts: tuple[Any, ...] = (references,)
    elif isinstance(references, Mapping) and spec.kind == "dict":
        missing = sorted(set(spec.keys) - set(references))
        extra = sorted(set(references) - set(spec.keys))
        if missing or extra:
            raise ValueError(
                f"references has keys {sorted(references)}: expected the inputs' keys "
                f"{list(spec.keys)}"
            )
        parts = tuple(references[k] for k in spec.keys)
    elif isinstance(references, (tuple, list)) and spec.kind == "tuple":
        parts = tuple(references)
    else:
        raise TypeError(
            f"references must be a tensor [R, ...] for tensor inputs and a {spec.kind} of such "
            f"tensors for {spec.kind} inputs, got {type(references).__name__}"
        )
    if len(parts) != len(tensors):
        raise ValueError(f"references has {len(parts)} entries but inputs has {len(tensors)}")
    out = []
    for name, ref, x in zip(names, parts, tensors):
        if not isinstance(ref, Tensor) or not (ref.is_floating_point()):
            kind = getattr(ref, "dtype", type(ref).__name__)
            raise TypeError(f"references for {name} must be a floating-point tensor, got {kind}")
        if ref.ndim != x.ndim or ref.shape[1:] != x.shape[1:] or ref.shape[0] == 0:
            raise ValueError(
                f"references for {name} has shape {list(ref.shape)}: expected [R >= 1, "
                f"{', '.join(str(d) for d in x.shape[1:])}] (one sample's shape)"
            )
        out.append(ref.detach().to(device=x.device, dtype=x.dtype))
    if len({r.shape[0] for r in out}) > 1:
        raise ValueError(
            f"references hold {[r.shape[0] for r in out]} rows: every input needs the same R"
        )
    check_finite(out, [f"references for {n}" for n in names])
    return tuple(out)


def _between(reference: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    """``r + a (x - r)``: ``reference`` [n, b, ...], ``x`` [b, ...], ``alpha`` [n, b]."""
    a = alpha.to(x.dtype).reshape(alpha.shape + (1,) * (x.ndim - 1))
    return torch.addcmul(reference, a, x.unsqueeze(0) - reference)

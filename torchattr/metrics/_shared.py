"""Shared by the perturbation and robustness metrics: scoring perturbed copies, random draws
per copy, argument checks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import (
    check_choice,
    check_finite,
    check_positive_int,
    in_training_mode,
    warn_if_training,
)
from torchattr._core.chunking import draw, row_ranges
from torchattr._core.inputs import (
    InputSpec,
    call_model,
    check_forward_kwargs,
    flatten,
    kwargs_rows,
    unflatten,
)
from torchattr._core.state import untouched
from torchattr._core.targets import (
    Target,
    logits_of,
    normalize_target,
    resolve_target,
    row_scores,
    target_range,
)
from torchattr.metrics.localisation import summed_maps

SCORES = ("logit", "softmax", "sigmoid")
_DEPRECATED_SCORES = {"probability": "softmax"}
_TENSOR = InputSpec("tensor")


@dataclass(frozen=True)
class Packed:
    """Tuple or dict inputs as one ``[B, F]`` tensor: every entry ``[B, *S_i]`` flattened per
    sample and concatenated in order (``F = sum_i |S_i|``), in the entries' promoted dtype.

    The metrics that perturb inputs work on the packed rows; the model gets them back in the
    user's structure (:meth:`unpack`, positional for a tuple, keywords for a dict), each entry in
    its own dtype.
    """

    spec: InputSpec
    batch: int  # B
    shapes: tuple[tuple[int, ...], ...]  # per-sample shapes S_i
    dtypes: tuple[torch.dtype, ...]

    def unpack(self, rows: Tensor) -> tuple[Tensor, ...]:
        """``[N, F] -> ([N, *S_1], [N, *S_2], ...)`` in the entries' dtypes."""
        parts = rows.split([math.prod(shape) for shape in self.shapes], dim=1)
        return tuple(
            part.reshape(-1, *shape).to(dtype)
            for part, shape, dtype in zip(parts, self.shapes, self.dtypes)
        )

    def structured(self, rows: Tensor) -> Any:
        """The rows in the user's structure (a tuple or a dict of tensors)."""
        return unflatten(self.unpack(rows), self.spec)

    def pack(self, value: Any, name: str, dtype: torch.dtype, broadcast: bool = False) -> Tensor:
        """``value`` in the inputs' structure, entries ``[B, *S_i]`` (with ``broadcast``: any
        shape broadcastable to it), as ``[B, F]`` of ``dtype``."""
        tensors, spec = _structure(value, name, self.spec)
        out = []
        for label, t, shape in zip(spec.names(), tensors, self.shapes):
            label = label.replace("inputs", name, 1)
            expected = (self.batch, *shape)
            if not t.is_floating_point():
                raise TypeError(f"{label} has dtype {t.dtype}: expected floating point")
            if broadcast:
                try:
                    t = torch.broadcast_to(t, expected)
                except RuntimeError:
                    raise ValueError(
                        f"{label} has shape {list(t.shape)}: expected a tensor broadcastable to "
                        f"its input entry, {list(expected)}"
                    ) from None
            elif tuple(t.shape) != expected:
                raise ValueError(
                    f"{label} has shape {list(t.shape)}: expected {list(expected)}, the shape "
                    "of its input entry (tuple / dict inputs take attributions of the same "
                    "structure and shapes)"
                )
            out.append(t.detach().reshape(self.batch, -1).to(dtype))
        return torch.cat(out, dim=1)


def _structure(value: Any, name: str, expected: InputSpec) -> tuple[tuple[Tensor, ...], Any]:
    """Flatten ``value`` and check that it has the structure (kind and keys) of the inputs."""
    tensors, spec = flatten(value, name)
    if spec.kind != expected.kind or len(spec.keys) != len(expected.keys):
        raise ValueError(
            f"{name} must have the structure of the inputs ({expected.kind} of "
            f"{len(expected.keys)} tensors), got a {spec.kind} of {len(tensors)}"
        )
    if spec.kind == "dict" and set(spec.keys) != set(expected.keys):
        raise ValueError(
            f"{name} has keys {sorted(spec.keys)} but inputs has {sorted(expected.keys)}"
        )
    if spec.kind == "dict":
        tensors = tuple(dict(zip(spec.keys, tensors))[k] for k in expected.keys)
        spec = expected
    return tensors, spec


def pack_inputs(inputs: Any) -> tuple[Tensor, Packed | None]:
    """A tensor passes unchanged (with None); tuple or dict inputs become ``[B, F]`` and their
    :class:`Packed` layout. Entries must be floating point, finite, with one batch size."""
    if isinstance(inputs, Tensor):
        return inputs, None
    tensors, spec = flatten(inputs)
    names = spec.names()
    if tensors[0].ndim == 0:
        raise ValueError(f"{names[0]} is a scalar: expected a batch [B, ...]")
    for label, t in zip(names, tensors):
        if not t.is_floating_point():
            raise TypeError(
                f"{label} has dtype {t.dtype}: metrics perturb every input entry, which must be "
                "floating point (pass integer inputs such as token ids through forward_kwargs)"
            )
        if t.ndim < 1 or t.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"{label} has shape {list(t.shape)}: every entry needs the batch size "
                f"{tensors[0].shape[0]} of {names[0]} as its first dimension"
            )
        if t.device != tensors[0].device:
            raise ValueError(f"{label} is on {t.device} but {names[0]} on {tensors[0].device}")
    check_finite(list(tensors), list(names))
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    shapes = tuple(tuple(t.shape[1:]) for t in tensors)
    packed = Packed(spec, tensors[0].shape[0], shapes, tuple(t.dtype for t in tensors))
    return torch.cat([t.detach().reshape(t.shape[0], -1).to(dtype) for t in tensors], dim=1), packed


@dataclass
class _Scorer:
    """The explained score of perturbed rows: ``score(model(rows))`` at each row's target.

    ``target`` is resolved on the clean inputs (None -> the class predicted there), so that every
    copy of a sample is scored for the class of the sample itself; ``clean`` holds the clean
    scores ``[B]``.
    """

    model: Callable[..., Any]
    target: Target  # a LongTensor [B] or a callable, once resolved
    score: str
    clean: Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)  # forward_kwargs of the clean batch
    packed: Packed | None = None  # the layout of packed tuple / dict inputs

    def __call__(self, rows: Tensor, sample: Tensor) -> Tensor:
        """Scores ``[N]`` of the perturbed ``rows`` of the samples ``sample [N]``."""
        target = self.target[sample] if isinstance(self.target, Tensor) else self.target
        return _scores(self.forward(rows, sample), target, self.score)

    def forward(self, rows: Tensor, sample: Tensor | slice) -> Any:
        """The model on ``rows`` of the samples ``sample``, with their ``forward_kwargs``."""
        kwargs = kwargs_rows(self.kwargs, self.clean.shape[0], sample)
        return _call(self.model, rows, self.packed, kwargs)


def _call(model: Callable[..., Any], rows: Tensor, packed: Packed | None, kwargs: Any) -> Any:
    """The model on ``rows`` (packed rows given back in the user's structure)."""
    if packed is None:
        return call_model(model, (rows,), _TENSOR, kwargs)
    return call_model(model, packed.unpack(rows), packed.spec, kwargs)


@contextmanager
def _scoring(
    model: Callable[..., Any],
    inputs: Tensor,
    target: Target,
    score: str,
    chunk_size: int,
    forward_kwargs: Any = None,
    packed: Packed | None = None,
) -> Iterator[_Scorer]:
    """Check the model and target, then (without gradients, the model's state restored on exit)
    score the clean inputs in chunks of ``chunk_size`` rows and yield the scorer of their copies.
    ``forward_kwargs`` go to every model call, per-sample tensors following their sample;
    ``packed``: ``inputs`` are packed tuple / dict inputs (:func:`pack_inputs`).
    """
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model)}")
    score = check_score(score)
    target = normalize_target(target, inputs.shape[0], inputs.device)
    if isinstance(target, Tensor) and target.ndim == 2:
        raise ValueError(
            f"target has shape {list(target.shape)}: metrics score one class per image, "
            "expected [B]"
        )
    warn_if_training(in_training_mode(model))
    kwargs = check_forward_kwargs(forward_kwargs, None if packed is None else packed.spec)
    batch = inputs.shape[0]
    with untouched(model, gradients=False), torch.no_grad():
        clean, resolved = [], []
        known_range = target_range(target)
        for start, stop in row_ranges(batch, chunk_size):
            rows = slice(start, stop)
            output = _call(model, inputs[rows], packed, kwargs_rows(kwargs, batch, rows))
            part = target[start:stop] if isinstance(target, Tensor) else target
            part = resolve_target(part, output, known_range)
            resolved.append(part)
            clean.append(_scores(output, part, score))
        target = target if callable(target) else torch.cat(resolved)
        yield _Scorer(model, target, score, torch.cat(clean), kwargs, packed)


def check_score(score: Any, stacklevel: int = 4) -> str:
    """The score name: one of :data:`SCORES`; ``"probability"`` is the deprecated ``"softmax"``.

    * ``"logit"``: the model's output for the target, unchanged;
    * ``"softmax"``: ``exp(z_c) / sum_k exp(z_k)`` over the classes of ``[N, C]`` outputs (one
      class out of several, as ImageNet classifiers); a single logit ``z`` per row (``[N]`` or
      ``[N, 1]``) is a binary classifier's, and gets ``sigmoid(z)`` (the softmax of ``(0, z)``);
    * ``"sigmoid"``: ``1 / (1 + exp(-z_c))`` of each output separately (multi-label models, such
      as chest X-ray classifiers with one finding per output).
    """
    if isinstance(score, str) and score in _DEPRECATED_SCORES:
        new = _DEPRECATED_SCORES[score]
        warnings.warn(
            f"score={score!r} is deprecated: use score={new!r} (the same values)",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return new
    check_choice(score, "score", SCORES)
    return score


def _scores(output: Any, target: Target, score: str) -> Tensor:
    """``[N]`` scores of resolved targets, after a softmax / sigmoid (see :func:`check_score`)."""
    if score != "logit":
        output = _as_probabilities(logits_of(output), score)
    scores = row_scores(output, target)
    if scores.ndim != 1:
        raise ValueError(
            f"callable target returned scores {list(scores.shape)}: metrics need one score per "
            "row, [N]"
        )
    return scores.detach().to(torch.promote_types(scores.dtype, torch.float32))


def _as_probabilities(output: Any, score: str = "softmax") -> Tensor:
    """``score="softmax"``: softmax over the classes of ``[N, C]`` logits, sigmoid of a single
    logit per row; ``"sigmoid"``: the sigmoid of every output."""
    if not isinstance(output, Tensor) or output.ndim not in (1, 2):
        shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"model output has shape {shape}: score={score!r} needs [N, C] or [N] logits; "
            "pass score='logit' with a callable target"
        )
    output = output.to(torch.promote_types(output.dtype, torch.float32))
    if score == "sigmoid" or output.ndim == 1 or output.shape[1] == 1:
        return output.sigmoid()
    return output.softmax(dim=1)


def predicted_classes(output: Any) -> Tensor:
    """The class each row is classified as, ``[N]`` long: ``argmax_c z_c`` of ``[N, C]`` logits
    (the first on ties), ``z > 0`` (class 1) for a single logit per row (``[N]`` or ``[N, 1]``).
    """
    logits = logits_of(output)
    if not isinstance(logits, Tensor) or logits.ndim not in (1, 2):
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"model output has shape {shape}: accuracy (labels=) needs [N, C] or [N] logits"
        )
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=1)


def _randn(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: Any
) -> Tensor:
    """``N(0, 1)`` draws (see :func:`torchattr._core.chunking.draw`)."""
    return draw(torch.randn, shape, dtype, device, generator)


def _rand(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: Any
) -> Tensor:
    """``U[0, 1)`` draws (see :func:`torchattr._core.chunking.draw`)."""
    return draw(torch.rand, shape, dtype, device, generator)


def _check_images(inputs: Any, name: str = "inputs") -> Tensor:
    """Floating-point, finite images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]``."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{name} must be a tensor of images [B, C, H, W] or volumes [B, C, D, H, W], got "
            f"{type(inputs).__name__}"
        )
    if inputs.ndim not in (4, 5):
        raise ValueError(
            f"{name} has shape {list(inputs.shape)}: expected images [B, C, H, W] or volumes "
            "[B, C, D, H, W] (add a channel dimension with .unsqueeze(1) for grey images)"
        )
    if not inputs.is_floating_point():
        raise TypeError(f"{name} has dtype {inputs.dtype}: expected floating-point images")
    if min(inputs.shape) == 0:
        raise ValueError(f"{name} has shape {list(inputs.shape)}: expected non-empty images")
    check_finite([inputs], [name])
    return inputs.detach()


def _check_maps(saliency: Any, images: Tensor | None) -> Tensor:
    """Finite maps ``[B, *S]`` (channels summed) matching ``images [B, C, *S]``.

    ``S`` is ``(H, W)`` or ``(D, H, W)``. Without images, ``[B, H, W]``, ``[B, C, H, W]`` and
    ``[B, C, D, H, W]`` maps are read as :func:`summed_maps` reads them.
    """
    dims = None if images is None else images.ndim - 2
    maps = summed_maps(saliency, dims)
    if images is not None:
        expected = (images.shape[0], *images.shape[2:])
        if tuple(maps.shape) != expected:
            layout = "[B, H, W]" if dims == 2 else "[B, D, H, W]"
            raise ValueError(
                f"saliency has shape {list(saliency.shape)} but inputs has "
                f"{list(images.shape)}: expected maps {layout} = {list(expected)} (or with a "
                "channel dimension after B) of the same images"
            )
        maps = maps.to(images.device)
    check_finite([maps], ["saliency"])
    return maps


def _check_mask(mask: Any, images: Tensor) -> Tensor:
    """A bool mask ``[B, *S]`` (or ``[B, 1, *S]``) of ``images [B, C, *S]``; every image keeps
    a pixel."""
    layout = "[B, H, W]" if images.ndim == 4 else "[B, D, H, W]"
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor {layout} (True = impute), got {kind}")
    if mask.ndim == images.ndim and mask.shape[1] == 1:
        mask = mask[:, 0]
    expected = (images.shape[0], *images.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask has shape {list(mask.shape)} but inputs has {list(images.shape)}: expected "
            f"{layout} = {list(expected)}"
        )
    mask = mask.to(images.device)
    full = mask.flatten(1).all(dim=1)
    if bool(full.any()):
        raise ValueError(
            f"mask covers every pixel of image(s) {full.nonzero()[:, 0].tolist()}: nothing is "
            "left to interpolate from"
        )
    return mask


def _check_fractions(fractions: Any) -> tuple[float, ...]:
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = (fractions,)
    if isinstance(fractions, Tensor):
        fractions = fractions.tolist()
    if not isinstance(fractions, Sequence) or isinstance(fractions, str) or not fractions:
        raise TypeError(f"fractions must be a non-empty sequence of numbers, got {fractions!r}")
    out = []
    for p in fractions:
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"fractions must hold numbers, got {p!r}")
        if not 0 < p < 1:
            raise ValueError(f"fractions must lie in (0, 1), got {p!r}")
        out.append(float(p))
    return tuple(out)


def _check_chunk_size(chunk_size: Any, batch: int) -> int:
    """Rows per model call: ``chunk_size``, or B for None."""
    return batch if chunk_size is None else check_positive_int(chunk_size, "chunk_size")


def _check_tolerance(tol: Any, max_iter: Any) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    check_positive_int(max_iter, "max_iter")

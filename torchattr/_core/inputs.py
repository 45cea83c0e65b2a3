"""Inputs as a flat tuple of tensors plus a spec that restores their structure.

A method accepts ``inputs`` as a Tensor (passed to the model positionally), a tuple of Tensors
(passed positionally, in order) or a dict of Tensors (passed as keyword arguments). Internally every
method works on the flat tuple; attributions are handed back through :func:`unflatten`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

Inputs = Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]
Rows = Tensor | slice | None  # which samples the rows of a model call belong to
# For type checkers: attributions come back in the structure of the inputs (a Tensor gives a
# Tensor, a tuple a tuple, a dict a dict).
InputsT = TypeVar("InputsT", Tensor, tuple[Tensor, ...], dict[str, Tensor])


@dataclass(frozen=True)
class InputSpec:
    """How a flat tuple of tensors maps back to the user's structure."""

    kind: str  # "tensor" | "tuple" | "dict"
    keys: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Human-readable names of the flat entries, for error messages."""
        if self.kind == "tensor":
            return ("inputs",)
        if self.kind == "dict":
            return tuple(f"inputs[{k!r}]" for k in self.keys)
        return tuple(f"inputs[{i}]" for i in range(len(self.keys)))


def flatten(inputs: Inputs, name: str = "inputs") -> tuple[tuple[Tensor, ...], InputSpec]:
    """Split ``inputs`` into a tuple of tensors and the spec that rebuilds it."""
    if isinstance(inputs, Tensor):
        return (inputs,), InputSpec("tensor")
    if isinstance(inputs, Mapping):
        keys = tuple(inputs.keys())
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"{name}: dict keys must be str (keyword arguments), got {k!r}")
        tensors = tuple(inputs[k] for k in keys)
        spec = InputSpec("dict", keys)
    elif isinstance(inputs, (tuple, list)):
        tensors = tuple(inputs)
        spec = InputSpec("tuple", tuple(str(i) for i in range(len(tensors))))
    else:
        raise TypeError(
            f"{name} must be a Tensor, a tuple of Tensors or a dict of Tensors, "
            f"got {type(inputs).__name__}"
        )
    if not tensors:
        raise ValueError(f"{name} is empty: expected at least one Tensor")
    for label, t in zip(spec.names(), tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{label} must be a Tensor, got {type(t).__name__}")
    return tensors, spec


def unflatten(tensors: tuple[Any, ...] | list[Any], spec: InputSpec) -> Any:
    """Inverse of :func:`flatten`: rebuild the user's structure from flat entries."""
    if spec.kind == "tensor":
        return tensors[0]
    if spec.kind == "dict":
        return dict(zip(spec.keys, tensors))
    return tuple(tensors)


def check_forward_kwargs(
    forward_kwargs: Any, spec: InputSpec | None = None, batch: int | None = None
) -> dict[str, Any]:
    """``forward_kwargs`` as a dict of keyword arguments for the model (``{}`` for None).

    Keys must be str and must not repeat a key of dict ``inputs``. Tensors whose leading dimension
    is the batch size B are per-sample (see :func:`kwargs_rows`); they may have any dtype (an
    integer attention mask) and are never attributed.
    """
    if forward_kwargs is None:
        return {}
    if not isinstance(forward_kwargs, Mapping):
        raise TypeError(
            "forward_kwargs must be a dict of keyword arguments for the model, got "
            f"{type(forward_kwargs).__name__}"
        )
    for key in forward_kwargs:
        if not isinstance(key, str):
            raise TypeError(f"forward_kwargs keys must be str (keyword arguments), got {key!r}")
    if spec is not None and spec.kind == "dict":
        both = sorted(set(forward_kwargs) & set(spec.keys))
        if both:
            raise ValueError(
                f"forward_kwargs and inputs both name {both}: a keyword is either explained "
                "(inputs) or passed through (forward_kwargs), not both"
            )
    return dict(forward_kwargs)


def kwargs_rows(kwargs: Mapping[str, Any], batch: int, rows: Rows) -> dict[str, Any]:
    """The keyword arguments of a model call on ``rows`` of the batch.

    Every tensor leaf (nested in lists / tuples / dicts too) whose leading dimension is ``batch``
    follows its sample: ``leaf[rows]``, where ``rows`` is a slice of samples or a LongTensor
    ``[N]`` naming each row's sample (copy-major enlarged batches, chunks). Other values (ints,
    tensors of another leading size) pass unchanged. ``rows=None``: the whole batch, unchanged.
    A shared tensor whose first dimension happens to be B is split too: such tensors belong in
    the model (``functools.partial(model, weights=w)``), not in ``forward_kwargs``.
    """
    if not kwargs or rows is None:
        return dict(kwargs)

    def take(leaf: Any) -> Any:
        if isinstance(leaf, Tensor) and leaf.ndim > 0 and leaf.shape[0] == batch:
            return leaf[rows]
        return leaf

    return {k: torch.utils._pytree.tree_map(take, v) for k, v in kwargs.items()}


def call_model(
    model: Callable[..., Any],
    tensors: tuple[Tensor, ...],
    spec: InputSpec,
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Call ``model`` the way the user's structure implies (positional or keyword), with the
    extra keyword arguments ``kwargs`` (already selected for these rows, :func:`kwargs_rows`)."""
    extra = kwargs or {}
    if spec.kind == "dict":
        return model(**dict(zip(spec.keys, tensors)), **extra)
    return model(*tensors, **extra)

"""Inputs as a flat tuple of tensors plus a spec that restores their structure.

A method accepts ``inputs`` as a Tensor (passed to the model positionally), a tuple of Tensors
(passed positionally, in order) or a dict of Tensors (passed as keyword arguments). Internally every
method works on the flat tuple; attributions are handed back through :func:`unflatten`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

Inputs = Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]


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


def call_model(model: Callable[..., Any], tensors: tuple[Tensor, ...], spec: InputSpec) -> Any:
    """Call ``model`` the way the user's structure implies (positional or keyword)."""
    if spec.kind == "dict":
        return model(**dict(zip(spec.keys, tensors)))
    return model(*tensors)

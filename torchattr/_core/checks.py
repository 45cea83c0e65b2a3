"""Argument validation. Every error names the argument and says what was expected.

Checks that need the tensors' values (NaN/inf, target ranges) synchronise with the device once per
call; they are skipped while ``torch.compile`` traces, where data-dependent branches cannot exist.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torchattr._core.inputs import InputSpec


def tracing() -> bool:
    """True while torch.compile traces the caller (no data-dependent checks, no warnings)."""
    return torch.compiler.is_compiling()


def check_gradient_inputs(
    tensors: tuple[Tensor, ...], spec: InputSpec, skip: Sequence[bool] | None = None
) -> int:
    """Validate inputs of a gradient method; return the common batch size B.

    Inputs must have a leading batch dimension of the same size; those not marked in ``skip``
    (inputs attributed through a layer) must be floating point and hold only finite values.
    """
    names = spec.names()
    skip = skip or [False] * len(tensors)
    for name, t, skipped in zip(names, tensors, skip):
        if t.ndim == 0:
            raise ValueError(f"{name} is a scalar: expected a batch, shape [B, ...]")
        if skipped:
            continue
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"{name} has dtype {t.dtype}: gradient methods need floating-point inputs. "
                "Integer ids (codes, tokens) are attributed through their embedding: pass "
                "layer=<the embedding module> (a dict of layers for dict inputs)"
            )
    batch = tensors[0].shape[0]
    for name, t in zip(names, tensors):
        if t.shape[0] != batch:
            raise ValueError(
                f"{name} has batch size {t.shape[0]} but {names[0]} has {batch}: "
                "all inputs must share the leading batch dimension"
            )
    checked = [(n, t) for n, t, s in zip(names, tensors, skip) if not s]
    if checked:
        check_finite([t for _, t in checked], [n for n, _ in checked])
    return batch


def check_finite(tensors: Sequence[Tensor], names: Sequence[str]) -> None:
    """Raise if any tensor holds NaN or inf (one device synchronisation for all of them)."""
    if tracing():
        return
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()
    for name, good in zip(names, ok):
        if not good:
            raise ValueError(
                f"{name} contains NaN or inf values: attributions would be meaningless"
            )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_chunk_size(chunk_size: int | str | None) -> int | str | None:
    """None (everything at once), ``"auto"`` (a memory budget, see
    :func:`torchattr._core.chunking.chunks`) or a positive number of rows per model call."""
    if chunk_size is None or chunk_size == "auto":
        return chunk_size
    if isinstance(chunk_size, str):
        raise ValueError(f"chunk_size must be 'auto', None or a positive int, got {chunk_size!r}")
    return check_positive_int(chunk_size, "chunk_size")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}: expected one of {listed}")
    return value


_MODE_DEPENDENT = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.RNNBase,
    torch.nn.MultiheadAttention,
    torch.nn.TransformerEncoderLayer,
    torch.nn.TransformerDecoderLayer,
)


def _mode_matters(module: torch.nn.Module) -> bool:
    """Built-in layers whose forward reads ``training``, and every user-defined module."""
    return isinstance(module, _MODE_DEPENDENT) or not type(module).__module__.startswith("torch.")


def in_training_mode(model: Callable[..., Any]) -> bool:
    """Whether ``model`` has a submodule in training mode whose behaviour depends on it."""
    if not isinstance(model, torch.nn.Module):
        return False
    return any(m.training and _mode_matters(m) for m in model.modules())


def warn_if_training(training: bool) -> None:
    """Warn when the model has a mode-dependent submodule in training mode (see
    :func:`in_training_mode`): dropout and batch statistics make attributions random and mix the
    samples of a batch. Built-in layers that ignore the flag (Linear, Conv, activations) do not
    count.
    """
    if training and not tracing():
        warnings.warn(
            "model is in training mode: dropout and batch statistics make attributions random "
            "and mix samples; call model.eval() first",
            UserWarning,
            stacklevel=4,
        )

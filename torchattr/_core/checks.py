"""Argument validation. Every error names the argument and says what was expected.

Checks that need the tensors' values (NaN/inf, target ranges) synchronise with the device once per
call; they are skipped while ``torch.compile`` traces, where data-dependent branches cannot exist.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

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
        if t.is_complex():
            raise TypeError(
                f"{name} has dtype {t.dtype}: gradient methods need real floating-point inputs "
                "(split complex data into real and imaginary channels)"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{name} has dtype {t.dtype}: gradient methods need floating-point inputs. "
                "Integer ids (codes, tokens) are attributed through their embedding: pass "
                "layer=<the embedding module> (a dict of layers for dict inputs)"
            )
    batch = tensors[0].shape[0]
    if batch == 0:
        raise ValueError(
            f"{names[0]} has batch size 0: expected at least one sample, [B >= 1, ...]"
        )
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


def check_generator(generator: Any, name: str = "generator") -> None:
    """A ``torch.Generator`` or None, else a TypeError naming the argument."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")


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


def check_scale(value: Any, name: str) -> float:
    """A finite number >= 0 (noise levels, standard deviations), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


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
    """Whether ``model`` (or a module a plain function reaches, see :func:`reachable_modules`)
    has a submodule in training mode whose behaviour depends on it."""
    return any(
        m.training and _mode_matters(m) for root in reachable_modules(model) for m in root.modules()
    )


def reachable_modules(model: Any, depth: int = 3) -> list[torch.nn.Module]:
    """The ``nn.Module`` s a callable calls: the model itself, or those a plain function holds
    in closure cells, the globals its code names and its defaults, a bound method's
    ``__self__``, a ``functools.partial``'s function and arguments, ``depth`` levels deep
    (``lambda **kw: model(**kw)["logit"]`` reaches ``model``)."""
    found: list[torch.nn.Module] = []
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
            return
        if level == 0:
            return
        for child in _held(obj):
            visit(child, level - 1)

    visit(model, depth)
    return found


def _held(obj: Any) -> list[Any]:
    """What a function, bound method or partial refers to (see :func:`reachable_modules`)."""
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if inspect.ismethod(obj):
        return [obj.__self__, obj.__func__]
    if not inspect.isfunction(obj):
        return []
    held = []
    for cell in obj.__closure__ or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    names = obj.__globals__
    held += [names[n] for n in obj.__code__.co_names if n in names]
    held += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
    return held


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
            stacklevel=_caller_level(),
        )


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_PLUMBING = (_PACKAGE, contextlib.__file__)  # torchattr's own frames and its context managers


def _caller_level() -> int:
    """The ``stacklevel`` (for a warning raised by the function calling this one) of the first
    frame outside torchattr: the user's line, however deep the call went."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PLUMBING):
        frame, level = frame.f_back, level + 1
    return level


# --------------------------------------------------------------------------------------------
# Keyword names: Captum's spellings, typos and deprecated aliases
# --------------------------------------------------------------------------------------------

CAPTUM_NAMES = {
    "n_steps": "steps",
    "baselines": "baseline",
    "internal_batch_size": "chunk_size",
    "nt_samples": "samples",
    "nt_samples_batch_size": "chunk_size",
    "nt_type": "kind",
    "stdevs": "sigma",
    "additional_forward_args": "forward_kwargs",
    "return_convergence_delta": "return_delta",
    "targets": "target",
    "n_samples": "samples",
    "perturbations_per_eval": "chunk_size",
    "feature_mask": "mask",
    "layer_baselines": "baseline",
}

F = TypeVar("F", bound=Callable[..., Any])


def unknown_keyword(function: str, key: str, known: Sequence[str]) -> TypeError:
    """The TypeError for an unknown keyword ``key``, with the closest known name if any:
    Captum's spelling of a concept (``n_steps`` -> ``steps``) or a near miss (``targte``)."""
    guess = CAPTUM_NAMES.get(key)
    if guess not in known:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f"; did you mean {guess!r}?" if guess else ""
    listed = ", ".join(k for k in known if k not in ("model", "inputs"))
    return TypeError(
        f"{function}() got an unexpected keyword argument {key!r}{hint} (keywords: {listed})"
    )


def keywords(renamed: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Decorate a public function: unknown keywords raise :func:`unknown_keyword`'s
    "did you mean" TypeError, and deprecated names in ``renamed`` (old -> new) still work for
    one release with a ``DeprecationWarning``. Known keywords cost one set difference."""
    renamed = dict(renamed or {})

    def decorate(fn: F) -> F:
        known = tuple(inspect.signature(fn).parameters)
        names = frozenset(known)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs.keys() - names:
                kwargs = _rename(fn.__name__, kwargs, known, renamed)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _rename(
    function: str, kwargs: dict[str, Any], known: Sequence[str], renamed: Mapping[str, str]
) -> dict[str, Any]:
    out = dict(kwargs)
    for key in [k for k in kwargs if k not in known]:
        new = renamed.get(key)
        if new is None:
            raise unknown_keyword(function, key, known)
        if new in kwargs:
            raise TypeError(f"{function}() got both {key!r} and {new!r}: pass only {new!r}")
        warnings.warn(
            f"{function}(): {key!r} is deprecated and will be removed in the next release; "
            f"use {new!r}",
            DeprecationWarning,
            stacklevel=3,
        )
        out[new] = out.pop(key)
    return out

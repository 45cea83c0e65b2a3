"""Choosing between ``torch.func`` and plain autograd, and keeping buffers as they were.

Both paths compute the same pull-back ``d s / d p`` (see :mod:`torchattr._core.grad`).
``torch.func`` traces under ``torch.compile(fullgraph=True)``; plain autograd runs models that
``torch.func`` cannot (in-place buffer updates in eval mode, DDP's buffer broadcast, cuDNN and
MKLDNN RNN kernels, packed sequences, saved-tensor hooks) and has a smaller fixed cost per
operation.

Only the failures listed in :data:`FUNC_FAILURES` switch a model to autograd; any other exception
is the user's (a shape mismatch fails the same way on both paths) and propagates. The switch is
remembered per model structure (the class of every submodule, in order), so the failing attempt
is made once per process, not on every call.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch

from torchattr._core.checks import tracing

# Substrings of the RuntimeError messages with which torch.func refuses a model it cannot run.
FUNC_FAILURES = (
    # an in-place write to a captured tensor: buffer updates, DDP's buffer broadcast (copy_)
    "the function provided attempted to call in-place operation",
    # cuDNN / MKLDNN RNN kernels under a functorch transform
    "Cannot access data pointer of Tensor that doesn't have storage",
    "Expected a proper Tensor but got None (or an undefined Tensor in C++)",
    "Cannot access storage of TensorWrapper",
    # torch.utils.checkpoint and other saved-tensor hooks
    "torch.func transforms don't yet support saved tensor hooks",
)

_MAX_REMEMBERED = 256
_lock = threading.Lock()
_by_structure: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_by_callable: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_keys: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def is_func_failure(error: BaseException) -> bool:
    """Whether ``error`` is one of torch.func's known refusals (not a user error)."""
    return isinstance(error, RuntimeError) and any(s in str(error) for s in FUNC_FAILURES)


def wrapped_modules(model: Callable[..., Any]) -> list[torch.nn.Module]:
    """The modules a callable runs: itself, or those a function or partial closes over.

    The usual glue ``lambda **kw: model(**kw)["logit"]`` runs the module in its closure;
    ``functools.partial(model, ...)`` runs its ``func``. Globals are not searched.
    """
    if isinstance(model, torch.nn.Module):
        return [model]
    found = []
    if isinstance(model, functools.partial):
        found += wrapped_modules(model.func)
        found += [a for a in (*model.args, *model.keywords.values()) if _is_module(a)]
    for cell in getattr(model, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _is_module(value):
            found.append(value)
    return found


def _is_module(value: Any) -> bool:
    return isinstance(value, torch.nn.Module)


def structure_key(model: Callable[..., Any]) -> tuple[Any, ...] | None:
    """``(class of every submodule, in order)`` for a module; None for other callables.

    Computed once per module object (a module whose submodules change after its first call
    keeps its first key). A function closing over modules (see :func:`wrapped_modules`) is
    keyed by its code and their structures, so a fresh lambda per call is remembered too;
    a key shared by mistake only sends a model through autograd, which computes the same.
    """
    if not isinstance(model, torch.nn.Module):
        code = getattr(model, "__code__", None)
        modules = wrapped_modules(model)
        if code is None or not modules:
            return None
        return (code, *(structure_key(m) for m in modules))
    key = _keys.get(model)
    if key is None:
        key = tuple(type(m) for m in model.modules())
        _keys[model] = key
    return key


def needs_autograd(model: Callable[..., Any]) -> bool:
    """Whether a previous call found that ``torch.func`` cannot run this model's structure."""
    key = structure_key(model)
    with _lock:
        if key is not None:
            return key in _by_structure
        try:
            return model in _by_callable
        except TypeError:  # not weak-referenceable / not hashable: never remembered
            return False


def remember_autograd(model: Callable[..., Any], reason: str) -> None:
    """Record that ``torch.func`` failed on this model's structure (bounded, LRU)."""
    key = structure_key(model)
    with _lock:
        if key is not None:
            _by_structure[key] = reason
            _by_structure.move_to_end(key)
            while len(_by_structure) > _MAX_REMEMBERED:
                _by_structure.popitem(last=False)
            return
        with suppress(TypeError):  # not weak-referenceable: never remembered
            _by_callable[model] = reason


def forget_all() -> None:
    """Clear what was remembered (tests)."""
    with _lock:
        _by_structure.clear()
        _by_callable.clear()


@contextmanager
def buffers_kept(model: Callable[..., Any]) -> Iterator[Callable[[], None]]:
    """Context after which every buffer of ``model`` holds the values it held on entry.

    A forward that updates a buffer in place (a call counter, an EMA, DDP's broadcast) changes
    it; on exit the buffers whose version counter moved (inference tensors: whose values
    changed) are copied back from a snapshot, also when the body raises. Yields that
    ``restore()``, for callers that run the model more than once (LRP's two passes). For a
    function, the buffers of the modules it closes over (:func:`wrapped_modules`); under
    ``torch.compile`` tracing this is a no-op (as :func:`~torchattr._core.state.untouched`).
    """
    modules = [] if tracing() else wrapped_modules(model)
    buffers = {id(b): b for m in modules for b in m.buffers()}.values()
    saved = [(b, _version(b), b.detach().clone()) for b in buffers]

    def restore() -> None:
        for b, version, value in saved:
            if version is None:  # an inference tensor: no version counter, compare the values
                if not torch.equal(b, value):
                    with torch.inference_mode():
                        b.copy_(value)
            elif _version(b) != version:
                with torch.no_grad():
                    b.copy_(value)

    try:
        yield restore
    finally:
        restore()


def _version(t: torch.Tensor) -> int | None:
    """The in-place version counter (None for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None

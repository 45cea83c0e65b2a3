"""Calling a model without leaving a trace.

:func:`untouched` is the context in which every method calls the user's model. It

* enters :func:`~torchattr._core.contexts.grad_context` (out of inference mode, grad mode on,
  for the call only), so that methods work inside ``torch.inference_mode()`` / ``no_grad()``
  (forward-only callers opt out with ``gradients=False``);
* restores the training flag of every submodule whose flag changed during the call. torchattr
  itself never writes a flag (no ``eval()`` / ``train()`` on the user's model, so no other
  thread can see a flipped mode); this only undoes a forward that flips one. Nothing is written
  when no flag changed;
* when a submodule is in training mode (batch norm would update its running statistics), copies
  every buffer and writes the copies back on exit, holding a per-model lock for the whole call
  so that concurrent calls on one shared model neither see nor restore each other's updates.

Hooks are not snapshot: every hook torchattr adds is registered for one call and removed by its
handle (:func:`~torchattr._core.contexts.call_hooks`), so hooks that the user or other threads
add or remove meanwhile are left alone. Parameters are never written by torchattr.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from torchattr._core.checks import tracing
from torchattr._core.contexts import grad_context

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises buffer-writing calls on ``model``."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def untouched(
    model: Callable[..., Any], hooked: Iterable[Any] = (), *, gradients: bool = True
) -> Iterator[None]:
    """Context in which ``model`` may be called; its state is restored on exit.

    Restores the training flags that changed and, when a submodule is in training mode, the
    buffers (calls on one model that may write its buffers run one at a time). With
    ``gradients`` (the default) the body runs in :func:`~torchattr._core.contexts.grad_context`;
    forward-only callers pass ``gradients=False`` and keep the caller's context (a forward
    inside ``torch.inference_mode()`` stays there). ``hooked`` is accepted for compatibility
    and not used: hooks are removed by their handles.
    """
    del hooked
    with grad_context(model) if gradients else nullcontext():
        if tracing() or not isinstance(model, torch.nn.Module):
            yield
            return
        modules = list(model.modules())
        modes = [m.training for m in modules]
        writes = any(modes)
        with _lock_of(model) if writes else nullcontext():
            buffers = None
            if writes:
                buffers = [(b, b.detach().clone()) for b in model.buffers()]
            try:
                yield
            finally:
                for m, mode in zip(modules, modes):
                    if m.training != mode:
                        m.training = mode
                if buffers is not None:
                    for b, saved_b in buffers:
                        # an inference-mode buffer can only be written inside inference mode
                        with torch.inference_mode(b.is_inference()), torch.no_grad():
                            b.copy_(saved_b)

"""Calling a model without leaving a trace.

:func:`untouched` records what a call could change on an ``nn.Module`` -- the training flag of every
submodule, the hook dictionaries of the modules torchattr hooks, and (when a submodule is in
training mode, so that batch norm would update its running statistics) every buffer -- and
restores it on exit, also when the body raises. Parameters are never written by torchattr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from torchattr._core.checks import tracing

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def untouched(model: Callable[..., Any], hooked: Iterable[Any] = ()) -> Iterator[None]:
    """Context in which ``model`` may be called; its state is restored on exit.

    Restores every submodule's training flag, the buffers (when a submodule is in training mode)
    and the hook dictionaries of the modules in ``hooked`` (those torchattr installs hooks on).
    """
    if tracing() or not isinstance(model, torch.nn.Module):
        yield
        return
    modules = list(model.modules())
    modes = [m.training for m in modules]
    hooks = [
        (m, {h: dict(getattr(m, h)) for h in _HOOK_DICTS if hasattr(m, h)})
        for m in hooked
        if m is not None
    ]
    buffers = None
    if any(modes):
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            if m.training != mode:
                m.training = mode
        for m, saved in hooks:
            for h, entries in saved.items():
                current = getattr(m, h)
                if current != entries:
                    current.clear()
                    current.update(entries)
        if buffers is not None:
            with torch.no_grad():
                for b, saved_b in buffers:
                    b.copy_(saved_b)

"""What a call needs from the caller's context: gradients, normal tensors, its own hooks.

Attribution code may be called anywhere a model is: inside ``torch.inference_mode()`` (Lightning's
validate / test loops, serving code), inside ``torch.no_grad()``, with inputs created in inference
mode, and from several threads sharing one model. Three pieces make every method behave there as
it does in a plain context:

* :func:`grad_context` leaves inference mode (``torch.inference_mode(False)``, which also turns
  grad mode on) for the duration of the call only, so that autograd records what the method
  differentiates; the caller's modes come back on exit. A backward that needs a parameter or
  buffer created under inference mode cannot run: that is refused with an error naming them.
* :func:`normal_tensors` turns inference tensors (the caller's inputs, targets) into normal
  tensors (a copy, made outside inference mode); other tensors are returned as they are.
* :func:`call_hooks` registers forward hooks that act only inside the call that registered them:
  each call owns a token held in a :class:`~contextvars.ContextVar` while its body runs, and a
  hook does nothing when it fires in a context without its token (another thread's forward of the
  same shared module). Hooks are removed by their handles on exit, never by rewriting the hook
  dictionaries, so hooks that other calls or the user add meanwhile stay.

Under ``torch.compile`` tracing the three are pass-throughs (the compiled function is one call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.checks import tracing

ForwardHook = Callable[[nn.Module, Any, Any], Any]

# Tokens of the calls whose body runs in the current context (thread / task).
_ACTIVE: ContextVar[frozenset[object]] = ContextVar("torchattr_active_calls", default=frozenset())

_SAVED_INFERENCE = "Inference tensors cannot be saved for backward"


@contextmanager
def grad_context(model: Any = None) -> Iterator[None]:
    """Run the body outside inference mode and with grad mode on; the caller's modes on exit.

    Methods switch gradients off again where they only run forwards (``torch.no_grad()``), so
    the results equal those of a call made outside any context. A ``RuntimeError`` raised because
    autograd cannot save an inference tensor for the backward becomes a ``ValueError`` naming the
    parameters and buffers of ``model`` that were created under ``torch.inference_mode()``.
    """
    if tracing():
        yield
        return
    try:
        with torch.inference_mode(False):
            yield
    except RuntimeError as error:
        if _SAVED_INFERENCE not in str(error):
            raise
        raise ValueError(_inference_state_message(model)) from error


def _inference_state_message(model: Any) -> str:
    """Which tensors of ``model`` are inference tensors, and what to do about it."""
    names: list[str] = []
    if isinstance(model, nn.Module):
        names = [n for n, t in model.named_parameters() if t.is_inference()]
        names += [n for n, t in model.named_buffers() if t is not None and t.is_inference()]
    if names:
        shown = ", ".join(repr(n) for n in names[:8]) + (" ..." if len(names) > 8 else "")
        what = f"model has parameters/buffers created under torch.inference_mode(): {shown}"
    else:
        what = (
            "a tensor created under torch.inference_mode() (held by the model or passed to "
            "it) takes part in the backward"
        )
    return (
        f"{what}; autograd cannot save inference tensors for the backward this method needs. "
        "Build and load the model outside torch.inference_mode() (torch.no_grad() is fine "
        "for loading weights); methods without a backward (scorecam, ablationcam, eigencam, "
        "randomcam) run on such a model"
    )


def normal_tensors(tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``tensors`` with every inference tensor replaced by a normal copy (same values).

    Tensors created under ``torch.inference_mode()`` cannot be recorded by autograd, nor be
    differentiated with respect to; a copy made outside inference mode can. Others are returned
    unchanged (no copy).
    """
    if tracing() or not any(isinstance(t, Tensor) and t.is_inference() for t in tensors):
        return tuple(tensors)
    with torch.inference_mode(False):
        return tuple(
            t.clone() if isinstance(t, Tensor) and t.is_inference() else t for t in tensors
        )


def normal_tensor(value: Any) -> Any:
    """One value through :func:`normal_tensors` (non-tensors are returned as they are)."""
    return normal_tensors((value,))[0] if isinstance(value, Tensor) else value


@contextmanager
def call_hooks(hooks: Sequence[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """Forward hooks ``(module, hook)`` that exist and act for the body of this call only.

    Each hook is registered with ``register_forward_hook`` and wrapped so that it runs only in
    the context (thread, task) of this call's body: a forward of the same module by another
    thread, or after the body, does not see it. On exit exactly the handles registered here are
    removed, also when the body raises.
    """
    if tracing():
        handles = [m.register_forward_hook(h) for m, h in hooks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        return
    token = object()

    def owned(hook: ForwardHook) -> ForwardHook:
        def guarded(module: nn.Module, args: Any, output: Any) -> Any:
            if token not in _ACTIVE.get():
                return None  # another call's forward of this module
            return hook(module, args, output)

        return guarded

    reset = _ACTIVE.set(_ACTIVE.get() | {token})
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(owned(hook)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.reset(reset)

"""Attributing the output of a submodule (an embedding) instead of the raw input.

Each flat input slot either is continuous (its primal is the input itself) or has a layer (its
primal is that layer's output, and the model still receives the raw input, e.g. integer codes).
While the model runs, forward hooks replace the layer's output with the primal; they exist for
the duration of one model call only and act only in that call's thread / context (see
:func:`~torchattr._core.contexts.call_hooks`), so concurrent calls on one shared model do not
see each other's replacements. A layer must run exactly once per forward: the replacement is
per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from torchattr._core.contexts import call_hooks
from torchattr._core.inputs import InputSpec

Layers = tuple[nn.Module | None, ...]
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def resolve_layers(layer: Any, spec: InputSpec, n_inputs: int) -> Layers:
    """One layer (or None) per flat input slot.

    ``layer`` is None, a module (for a single tensor input), a tuple of modules / None (tuple
    inputs) or a dict from input keys to modules (dict inputs; missing keys are continuous).
    """
    if layer is None:
        return (None,) * n_inputs
    if isinstance(layer, nn.Module):
        if spec.kind != "tensor":
            raise TypeError(
                f"layer is one module but inputs is a {spec.kind}: pass a {spec.kind} of "
                "layers (None for continuous inputs) naming which input each layer embeds"
            )
        return (layer,)
    if isinstance(layer, Mapping):
        if spec.kind != "dict":
            raise TypeError(f"layer is a dict but inputs is a {spec.kind}")
        unknown = sorted(set(layer) - set(spec.keys))
        if unknown:
            raise ValueError(
                f"layer names keys {unknown} that are not in inputs (keys {list(spec.keys)})"
            )
        layers = tuple(layer.get(k) for k in spec.keys)
    elif isinstance(layer, Sequence) and not isinstance(layer, str):
        if spec.kind != "tuple" or len(layer) != n_inputs:
            raise ValueError(
                f"layer is a sequence of {len(layer)} entries: expected one per input "
                f"({n_inputs}) for tuple inputs"
            )
        layers = tuple(layer)
    else:
        raise TypeError(
            f"layer must be an nn.Module, a tuple or a dict, got {type(layer).__name__}"
        )
    for name, module in zip(spec.names(), layers):
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"layer for {name} must be an nn.Module, got {type(module).__name__}")
    return layers


def check_ids(tensors: Sequence[Tensor], names: Sequence[str], layers: Layers) -> None:
    """Inputs of embedding layers must be integer ids within the table, checked before any call."""
    for name, t, layer in zip(names, tensors, layers):
        if not isinstance(layer, EMBEDDINGS):
            continue
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                f"{name} has dtype {t.dtype} but its layer {type(layer).__name__} expects "
                "integer ids (a LongTensor)"
            )
        if t.numel():
            low, high = torch.stack([t.min(), t.max()]).tolist()
            if low < 0 or high >= layer.num_embeddings:
                raise ValueError(
                    f"{name} holds id {low if low < 0 else high}, out of range for an embedding "
                    f"with {layer.num_embeddings} rows: expected 0 <= id < {layer.num_embeddings}"
                )


def layer_name(model: Any, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (or its class name)."""
    if isinstance(model, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return repr(name) if name else "the model itself"
    return type(layer).__name__


@contextmanager
def hooked(
    model: Any,
    layers: Layers,
    outputs: Sequence[Tensor | None] | Callable[[int, Tensor], Tensor] | None = None,
) -> Iterator[list[Tensor | None]]:
    """Run the body with layer outputs captured (``outputs=None``) or replaced by ``outputs``.

    Yields the list that receives the captured outputs (detached). ``outputs`` may also be a
    function ``(slot, output) -> replacement``: the layer's output is replaced by what it returns,
    which the list receives (e.g. a detached leaf that requires grad: the primal is captured in
    the very forward that is differentiated). The hooks act only in this call
    (:func:`~torchattr._core.contexts.call_hooks`); on exit they are removed and each layer must
    have run exactly once.
    """
    captured: list[Tensor | None] = [None] * len(layers)
    calls = [0] * len(layers)

    def make_hook(slot: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            calls[slot] += 1
            if calls[slot] > 1:
                raise ValueError(
                    f"layer {layer_name(model, module)} runs more than once in one forward (a "
                    "shared embedding?): torchattr replaces a layer's single output per call; "
                    "attribute a module that runs once, e.g. wrap each use in its own module"
                )
            if outputs is None:
                # a copy: an in-place op after the layer (ReLU(inplace=True)) must not rewrite it
                captured[slot] = output.detach().clone() if isinstance(output, Tensor) else output
                return None
            if callable(outputs):
                if not isinstance(output, Tensor):
                    raise TypeError(
                        f"layer {layer_name(model, module)} returns a {type(output).__name__}: "
                        "attribute a layer whose output is one tensor"
                    )
                captured[slot] = outputs(slot, output)
                return captured[slot]
            replacement = outputs[slot]
            if isinstance(output, Tensor) and replacement.shape != output.shape:
                raise ValueError(
                    f"replacement for layer {layer_name(model, module)} has shape "
                    f"{list(replacement.shape)} but the layer produced {list(output.shape)}"
                )
            return replacement

        return hook

    hooks = [(layer, make_hook(slot)) for slot, layer in enumerate(layers) if layer is not None]
    with call_hooks(hooks):
        yield captured
    for slot, layer in enumerate(layers):
        if layer is not None and calls[slot] == 0:
            raise ValueError(
                f"layer {layer_name(model, layer)} was never called by the model's forward: "
                "pass the submodule that the forward actually uses"
            )


def padding_masks(
    mask: Any, spec: InputSpec, tensors: Sequence[Tensor], layers: Layers
) -> tuple[Tensor | None, ...]:
    """Per slot, a bool tensor shaped like the ids (True = a real position), or None.

    ``mask`` is None, a bool tensor shaped like the ids, a padding id (positions holding it are
    padding), or a dict of those for dict inputs. Masks apply to inputs with a layer.
    """
    names, n = spec.names(), len(tensors)
    if mask is None:
        return (None,) * n
    if isinstance(mask, Mapping):
        if spec.kind != "dict":
            raise TypeError(f"mask is a dict but inputs is a {spec.kind}")
        unknown = sorted(set(mask) - set(spec.keys))
        if unknown:
            raise ValueError(f"mask names keys {unknown} that are not in inputs")
        parts = tuple(mask.get(k) for k in spec.keys)
    else:
        parts = tuple(mask if layer is not None else None for layer in layers)
    out: list[Tensor | None] = []
    for name, part, ids, layer in zip(names, parts, tensors, layers):
        if part is None:
            out.append(None)
            continue
        if layer is None:
            raise ValueError(f"mask for {name}: masks apply to inputs attributed through a layer")
        if isinstance(part, int) and not isinstance(part, bool):
            part = ids != part
        if not isinstance(part, Tensor) or part.shape != ids.shape:
            shape = list(part.shape) if isinstance(part, Tensor) else type(part).__name__
            raise ValueError(
                f"mask for {name} has shape {shape}: expected a bool tensor shaped like the "
                f"ids {list(ids.shape)} or a padding id"
            )
        out.append(part.to(device=ids.device, dtype=torch.bool))
    return tuple(out)


def embedding_dims(attribution: Tensor, ids: Tensor, multi: bool) -> tuple[int, ...]:
    """Dimensions of a layer attribution beyond its input's shape (the embedding), or ().

    ``[B, L, D]`` for ids ``[B, L]`` -> ``(2,)``; with K classes ``[B, K, L, D]`` -> ``(3,)``.
    Empty when the layer output does not start with the input's shape.
    """
    lead = 2 if multi else 1
    body = attribution.shape[lead:]
    if len(body) <= ids.ndim - 1 or tuple(body[: ids.ndim - 1]) != tuple(ids.shape[1:]):
        return ()
    return tuple(range(lead + ids.ndim - 1, attribution.ndim))


def collapse(attribution: Tensor, ids: Tensor, multi: bool) -> Tensor:
    """Sum a layer attribution over its embedding dimensions (see :func:`embedding_dims`).

    ``[B, L, D]`` for ids ``[B, L]`` -> ``[B, L]``; other layer outputs are returned as they are.
    """
    dims = embedding_dims(attribution, ids, multi)
    return attribution.sum(dim=dims) if dims else attribution


def apply_mask(attribution: Tensor, mask: Tensor | None, multi: bool) -> Tensor:
    """Zero the attribution at padded positions (``mask`` False); shapes as in :func:`collapse`."""
    if mask is None:
        return attribution
    keep = mask.unsqueeze(1) if multi else mask
    keep = keep.reshape(keep.shape + (1,) * (attribution.ndim - keep.ndim))
    return attribution * keep

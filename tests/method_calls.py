"""One call of every method on small shared models, for the grad-context and thread tests.

``CALLS`` maps a name to ``(kind, call)``: ``call(x)`` explains the shared model of ``kind``
(``"image"``: the ConvBN CNN of :mod:`models`, ``"ids"``: a bag-of-embeddings model) for the
input ``x`` and returns its result (a tensor, a tuple or a NamedTuple of tensors). Random
methods draw from a fresh seeded generator, so that two calls with one input are equal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from models import build
from torch import Tensor, nn

import torchattr as ta
from torchattr.cam import METHODS
from torchattr.metrics import deletion, infidelity, max_sensitivity, road

CNN, IMAGES = build("conv_bn")  # float64, eval mode, BatchNorm with non-trivial statistics
CAM_LAYER = "features.4"  # the second convolution: [B, 16, 8, 8]
LABELS = torch.tensor([1, 0, 4])


class Bag(nn.Module):
    """Codes ``[B, L]`` -> an embedding bag -> 3 logits; ``emb`` is attributed with ``layer=``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.emb(ids)).sum(dim=1))


torch.manual_seed(0)
BAG = Bag().double().eval()
IDS = torch.randint(1, 20, (3, 5), generator=torch.Generator().manual_seed(1))


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _cam(method: str) -> Callable[[Tensor], Any]:
    layer = None if method == "fullgrad" else CAM_LAYER
    return lambda x: ta.cam(CNN, x, LABELS, layer=layer, method=method, generator=_seeded())


CALLS: dict[str, tuple[str, Callable[[Tensor], Any]]] = {
    "saliency": ("image", lambda x: ta.saliency(CNN, x, LABELS)),
    "input_x_gradient": ("image", lambda x: ta.input_x_gradient(CNN, x)),
    "smoothgrad": (
        "image",
        lambda x: ta.smoothgrad(CNN, x, LABELS, samples=3, chunk_size=4, generator=_seeded()),
    ),
    "integrated_gradients": (
        "image",
        lambda x: ta.integrated_gradients(CNN, x, target=LABELS, steps=4, return_delta=True),
    ),
    "saliency_layer": ("ids", lambda ids: ta.saliency(BAG, ids, layer=BAG.emb)),
    "smoothgrad_layer": (
        "ids",
        lambda ids: ta.smoothgrad(BAG, ids, layer=BAG.emb, samples=3, generator=_seeded()),
    ),
    "integrated_gradients_layer": (
        "ids",
        lambda ids: ta.integrated_gradients(
            BAG, ids, layer=BAG.emb, baseline=0, mask=0, steps=4, chunk_size=5
        ),
    ),
    **{f"cam_{m}": ("image", _cam(m)) for m in METHODS},
    "cam_two_layers_two_classes": (
        "image",
        lambda x: ta.cam(
            CNN, x, torch.tensor([[0, 1]] * 3), layer=["features.0", CAM_LAYER], method="layercam"
        ),
    ),
    "lrp": ("image", lambda x: ta.lrp(CNN, x, LABELS, return_conservation=True)),
    "lrp_ids": ("ids", lambda ids: ta.lrp(BAG, ids)),
    "deletion": ("image", lambda x: deletion(CNN, x, x.abs().sum(1), step=64)),
    "road": (
        "image",
        lambda x: road(CNN, x, x.abs().sum(1), fractions=(0.5,), generator=_seeded()),
    ),
    "infidelity": (
        "image",
        lambda x: infidelity(CNN, x, x.clone(), LABELS, samples=2, generator=_seeded()),
    ),
    "max_sensitivity": (
        "image",
        lambda x: max_sensitivity(
            functools.partial(ta.saliency, CNN), x, samples=2, generator=_seeded()
        ),
    ),
}


def inputs_of(kind: str) -> Tensor:
    return IMAGES if kind == "image" else IDS


def tensors_of(result: Any) -> list[Tensor]:
    """The tensors of a result (a tensor, a tuple / NamedTuple of them), in order."""
    return [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, Tensor)]


def assert_same(result: Any, expected: Any) -> None:
    """The same tensors, bit for bit (NaN equal to NaN)."""
    got, want = tensors_of(result), tensors_of(expected)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def hooks_left(*models: nn.Module) -> list[tuple[str, str]]:
    """``(submodule name, hook dict)`` of every hook found on the models' submodules."""
    dicts = (
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    return [
        (name, d)
        for model in models
        for name, module in model.named_modules()
        for d in dicts
        if len(getattr(module, d, {}))
    ]

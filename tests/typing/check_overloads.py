"""Checked by mypy (tests/test_conventions.py::test_public_api_types): the structure of the
inputs is the structure of the result, for type checkers too. Never executed."""

from __future__ import annotations

import torch
from torch import Tensor

import torchattr as ta
from torchattr.integrated import Convergence

model = torch.nn.Linear(4, 2)
x = torch.rand(3, 4)

maps: Tensor = ta.cam(model, x, layer=model)
maps_raw: tuple[Tensor, Tensor | list[Tensor]] = ta.cam(model, x, layer=model, return_raw=True)
sal: Tensor = ta.saliency(model, x)
ixg: Tensor = ta.input_x_gradient(model, x, 1)
sg: Tensor = ta.smoothgrad(model, x, sigma=0.1)
ig: Tensor = ta.integrated_gradients(model, x, 1, steps=4)
ig_delta: tuple[Tensor, Tensor] = ta.integrated_gradients(model, x, return_delta=True)
pair: tuple[Tensor, ...] = ta.saliency(lambda a, b: a + b, (x, x))
named: dict[str, Tensor] = ta.integrated_gradients(lambda a: a, {"a": x})
road: Tensor = ta.metrics.road(model, x, x)
relevance: Tensor = ta.lrp(model, x)
relevance_report: tuple[Tensor, ta.Conservation] = ta.lrp(model, x, return_conservation=True)

ig_auto: Tensor = ta.integrated_gradients(model, x, steps="auto", tolerance=0.05)
ig_report: tuple[Tensor, Convergence] = ta.integrated_gradients(
    model, x, steps="auto", return_delta=True
)

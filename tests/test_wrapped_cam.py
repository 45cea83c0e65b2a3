"""``ta.cam`` on wrapped models (DataParallel, DDP, torch.compile): layer names resolve with or
without the wrapper's prefix, and the maps equal those of the unwrapped model."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from method_calls import hooks_left
from models import build
from torch import nn

import torchattr as ta

LAYER = "features.4"


@pytest.fixture(scope="module")
def plain():
    return build("conv_bn", dtype=torch.float32)


def _wrappers(model):
    yield nn.DataParallel(model), "module."  # without GPUs it just calls the module
    yield torch.compile(model, backend="eager"), "_orig_mod."
    yield torch.compile(nn.DataParallel(model), backend="eager"), "_orig_mod.module."


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "fullgrad"])
def test_wrapped_models_equal_unwrapped_with_and_without_prefix(plain, method):
    model, x = plain
    layer = None if method == "fullgrad" else LAYER
    expected = ta.cam(model, x, 1, layer=layer, method=method, batch_size=16)
    for wrapped, prefix in _wrappers(model):
        names = [None] if layer is None else [layer, prefix + layer]
        for name in names:
            got = ta.cam(wrapped, x, 1, layer=name, method=method, batch_size=16)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not hooks_left(model)


def test_wrapped_layer_lists_and_modules(plain):
    model, x = plain
    expected = ta.cam(model, x, layer=["features.0", LAYER])
    wrapped = nn.DataParallel(model)
    for layer in (["module.features.0", LAYER], [model.features[0], "module." + LAYER]):
        torch.testing.assert_close(ta.cam(wrapped, x, layer=layer), expected, rtol=0, atol=0)


def test_unknown_name_on_a_wrapper_lists_inner_names(plain):
    model, x = plain
    with pytest.raises(ValueError, match=r"'module\.features\.9' is not a submodule.*'features"):
        ta.cam(nn.DataParallel(model), x, layer="module.features.9")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_equals_unwrapped(plain, monkeypatch):
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    model, x = plain
    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        for method in ("gradcam", "fullgrad"):
            layer = None if method == "fullgrad" else LAYER
            expected = ta.cam(model, x, layer=layer, method=method)
            for name in [None] if layer is None else [layer, "module." + layer]:
                got = ta.cam(ddp, x, layer=name, method=method)
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # LRP explains the module inside too; rule names with or without the prefix
        composite = {"features.0": ta.rules.Epsilon(0.5)}
        expected = ta.lrp(model, x, composite=composite)
        torch.testing.assert_close(ta.lrp(ddp, x, composite=composite), expected)
        prefixed = {"module.features.0": ta.rules.Epsilon(0.5)}
        torch.testing.assert_close(ta.lrp(ddp, x, composite=prefixed), expected)
    finally:
        dist.destroy_process_group()

"""The CAM family: formulas against hand-computed activations and gradients, explicit loops,
Captum's LayerGradCam, per-sample targets, token layers, bad input and the model's state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_state import assert_unchanged, snapshot
from models import ImageAndTabular, build
from torch import Tensor, nn
from torch.nn import functional as F

import torchattr as ta
from torchattr.cam import METHODS, token_grid

GRADIENT = ("gradcam", "hirescam", "gradcam_elementwise", "gradcam++", "xgradcam", "layercam")


def _kw(method: str) -> dict:
    """randomcam gets a freshly seeded generator per call."""
    return {"generator": torch.Generator().manual_seed(0)} if method == "randomcam" else {}


def _layer(method: str, name: str):
    return None if method == "fullgrad" else name


# ---------------------------------------------------------------- oracles written out by hand


def minmax(m: Tensor) -> Tensor:
    """Per-sample min-max of [B, ...] maps, one sample at a time (constant -> 0)."""
    out = []
    for row in m:
        span = row.max() - row.min()
        out.append((row - row.min()) / span if span > 0 else torch.zeros_like(row))
    return torch.stack(out)


def finish(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """The documented tail: relu, bilinear upsampling (align_corners=False), min-max."""
    up = F.interpolate(raw.relu()[:, None], size=size, mode="bilinear", align_corners=False)
    return minmax(up[:, 0])


class HandNet(nn.Module):
    """conv (stride 2) -> ReLU (the CAM layer, A) -> linear head: G = head.weight[t] exactly."""

    def __init__(self, cin: int = 2, channels: int = 3, side: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, channels, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(channels * (side // 2) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def hand():
    torch.manual_seed(0)
    model = HandNet().double().eval()
    with torch.no_grad():
        model.conv.bias.fill_(0.2)  # mostly positive activations
        model.head.weight[:, ::5] = 0  # some exact zeros in G (Grad-CAM++'s special case)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3, 1, 3])
    acts = F.conv2d(x, model.conv.weight, model.conv.bias, stride=2, padding=1).relu()
    grads = model.head.weight.detach()[t].reshape(acts.shape)  # d s_b / d A_b, closed form
    return model, x, t, acts.detach(), grads


def hand_raw(method: str, A: Tensor, G: Tensor) -> Tensor:
    """Each formula of cam.md, written channel by channel and pixel by pixel."""
    out = []
    for a, g in zip(A, G):  # a, g: [C, h, w]
        cam = torch.zeros(a.shape[1:], dtype=a.dtype)
        for k in range(a.shape[0]):
            if method == "gradcam":
                cam += g[k].mean() * a[k]
            elif method == "hirescam":
                cam += g[k] * a[k]
            elif method == "gradcam_elementwise":
                cam += (g[k] * a[k]).clamp_min(0)
            elif method == "gradcam++":
                w = 0.0
                for i in range(a.shape[1]):
                    for j in range(a.shape[2]):
                        gij = g[k, i, j]
                        if gij != 0:
                            den = 2 * gij**2 + a[k].sum() * gij**3 + 1e-6
                            w += max(gij, 0.0) * gij**2 / den
                cam += w * a[k]
            elif method == "xgradcam":
                cam += (g[k] * a[k]).sum() / (a[k].sum() + 1e-7) * a[k]
            elif method == "layercam":
                cam += g[k].clamp_min(0) * a[k]
        out.append(cam)
    return torch.stack(out)


def svd_projection(m: np.ndarray) -> np.ndarray:
    """First principal component of one [n, C] matrix (numpy SVD), oriented like M 1."""
    m = m - m.mean(axis=0)
    _, _, vt = np.linalg.svd(m, full_matrices=True)
    p = m @ vt[0]
    return p if (p * m.sum(axis=1)).sum() >= 0 else -p


@pytest.mark.parametrize("method", GRADIENT)
def test_gradient_methods_match_the_hand_formulas(hand, method):
    model, x, t, A, G = hand
    maps, raw = ta.cam(model, x, t, layer=model.act, method=method, return_raw=True)
    expected = hand_raw(method, A, G)
    torch.testing.assert_close(raw, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps, finish(expected, (8, 8)), rtol=1e-10, atol=1e-12)
    assert maps.shape == (4, 8, 8) and raw.shape == (4, 4, 4)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_methods_match_a_per_image_svd(hand, method):
    model, x, t, A, G = hand
    maps, raw = ta.cam(model, x, t, layer="act", method=method, return_raw=True)
    source = A if method == "eigencam" else G * A
    expected = torch.stack(
        [
            torch.from_numpy(svd_projection(s.reshape(s.shape[0], -1).T.numpy())).reshape(4, 4)
            for s in source
        ]
    )
    torch.testing.assert_close(raw, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(maps, finish(expected, (8, 8)), rtol=1e-8, atol=1e-10)


def test_scorecam_matches_a_per_channel_loop(hand):
    model, x, t, A, _ = hand
    maps, raw = ta.cam(
        model, x, t, layer=model.act, method="scorecam", chunk_size=5, return_raw=True
    )
    expected = []
    for b in range(x.shape[0]):
        scores = []
        for k in range(A.shape[1]):
            m = F.interpolate(A[b, k][None, None], size=(8, 8), mode="bilinear")[0, 0]
            m = minmax(m[None])[0]
            with torch.no_grad():
                scores.append(model(x[b : b + 1] * m)[0, t[b]])
        w = torch.softmax(torch.stack(scores), dim=0)
        expected.append(sum(w[k] * A[b, k] for k in range(A.shape[1])))
    expected = torch.stack(expected)
    torch.testing.assert_close(raw, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps, finish(expected, (8, 8)), rtol=1e-10, atol=1e-12)


def test_ablationcam_matches_a_per_channel_loop(hand):
    model, x, t, A, _ = hand
    maps, raw = ta.cam(
        model, x, t, layer="act", method="ablationcam", chunk_size=7, return_raw=True
    )
    W, bias = model.head.weight.detach(), model.head.bias.detach()
    expected = []
    for b in range(x.shape[0]):
        s = (W[t[b]] * A[b].flatten()).sum() + bias[t[b]]
        cam = torch.zeros(4, 4, dtype=torch.float64)
        for k in range(A.shape[1]):
            ablated = A[b].clone()
            ablated[k] = 0
            s_k = (W[t[b]] * ablated.flatten()).sum() + bias[t[b]]
            cam += (s - s_k) / s * A[b, k]
        expected.append(cam)
    expected = torch.stack(expected)
    torch.testing.assert_close(raw, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps, finish(expected, (8, 8)), rtol=1e-10, atol=1e-12)


def test_randomcam_weights_are_uniform_draws_of_the_generator(hand):
    model, x, t, A, _ = hand
    _, raw = ta.cam(
        model, x, t, layer="act", method="randomcam", return_raw=True,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    w = 2 * torch.rand((4, 1, 3), generator=torch.Generator().manual_seed(5), dtype=A.dtype) - 1
    expected = torch.einsum("bc,bchw->bhw", w[:, 0], A)
    torch.testing.assert_close(raw, expected, rtol=1e-12, atol=1e-12)


def test_captured_activations_survive_an_inplace_relu():
    """ReLU(inplace=True) after the layer (VGG's features.28) must not rewrite the capture."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(48, 2)
    ).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    pre_relu = model[0](x).detach()
    assert (pre_relu < 0).any()
    for method in ("randomcam", "hirescam"):
        _, raw = ta.cam(model, x, 1, layer="0", method=method, return_raw=True, **_kw(method))
        if method == "randomcam":
            w = (
                2 * torch.rand((2, 1, 3), generator=torch.Generator().manual_seed(0), dtype=x.dtype)
                - 1
            )
            expected = torch.einsum("bc,bchw->bhw", w[:, 0], pre_relu)
        else:
            grads = model[3].weight.detach()[1].reshape(3, 4, 4) * (pre_relu > 0)
            expected = (grads * pre_relu).sum(1)
        torch.testing.assert_close(raw, expected)


class BiasNet(nn.Module):
    """conv(bias) -> BN -> ReLU -> conv(bias, stride 2) -> ReLU -> linear: FullGrad's layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        z = F.relu(self.conv2(F.relu(self.bn(self.conv1(x)))))
        return self.head(z.flatten(1))


def test_fullgrad_matches_plain_autograd_and_the_paper_formula():
    torch.manual_seed(0)
    model = BiasNet().double().eval()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.bn.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        model.bn.weight.copy_(torch.tensor([0.9, 1.2, 0.7]))
        model.bn.bias.copy_(torch.tensor([0.05, -0.1, 0.2]))
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    t = torch.tensor([2, 0, 1])
    maps, raw = ta.cam(model, x, t, layer=None, method="fullgrad", return_raw=True)

    # The oracle: intermediate tensors kept, gradients by plain autograd, psi per channel.
    xr = x.clone().requires_grad_()
    z1 = model.conv1(xr)
    z2 = model.bn(z1)
    z3 = model.conv2(F.relu(z2))
    score = model.head(F.relu(z3).flatten(1)).gather(1, t[:, None]).sum()
    gx, g1, g2, g3 = torch.autograd.grad(score, [xr, z1, z2, z3])
    bn = model.bn
    bn_bias = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    terms = [(x * gx).abs()]
    for bias, g in [(model.conv1.bias, g1), (bn_bias, g2), (model.conv2.bias, g3)]:
        terms.append((bias.detach()[None, :, None, None] * g).abs())
    total = torch.zeros(3, 8, 8, dtype=torch.float64)
    for term in terms:
        normed = minmax(term.detach())  # per sample, over channels and positions
        for c in range(normed.shape[1]):  # upsample every channel, then sum
            total += F.interpolate(normed[:, c : c + 1], size=(8, 8), mode="bilinear")[:, 0]
    torch.testing.assert_close(raw, total, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(maps, minmax(total), rtol=1e-10, atol=1e-10)
    # layer= restricts the bias layers to those inside it
    only = ta.cam(model, x, t, layer=[model.conv1], method="fullgrad", return_raw=True)[1]
    expected = minmax(terms[0]).sum(1) + minmax(terms[1]).sum(1)
    torch.testing.assert_close(only, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name,layer", [("conv_bn", "features.6"), ("residual", "conv3"), ("signal", "net.4")]
)
def test_gradcam_matches_captum_layer_gradcam(name, layer):
    from captum.attr import LayerAttribution, LayerGradCam

    model, x = build(name)
    layer = model.get_submodule(layer)
    t = torch.tensor([1, 0, 2])
    ours, raw = ta.cam(model, x, t, layer=layer, method="gradcam", return_raw=True)
    gc = LayerGradCam(model, layer)
    theirs_raw = gc.attribute(x, target=t, relu_attributions=False)[:, 0]
    torch.testing.assert_close(raw, theirs_raw, rtol=1e-8, atol=1e-10)
    theirs = gc.attribute(x, target=t, relu_attributions=True)
    mode = "bilinear" if x.ndim == 4 else "linear"
    up = LayerAttribution.interpolate(theirs, tuple(x.shape[2:]), interpolate_mode=mode)[:, 0]
    torch.testing.assert_close(ours, minmax(up), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- targets and shapes


@pytest.fixture(scope="module")
def convnet():
    model, x = build("conv_bn")
    return model, x


@pytest.mark.parametrize("method", [m for m in METHODS if m != "randomcam"])
def test_a_batch_of_targets_explains_each_image_with_its_own(convnet, method):
    model, x = convnet
    t = torch.tensor([4, 0, 2])
    layer = _layer(method, "features.6")
    together = ta.cam(model, x, t, layer=layer, method=method)
    alone = torch.cat(
        [ta.cam(model, x[i : i + 1], t[i : i + 1], layer=layer, method=method) for i in range(3)]
    )
    torch.testing.assert_close(together, alone, rtol=1e-7, atol=1e-9)
    if method not in ("eigencam",):  # everything else depends on the class
        other = ta.cam(model, x, torch.tensor([1, 3, 0]), layer=layer, method=method)
        assert not torch.allclose(together, other)


@pytest.mark.parametrize("method", METHODS)
def test_multi_target_gives_one_map_per_class(convnet, method):
    model, x = convnet
    targets = torch.tensor([[0, 1], [2, 3], [4, 0]])
    layer = _layer(method, "features.6")
    both, raw = ta.cam(
        model, x, targets, layer=layer, method=method, return_raw=True, **_kw(method)
    )
    assert both.shape == (3, 2, 16, 16)
    for j in range(2):
        one, one_raw = ta.cam(
            model, x, targets[:, j], layer=layer, method=method, return_raw=True, **_kw(method)
        )
        if method == "randomcam":  # K draws per sample instead of one: only shapes agree
            assert one.shape == both[:, j].shape
            continue
        torch.testing.assert_close(both[:, j], one, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(raw[:, j], one_raw, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_in_the_unit_interval_at_the_input_size(convnet, method):
    model, x = convnet
    layer = _layer(method, "features.6")
    maps = ta.cam(model, x, layer=layer, method=method, **_kw(method))
    assert maps.shape == (3, 16, 16) and maps.dtype == torch.float64
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(3, dtype=maps.dtype))
    assert not maps.requires_grad
    resized = ta.cam(model, x, layer=layer, method=method, size=(5, 7), **_kw(method))
    assert resized.shape == (3, 5, 7) and resized.min() >= 0 and resized.max() <= 1


def test_default_target_and_callable_targets(convnet):
    model, x = convnet
    predicted = model(x).argmax(1)
    for method in ("gradcam", "scorecam"):
        default = ta.cam(model, x, layer="features.6", method=method)
        explicit = ta.cam(model, x, predicted, layer="features.6", method=method)
        torch.testing.assert_close(default, explicit)
        as_callable = ta.cam(model, x, lambda out: out[:, 2], layer="features.6", method=method)
        torch.testing.assert_close(
            as_callable, ta.cam(model, x, 2, layer="features.6", method=method)
        )


def test_float32_maps_and_half_inputs_accumulate_in_float32():
    model, x = build("conv_bn", dtype=torch.float32)
    maps = ta.cam(model, x, layer="features.6")
    assert maps.dtype == torch.float32
    ref = ta.cam(model.double(), x.double(), layer="features.6")
    torch.testing.assert_close(maps.double(), ref, rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_the_maps(convnet):
    model, x = convnet
    for method in ("gradcam++", "scorecam", "ablationcam", "eigencam", "fullgrad"):
        layer = _layer(method, "features.6")
        whole = ta.cam(model, x, 1, layer=layer, method=method)
        chunked = ta.cam(model, x, 1, layer=layer, method=method, chunk_size=2)
        torch.testing.assert_close(whole, chunked, rtol=1e-9, atol=1e-11)


def test_nested_and_chained_layers_each_get_their_own_gradient(convnet):
    """One recorded forward serves every layer, also when one contains or feeds another."""
    model, x = convnet
    layers = [model.features, "features.4", "features.5", model.features[6]]
    _, raws = ta.cam(model, x, 1, layer=layers, method="hirescam", return_raw=True)
    for layer, raw in zip(layers, raws):
        alone = ta.cam(model, x, 1, layer=layer, method="hirescam", return_raw=True)[1]
        torch.testing.assert_close(raw, alone, rtol=1e-10, atol=1e-12)
    frozen = copy.deepcopy(model).requires_grad_(False)  # nothing before the layers needs grad
    frozen_layers = [frozen.features, "features.4", "features.5", frozen.features[6]]
    torch.testing.assert_close(
        ta.cam(frozen, x, 1, layer=frozen_layers, method="hirescam"),
        ta.cam(model, x, 1, layer=layers, method="hirescam"),
    )


def test_several_layers_average_their_maps(convnet):
    model, x = convnet
    layers = ["features.2", model.features[6]]
    maps, raws = ta.cam(model, x, 1, layer=layers, method="layercam", return_raw=True)
    assert [r.shape for r in raws] == [(3, 16, 16), (3, 8, 8)]
    per_layer = [finish(r, (16, 16)) for r in raws]
    torch.testing.assert_close(maps, minmax((per_layer[0] + per_layer[1]) / 2))


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "fullgrad"])
def test_tuple_and_dict_inputs_use_the_first_tensor_as_the_image(method):
    torch.manual_seed(0)
    model = ImageAndTabular().double().eval()
    image = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    labs = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 2, 1])
    layer = _layer(method, "conv")
    as_tuple = ta.cam(model, (image, labs), t, layer=layer, method=method)
    as_dict = ta.cam(model, {"image": image, "labs": labs}, t, layer=layer, method=method)
    assert as_tuple.shape == (3, 8, 8)
    torch.testing.assert_close(as_tuple, as_dict)
    alone = [
        ta.cam(model, (image[i : i + 1], labs[i : i + 1]), t[i : i + 1], layer=layer, method=method)
        for i in range(3)
    ]
    torch.testing.assert_close(as_tuple, torch.cat(alone))


def test_signals_give_one_dimensional_maps():
    model, x = build("signal")
    maps = ta.cam(model, x, layer="net.4", method="hirescam")
    assert maps.shape == (3, 32) and maps.min() >= 0 and maps.max() <= 1


# ---------------------------------------------------------------- vision transformers


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """4x4 patches of a 16 x 24 image: 4 x 6 = 24 tokens after a class token (and ``registers``
    extra tokens); the head reads the class token."""

    def __init__(self, dim: int = 8, registers: int = 0) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 25 + registers, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return TinyViT().double().eval(), torch.randn(2, 3, 16, 24, dtype=torch.float64)


def test_token_grid_rule():
    assert token_grid(197, (224, 224)) == (1, (14, 14))
    assert token_grid(196, (224, 224)) == (0, (14, 14))
    assert token_grid(25, (16, 24)) == (1, (4, 6))
    assert token_grid(50, (16, 24)) is None


def test_vit_token_layer_matches_a_manual_gradcam(vit):
    model, x = vit
    t = torch.tensor([2, 0])
    layer = model.blocks[0]
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, out: captured.update(out=out))
    score = model(x).gather(1, t[:, None]).sum()
    handle.remove()
    tokens = captured["out"]
    (grads,) = torch.autograd.grad(score, tokens)
    A = tokens.detach()[:, 1:].transpose(1, 2).reshape(2, 8, 4, 6)
    G = grads[:, 1:].transpose(1, 2).reshape(2, 8, 4, 6)
    expected = (G.mean(dim=(2, 3), keepdim=True) * A).sum(1)
    maps, raw = ta.cam(model, x, t, layer="blocks.0", return_raw=True)
    torch.testing.assert_close(raw, expected)
    torch.testing.assert_close(maps, finish(expected, (16, 24)))
    grid = ta.cam(model, x, t, layer=layer, reshape=(4, 6))
    torch.testing.assert_close(grid, maps)

    def to_grid(out: Tensor) -> Tensor:
        return out[:, 1:].transpose(1, 2).reshape(out.shape[0], -1, 4, 6)

    torch.testing.assert_close(ta.cam(model, x, t, layer=layer, reshape=to_grid), maps)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "fullgrad"])
def test_every_method_runs_on_tokens(vit, method):
    model, x = vit
    maps = ta.cam(model, x, 1, layer="blocks.0", method=method, **_kw(method))
    assert maps.shape == (2, 16, 24) and maps.min() >= 0 and maps.max() <= 1


def test_ablationcam_on_tokens_zeroes_one_embedding_dimension(vit):
    model, x = vit
    _, raw = ta.cam(model, x, 1, layer="blocks.0", method="ablationcam", return_raw=True)
    layer = model.blocks[0]
    with torch.no_grad():
        clean = {}
        h = layer.register_forward_hook(lambda m, a, out: clean.update(out=out))
        s = model(x)[:, 1]
        h.remove()
        A = clean["out"][:, 1:].transpose(1, 2).reshape(2, 8, 4, 6)
        expected = torch.zeros(2, 4, 6, dtype=torch.float64)
        for k in range(8):

            def zero(m, a, out, k=k):
                out = out.clone()
                out[..., k] = 0
                return out

            h = layer.register_forward_hook(zero)
            s_k = model(x)[:, 1]
            h.remove()
            expected += ((s - s_k) / s)[:, None, None] * A[:, k]
    torch.testing.assert_close(raw, expected)


# ---------------------------------------------------------------- the model is left alone


@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_calls_and_after_errors(method):
    model, x = build("conv_bn")
    model.features[0].register_forward_hook(lambda *a: None)
    before = snapshot(model)
    layer = _layer(method, "features.6")
    ta.cam(model, x, layer=layer, method=method, **_kw(method))
    ta.cam(model, x, torch.tensor([[0, 1], [1, 2], [2, 3]]), layer=layer, method=method)

    def explode(out):
        raise RuntimeError("boom inside the target")

    with pytest.raises(RuntimeError, match="boom"):
        ta.cam(model, x, explode, layer=layer, method=method)
    with pytest.raises(ValueError, match="out of range"):
        ta.cam(model, x, 99, layer=layer, method=method)
    if method != "fullgrad":
        with pytest.raises(ValueError, match=r"expected \[B, C, \.\.\.\]"):
            ta.cam(model, x, layer="head", method=method)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "fullgrad"])
def test_training_mode_warns_and_buffers_survive(method):
    model, x = build("conv_bn")
    model.train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        ta.cam(model, x, 0, layer=_layer(method, "features.6"), method=method)
    assert_unchanged(model, before)


def test_training_mode_changes_nothing_when_no_layer_reads_it(hand):
    model, x, t, *_ = hand
    for method in ("gradcam++", "eigengradcam", "fullgrad"):
        layer = _layer(method, "act")
        model.eval()
        expected = ta.cam(model, x, t, layer=layer, method=method)
        model.train()  # HandNet is user-defined: counts as mode-dependent, warns
        try:
            with pytest.warns(UserWarning, match="training mode"):
                got = ta.cam(model, x, t, layer=layer, method=method)
        finally:
            model.eval()
        torch.testing.assert_close(got, expected)


def test_works_inside_no_grad_and_leaves_inputs_alone(convnet):
    model, x = convnet
    original = x.clone()
    expected = ta.cam(model, x, 1, layer="features.6", method="layercam")
    with torch.no_grad():
        inside = ta.cam(model, x, 1, layer="features.6", method="layercam")
    leaf = x.clone().requires_grad_(True)
    tracked = ta.cam(model, leaf, 1, layer="features.6", method="layercam")
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(tracked, expected)
    assert torch.equal(x, original) and leaf.grad is None and not tracked.requires_grad


# ---------------------------------------------------------------- bad input


def test_unknown_layer_name_lists_close_matches(convnet):
    model, x = convnet
    with pytest.raises(ValueError, match=r"'features\.66' is not a submodule.*'features\.6'"):
        ta.cam(model, x, layer="features.66")
    with pytest.raises(ValueError, match=r"top-level submodules: 'features', 'head'"):
        ta.cam(model, x, layer="zzz")
    with pytest.raises(TypeError, match="layer is required"):
        ta.cam(model, x, layer=None)
    with pytest.raises(TypeError, match=r"nn\.Module, a dotted submodule name"):
        ta.cam(model, x, layer=3)
    with pytest.raises(ValueError, match="empty"):
        ta.cam(model, x, layer=[])
    with pytest.raises(TypeError, match=r"not an nn\.Module"):
        ta.cam(lambda x: model(x), x, layer="features.6")


def test_layer_never_reached_or_reused(convnet):
    model, x = convnet
    with pytest.raises(ValueError, match="never called"):
        ta.cam(model, x, layer=nn.Conv2d(3, 3, 1))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.act(self.conv(self.act(x))).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="runs more than once"):
        ta.cam(Twice().eval(), torch.randn(2, 3, 8, 8), layer="act")


def test_layer_output_of_the_wrong_shape(convnet, vit):
    model, x = convnet
    with pytest.raises(ValueError, match=r"layer 'head' output has shape \[B, 5\]"):
        ta.cam(model, x, layer="head")
    with pytest.raises(ValueError, match=r"layer 'head' output has shape \[B, 5\]"):
        ta.cam(model, x, layer="head", method="scorecam")

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y, y

    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.pair(x)[0].mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="returned a tuple, not a Tensor"):
        ta.cam(TupleNet().eval(), torch.randn(2, 3, 8, 8), layer="pair")
    vit_model, vx = vit
    registers = TinyViT(registers=2).double().eval()
    with pytest.raises(ValueError, match=r"neither N = 27 nor N - 1 tokens tile a grid"):
        ta.cam(registers, vx, layer="blocks.0")
    maps = ta.cam(registers, vx, layer="blocks.0", reshape=(4, 6))  # drops 3 tokens
    assert maps.shape == (2, 16, 24)
    with pytest.raises(ValueError, match=r"reshape=\(5, 6\) needs 30 tokens"):
        ta.cam(vit_model, vx, layer="blocks.0", reshape=(5, 6))
    with pytest.raises(ValueError, match="turns tokens"):
        ta.cam(model, x, layer="features.6", reshape=(4, 4))
    with pytest.raises(ValueError, match="a callable reshape"):
        ta.cam(vit_model, vx, layer="blocks.0", method="ablationcam", reshape=lambda t: t)


def test_other_bad_arguments(convnet):
    model, x = convnet
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+\+\+'.*'scorecam'"):
        ta.cam(model, x, layer="features.6", method="gradcam+++")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ta.cam(model, x, layer="features.6", chunk_size=0)
    with pytest.raises(ValueError, match="size must be"):
        ta.cam(model, x, layer="features.6", size=(0, 4))
    with pytest.raises(ValueError, match="spatial dims"):
        ta.cam(model, x, layer="features.6", size=(4, 4, 4))
    with pytest.raises(TypeError, match="reshape must be"):
        ta.cam(model, x, layer="features.6", reshape="grid")
    with pytest.raises(ValueError, match="contains NaN"):
        ta.cam(model, x * float("nan"), layer="features.6")
    with pytest.raises(ValueError, match="no Conv or BatchNorm layer with a bias"):
        ta.cam(model, x, layer="features.2", method="fullgrad")
    mlp, features = build("mlp")
    with pytest.raises(ValueError, match="expected images"):
        ta.cam(mlp, features, layer="net.1")

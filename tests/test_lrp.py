"""LRP on traced graphs: axioms, canonicalisation, architectures, errors, model state.

The rule formulas themselves are checked against dense float64 references in
``test_lrp_rules.py``; here the oracles are axioms (conservation, LRP-0 = gradient x input for
piecewise-linear networks) and explicit constructions.
"""

from __future__ import annotations

import pytest
import torch
from lrp_models import (
    DenseBlockNet,
    HandAttention,
    ResNetLike,
    TinyViT,
    randomise_batchnorm,
    zero_biases,
)
from model_state import assert_unchanged, snapshot
from sequence_models import EHRModel, TransformerClassifier
from torch import nn
from torch.nn import functional as F

import torchattr as ta
from torchattr.lrp.affine import merge_batchnorm
from torchattr.lrp.rules import Constant, Epsilon, Norm, Pass, ZPlus

E0 = ta.composites.by_kind({"conv": Epsilon(0.0), "dense": Epsilon(0.0), "op": Epsilon(0.0)})


def _double(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(model, seed).double().eval()


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return (grad * x).detach()


@pytest.mark.parametrize("make", [ResNetLike, DenseBlockNet], ids=["resnet", "densenet"])
def test_lrp0_equals_gradient_times_input(make):
    """Epsilon(0) everywhere on a ReLU network (biases, BatchNorm, residual adds, concatenation,
    max and average pools included) is exactly gradient x input, rule by rule."""
    torch.manual_seed(0)
    model = _double(make())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    relevance = ta.lrp(model, x, target, composite=E0)
    torch.testing.assert_close(relevance, gradient_x_input(model, x, target), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [ResNetLike, DenseBlockNet], ids=["resnet", "densenet"])
@pytest.mark.parametrize(
    "composite",
    [E0, ta.composites.by_kind({"conv": ZPlus(1e-12), "dense": Epsilon(0.0), "op": Norm(0.0)})],
    ids=["epsilon0", "zplus"],
)
def test_bias_free_networks_conserve(make, composite):
    """Without biases (BatchNorm is not used here: merging it creates biases), the input
    relevance sums to the explained logit: residual adds get Norm, concatenation routes."""
    model = zero_biases(_double(make(bias=False)))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.running_var)
            nn.init.zeros_(m.running_mean)
            nn.init.ones_(m.weight)
            m.eps = 0.0
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    _, report = ta.lrp(model, x, composite=composite, return_conservation=True)
    torch.testing.assert_close(report.relevance, report.score, rtol=1e-5, atol=1e-9)


def test_residual_add_gets_norm_not_the_plain_gradient():
    """For y = a + b with a rule-free gradient R would reach both branches in full (2R); Norm
    splits it in proportion a : b."""

    class Add(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3, bias=False)
            self.b = nn.Linear(4, 3, bias=False)
            self.head = nn.Linear(3, 1, bias=False)

        def forward(self, x):
            return self.head(self.a(x) + self.b(x))

    model = _double(Add())
    x = torch.randn(2, 4, dtype=torch.float64)
    relevance, report = ta.lrp(model, x, composite=E0, return_conservation=True)
    torch.testing.assert_close(relevance.sum(1), report.score, rtol=1e-10, atol=0)
    a, b = model.a(x), model.b(x)
    r_sum = (a + b) * model.head.weight[0]  # relevance at the sum (epsilon-0 head)
    r_a = (a / (a + b) * r_sum).detach()  # Norm: share of branch a
    x_a = (x[:, :, None] * model.a.weight.T[None] / a[:, None, :] * r_a[:, None, :]).sum(-1)
    r_b = r_sum - r_a
    x_b = (x[:, :, None] * model.b.weight.T[None] / b[:, None, :] * r_b[:, None, :]).sum(-1)
    torch.testing.assert_close(relevance, (x_a + x_b).detach(), rtol=1e-9, atol=1e-12)


def test_batchnorm_merge_keeps_outputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    bn = randomise_batchnorm(nn.BatchNorm2d(5)).double().eval()
    weight, bias = merge_batchnorm(conv.weight.detach(), conv.bias.detach(), bn)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)))
    lin = nn.Linear(4, 5, bias=False).double()
    bn1 = randomise_batchnorm(nn.BatchNorm1d(5), 1).double().eval()
    weight, bias = merge_batchnorm(lin.weight.detach(), None, bn1)
    v = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(F.linear(v, weight, bias), bn1(lin(v)))


@pytest.mark.parametrize(
    "make",
    [ResNetLike, DenseBlockNet, TinyViT, HandAttention],
    ids=["resnet", "densenet", "vit", "hand-attention"],
)
def test_program_computes_the_models_output(make):
    """The rewritten graph (BatchNorm merged, rules in place) has the model's forward values:
    the seeded score equals the model's logit."""
    model = _double(make())
    x = (
        torch.randn(3, 5, 8, dtype=torch.float64)
        if make is HandAttention
        else torch.randn(3, 3, 16, 16, dtype=torch.float64)
    )
    relevance, report = ta.lrp(model, x, return_conservation=True)
    expected = model(x).max(dim=1).values
    torch.testing.assert_close(report.score, expected.detach(), rtol=1e-10, atol=1e-12)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()


def test_vit_with_multihead_attention():
    """A small ViT with nn.MultiheadAttention, LayerNorm and GELU.

    Stated tolerance: with biases off and attention weights held constant (CP-LRP), relevance
    is conserved to 1e-6; under the default AttnLRP softmax rule (not conservative by design:
    ``sum x (R - s sum R) != sum R``) the relevance is finite and differs from the score.
    """
    model = zero_biases(_double(TinyViT(bias=False, tokens=False)))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    cp = ta.composites.by_kind({"softmax": Constant()}) | E0
    _, report = ta.lrp(model, x, composite=cp, return_conservation=True)
    torch.testing.assert_close(report.relevance, report.score, rtol=1e-6, atol=1e-9)
    relevance, report = ta.lrp(model, x, composite=E0, return_conservation=True)
    assert torch.isfinite(relevance).all()
    assert not torch.allclose(report.relevance, report.score, rtol=1e-3)


def test_hand_written_attention_matches_module_attention():
    """q k^T, softmax and A v written by hand get the same treatment as nn.MultiheadAttention's
    written-out form: one head, no biases, identical weights."""
    torch.manual_seed(0)
    hand = HandAttention(8).double().eval()

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 1, bias=False, batch_first=True)
            self.head = hand.head

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(1))

    module = Module().double().eval()
    with torch.no_grad():
        module.attn.in_proj_weight.copy_(torch.cat([hand.q.weight, hand.k.weight, hand.v.weight]))
        module.attn.out_proj.weight.copy_(torch.eye(8))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(module(x), hand(x))
    torch.testing.assert_close(ta.lrp(module, x, 1, composite=E0), ta.lrp(hand, x, 1, composite=E0))


def test_uniform_rule_on_products():
    """y = a * b with both factors carrying relevance: each gets half (AttnLRP uniform rule)."""

    class Gate(nn.Module):
        def forward(self, x):
            return (x[:, :2] * x[:, 2:]).sum(1, keepdim=True)

    x = torch.tensor([[1.0, 2.0, 3.0, -4.0]], dtype=torch.float64)
    relevance = ta.lrp(Gate().eval(), x, composite=E0)
    products = torch.tensor([3.0, -8.0], dtype=torch.float64)
    torch.testing.assert_close(relevance[0], torch.cat([products / 2, products / 2]))


def test_multi_target_equals_a_loop():
    model = _double(ResNetLike())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 3], [2, 2, 0], [3, 1, 0]])
    both = ta.lrp(model, x, targets)
    assert both.shape == (3, 3, 3, 8, 8)
    for k in range(3):
        torch.testing.assert_close(both[:, k], ta.lrp(model, x, targets[:, k]))


def test_callable_target_and_single_logit():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    by_index = ta.lrp(model, x, composite=E0)
    by_callable = ta.lrp(model, x, lambda out: out[:, 0], composite=E0)
    torch.testing.assert_close(by_index, by_callable)
    first = torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(by_index, gradient_x_input(model, x, first))


def test_token_model_attributes_ids_through_the_embedding():
    torch.manual_seed(0)
    model = TransformerClassifier().eval()
    tokens = torch.randint(2, 25, (3, 7))
    tokens[0, 5:] = 0
    relevance, report = ta.lrp(model, tokens, return_conservation=True)
    assert relevance.shape == (3, 7) and torch.isfinite(relevance).all()
    torch.testing.assert_close(report.relevance, relevance.sum(1))
    torch.testing.assert_close(
        report.score, model(tokens).max(1).values.detach(), rtol=1e-5, atol=1e-6
    )


def test_dict_inputs_codes_and_labs():
    torch.manual_seed(0)
    model = EHRModel().double().eval()
    inputs = {
        "conditions": torch.randint(0, 30, (4, 5)),
        "procedures": torch.randint(0, 20, (4, 3)),
        "labs": torch.randn(4, 4, dtype=torch.float64),
    }
    relevance, report = ta.lrp(model, inputs, return_conservation=True)
    assert relevance["conditions"].shape == (4, 5) and relevance["labs"].shape == (4, 4)
    total = sum(r.sum(1) for r in relevance.values())
    torch.testing.assert_close(report.relevance, total)
    torch.testing.assert_close(report.score, model(**inputs).reshape(-1).detach())


def test_composite_overrides_by_name_type_and_dict():
    model = _double(DenseBlockNet())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plan = {site.name: rule for site, rule in ta.lrp_rules(model, x)}
    assert plan["stem"] == ta.rules.Flat() and plan["c1"] == ZPlus()
    assert plan["head"] == Epsilon() and isinstance(plan["cat"], type(None))
    override = ta.composites.by_name({"c1": Epsilon(0.5)}) | ta.composites.EpsilonPlusFlat()
    plan = {site.name: rule for site, rule in ta.lrp_rules(model, x, override)}
    assert plan["c1"] == Epsilon(0.5) and plan["c2"] == ZPlus()
    same = ta.lrp(model, x, composite={"c1": Epsilon(0.5)})
    torch.testing.assert_close(same, ta.lrp(model, x, composite=override))
    assert not torch.allclose(same, ta.lrp(model, x))
    by_type = ta.composites.by_type({nn.Conv2d: Epsilon(0.0)}) | E0
    torch.testing.assert_close(ta.lrp(model, x, composite=by_type), ta.lrp(model, x, composite=E0))


def test_parameters_are_read_when_the_cached_program_runs():
    model = _double(ResNetLike())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    first = ta.lrp(model, x, 0)
    with torch.no_grad():
        model.a1.weight.mul_(-1.5)
        model.bn1.running_mean.add_(0.3)
    second = ta.lrp(model, x, 0)
    assert not torch.allclose(first, second)
    fresh = _double(ResNetLike())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(second, ta.lrp(fresh, x, 0))


def test_model_is_untouched_also_on_error():
    model = _double(ResNetLike()).train()
    hook = model.a1.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        ta.lrp(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="out of range"):
        ta.lrp(model, torch.randn(2, 3, 8, 8, dtype=torch.float64), target=9)
    assert_unchanged(model, before)
    hook.remove()


def test_errors_name_the_problem():
    model = _double(ResNetLike())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        ta.lrp(model, x.masked_fill(x > 1, float("nan")))
    with pytest.raises(TypeError, match="composite must be"):
        ta.lrp(model, x, composite=[ZPlus()])
    with pytest.raises(TypeError, match=r"ZPlus.*'add'.*Pass, Norm or Epsilon"):
        ta.lrp(model, x, composite=ta.composites.by_name({"add": ZPlus()}) | E0)
    with pytest.raises(TypeError, match="no rule to layer 'head'"):
        ta.lrp(model, x, composite=ta.composites.by_kind({"conv": ZPlus()}))

    class Erf(nn.Module):
        def forward(self, x):
            return torch.special.erf(x).sum(1, keepdim=True)

    with pytest.raises(TypeError, match=r"no rule for operation 'special_erf'.*by_name"):
        ta.lrp(Erf().eval(), torch.randn(2, 3))
    fixed = ta.lrp(Erf().eval(), torch.randn(2, 3), composite={"special_erf": Pass()})
    assert fixed.shape == (2, 3)


def test_control_flow_on_values_runs_as_the_model_does():
    """The model's own forward runs: a branch on a value takes the same path as the model."""

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    x = torch.tensor([[1.0, -3.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([1])
    relevance = ta.lrp(Branchy().eval(), x, target, composite=E0)
    torch.testing.assert_close(relevance, gradient_x_input(Branchy().eval(), x, target))
    assert relevance[0, 1] == 3.0 and relevance[0, 0] == 0.0


def test_norm_rule_on_average_pool_and_mean():
    """Norm on a mean: the epsilon rule with the mean's own map, R_i = x_i (R / n) / stab(mean)
    (= x_i R / stab(sum x) up to where the stabiliser sits, as Zennit's Norm on pools)."""

    class Mean(nn.Module):
        def forward(self, x):
            return x.mean(dim=1, keepdim=True)

    x = torch.tensor([[1.0, 3.0, -2.0]], dtype=torch.float64)
    relevance = ta.lrp(Mean().eval(), x, composite=ta.composites.by_kind({"op": Norm()}))
    score = x.mean()
    torch.testing.assert_close(relevance[0], x[0] * (score / 3) / (score + 1e-6))


class _Volumes(nn.Module):
    """Conv3d, ConvTranspose2d, GroupNorm, Upsample, AvgPool1d and Conv1d in one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv3d(1, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.gn = nn.GroupNorm(1, 3)
        self.resize = nn.Upsample(scale_factor=0.5, mode="bilinear")
        self.c1 = nn.Conv1d(3, 2, 3)
        self.pool = nn.AvgPool1d(2)
        self.head = nn.Linear(2 * 15, 3)

    def forward(self, x):
        v = torch.relu(self.c3(x)).mean(dim=2)  # [B, 4, 8, 8]
        u = self.resize(self.gn(torch.relu(self.up(v))))  # [B, 3, 8, 8]
        s = self.pool(torch.relu(self.c1(u.flatten(2)[..., :32])))  # [B, 2, 15]
        return self.head(s.flatten(1))


def test_more_layer_kinds_run_and_reproduce_the_forward():
    model = _double(_Volumes())
    x = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64)
    composites = (None, ta.composites.EpsilonAlpha2Beta1(), ta.composites.EpsilonGammaBox(-5, 5))
    for composite in composites:
        relevance, report = ta.lrp(model, x, composite=composite, return_conservation=True)
        assert relevance.shape == x.shape and torch.isfinite(relevance).all()
        expected = model(x).max(dim=1).values.detach()
        torch.testing.assert_close(report.score, expected, rtol=1e-10, atol=1e-12)
    plan = {site.name: (site.kind, rule) for site, rule in ta.lrp_rules(model, x)}
    assert plan["c3"] == ("conv", ta.rules.Flat()) and plan["up"] == ("conv", ZPlus())
    assert plan["gn"] == ("norm", None) and plan["resize"] == ("op", Norm())


def test_lrp0_on_conv3d_and_transposed_convolutions_is_gradient_times_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c3 = nn.Conv3d(1, 3, 3, padding=1)
            self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
            self.head = nn.Linear(2, 4)

        def forward(self, x):
            v = torch.relu(self.c3(x)).amax(dim=2)
            return self.head(torch.relu(self.up(v)).mean(dim=(2, 3)))

    model = _double(Net())
    x = torch.randn(3, 1, 3, 6, 6, dtype=torch.float64)
    target = torch.tensor([1, 0, 3])
    torch.testing.assert_close(
        ta.lrp(model, x, target, composite=E0),
        gradient_x_input(model, x, target),
        rtol=1e-9,
        atol=1e-12,
    )


def test_lrp_under_autocast_explains_the_model_in_its_own_dtype():
    """An enclosing bf16 autocast is switched off: the same relevance as outside it, no error."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 8, 8)
    expected = ta.lrp(model, x, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ta.lrp(model, x, 2)
        assert torch.is_autocast_enabled("cpu")  # the user's context is back after the call
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)

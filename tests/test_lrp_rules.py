"""LRP rules and composites against independent dense-matrix references (tests/lrp_reference.py).

Every layer is turned into a dense float64 matrix (a convolution by applying it to every basis
vector), every rule is written out as matrix products, and chains are walked backwards by hand.
Nothing here calls torchattr except the function under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lrp_reference as ref
import pytest
import torch
from torch import nn

import torchattr as ta

DTYPE = torch.float64
# ZBox denominator: sum_i (x_i w_ij - l_i w_ij+ - h_i w_ij-), without b_j, as in the shared
# reference (lrp.md), Montavon et al.'s zB rule and Zennit (whose (x; w, b) - (l; w+, b+) -
# (h; w-, b-) cancels the bias, checked in tests/test_lrp_zennit.py).
ZBOX_BIAS = False


def close(actual, expected, rtol=1e-6, atol=1e-9):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == DTYPE, actual.dtype
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make().to(DTYPE).eval()


def mixed_bias(module: nn.Module) -> nn.Module:
    """Give every bias values of both signs (and no zeros)."""
    with torch.no_grad():
        for mod in module.modules():
            bias = getattr(mod, "bias", None)
            if (
                isinstance(bias, torch.Tensor)
                and bias.numel() > 1
                and not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d))
            ):
                n = bias.numel()
                values = torch.linspace(-0.7, 0.8, n, dtype=DTYPE)
                values[values.abs() < 1e-3] = 0.05
                bias.copy_(values[torch.randperm(n)])
    return module


def reference(model, x, target, rules, norm_eps=1e-6):
    """Reference relevance of a Sequential; also checks the dense forward against the model."""
    steps = ref.sequential_steps(model, x.shape[1:], rules, norm_eps)
    R, logits = ref.chain(steps, x, target)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x).reshape(x.shape[0], -1), rtol=1e-10, atol=1e-10)
    return R


# ---------------------------------------------------------------------------------------------
# The references themselves


def test_reference_by_hand():
    """The 2 x 2 numbers worked out in the docstring of lrp_reference."""
    W = torch.tensor([[1.0, 3.0], [-3.0, 4.0]], dtype=DTYPE)
    layer = ref.DenseLayer(
        W, torch.tensor([0.5, -4.0], dtype=DTYPE), torch.ones_like(W), (2,), (2,)
    )
    x = torch.tensor([[2.0, -1.0]], dtype=DTYPE)
    R = torch.tensor([[1.0, 2.0]], dtype=DTYPE)
    expected = {
        "epsilon": (ref.epsilon(), [-62 / 11, 50 / 11]),
        "zplus": (ref.zplus(), [26 / 11, 6 / 11]),
        "alpha_beta": (ref.alpha_beta(2.0, 1.0), [52 / 11, 1 / 11]),
        "gamma": (ref.gamma(0.25), [-29 / 11, 67 / 22]),
        "zbox": (
            ref.zbox(torch.tensor([-1.0, -2.0]), torch.tensor([3.0, 1.0])),
            [67 / 39, 50 / 39],
        ),
        "zbox_bias": (
            ref.zbox(torch.tensor([-1.0, -2.0]), torch.tensor([3.0, 1.0]), bias=True),
            [44 / 19, 260 / 171],
        ),
        "flat": (ref.flat(), [1.5, 1.5]),
        "wsquare": (ref.wsquare(), [22 / 41, 68 / 41]),
    }
    for name, (rule, values) in expected.items():
        got = rule(layer, x, R)
        torch.testing.assert_close(
            got,
            torch.tensor([values], dtype=DTYPE),
            rtol=0,
            atol=1e-5,
            msg=lambda m, n=name: f"{n}: {m}",
        )
    a, b = ref.norm_sum(
        [torch.tensor(3.0, dtype=DTYPE), torch.tensor(-1.0, dtype=DTYPE)], torch.tensor(2.0)
    )
    torch.testing.assert_close(
        torch.stack([a, b]), torch.tensor([3.0, -1.0], dtype=DTYPE), rtol=0, atol=1e-5
    )
    # sign(0) := +1
    assert ref.stab(torch.tensor([0.0, -0.0, -1.0]), 0.5).tolist() == [0.5, 0.5, -1.5]


def test_reference_conv_matrix_matches_conv():
    conv = seeded(lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2))
    x = torch.randn(2, 4, 7, 7, dtype=DTYPE)
    layer = ref.conv_layer(conv, (4, 7, 7))
    with torch.no_grad():
        torch.testing.assert_close(layer.forward(x.reshape(2, -1)), conv(x).reshape(2, -1))
    # Flat connectivity: a corner output of the padded conv sees 2 x 2 pixels x 2 channels
    assert layer.conn[:, 0].sum().item() == 2 * 2 * 2


# ---------------------------------------------------------------------------------------------
# 1. Every rule on a single layer


@dataclass(frozen=True)
class LayerCase:
    make: Callable[[], nn.Module]
    in_shape: tuple[int, ...]
    low: Callable[[], torch.Tensor | float]
    high: Callable[[], torch.Tensor | float]


LAYER_CASES = {
    "linear": LayerCase(
        lambda: nn.Linear(5, 4),
        (5,),
        lambda: torch.linspace(-3.0, -2.0, 5, dtype=DTYPE),
        lambda: 2.5,
    ),
    "conv1d_s2_p1": LayerCase(
        lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1),
        (2, 9),
        lambda: -3.0,
        lambda: torch.tensor([[[2.5], [3.0]]], dtype=DTYPE),
    ),
    "conv1d_dilated_groups": LayerCase(
        lambda: nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2),
        (4, 8),
        lambda: -3.0,
        lambda: 3.0,
    ),
    "conv2d_s2_p1_g2": LayerCase(
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        (4, 7, 7),
        lambda: torch.tensor([-3.0, -2.5, -3.5, -4.0], dtype=DTYPE).reshape(1, 4, 1, 1),
        lambda: 3.0,
    ),
    "conv2d_rect_kernel": LayerCase(
        lambda: nn.Conv2d(3, 2, (3, 2), padding=(1, 0)), (3, 5, 6), lambda: -3.0, lambda: 3.0
    ),
}

# name -> (torchattr rule from the case, reference rule from the case)
RULES = {
    "epsilon": (lambda c: ta.rules.Epsilon(), lambda c: ref.epsilon()),
    "epsilon_0.25": (lambda c: ta.rules.Epsilon(epsilon=0.25), lambda c: ref.epsilon(0.25)),
    "zplus": (lambda c: ta.rules.ZPlus(), lambda c: ref.zplus()),
    "alpha2beta1": (lambda c: ta.rules.AlphaBeta(), lambda c: ref.alpha_beta(2.0, 1.0)),
    "alpha1beta0": (
        lambda c: ta.rules.AlphaBeta(alpha=1.0, beta=0.0),
        lambda c: ref.alpha_beta(1.0, 0.0),
    ),
    "gamma": (lambda c: ta.rules.Gamma(), lambda c: ref.gamma(0.25)),
    "gamma_1": (lambda c: ta.rules.Gamma(gamma=1.0), lambda c: ref.gamma(1.0)),
    "zbox": (
        lambda c: ta.rules.ZBox(c.low(), c.high()),
        lambda c: ref.zbox(c.low(), c.high(), bias=ZBOX_BIAS),
    ),
    "flat": (lambda c: ta.rules.Flat(), lambda c: ref.flat()),
    "wsquare": (lambda c: ta.rules.WSquare(), lambda c: ref.wsquare()),
}


def single_layer(case_name):
    case = LAYER_CASES[case_name]
    layer = mixed_bias(seeded(case.make, seed=sorted(LAYER_CASES).index(case_name)))
    model = (
        nn.Sequential(layer) if isinstance(layer, nn.Linear) else nn.Sequential(layer, nn.Flatten())
    )
    torch.manual_seed(1)
    x = torch.randn(3, *case.in_shape, dtype=DTYPE)
    return case, layer, model, x


def modified_gradient(rule_name, layer, x, R, low=None, high=None):
    """Second, independent form of each rule: modified forward passes, then gradient x input
    (the way Zennit computes them), on the real module instead of its dense matrix."""
    w, b = layer.weight.detach(), layer.bias.detach()
    conv = getattr(layer, "_conv_forward", None)

    def f(inp, weight, bias):
        return (
            conv(inp, weight, bias)
            if conv is not None
            else torch.nn.functional.linear(inp, weight, bias)
        )

    def grads(out, inputs, cotangent):
        return torch.autograd.grad(out, inputs, cotangent)

    x = x.detach()
    xp, xn = x.clamp(min=0).requires_grad_(), x.clamp(max=0).requires_grad_()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if rule_name.startswith("epsilon"):
        eps = 0.25 if rule_name == "epsilon_0.25" else 1e-6
        xi = x.clone().requires_grad_()
        z = f(xi, w, b)
        return x * grads(z, xi, R / ref.stab(z.detach(), eps))[0]
    if rule_name == "zplus":
        z = f(xp, wp, b.clamp(min=0)) + f(xn, wn, None)
        gp, gn = grads(z, (xp, xn), R / ref.stab(z.detach()))
        return xp * gp + xn * gn
    if rule_name.startswith("alpha"):
        alpha, beta = (2.0, 1.0) if rule_name == "alpha2beta1" else (1.0, 0.0)
        zp = f(xp, wp, b.clamp(min=0)) + f(xn, wn, None)
        zn = f(xp, wn, b.clamp(max=0)) + f(xn, wp, None)
        gpp, gpn = grads(zp, (xp, xn), R / ref.stab(zp.detach()))
        gnp, gnn = grads(zn, (xp, xn), R / ref.stab(zn.detach()))
        return alpha * (xp * gpp + xn * gpn) - beta * (xp * gnp + xn * gnn)
    if rule_name.startswith("gamma"):
        g = 1.0 if rule_name == "gamma_1" else 0.25
        positive = f(x, w, b) >= 0
        zpos = f(xp, w + g * wp, b + g * b.clamp(min=0)) + f(xn, w + g * wn, None)
        zneg = f(xp, w + g * wn, b + g * b.clamp(max=0)) + f(xn, w + g * wp, None)
        cp = torch.where(positive, R / ref.stab(zpos.detach()), 0.0)
        cn = torch.where(positive, 0.0, R / ref.stab(zneg.detach()))
        a, c = grads(zpos, (xp, xn), cp)
        d, e = grads(zneg, (xp, xn), cn)
        return xp * (a + d) + xn * (c + e)
    if rule_name == "zbox":
        lo = torch.broadcast_to(torch.as_tensor(low, dtype=DTYPE), x.shape).clone().requires_grad_()
        hi = (
            torch.broadcast_to(torch.as_tensor(high, dtype=DTYPE), x.shape).clone().requires_grad_()
        )
        xi = x.clone().requires_grad_()
        # Zennit's parametrisation: the bias is clamped along with the weights, so it cancels
        bl, bh = (None, None) if ZBOX_BIAS else (b.clamp(min=0), b.clamp(max=0))
        parts = f(xi, w, b), f(lo, wp, bl), f(hi, wn, bh)
        s = R / ref.stab((parts[0] - parts[1] - parts[2]).detach())
        (gx,), (gl,), (gh,) = (grads(p, t, s) for p, t in zip(parts, (xi, lo, hi)))
        return x * gx - lo * gl - hi * gh
    ones = torch.ones_like(x).requires_grad_()
    z = f(ones, torch.ones_like(w), None) if rule_name == "flat" else f(ones, w**2, b**2)
    return grads(z, ones, R / ref.stab(z.detach()))[0]


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("case_name", sorted(LAYER_CASES))
def test_reference_rules_match_modified_gradient_form(case_name, rule_name):
    """The dense-matrix references equal the modified-forward / gradient form of each rule."""
    case, layer, _, x = single_layer(case_name)
    with torch.no_grad():
        out = layer(x)
    torch.manual_seed(3)
    R = torch.randn_like(out)
    dense = (
        ref.conv_layer(layer, case.in_shape)
        if not isinstance(layer, nn.Linear)
        else ref.linear_layer(layer)
    )
    rule = RULES[rule_name][1](case)
    got = rule(dense, x.reshape(3, -1), R.reshape(3, -1)).reshape(x.shape)
    expected = modified_gradient(rule_name, layer, x, R, case.low(), case.high())
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("target_kind", ["int", "per_sample"])
@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("case_name", sorted(LAYER_CASES))
def test_rule_on_single_layer(case_name, rule_name, target_kind):
    case, layer, model, x = single_layer(case_name)
    n_out = model(x).shape[1]
    target = 1 if target_kind == "int" else torch.tensor([0, n_out - 1, 2])
    ta_rule, ref_rule = RULES[rule_name]
    R = ta.lrp(model, x, target, composite=ta.composites.by_type({type(layer): ta_rule(case)}))
    close(R, reference(model, x, target, {"0": ref_rule(case)}))


# ---------------------------------------------------------------------------------------------
# 2. Chains with a rule per layer


def mlp():
    return mixed_bias(
        seeded(
            lambda: nn.Sequential(
                nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
            )
        )
    )


def cnn(pool=None):
    """Conv -> ReLU -> [pool] -> Conv -> ReLU -> Flatten -> Linear on 2 x 8 x 8 inputs."""

    def make():
        layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()]
        if pool is not None:
            layers.append(pool)
            layers += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)]
        else:
            layers += [
                nn.Conv2d(4, 4, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64, 3),
            ]
        return nn.Sequential(*layers)

    return mixed_bias(seeded(make, seed=3))


def images(batch=3, seed=5):
    torch.manual_seed(seed)
    return torch.randn(batch, 2, 8, 8, dtype=DTYPE)


TARGETS = torch.tensor([2, 0, 1])


def test_mlp_rules_by_name():
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=DTYPE)
    target = torch.tensor([2, 0, 1, 1])
    composite = ta.composites.by_name(
        {"0": ta.rules.ZPlus(), "2": ta.rules.Gamma(0.5), "4": ta.rules.Epsilon(0.01)}
    )
    expected = reference(
        model, x, target, {"0": ref.zplus(), "2": ref.gamma(0.5), "4": ref.epsilon(0.01)}
    )
    close(ta.lrp(model, x, target, composite=composite), expected)


def test_mlp_alpha_beta_by_type_and_target_none():
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=DTYPE)
    composite = ta.composites.by_type({nn.Linear: ta.rules.AlphaBeta()})
    target = model(x).argmax(1)
    expected = reference(model, x, target, dict.fromkeys(["0", "2", "4"], ref.alpha_beta()))
    close(ta.lrp(model, x, target, composite=composite), expected)
    close(ta.lrp(model, x, composite=composite), expected)  # None = the argmax


@pytest.mark.parametrize("hidden_rule", ["flat", "wsquare"])
def test_mlp_relevance_passes_relu_unchanged_into_zero_units(hidden_rule):
    """Flat / WSquare on a hidden layer give relevance to units whose ReLU output is 0; the ReLU is
    Pass, so that relevance reaches the layer below unchanged (as in Zennit)."""
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=DTYPE)
    ta_rule, ref_rule = RULES[hidden_rule]
    composite = ta.composites.by_name(
        {"0": ta.rules.Epsilon(), "2": ta_rule(None), "4": ta.rules.Epsilon()}
    )
    expected = reference(model, x, 1, {"0": ref.epsilon(), "2": ref_rule(None), "4": ref.epsilon()})
    close(ta.lrp(model, x, 1, composite=composite), expected)


CNN_RULES = {
    # name -> (torchattr composite factory, reference rules)
    "conv_zplus_dense_eps": (
        lambda: ta.composites.by_type(
            {nn.Conv2d: ta.rules.ZPlus(), nn.Linear: ta.rules.Epsilon(0.01)}
        ),
        {"0": ref.zplus(), "3": ref.zplus(), "6": ref.epsilon(0.01)},
    ),
    "box_gamma_alphabeta": (
        lambda: ta.composites.by_name(
            {"0": ta.rules.ZBox(-3.0, 3.0), "3": ta.rules.Gamma(), "6": ta.rules.AlphaBeta()}
        ),
        {"0": ref.zbox(-3.0, 3.0, bias=ZBOX_BIAS), "3": ref.gamma(0.25), "6": ref.alpha_beta()},
    ),
    "wsquare_alpha1beta0_eps": (
        lambda: ta.composites.by_name(
            {"0": ta.rules.WSquare(), "3": ta.rules.AlphaBeta(1.0, 0.0), "6": ta.rules.Epsilon()}
        ),
        {"0": ref.wsquare(), "3": ref.alpha_beta(1.0, 0.0), "6": ref.epsilon()},
    ),
}


@pytest.mark.parametrize("rules", sorted(CNN_RULES))
@pytest.mark.parametrize("pool", ["maxpool", "avgpool"])
def test_cnn_with_pool(pool, rules):
    """Conv -> ReLU -> MaxPool2d (winner takes all) / AvgPool2d (Norm) -> Conv -> ReLU -> Linear."""
    model = cnn(nn.MaxPool2d(2) if pool == "maxpool" else nn.AvgPool2d(2))
    x = images()
    make_composite, ref_rules = CNN_RULES[rules]
    close(
        ta.lrp(model, x, TARGETS, composite=make_composite()),
        reference(model, x, TARGETS, ref_rules),
    )


def test_cnn_strided_rules_by_type():
    model = cnn()  # Conv -> ReLU -> Conv(stride 2) -> ReLU -> Flatten -> Linear: names 0, 2, 5
    x = images()
    composite = ta.composites.by_type(
        {nn.Conv2d: ta.rules.Gamma(0.1), nn.Linear: ta.rules.Epsilon(0.1)}
    )
    expected = reference(
        model, x, TARGETS, {"0": ref.gamma(0.1), "2": ref.gamma(0.1), "5": ref.epsilon(0.1)}
    )
    close(ta.lrp(model, x, TARGETS, composite=composite), expected)


def test_batchnorm_is_merged_into_preceding_layer():
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).to(DTYPE)
    mixed_bias(model)
    with torch.no_grad():
        for bn in (model[1], model[5]):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, dtype=DTYPE))
            bn.running_var.copy_(torch.rand(n, dtype=DTYPE) + 0.5)
            bn.weight.copy_(torch.randn(n, dtype=DTYPE))  # some negative scales
            bn.bias.copy_(torch.randn(n, dtype=DTYPE))
    model.eval()
    x = images(seed=8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    composite = ta.composites.by_type(
        {nn.Conv2d: ta.rules.ZPlus(), nn.Linear: ta.rules.AlphaBeta()}
    )
    R = ta.lrp(model, x, TARGETS, composite=composite)
    expected = reference(
        model, x, TARGETS, {"0": ref.zplus(), "4": ref.alpha_beta(), "7": ref.alpha_beta()}
    )
    close(R, expected)
    for k, v in model.state_dict().items():  # the model is left untouched
        assert torch.equal(v, state[k]), k


def test_batchnorm_without_preceding_layer_is_pass():
    torch.manual_seed(7)
    model = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)).to(DTYPE)
    with torch.no_grad():
        model[0].running_mean.copy_(torch.randn(5, dtype=DTYPE))
        model[0].running_var.copy_(torch.rand(5, dtype=DTYPE) + 0.5)
        model[0].weight.copy_(torch.randn(5, dtype=DTYPE))
    model.eval()
    x = torch.randn(3, 5, dtype=DTYPE)
    layer = ref.linear_layer(model[1])
    with torch.no_grad():
        h = model[0](x)
    expected = ref.epsilon()(layer, h, ref.seed(layer.forward(h), TARGETS))
    close(
        ta.lrp(model, x, TARGETS, composite=ta.composites.by_type({nn.Linear: ta.rules.Epsilon()})),
        expected,
    )


@pytest.mark.parametrize("kind", ["maxpool", "avgpool", "strided", "residual"])
def test_reference_chain_lrp0_is_gradient_x_input(kind):
    """Without biases and stabilisers every reference chain (ReLU Pass, max pool routing, Norm on
    average pools and adds) reduces to gradient x input: a check of the chain machinery itself."""
    target = torch.tensor([2, 0, 1])
    if kind == "residual":
        model = bias_free(seeded(Residual, seed=4))
        torch.manual_seed(5)
        x = torch.randn(3, 4, dtype=DTYPE)
        eps0 = ref.epsilon(0.0)
        R = residual_reference(model, x, target, eps0, eps0, eps0, norm_eps=1e-30)
    else:
        pool = {"maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(2), "strided": None}[kind]
        model = bias_free(cnn(pool))
        x = images()
        names = ["0", "3", "6"] if pool is not None else ["0", "2", "5"]
        R = reference(model, x, target, dict.fromkeys(names, ref.epsilon(0.0)), norm_eps=1e-30)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    torch.testing.assert_close(R, x * grad, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 3. Named composites


def small_cnn():
    """Conv-ReLU-Conv-ReLU-Flatten-Linear-ReLU-Linear; module names 0, 2, 5, 7."""
    return mixed_bias(
        seeded(
            lambda: nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64, 10),
                nn.ReLU(),
                nn.Linear(10, 3),
            ),
            seed=11,
        )
    )


LOW = torch.tensor([-3.0, -2.5], dtype=DTYPE).reshape(1, 2, 1, 1)
HIGH = 3.0

COMPOSITES = {
    "EpsilonPlus": (
        lambda: ta.composites.EpsilonPlus(),
        {"0": ref.zplus(), "2": ref.zplus(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonPlusFlat": (
        lambda: ta.composites.EpsilonPlusFlat(),
        {"0": ref.flat(), "2": ref.zplus(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonAlpha2Beta1": (
        lambda: ta.composites.EpsilonAlpha2Beta1(),
        {"0": ref.alpha_beta(), "2": ref.alpha_beta(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonAlpha2Beta1Flat": (
        lambda: ta.composites.EpsilonAlpha2Beta1Flat(),
        {"0": ref.flat(), "2": ref.alpha_beta(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonGammaBox": (
        lambda: ta.composites.EpsilonGammaBox(LOW, HIGH),
        {
            "0": ref.zbox(LOW, HIGH, bias=ZBOX_BIAS),
            "2": ref.gamma(0.25),
            "5": ref.epsilon(),
            "7": ref.epsilon(),
        },
    ),
    "EpsilonGammaBox_scalar": (
        lambda: ta.composites.EpsilonGammaBox(-3.0, 3.0),
        {
            "0": ref.zbox(-3.0, 3.0, bias=ZBOX_BIAS),
            "2": ref.gamma(0.25),
            "5": ref.epsilon(),
            "7": ref.epsilon(),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_named_composite_on_cnn(name):
    model = small_cnn()
    x = images(seed=12)
    make_composite, ref_rules = COMPOSITES[name]
    close(
        ta.lrp(model, x, TARGETS, composite=make_composite()),
        reference(model, x, TARGETS, ref_rules),
    )


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("EpsilonPlusFlat", "flat"),
        ("EpsilonAlpha2Beta1Flat", "flat"),
        ("EpsilonGammaBox", "epsilon"),
    ],
)
def test_named_composite_first_layer_on_mlp(name, first):
    """On a model without convolutions the Flat composites flatten the first dense layer; ZBox is
    for the first convolution only, so EpsilonGammaBox leaves an MLP all Epsilon."""
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=DTYPE)
    composite = getattr(ta.composites, name)(*((-3.0, 3.0) if name == "EpsilonGammaBox" else ()))
    first_rule = ref.flat() if first == "flat" else ref.epsilon()
    expected = reference(model, x, 0, {"0": first_rule, "2": ref.epsilon(), "4": ref.epsilon()})
    close(ta.lrp(model, x, 0, composite=composite), expected)


# ---------------------------------------------------------------------------------------------
# 4. Stabiliser convention


def test_epsilon_stabiliser_at_exact_zero():
    """z_0 = 1 * 2 + 2 * (-1) + 0 = 0 exactly for sample 0: stab(0) = +0.5 with Epsilon(0.5).

    The second layer is WSquare, so the hidden unit with z = 0 still receives relevance.
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).to(DTYPE).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, -1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.25]))
        model[1].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        model[1].bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=DTYPE)
    assert model[0](x)[0, 0].item() == 0.0
    target = torch.tensor([0, 1])
    composite = ta.composites.by_name({"0": ta.rules.Epsilon(0.5), "1": ta.rules.WSquare()})
    R = ta.lrp(model, x, target, composite=composite)
    close(R, reference(model, x, target, {"0": ref.epsilon(0.5), "1": ref.wsquare()}))
    # by hand for sample 0: the output logit is 0 * 1 + (-1.25) * (-2) + 0.5 = 3; WSquare gives
    # hidden R = 3 * [1, 4] / (1 + 4 + 0.25) = [4/7, 16/7]; unit 0 (z = 0): x_i w_i0 (4/7) / 0.5,
    # unit 1 (z = -1.25): x_i w_i1 (16/7) / (-1.75)
    r0, r1 = 4 / 7, 16 / 7
    by_hand = [1 * 2 * r0 / 0.5 + 1 * 0.5 * r1 / -1.75, 2 * -1 * r0 / 0.5 + 2 * -1 * r1 / -1.75]
    close(R[0], torch.tensor(by_hand, dtype=DTYPE))


def test_gamma_at_exact_zero_uses_positive_case():
    """Gamma with z_j = 0 exactly takes the z >= 0 branch (the brief's convention). Zennit uses
    z > 0 and z < 0, so a unit with z = 0 passes no relevance down there (differs on purpose)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).to(DTYPE).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, -1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.25]))
        model[1].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        model[1].bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=DTYPE)
    target = torch.tensor([0, 1])
    composite = ta.composites.by_name({"0": ta.rules.Gamma(), "1": ta.rules.WSquare()})
    R = ta.lrp(model, x, target, composite=composite)
    close(R, reference(model, x, target, {"0": ref.gamma(0.25), "1": ref.wsquare()}))


@pytest.mark.parametrize("eps", [0.5, 100.0])
def test_large_epsilon(eps):
    _, _, model, x = single_layer("conv2d_s2_p1_g2")
    R = ta.lrp(
        model, x, TARGETS, composite=ta.composites.by_type({nn.Conv2d: ta.rules.Epsilon(eps)})
    )
    close(R, reference(model, x, TARGETS, {"0": ref.epsilon(eps)}))


# ---------------------------------------------------------------------------------------------
# 5. Functional residual add and mean heads (Norm)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc1(x)
        a = torch.relu(self.fc2(h))
        return self.head(a + h)


def residual_reference(model, x, target, r1, r2, r3, norm_eps=1e-6):
    L1, L2, L3 = (ref.linear_layer(m) for m in (model.fc1, model.fc2, model.head))
    h = L1.forward(x)
    a = L2.forward(h).clamp(min=0)
    s = a + h
    y = L3.forward(s)
    R_s = r3(L3, s, ref.seed(y, target))
    R_a, R_h_skip = ref.norm_sum([a, h], R_s, norm_eps)  # Norm on the add
    R_h = R_h_skip + r2(L2, h, R_a)  # ReLU is Pass; relevance meeting at h adds up
    return r1(L1, x, R_h)


@pytest.mark.parametrize("rules", ["epsilon", "mixed"])
def test_functional_residual_add_gets_norm(rules):
    model = mixed_bias(seeded(Residual, seed=4))
    torch.manual_seed(5)
    x = torch.randn(4, 4, dtype=DTYPE)
    target = torch.tensor([0, 1, 2, 1])
    if rules == "epsilon":
        composite = ta.composites.by_type({nn.Linear: ta.rules.Epsilon()})
        refs = (ref.epsilon(), ref.epsilon(), ref.epsilon())
    else:
        composite = ta.composites.by_name(
            {"fc1": ta.rules.ZPlus(), "fc2": ta.rules.Gamma(), "head": ta.rules.Epsilon(0.1)}
        )
        refs = (ref.zplus(), ref.gamma(0.25), ref.epsilon(0.1))
    close(
        ta.lrp(model, x, target, composite=composite), residual_reference(model, x, target, *refs)
    )


@pytest.mark.parametrize("rule", ["epsilon", "norm"])
def test_rule_on_functional_add_by_node_name(rule):
    """by_name on the fx node name of a functional add: Epsilon(0.5) / Norm(0.5) there is
    R_a = a R / stab_0.5(a + b)."""
    model = mixed_bias(seeded(Residual, seed=4))
    torch.manual_seed(5)
    x = torch.randn(4, 4, dtype=DTYPE)
    target = torch.tensor([0, 1, 2, 1])
    add_rule = ta.rules.Epsilon(0.5) if rule == "epsilon" else ta.rules.Norm(0.5)
    composite = ta.composites.by_name({"add": add_rule}) | ta.composites.by_type(
        {nn.Linear: ta.rules.Epsilon()}
    )
    eps = ref.epsilon()
    expected = residual_reference(model, x, target, eps, eps, eps, norm_eps=0.5)
    close(ta.lrp(model, x, target, composite=composite), expected)
    plain = residual_reference(model, x, target, eps, eps, eps)
    assert (expected - plain).abs().max() > 1e-4  # the stabiliser matters here


def test_explicit_pass_and_norm_and_epsilon_on_avg_pool():
    """Pass on ReLU and Norm on AvgPool2d are the defaults; Epsilon(0.5) on the pool is the Norm
    rule on its own map (weights 1/n) with stabiliser 0.5."""
    model = cnn(nn.AvgPool2d(2))
    x = images()
    base = {nn.Conv2d: ta.rules.ZPlus(), nn.Linear: ta.rules.Epsilon()}
    rules = {"0": ref.zplus(), "3": ref.zplus(), "6": ref.epsilon()}
    expected = reference(model, x, TARGETS, rules)
    for extra in ({nn.ReLU: ta.rules.Pass()}, {nn.AvgPool2d: ta.rules.Norm()}):
        composite = ta.composites.by_type({**base, **extra})
        close(ta.lrp(model, x, TARGETS, composite=composite), expected)
    composite = ta.composites.by_type({**base, nn.AvgPool2d: ta.rules.Epsilon(0.5)})
    expected = reference(model, x, TARGETS, rules, norm_eps=0.5)
    close(ta.lrp(model, x, TARGETS, composite=composite), expected)


class MeanHead(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h.mean(dim=(2, 3)) if self.how == "mean" else self.pool(h).flatten(1)
        return self.fc(h)


@pytest.mark.parametrize("how", ["mean", "adaptive_avg_pool"])
def test_mean_head_gets_norm(how):
    model = mixed_bias(seeded(lambda: MeanHead(how), seed=6))
    x = images(seed=9)
    composite = ta.composites.by_type(
        {nn.Conv2d: ta.rules.ZPlus(), nn.Linear: ta.rules.Epsilon(0.05)}
    )
    conv = ref.conv_layer(model.conv, (2, 8, 8))
    mean = ref.map_layer(lambda t: t.mean(dim=(2, 3)), (5, 8, 8))
    fc = ref.linear_layer(model.fc)
    x_flat = x.reshape(3, -1)
    z = conv.forward(x_flat)
    h = z.clamp(min=0)
    m = mean.forward(h)
    y = fc.forward(m)
    with torch.no_grad():
        torch.testing.assert_close(y, model(x))
    R_m = ref.epsilon(0.05)(fc, m, ref.seed(y, TARGETS))
    R_h = ref.norm()(mean, h, R_m)  # R_i = x_i (1/n) R_j / stab(mean_j)
    expected = ref.zplus()(conv, x_flat, R_h).reshape(x.shape)
    close(ta.lrp(model, x, TARGETS, composite=composite), expected)


# ---------------------------------------------------------------------------------------------
# 6. Multi-target


@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonGammaBox"])
def test_multi_target_equals_single_targets(name):
    model = small_cnn()
    x = images(seed=12)
    make_composite, ref_rules = COMPOSITES[name]
    targets = torch.tensor([[0, 2], [1, 1], [2, 0]])
    R = ta.lrp(model, x, targets, composite=make_composite())
    assert R.shape == (3, 2, *x.shape[1:])
    for k in range(targets.shape[1]):
        close(R[:, k], ta.lrp(model, x, targets[:, k], composite=make_composite()))
        close(R[:, k], reference(model, x, targets[:, k], ref_rules))


# ---------------------------------------------------------------------------------------------
# 7. Conservation


def bias_free(model):
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            mod.bias = None
    return model


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_conservation_lrp0_bias_free(kind):
    model = bias_free(mlp() if kind == "mlp" else small_cnn())
    torch.manual_seed(13)
    x = torch.randn(4, 6, dtype=DTYPE) if kind == "mlp" else images(batch=4, seed=13)
    target = torch.tensor([0, 1, 2, 0])
    composite = ta.composites.by_type(
        {nn.Linear: ta.rules.Epsilon(0.0), nn.Conv2d: ta.rules.Epsilon(0.0)}
    )
    R, report = ta.lrp(model, x, target, composite=composite, return_conservation=True)
    logits = model(x).gather(1, target[:, None])[:, 0].detach()
    totals = R.flatten(1).sum(1)
    torch.testing.assert_close(totals, logits, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(report.relevance, totals, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(report.score, logits, rtol=1e-10, atol=1e-12)
    # bias-free ReLU network, LRP-0: gradient x input
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    close(R, x * grad, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 8. Composite overrides and precedence


@pytest.mark.parametrize(
    ("override", "name", "ta_rule", "ref_rule"),
    [
        ("conv0_flat", "0", lambda: ta.rules.Flat(), ref.flat()),
        ("conv2_gamma", "2", lambda: ta.rules.Gamma(0.5), ref.gamma(0.5)),
        ("dense5_eps", "5", lambda: ta.rules.Epsilon(0.25), ref.epsilon(0.25)),
    ],
)
def test_by_name_overrides_named_composite(override, name, ta_rule, ref_rule):
    model = small_cnn()
    x = images(seed=12)
    composite = ta.composites.by_name({name: ta_rule()}) | ta.composites.EpsilonPlus()
    rules = {**COMPOSITES["EpsilonPlus"][1], name: ref_rule}
    R = ta.lrp(model, x, TARGETS, composite=composite)
    close(R, reference(model, x, TARGETS, rules))
    plain = reference(model, x, TARGETS, COMPOSITES["EpsilonPlus"][1])
    assert (R - plain).abs().max() > 1e-3  # the override changed something


def test_union_precedence_is_left_first():
    model = small_cnn()
    x = images(seed=12)
    by_type = ta.composites.by_type({nn.Conv2d: ta.rules.ZPlus(), nn.Linear: ta.rules.Epsilon()})
    by_name = ta.composites.by_name({"2": ta.rules.AlphaBeta()})
    name_first = {"0": ref.zplus(), "2": ref.alpha_beta(), "5": ref.epsilon(), "7": ref.epsilon()}
    type_first = {"0": ref.zplus(), "2": ref.zplus(), "5": ref.epsilon(), "7": ref.epsilon()}
    close(
        ta.lrp(model, x, TARGETS, composite=by_name | by_type),
        reference(model, x, TARGETS, name_first),
    )
    close(
        ta.lrp(model, x, TARGETS, composite=by_type | by_name),
        reference(model, x, TARGETS, type_first),
    )


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_by_name_glob():
    model = mixed_bias(seeded(Named, seed=14))
    torch.manual_seed(15)
    x = torch.randn(3, 5, dtype=DTYPE)
    composite = ta.composites.by_name({"fc*": ta.rules.ZPlus(), "head": ta.rules.Epsilon(0.1)})
    L1, L2, L3 = (ref.linear_layer(m) for m in (model.fc1, model.fc2, model.head))
    steps = [ref.Layer(L1, ref.zplus()), ref.ReLU(), ref.Layer(L2, ref.zplus()), ref.ReLU()]
    steps.append(ref.Layer(L3, ref.epsilon(0.1)))
    expected, _ = ref.chain(steps, x, TARGETS)
    close(ta.lrp(model, x, TARGETS, composite=composite), expected)

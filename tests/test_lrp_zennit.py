"""LRP composites against Zennit (the reference LRP library) on small Sequential models.

Skipped when Zennit is not installed. Zennit's package ``__init__`` imports its torchvision
canonizers, so where torchvision is absent a stub ``zennit.torchvision`` module is registered
first (nothing here uses the torchvision canonizers). The same models are also checked against
the dense references of tests/lrp_reference.py, which ties the two oracles together.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import lrp_reference as ref
import pytest
import torch
from torch import nn

import torchattr as ta

if importlib.util.find_spec("torchvision") is None and importlib.util.find_spec("zennit"):
    sys.modules.setdefault("zennit.torchvision", types.ModuleType("zennit.torchvision"))
zennit = pytest.importorskip("zennit")

from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402

DTYPE = torch.float64
TARGETS = torch.tensor([2, 0, 1])
needs_lrp = pytest.mark.skipif(not hasattr(ta, "lrp"), reason="torchattr.lrp not available yet")


def zennit_lrp(model, x, target, composite):
    """Zennit's relevance with R_out = logit * onehot(target)."""
    onehot = torch.nn.functional.one_hot(target, 3).to(DTYPE)
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone(), lambda out: out * onehot)
    return relevance.detach()


def seeded(make, seed):
    torch.manual_seed(seed)
    model = make().to(DTYPE).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                n = mod.bias.numel()
                mod.bias.copy_(torch.linspace(-0.7, 0.8, n, dtype=DTYPE)[torch.randperm(n)])
    return model


def small_cnn():  # names 0, 2, 5, 7
    return seeded(
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


def pooled_cnn(pool):  # names 0, 3, 6
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            pool,
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 3),
        ),
        seed=3,
    )


def mlp():  # names 0, 2, 4
    return seeded(
        lambda: nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
        ),
        seed=0,
    )


def images(seed=12):
    torch.manual_seed(seed)
    return torch.randn(3, 2, 8, 8, dtype=DTYPE)


LOW = torch.tensor([-3.0, -2.5], dtype=DTYPE).reshape(1, 2, 1, 1)
HIGH = 3.0

# name -> (ours, Zennit's, reference rules for small_cnn)
NAMED = {
    "EpsilonPlus": (
        lambda: ta.composites.EpsilonPlus(),
        lambda: zc.EpsilonPlus(),
        {"0": ref.zplus(), "2": ref.zplus(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonPlusFlat": (
        lambda: ta.composites.EpsilonPlusFlat(),
        lambda: zc.EpsilonPlusFlat(),
        {"0": ref.flat(), "2": ref.zplus(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonAlpha2Beta1": (
        lambda: ta.composites.EpsilonAlpha2Beta1(),
        lambda: zc.EpsilonAlpha2Beta1(),
        {"0": ref.alpha_beta(), "2": ref.alpha_beta(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonAlpha2Beta1Flat": (
        lambda: ta.composites.EpsilonAlpha2Beta1Flat(),
        lambda: zc.EpsilonAlpha2Beta1Flat(),
        {"0": ref.flat(), "2": ref.alpha_beta(), "5": ref.epsilon(), "7": ref.epsilon()},
    ),
    "EpsilonGammaBox": (
        lambda: ta.composites.EpsilonGammaBox(LOW, HIGH),
        lambda: zc.EpsilonGammaBox(low=LOW, high=HIGH),
        {
            "0": ref.zbox(LOW, HIGH, bias=False),
            "2": ref.gamma(0.25),
            "5": ref.epsilon(),
            "7": ref.epsilon(),
        },
    ),
}


def reference(model, x, target, rules):
    R, _ = ref.chain(ref.sequential_steps(model, x.shape[1:], rules), x, target)
    return R


@pytest.mark.parametrize("name", sorted(NAMED))
def test_zennit_agrees_with_dense_reference(name):
    """The two oracles agree (no torchattr involved)."""
    model, x = small_cnn(), images()
    _, theirs, rules = NAMED[name]
    torch.testing.assert_close(
        zennit_lrp(model, x, TARGETS, theirs()),
        reference(model, x, TARGETS, rules),
        rtol=1e-6,
        atol=1e-9,
    )


@needs_lrp
@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_composite_matches_zennit_on_cnn(name):
    model, x = small_cnn(), images()
    ours, theirs, _ = NAMED[name]
    torch.testing.assert_close(
        ta.lrp(model, x, TARGETS, composite=ours()),
        zennit_lrp(model, x, TARGETS, theirs()),
        rtol=1e-6,
        atol=1e-9,
    )


@needs_lrp
@pytest.mark.parametrize("name", ["EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox"])
def test_named_composite_matches_zennit_on_mlp(name):
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(3, 6, dtype=DTYPE)
    ours, theirs, _ = NAMED[name]
    torch.testing.assert_close(
        ta.lrp(model, x, TARGETS, composite=ours()),
        zennit_lrp(model, x, TARGETS, theirs()),
        rtol=1e-6,
        atol=1e-9,
    )


@needs_lrp
@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonAlpha2Beta1Flat"])
def test_pools_match_zennit(pool, name):
    model = pooled_cnn(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
    x = images(seed=5)
    ours, theirs, _ = NAMED[name]
    torch.testing.assert_close(
        ta.lrp(model, x, TARGETS, composite=ours()),
        zennit_lrp(model, x, TARGETS, theirs()),
        rtol=1e-6,
        atol=1e-9,
    )


@needs_lrp
def test_by_type_matches_zennit_layer_map():
    model = small_cnn()
    x = images()
    ours = ta.composites.by_type({nn.Conv2d: ta.rules.Gamma(0.5), nn.Linear: ta.rules.Epsilon(0.1)})
    theirs = zc.LayerMapComposite(
        [*zc.layer_map_base(), (nn.Conv2d, zr.Gamma(gamma=0.5)), (nn.Linear, zr.Epsilon(0.1))]
    )
    torch.testing.assert_close(
        ta.lrp(model, x, TARGETS, composite=ours),
        zennit_lrp(model, x, TARGETS, theirs),
        rtol=1e-6,
        atol=1e-9,
    )


@needs_lrp
def test_batchnorm_merge_matches_zennit_canonizer():
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 3),
    ).to(DTYPE)
    # Zennit's canonizer leaves the merged BatchNorm with running_var = 1 but its eps, so its
    # model then scales by 1 / sqrt(1 + eps) (5e-6 relative at the default eps = 1e-5); a tiny
    # eps keeps that artefact below the tolerance.
    model[1].eps = 1e-12
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(torch.randn(3, dtype=DTYPE))
        bn.running_var.copy_(torch.rand(3, dtype=DTYPE) + 0.5)
        bn.weight.copy_(torch.randn(3, dtype=DTYPE))
        bn.bias.copy_(torch.randn(3, dtype=DTYPE))
    model.eval()
    x = images(seed=8)
    theirs = zc.EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])
    expected = zennit_lrp(model, x, TARGETS, theirs)
    torch.testing.assert_close(
        ta.lrp(model, x, TARGETS, composite=ta.composites.EpsilonPlus()),
        expected,
        rtol=1e-6,
        atol=1e-9,
    )


@pytest.mark.parametrize("with_lrp", [False, True])
def test_name_map_wsquare_flat_mid_layer_matches_zennit(with_lrp):
    """WSquare first, Flat on a hidden layer (relevance reaches units the ReLU zeroed: Pass),
    AlphaBeta(1, 0) last; Zennit against the dense reference, then torchattr against Zennit."""
    if with_lrp and not hasattr(ta, "lrp"):
        pytest.skip("torchattr.lrp not available yet")
    model = mlp()
    torch.manual_seed(2)
    x = torch.randn(3, 6, dtype=DTYPE)
    theirs = zc.NameLayerMapComposite(
        name_map=[(["0"], zr.WSquare()), (["2"], zr.Flat()), (["4"], zr.AlphaBeta(1.0, 0.0))],
        layer_map=zc.layer_map_base(),
    )
    expected = zennit_lrp(model, x, TARGETS, theirs)
    if with_lrp:
        ours = ta.composites.by_name(
            {"0": ta.rules.WSquare(), "2": ta.rules.Flat(), "4": ta.rules.AlphaBeta(1.0, 0.0)}
        )
        actual = ta.lrp(model, x, TARGETS, composite=ours)
    else:
        rules = {"0": ref.wsquare(), "2": ref.flat(), "4": ref.alpha_beta(1.0, 0.0)}
        actual = reference(model, x, TARGETS, rules)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)

"""Tests of torchattr.metrics.sanity: randomisation checks, Spearman and SSIM by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

import torchattr as ta
from torchattr.metrics import model_randomisation, random_logit
from torchattr.metrics.sanity import (
    average_ranks,
    gaussian_window,
    randomise_layer,
    spearman,
    ssim,
)


def saliency(m, x, t):
    return ta.saliency(m, x, t)


def _autograd(m, x, t):
    """Plain autograd gradient of the target logits (the reference)."""
    x = x.detach().clone().requires_grad_(True)
    out = m(x)
    (grad,) = torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), x)
    return grad


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 12 * 12, 5),
    ).double()


# --- Spearman and SSIM by hand -----------------------------------------------------------------


def test_average_ranks_share_ties():
    ranks = average_ranks(torch.tensor([[3.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 0.0]]))
    assert ranks.tolist() == [[3.0, 0.0, 1.5, 1.5], [2.0, 2.0, 2.0, 0.0]]


def test_spearman_hand_cases():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    # ties: ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): r = 4.5 / sqrt(4.5 * 5)
    expected = torch.tensor([1.0, 4.5 / math.sqrt(4.5 * 5), -1.0])
    torch.testing.assert_close(spearman(a, b), expected)
    # any monotone transform keeps the ranks
    x = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spearman(x, x.exp() * 3), torch.ones(3))


def test_spearman_of_a_constant_is_nan_not_zero():
    out = spearman(torch.ones(1, 5), torch.arange(5.0).view(1, 5))
    assert torch.isnan(out).all()


def test_non_finite_explanations_give_nan_not_a_number():
    model = mlp().eval()
    x = torch.randn(3, 6, dtype=torch.float64)

    def explain(m, x, t):
        phi = x.clone()
        phi[1, 2] = math.nan
        return phi

    out = model_randomisation(explain, model, x, similarity=("spearman", "spearman_signed"))
    for value in out.similarity.values():
        assert torch.isnan(value[:, 1]).all()
        assert torch.equal(value[:, [0, 2]], torch.ones(3, 2, dtype=value.dtype))


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (3, 20), generator=g).double()  # many ties
    b = torch.randn(3, 20, generator=g, dtype=torch.float64)
    ours = spearman(a, b)
    for i in range(3):
        ref = stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert ours[i].item() == pytest.approx(ref, abs=1e-12)


def _ssim_loop(a, b, size, sigma, data_range=1.0):
    """SSIM by explicit weighted sums over every window position (the reference)."""
    w1 = torch.tensor(
        [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(size)],
        dtype=torch.float64,
    )
    w = torch.outer(w1, w1) / w1.sum() ** 2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append(
                (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return torch.stack(values).mean()


def test_ssim_hand_cases():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 9, 10, generator=g, dtype=torch.float64)
    b = torch.rand(2, 9, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    ours = ssim(a, b, window=5, sigma=1.5)
    for i in range(2):
        torch.testing.assert_close(ours[i], _ssim_loop(a[i], b[i], 5, 1.5))
    # a map smaller than the window: the window shrinks to the largest odd size that fits (9)
    torch.testing.assert_close(ssim(a, b)[0], _ssim_loop(a[0], b[0], 9, 1.5))
    # constant maps u, v: sigma = 0, SSIM = (2uv + C1) / (u^2 + v^2 + C1)
    u, v, c1 = 0.2, 0.7, 0.01**2
    got = ssim(torch.full((1, 12, 12), u), torch.full((1, 12, 12), v))
    assert got.item() == pytest.approx((2 * u * v + c1) / (u * u + v * v + c1), rel=1e-5)


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5, torch.float64, "cpu")
    assert w.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(w, w.flip(0))
    assert w[5] == w.max()


# --- model randomisation -----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:model is in training mode")
def test_users_model_is_left_exactly_as_it_was():
    model = cnn()
    model[1].train()  # batch norm in training mode: a forward would update its statistics
    calls = []
    model[0].register_forward_hook(lambda m, *a: calls.append(m))
    model[4].weight.grad = torch.ones_like(model[4].weight)
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    before = snapshot(model)
    grad = model[4].weight.grad.clone()
    rng = torch.get_rng_state()
    for order in ("cascading", "independent"):
        model_randomisation(
            saliency, model, x, 1, order=order, generator=torch.Generator().manual_seed(0)
        )
    random_logit(saliency, model, x, generator=torch.Generator().manual_seed(0))
    assert_unchanged(model, before)
    assert calls and all(m is not model[0] for m in calls)  # only copies are called
    assert torch.equal(model[4].weight.grad, grad) and model[0].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)  # re-initialisation forks the global RNG


def test_also_when_explain_raises():
    model = cnn().eval()
    before = snapshot(model)
    calls = []

    def explain(m, x, t):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return ta.saliency(m, x, t)

    with pytest.raises(RuntimeError, match="boom"):
        model_randomisation(explain, model, torch.rand(2, 3, 12, 12, dtype=torch.float64))
    assert_unchanged(model, before)


def test_saliency_changes_but_a_model_blind_explanation_does_not():
    model = mlp().eval()
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    out = model_randomisation(saliency, model, x, similarity="spearman", generator=g)
    assert out.layers == ("4", "2", "0")
    assert out.similarity["spearman"].shape == (3, 8)
    # the top layer random: the saliency of a random model is far from the trained one
    assert out.similarity["spearman"][0].mean() < 0.6
    torch.testing.assert_close(out.original, ta.saliency(model, x, model(x).argmax(1)))
    for order in ("cascading", "independent"):
        blind = model_randomisation(
            lambda m, x, t: x, model, x, order=order, similarity=("spearman", "spearman_signed")
        )
        for value in blind.similarity.values():
            assert torch.equal(value, torch.ones(3, 8, dtype=value.dtype))


def test_ssim_on_image_explanations():
    model = cnn().eval()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    out = model_randomisation(lambda m, x, t: x, model, x, similarity="ssim")
    torch.testing.assert_close(out.similarity["ssim"], torch.ones(3, 3, dtype=torch.float64))
    real = model_randomisation(saliency, model, x, layers=["4"], similarity="ssim")
    assert real.similarity["ssim"].shape == (1, 3) and (real.similarity["ssim"] < 0.9).all()


def test_cascading_and_independent_differ_as_expected():
    """An explanation that reads only the top layer: independent randomisation leaves it
    unchanged below the top, cascading keeps the top random all the way down."""
    model = mlp().eval()
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def top_only(m, x, t):
        return x[:, :5] * m[4].weight.detach()[t]

    kw = dict(target=0, similarity="spearman_signed")
    cascade = model_randomisation(
        top_only, model, x, order="cascading", generator=torch.Generator().manual_seed(3), **kw
    )
    indep = model_randomisation(
        top_only, model, x, order="independent", generator=torch.Generator().manual_seed(3), **kw
    )
    c, i = cascade.similarity["spearman_signed"], indep.similarity["spearman_signed"]
    torch.testing.assert_close(c[0], i[0])  # the same top layer, re-initialised with one seed
    assert (c < 0.99).any(dim=1).all()  # the top stays random in every cascading step
    torch.testing.assert_close(c[1], c[0])
    torch.testing.assert_close(c[2], c[0])
    assert torch.equal(i[1:], torch.ones(2, 6, dtype=i.dtype))  # top restored below it


def test_cascading_matches_a_hand_randomised_copy():
    model = mlp().eval()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0, 1])
    for order in ("cascading", "independent"):
        out = model_randomisation(
            _autograd,
            model,
            x,
            target,
            order=order,
            similarity="spearman_signed",
            generator=torch.Generator().manual_seed(7),
        )
        seeds = torch.Generator().manual_seed(7)
        copied = copy.deepcopy(model)
        original = _autograd(model, x, target)
        for row, name in enumerate(("4", "2", "0")):
            if order == "independent":
                copied = copy.deepcopy(model)
            seed = int(torch.randint(0, 2**62, (1,), generator=seeds))
            randomise_layer(dict(copied.named_modules())[name], seed)
            expected = spearman(original, _autograd(copied, x, target))
            torch.testing.assert_close(out.similarity["spearman_signed"][row], expected)


def test_layers_by_name_with_a_wrapper_prefix():
    model = nn.DataParallel(mlp().eval())
    x = torch.randn(4, 6, dtype=torch.float64)
    out = model_randomisation(saliency, model, x, layers=["module.2", "0"], similarity="spearman")
    assert out.layers == ("2", "0") and out.similarity["spearman"].shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(order="bottom-up"), ValueError, "order"),
        (dict(similarity="hog"), ValueError, "similarity"),
        (dict(layers=["nope"]), ValueError, "nope"),
        (dict(layers=["1"]), ValueError, "no parameters"),
        (dict(layers="0"), TypeError, "layers"),
        (dict(similarity="ssim"), ValueError, "ssim"),  # [B, 6] explanations are not 2-D maps
        (dict(generator=3), TypeError, "generator"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        x = torch.randn(2, 6, dtype=torch.float64)
        model_randomisation(saliency, mlp().eval(), x, **kwargs)


def test_bad_model_and_explain_are_named():
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        model_randomisation(saliency, lambda x: x, x)
    with pytest.raises(TypeError, match="explain"):
        model_randomisation("saliency", mlp(), x)
    with pytest.raises(ValueError, match="explain returned"):
        model_randomisation(lambda m, x, t: x[:1], mlp(), x)
    with pytest.raises(TypeError, match="tensor"):
        model_randomisation(lambda m, x, t: [x], mlp(), x)


# --- random logit ------------------------------------------------------------------------------


def test_random_logit_explains_another_class():
    model = mlp().eval()
    x = torch.randn(200, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(1))
    out = random_logit(
        _autograd, model, x, target, similarity="spearman_signed", generator=torch.Generator()
    )
    assert (out.classes != target).all() and set(out.classes.tolist()) == {0, 1, 2}
    expected = spearman(_autograd(model, x, target), _autograd(model, x, out.classes))
    # NaN (not 0) where a gradient vanishes (dead ReLUs), in both
    torch.testing.assert_close(out.similarity["spearman_signed"], expected, equal_nan=True)
    blind = random_logit(lambda m, x, t: x, model, x, target, similarity="spearman")
    assert torch.equal(blind.similarity["spearman"], torch.ones(200, dtype=torch.float64))


def test_random_logit_needs_classes():
    with pytest.raises(ValueError, match="C >= 2"):
        random_logit(saliency, nn.Linear(6, 1).double(), torch.randn(2, 6, dtype=torch.float64))

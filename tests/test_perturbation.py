"""Tests of torchattr.metrics.perturbation: imputation against a direct dense solve, ROAD's
pixel order, and deletion / insertion curves of models that are known functions of the pixels."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from torchattr.metrics import (
    deletion,
    gaussian_blur,
    insertion,
    noisy_linear_impute,
    paired_fractions,
    road,
    road_masks,
    road_summary,
)
from torchattr.metrics.perturbation import FRACTIONS


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def weight(dy: int, dx: int) -> float:
    return 1 / 6 if dy == 0 or dx == 0 else 1 / 12


def dense_impute(image: Tensor, mask: Tensor) -> Tensor:
    """The imputation equations written out pixel by pixel and solved by torch.linalg.solve.

    For every masked pixel i: ``sum_j w_ij x_i - sum_{j masked} w_ij x_j = sum_{j kept} w_ij x_j``
    over the neighbours j inside the image.
    """
    channels, height, width = image.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if mask[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    b = torch.zeros(len(unknown), channels, dtype=torch.float64)
    for i, (y, x) in enumerate(unknown):
        for dy, dx in NEIGHBOURS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < height and 0 <= nx < width):
                continue
            w = weight(dy, dx)
            a[i, i] += w
            if mask[ny, nx]:
                a[i, index[(ny, nx)]] -= w
            else:
                b[i] += w * image[:, ny, nx].double()
    out = image.double().clone()
    solution = torch.linalg.solve(a, b)
    for i, (y, x) in enumerate(unknown):
        out[:, y, x] = solution[i]
    return out


def masks_for(height: int, width: int, seed: int = 0) -> Tensor:
    """Random holes, a block touching an edge and a corner, all but one pixel."""
    g = torch.Generator().manual_seed(seed)
    random = torch.rand(height, width, generator=g) < 0.6
    block = torch.zeros(height, width, dtype=torch.bool)
    block[: height * 2 // 3, width // 3 :] = True  # the top edge and the top-right corner
    nearly_all = torch.ones(height, width, dtype=torch.bool)
    nearly_all[height // 2, width // 3] = False
    return torch.stack([random, block, nearly_all])


# ------------------------------------------------------------------------------------------
# Noisy linear imputation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(5, 7), (12, 10), (33, 40)])  # 1, 2 and 4 grid levels
def test_imputation_matches_dense_solve(size: tuple[int, int]) -> None:
    height, width = size
    images = torch.rand(3, 2, height, width, generator=torch.Generator().manual_seed(1))
    masks = masks_for(height, width)
    expected = torch.stack([dense_impute(im, m) for im, m in zip(images, masks)])
    filled64 = noisy_linear_impute(images.double(), masks, sigma=0.0, tol=1e-12)
    torch.testing.assert_close(filled64, expected, atol=1e-9, rtol=0)
    filled32 = noisy_linear_impute(images, masks, sigma=0.0)
    assert filled32.dtype == torch.float32
    torch.testing.assert_close(filled32.double(), expected, atol=1e-4, rtol=0)


def test_corner_edge_and_interior_weights() -> None:
    image = torch.rand(1, 1, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = image[0, 0]
    cases = {
        (0, 0): (x[0, 1] / 6 + x[1, 0] / 6 + x[1, 1] / 12) / (5 / 12),  # corner: 3 neighbours
        (4, 5): (x[4, 4] / 6 + x[3, 5] / 6 + x[3, 4] / 12) / (5 / 12),  # opposite corner
        (0, 3): (  # top edge: 5 neighbours, weights 3/6 + 2/12 = 2/3
            (x[0, 2] + x[0, 4] + x[1, 3]) / 6 + (x[1, 2] + x[1, 4]) / 12
        )
        / (2 / 3),
        (2, 0): ((x[1, 0] + x[3, 0] + x[2, 1]) / 6 + (x[1, 1] + x[3, 1]) / 12) / (2 / 3),
        (2, 3): (  # interior: all 8, weights sum to 1
            (x[1, 3] + x[3, 3] + x[2, 2] + x[2, 4]) / 6
            + (x[1, 2] + x[1, 4] + x[3, 2] + x[3, 4]) / 12
        ),
    }
    for (y, xx), expected in cases.items():
        mask = torch.zeros(1, 5, 6, dtype=torch.bool)
        mask[0, y, xx] = True
        filled = noisy_linear_impute(image, mask, sigma=0.0)
        torch.testing.assert_close(filled[0, 0, y, xx], expected, atol=1e-12, rtol=0)
        keep = ~mask[0]
        assert torch.equal(filled[0, 0][keep], x[keep])


def test_two_adjacent_holes_solved_jointly() -> None:
    # Holes a = (1, 1) and b = (1, 2) of a 3x4 image: a = (s_a + b / 6), b = (s_b + a / 6) with
    # s_a, s_b the weighted sums of their kept neighbours (interior pixels, weights sum to 1).
    x = torch.arange(12, dtype=torch.float64).reshape(3, 4) ** 1.5
    image = x[None, None]
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 1, 1] = mask[0, 1, 2] = True
    s_a = (x[0, 1] + x[2, 1] + x[1, 0]) / 6 + (x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2]) / 12
    s_b = (x[0, 2] + x[2, 2] + x[1, 3]) / 6 + (x[0, 1] + x[0, 3] + x[2, 1] + x[2, 3]) / 12
    a = (s_a + s_b / 6) / (1 - 1 / 36)
    b = s_b + a / 6
    filled = noisy_linear_impute(image, mask, sigma=0.0)
    torch.testing.assert_close(filled[0, 0, 1, 1:3], torch.stack([a, b]), atol=1e-12, rtol=0)


def test_linear_ramp_is_reproduced_inside_the_image() -> None:
    ys, xs = torch.meshgrid(
        torch.arange(40, dtype=torch.float64), torch.arange(36, dtype=torch.float64), indexing="ij"
    )
    ramp = (0.3 * ys - 0.2 * xs + 1.0)[None, None]
    mask = torch.zeros(1, 40, 36, dtype=torch.bool)
    mask[0, 3:37, 2:30] = True  # a large hole, away from the border
    filled = noisy_linear_impute(ramp, mask, sigma=0.0, tol=1e-10)
    torch.testing.assert_close(filled, ramp, atol=1e-8, rtol=0)


def test_float32_large_hole_is_accurate() -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 64, 64, generator=g)
    mask = torch.ones(2, 64, 64, dtype=torch.bool)
    mask[0, 30:34, 30:34] = False  # 99.6% imputed: the worst-conditioned systems
    mask[1, :, :6] = False
    reference = noisy_linear_impute(images.double(), mask, sigma=0.0, tol=1e-12)
    filled = noisy_linear_impute(images, mask, sigma=0.0)
    torch.testing.assert_close(filled.double(), reference, atol=1e-4, rtol=0)


def test_images_are_independent_and_the_batch_changes_nothing() -> None:
    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 3, 20, 22, generator=g)
    masks = torch.rand(4, 20, 22, generator=g) < 0.5
    together = noisy_linear_impute(images, masks, sigma=0.0)
    for i in range(4):
        alone = noisy_linear_impute(images[i : i + 1], masks[i : i + 1], sigma=0.0)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=0)


def test_noise_only_on_imputed_pixels_reproducible() -> None:
    images = torch.rand(2, 3, 30, 30)
    mask = torch.zeros(2, 30, 30, dtype=torch.bool)
    mask[:, 5:25, 5:25] = True
    plain = noisy_linear_impute(images, mask, sigma=0.0)
    a = noisy_linear_impute(images, mask, sigma=0.05, generator=torch.Generator().manual_seed(0))
    b = noisy_linear_impute(images, mask, sigma=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    keep = ~mask[:, None].expand_as(images)
    assert torch.equal(a[keep], images[keep])
    draws = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    expected = plain + 0.05 * draws * mask[:, None]
    torch.testing.assert_close(a, expected)


def test_imputation_keeps_dtype_and_accepts_channel_mask() -> None:
    images = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 2:4, 2:4] = True
    assert noisy_linear_impute(images, mask, sigma=0.0).dtype == torch.float64
    half = noisy_linear_impute(images.bfloat16(), mask, sigma=0.0)
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("images", "mask", "noise", "error", "match"),
    [
        (
            torch.rand(2, 4, 4),
            torch.zeros(2, 4, 4, dtype=torch.bool),
            0.0,
            ValueError,
            "B, C, H, W",
        ),
        (torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 4), 0.0, TypeError, "bool"),
        (torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool), 0.0, ValueError, "mask"),
        (torch.rand(1, 1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), 0.0, ValueError, "every"),
        (torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), -1.0, ValueError, "sigma"),
        (
            torch.ones(1, 1, 4, 4).long(),
            torch.zeros(1, 4, 4, dtype=torch.bool),
            0.0,
            TypeError,
            "dtype",
        ),
        (
            torch.full((1, 1, 4, 4), float("nan")),
            torch.zeros(1, 4, 4, dtype=torch.bool),
            0.0,
            ValueError,
            "NaN",
        ),
    ],
)
def test_imputation_bad_input(images, mask, noise, error, match) -> None:
    with pytest.raises(error, match=match):
        noisy_linear_impute(images, mask, sigma=noise)


# ------------------------------------------------------------------------------------------
# ROAD
# ------------------------------------------------------------------------------------------


class Weighted(nn.Module):
    """Logits ``[N, 3]``: fixed weighted sums of the pixels, a known function of the image."""

    def __init__(self, channels: int, height: int, width: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, channels * height * width, generator=g))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.to(x.dtype).T


@pytest.mark.parametrize("fractions", [(0.1, 0.25, 0.5, 0.9), (0.2,), (0.33, 0.66)])
def test_road_masks_remove_exactly_the_fraction_despite_ties(fractions) -> None:
    n = 10 * 12
    zero = torch.zeros(10, 12)
    binary = (torch.arange(n) % 3 == 0).float().reshape(10, 12)  # 40 ones, 80 zeros
    steps = torch.arange(n).float().reshape(10, 12) // 30  # 4 levels of 30 tied pixels
    maps = torch.stack([zero, binary, steps, torch.full((10, 12), 7.0)])
    expected = torch.tensor([math.floor(p * n + 1e-9) for p in fractions])
    g = torch.Generator().manual_seed(0)
    morf = road_masks(maps, fractions, "morf", generator=g)
    assert morf.shape == (4, len(fractions), 10, 12)
    assert torch.equal(morf.flatten(2).sum(-1), expected.expand(4, -1))
    lerf = road_masks(maps, fractions, "lerf", generator=torch.Generator().manual_seed(0))
    assert torch.equal(lerf.flatten(2).sum(-1), (n - expected).expand(4, -1))
    assert torch.equal(lerf, ~morf)  # LeRF keeps exactly the pixels MoRF imputes
    # the tie-breaker is shared: equal maps (the zero and the constant one) give equal masks
    assert torch.equal(morf[0], morf[3])
    # ties never reorder distinct values: MoRF takes the ones first, then zeros
    ones = binary.bool()
    for j, k in enumerate(expected.tolist()):
        taken = morf[1, j]
        assert bool(taken[ones].all()) if k >= 40 else bool(ones[taken].all())
        level = steps.flatten()[morf[2, j].flatten()]
        assert level.min() >= steps.flatten().sort(descending=True).values[k - 1]


def test_road_masks_follow_distinct_values_and_nested() -> None:
    maps = torch.randperm(64, generator=torch.Generator().manual_seed(1)).float().reshape(1, 8, 8)
    masks = road_masks(maps, (0.25, 0.5), "morf")
    assert torch.equal(masks[0, 0], maps[0] >= 48)  # the 16 largest values
    assert torch.equal(masks[0, 1], maps[0] >= 32)
    # channels are summed before ranking
    channels = torch.stack([maps * 0.25, maps * 0.75], dim=1)  # [1, 2, 8, 8], sum = maps
    assert torch.equal(road_masks(channels, (0.25, 0.5), "morf"), masks)


def test_road_scores_are_the_model_on_the_imputed_images() -> None:
    g = torch.Generator().manual_seed(5)
    images = torch.rand(3, 2, 9, 8, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 9, 8, generator=g)
    model = Weighted(2, 9, 8).double()
    fractions = (0.1, 0.5, 0.8)
    for order in ("morf", "lerf"):
        scores = road(
            model, images, maps, 2, fractions=fractions, order=order, sigma=0.0,
            generator=seed(), score="logit",
        )  # fmt: skip
        masks = road_masks(maps, fractions, order, generator=seed())
        assert scores.shape == (3, 3) and scores.dtype == torch.float64
        for j in range(len(fractions)):
            filled = noisy_linear_impute(images, masks[:, j], sigma=0.0)
            torch.testing.assert_close(scores[:, j], model(filled)[:, 2], atol=1e-6, rtol=0)


def test_road_draws_tie_breaker_then_noise_per_fraction_in_order() -> None:
    images = torch.rand(2, 3, 6, 7)
    maps = torch.rand(2, 6, 7)
    model = Weighted(3, 6, 7)
    fractions = (0.3, 0.6)
    scores = road(
        model,
        images,
        maps,
        fractions=fractions,
        sigma=0.1,
        generator=torch.Generator().manual_seed(0),
        score="logit",
    )
    g = torch.Generator().manual_seed(0)
    masks = road_masks(maps, fractions, "morf", generator=g)  # draws the tie-breaker
    with torch.no_grad():
        target = model(images).argmax(1)
        for j in range(len(fractions)):
            noise = torch.randn(images.shape, generator=g)
            filled = noisy_linear_impute(images, masks[:, j], sigma=0.0)
            filled = filled + 0.1 * noise * masks[:, j, None]
            expected = model(filled).gather(1, target[:, None])[:, 0]
            torch.testing.assert_close(scores[:, j], expected, atol=1e-4, rtol=0)


def test_road_does_not_depend_on_batch_size() -> None:
    images = torch.rand(3, 1, 12, 10)
    maps = torch.rand(3, 12, 10)
    model = Weighted(1, 12, 10)
    kwargs = {"fractions": (0.2, 0.7), "order": "lerf", "sigma": 0.02}
    a = road(model, images, maps, generator=torch.Generator().manual_seed(3), **kwargs)
    b = road(
        model, images, maps, generator=torch.Generator().manual_seed(3), chunk_size=2, **kwargs
    )
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_road_targets_and_probabilities() -> None:
    g = torch.Generator().manual_seed(6)
    images = torch.rand(4, 1, 8, 8, generator=g)
    maps = torch.rand(4, 8, 8, generator=g)
    model = Weighted(1, 8, 8, seed=1)
    predicted = model(images).argmax(1)

    def run(target, **kwargs):  # the same tie-breaker in every call
        return road(
            model, images, maps, target, fractions=(0.3,), sigma=0.0, generator=seed(), **kwargs
        )

    torch.testing.assert_close(run(None), run(predicted))
    probability = run(1, score="softmax")
    filled = noisy_linear_impute(
        images, road_masks(maps, (0.3,), generator=seed())[:, 0], sigma=0.0
    )
    expected = model(filled).softmax(1)[:, 1].detach()
    torch.testing.assert_close(probability[:, 0], expected, atol=1e-5, rtol=0)
    difference = run(lambda out: out[:, 0] - out[:, 1])
    torch.testing.assert_close(difference, run(0) - run(1), atol=1e-5, rtol=0)


def test_road_single_logit_model() -> None:
    images = torch.rand(2, 1, 6, 6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 1))
    scores = road(model, images, torch.rand(2, 6, 6), fractions=(0.5,), sigma=0.0, score="softmax")
    assert scores.shape == (2, 1) and bool(((scores > 0) & (scores < 1)).all())


def test_road_leaves_the_model_untouched() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        road(model, torch.rand(2, 1, 6, 6), torch.rand(2, 6, 6), fractions=(0.5,))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fractions": (0.0,)}, ValueError, "fractions"),
        ({"fractions": (0.5, 1.0)}, ValueError, "fractions"),
        ({"fractions": (-0.1,)}, ValueError, "fractions"),
        ({"fractions": ()}, TypeError, "fractions"),
        ({"fractions": ("a",)}, TypeError, "fractions"),
        ({"order": "random"}, ValueError, "order"),
        ({"score": "probit"}, ValueError, "score"),
        ({"sigma": -0.1}, ValueError, "sigma"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"saliency": torch.rand(2, 6, 5)}, ValueError, "saliency has shape"),
        ({"saliency": torch.rand(3, 6, 6)}, ValueError, "saliency has shape"),
        ({"saliency": torch.full((2, 6, 6), float("nan"))}, ValueError, "saliency"),
        ({"inputs": torch.rand(2, 6, 6)}, ValueError, "B, C, H, W"),
        ({"target": torch.zeros(2, 2, dtype=torch.long)}, ValueError, "one class"),
        ({"target": 5}, ValueError, "out of range"),
        ({"model": "model"}, TypeError, "callable"),
        ({"fractions": (0.01,), "order": "lerf"}, ValueError, "keeps"),
    ],
)
def test_road_bad_input(kwargs, error, match) -> None:
    args = {
        "model": Weighted(1, 6, 6),
        "inputs": torch.rand(2, 1, 6, 6),
        "saliency": torch.rand(2, 6, 6),
    }
    args.update(kwargs)
    model, inputs, saliency = args.pop("model"), args.pop("inputs"), args.pop("saliency")
    with pytest.raises(error, match=match):
        road(model, inputs, saliency, **args)


def test_road_accepts_signed_maps() -> None:
    maps = torch.randn(2, 6, 6)
    scores = road(Weighted(1, 6, 6), torch.rand(2, 1, 6, 6), maps, fractions=(0.5,))
    assert scores.shape == (2, 1)


def test_road_summary_pairs_morf_p_with_lerf_one_minus_p() -> None:
    morf = torch.tensor([[0.6, 0.2], [0.4, 0.0]])  # fractions (0.3, 0.7)
    lerf = torch.tensor([[0.8, 0.8], [0.6, 0.4]])
    summary = road_summary(morf, lerf, fractions=(0.3, 0.7))
    torch.testing.assert_close(summary.morf, torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(summary.lerf, torch.tensor([0.7, 0.6]))
    # gap[p] = (LeRF(1 - p) - MoRF(p)) / 2: (0.8-0.6)/2, (0.8-0.2)/2 | (0.4-0.4)/2, (0.6-0.0)/2
    torch.testing.assert_close(summary.gap, torch.tensor([(0.1 + 0.0) / 2, (0.3 + 0.3) / 2]))
    torch.testing.assert_close(summary.per_image, torch.tensor([0.2, 0.15]))
    torch.testing.assert_close(summary.score, torch.tensor(0.175))
    lone = road_summary(morf[:, :1], lerf[:, :1], fractions=(0.5,))
    torch.testing.assert_close(lone.per_image, torch.tensor([0.1, 0.1]))
    with pytest.raises(ValueError, match="same"):
        road_summary(morf, lerf[:, :1], fractions=(0.3, 0.7))
    with pytest.raises(ValueError, match=r"\[0\.3, 0\.6\] have no partner"):
        road_summary(morf, lerf, fractions=(0.3, 0.6))
    with pytest.raises(ValueError, match="2 columns"):
        road_summary(morf, lerf)  # the default fractions have 9


def test_default_fractions_are_symmetric() -> None:
    assert sorted(round(1 - p, 9) for p in FRACTIONS) == sorted(round(p, 9) for p in FRACTIONS)
    assert paired_fractions((0.2, 0.5, 0.8)) == [2, 1, 0]


def test_road_summary_of_random_maps_is_zero_within_three_standard_errors() -> None:
    # MoRF(p) and LeRF(1 - p) impute as many pixels (p H W is an integer for 10 x 10 images):
    # for maps independent of the images, both copies have the same distribution.
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 10, 10, generator=g)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(100, 3)
    )
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=2.0)
    fractions = (0.2, 0.4, 0.6, 0.8)
    per_image = []
    for seed_ in range(4):
        maps = torch.rand(12, 10, 10, generator=g)
        curves = [
            road(
                model, images, maps, fractions=fractions, order=order, score="logit",
                generator=torch.Generator().manual_seed(seed_),
            )
            for order in ("morf", "lerf")
        ]  # fmt: skip
        per_image.append(road_summary(*curves, fractions=fractions).per_image)
    values = torch.cat(per_image).double()
    error = values.std() / len(values) ** 0.5
    assert float(values.std()) > 0  # the test can fail: the scores do vary
    assert abs(float(values.mean())) <= 3 * float(error), (values.mean(), error)


def test_score_names_softmax_sigmoid_and_the_deprecated_probability() -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 1, 6, 6, generator=g)
    maps = torch.rand(3, 6, 6, generator=g)
    model = Weighted(1, 6, 6, seed=2)

    def run(score):
        return road(
            model, images, maps, 1, fractions=(0.5,), sigma=0.0, generator=seed(), score=score
        )

    logits = run("logit")
    filled = noisy_linear_impute(images, road_masks(maps, (0.5,), generator=seed())[:, 0], 0.0)
    outputs = model(filled).detach()
    torch.testing.assert_close(logits[:, 0], outputs[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(run("sigmoid"), logits.sigmoid(), atol=1e-6, rtol=0)
    torch.testing.assert_close(run("softmax")[:, 0], outputs.softmax(1)[:, 1], atol=1e-6, rtol=0)
    with pytest.warns(DeprecationWarning, match="'softmax'"):
        old = run("probability")
    torch.testing.assert_close(old, run("softmax"))
    with pytest.warns(DeprecationWarning, match="'softmax'"):
        curves = deletion(model, images, maps, 1, step=12, score="probability").curves
    torch.testing.assert_close(curves, deletion(model, images, maps, 1, step=12).curves)
    sig = deletion(model, images, maps, 1, step=12, score="sigmoid").curves
    logit = deletion(model, images, maps, 1, step=12, score="logit").curves
    torch.testing.assert_close(sig, logit.sigmoid(), atol=1e-6, rtol=0)


def test_road_accuracy_with_labels() -> None:
    g = torch.Generator().manual_seed(4)
    images = torch.rand(5, 1, 6, 6, generator=g)
    maps = torch.rand(5, 6, 6, generator=g)
    model = Weighted(1, 6, 6, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    fractions = (0.2, 0.5, 0.8)
    for order in ("morf", "lerf"):
        accuracy = road(
            model, images, maps, fractions=fractions, order=order, sigma=0.0, generator=seed(),
            labels=labels,
        )  # fmt: skip
        masks = road_masks(maps, fractions, order, generator=seed())
        assert accuracy.shape == (5, 3) and set(accuracy.unique().tolist()) <= {0.0, 1.0}
        for j in range(3):
            filled = noisy_linear_impute(images, masks[:, j], sigma=0.0)
            expected = (model(filled).argmax(1) == labels).float()
            torch.testing.assert_close(accuracy[:, j], expected)
    single = nn.Sequential(nn.Flatten(), nn.Linear(36, 1))
    hits = road(single, images, maps, fractions=(0.5,), labels=torch.ones(5, dtype=torch.long))
    raw = road(single, images, maps, fractions=(0.5,), score="logit")
    torch.testing.assert_close(hits, (raw > 0).float())
    with pytest.raises(ValueError, match="labels"):
        road(model, images, maps, fractions=(0.5,), labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        road(model, images, maps, fractions=(0.5,), labels=torch.zeros(5))


# ------------------------------------------------------------------------------------------
# Deletion and insertion
# ------------------------------------------------------------------------------------------


class PixelSum(nn.Module):
    """Two logits ``(a * sum(x) + b, 0)``: P(class 0) = sigmoid(a * sum(x) + b)."""

    def __init__(self, a: float = 0.3, b: float = -2.0) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        s = self.a * x.flatten(1).sum(1) + self.b
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def expected_curve(image: Tensor, order: list[int], step: int, substrate: Tensor, insert: bool):
    """P(class 0) of every copy, pixel by pixel in Python, and the AUC by the formula."""
    pixels = image.shape[-1] * image.shape[-2]
    n = math.ceil(pixels / step)
    curve = []
    for k in range(n + 1):
        changed = set(order[: min(k * step, pixels)])
        copy = image.clone().flatten(1)
        for p in range(pixels):
            if (p in changed) != insert:
                copy[:, p] = substrate.flatten(1)[:, p]
        curve.append(torch.sigmoid(torch.tensor(0.3 * float(copy.sum()) - 2.0)))
    curve = torch.stack(curve).double()
    return curve, (curve.sum() - curve[0] / 2 - curve[-1] / 2) / n


@pytest.mark.parametrize("step", [1, 4, 5, 16])
def test_deletion_and_insertion_curves_by_hand(step: int) -> None:
    g = torch.Generator().manual_seed(7)
    images = torch.rand(2, 2, 4, 4, generator=g, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, generator=g)
    model = PixelSum()
    zeros = torch.zeros(2, 4, 4, dtype=torch.float64)
    curves, auc = deletion(model, images, maps, 0, step=step)
    curves_in, auc_in = insertion(model, images, maps, 0, step=step, substrate=0.0)
    assert curves.shape == (2, math.ceil(16 / step) + 1)
    for b in range(2):
        order = maps[b].flatten().argsort(descending=True).tolist()
        want, want_auc = expected_curve(images[b], order, step, zeros, insert=False)
        torch.testing.assert_close(curves[b], want)
        torch.testing.assert_close(auc[b], want_auc)
        want, want_auc = expected_curve(images[b], order, step, zeros, insert=True)
        torch.testing.assert_close(curves_in[b], want)
        torch.testing.assert_close(auc_in[b], want_auc)
    # the curves run from the image to the substrate (deletion) and back (insertion)
    torch.testing.assert_close(curves[:, 0], curves_in[:, -1])
    torch.testing.assert_close(curves[:, -1], curves_in[:, 0])


def test_insertion_starts_from_the_blurred_image_by_default() -> None:
    g = torch.Generator().manual_seed(8)
    images = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64)
    maps = torch.rand(1, 5, 5, generator=g)
    curves, _ = insertion(PixelSum(), images, maps, 0, step=5)
    blurred = gaussian_blur(images)
    order = maps[0].flatten().argsort(descending=True).tolist()
    want, _ = expected_curve(images[0], order, 5, blurred[0], insert=True)
    torch.testing.assert_close(curves[0], want)


def test_ties_are_broken_in_row_major_order() -> None:
    image = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(1, 1, 2, 3)
    curves, _ = deletion(PixelSum(a=1.0, b=0.0), image, torch.ones(1, 2, 3), 0, step=1)
    remaining = 21 - torch.cat([torch.zeros(1), torch.arange(1.0, 7.0).cumsum(0)]).double()
    torch.testing.assert_close(curves[0], torch.sigmoid(remaining))


def test_default_step_is_one_row_and_logit_scores() -> None:
    images = torch.rand(2, 3, 5, 7)
    model = Weighted(3, 5, 7)
    curves, auc = deletion(model, images, torch.rand(2, 5, 7), score="logit")
    assert curves.shape == (2, 5 + 1) and auc.shape == (2,)
    with torch.no_grad():
        clean = model(images)
    torch.testing.assert_close(curves[:, 0], clean.amax(1))  # copy 0: the image, its own class
    torch.testing.assert_close(curves[:, -1], torch.zeros(2))  # all zeros: logits 0


def test_causal_curves_do_not_depend_on_batch_size_and_leave_model() -> None:
    images = torch.rand(3, 1, 6, 6)
    maps = torch.rand(3, 6, 6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Dropout(0.0), nn.Linear(4, 3)).eval()
    a = insertion(model, images, maps, step=5)
    b = insertion(model, images, maps, step=5, chunk_size=4)
    torch.testing.assert_close(a.curves, b.curves)
    torch.testing.assert_close(a.auc, b.auc)
    assert not model.training


def test_substrates() -> None:
    images = torch.rand(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4)
    model = Weighted(3, 4, 4)
    last = deletion(model, images, maps, 1, step=16, substrate=0.5, score="logit").curves[:, -1]
    torch.testing.assert_close(last, model(torch.full_like(images, 0.5))[:, 1].detach())
    mean = images.mean(dim=(2, 3), keepdim=True)
    by_tensor = deletion(model, images, maps, 1, step=16, substrate=mean, score="logit")
    by_callable = deletion(
        model,
        images,
        maps,
        1,
        step=16,
        substrate=lambda x: x.mean((2, 3), keepdim=True).expand_as(x),
        score="logit",
    )
    torch.testing.assert_close(by_tensor.curves, by_callable.curves)


def test_gaussian_blur_matches_a_2d_convolution_inside() -> None:
    images = torch.rand(2, 3, 20, 21, dtype=torch.float64)
    t = torch.arange(11, dtype=torch.float64) - 5
    k = torch.exp(-(t**2) / 50)
    kernel = torch.outer(k, k) / torch.outer(k, k).sum()
    direct = torch.nn.functional.conv2d(images.reshape(6, 1, 20, 21), kernel[None, None])
    blurred = gaussian_blur(images)
    torch.testing.assert_close(blurred[:, :, 5:-5, 5:-5], direct.reshape(2, 3, 10, 11))
    constant = torch.full((1, 1, 7, 7), 0.25)
    torch.testing.assert_close(gaussian_blur(constant), constant)  # borders replicate


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": 0}, ValueError, "step"),
        ({"step": 1.5}, TypeError, "step"),
        ({"substrate": "noise"}, ValueError, "substrate"),
        ({"substrate": torch.zeros(2, 5)}, ValueError, "substrate"),
        ({"substrate": lambda x: x[:1]}, ValueError, "substrate"),
        ({"substrate": [0.0]}, TypeError, "substrate"),
        ({"saliency": torch.rand(2, 4, 5)}, ValueError, "saliency"),
        ({"score": "prob"}, ValueError, "score"),
    ],
)
def test_causal_bad_input(kwargs, error, match) -> None:
    args = {"saliency": torch.rand(2, 4, 4)}
    args.update(kwargs)
    saliency = args.pop("saliency")
    with pytest.raises(error, match=match):
        deletion(Weighted(1, 4, 4), torch.rand(2, 1, 4, 4), saliency, **args)
    with pytest.raises(error, match=match):
        insertion(Weighted(1, 4, 4), torch.rand(2, 1, 4, 4), saliency, **args)


def test_no_warnings_for_eval_models() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deletion(Weighted(1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), step=8)


@settings(max_examples=25, deadline=None)
@given(
    levels=st.integers(1, 4),
    height=st.integers(2, 9),
    width=st.integers(2, 9),
    p=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
)
def test_road_masks_counts_property(levels: int, height: int, width: int, p: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, levels, (2, height, width), generator=g).float()  # many ties
    n = height * width
    k = math.floor(p * n + 1e-7)
    morf = road_masks(maps, (p,), "morf", generator=g)[:, 0]
    assert morf.flatten(1).sum(1).tolist() == [k, k]
    # every imputed pixel is at least as relevant as every kept one
    for b in range(2):
        if 0 < k < n:
            assert maps[b][morf[b]].min() >= maps[b][~morf[b]].max()

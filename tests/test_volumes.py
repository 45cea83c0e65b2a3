"""Metrics on volumes: the 26-neighbour imputation against a dense solve written out voxel by
voxel, depth-1 volumes against the 2-D results, constants and ramps, localisation with voxel
masks and XYZXYZ boxes, ROAD and deletion / insertion on a 3-D model."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from torchattr.metrics import (
    boxes_to_mask,
    deletion,
    gaussian_blur,
    insertion,
    noisy_linear_impute,
    pointing_game,
    proportional_energy,
    relevance_rank_accuracy,
    road,
    road_masks,
    saliency_focus,
)

OFFSETS = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
LOCALISATION = [proportional_energy, saliency_focus, pointing_game, relevance_rank_accuracy]


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def weight(offset: tuple[int, ...]) -> float:
    """The documented weights: 1/6 face, 1/12 edge, 1/18 corner neighbours."""
    return {1: 1 / 6, 2: 1 / 12, 3: 1 / 18}[sum(c != 0 for c in offset)]


def dense_impute_3d(volume: Tensor, mask: Tensor) -> Tensor:
    """``sum_j w_ij x_i - sum_{j masked} w_ij x_j = sum_{j kept} w_ij x_j`` per masked voxel,
    over its in-volume neighbours, solved by torch.linalg.solve; ``volume [C, D, H, W]``."""
    channels, *shape = volume.shape
    unknown = [p for p in itertools.product(*map(range, shape)) if mask[p]]
    index = {p: i for i, p in enumerate(unknown)}
    a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    b = torch.zeros(len(unknown), channels, dtype=torch.float64)
    for i, p in enumerate(unknown):
        for o in OFFSETS:
            q = tuple(c + d for c, d in zip(p, o))
            if not all(0 <= c < n for c, n in zip(q, shape)):
                continue
            a[i, i] += weight(o)
            if mask[q]:
                a[i, index[q]] -= weight(o)
            else:
                b[i] += weight(o) * volume[(slice(None), *q)].double()
    out = volume.double().clone()
    solution = torch.linalg.solve(a, b)
    for i, p in enumerate(unknown):
        out[(slice(None), *p)] = solution[i]
    return out


@pytest.mark.parametrize("shape", [(3, 4, 5), (6, 9, 8)])  # 1 and 2 grid levels
def test_3d_imputation_matches_dense_solve(shape: tuple[int, int, int]) -> None:
    g = seed(1)
    volumes = torch.rand(2, 2, *shape, generator=g, dtype=torch.float64)
    masks = torch.rand(2, *shape, generator=g) < 0.6
    masks[1] = True
    masks[1, 0, 0, 0] = False  # all but one voxel: the worst-conditioned system
    expected = torch.stack([dense_impute_3d(v, m) for v, m in zip(volumes, masks)])
    filled = noisy_linear_impute(volumes, masks, sigma=0.0, tol=1e-12)
    torch.testing.assert_close(filled, expected, atol=1e-9, rtol=0)
    filled32 = noisy_linear_impute(volumes.float(), masks[:, None], sigma=0.0)
    torch.testing.assert_close(filled32.double(), expected, atol=1e-4, rtol=0)


def test_3d_interior_and_corner_voxels_by_hand() -> None:
    v = torch.rand(1, 1, 3, 3, 3, dtype=torch.float64, generator=seed(2))
    x = v[0, 0]
    mask = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    mask[0, 1, 1, 1] = True  # the centre: all 26 neighbours, weights sum to 22/9
    faces = x[0, 1, 1] + x[2, 1, 1] + x[1, 0, 1] + x[1, 2, 1] + x[1, 1, 0] + x[1, 1, 2]
    corners = sum(x[z, y, w] for z in (0, 2) for y in (0, 2) for w in (0, 2))
    edges = x.sum() - x[1, 1, 1] - faces - corners
    expected = (faces / 6 + edges / 12 + corners / 18) / (22 / 9)
    filled = noisy_linear_impute(v, mask, sigma=0.0)
    torch.testing.assert_close(filled[0, 0, 1, 1, 1], expected, atol=1e-12, rtol=0)
    mask = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # a corner: 3 faces, 3 edges, 1 corner; weights 1/2 + 1/4 + 1/18
    expected = (
        (x[1, 0, 0] + x[0, 1, 0] + x[0, 0, 1]) / 6
        + (x[1, 1, 0] + x[1, 0, 1] + x[0, 1, 1]) / 12
        + x[1, 1, 1] / 18
    ) / (1 / 2 + 1 / 4 + 1 / 18)
    filled = noisy_linear_impute(v, mask, sigma=0.0)
    torch.testing.assert_close(filled[0, 0, 0, 0, 0], expected, atol=1e-12, rtol=0)
    assert torch.equal(filled[~mask[:, None]], v[~mask[:, None]])


def test_depth_one_volume_reduces_to_the_2d_stencil() -> None:
    g = seed(3)
    images = torch.rand(3, 2, 21, 17, generator=g)
    masks = torch.rand(3, 21, 17, generator=g) < 0.7
    flat = noisy_linear_impute(images, masks, sigma=0.05, generator=seed(5))
    volume = noisy_linear_impute(images[:, :, None], masks[:, None], sigma=0.05, generator=seed(5))
    torch.testing.assert_close(volume[:, :, 0], flat, atol=1e-6, rtol=0)
    exact = noisy_linear_impute(images.double(), masks, sigma=0.0, tol=1e-12)
    exact3 = noisy_linear_impute(images[:, :, None].double(), masks[:, None], 0.0, tol=1e-12)
    torch.testing.assert_close(exact3[:, :, 0], exact, atol=1e-12, rtol=0)


def test_3d_constants_and_linear_ramps_are_reproduced() -> None:
    z, y, x = torch.meshgrid(
        *(torch.arange(n, dtype=torch.float64) for n in (12, 14, 10)), indexing="ij"
    )
    ramp = torch.stack([0.3 * z - 0.2 * y + 0.1 * x + 1.0, torch.full_like(z, 2.5)])[None]
    mask = torch.zeros(1, 12, 14, 10, dtype=torch.bool)
    mask[0, 2:10, 1:12, 2:8] = True  # a large hole, away from the border
    mask[0, 5, 6, 5] = False
    filled = noisy_linear_impute(ramp, mask, sigma=0.0, tol=1e-11)
    torch.testing.assert_close(filled, ramp, atol=1e-8, rtol=0)
    touching = torch.ones(1, 12, 14, 10, dtype=torch.bool)
    touching[0, 0, 0, 0] = False  # constants survive even holes that touch the border
    filled = noisy_linear_impute(ramp[:, 1:], touching, sigma=0.0)
    torch.testing.assert_close(filled, ramp[:, 1:], atol=1e-5, rtol=0)


def test_gaussian_blur_volume_is_separable_and_depth_one_matches() -> None:
    volumes = torch.rand(2, 1, 5, 8, 9, generator=seed(4), dtype=torch.float64)
    blurred = gaussian_blur(volumes, size=3, sigma=1.0)
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    k = torch.exp(-(t**2) / 2)
    k = k / k.sum()
    kernel = k[:, None, None] * k[None, :, None] * k[None, None, :]
    padded = nn.functional.pad(volumes, (1, 1, 1, 1, 1, 1), mode="replicate")
    expected = nn.functional.conv3d(padded, kernel[None, None])
    torch.testing.assert_close(blurred, expected)
    images = volumes[:, :, 0]
    torch.testing.assert_close(gaussian_blur(images[:, :, None])[:, :, 0], gaussian_blur(images))


# ------------------------------------------------------------------------------------------
# Localisation
# ------------------------------------------------------------------------------------------


def test_boxes_to_mask_3d_is_xyzxyz_with_exclusive_ends_and_clipping() -> None:
    boxes = [torch.tensor([[1, 2, 0, 4, 5, 2], [3, 0, 3, 9, 1, 9]]), []]
    mask = boxes_to_mask(boxes, 6, 7, depth=5)
    expected = torch.zeros(2, 5, 6, 7, dtype=torch.bool)
    expected[0, 0:2, 2:5, 1:4] = True
    expected[0, 3:5, 0:1, 3:7] = True
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="\\[N, 6\\] XYZXYZ"):
        boxes_to_mask([[[0, 0, 1, 1]]], 4, 4, depth=2)
    with pytest.raises(ValueError, match="z2 < z1"):
        boxes_to_mask([[[0, 0, 2, 1, 1, 1]]], 4, 4, depth=3)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        boxes_to_mask([[]], 4, 4, depth=0)


@pytest.mark.parametrize("metric", LOCALISATION)
def test_depth_one_volumes_score_as_images(metric) -> None:
    g = seed(6)
    maps = torch.rand(4, 9, 11, generator=g).round(decimals=1)  # ties at the maximum
    boxes = [torch.tensor([[1, 2, 5, 7]]), torch.tensor([[0, 0, 11, 9]]), [], [[3, 3, 4, 4]]]
    flat = metric(maps, boxes)
    boxes3 = [torch.as_tensor(b).reshape(-1, 4)[:, [0, 1, 0, 2, 3, 0]] for b in boxes]
    for b in boxes3:
        b[:, 2], b[:, 5] = 0, 1
    mask = boxes_to_mask(boxes, 9, 11)
    torch.testing.assert_close(metric(maps[:, None], boxes3), flat)  # [B, D, H, W] maps
    torch.testing.assert_close(metric(maps[:, None], mask[:, None]), flat)  # voxel mask
    torch.testing.assert_close(metric(maps[:, None, None], mask[:, None]), flat)  # [B, 1, D, H, W]
    # a 4-D map with a 3-D mask is an image with 2 channels, summed: only the focus scales
    doubled = metric(maps[:, None].repeat(1, 2, 1, 1), mask)
    torch.testing.assert_close(doubled, 2 * flat if metric is saliency_focus else flat)


def test_volume_metrics_by_hand() -> None:
    maps = torch.zeros(1, 4, 5, 6)
    maps[0, 1, 2, 3] = 3.0  # the peak
    maps[0, 3, 4, 5] = 1.0
    box = [torch.tensor([[2, 1, 0, 5, 4, 2]])]  # x 2..4, y 1..3, z 0..1: 18 voxels
    assert float(proportional_energy(maps, box)) == pytest.approx(3 / 4)
    assert float(saliency_focus(maps, box)) == pytest.approx(3 / 18)
    assert float(pointing_game(maps, box)) == 1.0
    # K = 18: the peak, the other voxel (outside), and 16 of the 118 zeros (17 inside)
    assert float(relevance_rank_accuracy(maps, box)) == pytest.approx((1 + 16 * 17 / 118) / 18)
    away = [torch.tensor([[0, 0, 3, 1, 1, 4]])]  # the voxel (z, y, x) = (3, 0, 0)
    # the peak (1, 2, 3) is at squared distance 4 + 4 + 9 = 17 from it
    assert float(pointing_game(maps, away, tolerance=17**0.5 - 1e-6)) == 0.0
    assert float(pointing_game(maps, away, tolerance=17**0.5 + 1e-6)) == 1.0


def test_volume_pointing_game_tolerance_matches_brute_force() -> None:
    g = seed(7)
    maps = torch.rand(3, 5, 6, 7, generator=g)
    mask = torch.rand(3, 5, 6, 7, generator=g) > 0.97
    points = torch.stack(
        torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (5, 6, 7)), indexing="ij"),
        -1,
    ).reshape(-1, 3)
    for tolerance in (0, 1, 1.5, 2.5):
        expected = []
        for m, s in zip(mask, maps):
            peak = points[int(s.flatten().argmax())]
            inside = points[m.flatten()]
            near = (
                bool(((inside - peak) ** 2).sum(-1).min() <= tolerance**2) if len(inside) else False
            )
            expected.append(float(near))
        got = pointing_game(maps, mask, tolerance=tolerance)
        assert got.tolist() == expected


# ------------------------------------------------------------------------------------------
# ROAD and deletion / insertion on a 3-D model
# ------------------------------------------------------------------------------------------


class Volumetric(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).relu().mean(dim=(2, 3, 4)))


def test_road_on_volumes_is_the_model_on_imputed_copies() -> None:
    model = Volumetric().eval()
    volumes = torch.rand(2, 2, 4, 6, 5, generator=seed(8))
    maps = torch.rand(2, 4, 6, 5, generator=seed(9))
    fractions = (0.25, 0.5, 0.75)
    target = torch.tensor([0, 2])
    for order in ("morf", "lerf"):
        got = road(
            model,
            volumes,
            maps,
            target,
            fractions=fractions,
            order=order,
            sigma=0.0,
            generator=seed(1),
            score="logit",
            chunk_size=2,
        )
        masks = road_masks(maps[:, None], fractions, order, generator=seed(1))  # [B, P, D, H, W]
        assert masks.shape == (2, 3, 4, 6, 5)
        counts = masks.flatten(2).sum(-1)
        kept = torch.tensor([int(p * 120) for p in fractions])
        assert torch.equal(counts, (kept if order == "morf" else 120 - kept).expand(2, 3))
        with torch.no_grad():
            expected = torch.stack(
                [
                    model(noisy_linear_impute(volumes, masks[:, k], sigma=0.0))[
                        torch.arange(2), target
                    ]
                    for k in range(3)
                ],
                dim=1,
            )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_road_depth_one_volume_equals_the_image_result() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model2 = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model3 = nn.Sequential(nn.Flatten(2, 3), model2).eval()  # [N, C, 1, H, W] -> [N, C, H, W]
    images = torch.rand(3, 2, 8, 7, generator=seed(10))
    maps = torch.rand(3, 8, 7, generator=seed(11))
    flat = road(model2, images, maps, generator=seed(2), score="logit")
    volume = road(model3, images[:, :, None], maps[:, None], generator=seed(2), score="logit")
    torch.testing.assert_close(volume, flat, atol=1e-5, rtol=0)


@pytest.mark.parametrize("metric", [deletion, insertion])
def test_deletion_insertion_on_volumes(metric) -> None:
    # A model that sums the voxels: each step changes the score by the removed voxels' values.
    model = lambda x: x.flatten(1).sum(1, keepdim=True).expand(-1, 2)  # noqa: E731
    volumes = torch.rand(2, 1, 3, 4, 5, generator=seed(12), dtype=torch.float64)
    maps = torch.rand(2, 3, 4, 5, generator=seed(13), dtype=torch.float64)
    curves, auc = metric(model, volumes, maps, 0, score="logit", substrate=0.0)
    assert curves.shape == (2, 4)  # the default step is one slice, H W = 20 voxels: n = D = 3
    order = maps.flatten(1).argsort(dim=1, descending=True)
    values = volumes.flatten(1).gather(1, order)
    cumulative = torch.cat([torch.zeros(2, 1, dtype=torch.float64), values.cumsum(1)[:, 19::20]], 1)
    expected = (
        cumulative if metric is insertion else volumes.flatten(1).sum(1, keepdim=True) - cumulative
    )
    torch.testing.assert_close(curves, expected)
    torch.testing.assert_close(
        auc, (expected.sum(1) - expected[:, 0] / 2 - expected[:, -1] / 2) / 3
    )


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(2, 11),
    width=st.integers(2, 11),
    share=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
)
def test_depth_one_equals_2d_property(height: int, width: int, share: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 2, height, width, generator=g, dtype=torch.float64)
    masks = torch.rand(2, height, width, generator=g) < share
    masks[:, 0, 0] = False  # every image keeps a pixel
    flat = noisy_linear_impute(images, masks, sigma=0.0, tol=1e-12)
    volume = noisy_linear_impute(images[:, :, None], masks[:, None], sigma=0.0, tol=1e-12)
    torch.testing.assert_close(volume[:, :, 0], flat, atol=1e-10, rtol=0)

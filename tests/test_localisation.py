"""Tests of torchattr.metrics.localisation against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from torchattr.metrics import (
    boxes_to_mask,
    pointing_game,
    proportional_energy,
    relevance_rank_accuracy,
    saliency_focus,
)

METRICS = [proportional_energy, saliency_focus, pointing_game, relevance_rank_accuracy]


def test_boxes_to_mask_exclusive_ends_union_and_empty() -> None:
    mask = boxes_to_mask([torch.tensor([[1, 2, 4, 5], [3, 3, 6, 6]]), []], 8, 8)
    assert mask.shape == (2, 8, 8) and mask.dtype == torch.bool
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:5, 1:4] = True
    expected[3:6, 3:6] = True
    assert torch.equal(mask[0], expected)
    assert mask[0].sum() == 9 + 9 - 2  # the boxes overlap on rows 3..4 of column 3
    assert not mask[1].any()


def test_boxes_to_mask_clips_to_image_and_accepts_lists() -> None:
    mask = boxes_to_mask([[[-2, -3, 2, 2]], [[6, 5, 20, 20]], [[3, 3, 3, 7]]], 8, 10)
    assert mask.shape == (3, 8, 10)
    assert mask[0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert mask[1].sum() == (8 - 5) * (10 - 6)
    assert not mask[2].any()  # zero-width box


def test_boxes_to_mask_no_images() -> None:
    assert boxes_to_mask([], 4, 5).shape == (0, 4, 5)


def test_hand_computed_energy_mask_and_boxes_agree() -> None:
    saliency = torch.zeros(2, 4, 4)
    saliency[0, 1, 1] = 3.0  # inside box (x 0..1, y 0..1)
    saliency[0, 3, 3] = 1.0  # outside
    saliency[1] = 1.0  # uniform: PE = box area fraction = 4 / 16
    boxes = [torch.tensor([[0, 0, 2, 2]]), torch.tensor([[1, 1, 3, 3]])]
    expected = torch.tensor([0.75, 0.25])
    from_boxes = proportional_energy(saliency, boxes)
    from_mask = proportional_energy(saliency, boxes_to_mask(boxes, 4, 4))
    torch.testing.assert_close(from_boxes, expected)
    torch.testing.assert_close(from_mask, expected)


def test_two_boxes_overlap_counted_once() -> None:
    saliency = torch.ones(1, 4, 4)
    boxes = [torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])]  # union: 4 + 4 - 1 = 7 pixels
    torch.testing.assert_close(proportional_energy(saliency, boxes), torch.tensor([7 / 16]))


def test_empty_boxes_and_zero_map_give_zero() -> None:
    saliency = torch.rand(3, 5, 5)
    saliency[2] = 0
    boxes = [torch.zeros(0, 4, dtype=torch.long), [], [[0, 0, 5, 5]]]
    torch.testing.assert_close(proportional_energy(saliency, boxes), torch.zeros(3))


def test_channels_are_summed() -> None:
    saliency = torch.zeros(1, 2, 3, 3)
    saliency[0, 0, 0, 0] = 1.0  # inside
    saliency[0, 1, 2, 2] = 3.0  # outside, in the other channel
    pe = proportional_energy(saliency, [[[0, 0, 1, 1]]])
    torch.testing.assert_close(pe, torch.tensor([0.25]))


def test_whole_image_box_scores_one_and_dtype_follows_float64() -> None:
    saliency = torch.rand(2, 6, 7, dtype=torch.float64) + 0.1
    pe = proportional_energy(saliency, [[[0, 0, 7, 6]], [[0, 0, 7, 6]]])
    assert pe.dtype == torch.float64
    torch.testing.assert_close(pe, torch.ones(2, dtype=torch.float64))


def test_float_integral_box_coordinates_accepted() -> None:
    saliency = torch.ones(1, 4, 4)
    pe = proportional_energy(saliency, [torch.tensor([[0.0, 0.0, 2.0, 4.0]])])
    torch.testing.assert_close(pe, torch.tensor([0.5]))


@pytest.mark.parametrize(
    ("saliency", "boxes", "error", "match"),
    [
        (torch.ones(4, 4), [[]], ValueError, "expected \\[B, H, W\\]"),
        (torch.ones(1, 1, 1, 1, 4, 4), [[]], ValueError, "expected \\[B, H, W\\]"),
        ([[1.0]], [[]], TypeError, "must be a tensor"),
        (torch.ones(1, 4, 4, dtype=torch.bool), [[]], TypeError, "real numbers"),
        (-torch.ones(1, 4, 4), [[]], ValueError, "negative"),
        (torch.full((1, 4, 4), float("nan")), [[]], ValueError, "NaN"),
        (torch.ones(2, 4, 4), [[]], ValueError, "1 entries but saliency has batch size 2"),
        (torch.ones(1, 4, 4), torch.ones(1, 4, 4), TypeError, "bool"),
        (torch.ones(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool), ValueError, "mask has shape"),
        (torch.ones(1, 4, 4), "boxes", TypeError, "bool mask"),
        (torch.ones(1, 4, 4), [[[0, 0, 2]]], ValueError, "\\[N, 4\\]"),
        (torch.ones(1, 4, 4), [[[3, 0, 2, 2]]], ValueError, "x2 < x1"),
        (torch.ones(1, 4, 4), [[[0.5, 0, 2, 2]]], ValueError, "fractional"),
        (torch.ones(1, 4, 4), [["a", 0, 2, 2]], TypeError, "boxes\\[0\\]"),
    ],
)
@pytest.mark.parametrize("metric", METRICS)
def test_bad_inputs(metric, saliency, boxes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        metric(saliency, boxes)


def test_boxes_to_mask_bad_inputs() -> None:
    with pytest.raises(TypeError, match="one \\[N_i, 4\\]"):
        boxes_to_mask(torch.zeros(1, 4, dtype=torch.long), 4, 4)
    with pytest.raises(ValueError, match="height"):
        boxes_to_mask([[]], 0, 4)


# ------------------------------------------------------------------------------------------
# Average saliency focus
# ------------------------------------------------------------------------------------------


def test_saliency_focus_hand_computed() -> None:
    saliency = torch.zeros(3, 4, 4)
    saliency[0, 0, 0], saliency[0, 1, 1], saliency[0, 3, 3] = 0.8, 0.4, 1.0  # 2 of 4 in the box
    saliency[1] = 0.5  # uniform: the mean inside is the value itself
    boxes = [[[0, 0, 2, 2]], [[1, 1, 4, 3]], []]  # the third image has no boxes
    expected = torch.tensor([(0.8 + 0.4) / 4, 0.5, 0.0])
    torch.testing.assert_close(saliency_focus(saliency, boxes), expected)
    torch.testing.assert_close(saliency_focus(saliency, boxes_to_mask(boxes, 4, 4)), expected)


def test_saliency_focus_zero_map_channels_and_clipping() -> None:
    saliency = torch.zeros(2, 2, 3, 3)
    saliency[1, 0, 0, 0], saliency[1, 1, 0, 0] = 1.0, 2.0  # summed over channels: 3 at (0, 0)
    boxes = [[[0, 0, 3, 3]], [[-5, -5, 1, 1]]]  # the second box clips to the pixel (0, 0)
    torch.testing.assert_close(saliency_focus(saliency, boxes), torch.tensor([0.0, 3.0]))


# ------------------------------------------------------------------------------------------
# Pointing game
# ------------------------------------------------------------------------------------------


def test_pointing_game_hit_miss_and_no_boxes() -> None:
    saliency = torch.zeros(3, 5, 5)
    saliency[0, 1, 2] = 1.0  # (y, x) = (1, 2): inside x 1..2, y 0..2
    saliency[1, 4, 4] = 1.0  # outside
    saliency[2, 2, 2] = 1.0  # no boxes at all: never a hit
    boxes = [[[1, 0, 3, 3]], [[1, 0, 3, 3]], []]
    assert pointing_game(saliency, boxes).tolist() == [True, False, False]
    mask = boxes_to_mask(boxes, 5, 5)
    assert pointing_game(saliency, mask).tolist() == [True, False, False]


def test_pointing_game_empty_mask_and_zero_map_are_not_hits() -> None:
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert not pointing_game(torch.rand(1, 4, 4) + 0.1, empty).item()
    assert not pointing_game(torch.rand(1, 4, 4) + 0.1, empty, tolerance=100).item()
    whole = torch.ones(1, 4, 4, dtype=torch.bool)
    assert not pointing_game(torch.zeros(1, 4, 4), whole).item()  # a zero map points nowhere


def test_pointing_game_tolerance_is_euclidean_pixels() -> None:
    saliency = torch.zeros(1, 10, 10)
    saliency[0, 5, 5] = 1.0
    right = [[[8, 5, 10, 6]]]  # nearest box pixel (5, 8): 3 px away along x
    assert pointing_game(saliency, right, tolerance=3).tolist() == [True]
    assert pointing_game(saliency, right, tolerance=2.99).tolist() == [False]
    diagonal = [[[8, 8, 10, 10]]]  # nearest (8, 8): sqrt(3^2 + 3^2) = 4.243 px
    assert pointing_game(saliency, diagonal, tolerance=4.25).tolist() == [True]
    assert pointing_game(saliency, diagonal, tolerance=4.2).tolist() == [False]


def test_pointing_game_ties_score_the_share_of_maxima_wherever_they_lie() -> None:
    saliency = torch.zeros(1, 4, 4)
    saliency[0, 1, 3] = saliency[0, 2, 0] = 1.0  # two equal maxima
    assert pointing_game(saliency, [[[3, 1, 4, 2]]]).tolist() == [0.5]  # holds (1, 3)
    assert pointing_game(saliency, [[[0, 2, 1, 3]]]).tolist() == [0.5]  # holds (2, 0)
    assert pointing_game(saliency, [[[0, 1, 4, 3]]]).tolist() == [1.0]  # holds both
    assert pointing_game(saliency, [[[1, 0, 3, 1]]]).tolist() == [0.0]  # neither


def test_pointing_game_plateau_of_nine_maxima_moved_around() -> None:
    # The case: a 3 x 3 plateau of maxima in a 6 x 6 map; row-major order made the
    # result depend on where the plateau sat. Now: the share of the 9 maxima in the box.
    box = torch.zeros(1, 6, 6, dtype=torch.bool)
    box[0, 2:5, 2:5] = True
    for top, left in [(0, 0), (1, 1), (3, 3), (2, 3), (3, 0), (0, 3)]:
        saliency = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(top * 6 + left))
        saliency[0, top : top + 3, left : left + 3] = 2.0
        rows = len(set(range(top, top + 3)) & {2, 3, 4})
        columns = len(set(range(left, left + 3)) & {2, 3, 4})
        expected = torch.tensor([rows * columns / 9])
        torch.testing.assert_close(pointing_game(saliency, box), expected)
        flipped = pointing_game(saliency.flip(1, 2), box.flip(1, 2))  # pixel order reversed
        torch.testing.assert_close(flipped, expected)
    saliency = torch.zeros(1, 6, 6)
    saliency[0, 0:3, 0:3] = 1.0  # only (2, 2) of the plateau is within 4.25 of (5, 5)
    far = torch.zeros(1, 6, 6, dtype=torch.bool)
    far[0, 5, 5] = True  # distance from (2, 2): sqrt(18) = 4.243
    torch.testing.assert_close(pointing_game(saliency, far, tolerance=4.25), torch.tensor([1 / 9]))
    assert pointing_game(saliency, far, tolerance=4.24).tolist() == [0.0]
    uniform = torch.ones(1, 4, 4)  # a constant map scores the box's area fraction
    torch.testing.assert_close(pointing_game(uniform, [[[0, 0, 2, 2]]]), torch.tensor([0.25]))


def test_pointing_game_tolerance_matches_brute_force_distances() -> None:
    g = torch.Generator().manual_seed(1)
    saliency = torch.randint(0, 3, (6, 7, 9), generator=g).double()  # many ties at the maximum
    mask = torch.rand(6, 7, 9, generator=g) > 0.93
    ys, xs = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
    points = torch.stack([ys.flatten(), xs.flatten()], 1)
    distance = torch.cdist(points, points)  # [63, 63]
    for tolerance in (0, 1, 1.5, 3):
        hits = pointing_game(saliency, mask, tolerance=tolerance)
        assert hits.dtype == torch.float64
        for b in range(6):
            maxima = (saliency[b] == saliency[b].max()).flatten()
            inside = mask[b].flatten()
            near = (distance[maxima][:, inside] <= tolerance).any(dim=1).double().mean()
            expected = near if saliency[b].max() > 0 else 0.0
            assert float(hits[b]) == pytest.approx(float(expected)), (b, tolerance)


def test_pointing_game_bad_tolerance() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(torch.ones(1, 3, 3), [[]], tolerance=-1)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(torch.ones(1, 3, 3), [[]], tolerance=float("nan"))
    with pytest.raises(TypeError, match="tolerance"):
        pointing_game(torch.ones(1, 3, 3), [[]], tolerance="15")


# ------------------------------------------------------------------------------------------
# Relevance rank accuracy
# ------------------------------------------------------------------------------------------


def test_relevance_rank_accuracy_hand_computed() -> None:
    saliency = torch.zeros(2, 4, 4)
    # Box: x 0..1, y 0..1 (4 pixels). Top 4 values: 9, 8, 7 inside, 6 outside -> 3 / 4.
    saliency[0, 0, 0], saliency[0, 0, 1], saliency[0, 1, 0] = 9.0, 8.0, 7.0
    saliency[0, 3, 3], saliency[0, 1, 1] = 6.0, 5.0
    saliency[1] = torch.arange(16.0).reshape(4, 4)  # top 2: (3, 3), (3, 2): both in the box
    boxes = [[[0, 0, 2, 2]], [[2, 3, 4, 4]]]
    torch.testing.assert_close(relevance_rank_accuracy(saliency, boxes), torch.tensor([0.75, 1.0]))


def test_relevance_rank_accuracy_splits_ties_evenly() -> None:
    saliency = torch.zeros(1, 3, 3)
    saliency[0, 0, 0] = 2.0  # in the box, above the tie
    saliency[0, 0, 1] = saliency[0, 2, 2] = saliency[0, 2, 0] = 1.0  # tied: 1 of 3 in the box
    boxes = [[[0, 0, 2, 1]]]  # K = 2: (0, 0), (0, 1)
    # top 2 = the 2.0 and one of three tied pixels: expected hits 1 + 1/3, over K = 2
    torch.testing.assert_close(relevance_rank_accuracy(saliency, boxes), torch.tensor([2 / 3]))
    moved = saliency.clone()  # the outside tied pixels elsewhere: the same score
    moved[0, 2, 2], moved[0, 1, 2] = 0.0, 1.0
    torch.testing.assert_close(relevance_rank_accuracy(moved, boxes), torch.tensor([2 / 3]))
    outside = saliency.clone()  # no tied pixel in the box: hits = 1 + 1 * 0
    outside[0, 0, 1], outside[0, 1, 1] = 0.0, 1.0
    torch.testing.assert_close(relevance_rank_accuracy(outside, boxes), torch.tensor([1 / 2]))


def test_pointing_game_and_rank_accuracy_agree_on_plateaus() -> None:
    # With a one-pixel box (K = 1), relevance rank accuracy is the pointing game, ties included.
    g = torch.Generator().manual_seed(2)
    saliency = torch.randint(0, 3, (40, 4, 5), generator=g).float()
    corners = torch.randint(0, 4, (40, 2), generator=g)
    boxes = [[[int(x), int(y), int(x) + 1, int(y) + 1]] for x, y in corners]
    hits = pointing_game(saliency, boxes)
    rra = relevance_rank_accuracy(saliency, boxes)
    assert ((hits > 0) & (hits < 1)).any() and (hits == 0).any()  # ties and misses occur
    torch.testing.assert_close(rra, hits)


def test_relevance_rank_accuracy_uniform_empty_and_zero() -> None:
    uniform = torch.ones(1, 4, 4)
    # all tied: K hits spread evenly -> K * (K / 16) / K = K / 16, the pointing game's value
    torch.testing.assert_close(
        relevance_rank_accuracy(uniform, [[[0, 0, 2, 2]]]), torch.tensor([0.25])
    )
    torch.testing.assert_close(pointing_game(uniform, [[[0, 0, 2, 2]]]), torch.tensor([0.25]))
    assert relevance_rank_accuracy(uniform, [[]]).tolist() == [0.0]
    assert relevance_rank_accuracy(torch.zeros(1, 4, 4), [[[0, 0, 2, 2]]]).tolist() == [0.0]


def test_relevance_rank_accuracy_whole_image_box() -> None:
    saliency = torch.rand(3, 5, 6, dtype=torch.float64)
    rra = relevance_rank_accuracy(saliency, [[[0, 0, 6, 5]]] * 3)
    assert rra.dtype == torch.float64
    torch.testing.assert_close(rra, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("metric", METRICS)
def test_metrics_run_on_the_saliency_device_and_dtype(metric) -> None:
    saliency = torch.rand(2, 3, 5, 5)
    out = metric(saliency, [[[0, 0, 2, 2]], [[1, 1, 9, 9]]])
    assert out.shape == (2,) and out.device == saliency.device

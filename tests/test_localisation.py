"""Tests of torchattr.metrics.localisation against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from torchattr.metrics import boxes_to_mask, proportional_energy


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
        (torch.ones(1, 1, 1, 4, 4), [[]], ValueError, "expected \\[B, H, W\\]"),
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
def test_bad_inputs(saliency, boxes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        proportional_energy(saliency, boxes)


def test_boxes_to_mask_bad_inputs() -> None:
    with pytest.raises(TypeError, match="one \\[N_i, 4\\]"):
        boxes_to_mask(torch.zeros(1, 4, dtype=torch.long), 4, 4)
    with pytest.raises(ValueError, match="height"):
        boxes_to_mask([[]], 0, 4)
